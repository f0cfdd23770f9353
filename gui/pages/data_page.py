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
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableView,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from core.config import SCHEMAS, TEMPLATES, ConfigError, field_meta
from core.errors import Cancelled, StudioError
from gui import theme
from gui.plain import plain_tooltip
from gui.state import StudioState
from gui.tasks import Task, TaskGroup
from gui.widgets.histogram import LengthHistogram
from gui.widgets.lazy_table import LazyTableModel, RowSource
from gui.widgets.page_heading import themed_page_layout
from gui.widgets.pair_view import PairView
from gui.widgets.status_strip import BusyIndicator, ErrorBanner, ErrorBannerHost
from gui.widgets.token_view import TokenLegend, TokenView

PREVIEW_ROWS = 1000      # rows shown for non-JSONL sources (JSONL files are paged lazily instead)
ANALYSE_ROWS = 5000      # rows tokenized for the histogram, the example and the bad-row list
EXAMPLES = 50            # examples one can step through in the template view
WELCOME_FORMATS = """\
question / answer    {"question": "What is LoRA?", "answer": "A small add-on …"}   (also prompt/response, query/response)
Alpaca               {"instruction": "Summarise", "input": "…", "output": "…"}
chat messages        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
ShareGPT             {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
plain text           a .txt / .md file, or {"text": "…"}: continued pre-training
CSV / Parquet        any two columns, e.g. tip_question,tip_answer: pick them under “Format and columns”"""
FILE_FILTER = "Datasets (*.jsonl *.ndjson *.json *.csv *.tsv *.parquet *.txt *.md);;All files (*)"


@dataclass
class LoadedSource:
    """What the load worker hands back: rows for the table, and the raw preview."""

    source: str
    table: Any            # LazyJsonlTable or list of rows
    columns: list[str]
    kind: str
    total_known: bool
    line_numbers: list[int] | None = None  # file line/row number of each preview row (non-JSONL)


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
    row_numbers: list[int] = field(default_factory=list)  # the file's line/row number of each length
    row_label: str = "line"                                 # "line" (text files) or "row" (tables)
    questions: list[str] = field(default_factory=list)      # a short text per length, for lists
    examples: list[list[tuple[str, bool]]] = field(default_factory=list)
    segments: list = field(default_factory=list)  # per example, when no tokenizer is available
    tokenizer_error: str = ""
    records: list = field(default_factory=list)   # every usable example, to render any of them on demand
    n_usable: int = 0                             # examples that render (records minus render failures)
    summary: Any = None                           # core.data.DataSummary: the one count line
    # Preference data (prompt / chosen / rejected) read as DPO pairs (core.preference):
    pairs: list = field(default_factory=list)          # every PreferencePair
    pair_examples: list = field(default_factory=list)  # core.preference.PairTokens of the first EXAMPLES pairs
    n_train_pairs: int = 0
    n_heldout_pairs: int = 0
    refusal: str = ""    # preference data while the method is not DPO: why supervised training refuses it
    dpo_error: str = ""  # the method is DPO but this is no preference data: why DPO cannot train on it

    @property
    def is_pairs(self) -> bool:
        return bool(self.pairs)


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
    return LoadedSource(source, preview.rows, preview.columns, preview.kind, len(preview.rows) < PREVIEW_ROWS,
                        [preview.line_of(i) for i in range(len(preview.rows))])


