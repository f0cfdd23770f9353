"""Cooperative cancellation and progress reporting shared by every long-running core function."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator

from core.errors import Cancelled

# progress(fraction in [0, 1] or None when unknown, human-readable message)
ProgressFn = Callable[[float | None, str], None]


def no_progress(fraction: float | None, message: str) -> None:
    """A ProgressFn that ignores everything."""


class StopToken:
    """A thread-safe flag: the GUI (or Ctrl+C) sets it, workers check it at safe points."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def request(self, reason: str = "stop requested") -> None:
        self.reason = reason
        self._event.set()

    @property
    def is_set(self) -> bool:
        return self._event.is_set()

    def raise_if_set(self) -> None:
        if self._event.is_set():
            raise Cancelled(self.reason or "stop requested")


@contextlib.contextmanager
def stop_on_ctrl_c(stop: StopToken, notice: str | Callable[[], str] = "stopping...") -> Iterator[StopToken]:
    """CLI helper: the first Ctrl+C requests a cooperative stop (``notice`` is printed; a callable is asked
    at that moment, so the words fit what is happening), the second aborts with KeyboardInterrupt. The
    previous SIGINT handler is restored afterwards; no-op off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.is_set:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        stop.request("stopped with Ctrl+C")
        print(f"\n{notice() if callable(notice) else notice}", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
