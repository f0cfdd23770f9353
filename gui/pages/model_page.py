"""Model page: choose the base model (bundled, local folder, Hub id), load it in a worker, and see its size,
memory, compute per step and architecture for the chosen training method."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Slot
from PySide6.QtGui import QStandardItemModel
from PySide6.QtWidgets import (
    QComboBox,
    QCompleter,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSplitter,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from core.config import ConfigError, field_meta
from core.errors import Cancelled
from core.glossary import explain, explain_module
from gui import theme
from gui.consent_prompt import offer_consent
from gui.pages.data_page import error_text
from gui.state import StudioState
from gui.tasks import Task, TaskGroup
from gui.widgets.help_button import HelpButton
from gui.widgets.page_heading import themed_page_layout
from gui.widgets.status_strip import BusyIndicator, ErrorBanner, ErrorBannerHost

logger = logging.getLogger(__name__)

BUNDLED = "bundled:SmolLM2-135M-Instruct"
HUB_SUGGESTIONS = ["EleutherAI/pythia-70m", "EleutherAI/pythia-160m", "HuggingFaceTB/SmolLM2-135M-Instruct",
                   "gpt2", "Qwen/Qwen2.5-0.5B-Instruct"]
METHODS = [("lora", "LoRA (adapters)"), ("full", "Full fine-tuning"), ("prefix", "Prefix tuning"),
           ("qlora", "QLoRA (4-bit base)")]
QLORA_NO_CUDA = "QLoRA needs an NVIDIA GPU with CUDA (4-bit weights via bitsandbytes); none was found on this machine."


@dataclass
class LoadedModel:
    """What the load worker hands back."""

    name: str
    model: Any
    info: Any          # core.models.ModelInfo
    tree: dict
    has_cuda: bool
    tokenizer: Any = None


def human_count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}".replace(".00 ", " ")
    return f"{int(n)}"


def human_bytes(n: float) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def human_flops(n: float) -> str:
    for unit, size in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} FLOP"


def _has_cuda() -> bool:
    try:
        from core.devices import list_devices

        return any(getattr(d, "kind", "") == "cuda" for d in list_devices())
    except Exception:  # noqa: BLE001 - no device module or driver: treat as no GPU
        return False


def load_model_job(cfg, progress, stop) -> LoadedModel:
    """Worker: convert the bundled model on first use, load the model and describe it."""
    from core import models

    progress(None, f"preparing {cfg.model.name_or_path}")
    stop.raise_if_set()
    model = models.load_model(cfg.model, device="cpu", progress=progress)
    stop.raise_if_set()
    tokenizer = None
    try:
        tokenizer = models.load_tokenizer(cfg.model)
    except Exception:  # noqa: BLE001 - safe: the tokenizer only tells whether a chat template exists
        logger.debug("no tokenizer for %s; chat template unknown", cfg.model.name_or_path, exc_info=True)
    progress(None, "counting parameters")
    info = models.model_info(model, cfg.method, batch_size=cfg.training.batch_size,
                             seq_len=cfg.training.max_length, tokenizer=tokenizer)
    tree = models.architecture_tree(model)
    return LoadedModel(cfg.model.name_or_path, model, info, tree, _has_cuda(), tokenizer)


def info_job(model, tokenizer, cfg, progress, stop):
    """Worker: recount trainable parameters / memory for another method or batch shape."""
    from core import models

    return models.model_info(model, cfg.method, batch_size=cfg.training.batch_size,
                             seq_len=cfg.training.max_length, tokenizer=tokenizer)


class ModelPage(ErrorBannerHost, QWidget):
    """The Model page (see module docstring)."""

    ERROR_PREFIX = "Model"

    def __init__(self, state: StudioState, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("PageRoot")
        self.state = state
        self.tasks = TaskGroup(self)
        self.loaded: LoadedModel | None = None
        self.info = None
        self.has_cuda = False
        self._load_task: Task | None = None
        self._info_task: Task | None = None
        self._updating = False
        self._build()
        self._fill_from_config()
        self.set_cuda_available(False)
        state.configChanged.connect(self._on_config_changed)

    # -- layout ----------------------------------------------------------------------------------
    def _build(self) -> None:
        root = themed_page_layout(self, "Model", "Pick the base model to fine-tune and how to train it. "
                                                 "The bundled SmolLM2 works offline.")

        row = QHBoxLayout()
        row.setSpacing(8)
        self.bundled_button = QPushButton(theme.icon("model"), "Bundled SmolLM2-135M")
        self.bundled_button.setToolTip("SmolLM2-135M-Instruct ships with the app (converted once on first use)")
        self.bundled_button.clicked.connect(lambda: self.load_model(BUNDLED))
        self.folder_button = QPushButton(theme.icon("folder"), "Local folder…")
        self.folder_button.clicked.connect(self.choose_folder)
        self.hub_edit = QLineEdit()
        self.hub_edit.setPlaceholderText("Hub model id, e.g. EleutherAI/pythia-70m")
        self.hub_edit.setCompleter(QCompleter(HUB_SUGGESTIONS, self.hub_edit))
        self.hub_edit.setToolTip(field_meta("model", "name_or_path")["help"])
        self.hub_edit.returnPressed.connect(self._load_hub)
        self.load_button = QPushButton("Load")
        self.load_button.setObjectName("Primary")
        self.load_button.clicked.connect(self._load_hub)
        row.addWidget(self.bundled_button)
        row.addWidget(self.folder_button)
        row.addSpacing(8)
        row.addWidget(self.hub_edit, 1)
        row.addWidget(self.load_button)
        root.addLayout(row)

        status = QHBoxLayout()
        self.model_label = QLabel("No model loaded")
        self.model_label.setObjectName("Muted")
        self.model_label.setTextFormat(Qt.TextFormat.PlainText)
        self.busy_indicator = BusyIndicator()
        status.addWidget(self.model_label, 1)
        status.addWidget(self.busy_indicator)
        root.addLayout(status)

        self.error_label = ErrorBanner()
        root.addWidget(self.error_label)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.setChildrenCollapsible(False)
        root.addWidget(splitter, 1)

        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        method_box = QGroupBox("Training method")
        method_layout = QVBoxLayout(method_box)
        self.method_combo = QComboBox()
        for key, label in METHODS:
            self.method_combo.addItem(label, key)
        self.method_combo.setToolTip(field_meta("method", "method")["help"])
        self.method_combo.currentIndexChanged.connect(self._on_method_chosen)
        self.method_help = QLabel(field_meta("method", "method")["help"].replace("`", ""))
        self.method_help.setObjectName("Muted")
        self.method_help.setWordWrap(True)
        method_layout.addWidget(self.method_combo)
        method_layout.addWidget(self.method_help)
        left_layout.addWidget(method_box)

        info_box = QGroupBox("Model facts")
        self.info_form = QFormLayout(info_box)
        self.info_form.setLabelAlignment(Qt.AlignmentFlag.AlignRight)
        self.info_form.setVerticalSpacing(7)
        self.info_labels: dict[str, QLabel] = {}
        self.help_buttons: dict[str, HelpButton] = {}
        # Each fact has a "?" with its meaning in plain words (core.glossary, shared with `models info`).
        for key, label in (
            ("architecture", "Architecture"),
            ("shape", "Layers × hidden"),
            ("vocab", "Vocabulary"),
            ("context", "Context length"),
            ("total", "Parameters"),
            ("trainable", "Trainable"),
            ("weights", "Weights in memory"),
            ("memory", "Training memory"),
            ("flops_token", "FLOPs per token"),
            ("flops_step", "FLOPs per step"),
            ("chat", "Chat template"),
        ):
            value = QLabel("—")
            value.setObjectName("InfoValue")
            value.setTextFormat(Qt.TextFormat.PlainText)
            value.setToolTip(explain(f"fact.{key}"))
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            cell = QHBoxLayout()
            cell.setSpacing(6)
            cell.addWidget(value, 1)
            self.help_buttons[key] = HelpButton(f"fact.{key}")
            cell.addWidget(self.help_buttons[key])
            self.info_form.addRow(label + ":", cell)
            self.info_labels[key] = value
        left_layout.addWidget(info_box)
        left_layout.addStretch(1)
        splitter.addWidget(left)

        tree_box = QGroupBox("Architecture")
        tree_layout = QVBoxLayout(tree_box)
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Module", "Type", "Parameters", "Weight shape"])
        self.tree.setAlternatingRowColors(True)
        self.tree.setUniformRowHeights(True)
        header = self.tree.header()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Interactive)
        header.resizeSection(0, 230)
        header.resizeSection(1, 170)
        header.resizeSection(2, 100)
        tree_layout.addWidget(self.tree)
        # What the selected module does (its class name, e.g. LlamaRMSNorm, says little to a newcomer).
        self.module_help = QLabel("Select a module to read what it does.")
        self.module_help.setObjectName("Muted")
        self.module_help.setWordWrap(True)
        self.module_help.setTextFormat(Qt.TextFormat.PlainText)
        tree_layout.addWidget(self.module_help)
        self.tree.currentItemChanged.connect(self._explain_module)
        splitter.addWidget(tree_box)
        splitter.setSizes([420, 680])

    # -- state ----------------------------------------------------------------------------------
    def _fill_from_config(self) -> None:
        cfg = self.state.config
        self._updating = True
        try:
            self.method_combo.setCurrentIndex(max(0, self.method_combo.findData(cfg.method.method)))
            name = cfg.model.name_or_path
            if not name.startswith("bundled:") and not Path(name).expanduser().exists():
                self.hub_edit.setText(name)
        finally:
            self._updating = False

    @Slot(object)
    def _on_config_changed(self, section: object) -> None:
        if section in (None, "method", "model"):
            self._fill_from_config()
        if section in (None, "method", "training") and self.loaded is not None:
            self.refresh_info()

    def set_cuda_available(self, available: bool) -> None:
        """Enable QLoRA only when a CUDA device exists; the disabled item explains why."""
        self.has_cuda = available
        model = self.method_combo.model()
        if isinstance(model, QStandardItemModel):
            item = model.item(self.method_combo.findData("qlora"))
            item.setEnabled(available)
            item.setToolTip("" if available else QLORA_NO_CUDA)

    # -- actions -------------------------------------------------------------------------------
    def activate(self) -> None:
        """First time the page is shown in the app: load the configured model."""
        if self.loaded is None and self._load_task is None:
            self.load_model(self.state.config.model.name_or_path)

    @property
    def is_busy(self) -> bool:
        return self.tasks.is_busy

    def shutdown(self, timeout_ms: int = 30000) -> bool:
        return self.tasks.shutdown(timeout_ms)

    @Slot()
    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a model folder", str(Path.home()))
        if folder:
            self.load_model(folder)

    @Slot()
    def _load_hub(self) -> None:
        text = self.hub_edit.text().strip() or HUB_SUGGESTIONS[0]
        self.load_model(text)

    def load_model(self, name: str) -> None:
        """Load ``name`` (bundled:…, a folder or a Hub id) in a worker and show its facts."""
        name = str(name or "").strip()
        if not name:
            return
        try:
            self.state.update("model", "name_or_path", name)
        except ConfigError as exc:
            self.show_error(str(exc))
            return
        if self._load_task is not None:
            self._load_task.cancel("another model was chosen")
        self.hide_error()
        cfg = self.state.config.copy()
        task = self.tasks.run(lambda progress, stop: load_model_job(cfg, progress, stop), name="model-load")
        task.progress.connect(self.busy_indicator.set_progress)
        task.succeeded.connect(self._on_loaded)
        task.failed.connect(self._on_failed)
        task.finished.connect(self._on_task_finished)
        self._load_task = task
        self.model_label.setText(f"Loading {name} …")
        self.busy_indicator.busy("Loading the model…")
        for button in (self.bundled_button, self.folder_button, self.load_button):
            button.setEnabled(False)
        task.start()

    @Slot(object)
    def _on_loaded(self, loaded: LoadedModel) -> None:
        self._load_task = None
        self.loaded = loaded
        self.set_cuda_available(loaded.has_cuda)
        self.model_label.setText(f"{loaded.name} · {loaded.info.architecture}")
        self.show_info(loaded.info)
        self.fill_tree(loaded.tree)
        self.state.set_model(loaded.info)
        self.state.show_message(f"Model ready: {loaded.name} ({human_count(loaded.info.total_params)} parameters)")

    def refresh_info(self) -> None:
        """Recount for the current method / batch size / max length (in a worker)."""
        if self.loaded is None:
            return
        if self._info_task is not None:
            self._info_task.cancel("settings changed")
        cfg = self.state.config.copy()
        model, tokenizer = self.loaded.model, self.loaded.tokenizer
        task = self.tasks.run(lambda progress, stop: info_job(model, tokenizer, cfg, progress, stop),
                              name="model-info")
        task.succeeded.connect(self._on_info)
        task.failed.connect(self._on_failed)
        task.finished.connect(self._on_task_finished)
        self._info_task = task
        self.busy_indicator.busy("Counting trainable parameters…")
        task.start()

    @Slot(object)
    def _on_info(self, info) -> None:
        self._info_task = None
        if self.loaded is not None:
            self.loaded.info = info
        self.show_info(info)
        self.state.set_model(info)

    def show_info(self, info) -> None:
        self.info = info
        share = info.trainable_params / info.total_params if info.total_params else 0
        values = {
            "architecture": f"{info.architecture} ({info.model_type})",
            "shape": f"{info.num_layers} × {info.hidden_size}",
            "vocab": f"{info.vocab_size:,} tokens",
            "context": f"{info.max_position_embeddings:,} tokens" if info.max_position_embeddings else "unknown",
            "total": f"{human_count(info.total_params)} ({info.total_params:,})",
            "trainable": f"{human_count(info.trainable_params)} ({share:.2%} of all)",
            "weights": human_bytes(info.weights_bytes),
            "memory": human_bytes(info.training_memory_bytes),
            "flops_token": human_flops(info.flops_per_token),
            "flops_step": human_flops(info.flops_per_step),
            "chat": "yes" if info.has_chat_template else "no",
        }
        for key, text in values.items():
            self.info_labels[key].setText(text)

    def fill_tree(self, tree: dict) -> None:
        """Architecture as a collapsible tree; the top two levels open, repeated blocks folded."""
        self.tree.clear()

        def add(node: dict, parent, depth: int) -> None:
            shape = node.get("shape")
            item = QTreeWidgetItem([node["name"], node["type"], human_count(node.get("params", 0)),
                                    " × ".join(map(str, shape)) if shape else ""])
            item.setTextAlignment(2, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            meaning = explain_module(node["type"])
            if meaning:
                item.setToolTip(1, meaning)
            if parent is None:
                self.tree.addTopLevelItem(item)
            else:
                parent.addChild(item)
            for child in node.get("children", []):
                add(child, item, depth + 1)
            item.setExpanded(depth < 2)

        add(tree, None, 0)

    @Slot(object, object)
    def _explain_module(self, item, _previous=None) -> None:
        if item is None:
            self.module_help.setText("Select a module to read what it does.")
            return
        meaning = explain_module(item.text(1)) or "A building block of this model."
        self.module_help.setText(f"{item.text(0)} ({item.text(1)}): {meaning}")

    # -- widget handlers ----------------------------------------------------------------------------
    @Slot()
    def _on_method_chosen(self) -> None:
        if self._updating:
            return
        method = self.method_combo.currentData()
        if method == "qlora" and not self.has_cuda:
            self.show_error(QLORA_NO_CUDA)
            self._fill_from_config()
            return
        try:
            self.state.update("method", "method", method)
        except ConfigError as exc:
            self.show_error(str(exc))

    # -- progress and errors ------------------------------------------------------------------------
    @Slot()
    def _on_task_finished(self) -> None:
        if self._load_task is None:
            for button in (self.bundled_button, self.folder_button, self.load_button):
                button.setEnabled(True)
        if self._load_task is None and self._info_task is None:
            self.busy_indicator.idle()

    @Slot(object)
    def _on_failed(self, exc) -> None:
        if self.sender() is self._load_task:
            self._load_task = None
            self.model_label.setText("No model loaded" if self.loaded is None else
                                     f"{self.loaded.name} · {self.loaded.info.architecture}")
            # Stopped before any of the model's code ran: ask the user, and load again if they allow it.
            if offer_consent(self, exc):
                self.load_model(exc.model)
                return
        if self.sender() is self._info_task:
            self._info_task = None
        if isinstance(exc, Cancelled):
            return
        self.show_error(error_text(exc))
