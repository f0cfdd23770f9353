"""Page layouts with their heading, shared by pages of the same style."""

from __future__ import annotations

from PySide6.QtWidgets import QHBoxLayout, QLabel, QVBoxLayout, QWidget


def compact_page_layout(page: QWidget, title: str, hint: str) -> QVBoxLayout:
    """``page``'s vertical layout (12 px margins) starting with a row: ``title`` in a bold font 1.5x the
    default size, then ``hint`` in the palette's muted colour (Chat and Evaluate pages)."""
    outer = QVBoxLayout(page)
    outer.setContentsMargins(12, 12, 12, 12)
    outer.setSpacing(8)
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
    outer.addLayout(row)
    return outer


def themed_page_layout(page: QWidget, title: str, subtitle: str) -> QVBoxLayout:
    """``page``'s vertical layout starting with ``title`` and a word-wrapped ``subtitle`` styled by the theme's
    PageTitle / PageSubtitle rules (Data and Model pages)."""
    root = QVBoxLayout(page)
    root.setContentsMargins(20, 16, 20, 12)
    root.setSpacing(10)
    title_label = QLabel(title)
    title_label.setObjectName("PageTitle")
    subtitle_label = QLabel(subtitle)
    subtitle_label.setObjectName("PageSubtitle")
    subtitle_label.setWordWrap(True)
    root.addWidget(title_label)
    root.addWidget(subtitle_label)
    return root
