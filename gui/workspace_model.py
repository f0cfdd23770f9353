"""One live list of the workspace's runs, shared by every page (Train, Chat, Evaluate, Runs).

A run started, finished, stopped or deleted anywhere (this window, the CLI in a terminal, another window)
shows up on every page without a click: a QFileSystemWatcher on the workspace and on each run folder
(``status.json`` is replaced atomically, which changes its folder) triggers a re-read, and a one-second
poll of each run's ``status.json`` modification time covers file systems where watching does not work.
Pages connect to ``runsChanged`` and refill their pickers, keeping their selection.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from PySide6.QtCore import QFileSystemWatcher, QObject, QTimer, Signal, Slot

log = logging.getLogger(__name__)

POLL_MS = 1000      # fallback poll: a change is seen within ~1 s even without file-system events
DEBOUNCE_MS = 150   # a new run writes several files at once: re-read once


def _status_signature(workspace: Path) -> tuple:
    """Cheap fingerprint of the workspace: run folder names with their status.json mtime and size."""
    entries = []
    try:
        with os.scandir(workspace) as children:
            for child in children:
                if not child.is_dir():
                    continue
                try:
                    stat = os.stat(os.path.join(child.path, "status.json"))
                    entries.append((child.name, stat.st_mtime_ns, stat.st_size))
                except OSError:
                    entries.append((child.name, 0, 0))
    except OSError:
        return ()
    return tuple(sorted(entries))


class WorkspaceModel(QObject):
    """The runs of one workspace folder (``core.runs.RunSummary`` objects, newest first).

    Signals:
      runsChanged(object): the new list of RunSummary whenever a run appears, disappears, is renamed or
        changes state or gets weights (what run pickers show).
      runsProgressed(object): the new list whenever anything else changes (steps, best eval loss), for
        tables and curves of live runs.
    """

    runsChanged = Signal(object)
    runsProgressed = Signal(object)

    def __init__(self, workspace: str | Path, parent: QObject | None = None, *, poll_ms: int = POLL_MS):
        super().__init__(parent)
        self._workspace = Path(workspace)
        self._runs: list = []
        self._signature: tuple = ()
        self._progress_signature: tuple = ()
        self._fingerprint: tuple = ()
        self._watcher = QFileSystemWatcher(self)
        self._watcher.directoryChanged.connect(self._schedule)
        self._debounce = QTimer(self)
        self._debounce.setObjectName("workspace-debounce")
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(DEBOUNCE_MS)
        self._debounce.timeout.connect(self.refresh)
        self._poll = QTimer(self)
        self._poll.setObjectName("workspace-poll")
        self._poll.setInterval(poll_ms)
        self._poll.timeout.connect(self._poll_once)
        self._watch()
        self.refresh()
        if poll_ms > 0:
            self._poll.start()

    # -- public ------------------------------------------------------------------------------------
    @property
    def workspace(self) -> Path:
        return self._workspace

    @property
    def runs(self) -> list:
        return list(self._runs)

    def run(self, path: str | Path):
        """The RunSummary of ``path`` (None when it is not a run of the workspace)."""
        path = Path(path)
        return next((run for run in self._runs if Path(run.path) == path), None)

    def set_workspace(self, workspace: str | Path) -> None:
        workspace = Path(workspace)
        if workspace == self._workspace:
            return
        self._workspace = workspace
        self._signature = ()
        self._watch()
        self.refresh()

    def stop(self) -> None:
        """Stop watching (the window is closing)."""
        self._poll.stop()
        self._debounce.stop()

    @Slot()
    def refresh(self) -> None:
        """Re-read every run; emit runsChanged when anything a page shows has changed."""
        from core.runs import list_runs

        try:
            runs = list_runs(self._workspace)
        except OSError as exc:  # an unreadable workspace shows as empty; the reason goes to the log
            log.warning("cannot list the runs of %s: %s", self._workspace, exc)
            runs = []
        self._fingerprint = _status_signature(self._workspace)
        signature = tuple((str(r.path), r.name, r.state, r.has_weights) for r in runs)
        progress = tuple((r.global_step, r.total_steps, r.best_eval_loss) for r in runs)
        self._runs = runs
        self._watch_runs(runs)
        if signature != self._signature:
            self._signature, self._progress_signature = signature, progress
            self.runsChanged.emit(list(runs))
            self.runsProgressed.emit(list(runs))
        elif progress != self._progress_signature:
            self._progress_signature = progress
            self.runsProgressed.emit(list(runs))

    # -- watching ----------------------------------------------------------------------------------
    def _watch(self) -> None:
        if self._watcher.directories():
            self._watcher.removePaths(self._watcher.directories())
        try:
            self._workspace.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # e.g. a read-only location: polling still reports what exists
            log.warning("cannot create the workspace %s: %s", self._workspace, exc)
        if self._workspace.is_dir():
            self._watcher.addPath(str(self._workspace))

    def _watch_runs(self, runs) -> None:
        wanted = {str(self._workspace)} | {str(run.path) for run in runs}
        for extra in ("final", "checkpoints"):
            wanted |= {str(Path(run.path) / extra) for run in runs if (Path(run.path) / extra).is_dir()}
        current = set(self._watcher.directories())
        stale = [path for path in current if path not in wanted]
        if stale:
            self._watcher.removePaths(stale)
        new = [path for path in wanted if path not in current and Path(path).is_dir()]
        if new:
            self._watcher.addPaths(new)

    @Slot(str)
    def _schedule(self, _path: str = "") -> None:
        self._debounce.start()

    @Slot()
    def _poll_once(self) -> None:
        if _status_signature(self._workspace) != self._fingerprint:
            self._schedule()
