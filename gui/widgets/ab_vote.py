"""Blind A/B voting for the Chat page: the vote buttons with the win rate, and a dialog to review, edit and
export the votes. The votes themselves are core.preference records in the workspace's votes.jsonl; every
dataset/model text is shown as plain text."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from core.preference import VOTE_LABELS, VOTES, VoteStore, win_rate


class ABVoteBar(QFrame):
    """A better / B better / Tie / Both bad, the revealed identities after the vote, and the win rate."""

    voted = Signal(str)  # one of core.preference.VOTES
    reviewRequested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("abVoteBar")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 4, 6, 4)
        row = QHBoxLayout()
        self.question = QLabel("Which answer is better? The models stay hidden until you vote.")
        row.addWidget(self.question, 1)
        self.buttons: dict[str, QPushButton] = {}
        for vote in VOTES:
            button = QPushButton(VOTE_LABELS[vote])
            button.setObjectName(f"abVote_{vote}")
            button.clicked.connect(lambda _checked=False, v=vote: self.voted.emit(v))
            row.addWidget(button)
            self.buttons[vote] = button
        self.review_button = QPushButton("Review votes…")
        self.review_button.setToolTip("See, change, delete or export every vote (a DPO dataset)")
        self.review_button.clicked.connect(self.reviewRequested)
        row.addWidget(self.review_button)
        layout.addLayout(row)
        self.reveal = QLabel("")
        self.reveal.setTextFormat(Qt.TextFormat.PlainText)
        self.reveal.setWordWrap(True)
        layout.addWidget(self.reveal)
        self.rate = QLabel("")
        self.rate.setObjectName("abWinRate")
        self.rate.setTextFormat(Qt.TextFormat.PlainText)
        self.rate.setWordWrap(True)
        layout.addWidget(self.rate)
        self.set_ready(False)

    def set_ready(self, ready: bool) -> None:
        """Vote buttons on once both answers are complete (and until a vote is cast)."""
        for button in self.buttons.values():
            button.setEnabled(ready)


class VoteReviewDialog(QDialog):
    """Every vote of the votes file: change a vote, delete one, export the pairs for DPO."""

    def __init__(self, store: VoteStore, parent=None):
        super().__init__(parent)
        self.store = store
        self.setWindowTitle("Blind A/B votes")
        self.resize(900, 480)
        layout = QVBoxLayout(self)
        self.summary = QLabel("")
        self.summary.setTextFormat(Qt.TextFormat.PlainText)
        self.summary.setWordWrap(True)
        layout.addWidget(self.summary)
        self.table = QTableWidget(0, 5)
        self.table.setHorizontalHeaderLabels(["Prompt", "A", "B", "Vote", "Winner"])
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        layout.addWidget(self.table, 1)
        buttons = QHBoxLayout()
        self.delete_button = QPushButton("Delete vote")
        self.delete_button.clicked.connect(self.delete_selected)
        self.export_button = QPushButton("Export pairs…")
        self.export_button.setToolTip("Write prompt/chosen/rejected rows (ties and both-bad left out): a DPO dataset")
        self.export_button.clicked.connect(self._export_dialog)
        close = QPushButton("Close")
        close.clicked.connect(self.accept)
        buttons.addWidget(self.delete_button)
        buttons.addWidget(self.export_button)
        buttons.addStretch(1)
        buttons.addWidget(close)
        layout.addLayout(buttons)
        self.reload()

    def reload(self) -> None:
        records = self.store.records()
        self.summary.setText(f"{self.store.path}\n{win_rate(records).sentence()}")
        self.table.setRowCount(len(records))
        for row, record in enumerate(records):
            for column, text in enumerate((record.prompt, record.a, record.b)):
                item = QTableWidgetItem(" ".join(text.split())[:300])
                item.setToolTip(text)
                item.setData(Qt.ItemDataRole.UserRole, record.id)
                self.table.setItem(row, column, item)
            combo = QComboBox()
            for vote in VOTES:
                combo.addItem(VOTE_LABELS[vote], vote)
            combo.setCurrentIndex(VOTES.index(record.vote))
            combo.currentIndexChanged.connect(
                lambda _index, rid=record.id, box=combo: self.change_vote(rid, box.currentData()))
            self.table.setCellWidget(row, 3, combo)
            self.table.setItem(row, 4, QTableWidgetItem(record.winner_model or "-"))

    def change_vote(self, record_id: str, vote: str) -> None:
        self.store.update(record_id, vote=vote)
        self.reload()

    def delete_selected(self) -> None:
        row = self.table.currentRow()
        item = self.table.item(row, 0) if row >= 0 else None
        if item is not None:
            self.store.delete(item.data(Qt.ItemDataRole.UserRole))
            self.reload()

    def export(self, path: str | Path) -> int:
        return self.store.export(path)

    def _export_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export preference pairs", "preference_pairs.jsonl",
                                              "JSON Lines (*.jsonl)")
        if path:
            count = self.export(path)
            self.summary.setText(f"{count} pairs written to {path}\n{win_rate(self.store.records()).sentence()}")
