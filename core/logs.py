"""The app's log file: what happened, with tracebacks, in one file a user can attach to a bug report.

Modules log through ``logging.getLogger(__name__)``; ``setup_logging`` (called once at start-up by the
GUI, gui/app.py, and the CLI, core/cli.py) sends the records of ``core`` and ``gui`` (DEBUG and up) and of
every other library (WARNING and up) to a rotating file in the app's data folder: 1 MB, 3 old files kept.
Nothing is printed: the console belongs to the CLI's own messages.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import platform
import sys
from pathlib import Path

from core.paths import studio_home

LOG_FILE_NAME = "finetune-studio.log"
MAX_BYTES = 1_000_000
BACKUP_COUNT = 3
OUR_LOGGERS = ("core", "gui")
_FORMAT = "%(asctime)s %(levelname)-7s %(process)d %(threadName)s %(name)s: %(message)s"

logger = logging.getLogger(__name__)


def log_dir() -> Path:
    """The folder holding the log file and its rotated copies (created on first use)."""
    return studio_home() / "logs"


def log_file_path() -> Path:
    """The current log file: ``<app data folder>/logs/finetune-studio.log``."""
    return log_dir() / LOG_FILE_NAME


class _StudioFileHandler(logging.handlers.RotatingFileHandler):
    """Marks our handler so a second set-up replaces it instead of adding another."""


def _installed_handler() -> _StudioFileHandler | None:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, _StudioFileHandler):
            return handler
    return None


def setup_logging(program: str) -> Path | None:
    """Send log records to the rotating log file; returns its path, or None when it cannot be written.

    Idempotent: calling it again (another CLI command in the same process, tests with another app home)
    moves the handler to the current ``log_file_path()`` rather than adding a second one.
    """
    path = log_file_path()
    current = _installed_handler()
    root = logging.getLogger()
    if current is not None:
        if Path(current.baseFilename) == path.absolute():
            return path
        root.removeHandler(current)
        current.close()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = _StudioFileHandler(path, maxBytes=MAX_BYTES, backupCount=BACKUP_COUNT, encoding="utf-8",
                                     delay=True)
    except OSError as exc:
        # Safe to go on without a file: the app works the same; only the bug-report trail is missing.
        print(f"warning: cannot write the log file {path}: {exc}", file=sys.stderr)
        return None
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.setLevel(logging.DEBUG)
    # The root logger keeps its level (WARNING unless the embedding program chose another): other libraries
    # bring warnings and errors; our own modules everything, so a bug report shows what led up to an error.
    root.addHandler(handler)
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    logger.info("%s started: FineTune Studio %s, Python %s, %s, pid %d, argv %s", program, _version(),
                platform.python_version(), platform.platform(), os.getpid(), sys.argv[1:])
    return path


def _version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("finetune-studio")
    except PackageNotFoundError:
        return "(source checkout)"
