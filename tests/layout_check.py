"""Find text that does not fit its widget: labels, buttons, check boxes, radio buttons, group box titles."""

from __future__ import annotations

from PySide6.QtWidgets import QAbstractButton, QCheckBox, QGroupBox, QLabel, QRadioButton, QWidget


def _visible(widget: QWidget, root: QWidget) -> bool:
    return widget.isVisibleTo(root) and widget.width() > 0 and widget.height() > 0


def clipped_texts(root: QWidget) -> list[str]:
    """Descriptions of every visible text that is cut (wider or taller than its widget shows)."""
    problems = []
    for label in root.findChildren(QLabel):
        if not _visible(label, root) or not label.text() or label.pixmap() is not None and not label.pixmap().isNull():
            continue
        if label.property("elided_user_data"):  # user data, elided on purpose, full text in the tooltip
            continue
        text = label.text()
        if label.textFormat().name == "RichText" or "<" in text and ">" in text and label.textFormat().name != "PlainText":
            continue  # rich text: measured by the document, skip
        metrics = label.fontMetrics()
        rect = label.contentsRect()
        margin = label.margin() * 2 + label.indent() if label.indent() > 0 else label.margin() * 2
        available = rect.width() - margin
        if label.wordWrap():
            needed = label.heightForWidth(label.width())
            if needed > label.height() + 2:
                problems.append(f"{_name(label)}: wrapped text needs {needed}px height, has {label.height()}: {text[:60]!r}")
            continue
        widest = max(metrics.horizontalAdvance(line) for line in text.split("\n"))
        if widest > available + 1:
            problems.append(f"{_name(label)}: text needs {widest}px, has {available}: {text[:60]!r}")
    for button in root.findChildren(QAbstractButton):
        if not _visible(button, root) or not button.text():
            continue
        if isinstance(button, (QCheckBox, QRadioButton)):
            needed = button.sizeHint().width()
        else:  # the text (and icon) must fit inside the button; style padding may shrink on small buttons
            icon = button.iconSize().width() + 4 if not button.icon().isNull() else 0
            needed = button.fontMetrics().horizontalAdvance(button.text().replace("&", "")) + icon + 6
        if button.width() + 1 < needed:
            problems.append(f"{_name(button)}: button needs {needed}px, has {button.width()}: {button.text()[:60]!r}")
    for box in root.findChildren(QGroupBox):
        if not _visible(box, root) or not box.title():
            continue
        needed = box.fontMetrics().horizontalAdvance(box.title()) + 20
        if needed > box.width():
            problems.append(f"{_name(box)}: group title needs {needed}px, has {box.width()}: {box.title()!r}")
    return problems


def _name(widget: QWidget) -> str:
    chain = []
    current = widget
    while current is not None and len(chain) < 4:
        chain.append(current.objectName() or type(current).__name__)
        current = current.parentWidget()
    return "/".join(reversed(chain))
