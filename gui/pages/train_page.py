"""The Train page: the generated hyperparameter form, Start / Stop / Resume, live curves and a log.

Training runs in ``gui.workers.TrainingController``'s thread; this page only reacts to the signals it
relays (frozen MetricPoint / StatusEvent objects) on the GUI thread.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import yaml
from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtGui import QCursor, QFont
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMenu,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from core.config import ConfigError, FieldProblem, RunConfig, field_meta
from core.errors import StudioError
from core.metrics import format_duration
from gui.consent_prompt import confirm_consents, offer_consent
from gui.tasks import TaskGroup
from gui.widgets.coach_panel import CoachPanel
from gui.widgets.config_form import ConfigForm
from gui.widgets.estimate_panel import EstimatePanel
from gui.widgets.plots import TrainingPlots
from gui.widgets.probe_strip import ProbeEditor, ProbeStrips
from gui.widgets.run_summary_card import RunSummaryCard
from gui.workers import TrainingController

logger = logging.getLogger(__name__)

ESTIMATE_DEBOUNCE_MS = 600  # re-estimate this long after the last settings change
STATS_INTERVAL_MS = 250  # the numbers above the plots refresh at most 4 times a second
CHECKPOINT_SCAN_INTERVAL_S = 2.0  # how often a live run's checkpoint folder is listed for markers

PRESETS_DIR = files("resources").joinpath("presets")  # package data: works from a wheel as from the checkout
RESUMABLE_STATES = ("stopped", "interrupted", "failed")

STATE_STYLES = {
    "idle": ("Ready", "#5b6776", "#eef1f4"),
    "preparing": ("Preparing", "#8a5a00", "#fff4d6"),
    "running": ("Training", "#1d5fbf", "#e3eefc"),
    "stopping": ("Stopping...", "#8a5a00", "#fff4d6"),
    "stopped": ("Stopped", "#6b4b00", "#fdf0cf"),
    "finished": ("Finished", "#1e7a3a", "#dcf3e3"),
    "failed": ("Failed", "#b42318", "#fde4e1"),
    "interrupted": ("Interrupted", "#6b4b00", "#fdf0cf"),
    "diverged": ("Diverged", "#b42318", "#fde4e1"),
}

PAGE_STYLE = """
QPushButton#startButton { background: #2f6fd6; color: white; font-weight: bold; border-radius: 4px;
                          padding: 6px 18px; border: 1px solid #265fb8; }
QPushButton#startButton:disabled { background: #a9bfe3; border-color: #a9bfe3; }
QPushButton#stopButton, QPushButton#resumeButton { padding: 6px 14px; }
QLabel#blockedLabel { color: #b42318; }
QFrame#errorBanner { background: #fde4e1; border: 1px solid #f0a59c; border-radius: 4px; }
QLabel#errorText { color: #7a1a10; }
QLabel#pageTitle { font-size: 18px; font-weight: bold; }
QLabel#pageSubtitle { color: #5b6776; }
QLabel.statValue { font-weight: bold; }
QLabel#statCaption { color: #5b6776; }
QLabel#presetDescription { color: #5b6776; }
"""


# -- presets ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    """A partial configuration (section -> {field: value}) with a title and a description."""

    title: str
    description: str
    settings: dict
    path: object  # a Path or an importlib.resources Traversable: only shown in messages


def load_presets(folder=PRESETS_DIR) -> list[Preset]:
    """Every ``*.yaml`` preset in ``folder`` (a Path or package data), in file-name order.

    Raises ConfigError for a broken file."""
    presets = []
    folder = Path(folder) if isinstance(folder, str) else folder
    entries = folder.iterdir() if folder.is_dir() else []
    for path in sorted((entry for entry in entries if entry.name.endswith(".yaml")), key=lambda entry: entry.name):
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError("preset", f"{path}: not valid YAML ({exc})") from None
        info = raw.pop("preset", {}) or {}
        title = info.get("title") or path.name.removesuffix(".yaml")
        preset = Preset(str(title), str(info.get("description") or ""), raw, path)
        apply_preset(RunConfig(), preset)  # fail now, naming the file, rather than when it is picked
        presets.append(preset)
    return presets


def apply_preset(cfg: RunConfig, preset: Preset) -> RunConfig:
    """A copy of ``cfg`` with the preset's values set on top (other settings are kept)."""
    result = cfg.copy()
    for section, values in preset.settings.items():
        if not isinstance(values, dict):
            raise ConfigError(section, f"{preset.path}: a preset section must be a mapping")
        for name, value in values.items():
            try:
                result.set_value(f"{section}.{name}", value)
            except ConfigError as exc:
                raise ConfigError(exc.field, f"{preset.path}: {exc.message}") from None
    return result


def preset_changes(cfg: RunConfig, preset: Preset) -> list[tuple[str, object, object]]:
    """(dotted field, current value, preset value) for every setting ``preset`` would change in ``cfg``."""
    target = apply_preset(cfg, preset)
    changes = []
    for section, values in preset.settings.items():
        for name in values:
            dotted = f"{section}.{name}"
            before, after = getattr(getattr(cfg, section), name), getattr(getattr(target, section), name)
            if before != after:
                changes.append((dotted, before, after))
    return changes


def matching_preset(cfg: RunConfig, presets: list[Preset]) -> Preset | None:
    """The first preset whose every setting equals ``cfg``'s (None: the settings are "Custom")."""
    return next((preset for preset in presets if not preset_changes(cfg, preset)), None)


def find_resumable_run(workspace: Path) -> Path | None:
    """The newest run in ``workspace`` that was stopped, interrupted or failed and has a checkpoint."""
    from core import runs

    try:
        summaries = runs.list_runs(workspace)
    except OSError:
        return None
    for summary in summaries:
        if summary.state in RESUMABLE_STATES and runs.latest_checkpoint(summary.path) is not None:
            return Path(summary.path)
    return None


def _format_bytes(n: float | None) -> str:
    if not n:
        return "–"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit in ("B", "KB") else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _label_of(dotted: str) -> str:
    section, _, name = dotted.partition(".")
    try:
        return field_meta(section, name).get("label") or name
    except KeyError:
        return dotted


def describe_problem(problem: FieldProblem) -> str:
    """"Learning rate must be between…" — the message, starting with the field's label."""
    label = _label_of(problem.field)
    return problem.message if problem.message.startswith(label) else f"{label}: {problem.message}"


class _Stat(QWidget):
    """A caption over a bold value (elapsed, ETA, speed...)."""

    def __init__(self, caption: str, tooltip: str):
        super().__init__()
        self.caption = QLabel(caption)
        self.caption.setObjectName("statCaption")
        self.caption.setMinimumWidth(self.caption.sizeHint().width())
        self.value = QLabel("–")
        self.value.setProperty("class", "statValue")
        font = self.value.font()
        font.setBold(True)
        self.value.setFont(font)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.caption)
        layout.addWidget(self.value)
        self.setToolTip(tooltip)

    def set(self, text: str) -> None:
        self.value.setText(text)