class DataPage(ErrorBannerHost, QWidget):
    """The Data page (see module docstring)."""

    ERROR_PREFIX = "Data"
    closing_loses_work = False  # reading/analysing a file is redone in seconds: closing need not ask

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
        self._analysed_for_dpo = False  # the last analysis read the file as DPO pairs (method "dpo")
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
        self.chosen_only_button = QPushButton("Train on the chosen answers only")
        self.chosen_only_button.setToolTip("Use each pair's preferred (chosen) answer as the answer to learn, and "
                                           "leave the rejected ones out (for KTO files: only the rows labelled good)")
        self.chosen_only_button.clicked.connect(lambda: self._set("data", "preference", "chosen_only"))
        self.chosen_only_button.setVisible(False)
        self.dpo_button = QPushButton("Train with DPO on these pairs")
        self.dpo_button.setObjectName("Primary")
        self.dpo_button.setToolTip("Set the training method to DPO (preference tuning): the model learns to prefer "
                                   "each chosen answer over its rejected one. LoRA adapters, on the Train page.")
        self.dpo_button.clicked.connect(self.train_with_dpo)
        self.dpo_button.setVisible(False)
        preference_actions = QHBoxLayout()
        preference_actions.setContentsMargins(0, 0, 0, 0)
        preference_actions.addWidget(self.dpo_button)
        preference_actions.addWidget(self.chosen_only_button)
        preference_actions.addStretch(1)
        root.addLayout(preference_actions)

        self.count_label = QLabel()
        self.count_label.setObjectName("CountLine")
        self.count_label.setTextFormat(Qt.TextFormat.PlainText)
        self.count_label.setWordWrap(True)
        self.count_label.setToolTip("Rows in the file · bad rows · usable examples · how they split into "
                                    "training and held-out examples (the held-out ones measure progress)")
        root.addWidget(self.count_label)

        self.welcome = self._build_welcome()
        root.addWidget(self.welcome, 1)
        self.content = QWidget()
        content_layout = QVBoxLayout(self.content)
        content_layout.setContentsMargins(0, 0, 0, 0)
        root.addWidget(self.content, 1)
        self.welcome.setVisible(False)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.setChildrenCollapsible(False)
        content_layout.addWidget(splitter, 1)

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

        bad_box = QWidget()
        bad_layout = QVBoxLayout(bad_box)
        bad_layout.setContentsMargins(6, 6, 6, 6)
        self.bad_list = QListWidget()
        self.bad_list.setWordWrap(True)  # messages are shown whole
        self.bad_summary = QLabel("None found")
        self.bad_summary.setObjectName("Muted")
        self.bad_summary.setWordWrap(True)
        self.skip_bad = QCheckBox("Skip bad rows")
        self.skip_bad.setToolTip(field_meta("data", "skip_bad_rows")["help"])
        self.skip_bad.toggled.connect(lambda on: self._set("data", "skip_bad_rows", on))
        bad_layout.addWidget(self.bad_summary)
        bad_layout.addWidget(self.bad_list, 1)
        bad_layout.addWidget(self.skip_bad)
        self.checks_tabs = QTabWidget()
        self.checks_tabs.addTab(bad_box, "Bad rows")
        self.checks_tabs.addTab(self._build_checks_panel(), "Check data")
        lower_layout.addWidget(self.checks_tabs, 1)
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
        self.pair_view = PairView()  # preference data: prompt, then chosen | rejected
        self.pair_view.setVisible(False)
        template_layout.addWidget(self.pair_view, 1)
        self.legend = TokenLegend()
        template_layout.addWidget(self.legend)
        self.token_counts = QLabel()
        self.token_counts.setObjectName("Muted")
        template_layout.addWidget(self.token_counts)
        right.addWidget(template_box)

        lengths_box = QGroupBox("Token lengths")
        lengths_layout = QVBoxLayout(lengths_box)
        plot_row = QHBoxLayout()
        self.histogram = LengthHistogram()
        self.histogram.setMinimumHeight(150)
        self.histogram.barClicked.connect(self._on_bar_clicked)
        plot_row.addWidget(self.histogram, 3)
        list_column = QVBoxLayout()
        self.longest_title = QLabel("Longest examples")
        self.longest_title.setObjectName("Muted")
        self.longest_title.setTextFormat(Qt.TextFormat.PlainText)
        self.longest_title.setWordWrap(True)
        self.longest_list = QListWidget()
        self.longest_list.setWordWrap(True)
        self.longest_list.setToolTip("Click an example to show it above and its row in the table")
        self.longest_list.itemClicked.connect(self._on_example_item_clicked)
        list_column.addWidget(self.longest_title)
        list_column.addWidget(self.longest_list, 1)
        plot_row.addLayout(list_column, 2)
        lengths_layout.addLayout(plot_row, 1)
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

    def _build_checks_panel(self) -> QWidget:
        """Data checks before training: duplicates, leakage, empty answers, placeholders, extreme lengths."""
        panel = QWidget()
        layout = QVBoxLayout(panel)
        layout.setContentsMargins(6, 6, 6, 6)
        row = QHBoxLayout()
        self.check_button = QPushButton("Check data")
        self.check_button.setToolTip("Look for duplicate or near-duplicate questions, held-out examples that are "
                                     "also in training (leakage), empty or one-character answers, one answer "
                                     "repeated across many rows, template placeholders left in the text and "
                                     "extreme lengths. Your file is never changed.")
        self.check_button.clicked.connect(self.run_checks)
        self.keep_all_button = QPushButton("Keep all rows")
        self.keep_all_button.setToolTip("Forget the rows dropped for this run")
        self.keep_all_button.clicked.connect(lambda: self._set("data", "drop_rows", []))
        row.addWidget(self.check_button)
        row.addWidget(self.keep_all_button)
        row.addStretch(1)
        layout.addLayout(row)
        self.checks_summary = QLabel("Press “Check data” to look for problems before training.")
        self.checks_summary.setObjectName("Muted")
        self.checks_summary.setWordWrap(True)
        self.checks_summary.setTextFormat(Qt.TextFormat.PlainText)
        layout.addWidget(self.checks_summary)
        self.findings_list = QListWidget()
        self.findings_list.setWordWrap(True)
        self.findings_list.currentRowChanged.connect(self._update_drop_button)
        layout.addWidget(self.findings_list, 1)
        self.drop_button = QPushButton("Drop these rows for the run")
        self.drop_button.setToolTip("Leave the selected finding's rows out of this run (data.drop_rows); the file "
                                    "itself is not changed")
        self.drop_button.setEnabled(False)
        self.drop_button.clicked.connect(self.drop_selected_finding)
        layout.addWidget(self.drop_button)
        self.check_report = None
        self._check_task: Task | None = None
        return panel

    def run_checks(self) -> None:
        """Run core.data.run_checks on the configured dataset in a worker."""
        if self.loaded is None or self._check_task is not None:
            return
        cfg = self.state.config.copy()
        tokenizers = self._tokenizers

        def work(progress, stop):
            from core import data

            try:
                tokenizer = _tokenizer_for(cfg, tokenizers, progress)
            except StudioError:
                tokenizer = None  # lengths in characters then
            return data.run_checks(cfg.data, tokenizer, cfg.training.max_length, stop=stop, progress=progress)

        task = self.tasks.run(work, name="data-check")
        task.progress.connect(self.busy_indicator.set_progress)
        task.succeeded.connect(self._on_checked)
        task.failed.connect(self._on_check_failed)
        task.finished.connect(self._on_task_finished)
        self._check_task = task
        self.check_button.setEnabled(False)
        self.checks_summary.setText("Checking…")
        self.busy_indicator.busy("Checking the data…")
        task.start()

    @Slot(object)
    def _on_checked(self, report) -> None:
        self._check_task = None
        self.check_button.setEnabled(True)
        self.check_report = report
        self.findings_list.clear()
        label = report.summary.row_label
        for finding in report.findings:
            rows = ", ".join(str(r) for r in finding.rows[:12]) + ("…" if len(finding.rows) > 12 else "")
            text = f"{finding.title}\n{finding.detail}\n{label}s: {rows}"
            if finding.examples:
                text += "\ne.g. " + " | ".join(finding.examples[:2])
            item = QListWidgetItem(text)
            item.setToolTip(plain_tooltip(text))
            self.findings_list.addItem(item)
        dropped = len(self.state.config.data.drop_rows or [])
        found = f"{len(report.findings)} kind{'s' if len(report.findings) != 1 else ''} of problem found" \
            if report.findings else "No problems found"
        self.checks_summary.setText(f"{found} in {report.summary.n_usable:,} usable rows ({report.seconds:.1f} s)."
                                    + (f" {dropped} rows are dropped for this run." if dropped else ""))
        self.checks_tabs.setCurrentIndex(1)
        self._update_drop_button()

    @Slot(object)
    def _on_check_failed(self, exc) -> None:
        self._check_task = None
        self.check_button.setEnabled(True)
        if not isinstance(exc, Cancelled):
            self.checks_summary.setText("The check could not run: " + error_text(exc))

    def _update_drop_button(self, *_args) -> None:
        index = self.findings_list.currentRow()
        findings = self.check_report.findings if self.check_report is not None else []
        drop = findings[index].drop if 0 <= index < len(findings) else []
        self.drop_button.setEnabled(bool(drop))
        label = "this row" if len(drop) == 1 else f"these {len(drop)} rows"
        self.drop_button.setText(f"Drop {label} for the run" if drop else "Drop these rows for the run")

    def drop_selected_finding(self) -> None:
        """Leave the selected finding's rows out of this run (the file is never modified)."""
        index = self.findings_list.currentRow()
        if self.check_report is None or not 0 <= index < len(self.check_report.findings):
            return
        rows = set(self.state.config.data.drop_rows or []) | set(self.check_report.findings[index].drop)
        self._set("data", "drop_rows", sorted(rows))
        self.checks_summary.setText(f"{len(rows)} rows are dropped for this run (the file is unchanged). "
                                    "Press “Check data” again to see what remains.")

    def _build_welcome(self) -> QWidget:
        """First launch: three ways in, shown at once instead of a blank page while a sample loads."""
        panel = QGroupBox("Start with your data")
        layout = QVBoxLayout(panel)
        intro = QLabel("Open a file of your own (JSONL, JSON, CSV, Parquet, TXT), try the bundled sample of "
                       "trivia questions, or type a Hugging Face dataset id in the box above. The rows appear at "
                       "once; the example and token lengths follow when the tokenizer is ready.")
        intro.setWordWrap(True)
        layout.addWidget(intro)
        buttons = QHBoxLayout()
        self.welcome_open = QPushButton(theme.icon("open"), "Open a file…")
        self.welcome_open.setObjectName("Primary")
        self.welcome_open.clicked.connect(self.choose_file)
        self.welcome_sample = QPushButton("Use the trivia sample")
        self.welcome_sample.clicked.connect(lambda: self.load_source("sample:trivia"))
        buttons.addWidget(self.welcome_open)
        buttons.addWidget(self.welcome_sample)
        buttons.addStretch(1)
        layout.addLayout(buttons)
        formats = QLabel(WELCOME_FORMATS)
        formats.setTextFormat(Qt.TextFormat.PlainText)
        formats.setFont(theme.monospace_font())
        formats.setObjectName("Muted")
        formats.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addSpacing(12)
        layout.addWidget(QLabel("What a row can look like (the format is detected; you can map any column):"))
        layout.addWidget(formats)
        layout.addStretch(1)
        return panel

    def show_welcome(self) -> None:
        """Show the welcome panel (nothing loaded yet)."""
        self.content.setVisible(False)
        self.welcome.setVisible(True)
        self.source_label.setText("No dataset loaded yet")

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
        elif section == "method" and self.loaded is not None and self.analysis is not None and \
                self._analysed_for_dpo != (self.state.config.method.method == "dpo"):
            self.schedule_analysis()  # DPO reads the file as pairs; the other methods as examples

    @Slot()
    def train_with_dpo(self) -> None:
        """Use the shown preference pairs for DPO: the training method becomes "dpo" (the Train page's form
        follows the shared config)."""
        self._set("method", "method", "dpo")
        if self.state.config.method.method == "dpo":
            self.state.show_message("Method set to DPO: the Train page trains on these pairs")

    # -- actions ---------------------------------------------------------------------------------
    def activate(self) -> None:
        """First time the page is shown in the app: load the configured dataset, or welcome a new user
        (the default sample is not loaded unasked)."""
        if self.loaded is None and self._load_task is None:
            from core.config import DataConfig

            source = self.state.config.data.source
            if not source or source == DataConfig().source:
                self.show_welcome()
            else:
                self.load_source(source)

    @property
    def is_busy(self) -> bool:
        """A worker runs, or an analysis is about to start (settings just changed)."""
        return self.tasks.is_busy or self._reanalyse_timer.isActive()

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
        self._clear_views()
        # Local files need no torch/transformers: don't wait for their first import (rows in < 1 s).
        local = Path(source).expanduser().exists() or source.startswith("sample:")
        task = self.tasks.run(lambda progress, stop: load_source(source, progress, stop), name="data-load",
                              heavy_imports=not local)
        task.progress.connect(self.busy_indicator.set_progress)
        task.succeeded.connect(self._on_loaded)
        task.failed.connect(self._on_failed)
        task.finished.connect(self._on_task_finished)
        self._load_task = task
        self.busy_indicator.busy("Reading the dataset…")
        task.start()

    def _clear_views(self) -> None:
        """Forget every panel of the previous dataset (rows, example, histogram, bad rows, detection)."""
        self.loaded = None
        self.analysis = None
        self.table_model.set_source(RowSource([], []))
        self.preview_box.setTitle("Rows")
        self.token_view.show_message("")
        self.token_counts.setText("")
        self.count_label.setText("")
        self.histogram.clear_data()
        self.truncation_label.setText("")
        self.longest_list.clear()
        self.bad_list.clear()
        self.bad_summary.setText("")
        self.findings_list.clear()
        self.check_report = None
        self.checks_summary.setText("Press “Check data” to look for problems before training.")
        self.chosen_only_button.setVisible(False)
        self.dpo_button.setVisible(False)
        self.pair_view.setVisible(False)
        self.token_view.setVisible(True)
        self.reason_label.setText("")
        self._updating = True
        self.example_spin.setRange(1, 1)
        self._updating = False
        self.example_count.setText("")
        self._clear_role_pickers()
        self.state.set_data(None)

    @Slot(object)
    def _on_loaded(self, loaded: LoadedSource) -> None:
        self._load_task = None
        self.welcome.setVisible(False)
        self.content.setVisible(True)
        self.loaded = loaded
        self.table_model.set_source(RowSource(loaded.table, loaded.columns, loaded.line_numbers))
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
        # The pickers list this file's own columns at once, whatever detection says later.
        schema = self.state.config.data.schema
        self._fill_mapping(schema, loaded.columns, dict(self.state.config.data.column_map))
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
        summary = self.analysis.summary if self.analysis is not None else None
        if summary is not None and summary.complete and summary.n_in_file != n:
            # The table shows the rows that could be read; the count line counts the file (bad rows too).
            count = f"{summary.n_in_file:,} rows in the file, {n:,} readable shown"
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
        self._analysed_for_dpo = cfg.method.method == "dpo"
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
        self.chosen_only_button.setVisible(False)
        self.dpo_button.setVisible(False)
        self.pair_view.setVisible(result.is_pairs)
        self.token_view.setVisible(not result.is_pairs)
        self.skip_bad.setVisible(not result.is_pairs)  # DPO always leaves unusable rows out
        if result.is_pairs:
            self._on_pairs_analysed(result)
            return
        self._fill_mapping(result.schema, self._known_columns(result.columns), result.column_map,
                           f"Detected {result.schema.replace('_', '/')}: {result.reason}"
                           if self.state.config.data.schema == "auto" else f"Format: {result.reason}")
        examples = result.n_usable or len(result.examples) or len(result.segments)
        self._updating = True
        self.example_spin.setRange(1, max(1, examples))
        self._updating = False
        self.example_count.setText(f"of {examples}")
        self._show_example()
        self.histogram.set_data(result.lengths, self.state.config.training.max_length)
        self._update_truncation()
        self._fill_longest(result)
        self._fill_bad_rows(result)
        self._update_counts(result)
        self._update_source_label()
        if result.tokenizer_error:
            self.show_error("Token view unavailable: " + result.tokenizer_error)
        if result.dpo_error:  # the method is DPO, but the file holds no pairs: DPO would refuse it
            self.show_error(result.dpo_error)
            self.state.set_data({"source": result.source, "usable": False, "error": result.dpo_error})
            return
        self.state.set_data({"source": result.source, "schema": result.schema, "column_map": result.column_map,
                             "n_rows": result.n_rows, "bad_rows": len(result.bad_rows),
                             "n_truncated": self.histogram.n_over, "usable": True})
        self.state.show_message(f"Dataset ready: {result.n_rows:,} examples analysed ({result.schema})")

    def _on_pairs_analysed(self, result: Analysis) -> None:
        """Preference data: the pair preview, the count of pairs and left-out rows, and either the refusal
        with its two ways forward (DPO, or the chosen answers only) or, with the method DPO, nothing in the way."""
        columns = self._known_columns()
        self._fill_mapping(result.schema, columns, result.column_map or _pair_columns(columns),
                           f"Preference pairs (DPO): {result.reason}")
        n = len(result.pairs)
        self._updating = True
        self.example_spin.setRange(1, max(1, n))
        self._updating = False
        self.example_count.setText(f"of {n:,} pairs")
        self._show_example()
        self.histogram.set_data(result.lengths, self.state.config.training.max_length)
        self._update_truncation()
        self._fill_longest(result)
        self._fill_bad_rows(result)
        left_out = len(result.bad_rows)
        self.count_label.setText(f"{self._row_count_text()} · {n:,} preference pairs · "
                                 + (f"{left_out:,} row{'s' if left_out != 1 else ''} left out (see Bad rows) · "
                                    if left_out else "")
                                 + f"{result.n_train_pairs:,} train / {result.n_heldout_pairs:,} held-out pairs")
        self._update_source_label()
        if result.tokenizer_error:
            self.show_error("Token view unavailable: " + result.tokenizer_error)
        if result.refusal:
            # Not DPO yet: supervised training would learn the rejected answers too. Two ways forward.
            self.show_error(result.refusal)
            self.dpo_button.setVisible(True)
            self.chosen_only_button.setVisible(True)
            self.state.set_data({"source": result.source, "usable": False, "error": result.refusal,
                                 "schema": "preference", "n_pairs": n})
            return
        self.state.set_data({"source": result.source, "schema": "preference", "column_map": result.column_map,
                             "n_rows": n, "n_pairs": n, "bad_rows": left_out,
                             "n_truncated": self.histogram.n_over, "usable": True})
        self.state.show_message(f"Preference data ready: {n:,} pairs for DPO")

    def _known_columns(self, extra: list[str] | None = None) -> list[str]:
        """The loaded file's columns (nested keys included when the reader lists them), then any others."""
        columns = list(self.loaded.columns) if self.loaded is not None else []
        for column in extra or []:
            if column not in columns:
                columns.append(column)
        return columns

    def _clear_role_pickers(self) -> None:
        while self.roles_grid.count():
            item = self.roles_grid.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        self.role_combos.clear()

    def _fill_mapping(self, schema: str, columns: list[str], column_map: dict[str, str], reason: str = "") -> None:
        """One picker per role of ``schema`` listing ``columns`` (the loaded file's own), set to ``column_map``.

        With ``schema == "auto"`` and no detection yet, there are no roles to show: the reason says to pick a
        format first."""
        from core.data import SCHEMA_ROLES

        self._updating = True
        try:
            self._clear_role_pickers()
            required, optional = SCHEMA_ROLES.get(schema, ((), ()))
            for row, role in enumerate(required + optional):
                label = QLabel(f"{role}{'' if role in required else ' (optional)'}:")
                combo = QComboBox()
                combo.addItem("(none)", "")
                for column in columns:
                    combo.addItem(str(column), str(column))
                combo.setCurrentIndex(max(0, combo.findData(column_map.get(role, ""))))
                combo.setToolTip(f"Which column holds the {role}")
                combo.setObjectName(f"role-{role}")
                combo.currentIndexChanged.connect(self._on_mapping_changed)
                self.roles_grid.addWidget(label, row, 0, Qt.AlignmentFlag.AlignRight)
                self.roles_grid.addWidget(combo, row, 1)
                self.role_combos[role] = combo
            if reason:
                self.reason_label.setText(reason)
            elif schema == "auto":
                self.reason_label.setText("Detecting the format…")
        finally:
            self._updating = False

    def _row_count_text(self) -> str:
        if self.loaded is None:
            return ""
        n = len(self.loaded.table)
        complete = getattr(self.loaded.table, "complete", True) if self.loaded.kind == "jsonl" \
            else self.loaded.total_known
        return f"{n:,} rows in the file" if complete else f"{n:,}+ rows read so far"

    def _update_counts(self, result: Analysis) -> None:
        """One honest line: rows in the file · bad · usable · train / held-out (all from the same read)."""
        if result.summary is not None:  # always set by analyse_dataset (core.data.summarize_records)
            summary = result.summary
            summary.skip_bad_rows = bool(self.state.config.data.skip_bad_rows)
            extra = ""
            if result.n_usable < summary.n_usable:  # the template could not render some rows
                extra = f" · {summary.n_usable - result.n_usable:,} cannot be rendered (see Bad rows)"
            self.count_label.setText(summary.line() + extra)

    def _example_line(self, result: Analysis, index: int) -> str:
        label = result.row_label
        number = result.row_numbers[index] if index < len(result.row_numbers) else index + 1
        text = result.questions[index] if index < len(result.questions) else ""
        return f"{label} {number}: {result.lengths[index]:,} tokens · {text}"

    def _fill_longest(self, result: Analysis) -> None:
        self.longest_list.clear()
        if not result.lengths:
            self.longest_title.setText("Longest examples")
            return
        order = sorted(range(len(result.lengths)), key=lambda i: -result.lengths[i])[:20]
        self._list_examples(order, "Longest examples")

    def _list_examples(self, indices: list[int], title: str) -> None:
        result = self.analysis
        if result is None:
            return
        self.longest_title.setText(title)
        self.longest_list.clear()
        max_length = self.state.config.training.max_length
        for index in indices[:500]:
            line = self._example_line(result, index)
            if result.lengths[index] > max_length:
                line += f"  (cut at {max_length})"
            item = QListWidgetItem(line)
            item.setData(Qt.ItemDataRole.UserRole, index)
            item.setToolTip(plain_tooltip(line))
            self.longest_list.addItem(item)

    @Slot(object)
    def _on_bar_clicked(self, bar: dict) -> None:
        indices = sorted(bar["indices"], key=lambda i: -self.analysis.lengths[i]) if self.analysis else []
        span = f"longer than {bar['low'] - 1}" if bar["high"] is None else f"{bar['low']}–{bar['high']}"
        self._list_examples(indices, f"{len(indices):,} examples of {span} tokens")

    def _on_example_item_clicked(self, item) -> None:
        index = item.data(Qt.ItemDataRole.UserRole)
        if index is None or self.analysis is None:
            return
        self.example_spin.setValue(int(index) + 1)
        number = self.analysis.row_numbers[index] if index < len(self.analysis.row_numbers) else index + 1
        row = self.table_model.row_for_line(number)
        if row is not None:
            self.table.scrollTo(self.table_model.index(row, 0))
            self.table.selectRow(row)

    def _fill_bad_rows(self, result: Analysis) -> None:
        self.bad_list.clear()
        for bad in result.bad_rows[:1000]:
            text = f"{result.row_label} {bad.line}: {bad.message}"
            item = QListWidgetItem(text)
            item.setToolTip(plain_tooltip(text))  # the whole message, however long
            self.bad_list.addItem(item)
        scope = f" in the first {ANALYSE_ROWS:,} rows" if result.limited else ""
        if result.is_pairs:
            self.bad_summary.setText(f"{len(result.bad_rows)} rows left out of the pairs (ties, both-bad votes, rows "
                                     "without a prompt and two answers); they are not trained."
                                     if result.bad_rows else "None: every row is a pair.")
        elif not result.bad_rows:
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
        if result.is_pairs:
            self._show_pair(result, index)
            return
        if result.examples and index >= len(result.examples) and index < len(result.records):
            self._render_later(index)
            return
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

    def _show_pair(self, result: Analysis, index: int) -> None:
        index = max(0, min(index, len(result.pairs) - 1))
        if index < len(result.pair_examples):
            self._show_pair_tokens(result.pair_examples[index])
            return
        key = f"{self.state.config.model.name_or_path}@{self.state.config.model.revision}"
        tokenizer = self._tokenizers.get(key)
        if tokenizer is None:
            self.pair_view.show_message("No token view: the tokenizer could not be loaded.")
            return
        cfg = self.state.config.copy()
        pair = result.pairs[index]
        self.pair_view.show_message(f"Rendering pair {index + 1}…")
        task = self.tasks.run(lambda progress, stop: pair_view_of(cfg, tokenizer, pair), name="data-pair",
                              heavy_imports=False)

        def shown(tokens, index=index, result=result):
            if self.analysis is result and self.example_spin.value() - 1 == index:
                self._show_pair_tokens(tokens)

        task.succeeded.connect(shown)
        task.failed.connect(lambda exc: self.pair_view.show_message(error_text(exc)))
        task.start()

    def _show_pair_tokens(self, tokens) -> None:
        self.pair_view.show_pair(tokens)
        label = self.analysis.row_label if self.analysis is not None else "line"
        self.token_counts.setText(f"{label} {tokens.row}: prompt {len(tokens.prompt)} tokens (context) · chosen "
                                  f"{self.pair_view.chosen_view.trained_tokens} · rejected "
                                  f"{self.pair_view.rejected_view.trained_tokens} trained tokens")

    def _render_later(self, index: int) -> None:
        """Render example ``index`` in a worker (only the first EXAMPLES are precomputed)."""
        result = self.analysis
        key = f"{self.state.config.model.name_or_path}@{self.state.config.model.revision}"
        tokenizer = self._tokenizers.get(key)
        if result is None or tokenizer is None:
            return
        cfg = self.state.config.copy()
        record = result.records[index]
        self.token_view.show_message(f"Rendering example {index + 1}…")
        task = self.tasks.run(lambda progress, stop: render_example(cfg, tokenizer, record), name="data-example",
                              heavy_imports=False)

        def shown(tokens, index=index, result=result):
            if self.analysis is result and self.example_spin.value() - 1 == index:
                self.token_view.show_tokens(tokens)
                self.token_counts.setText(f"{self.token_view.trained_tokens} trained tokens, "
                                          f"{self.token_view.masked_tokens} masked")

        task.succeeded.connect(shown)
        task.failed.connect(lambda exc: self.token_view.show_message(error_text(exc)))
        task.start()

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
        if self._load_task is None and self._analysis_task is None and self._check_task is None:
            self.busy_indicator.idle()

    @Slot(object)
    def _on_failed(self, exc) -> None:
        analysis_failed = False
        if self.sender() is self._load_task:
            self._load_task = None
            self.source_label.setText(f"Could not open {self.state.config.data.source}")
            self.welcome.setVisible(False)
            self.content.setVisible(True)
        if self.sender() is self._analysis_task:
            self._analysis_task = None
            analysis_failed = True
        if isinstance(exc, Cancelled):
            return
        self.show_error(error_text(exc))
        self.chosen_only_button.setVisible(getattr(exc, "field", None) == "preference")
        if analysis_failed or self.loaded is None:
            # The Train page refuses this source until it is fixed (no failed run folder is left behind).
            self.state.set_data({"source": self.state.config.data.source, "usable": False,
                                 "error": error_text(exc)})
        if analysis_failed and self.loaded is not None:
            # Nothing of the previous analysis stays, and the pickers offer this file's columns so the user
            # can map them: detection failing must never leave the page without a way forward.
            self.analysis = None
            self.token_view.show_message("No example to show yet: the message above says what is missing. "
                                         "Pick the format and the columns under “Format and columns”.")
            self.token_counts.setText("")
            self.histogram.clear_data()
            self.truncation_label.setText("")
            self.longest_list.clear()
            self.count_label.setText(f"{self._row_count_text()} · not usable yet: see the message above")
            schema = self.state.config.data.schema
            hint = ("Pick the format that fits this file, then the column for each role."
                    if schema == "auto" else "Pick the column for each role.")
            self._fill_mapping(schema, self._known_columns(), dict(self.state.config.data.column_map), hint)


