"""gui/gc_guard.py: in the GUI process the cyclic garbage collector runs only from the GUI thread's timer and
only while no thread loads or runs a model (a collection racing a model in another thread crashed the app)."""

from __future__ import annotations

import gc
import threading

import pytest

pytest.importorskip("pytestqt")


def test_collects_only_while_no_model_runs(qtbot):
    from core import model_use
    from gui.gc_guard import GarbageCollector

    collector = GarbageCollector(interval_ms=10)  # not installed: only its decision is tested here
    assert collector.collect_if_idle() is True
    running, release = threading.Event(), threading.Event()

    def model_in_another_thread():
        with model_use.running():
            running.set()
            release.wait(30)

    worker = threading.Thread(target=model_in_another_thread)
    worker.start()
    try:
        assert running.wait(30)
        before = collector.collections
        assert collector.collect_if_idle() is False and collector.collections == before and collector.skipped == 1
        loading_waits = threading.Event()

        def load_meanwhile():
            loading_waits.set()
            with model_use.loading():  # a load cannot start while the collector holds the lock, nor the reverse
                pass

        loader = threading.Thread(target=load_meanwhile)
        loader.start()
        assert loading_waits.wait(30)
    finally:
        release.set()
        worker.join(30)
    loader.join(30)
    assert collector.collect_if_idle() is True


def test_install_turns_automatic_collection_off_and_uninstall_back_on(qtbot):
    from gui import gc_guard

    assert not gc.isenabled()  # GUI tests run under the app's rule (tests/conftest.py)
    assert gc_guard._INSTALLED is not None and gc_guard._INSTALLED.timer.isActive()
    ticks = gc_guard._INSTALLED.ticks
    qtbot.waitUntil(lambda: gc_guard._INSTALLED.ticks > ticks, timeout=10000)  # the timer collects
