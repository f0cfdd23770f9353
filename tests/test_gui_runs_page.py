"""Runs page: table from real run folders, overlay, config diff, resume to finished, rename/clone/delete."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("pytestqt")
from test_gui_chat_page import thread_guard  # noqa: E402,F401  (fixture: fails tests leaving a QThread running)

pytestmark = pytest.mark.gui


def tiny_config(model_dir: Path, name: str, learning_rate: float, max_steps: int = 4):
    from core.config import RunConfig

    cfg = RunConfig(name=name)
    cfg.model.name_or_path = str(model_dir)
    cfg.data.max_examples = 40
    cfg.training.max_length = 64
    cfg.training.batch_size = 4
    cfg.training.max_steps = max_steps
    cfg.training.save_steps = 2
    cfg.training.eval_steps = 2
    cfg.training.learning_rate = learning_rate
    return cfg


@pytest.fixture(scope="module")
def trained_workspace(tmp_path_factory, tiny_model_dir):
    """Two real runs of the tiny model: 'alpha' finished, 'beta' stopped after 2 steps (resumable)."""
    from transformers import TrainerCallback

    from core.cancel import StopToken
    from core.training import train

    root = tmp_path_factory.mktemp("runs-page")
    workspace = root / "runs"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FINETUNE_STUDIO_HOME", str(root / "home"))
        train(tiny_config(tiny_model_dir, "alpha", 2e-4), workspace=workspace)
        stop = StopToken()

        class StopAfterTwo(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step >= 2:
                    stop.request("test: stop early")

        result = train(tiny_config(tiny_model_dir, "beta", 1e-3), workspace=workspace, stop=stop,
                       extra_callbacks=[StopAfterTwo()])
        assert result.state == "stopped"
    return workspace


@pytest.fixture()
def runs_page(qtbot, tmp_path, trained_workspace, thread_guard, monkeypatch):  # noqa: F811  (fixture use)
    from gui.pages.runs_page import RunsPage
    from gui.state import StudioState

    monkeypatch.setenv("FINETUNE_STUDIO_HOME", str(tmp_path / "home"))
    workspace = tmp_path / "runs"
    shutil.copytree(trained_workspace, workspace)
    page = RunsPage(StudioState(workspace=workspace))
    qtbot.addWidget(page)
    yield page
    assert page.shutdown(30000)


def _path(page, name):
    return next(Path(run.path) for run in page._runs if run.name == name)


def test_table_lists_runs_with_status(runs_page):
    page = runs_page
    assert page.table.rowCount() == 2
    rows = {page.table.item(r, 0).text(): [page.table.item(r, c).text() for c in range(page.table.columnCount())]
            for r in range(page.table.rowCount())}
    assert rows["alpha"][4] == "finished" and rows["beta"][4] == "stopped"
    assert rows["alpha"][2] == "lora"
    assert rows["alpha"][5] == "4/4"
    assert rows["alpha"][6] != "—"  # best eval loss known


def test_overlay_and_config_diff(runs_page):
    page = runs_page
    page.select_runs([_path(page, "alpha"), _path(page, "beta")])
    assert set(page.overlay_curves) == {"alpha", "beta"}
    assert len(page.overlay_curves["alpha"][0]) == 4 and len(page.overlay_curves["beta"][0]) >= 2
    assert len(page.plot.getPlotItem().listDataItems()) == 2
    assert len(page.legend.items) == 2
    # The 1 s refresh of a running run updates the curves in place: no plot item is deleted and drawn again.
    items = list(page.plot.getPlotItem().listDataItems())
    page.update_overlay()
    page.refresh()
    assert page.plot.getPlotItem().listDataItems() == items
    page.metric_combo.setCurrentText("Learning rate")
    assert page.plot.getPlotItem().listDataItems() != items  # another metric: drawn afresh
    assert all(ys for _, ys in page.overlay_curves.values())
    diff = page.diff_rows()
    assert diff == {"training.learning_rate": ["0.0002", "0.001"]} or diff == {
        "training.learning_rate": ["0.001", "0.0002"]}
    page.select_runs([_path(page, "alpha")])
    assert page.diff_table.rowCount() == 0 and len(page.overlay_curves) == 1


def test_resume_from_runs_page_finishes_the_run(qtbot, runs_page):
    page = runs_page
    beta = _path(page, "beta")
    page.select_runs([beta])
    assert page.resume_button.isEnabled()
    with qtbot.waitSignal(page.runResumed, timeout=60000) as blocker:
        page.resume_button.click()
        assert page.is_busy
    assert blocker.args == [beta]
    assert not page.is_busy
    from core.runs import read_status

    assert read_status(beta)["state"] == "finished"
    row = next(r for r in range(page.table.rowCount()) if page.table.item(r, 0).text() == "beta")
    assert page.table.item(row, 4).text() == "finished"
    assert (beta / "final").is_dir()


def test_clone_rename_delete_and_watch(qtbot, runs_page, monkeypatch):
    from PySide6.QtWidgets import QMessageBox

    from core.runs import load_run_config

    page = runs_page
    alpha = _path(page, "alpha")
    page.select_runs([alpha])
    with qtbot.waitSignal(page.navigateRequested, timeout=1000) as blocker:
        page.clone_button.click()
    assert blocker.args == ["train"]
    assert page.state.config.training.learning_rate == pytest.approx(2e-4)
    assert page.state.config.name == "alpha-copy"

    renamed = page.rename_run(alpha, "gamma run")
    assert renamed.name == "gamma-run" and not alpha.exists()
    assert load_run_config(renamed).name == "gamma run"
    assert page.selected_paths() == [renamed]

    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    page.delete_button.click()
    assert not renamed.exists()
    assert [run.name for run in page._runs] == ["beta"]

    # A run folder appearing from outside (the CLI) shows up by itself through the watcher.
    shutil.copytree(_path(page, "beta"), page.state.workspace / "from-cli")
    from core.runs import load_run_config as load

    cfg = load(page.state.workspace / "from-cli")
    cfg.name = "from-cli"
    cfg.save(page.state.workspace / "from-cli" / "config.yaml")
    qtbot.waitUntil(lambda: page.table.rowCount() == 2, timeout=int(os.environ.get("RUNS_WATCH_TIMEOUT", 30000)))


def test_delete_is_disabled_while_any_selected_run_is_live(runs_page):
    from core.runs import write_status

    page = runs_page
    alpha, beta = _path(page, "alpha"), _path(page, "beta")
    write_status(beta, state="running")  # this (alive) process is training it, as far as the folder says
    page.select_runs([alpha, beta])
    assert not page.delete_button.isEnabled()
    assert "beta: still training" in page.delete_button.toolTip()
    with pytest.raises(ValueError, match="beta: still training"):
        page.delete_runs([alpha, beta])
    assert alpha.exists() and beta.exists()  # nothing deleted, not even the finished one
    page.select_runs([alpha])
    assert page.delete_button.isEnabled()
    write_status(beta, state="stopped")
    page.select_runs([alpha, beta])
    assert page.delete_button.isEnabled()


def test_export_refuses_a_run_another_process_holds(qtbot, runs_page, monkeypatch, tmp_path):
    # As `export` on the command line: the window's export takes the run's lock, so it never reads checkpoints a
    # training elsewhere is rotating away; the message says who holds the run, and nothing is written.
    import subprocess
    import sys

    import gui.pages.runs_page as runs_module

    shown = []
    monkeypatch.setattr(runs_module, "warning", lambda parent, title, text: shown.append(text))
    run_dir = _path(runs_page, runs_page._runs[0].name)
    root = Path(__file__).resolve().parent.parent
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from core.locks import RunLock; "
         f"lock = RunLock({str(run_dir)!r}, 'resume from a terminal').acquire(); print('held', flush=True); sys.stdin.read()"],
        cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        target = tmp_path / "export-while-held"
        runs_page.last_outcome = None
        runs_page.export_run(run_dir, "adapter", target)
        qtbot.waitUntil(lambda: runs_page.last_outcome is not None and not runs_page.is_busy, timeout=60000)
        assert runs_page.last_outcome.error and "resume from a terminal" in runs_page.last_outcome.error
        assert shown and "resume from a terminal" in shown[-1]
        assert not target.exists()
    finally:
        holder.stdin.close()
        holder.wait(30)
    runs_page.last_outcome = None
    runs_page.export_run(run_dir, "adapter", tmp_path / "export-after")  # released: the export goes through
    qtbot.waitUntil(lambda: runs_page.last_outcome is not None and not runs_page.is_busy, timeout=120000)
    assert runs_page.last_outcome.error is None and (tmp_path / "export-after" / "adapter_config.json").is_file()
