"""The "Find a learning rate" dialog: the range test (core.lr_find) on the current settings, in a worker.

The loss is drawn against the learning rate on a log axis as the test runs (raw losses faint, the
smoothed curve bold); at the end the suggested rate is marked and its reason shown in words. "Use this"
writes it into the settings (``training.learning_rate`` of the shared state).
"""

from __future__ import annotations

import contextlib
import math
import sys

import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QDialog,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from core.lr_find import DEFAULT_END_LR, DEFAULT_START_LR, DEFAULT_STEPS, LRFindProgress, LRFindResult
from gui.tasks import TaskGroup

RAW_COLOR = (47, 111, 214, 90)
SMOOTH_COLOR = "#2f6fd6"
SUGGESTION_COLOR = "#d1495b"


@contextlib.contextmanager
def quick_gil_handover():
    """While a worker trains: the short GIL switch interval the Train page uses (gui.workers), so the
    event loop gets the GIL back quickly between torch calls and plots repaint without stalls."""
    from gui.workers import TRAINING_SWITCH_INTERVAL

    previous = sys.getswitchinterval()
    sys.setswitchinterval(min(previous, TRAINING_SWITCH_INTERVAL))
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def round_rate(value: float) -> float:
    """A suggested rate as people write it: two significant digits (1.7e-3, not 0.0017302...)."""
    if value <= 0 or not math.isfinite(value):
        return value
    return float(f"{value:.1e}")