def _tokenizer_for(cfg, cache: dict, progress):
    key = f"{cfg.model.name_or_path}@{cfg.model.revision}"
    if key not in cache:
        from core.models import load_tokenizer

        progress(None, "loading the tokenizer")
        cache[key] = load_tokenizer(cfg.model, progress=progress)
    return cache[key]


def analyse_dataset(cfg, tokenizers: dict, progress, stop) -> Analysis:
    """Worker: the file as DPO reads it (pairs) when the method is DPO, else as supervised examples; preference
    data under another method is read as pairs too, with the refusal of supervised training attached."""
    from core.errors import DataError

    if cfg.method.method == "dpo":
        try:
            return analyse_pairs(cfg, tokenizers, progress, stop)
        except DataError as exc:
            if exc.field != "schema":  # preference data with no usable pair: that error is the answer
                raise
            result = analyse_examples(cfg, tokenizers, progress, stop)  # no pairs: show what the file is
            result.dpo_error = str(exc)
            return result
    try:
        return analyse_examples(cfg, tokenizers, progress, stop)
    except DataError as exc:
        if exc.field != "preference":
            raise
        try:
            result = analyse_pairs(cfg, tokenizers, progress, stop)
        except DataError:  # KTO data (no pairs) and the like: the refusal alone says what to do
            raise exc from None
        result.refusal = str(exc)
        return result


