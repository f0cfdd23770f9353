"""The "Compare settings" dialog: variants of one or two settings trained one after another (core.sweep),
their curves overlaid live (one colour per variant, labelled by its value), a leaderboard ranked by best
held-out loss with time, memory and the coach's notes, the probe answers side by side, and "Train the
winner properly", which puts the winning settings into the form with more steps.

The sweep runs in a worker (gui.tasks); the dialog follows the variants' run folders the way every page
does: it reads their metrics.jsonl every half second (gui.workers.MetricsTail) and the leaderboard from
their files, so a sweep started from the command line can be watched here too (``open_sweep``).
"""

from __future__ import annotations

import math
from pathlib import Path

import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from core.sweep import field_label, format_value
from gui.tasks import TaskGroup
from gui.widgets.plots import StepAxis
from gui.workers import MetricsTail

TAIL_MS = 500
LEADERBOARD_EVERY = 4  # ticks: the leaderboard re-reads every variant's files, every ~2 s is plenty
PALETTE = ("#2f6fd6", "#e0702b", "#2a9d8f", "#d1495b", "#8e5bd6", "#6a994e", "#c9a400", "#3d5a80", "#b5838d",
           "#555555", "#00a6a6", "#9c6644")
VARIABLE_FIELDS = (
    "training.learning_rate", "method.lora_r", "method.lora_alpha", "method.lora_dropout", "training.batch_size",
    "training.gradient_accumulation", "training.warmup_ratio", "training.weight_decay", "training.max_length",
    "training.scheduler", "method.method", "training.num_epochs",
)


