"""A hyperparameter form generated from core.config field metadata.

Nothing here is written by hand per field: labels, tooltips, ranges, choices and the basic/advanced
split all come from ``core.config.iter_fields``. The form never owns the configuration; it renders a
``RunConfig`` (``set_config``) and reports user edits (``valueEdited``). Problems found by
``RunConfig.problems()`` are shown next to their field (``set_problems``) with a red border and a
message underneath.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import yaml
from PySide6.QtCore import QSignalBlocker, Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QSizePolicy,
    QSpinBox,
    QToolButton,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from core.config import ConfigError, FieldProblem, RunConfig, coerce_value, iter_fields

SECTION_TITLES = {
    "data": "Data",
    "model": "Model",
    "method": "Method",
    "training": "Training",
    "generation": "Generation",
}

INT_LIMIT = 2**31 - 1

# Fields that only matter for some methods: greyed out otherwise so the form explains itself.
_RELEVANT_WHEN = {
    "method.lora_r": lambda cfg: cfg.method.method in ("lora", "qlora"),
    "method.lora_alpha": lambda cfg: cfg.method.method in ("lora", "qlora"),
    "method.lora_dropout": lambda cfg: cfg.method.method in ("lora", "qlora"),
    "method.target_modules": lambda cfg: cfg.method.method in ("lora", "qlora"),
    "method.prefix_virtual_tokens": lambda cfg: cfg.method.method == "prefix",
    "training.num_epochs": lambda cfg: cfg.training.max_steps <= 0,
    "training.warmup_ratio": lambda cfg: cfg.training.warmup_steps <= 0,
    "generation.temperature": lambda cfg: cfg.generation.do_sample,
    "generation.top_p": lambda cfg: cfg.generation.do_sample,
    "generation.top_k": lambda cfg: cfg.generation.do_sample,
}

STYLE = """
QWidget[invalid="true"] { border: 1px solid #d9534f; border-radius: 3px; background: #fff5f5; }
QLabel#fieldError { color: #c9302c; font-size: 11px; }
QToolButton#helpButton { border: 1px solid #b8c2cc; border-radius: 8px; color: #55606b;
                         font-weight: bold; min-width: 14px; max-width: 14px; min-height: 14px; max-height: 14px; }
QToolButton#helpButton:hover { background: #e8eef5; }
QToolButton#advancedToggle { border: none; font-weight: bold; color: #3b4a5a; }
QLabel#helpPanel { color: #3b4a5a; background: #f3f6f9; border: 1px solid #dde3e9; border-radius: 4px;
                   padding: 6px; }