def analyse_pairs(cfg, tokenizers: dict, progress, stop) -> Analysis:
    """Worker: the preference pairs of the file (core.preference.load_preference_pairs: the reader DPO
    trains from), the rows it leaves out with their line numbers, and the tokens of the first pairs."""
    from core import data
    from core.preference import load_preference_pairs, pair_tokens

    progress(None, "reading the preference pairs")
    pairs, skipped, label = load_preference_pairs(cfg.data, stop=stop)
    train_idx, test_idx = data.split_indices(len(pairs), cfg.data.test_fraction, cfg.data.split_seed)
    result = Analysis(source=cfg.data.source, schema="preference", column_map=dict(cfg.data.column_map),
                      reason="each row a prompt with a chosen and a rejected answer", columns=[],
                      n_rows=len(pairs), limited=False, bad_rows=[data.BadRow(line, reason) for line, reason in sorted(skipped)],
                      row_label=label, pairs=pairs, n_train_pairs=len(train_idx), n_heldout_pairs=len(test_idx))
    result.n_usable = len(pairs)
    try:
        tokenizer = _tokenizer_for(cfg, tokenizers, progress)
    except Cancelled:
        raise
    except StudioError as exc:
        tokenizer, result.tokenizer_error = None, str(exc)
    max_length = cfg.training.max_length
    for index, pair in enumerate(pairs[:ANALYSE_ROWS]):
        if index % 100 == 0:
            stop.raise_if_set()
            progress(index / max(1, len(pairs)), f"tokenizing pair {index:,}/{len(pairs):,}")
        if tokenizer is None:
            tokens = _untokenized_pair(pair)
        else:
            tokens = pair_tokens(pair, cfg.data, tokenizer, max_length)
        if len(result.pair_examples) < EXAMPLES:
            result.pair_examples.append(tokens)
        longest = len(tokens.prompt) + max(len(tokens.chosen) + tokens.chosen_cut,
                                           len(tokens.rejected) + tokens.rejected_cut)
        result.lengths.append(longest)
        result.row_numbers.append(pair.row)
        result.questions.append(_prompt_glimpse(pair.prompt))
    result.limited = len(pairs) > ANALYSE_ROWS
    progress(1.0, "done")
    return result


