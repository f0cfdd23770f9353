"""Runs page: every run of the workspace, overlaid curves, a diff of settings, and run actions.

The table is refreshed from ``core.runs.list_runs`` whenever the shared workspace model
(gui.workspace_model, shared with Chat and Evaluate) sees a run change, and by a slow timer while visible
(curves of a live run), so a run started from the CLI shows up by itself. Resume and
export run in a worker thread (``gui.chat_workers.TaskRunner``).
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import pyqtgraph as pg
from PySide6.QtCore import QItemSelectionModel, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QMenu,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from gui.chat_workers import TaskOutcome, TaskProgress, TaskRunner
from gui.plain import warning

COLUMNS = ("Name", "Created", "Method", "Model", "Status", "Steps", "Best eval loss", "Duration")
METRICS = {  # combo label -> (record kind, key)
    "Training loss": ("train", "loss"),
    "Eval loss": ("eval", "eval_loss"),
    "Learning rate": ("train", "learning_rate"),
}
PALETTE = ("#2f6fd6", "#e0702b", "#2a9d8f", "#8e5bd6", "#d64550", "#7a8c1f", "#c2185b", "#546e7a")
STATE_COLORS = {"finished": "#2a9d8f", "running": "#2f6fd6", "stopped": "#b8860b", "interrupted": "#e0702b",
                "failed": "#d64550", "diverged": "#d64550"}
REFRESH_FALLBACK_MS = 5000
RESUMABLE = ("stopped", "interrupted", "failed")
LIVE_STATES = ("running",)  # status.json states of a run whose training process is alive (read_status checks the pid)


def format_duration(seconds: float | None) -> str:
    """1:02:03 / 4:05 / — for a missing value."""
    if seconds is None or seconds != seconds:
        return "—"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def flatten_config(cfg) -> dict[str, object]:
    """``{"training.learning_rate": 0.0002, ...}`` for a RunConfig (the run name left out)."""
    flat: dict[str, object] = {}
    for section, values in cfg.to_dict().items():
        if isinstance(values, dict):
            for key, value in values.items():
                flat[f"{section}.{key}"] = value
    return flat


def config_differences(configs: list) -> list[tuple[str, list]]:
    """(setting, [value per config]) for every setting whose values are not all equal."""
    flats = [flatten_config(cfg) for cfg in configs]
    keys: list[str] = []
    for flat in flats:
        keys.extend(k for k in flat if k not in keys)
    missing = object()
    rows = []
    for key in keys:
        values = [flat.get(key, missing) for flat in flats]
        if any(v != values[0] for v in values[1:]):
            rows.append((key, [None if v is missing else v for v in values]))
    return rows


class _SortItem(QTableWidgetItem):
    """Sorts by a hidden key (dates, numbers) instead of the displayed text."""

    def __init__(self, text: str, key):
        super().__init__(text)
        self.setData(Qt.ItemDataRole.UserRole + 1, key)

    def __lt__(self, other):
        mine, theirs = self.data(Qt.ItemDataRole.UserRole + 1), other.data(Qt.ItemDataRole.UserRole + 1)
        try:
            return (mine is None, mine) < (theirs is None, theirs)
        except TypeError:
            return str(mine) < str(theirs)


class RunsPage(QWidget):
    """Reopen, compare, resume, clone, rename, delete and export runs.

    Signals: runOpened(Path), runResumed(Path) (when a resume finished), cloneRequested(RunConfig),
    navigateRequested(str page key), busyChanged(bool).
    """

    runOpened = Signal(object)
    runResumed = Signal(object)
    cloneRequested = Signal(object)
    navigateRequested = Signal(str)
    busyChanged = Signal(bool)

    def __init__(self, state, parent=None):
        super().__init__(parent)
        self.state = state
        self._runs: list = []
        self._metrics_cache: dict[str, tuple[float, list[dict]]] = {}
        self._workspace: Path | None = None
        self._task = TaskRunner(self)
        self._task.progressed.connect(self._on_task_progress)
        self._task.finished.connect(self._on_task_finished)
        self._task_run: Path | None = None
        self._export_target: Path | None = None
        # The overlay's plot items by run name and what they were drawn for (update_overlay redraws on change).
        self.overlay_curves: dict[str, tuple[list, list]] = {}
        self._overlay_items: dict = {}
        self._overlay_layout: tuple | None = None
        self.export_result_dialog = None
        self.export_result_text = ""
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(300)  # a new run writes several files: refresh once
        self._debounce.timeout.connect(self.refresh)
        self._fallback = QTimer(self)
        self._fallback.setInterval(REFRESH_FALLBACK_MS)
        self._fallback.timeout.connect(self.refresh)
        self._build()
        state.configChanged.connect(self._on_config_changed)
        # The shared workspace model watches the folders; any change of a run reaches this table.
        state.runs_model.runsProgressed.connect(self._schedule_refresh)
        self._watch(self.state.workspace)
        self.refresh()

    # ------------------------------------------------------------------------------- layout
    def _build(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(12, 12, 12, 12)
        outer.setSpacing(8)
        header = QHBoxLayout()
        title = QLabel("Runs")
        font = title.font()
        font.setPointSizeF(font.pointSizeF() * 1.5)
        font.setBold(True)
        title.setFont(font)
        header.addWidget(title)
        header.addSpacing(12)
        header.addWidget(QLabel("Workspace:"))
        self.workspace_label = QLabel("")
        self.workspace_label.setTextFormat(Qt.TextFormat.PlainText)
        self.workspace_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.workspace_label.setStyleSheet("color: palette(mid);")
        header.addWidget(self.workspace_label, 1)
        change = QPushButton("Change…")
        change.setToolTip("Choose the folder that holds your runs (one sub-folder per run)")
        change.clicked.connect(self._choose_workspace)
        header.addWidget(change)
        refresh = QToolButton()
        refresh.setText("⟳")
        refresh.setToolTip("Refresh now (the list also refreshes by itself when runs change)")
        refresh.clicked.connect(self.refresh)
        header.addWidget(refresh)
        outer.addLayout(header)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setObjectName("runsTable")
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.setSortingEnabled(True)
        self.table.verticalHeader().setVisible(False)
        header_view = self.table.horizontalHeader()
        header_view.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header_view.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.itemSelectionChanged.connect(self._on_selection_changed)
        self.table.doubleClicked.connect(self.open_selected)
        self.empty_label = QLabel("No runs in this workspace yet. Train one on the Train page, or run "
                                  "`python main.py train` in a terminal: it appears here by itself.")
        self.empty_label.setWordWrap(True)
        self.empty_label.setStyleSheet("color: palette(mid); padding: 8px;")

        actions = QHBoxLayout()

        def button(text: str, tip: str, slot) -> QPushButton:
            widget = QPushButton(text)
            widget.setToolTip(tip)
            widget.clicked.connect(slot)
            actions.addWidget(widget)
            return widget

        self.open_button = button("Open", "Load this run's settings and curves on the Train page", self.open_selected)
        self.resume_button = button("Resume", "Continue a stopped or interrupted run from its last complete "
                                    "checkpoint (optimizer and schedule included)", self.resume_selected)
        self.clone_button = button("Clone settings", "Start a new run with this run's settings (on the Train page)",
                                   self.clone_selected)
        self.rename_button = button("Rename…", "Rename the run (its folder and the name in its config)",
                                    self._rename_dialog)
        self.export_button = QToolButton()
        self.export_button.setText("Export")
        self.export_button.setToolTip("Save the adapter, a merged model, a GGUF file for llama.cpp / LM Studio / "
                                      "Ollama, or a Python script reproducing the run")
        self.export_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        menu = QMenu(self.export_button)
        menu.addAction("Adapter only (small; needs the base model)…", lambda: self._export_dialog("adapter"))
        menu.addAction("Merged model (transformers folder)…", lambda: self._export_dialog("merged"))
        menu.addAction("GGUF f16 for llama.cpp / Ollama…", lambda: self._export_dialog("gguf"))
        menu.addAction("GGUF q8_0 (half the size)…", lambda: self._export_dialog("gguf-q8_0"))
        menu.addAction("Training script…", lambda: self._export_dialog("script"))
        self.export_button.setMenu(menu)
        actions.addWidget(self.export_button)
        self.delete_button = button("Delete…", "Delete the selected runs from disk (asks first)", self._delete_dialog)
        actions.addStretch(1)
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(260)
        self.progress.setTextVisible(True)
        self.progress.hide()
        self.task_label = QLabel("")
        self.task_label.setStyleSheet("color: palette(mid);")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.hide()
        self.cancel_button.clicked.connect(lambda: self._task.cancel())
        actions.addWidget(self.task_label)
        actions.addWidget(self.progress)
        actions.addWidget(self.cancel_button)

        top = QWidget()
        top_layout = QVBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        top_layout.addWidget(self.table, 1)
        top_layout.addWidget(self.empty_label)
        top_layout.addLayout(actions)
        from gui.queue_panel import QueuePanel

        self.queue_panel = QueuePanel(self.state, self)  # waiting runs (hidden while the queue is empty)
        top_layout.addWidget(self.queue_panel)

        compare = QSplitter(Qt.Orientation.Horizontal)
        plot_box = QWidget()
        plot_layout = QVBoxLayout(plot_box)
        plot_layout.setContentsMargins(0, 0, 0, 0)
        plot_header = QHBoxLayout()
        plot_header.addWidget(QLabel("Compare curves:"))
        self.metric_combo = QComboBox()
        self.metric_combo.addItems(list(METRICS))
        self.metric_combo.setToolTip("Which curve to overlay for the selected runs")
        self.metric_combo.currentIndexChanged.connect(self.update_overlay)
        plot_header.addWidget(self.metric_combo)
        plot_header.addStretch(1)
        plot_layout.addLayout(plot_header)
        self.plot = pg.PlotWidget()
        self.plot.setBackground("w")
        self.plot.showGrid(x=True, y=True, alpha=0.25)
        self.plot.setLabel("bottom", "step")
        self.legend = self.plot.addLegend(offset=(-10, 10))
        plot_layout.addWidget(self.plot, 1)
        compare.addWidget(plot_box)

        diff_box = QWidget()
        diff_layout = QVBoxLayout(diff_box)
        diff_layout.setContentsMargins(0, 0, 0, 0)
        self.diff_label = QLabel("Select two or more runs to see the settings that differ.")
        self.diff_label.setWordWrap(True)
        diff_layout.addWidget(self.diff_label)
        self.diff_table = QTableWidget(0, 0)
        self.diff_table.setObjectName("configDiff")
        self.diff_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.diff_table.setAlternatingRowColors(True)
        self.diff_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.diff_table.horizontalHeader().setStretchLastSection(True)
        diff_layout.addWidget(self.diff_table, 1)
        compare.addWidget(diff_box)
        compare.setStretchFactor(0, 3)
        compare.setStretchFactor(1, 2)
        compare.setSizes([720, 480])  # stretch factors alone leave the diff panel too narrow at first show

        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(top)
        splitter.addWidget(compare)
        splitter.setStretchFactor(0, 1)
        splitter.setStretchFactor(1, 2)
        splitter.setSizes([260, 520])
        outer.addWidget(splitter, 1)
        self._update_actions()

    # ------------------------------------------------------------------------------- workspace
    def _watch(self, workspace: Path) -> None:
        workspace = Path(workspace)
        if self._workspace == workspace:
            return
        self._workspace = workspace
        workspace.mkdir(parents=True, exist_ok=True)
        self.workspace_label.setText(str(workspace))
        self._fallback.start()

    @Slot()
    def _choose_workspace(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose the runs folder", str(self.state.workspace))
        if folder:
            self.set_workspace(folder)

    def set_workspace(self, folder) -> None:
        """Use ``folder`` as the workspace (shared with the other pages through the state)."""
        self.state.set_workspace(Path(folder))  # emits configChanged(None) -> _on_config_changed

    @Slot(object)
    def _on_config_changed(self, section) -> None:
        if section is None and self.state.workspace != self._workspace:
            self._watch(self.state.workspace)
            self.refresh()

    @Slot(object)
    def _schedule_refresh(self, _changed: object = None) -> None:
        self._debounce.start()

    # ------------------------------------------------------------------------------- table
    @Slot()
    def refresh(self) -> None:
        """Re-read the workspace, keeping the selection and sort order."""
        from core.runs import list_runs

        selected = {str(p) for p in self.selected_paths()}
        runs = list_runs(self._workspace or self.state.workspace)
        signature = [(str(r.path), r.state, r.global_step, r.best_eval_loss, r.name) for r in runs]
        if signature == [(str(r.path), r.state, r.global_step, r.best_eval_loss, r.name) for r in self._runs]:
            self._runs = runs
            if selected:
                self.update_overlay()  # curves of a running run still grow
            return
        self._runs = runs
        sorting = self.table.isSortingEnabled()
        self.table.setSortingEnabled(False)
        self.table.blockSignals(True)
        self.table.setRowCount(len(runs))
        for row, run in enumerate(runs):
            created = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.created)) if run.created else "—"
            steps = f"{run.global_step}/{run.total_steps}" if run.total_steps else str(run.global_step)
            best = f"{run.best_eval_loss:.4f}" if run.best_eval_loss is not None else "—"
            model = Path(run.model).name if ("/" in run.model and Path(run.model).is_absolute()) else run.model
            cells = [
                _SortItem(run.name, run.name.lower()),
                _SortItem(created, run.created or 0.0),
                _SortItem(run.method, run.method),
                _SortItem(model, model),
                _SortItem(run.state, run.state),
                _SortItem(steps, run.global_step),
                _SortItem(best, run.best_eval_loss),
                _SortItem(format_duration(run.duration_seconds), run.duration_seconds),
            ]
            cells[0].setData(Qt.ItemDataRole.UserRole, str(run.path))
            cells[0].setToolTip(str(run.path))
            cells[3].setToolTip(run.model)
            color = STATE_COLORS.get(run.state)
            if color:
                cells[4].setForeground(QColor(color))
            for column, item in enumerate(cells):
                self.table.setItem(row, column, item)
        self.table.setSortingEnabled(sorting)
        self.table.blockSignals(False)
        self._select_paths(selected)
        self.empty_label.setVisible(not runs)
        self._on_selection_changed()

    def _select_paths(self, paths: set[str]) -> None:
        selection = self.table.selectionModel()
        selection.clearSelection()
        for row in range(self.table.rowCount()):
            if self.table.item(row, 0).data(Qt.ItemDataRole.UserRole) in paths:
                selection.select(self.table.model().index(row, 0),
                                 QItemSelectionModel.SelectionFlag.Select | QItemSelectionModel.SelectionFlag.Rows)

    def select_runs(self, paths) -> None:
        """Select the rows of ``paths`` (run folders)."""
        self._select_paths({str(Path(p)) for p in paths})
        self._on_selection_changed()

    def selected_paths(self) -> list[Path]:
        """Run folders of the selected rows, in table order."""
        rows = sorted({index.row() for index in self.table.selectionModel().selectedRows()})
        return [Path(self.table.item(row, 0).data(Qt.ItemDataRole.UserRole)) for row in rows]

    def _summary(self, path: Path):
        for run in self._runs:
            if Path(run.path) == Path(path):
                return run
        return None

    @Slot()
    def _on_selection_changed(self) -> None:
        self._update_actions()
        self.update_overlay()
        self.update_diff()

    def _update_actions(self) -> None:
        paths = self.selected_paths() if hasattr(self, "table") else []
        one = len(paths) == 1
        busy = self._task.is_busy
        state = self._summary(paths[0]).state if one and self._summary(paths[0]) else ""
        self.open_button.setEnabled(one)
        self.clone_button.setEnabled(one)
        self.rename_button.setEnabled(one and state != "running" and not busy)
        self.resume_button.setEnabled(one and state in RESUMABLE and not busy)
        self.export_button.setEnabled(one and not busy)
        live = self._live_runs(paths)
        self.delete_button.setEnabled(bool(paths) and not busy and not live)
        self.delete_button.setToolTip(
            f"{', '.join(p.name for p in live)}: still training; stop it before deleting" if live
            else "Delete the selected runs from disk (asks first)")

    def _live_runs(self, paths) -> list[Path]:
        """The runs among ``paths`` whose training process is running now (read fresh: the table may be stale)."""
        from core.runs import read_status

        return [Path(path) for path in paths if read_status(path).get("state") in LIVE_STATES]

    # ------------------------------------------------------------------------------- comparison
    def _metrics(self, run_dir: Path) -> list[dict]:
        from core.runs import METRICS_FILE, read_metrics

        try:
            mtime = (run_dir / METRICS_FILE).stat().st_mtime
        except OSError:
            return []
        cached = self._metrics_cache.get(str(run_dir))
        if cached and cached[0] == mtime:
            return cached[1]
        records = read_metrics(run_dir)
        self._metrics_cache[str(run_dir)] = (mtime, records)
        return records

    @Slot()
    def update_overlay(self) -> None:
        """Draw the chosen curve of every selected run, one colour each, with a legend.

        While the runs and the metric stay the same (the 1 s refresh of a running run), the existing curves get
        their new points (``setData``) instead of being removed and drawn again: deleting plot items on every poll
        while a run trained in another thread is where the GUI thread crashed (segfaults in pyqtgraph's weak-keyed
        item caches in two CI runs)."""
        kind, key = METRICS[self.metric_combo.currentText()]
        curves: dict[str, tuple[list, list]] = {}
        for path in self.selected_paths():
            xs, ys = [], []
            for record in self._metrics(path):
                value = record.get(key)
                if record.get("kind", "train") == kind and isinstance(value, (int, float)) and math.isfinite(value):
                    xs.append(float(record.get("step") or 0))
                    ys.append(float(value))
            summary = self._summary(path)
            curves[summary.name if summary else path.name] = (xs, ys)
        self.overlay_curves = curves
        layout = (kind, key, [(name, bool(xs), len(xs) < 30) for name, (xs, _) in curves.items()])
        items = self._overlay_items
        if layout == self._overlay_layout:
            for name, (xs, ys) in curves.items():
                if name in items:
                    items[name].setData(xs, ys)
            return
        self.plot.clear()
        self.legend.clear()
        self.plot.setLabel("left", self.metric_combo.currentText())
        self.plot.setLogMode(False, False)
        items = {}
        for number, (name, (xs, ys)) in enumerate(curves.items()):
            if not xs:
                continue
            color = PALETTE[number % len(PALETTE)]
            symbol = "o" if kind == "eval" or len(xs) < 30 else None
            items[name] = self.plot.plot(xs, ys, name=name, pen=pg.mkPen(color, width=2), symbol=symbol,
                                         symbolSize=5, symbolBrush=color, symbolPen=None)
        self._overlay_items, self._overlay_layout = items, layout
        self.plot.enableAutoRange()

    @Slot()
    def update_diff(self) -> None:
        """Fill the diff table with the settings that differ between the selected runs."""
        from core.runs import load_run_config

        paths = self.selected_paths()
        self.diff_table.clear()
        if len(paths) < 2:
            self.diff_table.setRowCount(0)
            self.diff_table.setColumnCount(0)
            self.diff_label.setText("Select two or more runs (Ctrl/Shift+click) to see the settings that differ.")
            return
        configs, names = [], []
        for path in paths:
            try:
                configs.append(load_run_config(path))
            except Exception as exc:  # one broken config must not hide the others
                self.diff_label.setText(f"{path.name}: cannot read its config ({exc})")
                self.diff_table.setRowCount(0)
                return
            summary = self._summary(path)
            names.append(summary.name if summary else path.name)
        rows = config_differences(configs)
        self.diff_table.setColumnCount(len(paths))
        self.diff_table.setHorizontalHeaderLabels(names)
        self.diff_table.setRowCount(len(rows))
        self.diff_table.setVerticalHeaderLabels([key for key, _ in rows])
        for row, (_key, values) in enumerate(rows):
            for column, value in enumerate(values):
                text = "—" if value is None else (f"{value:g}" if isinstance(value, float) else str(value))
                self.diff_table.setItem(row, column, QTableWidgetItem(text))
        self.diff_label.setText(f"{len(rows)} setting{'s' if len(rows) != 1 else ''} differ "
                                f"between the {len(paths)} selected runs." if rows
                                else "The selected runs have identical settings.")

    def diff_rows(self) -> dict[str, list[str]]:
        """The diff table as {setting: [text per run]} (used by tests and the screenshot check)."""
        result = {}
        for row in range(self.diff_table.rowCount()):
            key = self.diff_table.verticalHeaderItem(row).text()
            result[key] = [self.diff_table.item(row, c).text() for c in range(self.diff_table.columnCount())]
        return result

    # ------------------------------------------------------------------------------- actions
    def _one(self) -> Path | None:
        paths = self.selected_paths()
        return paths[0] if len(paths) == 1 else None

    @Slot()
    def open_selected(self, *_args) -> None:
        """Emit runOpened(run_dir) and ask to show the Train page."""
        path = self._one()
        if path is not None:
            self.runOpened.emit(path)
            self.navigateRequested.emit("train")

    @Slot()
    def clone_selected(self) -> None:
        """Put the selected run's settings into the studio state as a new run and go to Train."""
        from core.runs import load_run_config

        path = self._one()
        if path is None:
            return
        try:
            cfg = load_run_config(path)
        except Exception as exc:
            warning(self, "Clone settings", f"Cannot read the settings of {path.name}:\n{exc}")
            return
        cfg.name = f"{cfg.name or path.name}-copy"
        self.state.set_config(cfg)
        self.state.show_message(f"Settings of {path.name} loaded: adjust them and start a new run")
        self.cloneRequested.emit(cfg)
        self.navigateRequested.emit("train")

    def rename_run(self, path, new_name: str) -> Path:
        """Rename the run folder and the name in its config; returns the new folder."""
        from core.config import ConfigError
        from core.runs import CONFIG_FILE, _slug, load_run_config

        path = Path(path)
        new_name = new_name.strip()
        if not new_name:
            raise ConfigError("name", "the new name is empty")
        target = path.parent / _slug(new_name)
        if target.exists() and target != path:
            raise ConfigError("name", f"{target} already exists: choose another name")
        if target != path:
            path.rename(target)
        if (target / CONFIG_FILE).exists():
            cfg = load_run_config(target)
            cfg.name = new_name
            cfg.save(target / CONFIG_FILE)
        self._metrics_cache.pop(str(path), None)
        self.refresh()
        self.select_runs([target])
        return target

    @Slot()
    def _rename_dialog(self) -> None:
        path = self._one()
        if path is None:
            return
        summary = self._summary(path)
        name, ok = QInputDialog.getText(self, "Rename run", "New name:", text=summary.name if summary else path.name)
        if ok and name.strip():
            try:
                self.rename_run(path, name)
            except Exception as exc:
                warning(self, "Rename run", str(exc))

    def delete_runs(self, paths) -> None:
        """Delete run folders from disk (no confirmation here: the dialog asks). A live run is never deleted:
        ValueError names it and nothing is deleted."""
        live = self._live_runs(paths)
        if live:
            raise ValueError(f"{', '.join(p.name for p in live)}: still training; stop it before deleting")
        for path in paths:
            shutil.rmtree(Path(path))
            self._metrics_cache.pop(str(path), None)
        self.refresh()

    @Slot()
    def _delete_dialog(self) -> None:
        paths = self.selected_paths()
        if not paths:
            return
        names = "\n".join(f"  • {p.name}" for p in paths[:10]) + ("\n  …" if len(paths) > 10 else "")
        answer = QMessageBox.question(
            self, "Delete runs",
            f"Delete {len(paths)} run{'s' if len(paths) != 1 else ''} with all checkpoints and models?\n\n{names}\n\n"
            "This cannot be undone.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel, QMessageBox.StandardButton.Cancel)
        if answer == QMessageBox.StandardButton.Yes:
            try:
                self.delete_runs(paths)
            except (OSError, ValueError) as exc:
                warning(self, "Delete runs", f"Could not delete everything: {exc}")

    # ------------------------------------------------------------------------------- background tasks
    @property
    def is_busy(self) -> bool:
        """True while a resume or export runs."""
        return self._task.is_busy

    def _start_task(self, name: str, run_dir: Path, fn) -> None:
        self._task_run = run_dir
        self._task.start(name, fn)
        self.progress.setRange(0, 0)
        self.progress.show()
        self.cancel_button.show()
        self.task_label.setText(f"{name} {run_dir.name}…")
        self._update_actions()
        self.busyChanged.emit(True)

    @Slot()
    def resume_selected(self) -> None:
        """Continue the selected stopped/interrupted run in a worker thread."""
        path = self._one()
        if path is not None and not self._task.is_busy:
            self.resume_run(path)

    def resume_run(self, run_dir) -> None:
        """Resume ``run_dir`` (core.training.resume) in the background; runResumed is emitted at the end."""
        run_dir = Path(run_dir)

        def work(stop, progress):
            from core.metrics import CallbackSink
            from core.training import resume

            def on_metric(point):
                total = getattr(point, "total_steps", 0) or 0
                step = getattr(point, "step", 0) or 0
                loss = getattr(point, "loss", None)
                text = f"step {step}/{total}" + (f" · loss {loss:.3f}" if isinstance(loss, float) else "")
                progress(step / total if total else None, text)

            def on_status(event):
                progress(getattr(event, "fraction", None), getattr(event, "message", "") or event.state)

            return resume(run_dir, sinks=[CallbackSink(on_metric=on_metric, on_status=on_status)], stop=stop)

        self._start_task("Resuming", run_dir, work)

    def export_run(self, run_dir, kind: str, destination, base_model: str | None = None) -> None:
        """Export ``kind`` ("adapter" | "merged" | "gguf" | "gguf-q8_0" | "script") of ``run_dir`` to
        ``destination`` (the folder that will be written, or the script's path) in the background."""
        run_dir, destination = Path(run_dir), Path(destination)

        def work(stop, progress):
            from core.locks import RunLock
            from core.runs import is_run_dir

            # One process per run folder, as `export` on the command line: an export never reads checkpoints a
            # training (here or in a terminal) is rotating away; a busy run says who holds it.
            if not is_run_dir(run_dir):
                return export_now(progress)
            with RunLock(run_dir, f"export {run_dir.name} (FineTune Studio window)"):
                return export_now(progress)

        def export_now(progress):
            from core import export

            progress(None, f"exporting {kind}")
            if kind.startswith("gguf"):
                from core.gguf_export import export_gguf

                quant = kind.partition("-")[2] or "f16"
                written = export_gguf(run_dir, destination, quant=quant, base_model=base_model, progress=progress)
                return Path(written.folder)
            if kind == "script":
                return export.export_script(run_dir, destination, progress=progress) or destination
            function = {"adapter": export.export_adapter, "merged": export.export_merged}[kind]
            return function(run_dir, destination, base_model=base_model, progress=progress) or destination

        self._export_target = destination
        self._start_task(f"Exporting {kind} of", run_dir, work)

    def ask_base_model(self, reference) -> str | None:
        """A local-folder base model does not exist on other machines: ask which name the export should carry.
        Returns the name (a Hub id, or the local path to keep it) or None to cancel."""
        from PySide6.QtWidgets import QInputDialog

        text, ok = QInputDialog.getText(
            self, "Base model of the export",
            "This run's base model is a folder on this machine:\n"
            f"{reference.name_or_path}\n\nOn another machine the export has to find the same model. Type its Hugging "
            "Face Hub id (e.g. EleutherAI/pythia-70m), or keep the path to use the export on this machine only.",
            text=reference.suggestion or reference.name_or_path)
        return text.strip() if ok and text.strip() else None

    def _export_dialog(self, kind: str) -> None:
        path = self._one()
        if path is None or self._task.is_busy:
            return
        base_model = None
        if kind != "script":
            from core.errors import StudioError
            from core.export import base_model_reference

            try:
                reference = base_model_reference(path)
            except StudioError as exc:
                warning(self, "Export", f"Cannot export {path.name}: {exc}")
                return
            if reference.kind == "local":
                base_model = self.ask_base_model(reference)
                if base_model is None:
                    return
        if kind == "script":
            target, _ = QFileDialog.getSaveFileName(self, "Export training script",
                                                    str(path / f"train_{path.name}.py"), "Python (*.py)")
        else:
            folder_name = f"{path.name}-{kind}"
            target = QFileDialog.getExistingDirectory(
                self, f"Where to save it: a new folder “{folder_name}” is created inside the folder you choose",
                str(path.parent))
            if target:
                target = str(Path(target) / folder_name)
        if target:
            self.export_run(path, kind, target, base_model=base_model)

    def _show_export_result(self, written: Path) -> None:
        """Say where the export went and what it holds, with a button to open the folder."""
        from PySide6.QtWidgets import QDialog, QDialogButtonBox

        folder = written if written.is_dir() else written.parent
        items = sorted(folder.iterdir()) if folder.is_dir() else []
        listing = "\n".join(f"  {item.name}{'/' if item.is_dir() else ''}  "
                             f"({_format_size(_size_of(item))})" for item in items[:30])
        dialog = QDialog(self)
        dialog.setWindowTitle("Export finished")
        layout = QVBoxLayout(dialog)
        text = QLabel(f"Written to:\n{written}\n\nIt contains:\n{listing}")
        text.setTextFormat(Qt.TextFormat.PlainText)
        text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(text)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        open_button = buttons.addButton("Open folder", QDialogButtonBox.ButtonRole.ActionRole)
        open_button.clicked.connect(lambda: _open_folder(folder))
        buttons.rejected.connect(dialog.close)
        layout.addWidget(buttons)
        dialog.setModal(False)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose, False)
        self.export_result_dialog = dialog
        self.export_result_text = text.text()
        dialog.show()

    @Slot(object)
    def _on_task_progress(self, update: TaskProgress) -> None:
        if update.fraction is None:
            self.progress.setRange(0, 0)
        else:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(update.fraction * 1000))
        if update.message:
            self.progress.setFormat(update.message[:60])
            self.task_label.setText("")

    @Slot(object)
    def _on_task_finished(self, outcome: TaskOutcome) -> None:
        run_dir = self._task_run
        self.progress.hide()
        self.cancel_button.hide()
        self.task_label.setText("")
        if outcome.error:
            warning(self, outcome.name, f"{outcome.name} {run_dir.name if run_dir else ''} failed:\n\n"
                    f"{outcome.error}")
        elif outcome.cancelled:
            self.state.show_message(f"{outcome.name} {run_dir.name if run_dir else ''}: cancelled")
        else:
            self.state.show_message(f"{outcome.name} {run_dir.name if run_dir else ''}: done")
            if outcome.name == "Resuming" and run_dir is not None:
                self.runResumed.emit(run_dir)
            if outcome.name.startswith("Exporting"):
                written = outcome.result if isinstance(outcome.result, Path) else self._export_target
                self.state.show_message(f"Exported to {written}")
                self._show_export_result(Path(written))
        self.last_outcome = outcome
        self.refresh()
        self._update_actions()
        self.busyChanged.emit(False)

    # ------------------------------------------------------------------------------- lifecycle
    def shutdown(self, timeout_ms: int = 30000) -> bool:
        """Stop the timers, cancel a running resume/export and wait for its thread."""
        self._fallback.stop()
        self._debounce.stop()
        queue_stopped = self.queue_panel.shutdown(timeout_ms)
        return self._task.shutdown(timeout_ms) and queue_stopped

    def showEvent(self, event) -> None:
        super().showEvent(event)
        self.refresh()
        if self._workspace is not None:
            self._fallback.start()

    def hideEvent(self, event) -> None:
        super().hideEvent(event)
        self._fallback.stop()  # the watcher still reports new runs; the slow poll only matters when visible


def _size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


def _format_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _open_folder(folder: Path) -> None:
    from PySide6.QtCore import QUrl
    from PySide6.QtGui import QDesktopServices

    QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))
