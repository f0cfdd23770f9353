"""A read-only text view showing which tokens are trained and which are masked prompt context."""

from __future__ import annotations

from PySide6.QtGui import QColor, QTextCharFormat, QTextCursor
from PySide6.QtWidgets import QHBoxLayout, QLabel, QTextEdit, QWidget

from gui import theme


class TokenView(QTextEdit):
    """Renders [(token text, trained)] with background colours; dataset text is inserted as plain text."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setReadOnly(True)
        self.setAcceptRichText(False)
        self.setFont(theme.monospace_font())
        self.setLineWrapMode(QTextEdit.LineWrapMode.WidgetWidth)
        self.trained_tokens = 0
        self.masked_tokens = 0

    def _formats(self) -> dict[tuple[bool, int], QTextCharFormat]:
        colors = theme.colors()
        formats = {}
        for trained in (True, False):
            base = QColor(colors["trained_bg" if trained else "masked_bg"])
            for parity in (0, 1):
                fmt = QTextCharFormat()
                # Neighbouring tokens alternate between two shades so token boundaries are visible.
                fmt.setBackground(base.darker(112) if parity else base)
                fmt.setForeground(QColor(colors["trained_fg" if trained else "masked_fg"]))
                formats[(trained, parity)] = fmt
        return formats

    def show_tokens(self, tokens: list[tuple[str, bool]]) -> None:
        """Show tokens (text, trained); counts land in ``trained_tokens`` / ``masked_tokens``."""
        self.clear()
        formats = self._formats()
        cursor = QTextCursor(self.document())
        self.trained_tokens = sum(1 for _, trained in tokens if trained)
        self.masked_tokens = len(tokens) - self.trained_tokens
        for index, (text, trained) in enumerate(tokens):
            cursor.insertText(text, formats[(bool(trained), index % 2)])  # insertText: plain text, never HTML
        self.moveCursor(QTextCursor.MoveOperation.Start)

    def show_segments(self, segments) -> None:
        """Fallback without a tokenizer: whole segments (core.data.Segment) coloured by trained/masked."""
        self.show_tokens([(segment.text, segment.trained) for segment in segments])

    def show_message(self, text: str) -> None:
        self.clear()
        self.setPlainText(text)


def _swatch(color: str) -> QLabel:
    label = QLabel()
    label.setFixedSize(14, 14)
    label.setStyleSheet(f"background: {color}; border-radius: 3px; border: 1px solid rgba(0,0,0,40);")
    return label


class TokenLegend(QWidget):
    """Colour key for TokenView."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        colors = theme.colors()
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(6)
        layout.addWidget(_swatch(colors["trained_bg"]))
        trained = QLabel("trained: learned")
        trained.setToolTip("Highlighted tokens are in the loss: the model learns to write these")
        layout.addWidget(trained)
        layout.addSpacing(14)
        layout.addWidget(_swatch(colors["masked_bg"]))
        masked = QLabel("masked: context only")
        masked.setToolTip("Grey tokens (the prompt) are read by the model as context but are not in the loss")
        layout.addWidget(masked)
        layout.addStretch(1)
        for label in (trained, masked):
            label.setObjectName("Muted")
            label.setWordWrap(True)  # a narrow window wraps the key instead of cutting it