def suggested_values(dotted: str, current) -> str:
    """Values to start from for a setting: around the current one (a third / three times for rates)."""
    if dotted == "training.learning_rate":
        return ", ".join(format_value(float(f"{v:.0e}")) for v in (current / 3, current, current * 3))
    if dotted in ("method.lora_r", "method.lora_alpha"):
        return ", ".join(str(v) for v in sorted({max(1, int(current) // 2), int(current), int(current) * 2}))
    if dotted == "training.scheduler":
        return "cosine, linear, constant"
    if dotted == "method.method":
        return "lora, full"
    if isinstance(current, float):
        return ", ".join(format_value(v) for v in (current, current * 2 if current else 0.1))
    return ", ".join(str(v) for v in sorted({max(1, int(current) // 2), int(current), int(current) * 2}))


def _item(text: str, tooltip: str = "") -> QTableWidgetItem:
    item = QTableWidgetItem(text)  # plain text, never rich text
    item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
    if tooltip:
        item.setToolTip(tooltip)
    return item


def _format_seconds(seconds) -> str:
    if seconds is None:
        return "-"
    seconds = float(seconds)
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


class CompareDialog(QDialog):
    """Vary one or two settings, race the variants, pick the winner.

    Signals: sweepFinished(object) with the sweep record (dict) or the exception; winnerChosen(object) with
    the RunConfig written into the state by "Train the winner properly"."""

    sweepFinished = Signal(object)
    winnerChosen = Signal(object)

    def __init__(self, state, parent=None, *, probes=(), probe_every: int | None = None):
        super().__init__(parent)
        self.state = state
        self.probes = [prompt for prompt in probes if prompt.strip()]  # the Train page's probe prompts
        self.probe_every = probe_every
        self.setWindowTitle("Compare settings")
        self.resize(1180, 760)
        self.tasks = TaskGroup(self)
        self.tasks.busyChanged.connect(self._set_busy)
        self.task = None
        self.sweep: dict | None = None
        self._tails: dict[str, MetricsTail] = {}
        self._curves: dict[str, dict] = {}  # run_dir -> {"train": item, "eval": item, "xs"...}
        self._ticks = 0
        self._timer = QTimer(self)
        self._timer.setObjectName("compare-tail")
        self._timer.setInterval(TAIL_MS)
        self._timer.timeout.connect(self.refresh)

        # -- what to vary ------------------------------------------------------------------------
        setup = QGroupBox("Variants")
        grid = QGridLayout(setup)
        self.field_combos: list[QComboBox] = []
        self.value_edits: list[QLineEdit] = []
        for row in range(2):
            combo = QComboBox()
            if row == 1:
                combo.addItem("(nothing else)", "")
            for dotted in VARIABLE_FIELDS:
                combo.addItem(field_label(dotted), dotted)
            edit = QLineEdit()
            edit.setPlaceholderText("values, separated by commas")
            edit.setToolTip("The values to try, e.g. 1e-4, 3e-4, 1e-3. Every combination of the two rows "
                            "becomes one run (at most 12).")
            combo.currentIndexChanged.connect(lambda _i, r=row: self._prefill(r))
            grid.addWidget(QLabel("Vary:" if row == 0 else "and:"), row, 0)
            grid.addWidget(combo, row, 1)
            grid.addWidget(edit, row, 2)
            self.field_combos.append(combo)
            self.value_edits.append(edit)
        grid.setColumnStretch(2, 1)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(2, 100000)
        base_steps = state.config.training.max_steps
        self.steps_spin.setValue(min(base_steps, 40) if base_steps > 0 else 40)
        self.steps_spin.setToolTip("Steps each variant trains: enough to tell them apart, fewer than a full run.")
        self.start_button = QPushButton("▶  Start the comparison")
        self.start_button.clicked.connect(self.start)
        self.stop_button = QPushButton("■  Stop")
        self.stop_button.setToolTip("Stop the running variant at its next step (a checkpoint is saved) and the "
                                    "comparison with it; Start continues it.")
        self.stop_button.clicked.connect(self.stop)
        grid.addWidget(QLabel("Steps each:"), 2, 0)
        actions = QHBoxLayout()
        actions.addWidget(self.steps_spin)
        actions.addWidget(self.start_button)
        actions.addWidget(self.stop_button)
        actions.addStretch(1)
        grid.addLayout(actions, 2, 1, 1, 2)
        self.field_combos[0].setCurrentIndex(0)
        self._prefill(0)

        self.status_label = QLabel("Pick a setting and its values, then start: each variant is a real run, "
                                   "listed on the Runs page.")
        self.status_label.setTextFormat(Qt.TextFormat.PlainText)
        self.status_label.setWordWrap(True)

        # -- curves ------------------------------------------------------------------------------
        pg.setConfigOptions(antialias=True, background="w", foreground="#444")
        self.plot = pg.PlotWidget(axisItems={"bottom": StepAxis(orientation="bottom")})
        self.plot.setTitle("Held-out loss (dots) and training loss (thin) of each variant", size="10pt")
        self.plot.setLabel("bottom", "step")
        self.plot.setLabel("left", "loss")
        self.legend_row = QHBoxLayout()
        self.legend_row.setContentsMargins(0, 0, 0, 0)
        legend_box = QWidget()
        legend_box.setLayout(self.legend_row)
        plot_box = QWidget()
        plot_layout = QVBoxLayout(plot_box)
        plot_layout.setContentsMargins(0, 0, 0, 0)
        plot_layout.addWidget(legend_box)
        plot_layout.addWidget(self.plot, 1)

        # -- leaderboard ---------------------------------------------------------------------------
        self.table = QTableWidget(0, 8)
        self.table.setHorizontalHeaderLabels(["Rank", "Variant", "Best held-out loss", "At step", "Time", "Memory",
                                              "State", "Coach's notes"])
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setSectionResizeMode(7, QHeaderView.ResizeMode.Stretch)
        self.table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.probe_table = QTableWidget(0, 0)
        self.probe_table.setVisible(False)
        self.probe_table.setWordWrap(True)
        self.probe_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.probe_table.verticalHeader().setVisible(False)
        board_box = QWidget()
        board_layout = QVBoxLayout(board_box)
        board_layout.setContentsMargins(0, 0, 0, 0)
        board_title = QLabel("Leaderboard: lowest held-out loss first")
        board_title.setStyleSheet("font-weight: 600;")
        board_layout.addWidget(board_title)
        board_layout.addWidget(self.table, 3)
        self.probe_title = QLabel("Probe answers, side by side (latest answer of each variant)")
        self.probe_title.setStyleSheet("font-weight: 600;")
        self.probe_title.setVisible(False)
        board_layout.addWidget(self.probe_title)
        board_layout.addWidget(self.probe_table, 2)

        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(plot_box)
        splitter.addWidget(board_box)
        splitter.setSizes([360, 340])
        splitter.setChildrenCollapsible(False)

        self.winner_button = QPushButton("Train the winner properly")
        self.winner_button.setToolTip("Put the winning settings into the training form, with the full length of "
                                      "your settings (or three times the comparison's steps).")
        self.winner_button.setEnabled(False)
        self.winner_button.clicked.connect(self.train_winner)
        self.close_button = QPushButton("Close")
        self.close_button.clicked.connect(self.reject)
        buttons = QHBoxLayout()
        self.record_label = QLabel("")
        self.record_label.setTextFormat(Qt.TextFormat.PlainText)
        self.record_label.setStyleSheet("color: #666;")
        buttons.addWidget(self.record_label, 1)
        buttons.addWidget(self.winner_button)
        buttons.addWidget(self.close_button)

        layout = QVBoxLayout(self)
        layout.addWidget(setup)
        layout.addWidget(self.status_label)
        layout.addWidget(splitter, 1)
        layout.addLayout(buttons)
        self._set_busy(False)

    # -- set-up --------------------------------------------------------------------------------------
    def _prefill(self, row: int) -> None:
        dotted = self.field_combos[row].currentData()
        if not dotted:
            self.value_edits[row].clear()
            self.value_edits[row].setEnabled(False)
            return
        self.value_edits[row].setEnabled(True)
        section, _, name = dotted.partition(".")
        current = getattr(getattr(self.state.config, section), name)
        self.value_edits[row].setText(suggested_values(dotted, current))

    def set_variation(self, row: int, dotted: str, values: str) -> None:
        """Choose the setting and values of a row (also used by tests)."""
        index = self.field_combos[row].findData(dotted)
        self.field_combos[row].setCurrentIndex(index)
        self.value_edits[row].setText(values)

    def varies(self) -> list:
        from core.sweep import parse_vary

        found = []
        for combo, edit in zip(self.field_combos, self.value_edits, strict=True):
            dotted = combo.currentData()
            if dotted:
                found.append(parse_vary(f"{dotted}={edit.text()}"))
        return found

    # -- running -------------------------------------------------------------------------------------
    @property
    def is_busy(self) -> bool:
        return self.tasks.is_busy

    def start(self) -> bool:
        """Create the sweep (queued run folders) from the form and run it; or continue a stopped one."""
        if self.tasks.is_busy:
            return False
        from core.errors import StudioError
        from core.sweep import create_sweep

        if self.sweep is None or self.sweep.get("state") == "finished":
            try:
                sweep = create_sweep(self.state.config, self.varies(), self.state.workspace,
                                     max_steps=int(self.steps_spin.value()), probes=self.probes or None,
                                     probe_every=self.probe_every if self.probes else None)
            except StudioError as exc:
                self.status_label.setText(f"Cannot start: {exc}")
                return False
            self.show_sweep(sweep)
        self._run(self.sweep)
        return True

    def _run(self, sweep: dict) -> None:
        from core.sweep import run_sweep

        path = sweep["path"]

        def work(progress, stop):
            total = len(sweep["variants"])

            def on_variant(variant, event):
                if event == "started":
                    index = next(i for i, v in enumerate(sweep["variants"], 1) if v["run_dir"] == variant["run_dir"])
                    progress((index - 1) / total, f"training variant {index} of {total}: {variant['label']}")

            from gui.lr_find_dialog import quick_gil_handover

            with quick_gil_handover():
                return run_sweep(path, stop=stop, on_variant=on_variant)

        self.task = self.tasks.run(work, name="sweep")
        self.task.progress.connect(self._on_progress)
        self.task.succeeded.connect(self._on_finished)
        self.task.failed.connect(self._on_failed)
        self.status_label.setText(f"Starting {len(sweep['variants'])} variants, one after another…")
        self.task.start()
        self._timer.start()

    def stop(self) -> None:
        if self.task is not None and self.task.is_running:
            self.task.stop_token.request("stopped from Compare settings")
            self.status_label.setText("Stopping the running variant after its current step (a checkpoint is "
                                      "saved)…")

    def shutdown(self, timeout_ms: int = 60000) -> bool:
        self._timer.stop()
        return self.tasks.shutdown(timeout_ms)

    def done(self, code: int) -> None:
        self.shutdown()
        super().done(code)

    def _on_progress(self, payload) -> None:
        _fraction, message = payload
        self.status_label.setText(str(message))

    def _on_finished(self, sweep: dict) -> None:
        self.sweep = sweep
        self._timer.stop()
        self.refresh(leaderboard=True)
        state = sweep.get("state")
        self.status_label.setText("All variants finished." if state == "finished"
                                  else "Stopped: Start continues the comparison where it stopped.")
        self.sweepFinished.emit(sweep)

    def _on_failed(self, exc) -> None:
        self._timer.stop()
        self.refresh(leaderboard=True)
        self.status_label.setText(f"The comparison stopped with an error: {exc}")
        self.sweepFinished.emit(exc)

    def _set_busy(self, busy: bool) -> None:
        self.start_button.setEnabled(not busy)
        self.stop_button.setEnabled(busy)
        for widget in (*self.field_combos, *self.value_edits, self.steps_spin):
            widget.setEnabled(not busy)
        if not busy and self.value_edits:
            self._prefill_enabled()
        board = (self.sweep or {}).get("leaderboard") or []
        self.winner_button.setEnabled(not busy and bool(board) and board[0].get("best_eval_loss") is not None)
        stopped = self.sweep is not None and self.sweep.get("state") == "stopped"
        self.start_button.setText("▶  Continue the comparison" if stopped and not busy
                                  else "▶  Start the comparison")

    def _prefill_enabled(self) -> None:
        self.value_edits[1].setEnabled(bool(self.field_combos[1].currentData()))

    # -- showing a sweep -------------------------------------------------------------------------------
    def open_sweep(self, path: str | Path) -> None:
        """Show a recorded sweep (e.g. one run from the command line)."""
        from core.sweep import read_sweep

        self.show_sweep(read_sweep(path))
        self.refresh(leaderboard=True)

    def show_sweep(self, sweep: dict) -> None:
        self.sweep = sweep
        # the rows say what this sweep varies (a search's ranges are not shown there)
        varies = [vary for vary in sweep.get("varies", []) if vary.get("values")]
        for row in range(len(self.field_combos)):
            if row < len(varies) and self.field_combos[row].findData(varies[row]["field"]) >= 0:
                self.set_variation(row, varies[row]["field"], ", ".join(format_value(v) for v in varies[row]["values"]))
            elif row > 0:
                self.field_combos[row].setCurrentIndex(0)
        if sweep.get("max_steps"):
            self.steps_spin.setValue(int(sweep["max_steps"]))
        self._tails.clear()
        for curves in self._curves.values():
            self.plot.removeItem(curves["train"])
            self.plot.removeItem(curves["eval"])
        self._curves.clear()
        while self.legend_row.count():
            item = self.legend_row.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        for index, variant in enumerate(sweep["variants"]):
            color = PALETTE[index % len(PALETTE)]
            run_dir = variant["run_dir"]
            train = self.plot.plot([], [], pen=pg.mkPen(color, width=1))
            train.setOpacity(0.45)
            evals = self.plot.plot([], [], pen=pg.mkPen(color, width=2.5), symbol="o", symbolSize=7,
                                   symbolBrush=color, symbolPen=None)
            self._curves[run_dir] = {"train": train, "eval": evals, "train_xy": ([], []), "eval_xy": ([], []),
                                     "color": color}
            self._tails[run_dir] = MetricsTail(Path(run_dir) / "metrics.jsonl")
            swatch = QLabel(f"■ {variant['label']}")
            swatch.setTextFormat(Qt.TextFormat.PlainText)
            swatch.setStyleSheet(f"color: {color}; font-weight: 600;")
            self.legend_row.addWidget(swatch)
        self.legend_row.addStretch(1)
        self.record_label.setText(f"{sweep['id']}: {sweep['path']}")
        self.refresh(leaderboard=True)

    def refresh(self, leaderboard: bool = False) -> None:
        """Read what the variants' runs appended; redraw; every ~2 s (or when asked) the leaderboard."""
        if self.sweep is None:
            return
        for run_dir, tail in self._tails.items():
            curves = self._curves[run_dir]
            changed = False
            for record in tail.read_new():
                step, kind = record.get("step"), record.get("kind")
                if kind == "train" and isinstance(record.get("loss"), (int, float)) and math.isfinite(record["loss"]):
                    curves["train_xy"][0].append(step)
                    curves["train_xy"][1].append(record["loss"])
                    changed = True
                elif (kind == "eval" and isinstance(record.get("eval_loss"), (int, float))
                      and math.isfinite(record["eval_loss"])):
                    curves["eval_xy"][0].append(step)
                    curves["eval_xy"][1].append(record["eval_loss"])
                    changed = True
            if changed:
                curves["train"].setData(*curves["train_xy"])
                curves["eval"].setData(*curves["eval_xy"])
        self._ticks += 1
        if leaderboard or self._ticks % LEADERBOARD_EVERY == 0:
            self._show_leaderboard()

    def _show_leaderboard(self) -> None:
        from core.sweep import leaderboard

        rows = leaderboard(self.sweep)
        self.sweep["leaderboard"] = rows
        self.table.setRowCount(len(rows))
        for index, row in enumerate(rows):
            best = f"{row['best_eval_loss']:.4f}" if row["best_eval_loss"] is not None else "-"
            memory = f"{row['peak_memory_bytes'] / 2**30:.2f} GiB" if row["peak_memory_bytes"] else "-"
            notes = "; ".join(note["title"] for note in row["coach"]) or "-"
            details = "\n".join(f"step {note['step']}: {note['title']}. {note['sentence']}" for note in row["coach"])
            state = row["state"]
            if state == "running" and row["total_steps"]:
                state = f"running {row['step']}/{row['total_steps']}"
            cells = (str(row["rank"] or "-"), row["label"], best, str(row["best_step"] or "-"),
                     _format_seconds(row["train_seconds"]), memory, state, notes)
            for column, text in enumerate(cells):
                item = _item(text, details if column == 7 else (row["message"] if column == 6 else ""))
                if column == 1:
                    color = self._curves.get(row["run_dir"], {}).get("color")
                    if color:
                        item.setForeground(pg.mkColor(color))
                self.table.setItem(index, column, item)
        self._show_probes(rows)
        self.winner_button.setEnabled(bool(rows) and rows[0]["best_eval_loss"] is not None
                                      and not self.tasks.is_busy)

    def _show_probes(self, rows: list[dict]) -> None:
        prompts: list[str] = []
        for row in rows:
            for answer in row["probe_answers"]:
                if answer["prompt"] not in prompts:
                    prompts.append(answer["prompt"])
        self.probe_table.setVisible(bool(prompts))
        self.probe_title.setVisible(bool(prompts))
        if not prompts:
            return
        self.probe_table.setColumnCount(1 + len(rows))
        self.probe_table.setHorizontalHeaderLabels(["Prompt", *[row["label"] for row in rows]])
        self.probe_table.setRowCount(len(prompts))
        for r, prompt in enumerate(prompts):
            self.probe_table.setItem(r, 0, _item(prompt))
            for c, row in enumerate(rows, start=1):
                answer = next((a for a in row["probe_answers"] if a["prompt"] == prompt), None)
                text = answer["answer"] if answer else "-"
                self.probe_table.setItem(r, c, _item(text, f"step {answer['step']}" if answer else ""))
        self.probe_table.resizeRowsToContents()

    # -- the winner ----------------------------------------------------------------------------------
    def train_winner(self) -> None:
        """Write the winning settings (with more steps) into the state and close."""
        from core.sweep import winner_config

        if self.sweep is None:
            return
        cfg = winner_config(self.sweep)
        self.state.set_config(cfg)
        best = self.sweep["leaderboard"][0]["label"]
        self.state.show_message(f"Settings of the winner ({best}) copied into the form, "
                                f"{cfg.training.max_steps if cfg.training.max_steps > 0 else 'all'} steps")
        self.winnerChosen.emit(cfg)
        self.accept()
