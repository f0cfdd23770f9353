"""Data page: open a dataset, see its rows, its format and column roles, the prompt template with the
trained tokens highlighted, token lengths against max_length, and the bad rows.

Reading and tokenizing run in worker threads (gui.tasks); the page only renders their results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from core.config import SCHEMAS, TEMPLATES, ConfigError, field_meta
from core.errors import Cancelled, StudioError
from gui import theme
from gui.state import StudioState
from gui.tasks import Task, TaskGroup
from gui.widgets.histogram import LengthHistogram
from gui.widgets.lazy_table import LazyTableModel, RowSource
from gui.widgets.page_heading import themed_page_layout
from gui.widgets.status_strip import BusyIndicator, ErrorBanner, ErrorBannerHost
from gui.widgets.token_view import TokenLegend, TokenView

PREVIEW_ROWS = 1000      # rows shown for non-JSONL sources (JSONL files are paged lazily instead)
ANALYSE_ROWS = 5000      # rows tokenized for the histogram, the example and the bad-row list
EXAMPLES = 50            # examples one can step through in the template view
FILE_FILTER = "Datasets (*.jsonl *.json *.csv *.parquet);;All files (*)"


@dataclass
class LoadedSource:
    """What the load worker hands back: rows for the table, and the raw preview."""

    source: str
    table: Any            # LazyJsonlTable or list of rows
    columns: list[str]
    kind: str
    total_known: bool


@dataclass
class Analysis:
    """What the analysis worker hands back (plain data only)."""

    source: str
    schema: str
    column_map: dict[str, str]
    reason: str
    columns: list[str]
    n_rows: int
    limited: bool                 # only the first ANALYSE_ROWS were read
    bad_rows: list = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    examples: list[list[tuple[str, bool]]] = field(default_factory=list)
    segments: list = field(default_factory=list)  # per example, when no tokenizer is available
    tokenizer_error: str = ""


def error_text(exc: BaseException) -> str:
    """A user-facing message for a worker's exception."""
    if isinstance(exc, StudioError):
        return str(exc)
    return f"Unexpected error ({type(exc).__name__}): {exc}"


def load_source(source: str, progress, stop) -> LoadedSource:
    """Worker: open the source; a JSONL file gets an offsets index (paged), others a preview list."""
    from core import data

    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() == ".jsonl":
        table = data.LazyJsonlTable(path)
        table.index_chunk()  # the first ~8 MB: enough to show rows at once
        preview = data.preview_rows(str(path), n=200)
        return LoadedSource(source, table, preview.columns, "jsonl", table.complete)
    progress(None, f"reading {source}")
    preview = data.load_raw(source, max_rows=PREVIEW_ROWS, skip_bad_rows=True, stop=stop, progress=progress)
    return LoadedSource(source, preview.rows, preview.columns, preview.kind, len(preview.rows) < PREVIEW_ROWS)


