"""The run queue on the Runs page: the waiting runs in order (core.queue), Up / Down / Remove, and
Run / Stop the queue. The queue is run folders in state ``queued``: it is read from the workspace (through
the shared workspace model), so it survives a restart. An *active* queue (``WORKSPACE/queue.json``: it was
running when the app closed, or a run was queued from the Train page) starts by itself as soon as no run of
the workspace is training; "Stop the queue" makes it inactive until Run is pressed again.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from gui.tasks import TaskGroup

logger = logging.getLogger(__name__)


class QueuePanel(QWidget):
    """Waiting runs and the queue's controls. Signals: queueFinished(object) with the list of
    (run folder, end state) pairs or the exception, when the queue stops."""

    queueFinished = Signal(object)

    def __init__(self, state, parent=None, *, continue_active: bool = True):
        super().__init__(parent)
        self.state = state
        self.tasks = TaskGroup(self)
        self.tasks.busyChanged.connect(self._on_busy_changed)
        self.task = None
        self._user_stopped = False
        self._current: str = ""

        self.title = QLabel("Queue")
        self.title.setStyleSheet("font-weight: 600;")
        self.table = QTableWidget(0, 3)
        self.table.setObjectName("queueTable")
        self.table.setHorizontalHeaderLabels(["#", "Waiting run", "Part of"])
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.table.itemSelectionChanged.connect(self._update_buttons)
        self.up_button = QPushButton("Up")
        self.up_button.setToolTip("Run the selected waiting run sooner")
        self.up_button.clicked.connect(lambda: self.move_selected(-1))
        self.down_button = QPushButton("Down")
        self.down_button.setToolTip("Run the selected waiting run later")
        self.down_button.clicked.connect(lambda: self.move_selected(1))
        self.remove_button = QPushButton("Remove")
        self.remove_button.setToolTip("Take the selected run out of the queue (its folder holds only its settings)")
        self.remove_button.clicked.connect(self.remove_selected)
        self.run_button = QPushButton("▶  Run the queue")
        self.run_button.setToolTip("Train the waiting runs one after another. The queue continues after the app "
                                   "restarts until you stop it.")
        self.run_button.clicked.connect(self.start)
        self.stop_button = QPushButton("■  Stop the queue")
        self.stop_button.setToolTip("Stop the running run at its next step (a checkpoint is saved; it continues "
                                    "first the next time) and the queue with it")
        self.stop_button.clicked.connect(self.stop)
        self.status_label = QLabel("")
        self.status_label.setTextFormat(Qt.TextFormat.PlainText)
        self.status_label.setStyleSheet("color: palette(mid);")
        buttons = QHBoxLayout()
        for button in (self.up_button, self.down_button, self.remove_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.stop_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        header = QHBoxLayout()
        header.addWidget(self.title)
        header.addWidget(self.status_label, 1)
        layout.addLayout(header)
        layout.addWidget(self.table, 1)
        layout.addLayout(buttons)
        self._continue_active = continue_active
        state.runs_model.runsChanged.connect(self.refresh)
        self.refresh()

    # -- listing -----------------------------------------------------------------------------------
    def waiting(self) -> list[dict]:
        from core import queue

        return queue.queued_runs(self.state.workspace)

    def refresh(self, *_args) -> None:
        runs = self.waiting()
        selected = self.selected_path()
        self.table.setRowCount(len(runs))
        for row, run in enumerate(runs):
            state = run.get("state")
            name = run["name"] + ("  (continues from its checkpoint)" if state in ("stopped", "interrupted") else "")
            cells = (str(row + 1), name, run.get("sweep_variant") or "")
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setData(Qt.ItemDataRole.UserRole, str(run["run_dir"]))
                self.table.setItem(row, column, item)
            if selected is not None and Path(run["run_dir"]) == selected:
                self.table.selectRow(row)
        self.title.setText(f"Queue ({len(runs)} waiting)" if runs else "Queue (empty)")
        # Out of the way while nothing waits: most workspaces never queue anything.
        self.setVisible(bool(runs) or self.tasks.is_busy)
        self._update_buttons()
        if runs and self._continue_active and not self.tasks.is_busy:
            self._maybe_continue()

    def _maybe_continue(self) -> None:
        """An active queue (left running when the app closed, or a run queued on the Train page) starts as
        soon as no run of the workspace is training."""
        from core import queue

        if not queue.is_active(self.state.workspace):
            return
        if any(run.state == "running" for run in self.state.runs_model.runs):
            return  # a run trains (the Train page's, or another process's): the queue waits for it
        QTimer.singleShot(0, self.continue_after_restart)

    def selected_path(self) -> Path | None:
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        if not rows:
            return None
        item = self.table.item(rows[0].row(), 0)
        return Path(item.data(Qt.ItemDataRole.UserRole)) if item is not None else None

    def select(self, run_dir) -> None:
        for row in range(self.table.rowCount()):
            if Path(self.table.item(row, 0).data(Qt.ItemDataRole.UserRole)) == Path(run_dir):
                self.table.selectRow(row)

    # -- editing -----------------------------------------------------------------------------------
    def move_selected(self, offset: int) -> None:
        from core import queue

        path = self.selected_path()
        if path is None:
            return
        queue.move(self.state.workspace, path, offset)
        self.refresh()
        self.select(path)

    def remove_selected(self) -> None:
        from core import queue
        from core.errors import StudioError

        path = self.selected_path()
        if path is None:
            return
        try:
            queue.remove(path)
        except StudioError as exc:
            self.status_label.setText(str(exc))
        self.refresh()

    def _update_buttons(self) -> None:
        has = self.selected_path() is not None
        busy = self.tasks.is_busy
        for button in (self.up_button, self.down_button, self.remove_button):
            button.setEnabled(has)
        self.run_button.setEnabled(not busy and self.table.rowCount() > 0)
        self.stop_button.setEnabled(busy)

    # -- running -------------------------------------------------------------------------------------
    @property
    def is_busy(self) -> bool:
        return self.tasks.is_busy

    def continue_after_restart(self) -> None:
        """Start the active queue (after a restart, or when the run it waited for ended)."""
        from core import queue

        if not self.tasks.is_busy and queue.queued_runs(self.state.workspace):
            self.status_label.setText("Continuing the queue.")
            self.start()

    def start(self) -> None:
        """Work through the queue in a worker thread."""
        if self.tasks.is_busy:
            return
        from core import queue

        workspace = self.state.workspace
        self._user_stopped = False

        def work(progress, stop):
            def on_run(run_dir, event):
                progress(None, f"training {run_dir.name}" if event == "started" else f"{run_dir.name}: {event}")

            from gui.lr_find_dialog import quick_gil_handover

            # The window closing also stops the queue: it stays marked active, so the next start continues it.
            with quick_gil_handover():
                return queue.run_queue(workspace, stop=stop, on_run=on_run, deactivate_on_stop=False)

        self.task = self.tasks.run(work, name="queue")
        self.task.progress.connect(lambda payload: self.status_label.setText(str(payload[1])))
        self.task.succeeded.connect(self._on_finished)
        self.task.failed.connect(self._on_finished)
        self.task.start()

    def stop(self) -> None:
        """Stop the queue (the running run stops at its next step with a checkpoint)."""
        if self.task is not None and self.task.is_running:
            self._user_stopped = True
            self.task.stop_token.request("the queue was stopped")
            self.status_label.setText("Stopping after the current step…")

    def _on_finished(self, outcome) -> None:
        from core import queue

        if self._user_stopped:
            queue.set_active(self.state.workspace, False)  # a stopped queue waits for Run, even after a restart
        if isinstance(outcome, list):
            self.status_label.setText(f"{len(outcome)} run(s) done" + (", queue stopped" if self._user_stopped else ""))
        else:
            self.status_label.setText(f"The queue stopped: {outcome}")
        self.refresh()
        self.queueFinished.emit(outcome)

    def _on_busy_changed(self, _busy: bool) -> None:
        self.refresh()

    def shutdown(self, timeout_ms: int = 60000) -> bool:
        """The window is closing: stop the running queue (it stays active and continues on the next start)."""
        return self.tasks.shutdown(timeout_ms)