def _pair_columns(columns: list[str]) -> dict[str, str]:
    """The columns the pairs come from, for the Format pickers (the reader's own aliases)."""
    found = {}
    for role, names in (("prompt", ("prompt", "question", "instruction", "conversations", "messages")),
                        ("chosen", ("chosen",)), ("rejected", ("rejected",))):
        for name in names:
            if name in columns:
                found[role] = name
                break
    return found


def _prompt_glimpse(prompt, limit: int = 70) -> str:
    if isinstance(prompt, list):
        users = [m["content"] for m in prompt if m.get("role") == "user"]
        prompt = users[-1] if users else (prompt[-1]["content"] if prompt else "")
    text = " ".join(str(prompt).split())
    return text if len(text) <= limit else text[:limit] + "…"


def _untokenized_pair(pair):
    """A pair's texts without a tokenizer (it could not be loaded): whole answers shown as trained."""
    from core.preference import PairTokens

    prompt = pair.prompt if isinstance(pair.prompt, str) else "\n".join(
        f"{m['role']}: {m['content']}" for m in pair.prompt)
    return PairTokens(pair.row, [(prompt, False)], [(pair.chosen, True)], [(pair.rejected, True)])


def pair_view_of(cfg, tokenizer, pair):
    """Worker: the tokens of one pair (for pairs past the precomputed ones)."""
    from core.preference import pair_tokens

    return pair_tokens(pair, cfg.data, tokenizer, cfg.training.max_length)


