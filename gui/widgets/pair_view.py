"""One preference pair as DPO trains on it: the prompt (context), and the chosen and rejected answers side by
side, each with its trained tokens highlighted (gui.widgets.token_view.TokenView)."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QGridLayout, QLabel, QVBoxLayout, QWidget

from gui.widgets.token_view import TokenView


def _caption(text: str, name: str, tooltip: str) -> QLabel:
    label = QLabel(text)
    label.setObjectName(name)
    label.setTextFormat(Qt.TextFormat.PlainText)
    label.setToolTip(tooltip)
    label.setStyleSheet("font-weight: bold;")
    return label


def _muted() -> QLabel:
    label = QLabel()
    label.setObjectName("Muted")  # the theme's quiet caption style
    label.setTextFormat(Qt.TextFormat.PlainText)
    label.setWordWrap(True)
    return label


class PairView(QWidget):
    """Prompt on top; chosen (left) and rejected (right) answers below, with their token counts."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.prompt_caption = _caption("Prompt (context: read, not trained)", "pairPromptCaption",
                                       "The prompt in the chosen template. Both answers continue it; the model is "
                                       "not trained to write it.")
        self.prompt_view = TokenView()
        self.prompt_view.setObjectName("pairPrompt")
        self.prompt_view.setMaximumHeight(96)
        self.chosen_caption = _caption("Chosen (preferred) answer", "chosenCaption",
                                       "DPO makes this answer more likely than the rejected one.")
        self.rejected_caption = _caption("Rejected answer", "rejectedCaption",
                                         "DPO makes this answer less likely than the chosen one.")
        self.chosen_view = TokenView()
        self.chosen_view.setObjectName("chosenAnswer")
        self.rejected_view = TokenView()
        self.rejected_view.setObjectName("rejectedAnswer")
        self.chosen_counts = _muted()
        self.rejected_counts = _muted()
        self.chosen_caption.setStyleSheet("font-weight: bold; color: #1b7f3b;")
        self.rejected_caption.setStyleSheet("font-weight: bold; color: #b42318;")

        answers = QGridLayout()
        answers.setContentsMargins(0, 0, 0, 0)
        answers.setHorizontalSpacing(10)
        answers.addWidget(self.chosen_caption, 0, 0)
        answers.addWidget(self.rejected_caption, 0, 1)
        answers.addWidget(self.chosen_view, 1, 0)
        answers.addWidget(self.rejected_view, 1, 1)
        answers.addWidget(self.chosen_counts, 2, 0)
        answers.addWidget(self.rejected_counts, 2, 1)
        answers.setColumnStretch(0, 1)
        answers.setColumnStretch(1, 1)
        answers.setRowStretch(1, 1)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addWidget(self.prompt_caption)
        layout.addWidget(self.prompt_view)
        layout.addLayout(answers, 1)

    def show_pair(self, pair) -> None:
        """Show a ``core.preference.PairTokens``."""
        self.prompt_view.show_tokens(pair.prompt)
        for view, counts, tokens, cut in ((self.chosen_view, self.chosen_counts, pair.chosen, pair.chosen_cut),
                                          (self.rejected_view, self.rejected_counts, pair.rejected, pair.rejected_cut)):
            view.show_tokens(tokens)
            text = f"{view.trained_tokens} trained tokens"
            if cut:
                text += f" · {cut} more cut off by Max length"
            counts.setText(text)

    def show_message(self, text: str) -> None:
        self.prompt_view.show_message(text)
        for view, counts in ((self.chosen_view, self.chosen_counts), (self.rejected_view, self.rejected_counts)):
            view.show_message("")
            counts.setText("")
