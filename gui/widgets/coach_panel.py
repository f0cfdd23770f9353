"""The coach panel: one card per piece of ``core.coach.Advice`` (title, sentence with evidence, action button).

The panel only shows advice; the page decides what the button does (``applyRequested(advice)``: it
applies ``core.coach.apply_suggestion`` to the settings for the next run). Advice text is shown as plain
text (it may quote a loss value or a field name, never markup).
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

SEVERITY_COLORS = {  # border, background, title colour
    "error": ("#f0a59c", "#fdecea", "#8f1d12"),
    "warning": ("#f2cf7a", "#fff8e6", "#7a5200"),
    "info": ("#a9c4ee", "#eef4fd", "#1d4f99"),
}


class AdviceCard(QFrame):
    """One advice: headline, one plain sentence with the evidence, and the action button."""

    def __init__(self, advice, parent: QWidget | None = None):
        super().__init__(parent)
        self.advice = advice
        border, background, title_color = SEVERITY_COLORS.get(advice.severity, SEVERITY_COLORS["warning"])
        self.setObjectName("adviceCard")
        self.setStyleSheet(f"QFrame#adviceCard {{ border: 1px solid {border}; border-radius: 5px;"
                           f" background: {background}; }}")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 7, 10, 7)
        layout.setSpacing(3)
        self.title = QLabel(f"{advice.title}  ·  step {advice.step}")
        self.title.setTextFormat(Qt.TextFormat.PlainText)
        self.title.setStyleSheet(f"font-weight: bold; color: {title_color}; border: none;")
        self.sentence = QLabel(advice.sentence)
        self.sentence.setTextFormat(Qt.TextFormat.PlainText)
        self.sentence.setWordWrap(True)
        self.sentence.setStyleSheet("border: none; background: transparent;")
        self.sentence.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.title)
        layout.addWidget(self.sentence)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        self.button = QPushButton(advice.action or "Apply")
        self.button.setToolTip("Change the settings for the NEXT run (this run continues unchanged):\n"
                               + "\n".join(f"{field} = {value}" for field, value in advice.suggestion.items()))
        self.button.setEnabled(bool(advice.suggestion))
        self.applied_label = QLabel()
        self.applied_label.setStyleSheet("color: #1e7a3a; border: none;")
        row.addWidget(self.button)
        row.addWidget(self.applied_label, 1)
        layout.addLayout(row)

    def mark_applied(self) -> None:
        self.applied_label.setText("✓ applied to the settings for the next run")


class CoachPanel(QWidget):
    """A scrolling list of advice cards, newest first. ``applyRequested(Advice)`` when a button is pressed."""

    applyRequested = Signal(object)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.cards: list[AdviceCard] = []
        title = QLabel("Coach")
        title.setObjectName("statCaption")
        self.placeholder = QLabel("Advice appears here when the curves show a problem "
                                  "(loss not finite, rising, flat, jumping, overfitting...).")
        self.placeholder.setWordWrap(True)
        self.placeholder.setStyleSheet("color: #8a939c;")
        inner = QWidget()
        self._cards_layout = QVBoxLayout(inner)
        self._cards_layout.setContentsMargins(0, 0, 4, 0)
        self._cards_layout.setSpacing(6)
        self._cards_layout.addWidget(self.placeholder)
        self._cards_layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(inner)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(title)
        layout.addWidget(scroll, 1)

    def add_advice(self, advice) -> AdviceCard | None:
        """Show ``advice`` as a card (once per rule: a repeated rule is ignored and returns None)."""
        if any(card.advice.rule == advice.rule for card in self.cards):
            return None
        card = AdviceCard(advice)
        card.button.clicked.connect(self._on_card_clicked)
        self.cards.append(card)
        self._cards_layout.insertWidget(0, card)  # newest on top
        self.placeholder.setVisible(False)
        return card

    def clear(self) -> None:
        """Remove every card (a new run starts)."""
        for card in self.cards:
            card.setParent(None)
            card.deleteLater()
        self.cards = []
        self.placeholder.setVisible(True)

    def _on_card_clicked(self) -> None:
        for card in self.cards:
            if card.button is self.sender():
                self.applyRequested.emit(card.advice)
                card.mark_applied()
                return
