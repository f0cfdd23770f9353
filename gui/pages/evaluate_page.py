"""Evaluate page: score base vs fine-tuned on held-out questions, per-question comparison table.

``core.evaluation.evaluate_run`` runs in a worker thread (progress + Cancel). Results: a metrics
table (loss, perplexity, BLEU, ROUGE-1/2/L, exact match; base, fine-tuned, change) and a sortable
per-question table filtered to "got better / got worse" by the chosen score. Dataset text is shown
as plain text only (table cells and a plain-text detail view; no tooltips, which Qt may read as HTML).
"""

from __future__ import annotations

import json
from pathlib import Path

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QSortFilterProxyModel, Qt, QUrl, Signal, Slot
from PySide6.QtGui import QColor, QDesktopServices
from PySide6.QtWidgets import (
    QAbstractItemView,
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QSplitter,
    QTableView,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from core.glossary import GLOSSARY, explain, format_metric
from gui import plain
from gui.chat_workers import TaskOutcome, TaskProgress, TaskRunner
from gui.consent_prompt import confirm_run_consents
from gui.widgets.help_button import HelpButton
from gui.widgets.page_heading import compact_page_layout
from gui.widgets.run_picker import FINAL as _FINAL
from gui.widgets.run_picker import add_run_item, fill_checkpoints, first_enabled_run

# key, label, lower is better: words, direction and number format come from core.glossary (the CLI uses them too).
METRIC_ROWS = tuple((key, GLOSSARY[f"metric.{key}"].label, not GLOSSARY[f"metric.{key}"].higher_is_better)
                    for key in ("loss", "perplexity", "bleu", "rouge1", "rouge2", "rougeL", "exact_match"))
SCORE_LABELS = {"rougeL": "ROUGE-L", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "bleu": "BLEU",
                "exact_match": "Exact match"}
FILTERS = ("All questions", "Got better", "Got worse", "Unchanged")
BETTER, WORSE = QColor("#2a9d8f"), QColor("#d64550")
SORT_ROLE = Qt.ItemDataRole.UserRole + 1


class ComparisonModel(QAbstractTableModel):
    """Rows of core.evaluation.ComparisonRow; scores of one chosen metric (``score``)."""

    HEADERS = ("#", "Question", "Reference", "Base answer", "Tuned answer", "Base", "Tuned", "Change")

    def __init__(self, parent=None):
        super().__init__(parent)
        self.rows: list = []
        self.score = "rougeL"

    def set_rows(self, rows) -> None:
        self.beginResetModel()
        self.rows = list(rows)
        self.endResetModel()

    def set_score(self, score: str) -> None:
        self.beginResetModel()
        self.score = score
        self.endResetModel()

    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.HEADERS)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):
        if orientation != Qt.Orientation.Horizontal:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return self.HEADERS[section]  # short: the score's name is in "by …" above the table
        if role == Qt.ItemDataRole.ToolTipRole and section >= 5:
            return f"{SCORE_LABELS.get(self.score, self.score)} per question. {explain('metric.' + self.score)}"
        return None

    def delta(self, row) -> float:
        return float(row.delta.get(self.score, 0.0))

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        row = self.rows[index.row()]
        column = index.column()
        values = (row.index + 1, row.question, row.reference, row.base_answer, row.tuned_answer,
                  row.base_scores.get(self.score, 0.0), row.tuned_scores.get(self.score, 0.0), self.delta(row))
        value = values[column]
        if role == SORT_ROLE:
            return value
        if role == Qt.ItemDataRole.DisplayRole:
            if column in (1, 2, 3, 4):
                text = " ".join(str(value).split())  # wrapped in the cell; the detail view shows it all
                return text if len(text) <= 160 else text[:157] + "…"
            if column >= 5:
                return format_metric(self.score, value, signed=column == 7)
            return str(value)
        if role == Qt.ItemDataRole.ForegroundRole and column == 7:
            delta = self.delta(row)
            return BETTER if delta > 1e-9 else WORSE if delta < -1e-9 else None
        if role == Qt.ItemDataRole.TextAlignmentRole and column in (0, 5, 6, 7):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None


