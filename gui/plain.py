"""Dataset text shown as plain text everywhere: tooltips and message boxes.

Qt guesses rich text (``Qt::mightBeRichText``) for tooltips and message boxes, so a dataset cell such as
``<b>bold</b>`` or ``<img src=...>`` would be rendered as HTML. These helpers make Qt show the characters.
"""

from __future__ import annotations

import html

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox, QWidget

TOOLTIP_LIMIT = 2000  # characters: a 10 MB cell must not become a 10 MB tooltip


def plain_tooltip(text: str, limit: int = TOOLTIP_LIMIT) -> str:
    """A tooltip string that Qt shows verbatim (escaped, whitespace kept), cut at ``limit`` characters."""
    text = str(text)
    if len(text) > limit:
        text = text[:limit] + f"… ({len(text):,} characters)"
    return "<p style='white-space:pre-wrap'>" + html.escape(text) + "</p>"


def message(parent: QWidget | None, title: str, text: str, *, icon=QMessageBox.Icon.Warning,
            buttons=QMessageBox.StandardButton.Ok, informative: str = "") -> int:
    """A modal message box whose text is plain (never rich text); returns the button pressed."""
    box = QMessageBox(icon, title, text, buttons, parent)
    box.setTextFormat(Qt.TextFormat.PlainText)
    if informative:  # the informative label has no text-format setter: escape it instead
        box.setInformativeText(html.escape(informative).replace("\n", "<br>"))
    return box.exec()


def warning(parent: QWidget | None, title: str, text: str) -> int:
    return message(parent, title, text, icon=QMessageBox.Icon.Warning)


def information(parent: QWidget | None, title: str, text: str) -> int:
    return message(parent, title, text, icon=QMessageBox.Icon.Information)
