"""Errors a user can act on. The CLI prints them without a traceback; the GUI shows them in a dialog."""

from __future__ import annotations


class StudioError(Exception):
    """Base of every error whose message is meant for the user (what is wrong, and where)."""


class DataError(StudioError):
    """A dataset problem. ``source``/``line``/``field`` say where, when known."""

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.message = message
        self.source = source
        self.line = line
        self.field = field
        where = ""
        if source:
            where = str(source)
            if line is not None:
                where += f", line {line}"
            where += ": "
        elif line is not None:
            where = f"line {line}: "
        if field:
            where += f"field '{field}': "
        super().__init__(where + message)


class ModelError(StudioError):
    """A model cannot be found, loaded, or is refused for safety (remote code, pickles)."""


class TrainingError(StudioError):
    """Training failed in a way the user can fix (out of memory, NaN loss, full disk...)."""


class Cancelled(StudioError):
    """The user asked to stop; raised at a safe point."""