class ComparisonFilter(QSortFilterProxyModel):
    """Sorts by the raw values; keeps all rows, or those that got better / worse / stayed the same."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.mode = FILTERS[0]
        self.setSortRole(SORT_ROLE)

    def set_mode(self, mode: str) -> None:
        self.refilter(lambda: setattr(self, "mode", mode))

    def refilter(self, change=None) -> None:
        """Apply ``change`` (a callable) and re-run the row filter (Qt >= 6.10 API when available)."""
        if hasattr(self, "beginFilterChange"):  # invalidateFilter() is deprecated from Qt 6.10
            self.beginFilterChange()
            if change is not None:
                change()
            self.endFilterChange(QSortFilterProxyModel.Direction.Rows)
        else:
            if change is not None:
                change()
            self.invalidateRowsFilter()

    def filterAcceptsRow(self, source_row, source_parent) -> bool:
        model: ComparisonModel = self.sourceModel()
        delta = model.delta(model.rows[source_row])
        if self.mode == "Got better":
            return delta > 1e-9
        if self.mode == "Got worse":
            return delta < -1e-9
        if self.mode == "Unchanged":
            return abs(delta) <= 1e-9
        return True


class EvaluatePage(QWidget):
    """Run core.evaluation.evaluate_run in the background and show the comparison."""

    evaluationFinished = Signal(object)  # EvaluationReport
    busyChanged = Signal(bool)

    def __init__(self, state, parent=None):
        super().__init__(parent)
        self.state = state
        self.report = None
        self._task = TaskRunner(self)
        self._task.progressed.connect(self._on_progress)
        self._task.finished.connect(self._on_finished)
        self._build()
        self.refresh_runs()
        state.configChanged.connect(self._on_config_changed)
        # Runs started, finished or deleted anywhere (this window, the CLI) appear here without a click.
        state.runs_model.runsChanged.connect(self._on_runs_changed)

    # ------------------------------------------------------------------------------- layout
    def _build(self) -> None:
        outer = compact_page_layout(self, "Evaluate",
                                    "Score the base and the fine-tuned model on questions they were not trained on.")

        top = QHBoxLayout()
        setup = QGroupBox("What to evaluate")
        form = QFormLayout(setup)
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)  # a narrow window wraps, never cuts
        run_row = QHBoxLayout()
        self.run_combo = QComboBox()
        self.run_combo.setMinimumWidth(240)
        self.run_combo.setToolTip("The fine-tuned run to compare with its base model")
        self.run_combo.currentIndexChanged.connect(self._on_run_changed)
        run_row.addWidget(self.run_combo, 1)
        self.checkpoint_combo = QComboBox()
        self.checkpoint_combo.setToolTip("`final` = the model saved at the end; or an earlier checkpoint")
        run_row.addWidget(self.checkpoint_combo)
        refresh = QToolButton()
        refresh.setText("⟳")
        refresh.setToolTip("Look for new runs in the workspace")
        refresh.clicked.connect(self.refresh_runs)
        run_row.addWidget(refresh)
        form.addRow("Run:", run_row)

        self.heldout_radio = QRadioButton("The run's held-out split")
        self.heldout_radio.setToolTip("The examples set aside before training (same split seed): never trained on")
        self.heldout_radio.setChecked(True)
        self.file_radio = QRadioButton("Another dataset:")
        self.file_radio.setToolTip("Every row of another file, read with the run's template and column rules")
        group = QButtonGroup(self)
        group.addButton(self.heldout_radio)
        group.addButton(self.file_radio)
        data_row = QHBoxLayout()
        data_row.addWidget(self.heldout_radio)
        data_row.addWidget(self.file_radio)
        self.file_edit = QLineEdit()
        self.file_edit.setPlaceholderText("file.jsonl / .csv / .parquet or sample:<topic>")
        self.file_edit.textEdited.connect(lambda _text: self.file_radio.setChecked(True))
        data_row.addWidget(self.file_edit, 1)
        browse = QToolButton()
        browse.setText("…")
        browse.setToolTip("Choose a dataset file")
        browse.clicked.connect(self._browse)
        data_row.addWidget(browse)
        form.addRow("Questions from:", data_row)

        numbers = QHBoxLayout()
        self.n_spin = QSpinBox()
        self.n_spin.setRange(1, 10000)
        self.n_spin.setValue(20)
        self.n_spin.setToolTip("How many questions both models answer (the loss uses the whole split). "
                               "Each answer takes a moment: 20 is a quick check, 100+ a solid comparison.")
        self.n_spin.setSuffix(" questions at most")  # in the box: a separate label got cut in a narrow window
        numbers.addWidget(self.n_spin)
        self.tokens_spin = QSpinBox()
        self.tokens_spin.setRange(1, 4096)
        self.tokens_spin.setValue(self.state.config.generation.max_new_tokens)
        self.tokens_spin.setToolTip("Longest answer in tokens. Answers are greedy (repeatable) so the two "
                                    "models are compared fairly.")
        numbers.addWidget(self.tokens_spin)
        numbers.addWidget(QLabel("new tokens each"))
        numbers.addStretch(1)
        form.addRow("Answer:", numbers)

        buttons = QHBoxLayout()
        self.evaluate_button = QPushButton("Evaluate")
        self.evaluate_button.setDefault(True)
        self.evaluate_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setFormat("Ready")
        self.progress.setTextVisible(True)
        buttons.addWidget(self.evaluate_button)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.progress, 1)
        form.addRow(buttons)
        self.blocker_label = QLabel()
        self.blocker_label.setObjectName("Muted")
        self.blocker_label.setWordWrap(True)
        self.blocker_label.setTextFormat(Qt.TextFormat.PlainText)
        self.blocker_label.setVisible(False)
        form.addRow(self.blocker_label)
        top.addWidget(setup, 3)

        results = QGroupBox("Scores")
        results_layout = QVBoxLayout(results)
        # Base | Fine-tuned | Change | which way is better | "?" (the metric in plain words, with its range).
        self.metrics_table = QTableWidget(len(METRIC_ROWS), 5)
        self.metrics_table.setObjectName("metricsTable")
        self.metrics_table.setHorizontalHeaderLabels(["Base", "Fine-tuned", "Change", "", ""])
        self.metrics_table.setVerticalHeaderLabels([label for _, label, _ in METRIC_ROWS])
        self.metrics_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.metrics_table.setToolTip("Loss and perplexity: lower is better (measured on the whole split). "
                                      "BLEU, ROUGE and exact match: higher is better (the generated answers "
                                      "against the reference answers). Click ? for each one's meaning.")
        self.metric_help: dict[str, HelpButton] = {}
        for row, (key, _label, lower_is_better) in enumerate(METRIC_ROWS):
            self.metrics_table.verticalHeaderItem(row).setToolTip(explain(f"metric.{key}"))
            better = QTableWidgetItem("↓" if lower_is_better else "↑")
            better.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
            better.setToolTip("Lower is better" if lower_is_better else "Higher is better")
            self.metrics_table.setItem(row, 3, better)
            self.metric_help[key] = HelpButton(f"metric.{key}")
            holder = QWidget()
            holder_layout = QHBoxLayout(holder)
            holder_layout.setContentsMargins(4, 0, 4, 0)
            holder_layout.addWidget(self.metric_help[key])
            self.metrics_table.setCellWidget(row, 4, holder)
        header = self.metrics_table.horizontalHeader()
        # Every column as wide as its widest cell or header ("Fine-tuned" must never be cut); spare room
        # goes to the numbers.
        for column in range(5):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(False)
        header.setMinimumSectionSize(24)
        self.metrics_table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        # Every metric visible without scrolling: the table is as tall as its rows.
        self.metrics_table.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.metrics_table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self._fit_metrics_table()
        results_layout.addWidget(self.metrics_table)
        legend = QLabel("↓ lower is better · ↑ higher is better · ? what it measures")
        legend.setObjectName("Muted")
        legend.setWordWrap(True)
        results_layout.addWidget(legend)
        self.summary_label = QLabel("No evaluation yet.")
        self.summary_label.setWordWrap(True)
        self.summary_label.setTextFormat(Qt.TextFormat.PlainText)
        self.summary_label.setStyleSheet("color: palette(mid);")
        self.report_button = QPushButton("Open report")
        self.report_button.setToolTip("Open the HTML report (scores, curves, every answer) in your browser")
        self.report_button.setEnabled(False)
        self.report_button.clicked.connect(self.open_report)
        # Under Evaluate, where there is room: the Scores box stays short enough to show every metric.
        buttons.addWidget(self.report_button)
        form.addRow(self.summary_label)
        # The forgetting check (core.forgetting): general ability base vs fine-tuned, with its threshold.
        self.forgetting_label = QLabel("")
        self.forgetting_label.setObjectName("forgettingLabel")
        self.forgetting_label.setWordWrap(True)
        self.forgetting_label.setTextFormat(Qt.TextFormat.PlainText)
        self.forgetting_label.setVisible(False)
        results_layout.addWidget(self.forgetting_label)
        self.per_example_check = QCheckBox("Rank the examples by loss")  # details in the tooltip: fits 1024 px
        self.per_example_check.setToolTip("Measure base and fine-tuned loss of every training and held-out example "
                                          "(up to 400 of each) and list them with their row numbers. A very high "
                                          "loss after training often means a wrong or inconsistent label.")
        results_layout.addWidget(self.per_example_check)
        top.addWidget(results, 2)
        outer.addLayout(top)

        filters = QHBoxLayout()
        filters.addWidget(QLabel("Show:"))
        self.filter_combo = QComboBox()
        self.filter_combo.addItems(FILTERS)
        self.filter_combo.setToolTip("Which questions to list: those where the fine-tuned answer scored higher "
                                     "(got better), lower (got worse) or the same as the base answer")
        self.filter_combo.currentTextChanged.connect(self._on_filter_changed)
        filters.addWidget(self.filter_combo)
        filters.addWidget(QLabel("by"))
        self.score_combo = QComboBox()
        for key, label in SCORE_LABELS.items():
            self.score_combo.addItem(label, key)
        self.score_combo.setToolTip("The per-question score used for the columns and the filter")
        self.score_combo.currentIndexChanged.connect(self._on_score_changed)
        filters.addWidget(self.score_combo)
        self.score_help = HelpButton("metric.rougeL")
        filters.addWidget(self.score_help)
        filters.addStretch(1)
        self.count_label = QLabel("")
        self.count_label.setStyleSheet("color: palette(mid);")
        filters.addWidget(self.count_label)
        outer.addLayout(filters)

        self.model = ComparisonModel(self)
        self.proxy = ComparisonFilter(self)
        self.proxy.setSourceModel(self.model)
        self.table = QTableView()
        self.table.setObjectName("comparisonTable")
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setAlternatingRowColors(True)
        # The texts get the room: wrapped over a few lines, in the stretching columns; the scores stay compact.
        self.table.setWordWrap(True)
        self.table.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.verticalHeader().setMaximumSectionSize(4 * self.table.fontMetrics().lineSpacing() + 8)
        header = self.table.horizontalHeader()
        for column in (0, 5, 6, 7):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        for column in (1, 2, 3, 4):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.Stretch)
        self.table.selectionModel().currentRowChanged.connect(self._show_detail)
        self.detail = QPlainTextEdit()
        self.detail.setReadOnly(True)
        self.detail.setPlaceholderText("Select a question to read it with both answers in full.")
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(self.table)
        splitter.addWidget(self.detail)
        self.per_example_view = QPlainTextEdit()
        self.per_example_view.setObjectName("perExampleView")
        self.per_example_view.setReadOnly(True)
        self.per_example_view.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.per_example_view.setVisible(False)
        splitter.addWidget(self.per_example_view)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 1)
        outer.addWidget(splitter, 1)

    # ------------------------------------------------------------------------------- runs
    @Slot()
    def refresh_runs(self) -> None:
        """Refill the run list from the workspace (runs with trained weights first)."""
        current = self.run_combo.currentData()
        self.run_combo.blockSignals(True)
        self.run_combo.clear()
        runs = self.state.runs_model.runs
        for run in runs:
            add_run_item(self.run_combo, run, f"{run.name}  ·  {run.state}")
        index = self.run_combo.findData(current) if current else -1
        if index < 0 or index != first_enabled_run(self.run_combo, index):
            index = first_enabled_run(self.run_combo)
        self.run_combo.setCurrentIndex(index if runs else -1)
        self.run_combo.blockSignals(False)
        self._on_run_changed()

    @Slot(object)
    def _on_runs_changed(self, _runs) -> None:
        if not self._task.is_busy:
            self.refresh_runs()

    def evaluate_blocker(self) -> str:
        """Why Evaluate is off right now, in words ("" when it can start)."""
        if self._task.is_busy:
            return "An evaluation is running."
        if self.run_combo.count() == 0:
            return "No runs yet: train one on the Train page, then evaluate it here."
        run_dir = self.run_combo.currentData()
        if run_dir is None:
            return "Choose a run with trained weights (runs without weights are greyed out)."
        run = self.state.runs_model.run(run_dir)
        if run is not None and not run.has_weights:
            return f"{run.name}: {run.weights_note}"
        return ""

    @Slot()
    def _on_run_changed(self, *_args) -> None:
        fill_checkpoints(self.checkpoint_combo, self.run_combo.currentData())
        self._update_buttons()
        if not self._task.is_busy:
            self.load_previous()

    @Slot(object)
    def _on_config_changed(self, section) -> None:
        if section is None:
            self.refresh_runs()

    def select_run(self, run_dir) -> None:
        """Choose ``run_dir`` in the run list (refreshing the list when it is new)."""
        run_dir = str(Path(run_dir))
        if self.run_combo.findData(run_dir) < 0:
            self.refresh_runs()
        index = self.run_combo.findData(run_dir)
        if index < 0:
            raise ValueError(f"{run_dir}: not a run of the workspace {self.state.workspace}")
        self.run_combo.setCurrentIndex(index)

    @Slot()
    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Dataset to evaluate on", str(Path.home()),
                                              "Datasets (*.jsonl *.json *.csv *.parquet);;All files (*)")
        if path:
            self.file_edit.setText(path)
            self.file_radio.setChecked(True)

    # ------------------------------------------------------------------------------- running
    @property
    def is_busy(self) -> bool:
        """True while an evaluation runs."""
        return self._task.is_busy

    def _update_buttons(self) -> None:
        busy = self._task.is_busy
        blocker = self.evaluate_blocker()
        self.evaluate_button.setEnabled(not busy and not blocker)
        self.evaluate_button.setToolTip(blocker or "Score the base and the fine-tuned model")
        self.blocker_label.setText("" if busy else blocker)
        self.blocker_label.setVisible(bool(blocker) and not busy)
        self.cancel_button.setEnabled(busy)
        self.run_combo.setEnabled(not busy)
        self.checkpoint_combo.setEnabled(not busy and self.checkpoint_combo.count() > 0)

    @Slot()
    def start(self) -> None:
        """Start evaluating the chosen run in the background."""
        from core.config import GenerationConfig

        run_dir = self.run_combo.currentData()
        if not run_dir or self._task.is_busy:
            return
        if not confirm_run_consents(self, run_dir):
            return
        checkpoint = self.checkpoint_combo.currentData()
        checkpoint = None if checkpoint in (None, _FINAL) else checkpoint
        source = self.file_edit.text().strip() if self.file_radio.isChecked() else None
        if self.file_radio.isChecked() and not source:
            plain.warning(self, "Evaluate", "Choose the dataset file to evaluate on, or use the held-out split.")
            return
        n = self.n_spin.value()
        max_new_tokens = self.tokens_spin.value()
        per_example = self.per_example_check.isChecked()

        def work(stop, progress):
            from core.evaluation import data_config_for, evaluate_run
            from core.runs import load_run_config

            cfg = load_run_config(run_dir)
            gen_cfg = GenerationConfig(**{**vars(cfg.generation), "do_sample": False,
                                          "max_new_tokens": max_new_tokens})
            data_cfg = data_config_for(source, cfg) if source else None
            report = evaluate_run(run_dir, data_cfg=data_cfg, n=n, gen_cfg=gen_cfg, checkpoint=checkpoint,
                                  progress=progress, stop=stop)
            if per_example:
                from core.example_loss import rank_examples

                report.per_example = rank_examples(run_dir, checkpoint=checkpoint, progress=progress, stop=stop)
            return report

        self._task.start("Evaluation", work)
        self.progress.setValue(0)
        self.progress.setFormat("Starting…")
        self._update_buttons()
        self.busyChanged.emit(True)

    @Slot()
    def cancel(self) -> None:
        """Stop the evaluation at its next question."""
        self._task.cancel()
        self.progress.setFormat("Cancelling…")

    @Slot(object)
    def _on_progress(self, update: TaskProgress) -> None:
        if update.fraction is None:
            self.progress.setRange(0, 0)
        else:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(update.fraction * 1000))
        self.progress.setFormat(update.message[:80] or "%p%")

    @Slot(object)
    def _on_finished(self, outcome: TaskOutcome) -> None:
        self.progress.setRange(0, 1000)
        if outcome.error:
            self.progress.setValue(0)
            self.progress.setFormat("Failed")
            plain.warning(self, "Evaluation failed", outcome.error)  # may quote dataset text
        elif outcome.cancelled:
            self.progress.setValue(0)
            self.progress.setFormat("Cancelled")
        else:
            self.progress.setValue(1000)
            self.progress.setFormat(f"Done in {outcome.result.seconds:.1f} s")
            self.show_report(outcome.result)
            self.evaluationFinished.emit(outcome.result)
        self._update_buttons()
        self.busyChanged.emit(False)

    # ------------------------------------------------------------------------------- results
    def show_report(self, report) -> None:
        """Fill the metrics and comparison tables from an EvaluationReport."""
        self.report = report
        for row, (key, _label, lower_is_better) in enumerate(METRIC_ROWS):
            base, tuned = report.base.get(key), report.tuned.get(key)
            cells = ["—", "—", "—"]
            color = None
            if base is not None and tuned is not None:
                change = tuned - base
                # One format per metric for value and change (core.glossary.format_metric), signed changes.
                cells = [format_metric(key, base), format_metric(key, tuned), format_metric(key, change, signed=True)]
                improved = change < 0 if lower_is_better else change > 0
                if abs(change) > 1e-12:
                    color = BETTER if improved else WORSE
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if column == 2 and color is not None:
                    item.setForeground(color)
                self.metrics_table.setItem(row, column, item)
        self.model.set_rows(report.rows)
        self.summary_label.setText(
            f"{len(report.rows)} questions answered, loss over {report.n_loss_examples} examples "
            f"({report.split}) in {report.seconds:.1f} s.")
        self.report_button.setEnabled(Path(report.report_path).is_file())
        self._show_forgetting_and_examples(report)
        self._fit_metrics_table()
        self.table.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        self._update_count()
        self.detail.clear()

    def _fit_metrics_table(self) -> None:
        """Make the metrics table exactly as tall as its header and rows (no scrollbar, nothing hidden)."""
        table = self.metrics_table
        table.resizeRowsToContents()
        height = table.horizontalHeader().sizeHint().height() + 2 * table.frameWidth()
        height += sum(table.rowHeight(row) for row in range(table.rowCount()))
        table.setFixedHeight(height)
        width = table.verticalHeader().sizeHint().width() + 2 * table.frameWidth()
        width += sum(table.horizontalHeader().sectionSize(column) for column in range(table.columnCount()))
        table.setMinimumWidth(width)

    def load_previous(self) -> bool:
        """Show the run's last evaluation (``evaluation/metrics.json`` + ``comparison.jsonl``) if there is one."""
        from core.evaluation import ComparisonRow, EvaluationReport

        run_dir = self.run_combo.currentData()
        if not run_dir:
            return False
        folder = Path(run_dir) / "evaluation"
        try:
            metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
            rows = []
            with open(folder / "comparison.jsonl", encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        rows.append(self._row_from_json(ComparisonRow, json.loads(line)))
        except (OSError, ValueError, KeyError, TypeError):
            self.report = None
            self.model.set_rows([])
            for row in range(self.metrics_table.rowCount()):
                for column in range(3):
                    self.metrics_table.setItem(row, column, QTableWidgetItem(""))
            self.summary_label.setText("This run has not been evaluated yet: press Evaluate.")
            self.report_button.setEnabled(False)
            self._update_count()
            return False
        report = EvaluationReport(run_dir=Path(run_dir), output_dir=folder,
                                  data_source=metrics.get("data_source", ""), split=metrics.get("split", ""),
                                  n_loss_examples=int(metrics.get("n_loss_examples", 0)),
                                  n_loss_tokens=int(metrics.get("n_loss_tokens", 0)),
                                  base=metrics.get("base", {}), tuned=metrics.get("tuned", {}), rows=rows,
                                  seconds=float(metrics.get("seconds", 0.0)))
        from core.example_loss import load_example_losses
        from core.forgetting import load_forgetting

        report.forgetting = load_forgetting(run_dir)
        report.per_example = load_example_losses(run_dir)
        self.show_report(report)
        self.summary_label.setText("Last evaluation: " + self.summary_label.text())
        return True

    def _show_forgetting_and_examples(self, report) -> None:
        forgetting = getattr(report, "forgetting", None)
        self.forgetting_label.setVisible(forgetting is not None)
        if forgetting is not None:
            # The short form keeps the comparison table below visible in a 1280x800 window; the threshold's
            # explanation is the tooltip.
            self.forgetting_label.setText(forgetting.short_sentence())
            self.forgetting_label.setToolTip(forgetting.sentence())
            color = {"fine": BETTER, "forgetting": WORSE}.get(forgetting.verdict)
            self.forgetting_label.setStyleSheet(f"color: {color.name()};" if color is not None else "")
        per_example = getattr(report, "per_example", None)
        self.per_example_view.setVisible(per_example is not None)
        if per_example is not None:
            self.per_example_view.setPlainText(per_example.table(10))

    @staticmethod
    def _row_from_json(row_cls, data: dict):
        from core.evaluation import SCORE_NAMES

        if "base_scores" in data:  # asdict form
            return row_cls(**{k: data[k] for k in ("index", "question", "reference", "base_answer", "tuned_answer",
                                                   "base_scores", "tuned_scores", "delta")})
        return row_cls(index=int(data["index"]), question=data["question"], reference=data["reference"],
                       base_answer=data["base_answer"], tuned_answer=data["tuned_answer"],
                       base_scores={n: float(data[f"base_{n}"]) for n in SCORE_NAMES},
                       tuned_scores={n: float(data[f"tuned_{n}"]) for n in SCORE_NAMES},
                       delta={n: float(data[f"delta_{n}"]) for n in SCORE_NAMES})

    @Slot(str)
    def _on_filter_changed(self, mode: str) -> None:
        self.proxy.set_mode(mode)
        self._update_count()

    @Slot()
    def _on_score_changed(self, *_args) -> None:
        self.model.set_score(self.score_combo.currentData())
        self.score_help.set_key(f"metric.{self.score_combo.currentData()}")
        self.proxy.refilter()
        self._update_count()

    def _update_count(self) -> None:
        total = self.model.rowCount()
        if not total:
            self.count_label.setText("")
            return
        better = sum(1 for row in self.model.rows if self.model.delta(row) > 1e-9)
        worse = sum(1 for row in self.model.rows if self.model.delta(row) < -1e-9)
        self.count_label.setText(f"showing {self.proxy.rowCount()} of {total} · {better} better, {worse} worse, "
                                 f"{total - better - worse} unchanged")

    @Slot(QModelIndex, QModelIndex)
    def _show_detail(self, current: QModelIndex, _previous=None) -> None:
        if not current.isValid():
            self.detail.clear()
            return
        row = self.model.rows[self.proxy.mapToSource(current).row()]
        score = self.model.score
        self.detail.setPlainText(
            f"Question {row.index + 1}\n{row.question}\n\nReference answer\n{row.reference}\n\n"
            f"Base model ({SCORE_LABELS[score]} {format_metric(score, row.base_scores.get(score, 0))})\n"
            f"{row.base_answer}\n\n"
            f"Fine-tuned ({SCORE_LABELS[score]} {format_metric(score, row.tuned_scores.get(score, 0))}, change "
            f"{format_metric(score, row.delta.get(score, 0), signed=True)})\n{row.tuned_answer}")

    @Slot()
    def open_report(self) -> bool:
        """Open report.html in the system browser."""
        if self.report is None or not Path(self.report.report_path).is_file():
            return False
        return QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.report.report_path)))

    # ------------------------------------------------------------------------------- lifecycle
    def shutdown(self, timeout_ms: int = 30000) -> bool:
        """Cancel a running evaluation and wait for its thread."""
        return self._task.shutdown(timeout_ms)
