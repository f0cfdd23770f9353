"""Progress bars for the CLI (tqdm). Only the command modules use them: ``core`` reports progress through
plain ``(fraction, message)`` callbacks and status events, and never imports tqdm itself.

On a terminal a bar is redrawn in place; into a file or a pipe each new message is written as one plain
line instead (a log stays readable, with no carriage returns).
"""

from __future__ import annotations

import re
import sys
from typing import IO, Any

from core.metrics import ConsoleSink, StatusEvent

_NUMBERS = re.compile(r"[\d,.]+")


def _is_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class ProgressBar:
    """A ``progress(fraction, message)`` callback drawn as one tqdm bar (0-100 %) with the message beside it.

    ``fraction`` None (a step of unknown length) shows the message without moving the bar. Use it as a
    context manager, or call ``close()``, so the bar's last state stays on screen.
    """

    def __init__(self, description: str, *, stream: IO[str] | None = None, terminal: bool | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = _is_terminal(self.stream) if terminal is None else terminal
        self.description = description
        self._bar: Any = None
        self._last_line = ""
        if self.terminal:
            from tqdm import tqdm

            self._bar = tqdm(total=100, desc=description, file=self.stream, unit="%", leave=True,
                             dynamic_ncols=True, bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix} [{elapsed}]")

    def __call__(self, fraction: float | None, message: str) -> None:
        if self._bar is None:
            # A file or a pipe: one line per stage; "tokenizing: 10/50", "tokenizing: 20/50"... are one stage.
            stage = _NUMBERS.sub("#", message)
            if stage != self._last_line or fraction is None or fraction >= 1.0:
                self._last_line = stage
                percent = f"{fraction * 100:5.1f}% " if fraction is not None else ""
                prefix = "" if message.startswith(self.description) else f"{self.description}: "
                self.stream.write(f"{prefix}{percent}{message}\n")
                self.stream.flush()
            return
        if fraction is not None:
            target = max(0.0, min(100.0, fraction * 100.0))
            self._bar.n = round(target, 1)
        self._bar.set_postfix_str(message, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class TrainingConsole(ConsoleSink):
    """The training console with a tqdm bar for the stages before the first step (tokenizing the data):
    status events carrying a fraction move the bar; any other event closes it and prints as before."""

    def __init__(self, stream: IO[str] | None = None, min_interval: float = 5.0):
        super().__init__(stream=stream, min_interval=min_interval)
        self._bar: ProgressBar | None = None
        self._bar_stage = ""

    def on_status(self, event: StatusEvent) -> None:
        # Into a file or a pipe the status lines stay lines ("running: ..."), but a stage's progress prints
        # at most once per tenth (100k rows once printed 1,563 "tokenizing" lines).
        if not self._tty and event.state == "running" and event.fraction is not None and event.step is None:
            stage, band = event.message.split(":", 1)[0], int(min(max(event.fraction, 0.0), 1.0) * 10)
            if (stage, band) == getattr(self, "_line_band", None):
                return
            self._line_band = (stage, band)
        if self._tty and event.state == "running" and event.fraction is not None and event.step is None:
            stage = event.message.split(":", 1)[0]
            if self._bar is None or stage != self._bar_stage:
                self._close_bar()
                self._bar = ProgressBar(stage, stream=self.stream, terminal=True)
                self._bar_stage = stage
            self._bar(event.fraction, event.message)
            return
        self._close_bar()
        super().on_status(event)

    def on_metric(self, point) -> None:
        self._close_bar()
        super().on_metric(point)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