class LRFindDialog(QDialog):
    """Runs the finder on ``state.config`` and offers its suggestion.

    Signals: learningRateChosen(float) after "Use this" wrote the rate into the state;
    finderFinished(object) with the LRFindResult (or the exception) when a test ends."""

    learningRateChosen = Signal(float)
    finderFinished = Signal(object)

    def __init__(self, state, parent=None, *, autostart: bool = True):
        super().__init__(parent)
        self.state = state
        self.setWindowTitle("Find a learning rate")
        self.resize(820, 600)
        self.tasks = TaskGroup(self)
        self.tasks.busyChanged.connect(self._on_busy_changed)
        self.task = None
        self.result: LRFindResult | None = None
        self._points: tuple = ()

        cfg = state.config
        intro = QLabel(
            f"A short test run on your current settings ({cfg.model.name_or_path}, {cfg.method.method}, "
            f"batch {cfg.training.batch_size}): the learning rate grows step by step from "
            f"{DEFAULT_START_LR:.0e} to {DEFAULT_END_LR:g} while the training loss is recorded. The loss barely "
            "moves while the rate is too small, falls where it is useful, and blows up where it is too big. "
            "The model's weights are put back afterwards; no run is created.")
        intro.setWordWrap(True)
        intro.setTextFormat(Qt.TextFormat.PlainText)

        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(20, 500)
        self.steps_spin.setValue(DEFAULT_STEPS)
        self.steps_spin.setToolTip("Steps from the smallest to the largest rate; the test stops earlier once the "
                                   "loss blows up. More steps give a smoother curve and take longer.")
        self.run_button = QPushButton("Run the test")
        self.run_button.clicked.connect(self.start)
        self.stop_button = QPushButton("Stop")
        self.stop_button.clicked.connect(self.stop)
        controls = QHBoxLayout()
        controls.addWidget(QLabel("Steps:"))
        controls.addWidget(self.steps_spin)
        controls.addWidget(self.run_button)
        controls.addWidget(self.stop_button)
        controls.addStretch(1)

        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.status_label = QLabel("")
        self.status_label.setTextFormat(Qt.TextFormat.PlainText)

        pg.setConfigOptions(antialias=True, background="w", foreground="#444")
        self.plot = pg.PlotWidget()
        self.plot.setLogMode(x=True, y=False)
        self.plot.getAxis("bottom").enableAutoSIPrefix(False)  # rates as written (1e-3), never "x0.001"
        self.plot.setLabel("bottom", "learning rate (log scale)")
        self.plot.setLabel("left", "training loss")
        self.plot.setMouseEnabled(x=True, y=True)
        self.raw_curve = self.plot.plot([], [], pen=None, symbol="o", symbolSize=4, symbolBrush=RAW_COLOR,
                                        symbolPen=None, name="loss at each step")
        self.smooth_curve = self.plot.plot([], [], pen=pg.mkPen(SMOOTH_COLOR, width=2.5), name="smoothed")
        self.suggestion_marker = self.plot.plot([], [], pen=None, symbol="star", symbolSize=18,
                                                symbolBrush=SUGGESTION_COLOR, symbolPen=pg.mkPen("#7a1020"))
        self.suggestion_line = pg.InfiniteLine(angle=90, pen=pg.mkPen(SUGGESTION_COLOR, width=1.5,
                                                                       style=Qt.PenStyle.DashLine))
        self.suggestion_line.setVisible(False)
        self.plot.addItem(self.suggestion_line)

        self.suggestion_label = QLabel("")
        self.suggestion_label.setObjectName("lrSuggestion")
        self.suggestion_label.setStyleSheet("font-size: 15px; font-weight: 600;")
        self.suggestion_label.setTextFormat(Qt.TextFormat.PlainText)
        self.reason_label = QLabel("")
        self.reason_label.setWordWrap(True)
        self.reason_label.setTextFormat(Qt.TextFormat.PlainText)
        # room for three wrapped lines: the reason must never be cut by the plot above it
        self.reason_label.setMinimumHeight(3 * self.reason_label.fontMetrics().lineSpacing() + 4)
        self.reason_label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)

        self.use_button = QPushButton("Use this")
        self.use_button.setDefault(True)
        self.use_button.setEnabled(False)
        self.use_button.setToolTip("Write the suggested learning rate into the training settings.")
        self.use_button.clicked.connect(self.use_suggestion)
        self.close_button = QPushButton("Close")
        self.close_button.clicked.connect(self.reject)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.use_button)
        buttons.addWidget(self.close_button)

        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addLayout(controls)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status_label)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.suggestion_label)
        layout.addWidget(self.reason_label)
        layout.addLayout(buttons)
        self._set_busy(False)
        if autostart:
            self.start()

    # -- running -----------------------------------------------------------------------------------
    @property
    def is_busy(self) -> bool:
        return self.tasks.is_busy

    def start(self) -> None:
        """Start the range test on the current settings (in a worker thread)."""
        if self.tasks.is_busy:
            return
        from core.lr_find import find_learning_rate

        cfg = self.state.config.copy()
        workspace = self.state.workspace
        steps = int(self.steps_spin.value())
        self.result = None
        self._points = ()
        self._draw_points(())
        self._show_suggestion(None)
        self.status_label.setText("starting…")
        self.progress_bar.setValue(0)

        def work(progress, stop):
            with quick_gil_handover():
                return find_learning_rate(cfg, workspace=workspace, num_steps=steps, stop=stop, progress=progress)

        self.task = self.tasks.run(work, name="lr-find")
        self.task.progress.connect(self._on_progress)
        self.task.succeeded.connect(self._on_result)
        self.task.failed.connect(self._on_failed)
        self._set_busy(True)
        self.task.start()

    def stop(self) -> None:
        if self.task is not None and self.task.is_running:
            self.task.stop_token.request("stopped from the dialog")
            self.status_label.setText("stopping after this step…")

    def shutdown(self, timeout_ms: int = 60000) -> bool:
        """Cancel the test and wait for its thread (the dialog or the window is closing)."""
        return self.tasks.shutdown(timeout_ms)

    def done(self, code: int) -> None:  # accept/reject/close all end here
        self.shutdown()
        super().done(code)

    # -- results -----------------------------------------------------------------------------------
    def _on_progress(self, payload) -> None:
        fraction, message = payload
        if fraction is not None:
            self.progress_bar.setValue(int(max(0.0, min(1.0, fraction)) * 1000))
        self.status_label.setText(str(message))
        if isinstance(message, LRFindProgress):
            self._points = message.points
            self._draw_points(message.points)

    def _draw_points(self, points) -> None:
        finite = [p for p in points if math.isfinite(p.loss)]
        self.raw_curve.setData([p.learning_rate for p in finite], [p.loss for p in finite])
        smooth = [p for p in points if math.isfinite(p.smoothed)]
        self.smooth_curve.setData([p.learning_rate for p in smooth], [p.smoothed for p in smooth])

    def _on_result(self, result: LRFindResult) -> None:
        self.result = result
        points = result.points
        finite = [p for p in points if math.isfinite(p.loss)]
        self.raw_curve.setData([p.learning_rate for p in finite], [p.loss for p in finite])
        # the centred smoothing (no lag) the suggestion was read from
        pairs = [(p.learning_rate, s) for p, s in zip(points, result.smoothed, strict=False) if math.isfinite(s)]
        self.smooth_curve.setData([lr for lr, _ in pairs], [s for _, s in pairs])
        self._show_suggestion(result)
        self._frame(result)
        self.progress_bar.setValue(1000)
        ended = {"diverged": "the loss blew up", "completed": "every step ran", "time budget": "time ran out",
                 "stopped": "stopped"}.get(result.ended_because, result.ended_because)
        self.status_label.setText(f"{len(points)} steps in {result.seconds:.0f} s; ended because {ended}. "
                                  "The model's weights were put back.")
        self.finderFinished.emit(result)

    def _frame(self, result: LRFindResult) -> None:
        """Show the useful part: up to a bit above the loss before it fell, not the whole blow-up (which can
        be 10x higher and would flatten the rest; zoom out with the mouse to see it)."""
        smooth = [value for value in result.smoothed if math.isfinite(value)]
        raw = [p.loss for p in result.points if math.isfinite(p.loss)]
        if not smooth or not raw:
            return
        lowest = min(range(len(result.smoothed)), key=lambda i: result.smoothed[i]
                     if math.isfinite(result.smoothed[i]) else math.inf)
        before = [value for value in result.smoothed[: lowest + 1] if math.isfinite(value)] or smooth
        top = max(before) * 1.3
        bottom = min(min(raw), min(smooth))
        self.plot.setYRange(max(0.0, bottom - 0.1 * (top - bottom)), top, padding=0)

    def _show_suggestion(self, result: LRFindResult | None) -> None:
        if result is None or result.suggestion is None:
            self.suggestion_marker.setData([], [])
            self.suggestion_line.setVisible(False)
            self.use_button.setEnabled(False)
            self.suggestion_label.setText("No suggestion" if result is not None else "")
            self.reason_label.setText(result.reason if result is not None else "")
            return
        value = round_rate(result.suggestion)
        lrs = result.learning_rates
        index = min(range(len(lrs)), key=lambda i: abs(math.log10(lrs[i]) - math.log10(result.suggestion)))
        y = result.smoothed[index] if math.isfinite(result.smoothed[index]) else result.points[index].loss
        self.suggestion_marker.setData([lrs[index]], [y])
        self.suggestion_line.setPos(math.log10(result.suggestion))  # items live in log10 view coordinates
        self.suggestion_line.setVisible(True)
        current = self.state.config.training.learning_rate
        self.suggestion_label.setText(f"Suggested learning rate: {value:.1e}   (now {current:.1e})")
        self.reason_label.setText("Why: " + result.reason)
        self.use_button.setEnabled(True)

    def _on_failed(self, exc) -> None:
        from core.errors import Cancelled

        self.status_label.setText("stopped" if isinstance(exc, Cancelled) else f"the test failed: {exc}")
        self.finderFinished.emit(exc)

    def _on_busy_changed(self, busy: bool) -> None:
        self._set_busy(busy)

    def _set_busy(self, busy: bool) -> None:
        self.run_button.setEnabled(not busy)
        self.steps_spin.setEnabled(not busy)
        self.stop_button.setEnabled(busy)
        self.run_button.setText("Run again" if self.result is not None and not busy else "Run the test")

    def use_suggestion(self) -> None:
        """Write the suggestion into ``training.learning_rate`` and close."""
        if self.result is None or self.result.suggestion is None:
            return
        value = round_rate(self.result.suggestion)
        self.state.update("training", "learning_rate", value)
        self.state.show_message(f"Learning rate set to {value:.1e} (learning-rate finder)")
        self.learningRateChosen.emit(value)
        self.accept()
