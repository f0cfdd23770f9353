"""Probe prompts: the editor that pins up to 5 prompts, and one strip per prompt showing its answers.

``ProbeEditor`` holds the prompts (add / remove), the "every N steps" interval and an on/off switch; the
page passes ``prompts()`` / ``every()`` to ``core.training.train``. ``ProbeStrips`` shows, per prompt,
one row per probed step: ``step N -> answer``, the words that changed since the previous answer
highlighted (``core.probes.word_diff``) with ``QTextCharFormat`` backgrounds. Model output is inserted
as PLAIN text through ``QTextCursor.insertText`` — never as HTML.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QFont, QTextCharFormat, QTextCursor
from PySide6.QtWidgets import (
    QCheckBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from core.probes import MAX_PROBES, word_diff

CHANGED_BACKGROUND = QColor("#ffe08a")
STEP_COLOR = QColor("#5b6776")


class ProbeEditor(QGroupBox):
    """Pinned probe prompts (at most ``MAX_PROBES``), their interval and an on/off switch.

    ``changed()`` is emitted whenever the prompts, the interval or the switch change."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Probe prompts", parent)
        self.setToolTip("Prompts the model answers (greedily, a few tokens) while it trains, so you can watch "
                        "its answers change. Each round pauses training for a moment.")
        self.enabled_box = QCheckBox("Answer these prompts while training")
        self.enabled_box.setChecked(True)
        self.list = QListWidget()
        self.list.setMaximumHeight(92)
        self.input = QLineEdit()
        self.input.setPlaceholderText("Type a prompt, e.g. What is the capital of France?")
        self.input.returnPressed.connect(self._add_from_input)
        self.add_button = QPushButton("Add")
        self.add_button.clicked.connect(self._add_from_input)
        self.remove_button = QPushButton("Remove")
        self.remove_button.clicked.connect(self.remove_selected)
        self.every_spin = QSpinBox()
        self.every_spin.setRange(1, 1_000_000)
        self.every_spin.setSuffix(" steps")
        self.every_spin.setToolTip("Probe every N optimizer steps (and at step 0). Defaults to the save interval.")
        self.every_spin.valueChanged.connect(self._on_every_changed)
        self._every_follows_save = True
        self.cost_label = QLabel("Cost: not measured yet")
        self.cost_label.setStyleSheet("color: #5b6776;")
        self.cost_label.setToolTip("Seconds each round of probe answers takes (measured during the run).")
        self.enabled_box.toggled.connect(self._on_toggled)

        add_row = QHBoxLayout()
        add_row.addWidget(self.input, 1)
        add_row.addWidget(self.add_button)
        add_row.addWidget(self.remove_button)
        every_row = QHBoxLayout()
        every_row.addWidget(QLabel("Every"))
        every_row.addWidget(self.every_spin)
        every_row.addStretch(1)
        every_row.addWidget(self.cost_label)
        layout = QVBoxLayout(self)
        layout.addWidget(self.enabled_box)
        layout.addWidget(self.list)
        layout.addLayout(add_row)
        layout.addLayout(every_row)
        self._update_enabled()

    # -- public --------------------------------------------------------------------------------
    def prompts(self) -> list[str]:
        """The pinned prompts (empty when probing is switched off)."""
        if not self.enabled_box.isChecked():
            return []
        return [self.list.item(i).text() for i in range(self.list.count())]

    def every(self) -> int:
        return self.every_spin.value()

    def add_prompt(self, text: str) -> bool:
        """Pin ``text``; False when it is empty, already pinned, or ``MAX_PROBES`` are pinned."""
        text = text.strip()
        existing = [self.list.item(i).text() for i in range(self.list.count())]
        if not text or text in existing or len(existing) >= MAX_PROBES:
            return False
        self.list.addItem(text)
        self._update_enabled()
        self.changed.emit()
        return True

    def remove_selected(self) -> None:
        for item in self.list.selectedItems():
            self.list.takeItem(self.list.row(item))
        self._update_enabled()
        self.changed.emit()

    def set_save_interval(self, steps: int) -> None:
        """Follow the save interval until the user picks another value."""
        if self._every_follows_save and steps > 0:
            self.every_spin.blockSignals(True)
            self.every_spin.setValue(steps)
            self.every_spin.blockSignals(False)

    def set_cost(self, seconds_per_round: float | None) -> None:
        self.cost_label.setText("Cost: not measured yet" if seconds_per_round is None
                                else f"Cost: {seconds_per_round:.2f} s per round")

    # -- internals -----------------------------------------------------------------------------
    def _add_from_input(self) -> None:
        if self.add_prompt(self.input.text()):
            self.input.clear()

    def _on_every_changed(self, _value: int) -> None:
        self._every_follows_save = False
        self.changed.emit()

    def _on_toggled(self, _on: bool) -> None:
        self._update_enabled()
        self.changed.emit()

    def _update_enabled(self) -> None:
        on = self.enabled_box.isChecked()
        full = self.list.count() >= MAX_PROBES
        for widget in (self.list, self.remove_button, self.every_spin):
            widget.setEnabled(on)
        self.input.setEnabled(on and not full)
        self.add_button.setEnabled(on and not full)
        self.input.setPlaceholderText(f"At most {MAX_PROBES} prompts" if full
                                      else "Type a prompt, e.g. What is the capital of France?")