class TrainPage(QWidget):
    """Hyperparameters, Start/Stop/Resume, progress, live plots and the run log.

    ``state`` is the shared ``gui.state.StudioState``; runs go into ``state.workspace``.
    """

    runEnded = Signal(object)  # the RunResult or the exception of the last run
    chatWithCheckpoint = Signal(object)  # (run_dir: Path, checkpoint step: int): open it on the Chat page
    navigateRequested = Signal(str)  # a page key ("data", "chat", ...) the window should show
    nextStepRequested = Signal(object)  # (action: "chat" | "evaluate" | "export", run_dir: Path)

    def __init__(self, state, parent: QWidget | None = None, *, preload_delay_ms: int | None = 3000):
        super().__init__(parent)
        self.state = state
        self.controller = TrainingController(self)
        self.run_state = "idle"
        self.current_run_dir: Path | None = None
        self.resumable_run: Path | None = None
        self.last_result: object = None
        self._last_eval_loss: float | None = None
        self._best_eval_loss: float | None = None
        self._presets: list[Preset] = []
        self.coach = None  # core.coach.Coach of the current run
        self.estimate = None  # the latest core.estimate.Estimate
        self._estimate_generation = 0  # estimates of older settings are dropped
        self._estimated_generation = -1  # the settings generation self.estimate belongs to
        self._checkpoints_scanned_at = 0.0
        self.checkpoint_menu: QMenu | None = None
        self.tasks = TaskGroup(self)
        self._latest_point = None  # the newest MetricPoint not shown in the numbers yet
        self._latest_train_loss: float | None = None
        self._stats_timer = QTimer(self)
        # Repeats while a run is busy, so the elapsed clock ticks in every phase (loading, measuring the base
        # model...), not only when a training step is logged.
        self._stats_timer.setSingleShot(False)
        self._clock: tuple[float, float] | None = None  # (the run's elapsed seconds, time.monotonic() then)
        self._stats_timer.setInterval(STATS_INTERVAL_MS)
        self._stats_timer.timeout.connect(self._show_stats)
        self._estimate_timer = QTimer(self)
        self._estimate_timer.setSingleShot(True)
        self._estimate_timer.setInterval(ESTIMATE_DEBOUNCE_MS)
        self._estimate_timer.timeout.connect(self.refresh_estimate)
        self.setStyleSheet(PAGE_STYLE)

        splitter = QSplitter(Qt.Orientation.Horizontal, self)
        splitter.addWidget(self._build_settings_column())
        splitter.addWidget(self._build_run_column())
        splitter.setStretchFactor(0, 0)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([470, 900])
        splitter.setChildrenCollapsible(False)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 10, 12, 10)
        layout.addWidget(splitter)

        c = self.controller
        c.metricReceived.connect(self._on_metric)
        c.statusReceived.connect(self._on_status)
        c.runStarted.connect(self._on_run_started)
        c.runFinished.connect(self._on_run_finished)
        c.runFailed.connect(self._on_run_failed)
        c.busyChanged.connect(self._on_busy_changed)
        c.preloaded.connect(self._on_preloaded)
        c.probeReceived.connect(self._on_probe)
        c.preferenceReceived.connect(self._on_preference)
        c.logLine.connect(self._on_launch_line)
        self.coach_panel.applyRequested.connect(self.apply_advice)
        self.plots.stepClicked.connect(self.offer_checkpoint_chat)
        self.estimate_panel.applyPatch.connect(self.apply_patch)
        self.estimate_panel.measureRequested.connect(self.measure_estimate)
        self.state.configChanged.connect(self._on_config_changed)
        self.form.valueEdited.connect(self._on_value_edited)
        self.form.parseErrorsChanged.connect(self.revalidate)

        self.form.set_config(self.state.config)
        self.probe_editor.set_save_interval(self.state.config.training.save_steps)
        self._sync_device_combo()
        self._set_run_state("idle")
        self.refresh_resumable()
        self.revalidate()
        if preload_delay_ms is not None:
            # Import torch/transformers in the background while the user looks at another page.
            QTimer.singleShot(preload_delay_ms, self.controller.preload)

    # -- layout ----------------------------------------------------------------------------------
    def _build_settings_column(self) -> QWidget:
        inner = QWidget()
        column = QVBoxLayout(inner)
        column.setContentsMargins(0, 0, 8, 0)
        title = QLabel("Train")
        title.setObjectName("pageTitle")
        subtitle = QLabel("Choose how to train, then press Start. Hover over any setting to learn what it does.")
        subtitle.setObjectName("pageSubtitle")
        subtitle.setWordWrap(True)
        column.addWidget(title)
        column.addWidget(subtitle)

        preset_row = QHBoxLayout()
        self.preset_combo = QComboBox()
        self.preset_combo.setToolTip("Ready-made settings. Choosing one applies it at once and lists what it "
                                     "changed (Undo puts the settings back). “Custom” means the settings match "
                                     "no preset.")
        self.preset_combo.activated.connect(self._on_preset_chosen)
        self.undo_preset_button = QPushButton("Undo")
        self.undo_preset_button.setToolTip("Put back the settings from before the preset was applied")
        self.undo_preset_button.clicked.connect(self.undo_preset)
        self.undo_preset_button.setVisible(False)
        preset_row.addWidget(QLabel("Preset:"))
        preset_row.addWidget(self.preset_combo, 1)
        preset_row.addWidget(self.undo_preset_button)
        column.addLayout(preset_row)
        self.preset_description = QLabel()
        self.preset_description.setObjectName("presetDescription")
        self.preset_description.setWordWrap(True)
        column.addWidget(self.preset_description)
        self.preset_changes_label = QLabel()
        self.preset_changes_label.setObjectName("presetDescription")
        self.preset_changes_label.setWordWrap(True)
        self.preset_changes_label.setTextFormat(Qt.TextFormat.PlainText)
        self.preset_changes_label.setVisible(False)
        column.addWidget(self.preset_changes_label)
        self._config_before_preset: RunConfig | None = None
        self._load_preset_list()

        file_row = QHBoxLayout()
        self.load_button = QPushButton("Load config…")
        self.load_button.setToolTip("Read every setting from a config.yaml (e.g. one of an earlier run).")
        self.load_button.clicked.connect(self._ask_load_config)
        self.save_button = QPushButton("Save config…")
        self.save_button.setToolTip("Write the current settings to a YAML file (use it with the command line).")
        self.save_button.clicked.connect(self._ask_save_config)
        file_row.addWidget(self.load_button)
        file_row.addWidget(self.save_button)
        file_row.addStretch(1)
        column.addLayout(file_row)
        explore_row = QHBoxLayout()
        self.lr_find_button = QPushButton("Find a learning rate")
        self.lr_find_button.setToolTip("A short test run with a growing learning rate: see where the loss falls "
                                       "fastest and where it blows up, and take the suggested value.")
        self.lr_find_button.clicked.connect(self.open_lr_finder)
        self.compare_button = QPushButton("Compare settings")
        self.compare_button.setToolTip("Train a few variants of one or two settings one after another, watch "
                                       "their curves race and keep the winner.")
        self.compare_button.clicked.connect(self.open_compare)
        self.queue_button = QPushButton("+ Queue")
        self.queue_button.setObjectName("queueButton")
        self.queue_button.setToolTip("Add these settings to the run queue: they train after the current run "
                                     "(the queue is on the Runs page and continues after a restart).")
        self.queue_button.clicked.connect(self.queue_settings)
        explore_row.addWidget(self.lr_find_button)
        explore_row.addWidget(self.compare_button)
        explore_row.addWidget(self.queue_button)
        explore_row.addStretch(1)
        column.addLayout(explore_row)

        self.form = ConfigForm(("method", "training"))
        column.addWidget(self.form)
        column.addWidget(self._build_run_on_box())
        self.probe_editor = ProbeEditor()
        column.addWidget(self.probe_editor)
        self.estimate_panel = EstimatePanel()
        column.addWidget(self.estimate_panel)

        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(inner)
        scroll.setMinimumWidth(440)
        self.settings_scroll = scroll
        return scroll

    def _build_run_on_box(self) -> QWidget:
        box = QGroupBox("Run on")
        layout = QGridLayout(box)
        self.device_combo = QComboBox()
        self.device_combo.setToolTip("The device that trains (sets Training › device). The list shows this "
                                     "machine's CPU and each GPU.")
        self.device_combo.addItem("Automatic (best available)", "auto")
        self.device_combo.addItem("CPU", "cpu")
        self.device_combo.currentIndexChanged.connect(self._on_device_chosen)
        self.processes_spin = QSpinBox()
        self.processes_spin.setRange(1, 64)
        self.processes_spin.setSuffix(" process(es)")
        self.processes_spin.setToolTip("More than 1: data-parallel training in N processes through accelerate "
                                       "(one per GPU; on a CPU they share the cores). Probe prompts are not "
                                       "answered in multi-process runs.")
        self.processes_spin.valueChanged.connect(self._on_processes_changed)
        layout.addWidget(QLabel("Device:"), 0, 0)
        layout.addWidget(self.device_combo, 0, 1)
        layout.addWidget(QLabel("Processes (accelerate):"), 1, 0)
        layout.addWidget(self.processes_spin, 1, 1)
        layout.setColumnStretch(1, 1)
        return box

    def refresh_devices(self) -> None:
        """List this machine's devices (core.devices.list_devices; cheap once torch is imported)."""
        import sys

        if "torch" not in sys.modules:
            return  # would import torch on the GUI thread; the preload calls this again when done
        from core.devices import list_devices

        try:
            devices = list_devices()
        except Exception as exc:  # noqa: BLE001 - a broken driver must not break the page
            self._log(f"Could not list the devices: {exc}")
            return
        self.device_combo.blockSignals(True)
        self.device_combo.clear()
        self.device_combo.addItem("Automatic (best available)", "auto")
        for device in devices:
            memory = f", {_format_bytes(device.total_memory)}" if device.total_memory else ""
            self.device_combo.addItem(f"{device.name}{memory}", device.spec)
        self.device_combo.blockSignals(False)
        self._sync_device_combo()

    def _sync_device_combo(self) -> None:
        spec = self.state.config.training.device
        index = self.device_combo.findData(spec)
        self.device_combo.blockSignals(True)
        if index < 0:
            self.device_combo.addItem(spec, spec)
            index = self.device_combo.count() - 1
        self.device_combo.setCurrentIndex(index)
        self.device_combo.blockSignals(False)

    def _on_device_chosen(self, _index: int) -> None:
        spec = self.device_combo.currentData()
        if spec and spec != self.state.config.training.device:
            self.state.update("training", "device", spec)

    def _on_processes_changed(self, value: int) -> None:
        self.probe_editor.setEnabled(value == 1)
        self.schedule_estimate()

    def _build_run_column(self) -> QWidget:
        column_widget = QWidget()
        column = QVBoxLayout(column_widget)
        column.setContentsMargins(8, 0, 0, 0)

        actions = QHBoxLayout()
        self.start_button = QPushButton("▶  Start training")
        self.start_button.setObjectName("startButton")
        self.start_button.setMinimumWidth(self.start_button.sizeHint().width())
        self.start_button.clicked.connect(self.start)
        self.stop_button = QPushButton("■  Stop")
        self.stop_button.setObjectName("stopButton")
        self.stop_button.setToolTip("Stop at the end of the current step; a checkpoint is saved so you can resume.")
        self.stop_button.clicked.connect(self.stop)
        self.resume_button = QPushButton("⟳  Resume")
        self.resume_button.setObjectName("resumeButton")
        self.resume_button.clicked.connect(self.resume)
        self.state_chip = QLabel()
        self.state_chip.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.state_chip.setMinimumWidth(96)
        actions.addWidget(self.start_button)
        actions.addWidget(self.stop_button)
        actions.addWidget(self.resume_button)
        actions.addStretch(1)
        actions.addWidget(self.state_chip)
        column.addLayout(actions)

        self.blocked_label = QLabel()
        self.blocked_label.setObjectName("blockedLabel")
        self.blocked_label.setWordWrap(True)
        self.blocked_label.setTextFormat(Qt.TextFormat.PlainText)
        column.addWidget(self.blocked_label)

        self.error_banner = QFrame()
        self.error_banner.setObjectName("errorBanner")
        banner = QHBoxLayout(self.error_banner)
        banner.setContentsMargins(10, 6, 6, 6)
        self.error_text = QLabel()
        self.error_text.setObjectName("errorText")
        self.error_text.setWordWrap(True)
        self.error_text.setTextFormat(Qt.TextFormat.PlainText)
        self.error_text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        dismiss = QPushButton("Dismiss")
        dismiss.setFlat(True)
        dismiss.clicked.connect(lambda: self.error_banner.setVisible(False))
        self.go_to_data_button = QPushButton("Go to Data")
        self.go_to_data_button.setToolTip("Open the Data page to fix the dataset or its column mapping")
        self.go_to_data_button.clicked.connect(lambda: self.navigateRequested.emit("data"))
        self.go_to_data_button.setVisible(False)
        banner.addWidget(self.error_text, 1)
        banner.addWidget(self.go_to_data_button, 0, Qt.AlignmentFlag.AlignTop)
        banner.addWidget(dismiss, 0, Qt.AlignmentFlag.AlignTop)
        self.error_banner.setVisible(False)
        column.addWidget(self.error_banner)

        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setValue(0)
        self.progress_bar.setTextVisible(True)
        self.progress_bar.setFormat("Not started")
        column.addWidget(self.progress_bar)

        stats = QGridLayout()
        stats.setHorizontalSpacing(22)
        self.stat_elapsed = _Stat("Elapsed", "Training time so far (including earlier sessions of a resumed run).")
        self.stat_eta = _Stat("Time left", "Estimated from the wall time per step of this session, "
                                           "evaluations and saves included.")
        self.stat_speed = _Stat("Speed", "Trained (non-padding) tokens per second, and seconds per optimizer step.")
        self.stat_memory = _Stat("Memory", "Peak memory of the training process (GPU memory on a GPU).")
        self.stat_loss = _Stat("Train loss", "The latest training loss (lower is better).")
        self.stat_eval = _Stat("Eval loss", "The latest loss on held-out examples, and the best so far. If it "
                                            "rises while the train loss falls, the model is memorising.")
        # Two rows of three: the six figures fit a 1024-pixel window without cutting a caption.
        for index, stat in enumerate((self.stat_elapsed, self.stat_eta, self.stat_speed, self.stat_memory,
                                      self.stat_loss, self.stat_eval)):
            stats.addWidget(stat, index // 3, index % 3)
        stats.setColumnStretch(3, 1)
        column.addLayout(stats)

        self.summary_card = RunSummaryCard()
        self.summary_card.nextStepRequested.connect(self._on_next_step)
        # A one-line verdict above the curves; the whole card is the first tab under them (a card above the
        # plots squeezed them below their minimum height in a 800-pixel window).
        self.verdict_line = QLabel()
        self.verdict_line.setObjectName("verdictLine")
        self.verdict_line.setWordWrap(True)
        self.verdict_line.setTextFormat(Qt.TextFormat.PlainText)
        self.verdict_line.setVisible(False)
        column.addWidget(self.verdict_line)

        self.plots = TrainingPlots()
        self.plots.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

        log_box = QWidget()
        log_layout = QVBoxLayout(log_box)
        log_layout.setContentsMargins(0, 0, 0, 0)
        log_title = QLabel("Log")
        log_title.setObjectName("statCaption")
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(5000)
        self.log_view.setPlaceholderText("Loading, tokenizing, training and saving messages appear here.")
        try:
            from gui.theme import monospace_font

            self.log_view.setFont(monospace_font())
        except ImportError:
            self.log_view.setFont(QFont("monospace"))
        log_layout.addWidget(log_title)
        log_layout.addWidget(self.log_view)

        self.coach_panel = CoachPanel()
        self.probe_strips = ProbeStrips()
        self.bottom_tabs = QTabWidget()
        summary_page = QScrollArea()
        summary_page.setWidgetResizable(True)
        summary_page.setFrameShape(QFrame.Shape.NoFrame)
        summary_inner = QWidget()
        summary_layout = QVBoxLayout(summary_inner)
        summary_layout.setContentsMargins(0, 0, 0, 0)
        self.summary_placeholder = QLabel("When a run ends, what changed on held-out data is summed up here in "
                                          "plain words, with buttons to chat with it, evaluate it or export it.")
        self.summary_placeholder.setWordWrap(True)
        self.summary_placeholder.setObjectName("statCaption")
        summary_layout.addWidget(self.summary_placeholder)
        summary_layout.addWidget(self.summary_card)
        summary_layout.addStretch(1)
        summary_page.setWidget(summary_inner)
        self.bottom_tabs.addTab(summary_page, "Summary")
        self.bottom_tabs.addTab(self.probe_strips, "Probe answers")
        self.bottom_tabs.addTab(log_box, "Log")
        bottom = QSplitter(Qt.Orientation.Horizontal)
        bottom.addWidget(self.coach_panel)
        bottom.addWidget(self.bottom_tabs)
        bottom.setSizes([380, 520])
        bottom.setChildrenCollapsible(False)

        vertical = QSplitter(Qt.Orientation.Vertical)
        vertical.addWidget(self.plots)
        vertical.addWidget(bottom)
        vertical.setStretchFactor(0, 3)
        vertical.setStretchFactor(1, 2)
        vertical.setSizes([480, 260])
        vertical.setChildrenCollapsible(False)
        column.addWidget(vertical, 1)
        return column_widget

    # -- public API ------------------------------------------------------------------------------------
    @property
    def is_busy(self) -> bool:
        """True while a training run (or its shutdown) is in progress."""
        return self.controller.is_busy

    def activate(self) -> None:
        """First time the page is shown: make sure the heavy imports are under way."""
        self.controller.preload()

    def shutdown(self, timeout_ms: int = 60000) -> bool:
        """Stop any run (a checkpoint is saved) and background estimates, wait for the threads; False on timeout."""
        self._estimate_timer.stop()
        self._show_stats()
        if self.controller.is_busy:
            self.controller.stop("the window is closing")
        tasks_done = self.tasks.shutdown(timeout_ms)
        finished = self.controller.wait(timeout_ms) and tasks_done
        self.plots.flush()
        return finished

    # -- coach, checkpoints, estimate -----------------------------------------------------------------
    @Slot(object)
    def apply_advice(self, advice) -> None:
        """Apply a coach suggestion to the settings (for the NEXT run)."""
        from core.coach import apply_suggestion

        try:
            self.state.set_config(apply_suggestion(self.state.config, advice))
        except ConfigError as exc:
            self.show_error(f"Could not apply the suggestion: {exc}")
            return
        self._log(f"Applied the coach's suggestion for the next run: {advice.action}")

    @Slot(object)
    def apply_patch(self, patch: dict) -> None:
        """Set ``{dotted field: value}`` on the settings (an estimate's make-it-fit suggestion)."""
        cfg = self.state.config.copy()
        try:
            for dotted, value in patch.items():
                cfg.set_value(dotted, value)
        except ConfigError as exc:
            self.show_error(f"Could not apply the change: {exc}")
            return
        self.state.set_config(cfg)
        self._log("Changed " + ", ".join(f"{_label_of(k)} to {v}" for k, v in patch.items()) + ".")

    def checkpoint_for_step(self, step: float, run_dir: Path | None = None) -> int | None:
        """The step of the newest complete checkpoint at or before ``step`` in the shown run (None if none)."""
        from core.runs import list_checkpoints

        run_dir = run_dir or self.current_run_dir
        if run_dir is None:
            return None
        candidates = [saved for saved, _path in list_checkpoints(run_dir) if saved <= step]
        return candidates[-1] if candidates else None

    @Slot(int)
    def offer_checkpoint_chat(self, step: int) -> QMenu | None:
        """A click on the loss curve: offer to chat with the checkpoint at or before ``step``."""
        checkpoint = self.checkpoint_for_step(step)
        if checkpoint is None:
            self.state.show_message(f"No checkpoint saved at or before step {step} yet.")
            return None
        menu = QMenu(self)
        action = menu.addAction(f"Chat with the model at checkpoint {checkpoint}")
        run_dir = self.current_run_dir
        action.triggered.connect(lambda: self.chatWithCheckpoint.emit((run_dir, checkpoint)))
        self.checkpoint_menu = menu
        menu.popup(QCursor.pos())
        return menu

    def _refresh_checkpoint_markers(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.current_run_dir is None or (not force and now - self._checkpoints_scanned_at
                                            < CHECKPOINT_SCAN_INTERVAL_S):
            return
        self._checkpoints_scanned_at = now
        from core.runs import list_checkpoints

        try:
            self.plots.set_checkpoints(step for step, _path in list_checkpoints(self.current_run_dir))
        except OSError:  # a folder being written or removed: safe, the next scan draws the markers
            logger.debug("checkpoints of %s unreadable", self.current_run_dir, exc_info=True)

    def _show_run_markers(self, run_dir: Path) -> None:
        from core.runs import read_status

        status = read_status(run_dir)
        self._refresh_checkpoint_markers(force=True)
        self.plots.set_run_markers(best_step=status.get("best_step"),
                                   early_stopped_step=status.get("early_stopped_step"))
        if status.get("early_stopped_step") is not None:
            best = status.get("best_checkpoint") or "the best checkpoint"
            self._log(f"Early stopping ended the run at step {status['early_stopped_step']}; best: {best}.")

    def show_run(self, run_dir: str | Path) -> None:
        """Show a finished (or stopped) run: its curves, probe answers, coach advice, checkpoints and markers."""
        from core.coach import Coach
        from core.runs import load_run_config, read_metrics, read_probes

        if self.controller.is_busy:
            return
        run_dir = Path(run_dir)
        self._reset_run_view()
        self.current_run_dir = run_dir
        everything = read_metrics(run_dir)
        records = [r for r in everything if r.get("kind") in ("train", "eval")]
        self.plots.add_points(records)
        try:
            config = load_run_config(run_dir)
        except StudioError:
            config = None
        self.coach = Coach(config) if config is not None else Coach()
        self._show_preference_records(everything, config)
        for advice in self.coach.review(records):
            self.coach_panel.add_advice(advice)
        for record in read_probes(run_dir):
            self.probe_strips.add_result(record)
        self.probe_editor.set_cost(self.probe_strips.seconds_per_round())
        self._show_run_markers(run_dir)
        self._show_run_outcome(run_dir)
        self.plots.redraw()

    def _show_preference_records(self, records: list[dict], config) -> None:
        """The reward plots of a reopened or resumed DPO run: its ``{"kind": "preference"}`` lines of
        metrics.jsonl (shown empty for a DPO run that logged none yet; hidden for supervised runs)."""
        preference = [r for r in records if r.get("kind") == "preference"]
        is_dpo = config is not None and config.method.method == "dpo"
        self.plots.show_preference(is_dpo or bool(preference))
        self.plots.add_points(preference)

    def _show_run_outcome(self, run_dir: Path) -> None:
        """The progress bar of a reopened run says how it ended, not "Starting…"."""
        from core.runs import read_status

        status = read_status(run_dir)
        step, total = status.get("global_step") or 0, status.get("total_steps") or 0
        if total:
            self.progress_bar.setValue(int(1000 * min(step / total, 1.0)))
        state = status.get("state", "unknown")
        self.progress_bar.setFormat(f"{run_dir.name}: {state} at step {step}" + (f" / {total}" if total else ""))
        if status.get("best_eval_loss") is not None:
            self.stat_eval.set(f"best {status['best_eval_loss']:.4f}")
        if state in ("finished", "stopped", "failed", "diverged", "interrupted"):
            self.show_summary(run_dir)

    def show_summary(self, run_dir: Path) -> None:
        """The summary card of a run that ended: before → after on held-out data, in words, next steps."""
        from core.outcome import summarize_outcome
        from core.runs import run_weights

        try:
            outcome = summarize_outcome(run_dir)
        except (OSError, ValueError) as exc:
            self._log(f"Could not summarise {Path(run_dir).name}: {exc}")
            return
        notes = [card.advice.title for card in self.coach_panel.cards]
        self.summary_card.show_outcome(outcome, notes, has_weights=run_weights(run_dir)[0])
        self.summary_placeholder.setVisible(False)
        self.verdict_line.setText(outcome.headline)
        self.verdict_line.setVisible(True)
        self.bottom_tabs.setCurrentIndex(0)

    @Slot(str)
    def _on_next_step(self, action: str) -> None:
        if self.current_run_dir is not None:
            self.nextStepRequested.emit((action, Path(self.current_run_dir)))

    def schedule_estimate(self) -> None:
        """Re-estimate memory and time shortly after the settings stop changing."""
        self._estimate_generation += 1
        if not self.controller.is_busy and self.isVisible():
            self._estimate_timer.start()

    @Slot()
    def refresh_estimate(self) -> None:
        """Estimate memory and time of the current settings by formula, in a worker thread."""
        from functools import partial

        self._estimate_timer.stop()
        if self.state.config.problems():
            self.estimate_panel.show_busy("Fix the settings to see the memory and time estimate.")
            return
        generation = self._estimate_generation
        cfg, processes = self.state.config.copy(), self.processes_spin.value()
        task = self.tasks.run(partial(_estimate_with_fixes, cfg, processes), name="studio-estimate")
        task.succeeded.connect(partial(self._on_estimate, generation))
        task.failed.connect(partial(self._on_estimate_failed, generation))
        task.start()
        self.estimate_panel.show_busy("Estimating memory and time…")

    @Slot()
    def measure_estimate(self) -> None:
        """Probe a few real training steps (core.estimate.probe, in a child process) for measured figures."""
        from functools import partial

        if self.state.config.problems() or self.controller.is_busy:
            return
        generation = self._estimate_generation
        cfg, base = self.state.config.copy(), self.estimate
        task = self.tasks.run(partial(_measure_with_fixes, cfg, base), name="studio-measure")
        task.succeeded.connect(partial(self._on_estimate, generation))
        task.failed.connect(partial(self._on_estimate_failed, generation))
        task.start()
        self.estimate_panel.measure_button.setEnabled(False)
        self.estimate_panel.show_busy("Measuring a few real training steps…")

    def _on_estimate(self, generation: int, outcome: object) -> None:
        self.estimate_panel.measure_button.setEnabled(True)
        if generation != self._estimate_generation:
            return  # the settings changed meanwhile; a newer estimate follows
        est, fixes = outcome  # type: ignore[misc]
        self.estimate = est
        self._estimated_generation = generation
        self.estimate_panel.show_estimate(est, fixes)
        self._show_preset_description()

    def _on_estimate_failed(self, generation: int, exc: object) -> None:
        self.estimate_panel.measure_button.setEnabled(True)
        if generation == self._estimate_generation:
            self.estimate_panel.show_error(str(exc))

    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        if self.estimate is None and not self.controller.is_busy:
            self._estimate_timer.start()

    def problems(self) -> list[FieldProblem]:
        """What currently prevents Start: unreadable fields first, then RunConfig.problems()."""
        unreadable = self.form.parse_errors()
        # A field whose text cannot be read still holds its old value in the config: report it once.
        skip = {problem.field for problem in unreadable}
        return unreadable + [p for p in self.state.config.problems() if p.field not in skip]

    @Slot()
    def start(self) -> bool:
        """Start a new run with the current settings; False (and the reason shown) when it cannot."""
        if self.controller.is_busy:
            return False
        problems = self.problems()
        if problems:
            self.revalidate()
            return False
        unusable = self.data_problem()
        if unusable:
            self.show_error(unusable, data_action=True)
            return False
        if not confirm_consents(self, self.state.config.model):
            self.show_error(f"Not started: {self.state.config.model.name_or_path} needs a permission you did not give.")
            return False
        from core.coach import Coach

        self._estimate_timer.stop()
        self._reset_run_view()
        self.coach = Coach(self.state.config)
        # A DPO run shows its reward plots from the start (empty until the first log).
        self.plots.show_preference(self.state.config.method.method == "dpo")
        processes = self.processes_spin.value()
        probes = self.probe_editor.prompts() if processes == 1 else []
        self._log("Starting a new run with the current settings"
                  + (f" in {processes} processes." if processes > 1 else "."))
        self._set_run_state("preparing")
        self.controller.start(self.state.config, self.state.workspace, probes=probes,
                              probe_every=self.probe_editor.every(), processes=processes)
        return True

    def queue_settings(self) -> Path | None:
        """Queue a run with the current settings (core.queue) behind the current one; its folder, or None
        (and the reason shown) when the settings cannot run."""
        from core import queue

        if self.problems():
            self.revalidate()
            return None
        unusable = self.data_problem()
        if unusable:
            self.show_error(unusable, data_action=True)
            return None
        if not confirm_consents(self, self.state.config.model):
            self.show_error(f"Not queued: {self.state.config.model.name_or_path} needs a permission you did not give.")
            return None
        run_dir = queue.enqueue(self.state.config, self.state.workspace, probes=self.probe_editor.prompts() or None,
                                probe_every=self.probe_editor.every())
        # An active queue runs as soon as no run trains (the Runs page's queue panel starts it).
        queue.set_active(self.state.workspace, True)
        waiting = len(queue.queued_runs(self.state.workspace))
        self._log(f"Queued {run_dir.name} ({waiting} waiting): it trains "
                  + ("after the current run." if self.controller.is_busy else "as soon as the queue starts it."))
        self.state.show_message(f"Queued {run_dir.name}; the queue is on the Runs page")
        return run_dir

    @Slot()
    def stop(self) -> bool:
        """Ask the run to stop at the end of the current step (it then saves a checkpoint)."""
        if self.controller.stop():
            self._log("Stop requested: finishing the current step and saving a checkpoint…")
            self._set_run_state("stopping")
            return True
        return False

    @Slot()
    def resume(self) -> bool:
        """Continue the last stopped or interrupted run from its latest checkpoint."""
        run_dir = self.resumable_run
        if self.controller.is_busy or run_dir is None:
            return False
        from core.runs import load_run_config

        try:
            run_model = load_run_config(run_dir).model
        except StudioError:
            run_model = None  # resume itself reports the unreadable config
        # The run's config.yaml may ask for remote code or pickles; only the user's answer here allows it.
        if run_model is not None and not confirm_consents(self, run_model):
            self.show_error(f"Not resumed: {run_model.name_or_path} needs a permission you did not give.")
            return False
        self._reset_run_view()
        from core.runs import read_metrics

        try:
            config = load_run_config(run_dir)
        except StudioError:
            config = None
        try:
            # Redraw the curves so far, so the resumed run continues the same lines.
            earlier = read_metrics(run_dir)
            self.plots.add_points(record for record in earlier if record.get("kind") in ("train", "eval"))
            self._show_preference_records(earlier, config)
            self.plots.redraw()
        except (OSError, ValueError) as exc:
            self._log(f"Could not read the earlier metrics: {exc}")
        from core.coach import Coach

        self.coach = Coach(config) if config is not None else Coach()
        self.current_run_dir = run_dir
        self._refresh_checkpoint_markers(force=True)
        self._log(f"Resuming {run_dir.name} from its latest checkpoint.")
        self._set_run_state("preparing")
        self.controller.resume(run_dir)
        return True

    def load_config_file(self, path: str | Path) -> bool:
        """Replace the settings with those of a config YAML; shows the error and returns False when bad."""
        try:
            cfg = RunConfig.load(path)
        except StudioError as exc:
            self.show_error(f"Could not load the config: {exc}")
            return False
        self.state.set_config(cfg)
        self._log(f"Loaded the settings from {path}.")
        return True

    def save_config_file(self, path: str | Path) -> bool:
        """Write the current settings as YAML."""
        try:
            self.state.config.save(path)
        except OSError as exc:
            self.show_error(f"Could not save the config to {path}: {exc.strerror or exc}")
            return False
        self._log(f"Saved the settings to {path}.")
        return True

    def apply_preset(self, title: str) -> None:
        """Apply the preset named ``title`` on top of the current settings; list what changed, offer Undo."""
        from core.config import field_meta

        for preset in self._presets:
            if preset.title == title:
                changes = preset_changes(self.state.config, preset)
                before = self.state.config.copy()
                self.state.set_config(apply_preset(self.state.config, preset))
                if changes:
                    self._config_before_preset = before
                    words = []
                    for dotted, old, new in changes:
                        section, name = dotted.split(".", 1)
                        label = field_meta(section, name).get("label") or name.replace("_", " ")
                        words.append(f"{label}: {old} → {new}")
                    self.preset_changes_label.setText(f"“{preset.title}” changed {len(changes)} setting"
                                                      f"{'s' if len(changes) != 1 else ''}: " + "; ".join(words))
                else:
                    self.preset_changes_label.setText(f"The settings already were “{preset.title}”.")
                self.preset_changes_label.setVisible(True)
                self.undo_preset_button.setVisible(bool(changes))
                self._sync_preset_combo()
                self._log(f"Applied the preset “{preset.title}” ({len(changes)} settings changed).")
                return
        raise KeyError(title)

    @Slot()
    def undo_preset(self) -> None:
        """Put back the settings from before the last preset was applied."""
        if self._config_before_preset is None:
            return
        self.state.set_config(self._config_before_preset)
        self._config_before_preset = None
        self.undo_preset_button.setVisible(False)
        self.preset_changes_label.setText("Preset undone: the earlier settings are back.")
        self._sync_preset_combo()

    def data_problem(self) -> str:
        """Why the configured dataset cannot be trained on, as the Data page found it ("" when usable or
        not analysed: the run then checks the data itself before it creates a run folder)."""
        data = self.state.data
        if isinstance(data, dict) and data.get("usable") is False and \
                data.get("source") == self.state.config.data.source:
            return f"The dataset cannot be trained on yet: {data.get('error') or 'see the Data page'}"
        return ""

    def show_error(self, text: str, *, data_action: bool = False) -> None:
        """Show ``text`` in the red banner (non-blocking) and in the log; ``data_action`` adds "Go to Data"."""
        self.error_text.setText(text)
        self.go_to_data_button.setVisible(data_action)
        self.error_banner.setVisible(True)
        self._log(text)

    def refresh_resumable(self) -> None:
        """Find the newest stopped or interrupted run with a checkpoint (Resume continues it)."""
        run_dir = None
        if self.controller.last_run_dir is not None:
            from core import runs

            last = self.controller.last_run_dir
            status = runs.read_status(last) if last.exists() else {}
            if status.get("state") in RESUMABLE_STATES and runs.latest_checkpoint(last) is not None:
                run_dir = last
        elif self.controller.last_run_dir is None:
            # Right after start-up: offer the run that a crash or a closed window interrupted.
            try:
                run_dir = find_resumable_run(self.state.workspace)
            except OSError:
                run_dir = None
        self.resumable_run = run_dir
        self._update_buttons()

    # -- validation ----------------------------------------------------------------------------------
    @Slot()
    def revalidate(self) -> None:
        """Mark wrong fields and enable Start only when the configuration is valid."""
        problems = self.problems()
        form_fields = set(self.form.editors)
        self.form.set_problems([p for p in problems if p.field in form_fields])
        if problems:
            first = describe_problem(problems[0])
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            where = "" if problems[0].field in form_fields else " (on another page)"
            reason = f"Cannot start: {first}{where}{more}"
            self.blocked_label.setText(reason)
            self.blocked_label.setVisible(True)
            self.start_button.setToolTip(reason + "\n\n" + "\n".join(describe_problem(p) for p in problems))
        else:
            self.blocked_label.setText("")
            self.blocked_label.setVisible(False)
            self.start_button.setToolTip("Train a new run with these settings (it gets its own folder).")
        self._blocked = bool(problems)
        self._update_buttons()

    @Slot(object)
    def _on_config_changed(self, _section: object) -> None:
        self.form.set_config(self.state.config)
        self._sync_preset_combo()
        self._sync_device_combo()
        self.probe_editor.set_save_interval(self.state.config.training.save_steps)
        self.revalidate()
        self.schedule_estimate()

    @Slot(str, object)
    def _on_value_edited(self, dotted: str, value: object) -> None:
        section, _, name = dotted.partition(".")
        try:
            self.state.update(section, name, value)
        except ConfigError as exc:  # already coerced by the form; kept as a guard
            self.show_error(str(exc))
        self.form.set_config(self.state.config)  # relevance of dependent fields (e.g. epochs vs max steps)
        self._sync_device_combo()
        self.probe_editor.set_save_interval(self.state.config.training.save_steps)
        self.revalidate()
        self.schedule_estimate()

    def _update_buttons(self) -> None:
        busy = self.controller.is_busy
        self.start_button.setEnabled(not busy and not getattr(self, "_blocked", False))
        self.stop_button.setEnabled(busy and self.run_state != "stopping")
        self.resume_button.setEnabled(not busy and self.resumable_run is not None)
        self.queue_button.setEnabled(not getattr(self, "_blocked", False))
        if self.resumable_run is not None:
            self.resume_button.setToolTip(f"Continue {self.resumable_run.name} from its latest checkpoint.")
        else:
            self.resume_button.setToolTip("Continue a stopped or interrupted run (none right now).")
        for widget in (self.form, self.preset_combo, self.undo_preset_button, self.load_button,
                       self.device_combo, self.processes_spin, self.estimate_panel.measure_button,
                       self.lr_find_button, self.compare_button):
            widget.setEnabled(not busy)
        self.probe_editor.setEnabled(not busy and self.processes_spin.value() == 1)

    # -- presets and files ------------------------------------------------------------------------------
    def _load_preset_list(self) -> None:
        try:
            self._presets = load_presets()
        except ConfigError as exc:
            self._presets = []
            self.preset_description.setText(f"Presets unavailable: {exc}")
        self.preset_combo.clear()
        self.preset_combo.addItem("Custom", None)
        for preset in self._presets:
            self.preset_combo.addItem(preset.title, preset.title)
        self.preset_combo.setEnabled(bool(self._presets))
        self._sync_preset_combo()

    def _sync_preset_combo(self) -> None:
        """Show the preset the settings equal, or "Custom": the box never claims a preset the form does not hold."""
        preset = matching_preset(self.state.config, self._presets) if hasattr(self, "state") else None
        index = self.preset_combo.findData(preset.title) if preset is not None else 0
        self.preset_combo.blockSignals(True)
        self.preset_combo.setCurrentIndex(max(0, index))
        self.preset_combo.blockSignals(False)
        self._show_preset_description()

    def _show_preset_description(self, *_args) -> None:
        from core.estimate import duration_text

        title = self.preset_combo.currentData()
        preset = next((p for p in self._presets if p.title == title), None)
        text = preset.description if preset is not None else "Your own settings (they match none of the presets)."
        # How long it takes comes from the estimate of these very settings, never from a constant text.
        current = self.estimate if self._estimated_generation == self._estimate_generation else None
        self.preset_description.setText(" ".join(part for part in (text, duration_text(current)) if part))

    @Slot(int)
    def _on_preset_chosen(self, index: int) -> None:
        title = self.preset_combo.itemData(index)
        if title:
            self.apply_preset(title)

    def _ask_load_config(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load settings", str(self.state.workspace),
                                              "Config files (*.yaml *.yml);;All files (*)")
        if path:
            self.load_config_file(path)

    def _ask_save_config(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save settings", str(self.state.workspace / "config.yaml"),
                                              "Config files (*.yaml *.yml)")
        if path:
            self.save_config_file(path)

    # -- run events (GUI thread) -----------------------------------------------------------------------
    def _reset_run_view(self) -> None:
        self.error_banner.setVisible(False)
        self.summary_card.clear()
        self.summary_placeholder.setVisible(True)
        self.verdict_line.setVisible(False)
        self.plots.clear()
        self.coach_panel.clear()
        self.probe_strips.clear()
        self.probe_editor.set_cost(None)
        self.log_view.clear()
        self._last_eval_loss = self._best_eval_loss = None
        self._latest_train_loss = self._latest_point = None
        self._stats_timer.stop()
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("Starting…")
        for stat in (self.stat_elapsed, self.stat_eta, self.stat_speed, self.stat_memory, self.stat_loss,
                     self.stat_eval):
            stat.set("–")

    @Slot(object)
    def _on_run_started(self, run_dir: object) -> None:
        self.current_run_dir = Path(run_dir)  # type: ignore[arg-type]
        self._log(f"Run folder: {self.current_run_dir}")

    @Slot(object)
    def _on_metric(self, point) -> None:
        self.plots.add_point(point)
        if self.coach is not None:
            for advice in self.coach.update(point):
                self.coach_panel.add_advice(advice)
                self._log(f"Coach: {advice.title} (step {advice.step})")
        self._refresh_checkpoint_markers()
        if self.run_state == "preparing":
            self._set_run_state("running")
        if point.kind == "eval" and point.eval_loss is not None:
            self._last_eval_loss = point.eval_loss
            if self._best_eval_loss is None or point.eval_loss < self._best_eval_loss:
                self._best_eval_loss = point.eval_loss
            self._log(f"step {point.step}: eval loss {point.eval_loss:.4f}")
        if point.kind == "train" and point.loss is not None and math.isfinite(point.loss):
            self._latest_train_loss = point.loss
        # The progress bar and the numbers are refreshed from the latest point at most every
        # STATS_INTERVAL_MS: a fast run sends ~100 points a second, and every label change costs a
        # relayout and a repaint on the GUI thread, which must win the GIL from the training thread.
        self._latest_point = point
        if not self._stats_timer.isActive():
            self._stats_timer.start()

    def _show_stats(self) -> None:
        """Show the latest point's progress, time, speed, memory and losses."""
        if not self.controller.is_busy:
            self._stats_timer.stop()
        elif self._clock is not None:
            self.stat_elapsed.set(format_duration(self._clock[0] + time.monotonic() - self._clock[1]))
        point, self._latest_point = self._latest_point, None
        if point is None:
            return
        self._clock = (point.elapsed_seconds, time.monotonic())
        total = point.total_steps or 0
        if total:
            self.progress_bar.setValue(int(1000 * min(point.step / total, 1.0)))
            self.progress_bar.setFormat(f"Step {point.step} / {total}  ({100 * point.step / total:.0f}%)")
        self.stat_elapsed.set(format_duration(point.elapsed_seconds))
        if point.eta_seconds is not None:
            self.stat_eta.set(format_duration(point.eta_seconds))
        speed = []
        if point.tokens_per_second:
            speed.append(f"{point.tokens_per_second:,.0f} tok/s")
        if point.seconds_per_step:
            speed.append(f"{point.seconds_per_step:.2f} s/step")
        if speed:
            self.stat_speed.set("  ·  ".join(speed))
        memory = point.peak_memory_bytes or (point.memory or {}).get("rss_bytes")
        if memory:
            self.stat_memory.set(_format_bytes(memory))
        if self._latest_train_loss is not None:
            self.stat_loss.set(f"{self._latest_train_loss:.4f}")
        if self._last_eval_loss is not None and self._best_eval_loss is not None:
            self.stat_eval.set(f"{self._last_eval_loss:.4f}  (best {self._best_eval_loss:.4f})")

    @Slot(object)
    def _on_status(self, event) -> None:
        state = event.state
        self._log(f"{state}: {event.message}")
        if state == "running":
            if event.step is None and event.fraction is not None:
                # Preparation progress (tokenizing...): show it in the bar until steps arrive.
                self.progress_bar.setValue(int(1000 * max(0.0, min(event.fraction, 1.0))))
                self.progress_bar.setFormat(f"{event.message[:60]}  {100 * event.fraction:.0f}%")
            elif event.step is None:
                self.progress_bar.setFormat(event.message[:80])
            elif self.run_state != "stopping":
                self._set_run_state("running")
        elif state in ("stopped", "finished", "failed"):
            self._set_run_state(state)
            if state == "finished":
                self.progress_bar.setValue(1000)

    @Slot(object)
    def _on_preference(self, point) -> None:
        """A DPO log (core.metrics.PreferencePoint): the reward plots get it; held-out results go to the log."""
        self.plots.add_point(point)
        if point.split == "eval" and point.reward_accuracy is not None:
            margin = f", reward margin {point.reward_margin:+.3f}" if point.reward_margin is not None else ""
            self._log(f"step {point.step}: held-out reward accuracy {point.reward_accuracy:.2f}{margin}")

    @Slot(object)
    def _on_probe(self, result) -> None:
        self.probe_strips.add_result(result)
        self.probe_editor.set_cost(self.probe_strips.seconds_per_round())

    @Slot(str)
    def _on_launch_line(self, line: str) -> None:
        self.log_view.appendPlainText(line)

    @Slot(object)
    def _on_run_finished(self, result) -> None:
        self._show_stats()
        self.last_result = result
        self._set_run_state(result.state)
        if getattr(result, "run_dir", None) is not None:
            self.current_run_dir = Path(result.run_dir)
            self._show_run_markers(self.current_run_dir)
        if not hasattr(result, "global_step"):  # a LaunchResult (multi-process run): read status.json
            global_step = (getattr(result, "status", None) or {}).get("global_step")
        else:
            global_step = result.global_step
        if result.state == "finished":
            self.progress_bar.setValue(1000)
            self.progress_bar.setFormat(f"Finished at step {global_step}")
            self.state.show_message(f"Training finished: {result.run_dir.name}")
        elif result.state == "stopped":
            self.progress_bar.setFormat(f"Stopped at step {global_step}: press Resume to continue")
            self.state.show_message(f"Training stopped: {result.message}")
        elif result.state == "diverged":  # stopped by the app: the loss ran away (the message has the advice)
            self.progress_bar.setFormat(f"Diverged at step {global_step}")
            self.show_error(f"The loss ran away, so training stopped: {result.message}")
            self.state.show_message("Training diverged")
        if result.state == "finished" and self.coach is not None:
            for advice in self.coach.finish():  # "all is well" when nothing warned and held-out loss improved
                self.coach_panel.add_advice(advice)
        if self.current_run_dir is not None:
            self.show_summary(self.current_run_dir)
        self.runEnded.emit(result)

    @Slot(object)
    def _on_run_failed(self, exc) -> None:
        self._show_stats()
        self.last_result = exc
        self._set_run_state("failed")
        from core.errors import DataError

        if offer_consent(self, exc):
            self.show_error(f"Allowed for {exc.model}: press Start (or Resume) again.")
        elif isinstance(exc, DataError):  # refused before any run folder was created
            self.show_error(f"The data cannot be trained on (no run was created): {exc}", data_action=True)
        elif isinstance(exc, StudioError):
            self.show_error(f"Training failed: {exc}")
        else:
            # A bug rather than a user-fixable problem: say so, keep the details in the log.
            self.show_error(f"Training failed with an unexpected error: {type(exc).__name__}: {exc}")
            details = getattr(exc, "__traceback_text__", "")
            if details:
                self.log_view.appendPlainText(details.rstrip())
        self.progress_bar.setFormat("Failed")
        self.state.show_message("Training failed")
        self.runEnded.emit(exc)

    @Slot(bool)
    def _on_busy_changed(self, busy: bool) -> None:
        if busy:  # the clock runs from the start (the first point brings the run's own elapsed time)
            self._clock = (0.0, time.monotonic())
            self._stats_timer.start()
        else:
            self._stats_timer.stop()
        if not busy:
            self.refresh_resumable()
        self._update_buttons()

    @Slot(object)
    def _on_preloaded(self, outcome: object) -> None:
        if isinstance(outcome, BaseException):
            self._log(f"Could not load the training libraries in advance: {outcome}")
        else:
            self.refresh_devices()

    def open_lr_finder(self, *, autostart: bool = True):
        """The learning-rate finder on the current settings (gui.lr_find_dialog); returns the dialog."""
        from gui.lr_find_dialog import LRFindDialog

        dialog = LRFindDialog(self.state, self, autostart=autostart)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.open()
        return dialog

    def open_compare(self):
        """Variants side by side (gui.compare_dialog); returns the dialog."""
        from gui.compare_dialog import CompareDialog

        dialog = CompareDialog(self.state, self, probes=self.probe_editor.prompts(),
                               probe_every=self.probe_editor.every())
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.open()
        return dialog

    def _set_run_state(self, state: str) -> None:
        self.run_state = state
        text, fg, bg = STATE_STYLES.get(state, (state.capitalize(), "#333", "#eee"))
        self.state_chip.setText(f"● {text}")
        self.state_chip.setStyleSheet(f"color: {fg}; background: {bg}; border-radius: 10px; padding: 3px 10px;"
                                      "font-weight: bold;")
        self._update_buttons()

    def _log(self, text: str) -> None:
        self.log_view.appendPlainText(f"{time.strftime('%H:%M:%S')}  {text}")


def _estimate_with_fixes(cfg: RunConfig, processes: int, _progress, _stop):
    """Worker side of the estimate panel: the formula estimate and, when it does not fit, the fixes."""
    from core.errors import StudioError
    from core.estimate import dataset_stats_for, estimate, make_it_fit

    try:
        stats = dataset_stats_for(cfg, stop=_stop)  # cached after the first time: the data page tokenizes too
    except StudioError:
        stats = None  # the data page shows what is wrong with the data; estimate the worst case meanwhile
    est = estimate(cfg, processes=processes, dataset_stats=stats)
    return est, (make_it_fit(cfg, est) if est.fits is False else [])


def _measure_with_fixes(cfg: RunConfig, base, _progress, stop):
    """Worker side of "Measure": a few real steps in a child process (core.estimate.probe)."""
    from core.estimate import make_it_fit, probe

    est = probe(cfg, 3, base=base, stop=stop)
    return est, (make_it_fit(cfg, est) if est.fits is False else [])
