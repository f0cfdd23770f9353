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


def test_gc_collect_from_a_worker_thread_is_left_to_the_gui_thread(qtbot):
    """accelerate's free_memory calls gc.collect() in the training thread; a collection there crashed a CI run.
    While the guard is installed such a call collects nothing and the GUI thread's timer collects instead."""
    from gui import gc_guard

    guard = gc_guard._INSTALLED
    assert guard is not None and gc.collect == guard.guarded_collect
    threads: list[int] = []

    def record(phase, info):
        if phase == "start":
            threads.append(threading.get_ident())

    gc.callbacks.append(record)
    try:
        results = []
        worker = threading.Thread(target=lambda: results.append(gc.collect()))
        worker.start()
        worker.join(30)
        assert results == [0] and guard.pending == 2 and guard.deferred >= 1
        worker_id = worker.ident
        qtbot.waitUntil(lambda: guard.pending == -1, timeout=10000)  # the timer ran the full collection
        assert threads and worker_id not in threads
        assert set(threads) == {threading.get_ident()}  # every collection ran in the GUI (main) thread
        assert isinstance(gc.collect(), int)  # the GUI thread, no model running: collects now
    finally:
        gc.callbacks.remove(record)


def test_uninstall_gives_gc_collect_back():
    from gui.gc_guard import GarbageCollector

    real = gc.collect
    collector = GarbageCollector(interval_ms=10_000)
    collector.install()
    try:
        assert gc.collect == collector.guarded_collect
    finally:
        collector.uninstall()
    assert gc.collect is real
