"""Worker-thread plumbing: tasks end their own threads (shutdown never waits on the blocked GUI loop),
and first imports of torch/transformers go through one shared lock."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from gui_guard import qt_guard, temp_settings  # noqa: F401  (autouse fixtures)

pytestmark = pytest.mark.gui
ROOT = Path(__file__).resolve().parent.parent


def test_shutdown_returns_as_soon_as_the_work_is_done(qtbot):
    from gui.tasks import TaskGroup

    group = TaskGroup()
    task = group.run(lambda progress, stop: time.sleep(0.3) or "done", name="sleeper", heavy_imports=False)
    results = []
    task.succeeded.connect(results.append)
    task.start()
    # The GUI thread blocks here without running its event loop (as when the window closes). If ending the
    # worker's thread needed the GUI loop, shutdown would time out and return False: that is the mechanic.
    assert group.shutdown(60000) is True
    # The outcome still reaches the GUI thread once its loop runs again... unless cancelled (shutdown cancels).
    qtbot.waitUntil(lambda: not group.is_busy, timeout=3000)
    assert results == []


def test_task_wait_without_event_loop_after_success(qtbot):
    from gui.tasks import Task

    task = Task(lambda progress, stop: 42, heavy_imports=False)
    results = []
    task.succeeded.connect(results.append)
    task.start()
    assert task.wait(3000) is True
    qtbot.waitUntil(lambda: results == [42], timeout=3000)
    qtbot.waitUntil(lambda: not task.is_running, timeout=3000)


@pytest.fixture()
def imports_not_done(monkeypatch):
    """Make import_heavy_libraries take its locked path again (the libraries stay imported: it is quick)."""
    import gui.import_lock as import_lock

    monkeypatch.setattr(import_lock, "_imported", False)
    return import_lock


def test_task_imports_heavy_libraries_under_the_shared_lock(qtbot, imports_not_done):
    from gui.tasks import Task

    ran = threading.Event()
    task = Task(lambda progress, stop: ran.set())
    with imports_not_done.heavy_imports_lock:  # another thread is importing transformers
        task.start()
        assert not ran.wait(0.4), "the task ran while another thread held the import lock"
    assert ran.wait(10), "the task never ran after the import lock was released"
    assert task.wait(5000)
    assert imports_not_done.heavy_libraries_imported()
    qtbot.waitUntil(lambda: not task.is_running, timeout=3000)


def test_light_task_does_not_wait_for_the_import_lock(qtbot, imports_not_done):
    from gui.tasks import Task

    ran = threading.Event()
    task = Task(lambda progress, stop: ran.set(), heavy_imports=False)
    with imports_not_done.heavy_imports_lock:
        task.start()
        assert ran.wait(5)
    assert task.wait(5000)
    qtbot.waitUntil(lambda: not task.is_running, timeout=3000)


def test_preload_and_chat_loading_share_the_import_lock(imports_not_done):
    from gui import chat_workers, workers

    assert chat_workers._LOAD_LOCK is imports_not_done.heavy_imports_lock
    finished = threading.Event()
    thread = threading.Thread(target=lambda: (workers.preimport_heavy_modules(), finished.set()), daemon=True)
    with imports_not_done.heavy_imports_lock:
        thread.start()
        assert not finished.wait(0.4), "the Train page preload imported while another thread held the lock"
    assert finished.wait(30)
    thread.join(5)


def test_concurrent_first_imports_do_not_fail():
    """Fresh interpreter: three threads doing first imports at once (without the lock this fails with
    "cannot import name 'AutoModel' from 'transformers'" every time on this machine)."""
    script = r"""
import threading
from gui.import_lock import import_heavy_libraries
errors = []
def guarded(fn):
    def run():
        try:
            import_heavy_libraries()
            fn()
        except Exception as exc:
            errors.append(repr(exc))
    return run
def tokenizer():
    from transformers import AutoTokenizer  # noqa: F401
def adapter():
    import peft  # noqa: F401
    from transformers import AutoModelForCausalLM  # noqa: F401
def device():
    from core import devices
    devices.pick_device("auto")
threads = [threading.Thread(target=guarded(f)) for f in (tokenizer, adapter, device)]
for t in threads: t.start()
for t in threads: t.join()
print("ERRORS", errors)
assert not errors, errors
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
