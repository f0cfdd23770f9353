"""Garbage collection only while no model runs.

Python's cyclic garbage collector runs in whichever thread happens to cross its allocation threshold. In this
app a collection in one thread while torch ran a model in another crashed the process (two fresh-clone CI
runs: a chat pane generating while the other pane's thread collected during its model load; the GUI thread
collecting while a resume trained on the Runs page). So in the GUI process automatic collection is off and a
timer in the GUI thread collects only while no thread loads or runs a model (``core.model_use``): the young
generation often (cheap), all generations now and then. Between training steps and between chat answers the
lock is free, so collections still happen during a long run. Reference counting, which frees almost everything,
is unaffected.

Libraries also call ``gc.collect()`` themselves: accelerate's ``free_memory`` does at the start of every
``Trainer.train``, in the training thread, and a fresh-clone CI run crashed exactly there (a segfault inside
"Garbage-collecting" while the Runs page resumed a run). A collection in a worker thread can destroy Qt wrappers
that belong to the GUI thread. So while installed, ``gc.collect`` itself is guarded: called from the GUI thread
while no model runs, it collects; otherwise it only asks the GUI thread's timer to collect at its next idle tick
and returns 0 (nothing collected now).
"""

from __future__ import annotations

import gc
import logging
import threading

from PySide6.QtCore import QObject, QTimer

logger = logging.getLogger(__name__)

INTERVAL_MS = 250
FULL_EVERY = 120  # ticks: a full collection about every 30 s of idle time
MIDDLE_EVERY = 20


class GarbageCollector(QObject):
    """Owns the process's cyclic collection while installed (``install``/``uninstall``)."""

    def __init__(self, parent=None, interval_ms: int = INTERVAL_MS):
        super().__init__(parent)
        self.timer = QTimer(self)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self.collect_if_idle)
        self.ticks = 0
        self.collections = 0
        self.skipped = 0
        self.deferred = 0  # gc.collect() calls from other threads (or while a model ran) left to the timer
        self.pending = -1  # the highest generation such a call asked for; -1: none
        self._was_enabled = True
        self._real_collect = gc.collect
        self._thread = threading.current_thread()

    def install(self) -> GarbageCollector:
        self._was_enabled = gc.isenabled()
        gc.disable()
        self._real_collect = gc.collect
        self._thread = threading.current_thread()
        gc.collect = self.guarded_collect
        self.timer.start()
        return self

    def uninstall(self) -> None:
        self.timer.stop()
        if gc.collect == self.guarded_collect:
            gc.collect = self._real_collect
        if self._was_enabled:
            gc.enable()

    def guarded_collect(self, generation: int = 2) -> int:
        """Stands in for ``gc.collect`` while installed: collects only in the GUI thread while no model runs;
        otherwise defers the collection to the timer and returns 0."""
        from core import model_use

        if threading.current_thread() is self._thread:
            with model_use.idle() as free:
                if free:
                    return self._real_collect(generation)
        self.deferred += 1
        self.pending = max(self.pending, generation)
        return 0

    def collect_if_idle(self) -> bool:
        """One collection now if no model is loading or running anywhere; True when it collected."""
        from core import model_use

        self.ticks += 1
        generation = 2 if self.ticks % FULL_EVERY == 0 else 1 if self.ticks % MIDDLE_EVERY == 0 else 0
        generation = max(generation, self.pending)
        with model_use.idle() as free:
            if not free:
                self.skipped += 1
                if generation == 2 and self.pending < 2:
                    self.ticks -= 1  # try the full collection again at the next tick
                return False
            self._real_collect(generation)
        self.pending = -1
        self.collections += 1
        return True


_INSTALLED: GarbageCollector | None = None


def install(parent=None) -> GarbageCollector:
    """Switch automatic collection off and collect from the GUI thread's timer (idempotent)."""
    global _INSTALLED
    if _INSTALLED is None:
        _INSTALLED = GarbageCollector(parent).install()
    return _INSTALLED


def uninstall() -> None:
    global _INSTALLED
    if _INSTALLED is not None:
        _INSTALLED.uninstall()
        _INSTALLED.deleteLater()
        _INSTALLED = None