def analyse_examples(cfg, tokenizers: dict, progress, stop) -> Analysis:
    """Worker: read up to ANALYSE_ROWS rows, map them, render and tokenize them (lengths + examples)."""
    from core import data

    data_cfg = cfg.data
    user_skips = data_cfg.skip_bad_rows
    data_cfg.skip_bad_rows = True  # list every bad row here; the user's setting decides at training time
    raw, guess, records, lines = data.load_records(data_cfg, stop=stop, progress=progress, max_rows=ANALYSE_ROWS)
    result = Analysis(source=data_cfg.source, schema=guess.schema, column_map=dict(guess.column_map),
                      reason=guess.reason, columns=list(raw.columns), n_rows=len(records),
                      limited=len(raw.rows) + len(raw.bad_rows) >= ANALYSE_ROWS, bad_rows=list(raw.bad_rows),
                      row_label=raw.line_label)
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
        line = lines[index] if index < len(lines) else index + 1
        try:
            segments = data.render_segments(record, data_cfg, tokenizer)
        except StudioError as exc:
            if index == 0:
                raise
            result.bad_rows.append(data.BadRow(line, str(exc)))
            continue
        result.records.append(record)
        if tokenizer is None:
            if len(result.segments) < EXAMPLES:
                result.segments.append(segments)
            continue
        tokenized = data.tokenize_segments(segments, tokenizer, max_length, data_cfg.train_on_answers_only)
        result.lengths.append(tokenized.full_length or len(tokenized.input_ids))
        result.row_numbers.append(line)
        result.questions.append(_summary_text(record))
        if len(result.examples) < EXAMPLES:
            result.examples.append(data.token_mask_view(segments, tokenizer, max_length,
                                                        data_cfg.train_on_answers_only))
    result.n_usable = len(result.records)
    result.bad_rows.sort(key=lambda bad: bad.line)
    import dataclasses

    result.summary = data.summarize_records(raw, guess, lines, dataclasses.replace(data_cfg, skip_bad_rows=user_skips),
                                            complete=not result.limited)
    progress(1.0, "done")
    return result


def _summary_text(record: dict, limit: int = 70) -> str:
    """A one-line glimpse of an example (its first text field) for lists."""
    for key in ("question", "instruction", "prompt", "input", "text"):
        value = record.get(key)
        if isinstance(value, str) and value.strip():
            text = " ".join(value.split())
            return text if len(text) <= limit else text[:limit] + "…"
    messages = record.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict) and message.get("role") == "user" and message.get("content"):
                text = " ".join(str(message["content"]).split())
                return text if len(text) <= limit else text[:limit] + "…"
    return ""


def render_example(cfg, tokenizer, record: dict) -> list[tuple[str, bool]]:
    """Worker: the token view of one example (for examples past the precomputed ones)."""
    from core import data

    segments = data.render_segments(record, cfg.data, tokenizer)
    return data.token_mask_view(segments, tokenizer, cfg.training.max_length, cfg.data.train_on_answers_only)
