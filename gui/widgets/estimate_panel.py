"""Pre-flight estimate: memory needed (weights, gradients, optimizer, activations...) against what is
available, the time of the run, "fits / doesn't fit", and ``make_it_fit`` suggestions with Apply buttons.

The panel only displays a ``core.estimate.Estimate``; the page computes it in a worker (formula on every
settings change, debounced; "Measure" probes a few real steps) and applies the patches
(``applyPatch(dict)``).
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from core.glossary import has_entry
from gui.widgets.help_button import HelpButton


def format_size(n: float | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit in ("B", "KB") else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = float(seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class EstimatePanel(QGroupBox):
    """Shows an Estimate; ``measureRequested()`` for the Measure button, ``applyPatch(dict)`` for a fix."""

    measureRequested = Signal()
    applyPatch = Signal(object)

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Before you start: memory and time", parent)
        self.estimate = None
        self.suggestions: list = []
        self.suggestion_buttons: list[QPushButton] = []
        self.verdict = QLabel("Estimating…")
        self.verdict.setTextFormat(Qt.TextFormat.PlainText)
        self.verdict.setWordWrap(True)
        self.verdict.setStyleSheet("font-weight: bold;")
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.bar.setTextVisible(True)
        self.bar.setFixedHeight(16)
        self.parts_grid = QGridLayout()
        self.parts_grid.setHorizontalSpacing(12)
        self.parts_grid.setVerticalSpacing(1)
        self.time_label = QLabel()
        self.time_label.setWordWrap(True)
        self.time_label.setTextFormat(Qt.TextFormat.PlainText)
        self.note_label = QLabel()
        self.note_label.setWordWrap(True)
        self.note_label.setTextFormat(Qt.TextFormat.PlainText)
        self.note_label.setStyleSheet("color: #5b6776;")
        self.measure_button = QPushButton("Measure (probe a few real steps)")
        self.measure_button.setToolTip("Run 3 real training steps in a separate process and replace the formula "
                                       "with measured memory and speed (takes a little while).")
        self.measure_button.clicked.connect(self.measureRequested)
        self.fixes_box = QWidget()
        self.fixes_layout = QVBoxLayout(self.fixes_box)
        self.fixes_layout.setContentsMargins(0, 0, 0, 0)
        self.fixes_layout.setSpacing(2)

        layout = QVBoxLayout(self)
        layout.addWidget(self.verdict)
        layout.addWidget(self.bar)
        layout.addLayout(self.parts_grid)
        time_row = QHBoxLayout()
        time_row.addWidget(self.time_label, 1)
        # What "s per step" and "fp32/bf16" mean, in the words `core.glossary` gives the CLI too.
        self.time_help = HelpButton("estimate.time")
        time_row.addWidget(self.time_help, 0, Qt.AlignmentFlag.AlignTop)
        layout.addLayout(time_row)
        layout.addWidget(self.note_label)
        layout.addWidget(self.fixes_box)
        row = QHBoxLayout()
        row.addWidget(self.measure_button)
        row.addStretch(1)
        layout.addLayout(row)
        self.note_label.setVisible(False)

    def show_busy(self, text: str) -> None:
        self.verdict.setText(text)
        self.verdict.setStyleSheet("font-weight: bold; color: #5b6776;")

    def show_error(self, text: str) -> None:
        self.verdict.setText(f"No estimate: {text}")
        self.verdict.setStyleSheet("font-weight: bold; color: #b42318;")

    def show_estimate(self, est, suggestions=()) -> None:
        """Render ``est`` (a core.estimate.Estimate) and the make-it-fit ``suggestions``."""
        self.estimate = est
        while self.parts_grid.count():
            item = self.parts_grid.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        rows = [(part.name, part.bytes, part.note) for part in est.parts]
        if est.measured:
            rows.append(("measured peak", est.total_bytes, f"{est.measured.get('steps', '?')} real steps"))
        for row, (name, size, note) in enumerate(rows):
            name_label = QLabel(name)
            size_label = QLabel(format_size(size))
            size_label.setAlignment(Qt.AlignmentFlag.AlignRight)
            name_label.setToolTip(note)
            size_label.setToolTip(note)
            self.parts_grid.addWidget(name_label, row, 0)
            self.parts_grid.addWidget(size_label, row, 1)
            if has_entry(f"memory.{name}"):  # what this part of memory is, in plain words
                self.parts_grid.addWidget(HelpButton(f"memory.{name}"), row, 2)
        self.parts_grid.setColumnStretch(3, 1)
        need = format_size(est.total_bytes)
        kind = "measured" if est.measured else "estimated"
        if est.fits is None:
            text, color = f"Needs about {need} ({kind}); free memory on {est.device} unknown", "#5b6776"
        elif est.fits:
            text, color = (f"✓ Fits: needs about {need} ({kind}) of {format_size(est.available_bytes)} free "
                           f"on {est.device}"), "#1e7a3a"
        else:
            text, color = (f"✗ Doesn't fit: needs about {need} ({kind}), only "
                           f"{format_size(est.available_bytes)} free on {est.device}"), "#b42318"
        self.verdict.setText(text)
        self.verdict.setStyleSheet(f"font-weight: bold; color: {color};")
        if est.available_bytes:
            share = est.total_bytes / est.available_bytes
            self.bar.setValue(int(1000 * min(share, 1.0)))
            self.bar.setFormat(f"{100 * share:.0f}% of free memory")
            self.bar.setVisible(True)
        else:
            self.bar.setVisible(False)
        speed = f"{est.seconds_per_step:.2f} s per step" + (" (measured)" if est.measured else "")
        if est.seconds_total is not None and est.total_steps:
            self.time_label.setText(f"Time: about {format_seconds(est.seconds_total)} for {est.total_steps} steps "
                                    f"({speed}, {est.precision})")
        else:
            self.time_label.setText(f"Time: {speed} ({est.precision}); the number of steps depends on the data")
        self.note_label.setText("\n".join(est.notes))
        self.note_label.setVisible(bool(est.notes))
        self._show_suggestions(list(suggestions) if est.fits is False else [])

    def _show_suggestions(self, suggestions: list) -> None:
        while self.fixes_layout.count():
            item = self.fixes_layout.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        self.suggestions = suggestions
        self.suggestion_buttons = []
        if suggestions:
            title = QLabel("To make it fit:")
            title.setStyleSheet("font-weight: bold;")
            self.fixes_layout.addWidget(title)
        for suggestion in suggestions:
            row = QWidget()
            row_layout = QHBoxLayout(row)
            row_layout.setContentsMargins(0, 0, 0, 0)
            label = QLabel(f"{suggestion.title} → {format_size(suggestion.predicted_bytes)}")
            label.setToolTip(suggestion.explanation)
            label.setWordWrap(True)
            button = QPushButton("Apply")
            button.setToolTip(suggestion.explanation + "\n" + "\n".join(
                f"{field} = {value}" for field, value in suggestion.patch.items()))
            button.clicked.connect(self._on_apply_clicked)
            self.suggestion_buttons.append(button)
            row_layout.addWidget(label, 1)
            row_layout.addWidget(button)
            self.fixes_layout.addWidget(row)

    def _on_apply_clicked(self) -> None:
        for button, suggestion in zip(self.suggestion_buttons, self.suggestions, strict=False):
            if button is self.sender():
                self.applyPatch.emit(dict(suggestion.patch))
                return
