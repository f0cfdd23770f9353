"""Where the app keeps its files: one home folder (overridable with FINETUNE_STUDIO_HOME)."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

_UMASK_LOCK = threading.Lock()


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


def current_umask() -> int:
    """The process umask, read without changing it (Linux: /proc; elsewhere a brief set-and-restore)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass  # no /proc (macOS, Windows) or an old kernel: fall back on os.umask
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def chmod_like_new(path: str | os.PathLike) -> None:
    """Give ``path`` the mode an ordinary new file/folder gets (0666/0777 minus the umask).

    mkstemp/mkdtemp create private 0600/0700 entries; a file renamed into place from them would stay
    private, unlike everything else the user creates.
    """
    base = 0o777 if os.path.isdir(path) else 0o666
    os.chmod(path, base & ~current_umask())
