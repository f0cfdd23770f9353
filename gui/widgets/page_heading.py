"""The large-title + muted-hint heading row used at the top of the Chat and Evaluate pages."""

from __future__ import annotations

from PySide6.QtWidgets import QHBoxLayout, QLabel


def page_heading(title: str, hint: str) -> QHBoxLayout:
    """A row with ``title`` in a bold font 1.5x the default size, then ``hint`` in the palette's muted colour."""
    row = QHBoxLayout()
    label = QLabel(title)
    font = label.font()
    font.setPointSizeF(font.pointSizeF() * 1.5)
    font.setBold(True)
    label.setFont(font)
    row.addWidget(label)
    hint_label = QLabel(hint)
    hint_label.setStyleSheet("color: palette(mid);")
    row.addWidget(hint_label, 1)
    return row
