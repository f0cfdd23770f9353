"""Cooperative cancellation and progress reporting shared by every long-running core function."""

from __future__ import annotations

import threading
from collections.abc import Callable

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
