"""The end of a run in plain words (core.outcome): before → after on held-out data, whether it is a
meaningful change, the best checkpoint, what the coach noticed, and buttons for the next steps."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

VERDICT_COLORS = {
    "clear improvement": ("#1f7a3a", "#e3f4e8"),
    "small improvement": ("#2f6d3c", "#eef7ef"),
    "no real change": ("#6b5a12", "#fbf5dc"),
    "worse": ("#9b2c2c", "#fbe7e7"),
    "": ("#3b4754", "#eef1f4"),
}


class RunSummaryCard(QFrame):
    """Shown when a run ends. ``nextStepRequested(str)``: "chat", "evaluate" or "export"."""

    nextStepRequested = Signal(str)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("runSummaryCard")
        self.outcome = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 8, 12, 8)
        layout.setSpacing(4)
        top = QHBoxLayout()
        self.verdict_label = QLabel()
        self.verdict_label.setObjectName("verdictChip")
        self.headline = QLabel()
        self.headline.setWordWrap(True)
        self.headline.setTextFormat(Qt.TextFormat.PlainText)
        top.addWidget(self.verdict_label, 0, Qt.AlignmentFlag.AlignTop)
        top.addWidget(self.headline, 1)
        layout.addLayout(top)
        self.details = QLabel()
        self.details.setWordWrap(True)
        self.details.setTextFormat(Qt.TextFormat.PlainText)
        self.details.setObjectName("Muted")
        layout.addWidget(self.details)
        buttons = QHBoxLayout()
        self.chat_button = QPushButton("Chat with it")
        self.chat_button.setToolTip("Open the Chat page with this run on the fine-tuned side")
        self.evaluate_button = QPushButton("Evaluate it")
        self.evaluate_button.setToolTip("Open the Evaluate page with this run selected")
        self.export_button = QPushButton("Export…")
        self.export_button.setToolTip("Save the adapter, a merged model or a GGUF file (Runs page)")
        for button, action in ((self.chat_button, "chat"), (self.evaluate_button, "evaluate"),
                               (self.export_button, "export")):
            button.clicked.connect(lambda _checked=False, action=action: self.nextStepRequested.emit(action))
            buttons.addWidget(button)
        buttons.addStretch(1)
        layout.addLayout(buttons)
        self.setVisible(False)

    def show_outcome(self, outcome, coach_notes: list[str] | None = None, has_weights: bool = True) -> None:
        """Fill the card from a core.outcome.RunOutcome and show it."""
        self.outcome = outcome
        fg, bg = VERDICT_COLORS.get(outcome.verdict, VERDICT_COLORS[""])
        text = outcome.verdict.capitalize() if outcome.verdict else outcome.state.capitalize()
        self.verdict_label.setText(text)
        self.verdict_label.setStyleSheet(f"color: {fg}; background: {bg}; border-radius: 8px; padding: 2px 8px;"
                                         "font-weight: bold;")
        self.headline.setText(outcome.headline)
        lines = []
        if outcome.perplexity_before is not None and outcome.perplexity_after is not None:
            lines.append(f"Perplexity {outcome.perplexity_before:.1f} → {outcome.perplexity_after:.1f}: roughly how "
                         "many words the model hesitates between at each step (lower is better).")
        if outcome.best_step is not None:
            lines.append(f"Best checkpoint: step {outcome.best_step} (held-out loss {outcome.best_loss:.3f}); "
                         "Chat and Evaluate use the final model, which is the best one when “keep best” is on.")
        lines += outcome.notes
        notes = [note for note in (coach_notes or []) if note]
        if notes:
            lines.append("The coach noticed: " + " · ".join(notes))
        elif outcome.verdict in ("clear improvement", "small improvement") and outcome.state == "finished":
            lines.append("The coach saw nothing wrong with the curves: all is well.")
        if outcome.next_steps:
            lines.append("Next: " + " ".join(outcome.next_steps))
        self.details.setText("\n".join(lines))
        for button in (self.chat_button, self.evaluate_button, self.export_button):
            button.setEnabled(has_weights)
            if not has_weights:
                button.setToolTip("This run saved no trained weights")
        self.setVisible(True)

    def clear(self) -> None:
        self.outcome = None
        self.setVisible(False)
