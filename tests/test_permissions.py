"""Files and folders the app writes get the user's usual permissions (umask), not mkstemp/mkdtemp's private ones."""

from __future__ import annotations

import os
import stat
import sys

import pytest

from core import runs
from core.config import RunConfig, atomic_write_text
from core.paths import chmod_like_new, current_umask

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_current_umask_reads_without_changing_it(umask):
    assert current_umask() == umask
    assert current_umask() == umask


def test_config_status_and_report_files_follow_the_umask(tmp_path, umask):
    run_dir = tmp_path / "run"
    RunConfig().save(run_dir / runs.CONFIG_FILE)
    runs.write_status(run_dir, state="finished", message="done")
    atomic_write_text(run_dir / "evaluation" / "report.html", "<html></html>")  # how evaluation writes it
    for name in (runs.CONFIG_FILE, runs.STATUS_FILE, "evaluation/report.html"):
        assert _mode(run_dir / name) == 0o666 & ~umask, name  # 0644 under umask 022
    assert not list(run_dir.glob(".*.tmp"))


def test_export_folder_follows_the_umask(tmp_path, umask):
    from core.export import _StagingDir

    out = tmp_path / "export"
    with _StagingDir(out) as staging:
        assert _mode(staging) == 0o700  # mkdtemp: private while it is being written
        (staging / "README.md").write_text("x")
    assert _mode(out) == 0o777 & ~umask  # 0755 under umask 022
    assert _mode(out / "README.md") == 0o666 & ~umask


def test_chmod_like_new_on_private_temp_entries(tmp_path, umask):
    import tempfile

    fd, name = tempfile.mkstemp(dir=tmp_path)
    os.close(fd)
    folder = tempfile.mkdtemp(dir=tmp_path)
    chmod_like_new(name)
    chmod_like_new(folder)
    assert _mode(name) == 0o666 & ~umask and _mode(folder) == 0o777 & ~umask
