"""The small "?" next to a number or setting: hover or click to read what it means, in plain words.

The words come from ``core.glossary.explain(key)`` (glossary terms and config field help alike), so the
GUI and the CLI say the same thing. It looks like the "?" of the Train form's settings.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Slot
from PySide6.QtWidgets import QToolButton, QToolTip, QWidget

from core.glossary import explain, label
from gui.plain import plain_tooltip

STYLE = ("QToolButton { border: 1px solid #b8c2cc; border-radius: 8px; color: #55606b; font-weight: bold; "
         "min-width: 14px; max-width: 14px; min-height: 14px; max-height: 14px; padding: 0px; }"
         "QToolButton:hover { background: #e8eef5; }")


def help_text(key: str) -> str:
    """"Label: explanation" for ``key`` (what the button shows)."""
    return f"{label(key)}: {explain(key)}"


class HelpButton(QToolButton):
    """A "?" that explains ``key`` (a ``core.glossary`` key or ``section.field`` setting)."""

    def __init__(self, key: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.key = key
        self.text_shown = help_text(key)  # raises KeyError at build time for a key without words
        self.setObjectName("helpButton")
        self.setText("?")
        self.setStyleSheet(STYLE)
        self.setCursor(Qt.CursorShape.WhatsThisCursor)
        self.setFocusPolicy(Qt.FocusPolicy.TabFocus)
        self.setAccessibleName(f"What is {label(key)}?")
        self.setToolTip(plain_tooltip(self.text_shown))
        self.clicked.connect(self.show_help)

    def set_key(self, key: str) -> None:
        """Explain another term (e.g. the score chosen in a combo box)."""
        self.key = key
        self.text_shown = help_text(key)
        self.setAccessibleName(f"What is {label(key)}?")
        self.setToolTip(plain_tooltip(self.text_shown))

    @Slot()
    def show_help(self) -> None:
        """Show the explanation next to the button (a click keeps it up until the mouse leaves)."""
        QToolTip.showText(self.mapToGlobal(self.rect().bottomLeft()), plain_tooltip(self.text_shown), self,
                          self.rect())
