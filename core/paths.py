"""Where the app keeps its files: one home folder (overridable with FINETUNE_STUDIO_HOME)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def studio_home() -> Path:
    """The app's data folder: $FINETUNE_STUDIO_HOME, else the platform's user data folder."""
    override = os.environ.get("FINETUNE_STUDIO_HOME")
    if override:
        return Path(override).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return base / "FineTuneStudio"


def cache_dir() -> Path:
    """Converted models and tokenized-dataset caches (safe to delete; rebuilt on demand)."""
    override = os.environ.get("FINETUNE_STUDIO_CACHE")
    path = Path(override).expanduser() if override else studio_home() / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_workspace() -> Path:
    """Default folder holding one sub-folder per training run."""
    path = studio_home() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path
