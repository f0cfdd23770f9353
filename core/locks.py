"""One process per run folder: an OS lock on ``RUN/run.lock`` held while training, resuming or exporting.

The lock is ``fcntl.flock`` (POSIX) on the file, so the operating system releases it when its process
dies, however it dies: a lock left by a killed process is never in the way. The file also records who
holds it (pid, the process's start time, the command, since when) so a refused command can say so; where
``flock`` does not exist (Windows) the file itself is the lock, created exclusively, and a lock whose pid
is gone (or was reused by another process: the start time differs) is stale and taken over.

Processes a holder starts for the same run (the ranks of ``launch``) inherit the right to the folder
through ``FINETUNE_STUDIO_RUN_LOCK`` instead of taking the lock again.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from core.errors import StudioError

logger = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
# Set for child processes (the ranks of a multi-process run) by the process holding the lock.
INHERITED_ENV = "FINETUNE_STUDIO_RUN_LOCK"

try:
    import fcntl
except ImportError:  # Windows: the exclusive-create fallback below
    fcntl = None  # type: ignore[assignment]


class RunLockedError(StudioError):
    """Another live process holds the run folder."""

    def __init__(self, message: str, holder: dict):
        super().__init__(message)
        self.holder = holder


def _process_start(pid: int) -> float | None:
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:  # psutil missing or the process gone: the pid check alone decides
        return None


def holder_alive(holder: dict) -> bool:
    """Whether the process recorded in a lock file still runs (the same process: pids are reused)."""
    from core.runs import _pid_alive

    pid = holder.get("pid")
    started = holder.get("pid_started")
    if not isinstance(pid, int) or isinstance(pid, bool):
        return False
    return _pid_alive(pid, started if isinstance(started, (int, float)) else None)


def read_holder(run_dir: str | os.PathLike) -> dict:
    """Who the lock file names (empty when there is none or it is unreadable)."""
    try:
        value = json.loads((Path(run_dir) / LOCK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def describe_holder(holder: dict) -> str:
    pid = holder.get("pid", "?")
    command = holder.get("command") or "another command"
    since = holder.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
    host = holder.get("host")
    return f"`{command}` (process {pid}{' on ' + host if host else ''}, since {when})"


def _inherited(run_dir: Path) -> bool:
    value = os.environ.get(INHERITED_ENV, "")
    if not value:
        return False
    try:
        return Path(value).resolve() == run_dir.resolve()
    except OSError:
        return False


class RunLock:
    """``with RunLock(run_dir, "resume"):`` holds the run folder or raises RunLockedError naming the holder."""

    def __init__(self, run_dir: str | os.PathLike, command: str):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.command = command
        self._handle = None
        self._owned_file = False
        self.inherited = False

    def _info(self) -> dict:
        return {"pid": os.getpid(), "pid_started": _process_start(os.getpid()), "command": self.command,
                "since": time.time(), "host": socket.gethostname(), "argv": sys.argv[:6]}

    def _refuse(self, holder: dict) -> RunLockedError:
        orphans = (" (that process has ended; processes it started still run)"
                   if holder and fcntl is not None and not holder_alive(holder) else "")
        return RunLockedError(
            f"{self.run_dir}: in use by {describe_holder(holder)}{orphans}; wait for it to end (or stop it) and "
            f"try again. Only one command at a time may train, resume or export a run.", holder)

    def acquire(self) -> RunLock:
        if _inherited(self.run_dir):
            self.inherited = True
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if fcntl is not None:
            self._acquire_flock()
        else:
            self._acquire_exclusive()
        return self

    def _acquire_flock(self) -> None:
        for _attempt in range(20):
            handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held open while locked
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                raise self._refuse(read_holder(self.run_dir)) from None
            # The holder before us may have deleted the file after we opened it: then we locked an orphan.
            try:
                same = os.path.samestat(os.fstat(handle.fileno()), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                handle.close()
                continue
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(self._info()) + "\n")
            handle.flush()
            self._handle = handle
            return
        raise self._refuse(read_holder(self.run_dir))

    def _acquire_exclusive(self) -> None:
        for _attempt in range(20):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = read_holder(self.run_dir)
                if holder and holder_alive(holder):
                    raise self._refuse(holder) from None
                # Stale (its process is gone): move it aside atomically, so only one taker wins it.
                aside = self.path.with_name(f"{LOCK_FILE}.stale-{os.getpid()}")
                try:
                    os.replace(self.path, aside)
                    aside.unlink(missing_ok=True)
                except OSError as exc:  # another taker moved it first: the loop retries the exclusive create
                    logger.debug("stale lock %s already taken: %s", self.path, exc)
                continue
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(self._info()) + "\n")
            self._owned_file = True
            return
        raise self._refuse(read_holder(self.run_dir))

    def release(self) -> None:
        if self._handle is not None:
            try:
                self.path.unlink(missing_ok=True)
            except OSError as exc:  # the flock, released below, is what protects the run; the file is a label
                logger.debug("cannot remove the lock file %s: %s", self.path, exc)
            self._handle.close()  # closing releases the flock
            self._handle = None
        elif self._owned_file:
            self.path.unlink(missing_ok=True)
            self._owned_file = False

    def inheritable_fds(self) -> tuple[int, ...]:
        """File descriptors to pass to a child process (``Popen(pass_fds=...)``) so that the OS lock stays
        held while the child runs, even if this process is killed first (the launcher of ``launch``)."""
        if self._handle is None:
            return ()
        os.set_inheritable(self._handle.fileno(), True)
        return (self._handle.fileno(),)

    def child_environment(self) -> dict[str, str]:
        """Environment entries that let processes started for this run (its ranks) use the folder."""
        return {INHERITED_ENV: str(self.run_dir.resolve())}

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
