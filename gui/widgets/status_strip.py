"""Small status widgets shared by pages that run background tasks: a busy indicator (message + progress bar)
and an error banner."""

from __future__ import annotations

from PySide6.QtCore import Qt, Slot
from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QWidget


class BusyIndicator(QWidget):
    """A muted message and a progress bar, shown while a page's worker runs.

    ``set_progress`` takes the ``(fraction, message)`` payload of ``gui.tasks.Task.progress``; a ``None``
    fraction shows an indeterminate ("busy") bar.
    """

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.label = QLabel()
        self.label.setObjectName("Muted")
        self.label.setTextFormat(Qt.TextFormat.PlainText)  # worker messages may quote file names / content
        self.bar = QProgressBar()
        self.bar.setMaximumWidth(220)
        self.bar.setVisible(False)
        layout.addWidget(self.label)
        layout.addWidget(self.bar)

    def busy(self, message: str) -> None:
        """Show an indeterminate bar with ``message``."""
        self.bar.setVisible(True)
        self.bar.setRange(0, 0)
        self.label.setText(message)

    @Slot(object)
    def set_progress(self, payload) -> None:
        """Show a task's ``(fraction or None, message)`` progress."""
        fraction, message = payload
        if fraction is None:
            self.bar.setRange(0, 0)
        else:
            self.bar.setRange(0, 1000)
            self.bar.setValue(int(fraction * 1000))
        self.label.setText(message[:80])

    def idle(self) -> None:
        """Hide the bar and clear the message (no task running)."""
        self.bar.setVisible(False)
        self.label.setText("")


class ErrorBanner(QLabel):
    """A hidden-until-needed, selectable, plain-text error message; ``message`` is "" while hidden."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.message = ""
        self.setObjectName("ErrorBanner")
        self.setTextFormat(Qt.TextFormat.PlainText)  # messages may quote dataset content or paths
        self.setWordWrap(True)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.setVisible(False)

    def show_message(self, text: str) -> None:
        """Show ``text`` in the banner."""
        self.message = text
        self.setText(text)
        self.setVisible(True)

    def dismiss(self) -> None:
        """Hide the banner (its last text stays in the label, ``message`` becomes "")."""
        self.message = ""
        self.setVisible(False)


class ErrorBannerHost:
    """Mixin for a page with ``self.error_label`` (an ErrorBanner) and ``self.state`` (StudioState): the
    page's ``last_error`` / ``show_error`` / ``hide_error``; ``ERROR_PREFIX`` names the page in the status bar."""

    ERROR_PREFIX = ""
    error_label: ErrorBanner

    @property
    def last_error(self) -> str:
        """The error shown in the banner ("" when none)."""
        return self.error_label.message

    def show_error(self, text: str) -> None:
        """Show ``text`` in the banner and its first line in the window's status bar."""
        self.error_label.show_message(text)
        self.state.show_message(f"{self.ERROR_PREFIX}: " + text.splitlines()[0][:120])

    def hide_error(self) -> None:
        """Hide the banner."""
        self.error_label.dismiss()