"""


def _field_kind(f: dataclasses.Field) -> type:
    kind = f.type if isinstance(f.type, type) else {"str": str, "int": int, "float": float, "bool": bool,
                                                     "dict": dict, "list": list}.get(str(f.type), str)
    return kind


def format_float(value: float) -> str:
    """Short text for a float that round-trips: 0.0002 -> '2e-4', 0.05 -> '0.05'."""
    if value == 0:
        return "0"
    if not math.isfinite(value):
        return str(value)
    text = f"{value:.6g}"
    if abs(value) < 1e-3 or abs(value) >= 1e6:
        # Learning rates read better as 2e-4 than 0.0002.
        text = f"{value:.5e}".split("e")[0].rstrip("0").rstrip(".") + "e" + f"{value:.5e}".split("e")[1]
    if "e" in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent)}"
    return text


class _FieldEditor:
    """One generated row: the editor widget, its error label, and how to read/write it."""

    def __init__(self, dotted: str, f: dataclasses.Field, meta: dict, form: ConfigForm):
        self.dotted = dotted
        self.field = f
        self.meta = meta
        self.kind = _field_kind(f)
        self.form = form
        self.label_text = meta.get("label") or f.name.replace("_", " ").capitalize()
        self.help = meta.get("help") or ""
        self.widget = self._make_widget()
        self.widget.setObjectName(f"field:{dotted}")
        self.widget.setToolTip(self._tooltip())
        self.error = QLabel()
        self.error.setObjectName("fieldError")
        self.error.setWordWrap(True)
        self.error.setVisible(False)
        self.help_button = QToolButton()
        self.help_button.setObjectName("helpButton")
        self.help_button.setText("?")
        self.help_button.setToolTip(self._tooltip())
        self.help_button.setCursor(Qt.CursorShape.WhatsThisCursor)
        self.help_button.clicked.connect(self.show_help)
        self.label = QLabel(self.label_text)
        self.label.setToolTip(self._tooltip())
        self.label.setBuddy(self.widget)

        editor_row = QHBoxLayout()
        editor_row.setContentsMargins(0, 0, 0, 0)
        editor_row.setSpacing(6)
        editor_row.addWidget(self.widget, 1)
        editor_row.addWidget(self.help_button, 0, Qt.AlignmentFlag.AlignTop)
        self.container = QWidget()
        column = QVBoxLayout(self.container)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(2)
        column.addLayout(editor_row)
        column.addWidget(self.error)

    def _tooltip(self) -> str:
        limits = []
        if self.meta.get("choices"):
            limits.append("Choices: " + ", ".join(self.meta["choices"]))
        low, high = self.meta.get("min"), self.meta.get("max")
        if low is not None and high is not None:
            limits.append(f"Range: {format_float(low)} to {format_float(high)}")
        default = self.field.default if self.field.default is not dataclasses.MISSING else None
        if default is not None and not isinstance(default, (dict, list)):
            limits.append(f"Default: {format_float(default) if isinstance(default, float) else default}")
        extra = f"\n\n{' · '.join(limits)}" if limits else ""
        # Plain text (no rich text): backticks from the help strings stay as they are.
        return f"{self.label_text} ({self.dotted})\n\n{self.help}{extra}"

    def show_help(self) -> None:
        self.form.show_help(self)
        QToolTip.showText(self.help_button.mapToGlobal(self.help_button.rect().bottomLeft()),
                          self._tooltip(), self.help_button)

    # -- widgets by type ----------------------------------------------------------------------------
    def _make_widget(self) -> QWidget:
        meta, kind = self.meta, self.kind
        if meta.get("choices"):
            widget = QComboBox()
            widget.addItems(list(meta["choices"]))
            widget.currentTextChanged.connect(self._edited)
            return widget
        if kind is bool:
            widget = QCheckBox()
            widget.toggled.connect(self._edited)
            return widget
        if kind is int:
            widget = QSpinBox()
            # A wide range on purpose: an out-of-range value is shown with the validator's message
            # ("must be between 1 and 1024") instead of being silently clamped.
            widget.setRange(-INT_LIMIT, INT_LIMIT)
            widget.setAccelerated(True)
            widget.valueChanged.connect(self._edited)
            return widget
        if kind is float:
            low = meta.get("min")
            if self.field.name == "learning_rate" or (low is not None and 0 < low < 1e-3):
                # Learning rates span orders of magnitude: a text field that reads "2e-4".
                widget = QLineEdit()
                widget.setPlaceholderText("e.g. 2e-4")
                widget.textEdited.connect(self._edited)
                return widget
            widget = QDoubleSpinBox()
            widget.setDecimals(4)
            widget.setRange(-1e9, 1e9)
            high = meta.get("max")
            widget.setSingleStep(0.01 if high is not None and high <= 1 else 0.05 if high is not None and high <= 10
                                 else 0.5)
            widget.valueChanged.connect(self._edited)
            return widget
        if meta.get("multiline"):
            widget = QPlainTextEdit()
            widget.setFixedHeight(70)
            widget.textChanged.connect(self._edited)
            return widget
        widget = QLineEdit()
        widget.textEdited.connect(self._edited)
        return widget

    def set_value(self, value: Any) -> None:
        """Show ``value`` without emitting an edit."""
        widget = self.widget
        with QSignalBlocker(widget):
            if isinstance(widget, QComboBox):
                index = widget.findText(str(value))
                if index < 0:  # a value outside the choices: show it so the error message makes sense
                    widget.addItem(str(value))
                    index = widget.count() - 1
                widget.setCurrentIndex(index)
            elif isinstance(widget, QCheckBox):
                widget.setChecked(bool(value))
            elif isinstance(widget, QSpinBox):
                widget.setValue(int(value))
            elif isinstance(widget, QDoubleSpinBox):
                widget.setValue(float(value))
            elif isinstance(widget, QPlainTextEdit):
                if widget.toPlainText() != str(value):
                    widget.setPlainText(str(value))
            elif isinstance(widget, QLineEdit):
                text = self._to_text(value)
                if widget.text() != text and not self._same_number(widget.text(), value):
                    widget.setText(text)

    def _to_text(self, value: Any) -> str:
        if isinstance(value, float):
            return format_float(value)
        if isinstance(value, list):
            return ", ".join(str(v) for v in value)
        if isinstance(value, dict):
            return yaml.safe_dump(value, default_flow_style=True).strip() if value else ""
        return str(value)

    def _same_number(self, text: str, value: Any) -> bool:
        # Keep what the user typed ("0.0002") when it means the value shown ("2e-4").
        if not isinstance(value, (int, float)):
            return False
        try:
            return float(text) == float(value)
        except ValueError:
            return False

    def read_value(self) -> Any:
        """The widget's value converted to the field's type; raises ConfigError when it cannot be."""
        widget = self.widget
        if isinstance(widget, QComboBox):
            raw: Any = widget.currentText()
        elif isinstance(widget, QCheckBox):
            raw = widget.isChecked()
        elif isinstance(widget, (QSpinBox, QDoubleSpinBox)):
            raw = widget.value()
        elif isinstance(widget, QPlainTextEdit):
            raw = widget.toPlainText()
        else:
            raw = widget.text()
            if self.kind is list:
                raw = [part.strip() for part in raw.split(",") if part.strip()]
            elif self.kind in (int, float) and not raw.strip():
                raise ConfigError(self.dotted, f"{self.label_text} is empty: enter a number")
        return coerce_value(self.dotted, self.field, raw)

    def _edited(self, *_args) -> None:
        self.form._on_field_edited(self)

    def set_problem(self, message: str | None) -> None:
        invalid = bool(message)
        if self.widget.property("invalid") != invalid:
            self.widget.setProperty("invalid", invalid)
            # Re-polish so the [invalid="true"] style rule is re-evaluated.
            self.widget.style().unpolish(self.widget)
            self.widget.style().polish(self.widget)
        self.error.setText(message or "")
        self.error.setVisible(invalid)

    def set_relevant(self, relevant: bool) -> None:
        for part in (self.widget, self.label):
            part.setEnabled(relevant)


class CollapsibleSection(QWidget):
    """A header button with an arrow that folds its content away (used for advanced settings)."""

    def __init__(self, title: str, content: QWidget, expanded: bool = False, parent: QWidget | None = None):
        super().__init__(parent)
        self.toggle = QToolButton()
        self.toggle.setObjectName("advancedToggle")
        self.toggle.setText(title)
        self.toggle.setCheckable(True)
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toggle.toggled.connect(self.set_expanded)
        self.content = content
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 4, 0, 0)
        layout.setSpacing(4)
        layout.addWidget(self.toggle)
        layout.addWidget(content)
        self.set_expanded(expanded)

    def set_expanded(self, expanded: bool) -> None:
        with QSignalBlocker(self.toggle):
            self.toggle.setChecked(expanded)
        self.toggle.setArrowType(Qt.ArrowType.DownArrow if expanded else Qt.ArrowType.RightArrow)
        self.content.setVisible(expanded)

    @property
    def expanded(self) -> bool:
        return self.toggle.isChecked()


class ConfigForm(QWidget):
    """Editable form for some sections of a RunConfig, generated from the field metadata.

    Signals:
      valueEdited(str, object): the user changed ``section.field`` to a value of the right type.
      parseErrorsChanged(): a field's text could not be read (e.g. "abc" as a learning rate), or now can.
    """

    valueEdited = Signal(str, object)
    parseErrorsChanged = Signal()

    def __init__(self, sections: tuple[str, ...] = ("method", "training"), parent: QWidget | None = None):
        super().__init__(parent)
        self.sections = tuple(sections)
        self.editors: dict[str, _FieldEditor] = {}
        self.advanced_sections: dict[str, CollapsibleSection] = {}
        self._parse_errors: dict[str, str] = {}
        self._problems: dict[str, str] = {}
        self._config: RunConfig | None = None
        self.setStyleSheet(STYLE)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(10)
        for section in self.sections:
            layout.addWidget(self._build_section(section))
        self.help_panel = QLabel("Hover over a setting, or click its ?, to read what it does.")
        self.help_panel.setObjectName("helpPanel")
        self.help_panel.setWordWrap(True)
        self.help_panel.setTextFormat(Qt.TextFormat.PlainText)
        self.help_panel.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        layout.addWidget(self.help_panel)
        layout.addStretch(1)

    def _build_section(self, section: str) -> QGroupBox:
        box = QGroupBox(SECTION_TITLES.get(section, section.capitalize()))
        column = QVBoxLayout(box)
        column.setSpacing(4)
        basic = QFormLayout()
        advanced_widget = QWidget()
        advanced = QFormLayout(advanced_widget)
        advanced.setContentsMargins(12, 0, 0, 0)
        for form_layout in (basic, advanced):
            form_layout.setLabelAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            form_layout.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
            form_layout.setVerticalSpacing(6)
        n_advanced = 0
        for f, meta in iter_fields(section):
            editor = _FieldEditor(f"{section}.{f.name}", f, meta, self)
            self.editors[editor.dotted] = editor
            target = advanced if meta.get("advanced") else basic
            n_advanced += bool(meta.get("advanced"))
            target.addRow(editor.label, editor.container)
        column.addLayout(basic)
        if n_advanced:
            folded = CollapsibleSection(f"Advanced ({n_advanced} settings)", advanced_widget)
            self.advanced_sections[section] = folded
            column.addWidget(folded)
        return box

    # -- rendering ---------------------------------------------------------------------------------
    def set_config(self, cfg: RunConfig) -> None:
        """Show every field of ``cfg`` (no valueEdited is emitted). Fields with a pending parse error
        keep the user's text so a half-typed value is not overwritten."""
        self._config = cfg
        for dotted, editor in self.editors.items():
            if dotted in self._parse_errors:
                continue
            section, name = dotted.split(".", 1)
            editor.set_value(getattr(getattr(cfg, section), name))
        self._update_relevance()

    def _update_relevance(self) -> None:
        if self._config is None:
            return
        for dotted, rule in _RELEVANT_WHEN.items():
            if dotted in self.editors:
                self.editors[dotted].set_relevant(bool(rule(self._config)))

    def set_problems(self, problems: list[FieldProblem]) -> None:
        """Mark the fields named in ``problems`` (others are cleared); parse errors stay marked."""
        self._problems = {}
        for problem in problems:
            self._problems.setdefault(problem.field, problem.message)
        for dotted, editor in self.editors.items():
            message = self._parse_errors.get(dotted) or self._problems.get(dotted)
            editor.set_problem(message)
            if message and dotted in self._advanced_fields():
                # Never hide a problem inside a folded section.
                self.advanced_sections[dotted.split(".", 1)[0]].set_expanded(True)

    def _advanced_fields(self) -> set[str]:
        return {d for d, e in self.editors.items() if e.meta.get("advanced")}

    def parse_errors(self) -> list[FieldProblem]:
        """Fields whose text cannot be read as a value (they are not in the config yet)."""
        return [FieldProblem(field, message) for field, message in self._parse_errors.items()]

    def problem_for(self, dotted: str) -> str:
        """The message currently shown under ``dotted`` ("" when none)."""
        editor = self.editors[dotted]
        return editor.error.text()

    def show_help(self, editor: _FieldEditor) -> None:
        self.help_panel.setText(f"{editor.label_text}: {editor.help}")

    # -- edits -------------------------------------------------------------------------------------
    def _on_field_edited(self, editor: _FieldEditor) -> None:
        self.show_help(editor)
        had_error = editor.dotted in self._parse_errors
        try:
            value = editor.read_value()
        except ConfigError as exc:
            self._parse_errors[editor.dotted] = exc.message
            editor.set_problem(exc.message)
            self.parseErrorsChanged.emit()
            return
        if had_error:
            del self._parse_errors[editor.dotted]
            editor.set_problem(self._problems.get(editor.dotted))
            self.parseErrorsChanged.emit()
        self.valueEdited.emit(editor.dotted, value)

    def set_field_text(self, dotted: str, value: Any) -> None:
        """Type ``value`` into a field as a user would (used by tests and presets of the GUI)."""
        editor = self.editors[dotted]
        widget = editor.widget
        if isinstance(widget, QComboBox):
            widget.setCurrentText(str(value))
        elif isinstance(widget, QCheckBox):
            widget.setChecked(bool(value))
        elif isinstance(widget, QSpinBox):
            widget.setValue(int(value))
        elif isinstance(widget, QDoubleSpinBox):
            widget.setValue(float(value))
        elif isinstance(widget, QPlainTextEdit):
            widget.setPlainText(str(value))
        else:
            widget.setText(str(value))
            widget.textEdited.emit(widget.text())  # setText does not emit textEdited
