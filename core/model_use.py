"""One process-wide reader/writer lock between building models and running them, in different threads.

transformers 5 builds a model on the meta device and then materialises its weights (with its own thread pool),
and peft builds adapter layers likewise; that machinery is not thread-safe against a model running in another
thread of the same process (transformers#41782: seen here as a segfault in a chat pane's ``generate`` while the
other pane loaded its model). The app has such threads: the two chat panes, Evaluate, the Train page's run.

So: loading (``core.models.load_model``, adapter loading) takes the lock exclusively (``loading()``), and
running a model (generation, loss and training steps) takes it shared (``running()``). Runs never wait for
each other; a load waits for the forward passes in flight (one generation step, one training step) and they wait
for the load. Both are re-entrant in a thread, and a thread that runs a model may load one (it does not wait
for itself).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class _ReadWriteLock:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers: dict[int, int] = {}  # thread id -> depth
        self._writer: int | None = None
        self._writer_depth = 0
        self._writers_waiting = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if not (self._readers.get(me) or self._writer == me):
                # New readers let a waiting writer go first (a load is not starved by back-to-back steps).
                while self._writer is not None or self._writers_waiting:
                    self._cond.wait()
            self._readers[me] = self._readers.get(me, 0) + 1
        try:
            yield
        finally:
            with self._cond:
                self._readers[me] -= 1
                if not self._readers[me]:
                    del self._readers[me]
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._writer != me:
                self._writers_waiting += 1
                try:
                    while self._writer is not None or any(t != me for t in self._readers):
                        self._cond.wait()
                finally:
                    self._writers_waiting -= 1
                self._writer = me
            self._writer_depth += 1
        try:
            yield
        finally:
            with self._cond:
                self._writer_depth -= 1
                if not self._writer_depth:
                    self._writer = None
                    self._cond.notify_all()


    @contextlib.contextmanager
    def exclusive_if_idle(self) -> Iterator[bool]:
        """Exclusive without waiting: yields True when nothing else holds the lock (then holds it), else False."""
        me = threading.get_ident()
        with self._cond:
            idle = (self._writer in (None, me) and not any(t != me for t in self._readers)
                    and not self._writers_waiting)
            if idle:
                self._writer = me
                self._writer_depth += 1
        try:
            yield idle
        finally:
            if idle:
                with self._cond:
                    self._writer_depth -= 1
                    if not self._writer_depth:
                        self._writer = None
                        self._cond.notify_all()


_LOCK = _ReadWriteLock()


def loading() -> contextlib.AbstractContextManager[None]:
    """Hold while building or loading a model or adapter (exclusive)."""
    return _LOCK.exclusive()


def running() -> contextlib.AbstractContextManager[None]:
    """Hold while running a model: a generation, a loss, a training step (shared)."""
    return _LOCK.shared()


def idle() -> contextlib.AbstractContextManager[bool]:
    """``with idle() as free:`` free is True when no thread loads or runs a model, and none will start until the
    block ends (used to collect garbage safely: gui/gc_guard.py)."""
    return _LOCK.exclusive_if_idle()
