"""Run one core function in a worker QObject on its own QThread; report back on the GUI thread.

Usage::

    task = Task(lambda progress, stop: core.data.load_raw(src, progress=progress, stop=stop), parent=self)
    task.progress.connect(self._on_progress)     # (fraction | None, message)
    task.succeeded.connect(self._on_loaded)       # the function's return value
    task.failed.connect(self._on_error)           # the exception instance
    task.start()

Only plain Python objects cross threads (``Signal(object)``). The function never touches widgets.
``TaskGroup`` keeps a page's tasks so it can cancel and wait for all of them when the window closes.

Before the function runs, the worker imports torch/transformers/peft under the shared import lock
(``gui.import_lock``; a no-op once done) because concurrent first imports of transformers fail.
Pass ``heavy_imports=False`` for a task that never touches them, so it does not wait for that import.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QThread, Signal, Slot

from core.cancel import StopToken
from gui.import_lock import import_heavy_libraries

logger = logging.getLogger(__name__)

TaskFn = Callable[[Callable[[float | None, str], None], StopToken], Any]


class GuardedWorker(QObject):
    """Base of the workers moved to a QThread: ``run`` calls ``work()`` and reports its outcome as
    ``succeeded(result)`` or ``failed(exception)`` (with ``__traceback_text__``), then ``done``, and ends its
    own thread. Subclasses implement ``work``."""

    succeeded = Signal(object)
    failed = Signal(object)
    done = Signal()

    def work(self) -> Any:
        raise NotImplementedError

    @Slot()
    def run(self) -> None:
        try:
            result = self.work()
        except BaseException as exc:  # noqa: BLE001 - every failure must reach the GUI, never kill the thread silently
            exc.__traceback_text__ = traceback.format_exc()  # type: ignore[attr-defined]
            log_worker_failure(type(self).__name__, exc)
            self.failed.emit(exc)
        else:
            self.succeeded.emit(result)
        finally:
            self.done.emit()
            # End the thread from this side: a queued quit would only be delivered by the GUI thread's
            # event loop, which is blocked while TaskGroup.shutdown()/wait_all() waits for this thread.
            QThread.currentThread().quit()


def log_worker_failure(worker: str, exc: BaseException) -> None:
    """A worker's failure in the log file: a stop at info, a message for the user (StudioError) at warning,
    anything else (a bug) with its traceback."""
    from core.errors import Cancelled, StudioError

    if isinstance(exc, Cancelled):
        logger.info("%s stopped: %s", worker, exc)
    elif isinstance(exc, StudioError):
        logger.warning("%s failed: %s", worker, exc, exc_info=exc)
    else:
        logger.error("%s failed unexpectedly", worker, exc_info=exc)


class _Worker(GuardedWorker):
    """Lives on the worker thread; calls the function and emits its outcome."""

    progress = Signal(object)

    def __init__(self, fn: TaskFn, stop: StopToken, heavy_imports: bool = True):
        super().__init__()
        self._fn = fn
        self._stop = stop
        self._heavy_imports = heavy_imports
        self._last_progress = 0.0

    def _report(self, fraction: float | None, message: str) -> None:
        # Throttle: core functions may report per row; the GUI needs at most ~20 updates a second.
        now = time.monotonic()
        if fraction is not None and fraction >= 1.0 or now - self._last_progress >= 0.05:
            self._last_progress = now
            self.progress.emit((fraction, message))

    def work(self) -> Any:
        if self._heavy_imports:
            import_heavy_libraries()
        return self._fn(self._report, self._stop)


class Task(QObject):
    """One background call. Signals are delivered on the thread that created the Task (the GUI thread).

    Signals: progress((fraction, message)), succeeded(result), failed(exception), finished() — the last
    one after the thread has stopped, whatever the outcome.
    """

    progress = Signal(object)
    succeeded = Signal(object)
    failed = Signal(object)
    finished = Signal()

    def __init__(self, fn: TaskFn, parent: QObject | None = None, name: str = "task", *,
                 heavy_imports: bool = True):
        super().__init__(parent)
        self.name = name
        self.stop_token = StopToken()
        self._thread: QThread | None = QThread()
        self._thread.setObjectName(f"studio-{name}")
        self._worker: _Worker | None = _Worker(fn, self.stop_token, heavy_imports)
        self._worker.moveToThread(self._thread)
        self._thread.started.connect(self._worker.run)
        # Relays into this object's (GUI) thread: queued because the worker emits from its thread.
        self._worker.progress.connect(self._relay_progress)
        self._worker.succeeded.connect(self._relay_succeeded)
        self._worker.failed.connect(self._relay_failed)
        self._thread.finished.connect(self._on_thread_finished)
        self._running = False
        self._cancelled = False

    @property
    def is_running(self) -> bool:
        return self._running

    @property
    def cancelled(self) -> bool:
        """True once ``cancel`` was called: results arriving afterwards are stale and not relayed."""
        return self._cancelled

    def start(self) -> Task:
        assert self._thread is not None, "a Task runs once"
        self._running = True
        self._thread.start()
        return self

    def cancel(self, reason: str = "cancelled") -> None:
        """Ask the function to stop at its next safe point and drop any result it still delivers."""
        self._cancelled = True
        self.stop_token.request(reason)

    def wait(self, timeout_ms: int = 30000) -> bool:
        """Block until the thread has stopped (True) or the timeout passed (False)."""
        if self._thread is None:
            return True
        return self._thread.wait(timeout_ms)

    @Slot(object)
    def _relay_progress(self, payload: object) -> None:
        if not self._cancelled:
            self.progress.emit(payload)

    @Slot(object)
    def _relay_succeeded(self, result: object) -> None:
        if not self._cancelled:
            self.succeeded.emit(result)

    @Slot(object)
    def _relay_failed(self, exc: object) -> None:
        if not self._cancelled:
            self.failed.emit(exc)

    @Slot()
    def _on_thread_finished(self) -> None:
        self._running = False
        if self._worker is not None:
            self._worker.deleteLater()
            self._worker = None
        if self._thread is not None:
            self._thread.deleteLater()
            self._thread = None
        self.finished.emit()


class TaskGroup(QObject):
    """The tasks a page has started; lets the page cancel and wait for all of them on close."""

    busyChanged = Signal(bool)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._tasks: list[Task] = []

    def run(self, fn: TaskFn, name: str = "task", *, heavy_imports: bool = True) -> Task:
        """Create a Task owned by this group; connect its signals, then call ``start()``.

        ``heavy_imports=False``: the function never uses torch/transformers, so skip the import step."""
        task = Task(fn, parent=self, name=name, heavy_imports=heavy_imports)
        was_busy = self.is_busy
        self._tasks.append(task)
        task.finished.connect(self._forget)
        if not was_busy:
            self.busyChanged.emit(True)
        return task

    @property
    def is_busy(self) -> bool:
        return bool(self._tasks)

    @property
    def tasks(self) -> list[Task]:
        return list(self._tasks)

    def cancel_all(self, reason: str = "cancelled") -> None:
        for task in self._tasks:
            task.cancel(reason)

    def wait_all(self, timeout_ms: int = 30000) -> bool:
        """Wait for every task's thread; True when all stopped within the timeout."""
        deadline = time.monotonic() + timeout_ms / 1000
        ok = True
        for task in list(self._tasks):
            remaining = max(0, int((deadline - time.monotonic()) * 1000))
            ok = task.wait(remaining) and ok
        return ok

    def shutdown(self, timeout_ms: int = 30000) -> bool:
        """Cancel and wait: used when the window closes."""
        self.cancel_all("the window is closing")
        return self.wait_all(timeout_ms)

    @Slot()
    def _forget(self) -> None:
        task = self.sender()
        if task in self._tasks:
            self._tasks.remove(task)
            task.deleteLater()
        if not self._tasks:
            self.busyChanged.emit(False)