class ProbeStrip(QWidget):
    """The answers to one prompt over the steps, changed words highlighted."""

    def __init__(self, prompt: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.prompt = prompt
        self.answers: dict[int, str] = {}
        self._last_answer: str | None = None
        title = QLabel(f"“{prompt}”")
        title.setTextFormat(Qt.TextFormat.PlainText)
        title.setStyleSheet("font-weight: bold;")
        title.setWordWrap(True)
        self.view = QPlainTextEdit()
        self.view.setReadOnly(True)
        self.view.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        self.view.setMinimumHeight(70)
        self.view.setMaximumBlockCount(2000)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 4)
        layout.setSpacing(2)
        layout.addWidget(title)
        layout.addWidget(self.view)

    def add_answer(self, step: int, answer: str) -> None:
        """Append ``step N -> answer``; words that differ from the previous answer get a background."""
        self.answers[int(step)] = answer
        plain = QTextCharFormat()
        step_format = QTextCharFormat()
        step_format.setForeground(STEP_COLOR)
        step_format.setFontWeight(QFont.Weight.Bold)
        changed = QTextCharFormat()
        changed.setBackground(CHANGED_BACKGROUND)
        cursor = QTextCursor(self.view.document())
        cursor.movePosition(QTextCursor.MoveOperation.End)
        if not self.view.document().isEmpty():
            cursor.insertBlock()
        cursor.insertText(f"step {step:>5} → ", step_format)
        # One line per step: newlines of the answer are shown as a visible mark.
        flat = answer.replace("\r", "").replace("\n", " ⏎ ")
        previous = None if self._last_answer is None else self._last_answer.replace("\n", " ⏎ ")
        for piece, is_changed in word_diff(previous, flat):
            cursor.insertText(piece, changed if is_changed else plain)
        if not flat:
            cursor.insertText("(empty answer)", step_format)
        self._last_answer = answer
        self.view.verticalScrollBar().setValue(self.view.verticalScrollBar().maximum())


class ProbeStrips(QWidget):
    """One ``ProbeStrip`` per prompt index; results arrive as ``ProbeResult`` objects or probe dicts."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.strips: dict[int, ProbeStrip] = {}
        self.round_seconds: dict[int, float] = {}  # step -> seconds spent probing at that step
        self.placeholder = QLabel("Pin prompts under “Probe prompts” (left) to watch the model's answers "
                                  "change while it trains.")
        self.placeholder.setWordWrap(True)
        self.placeholder.setStyleSheet("color: #8a939c;")
        inner = QWidget()
        self._layout = QVBoxLayout(inner)
        self._layout.setContentsMargins(0, 0, 4, 0)
        self._layout.addWidget(self.placeholder)
        self._layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(inner)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(scroll)

    def add_result(self, result) -> None:
        """Show one probe answer (a ``core.metrics.ProbeResult`` or a metrics.jsonl probe dict)."""
        get = result.get if isinstance(result, dict) else (lambda name, default=None: getattr(result, name, default))
        index = int(get("prompt_index", 0) or 0)
        step = int(get("step", 0) or 0)
        strip = self.strips.get(index)
        if strip is None:
            strip = ProbeStrip(str(get("prompt", "") or f"prompt {index + 1}"))
            self.strips[index] = strip
            self._layout.insertWidget(self._layout.count() - 1, strip)
            self.placeholder.setVisible(False)
        strip.add_answer(step, str(get("answer", "") or ""))
        seconds = get("seconds")
        if isinstance(seconds, (int, float)):
            self.round_seconds[step] = self.round_seconds.get(step, 0.0) + float(seconds)

    def seconds_per_round(self) -> float | None:
        """Mean seconds of one round (all prompts at one step), from the measured answers."""
        if not self.round_seconds:
            return None
        return sum(self.round_seconds.values()) / len(self.round_seconds)

    def clear(self) -> None:
        for strip in self.strips.values():
            strip.setParent(None)
            strip.deleteLater()
        self.strips = {}
        self.round_seconds = {}
        self.placeholder.setVisible(True)