class DataPage(ErrorBannerHost, QWidget):
    """The Data page (see module docstring)."""

    ERROR_PREFIX = "Data"

    def __init__(self, state: StudioState, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("PageRoot")
        self.state = state
        self.tasks = TaskGroup(self)
        self.loaded: LoadedSource | None = None
        self.analysis: Analysis | None = None
        self._tokenizers: dict[str, Any] = {}
        self._load_task: Task | None = None
        self._analysis_task: Task | None = None
        self._index_task: Task | None = None
        self._updating = False  # True while widgets are filled from state (no feedback loop)
        self._reanalyse_timer = QTimer(self)
        self._reanalyse_timer.setSingleShot(True)
        self._reanalyse_timer.setInterval(300)
        self._reanalyse_timer.timeout.connect(self.analyse)
        self.setAcceptDrops(True)
        self._build()
        self._fill_from_config()
        state.configChanged.connect(self._on_config_changed)

    # -- layout ----------------------------------------------------------------------------------
    def _build(self) -> None:
        root = themed_page_layout(self, "Data", "Load a dataset and see it the way the model will: drop a file "
                                                "here, pick a sample or type a Hugging Face dataset id.")

        sources = QHBoxLayout()
        sources.setSpacing(8)
        self.open_button = QPushButton(theme.icon("open"), "Open file…")
        self.open_button.setObjectName("Primary")
        self.open_button.clicked.connect(self.choose_file)
        self.sample_combo = QComboBox()
        self.sample_combo.setMinimumWidth(140)
        self.sample_combo.setToolTip("Bundled sample conversations (chatterbot corpus)")
        try:
            from core.samples import list_sample_topics

            topics = ["all", *list_sample_topics()]
        except StudioError:
            topics = []
        for topic in topics:
            self.sample_combo.addItem(topic, f"sample:{topic}")
        if "trivia" in topics:
            self.sample_combo.setCurrentText("trivia")
        self.sample_button = QPushButton("Use sample")
        self.sample_button.clicked.connect(lambda: self.load_source(self.sample_combo.currentData()))
        self.sample_button.setEnabled(bool(topics))
        self.hub_edit = QLineEdit()
        self.hub_edit.setPlaceholderText("Hub dataset id, e.g. tatsu-lab/alpaca")
        self.hub_edit.returnPressed.connect(self._load_hub)
        self.hub_button = QPushButton("Load")
        self.hub_button.clicked.connect(self._load_hub)
        sources.addWidget(self.open_button)
        sources.addSpacing(8)
        sources.addWidget(QLabel("Sample:"))
        sources.addWidget(self.sample_combo)
        sources.addWidget(self.sample_button)
        sources.addSpacing(8)
        sources.addWidget(self.hub_edit, 1)
        sources.addWidget(self.hub_button)
        root.addLayout(sources)

        status = QHBoxLayout()
        self.source_label = QLabel("No dataset loaded")
        self.source_label.setTextFormat(Qt.TextFormat.PlainText)
        self.source_label.setObjectName("Muted")
        self.busy_indicator = BusyIndicator()
        status.addWidget(self.source_label, 1)
        status.addWidget(self.busy_indicator)
        root.addLayout(status)

        self.error_label = ErrorBanner()
        root.addWidget(self.error_label)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.setChildrenCollapsible(False)
        root.addWidget(splitter, 1)

        # Left: rows, format/columns, bad rows.
        left = QSplitter(Qt.Orientation.Vertical)
        left.setChildrenCollapsible(False)
        preview_box = QGroupBox("Rows")
        self.preview_box = preview_box
        preview_layout = QVBoxLayout(preview_box)
        self.table_model = LazyTableModel(parent=self)
        self.table = QTableView()
        self.table.setModel(self.table_model)
        self.table.setWordWrap(False)
        self.table.setAlternatingRowColors(True)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.horizontalHeader().setDefaultSectionSize(260)
        self.table.verticalHeader().setDefaultSectionSize(24)
        self.table.setToolTip("Row numbers are the file's line numbers")
        preview_layout.addWidget(self.table)
        left.addWidget(preview_box)

        lower = QWidget()
        lower_layout = QHBoxLayout(lower)
        lower_layout.setContentsMargins(0, 0, 0, 0)
        schema_box = QGroupBox("Format and columns")
        schema_layout = QVBoxLayout(schema_box)
        form = QFormLayout()
        form.setLabelAlignment(Qt.AlignmentFlag.AlignRight)
        self.schema_combo = QComboBox()
        for schema in SCHEMAS:
            self.schema_combo.addItem(schema.replace("_", " / ") if schema != "auto" else "auto-detect", schema)
        self.schema_combo.setToolTip(field_meta("data", "schema")["help"])
        self.schema_combo.currentIndexChanged.connect(self._on_schema_chosen)
        form.addRow("Format:", self.schema_combo)
        schema_layout.addLayout(form)
        self.reason_label = QLabel()
        self.reason_label.setObjectName("Muted")
        self.reason_label.setWordWrap(True)
        self.reason_label.setTextFormat(Qt.TextFormat.PlainText)
        schema_layout.addWidget(self.reason_label)
        self.roles_grid = QGridLayout()
        self.roles_grid.setHorizontalSpacing(8)
        schema_layout.addLayout(self.roles_grid)
        schema_layout.addStretch(1)
        self.role_combos: dict[str, QComboBox] = {}
        lower_layout.addWidget(schema_box, 1)

        bad_box = QGroupBox("Bad rows")
        bad_layout = QVBoxLayout(bad_box)
        self.bad_list = QListWidget()
        self.bad_summary = QLabel("None found")
        self.bad_summary.setObjectName("Muted")
        self.bad_summary.setWordWrap(True)
        self.skip_bad = QCheckBox("Skip bad rows")
        self.skip_bad.setToolTip(field_meta("data", "skip_bad_rows")["help"])
        self.skip_bad.toggled.connect(lambda on: self._set("data", "skip_bad_rows", on))
        bad_layout.addWidget(self.bad_summary)
        bad_layout.addWidget(self.bad_list, 1)
        bad_layout.addWidget(self.skip_bad)
        lower_layout.addWidget(bad_box, 1)
        left.addWidget(lower)
        left.setStretchFactor(0, 3)
        left.setStretchFactor(1, 2)
        splitter.addWidget(left)

        # Right: template + example, lengths.
        right = QSplitter(Qt.Orientation.Vertical)
        right.setChildrenCollapsible(False)
        template_box = QGroupBox("Prompt template")
        template_layout = QVBoxLayout(template_box)
        row = QHBoxLayout()
        self.template_combo = QComboBox()
        for name in TEMPLATES:
            self.template_combo.addItem(name, name)
        self.template_combo.setToolTip(field_meta("data", "template")["help"])
        self.template_combo.currentIndexChanged.connect(self._on_template_chosen)
        self.example_spin = QSpinBox()
        self.example_spin.setRange(1, 1)
        self.example_spin.setPrefix("Example ")
        self.example_spin.valueChanged.connect(self._show_example)
        self.example_count = QLabel()
        self.example_count.setObjectName("Muted")
        row.addWidget(QLabel("Template:"))
        row.addWidget(self.template_combo)
        row.addStretch(1)
        row.addWidget(self.example_spin)
        row.addWidget(self.example_count)
        template_layout.addLayout(row)
        self.custom_edit = QPlainTextEdit()
        self.custom_edit.setFont(theme.monospace_font())
        self.custom_edit.setMaximumHeight(90)
        self.custom_edit.setToolTip(field_meta("data", "custom_template")["help"])
        self.custom_edit.textChanged.connect(self._on_custom_edited)
        template_layout.addWidget(self.custom_edit)
        self.token_view = TokenView()
        template_layout.addWidget(self.token_view, 1)
        self.legend = TokenLegend()
        template_layout.addWidget(self.legend)
        self.token_counts = QLabel()
        self.token_counts.setObjectName("Muted")
        template_layout.addWidget(self.token_counts)
        right.addWidget(template_box)

        lengths_box = QGroupBox("Token lengths")
        lengths_layout = QVBoxLayout(lengths_box)
        self.histogram = LengthHistogram()
        self.histogram.setMinimumHeight(150)
        lengths_layout.addWidget(self.histogram, 1)
        controls = QHBoxLayout()
        meta = field_meta("training", "max_length")
        self.max_length_spin = QSpinBox()
        self.max_length_spin.setRange(int(meta["min"]), int(meta["max"]))
        self.max_length_spin.setSingleStep(32)
        self.max_length_spin.setToolTip(meta["help"])
        self.max_length_spin.valueChanged.connect(self._on_max_length)
        self.truncation_label = QLabel()
        self.truncation_label.setWordWrap(True)
        controls.addWidget(QLabel("Max length:"))
        controls.addWidget(self.max_length_spin)
        controls.addSpacing(10)
        controls.addWidget(self.truncation_label, 1)
        lengths_layout.addLayout(controls)
        right.addWidget(lengths_box)
        right.setStretchFactor(0, 3)
        right.setStretchFactor(1, 2)
        splitter.addWidget(right)
        splitter.setStretchFactor(0, 5)
        splitter.setStretchFactor(1, 4)
        splitter.setSizes([600, 480])

    # -- state <-> widgets -----------------------------------------------------------------------
    def _fill_from_config(self) -> None:
        cfg = self.state.config
        self._updating = True
        try:
            self.template_combo.setCurrentIndex(max(0, self.template_combo.findData(cfg.data.template)))
            self.custom_edit.setPlainText(cfg.data.custom_template)
            self.custom_edit.setVisible(cfg.data.template == "custom")
            self.schema_combo.setCurrentIndex(max(0, self.schema_combo.findData(cfg.data.schema)))
            self.skip_bad.setChecked(cfg.data.skip_bad_rows)
            self.max_length_spin.setValue(cfg.training.max_length)
        finally:
            self._updating = False

    def _set(self, section: str, name: str, value: Any) -> None:
        if self._updating:
            return
        try:
            self.state.update(section, name, value)
        except ConfigError as exc:
            self.show_error(str(exc))

    @Slot(object)
    def _on_config_changed(self, section: object) -> None:
        if section in (None, "data", "training"):
            self._fill_from_config()
        if section in (None, "data", "model") and self.loaded is not None:
            self.schedule_analysis()

    # -- actions ---------------------------------------------------------------------------------
    def activate(self) -> None:
        """First time the page is shown in the app: load the configured dataset."""
        if self.loaded is None and self._load_task is None:
            self.load_source(self.state.config.data.source)

    @property
    def is_busy(self) -> bool:
        return self.tasks.is_busy

    def shutdown(self, timeout_ms: int = 30000) -> bool:
        """Stop pending work and wait for the worker threads."""
        self._reanalyse_timer.stop()
        return self.tasks.shutdown(timeout_ms)

    @Slot()
    def choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a dataset", str(Path.home()), FILE_FILTER)
        if path:
            self.load_source(path)

    @Slot()
    def _load_hub(self) -> None:
        text = self.hub_edit.text().strip()
        if text:
            self.load_source(text)

    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls() and any(url.isLocalFile() for url in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        for url in event.mimeData().urls():
            if url.isLocalFile():
                self.load_source(url.toLocalFile())
                event.acceptProposedAction()
                return

    def load_source(self, source: str) -> None:
        """Open ``source`` (file, folder, hub id or sample:<topic>) and analyse it with the current settings."""
        source = str(source or "").strip()
        if not source:
            return
        changed = source != self.state.config.data.source
        self._updating = True
        try:
            self.state.update("data", "source", source)
            if changed:  # a new dataset gets a fresh format guess
                self.state.update("data", "schema", "auto")
                self.state.update("data", "column_map", {})
        finally:
            self._updating = False
        self._fill_from_config()
        self._reanalyse_timer.stop()
        for task in (self._load_task, self._analysis_task, self._index_task):
            if task is not None:
                task.cancel("another dataset was opened")
        self.hide_error()
        self.source_label.setText(f"Loading {source} …")
        task = self.tasks.run(lambda progress, stop: load_source(source, progress, stop), name="data-load")
        task.progress.connect(self.busy_indicator.set_progress)
        task.succeeded.connect(self._on_loaded)
        task.failed.connect(self._on_failed)
        task.finished.connect(self._on_task_finished)
        self._load_task = task
        self.busy_indicator.busy("Reading the dataset…")
        task.start()

    @Slot(object)
    def _on_loaded(self, loaded: LoadedSource) -> None:
        self._load_task = None
        self.loaded = loaded
        self.table_model.set_source(RowSource(loaded.table, loaded.columns))
        self.table.resizeColumnsToContents()
        for column in range(self.table_model.columnCount()):
            self.table.setColumnWidth(column, min(self.table.columnWidth(column), 360))
        self._update_source_label()
        if loaded.kind == "jsonl" and not loaded.total_known:
            table = loaded.table
            # Plain file indexing needs no torch/transformers: don't wait for their first import.
            task = self.tasks.run(lambda progress, stop: table.index_all(stop=stop, progress=progress),
                                  name="data-index", heavy_imports=False)
            task.progress.connect(self._on_index_progress)
            task.succeeded.connect(lambda _result: self._update_source_label())
            task.failed.connect(self._on_index_failed)
            self._index_task = task
            task.start()
        self.state.set_data({"source": loaded.source, "columns": loaded.columns, "kind": loaded.kind})
        self.analyse()

    def _update_source_label(self) -> None:
        if self.loaded is None:
            return
        n = len(self.loaded.table)
        if self.loaded.kind == "jsonl":
            complete = getattr(self.loaded.table, "complete", True)
            count = f"{n:,} rows" if complete else f"{n:,}+ rows (indexing…)"
        else:
            count = f"{n:,} rows" if self.loaded.total_known else f"first {n:,} rows shown"
        self.source_label.setText(f"{self.loaded.source} · {self.loaded.kind} · {count}")
        self.preview_box.setTitle(f"Rows ({count})")

    @Slot(object)
    def _on_index_progress(self, payload) -> None:
        self._update_source_label()

    @Slot(object)
    def _on_index_failed(self, exc) -> None:
        if not isinstance(exc, Cancelled):
            self.show_error(error_text(exc))

    def schedule_analysis(self) -> None:
        """Re-analyse shortly (settings often change in bursts, e.g. typing a template)."""
        self._reanalyse_timer.start()

    def analyse(self) -> None:
        """Tokenize a sample of the dataset with the current settings in a worker."""
        if self.loaded is None:
            return
        self._reanalyse_timer.stop()
        if self._analysis_task is not None:
            self._analysis_task.cancel("settings changed")
        cfg = self.state.config.copy()
        tokenizers = self._tokenizers
        task = self.tasks.run(lambda progress, stop: analyse_dataset(cfg, tokenizers, progress, stop),
                              name="data-analyse")
        task.progress.connect(self.busy_indicator.set_progress)
        task.succeeded.connect(self._on_analysed)
        task.failed.connect(self._on_failed)
        task.finished.connect(self._on_task_finished)
        self._analysis_task = task
        self.busy_indicator.busy("Tokenizing…")
        task.start()

    @Slot(object)
    def _on_analysed(self, result: Analysis) -> None:
        self._analysis_task = None
        self.analysis = result
        self.hide_error()
        self._fill_mapping(result)
        examples = len(result.examples) or len(result.segments)
        self._updating = True
        self.example_spin.setRange(1, max(1, examples))
        self._updating = False
        self.example_count.setText(f"of {examples}")
        self._show_example()
        self.histogram.set_data(result.lengths, self.state.config.training.max_length)
        self._update_truncation()
        self._fill_bad_rows(result)
        if result.tokenizer_error:
            self.show_error("Token view unavailable: " + result.tokenizer_error)
        self.state.set_data({"source": result.source, "schema": result.schema, "column_map": result.column_map,
                             "n_rows": result.n_rows, "bad_rows": len(result.bad_rows),
                             "n_truncated": self.histogram.n_over})
        self.state.show_message(f"Dataset ready: {result.n_rows:,} examples analysed ({result.schema})")

    def _fill_mapping(self, result: Analysis) -> None:
        from core.data import SCHEMA_ROLES

        self._updating = True
        try:
            while self.roles_grid.count():
                item = self.roles_grid.takeAt(0)
                if item.widget() is not None:
                    item.widget().deleteLater()
            self.role_combos.clear()
            required, optional = SCHEMA_ROLES.get(result.schema, ((), ()))
            for row, role in enumerate(required + optional):
                label = QLabel(f"{role}{'' if role in required else ' (optional)'}:")
                combo = QComboBox()
                combo.addItem("(none)", "")
                for column in result.columns:
                    combo.addItem(str(column), str(column))
                combo.setCurrentIndex(max(0, combo.findData(result.column_map.get(role, ""))))
                combo.setToolTip(f"Which column holds the {role}")
                combo.currentIndexChanged.connect(self._on_mapping_changed)
                self.roles_grid.addWidget(label, row, 0, Qt.AlignmentFlag.AlignRight)
                self.roles_grid.addWidget(combo, row, 1)
                self.role_combos[role] = combo
            self.reason_label.setText(f"Detected {result.schema.replace('_', '/')}: {result.reason}")
        finally:
            self._updating = False

    def _fill_bad_rows(self, result: Analysis) -> None:
        self.bad_list.clear()
        for bad in result.bad_rows[:1000]:
            self.bad_list.addItem(f"line {bad.line}: {bad.message}")
        scope = f" in the first {ANALYSE_ROWS:,} rows" if result.limited else ""
        if not result.bad_rows:
            self.bad_summary.setText(f"None found{scope}.")
        elif self.state.config.data.skip_bad_rows:
            self.bad_summary.setText(f"{len(result.bad_rows)} bad rows{scope}; they will be skipped.")
        else:
            self.bad_summary.setText(f"{len(result.bad_rows)} bad rows{scope}. Training stops at the first one "
                                     "unless “Skip bad rows” is checked.")

    @Slot()
    def _show_example(self) -> None:
        result = self.analysis
        if result is None:
            return
        index = self.example_spin.value() - 1
        if result.examples:
            tokens = result.examples[min(index, len(result.examples) - 1)]
            self.token_view.show_tokens(tokens)
            self.token_counts.setText(f"{self.token_view.trained_tokens} trained tokens, "
                                      f"{self.token_view.masked_tokens} masked")
        elif result.segments:
            self.token_view.show_segments(result.segments[min(index, len(result.segments) - 1)])
            self.token_counts.setText("Segments shown without token boundaries (no tokenizer)")
        else:
            self.token_view.show_message("No usable example.")

    def _update_truncation(self) -> None:
        if self.analysis is None or not self.analysis.lengths:
            self.truncation_label.setText("")
            return
        n_over = self.histogram.n_over
        total = len(self.histogram.lengths)
        longest = int(self.histogram.lengths.max())
        verb = "dropped" if self.state.config.data.overlong == "drop" else "truncated"
        if n_over:
            self.truncation_label.setText(f"{n_over:,} of {total:,} examples are longer than {self.histogram.max_length} "
                                          f"tokens and would be {verb} (longest: {longest}).")
        else:
            self.truncation_label.setText(f"All {total:,} examples fit (longest: {longest} tokens).")

    # -- widget handlers ---------------------------------------------------------------------------
    @Slot()
    def _on_schema_chosen(self) -> None:
        if self._updating:
            return
        self._updating = True
        try:
            self.state.update("data", "column_map", {})
            self.state.update("data", "schema", self.schema_combo.currentData())
        finally:
            self._updating = False
        self.schedule_analysis()

    @Slot()
    def _on_mapping_changed(self) -> None:
        if self._updating:
            return
        mapping = {role: combo.currentData() for role, combo in self.role_combos.items() if combo.currentData()}
        self._set("data", "column_map", mapping)

    @Slot()
    def _on_template_chosen(self) -> None:
        name = self.template_combo.currentData()
        self.custom_edit.setVisible(name == "custom")
        self._set("data", "template", name)

    @Slot()
    def _on_custom_edited(self) -> None:
        self._set("data", "custom_template", self.custom_edit.toPlainText())

    @Slot(int)
    def _on_max_length(self, value: int) -> None:
        self.histogram.set_max_length(value)
        self._update_truncation()
        self._set("training", "max_length", value)

    # -- progress and errors -------------------------------------------------------------------
    @Slot()
    def _on_task_finished(self) -> None:
        if self._load_task is None and self._analysis_task is None:
            self.busy_indicator.idle()

    @Slot(object)
    def _on_failed(self, exc) -> None:
        if self.sender() is self._load_task:
            self._load_task = None
            self.source_label.setText("No dataset loaded")
        if self.sender() is self._analysis_task:
            self._analysis_task = None
        if isinstance(exc, Cancelled):
            return
        self.show_error(error_text(exc))


def _tokenizer_for(cfg, cache: dict, progress):
    key = f"{cfg.model.name_or_path}@{cfg.model.revision}"
    if key not in cache:
        from core.models import load_tokenizer

        progress(None, "loading the tokenizer")
        cache[key] = load_tokenizer(cfg.model, progress=progress)
    return cache[key]


def analyse_dataset(cfg, tokenizers: dict, progress, stop) -> Analysis:
    """Worker: read up to ANALYSE_ROWS rows, map them, render and tokenize them (lengths + examples)."""
    from core import data

    data_cfg = cfg.data
    data_cfg.skip_bad_rows = True  # list every bad row here; the user's setting decides at training time
    raw, guess, records, _lines = data.load_records(data_cfg, stop=stop, progress=progress, max_rows=ANALYSE_ROWS)
    result = Analysis(source=data_cfg.source, schema=guess.schema, column_map=dict(guess.column_map),
                      reason=guess.reason, columns=list(raw.columns), n_rows=len(records),
                      limited=len(raw.rows) + len(raw.bad_rows) >= ANALYSE_ROWS, bad_rows=list(raw.bad_rows))
    try:
        tokenizer = _tokenizer_for(cfg, tokenizers, progress)
    except Cancelled:
        raise
    except StudioError as exc:
        tokenizer, result.tokenizer_error = None, str(exc)
    max_length = cfg.training.max_length
    for index, record in enumerate(records):
        if index % 200 == 0:
            stop.raise_if_set()
            progress(index / max(1, len(records)), f"tokenizing {index:,}/{len(records):,}")
        try:
            segments = data.render_segments(record, data_cfg, tokenizer)
        except StudioError as exc:
            if index == 0:
                raise
            result.bad_rows.append(data.BadRow(index + 1, str(exc)))
            continue
        if tokenizer is None:
            if len(result.segments) < EXAMPLES:
                result.segments.append(segments)
            continue
        tokenized = data.tokenize_segments(segments, tokenizer, max_length, data_cfg.train_on_answers_only)
        result.lengths.append(tokenized.full_length or len(tokenized.input_ids))
        if len(result.examples) < EXAMPLES:
            result.examples.append(data.token_mask_view(segments, tokenizer, max_length,
                                                        data_cfg.train_on_answers_only))
    progress(1.0, "done")
    return result
