"""Live training curves: loss (train + eval), learning rate and gradient norm; for preference tuning (DPO)
also the rewards of the chosen and rejected answers with their margin, and the reward accuracy.

Points arrive one by one from the training worker (through a Qt signal, on the GUI thread). They are
appended to numpy buffers that grow by doubling, and a single-shot QTimer coalesces redraws so the
plots are redrawn at most ~10 times a second however fast points arrive. Curves use ``setData`` with
``setClipToView`` and peak downsampling, so a 100k-point curve redraws in a few milliseconds.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QRadioButton,
    QSlider,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from core.metrics import PreferencePoint

REDRAW_INTERVAL_MS = 100  # at most ~10 redraws per second
# The learning-rate and gradient-norm plots change slowly: live updates redraw them at most twice a
# second. Each pyqtgraph repaint needs the GIL many times, and while training holds it every repaint
# costs the event loop tens of milliseconds, so fewer repaints mean fewer stalls.
SMALL_PLOTS_INTERVAL_S = 0.5
# Above this many points a curve is drawn 1 px wide without antialiasing: Qt's antialiased wide strokes
# of a long jagged polyline take seconds (measured: 100k noisy points, 2 px + AA: ~11 s; 1 px plain: ~10 ms).
DENSE_POINTS = 4000

TRAIN_COLOR = "#2f6fd6"
TRAIN_RAW_COLOR = (47, 111, 214, 70)
EVAL_COLOR = "#e0702b"
LR_COLOR = "#2a9d8f"
GRAD_COLOR = "#8e5bd6"
MARGIN_COLOR = "#1b7f3b"
CHOSEN_COLOR = "#2f6fd6"
REJECTED_COLOR = "#d1495b"
ACCURACY_COLOR = "#8e5bd6"
CHECKPOINT_COLOR = "#f2c14e"
BEST_COLOR = "#ffd000"

REWARDS_HELP = (
    "Preference tuning (DPO) scores each answer with a reward: beta × how much more likely the model being "
    "trained makes that answer than the reference model (the model training started from).\n"
    "• Margin = chosen reward − rejected reward. A rising margin means the model prefers the chosen answers "
    "over the rejected ones more and more.\n"
    "• Both rewards often fall together (the model makes both answers less likely); what counts is the gap.\n"
    "• A margin that keeps shooting up while the held-out dots stay flat means the model memorises the "
    "training pairs.\nLines: training batches. Dots: held-out pairs.")
ACCURACY_HELP = (
    "Reward accuracy: the share of pairs whose chosen answer gets a higher reward than the rejected one "
    "(0 to 1). 0.5 is a coin toss. Before training both models are the same, every reward is 0 and the accuracy "
    "reads 0 (a tie is no win).\n"
    "On training pairs it usually climbs towards 1 quickly; the held-out dots show whether the preference "
    "carries over to prompts the model has not trained on.")


class StepAxis(pg.AxisItem):
    """A bottom axis that never shows "x0.001" multipliers and, for steps, only whole-number ticks."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.integer = True
        self.enableAutoSIPrefix(False)

    def tickValues(self, minVal, maxVal, size):  # noqa: N802, N803 - pyqtgraph's names
        levels = super().tickValues(minVal, maxVal, size)
        if not self.integer:
            return levels
        result = []
        for spacing, values in levels:
            if spacing < 1:
                continue  # no ticks between steps
            result.append((spacing, [v for v in values if abs(v - round(v)) < 1e-9]))
        if not result:
            first, last = math.ceil(minVal), math.floor(maxVal)
            result = [(1.0, [float(v) for v in range(first, last + 1)])]
        return result


def _swatch(color, text: str, *, dashed: bool = False, symbol: str = "") -> QWidget:
    """A legend entry as plain widgets (outside the plot, so it never covers a curve)."""
    box = QWidget()
    row = QHBoxLayout(box)
    row.setContentsMargins(0, 0, 0, 0)
    row.setSpacing(4)
    mark = QLabel(symbol or ("╌" if dashed else "━"))
    css = color if isinstance(color, str) else f"rgba({color[0]},{color[1]},{color[2]},{color[3] / 255:.2f})"
    mark.setStyleSheet(f"color: {css}; font-weight: bold;")
    row.addWidget(mark)
    row.addWidget(QLabel(text))
    return box


class SeriesBuffer:
    """Growable (step, epoch, value) columns; capacity doubles so appends are amortised O(1)."""

    def __init__(self, capacity: int = 256):
        self._step = np.empty(capacity, dtype=np.float64)
        self._epoch = np.empty(capacity, dtype=np.float64)
        self._value = np.empty(capacity, dtype=np.float64)
        self.size = 0

    def append(self, step: float, epoch: float | None, value: float) -> None:
        if self.size == len(self._step):
            self._grow(2 * len(self._step))
        i = self.size
        self._step[i] = step
        self._epoch[i] = np.nan if epoch is None else epoch
        self._value[i] = value
        self.size += 1

    def extend(self, steps: np.ndarray, epochs: np.ndarray, values: np.ndarray) -> None:
        """Append many points at once (used to load a whole metrics file, or by benchmarks)."""
        n = len(steps)
        needed = self.size + n
        if needed > len(self._step):
            capacity = len(self._step)
            while capacity < needed:
                capacity *= 2
            self._grow(capacity)
        self._step[self.size:needed] = steps
        self._epoch[self.size:needed] = epochs
        self._value[self.size:needed] = values
        self.size = needed

    def _grow(self, capacity: int) -> None:
        for name in ("_step", "_epoch", "_value"):
            old = getattr(self, name)
            new = np.empty(capacity, dtype=np.float64)
            new[: self.size] = old[: self.size]
            setattr(self, name, new)

    def clear(self) -> None:
        self.size = 0

    @property
    def capacity(self) -> int:
        return len(self._step)

    def x(self, axis: str) -> np.ndarray:
        """The x values (views, no copy) for ``axis`` = "step" or "epoch"."""
        return (self._epoch if axis == "epoch" else self._step)[: self.size]

    @property
    def values(self) -> np.ndarray:
        return self._value[: self.size]


def ema(values: np.ndarray, weight: float, start: int = 0, out: np.ndarray | None = None) -> np.ndarray:
    """Debiased exponential moving average (TensorBoard's smoothing) of ``values``.

    Only entries from ``start`` on are (re)computed into ``out``, so live updates cost O(new points).
    """
    n = len(values)
    if out is None or len(out) < n:
        grown = np.empty(max(n, 16) * 2, dtype=np.float64)
        if out is not None:
            grown[: min(start, len(out))] = out[: min(start, len(out))]
        out = grown
    if weight <= 0:
        out[start:n] = values[start:n]
        return out
    # Recover the running (biased) average at ``start`` from the debiased one we stored.
    if start > 0:
        last = out[start - 1] * (1.0 - weight**start)
    else:
        last = 0.0
    for i in range(start, n):
        value = values[i]
        if not math.isfinite(value):
            out[i] = out[i - 1] if i else value
            continue
        last = last * weight + (1.0 - weight) * value
        out[i] = last / (1.0 - weight ** (i + 1))
    return out


def _number(value: Any) -> float | None:
    """A finite float or None (metrics files may hold "nan" strings)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _field(point: Any, name: str) -> Any:
    """Read a MetricPoint attribute or a key of a metrics.jsonl dict."""
    if isinstance(point, dict):
        return point.get(name)
    return getattr(point, name, None)


class _Curve:
    """One buffer and the plot item(s) that draw it."""

    def __init__(self, item: pg.PlotDataItem):
        self.buffer = SeriesBuffer()
        self.item = item


def set_dense(item: pg.PlotDataItem, n_points: int) -> None:
    """Thin, non-antialiased pen for long curves (fast), the item's nice pen for short ones."""
    dense = n_points > DENSE_POINTS
    if getattr(item, "_studio_dense", None) == dense:
        return
    if not hasattr(item, "_studio_pen"):
        item._studio_pen = pg.mkPen(item.opts["pen"])  # type: ignore[attr-defined]
    pen = pg.mkPen(item._studio_pen)  # type: ignore[attr-defined]
    if dense:
        pen.setWidthF(1.0)
        pen.setCosmetic(True)
    item.opts["antialias"] = not dense
    item.setPen(pen)
    item._studio_dense = dense  # type: ignore[attr-defined]


class TrainingPlots(QWidget):
    """Loss (train + eval markers, optional EMA smoothing), learning rate and gradient norm.

    ``add_point(point)`` accepts a ``core.metrics.MetricPoint`` or a metrics.jsonl dict. Call it from
    the GUI thread only; the redraw is deferred and coalesced.
    """

    redrawn = Signal()  # emitted after each (coalesced) redraw; tests and benchmarks wait on it
    stepClicked = Signal(int)  # the training step of the loss point / checkpoint marker nearest a click

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        pg.setConfigOptions(antialias=True, background="w", foreground="#444")
        self.x_axis = "step"
        self.smoothing = 0.6
        self._smoothed: np.ndarray | None = None
        self._smoothed_upto = 0
        self.redraw_count = 0

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(REDRAW_INTERVAL_MS)
        self._timer.timeout.connect(self._live_redraw)
        self._small_plots_drawn_at = 0.0
        self._loss_dirty = False
        self._small_dirty = False

        # -- controls --------------------------------------------------------------------------
        self._step_radio = QRadioButton("Steps")
        self._epoch_radio = QRadioButton("Epochs")
        self._step_radio.setChecked(True)
        self._step_radio.setToolTip("Show optimizer steps on the x axis.")
        self._epoch_radio.setToolTip("Show epochs (passes over the training data) on the x axis.")
        axis_group = QButtonGroup(self)
        axis_group.addButton(self._step_radio)
        axis_group.addButton(self._epoch_radio)
        self._epoch_radio.toggled.connect(lambda on: self.set_x_axis("epoch" if on else "step"))

        self._smooth_slider = QSlider(Qt.Orientation.Horizontal)
        self._smooth_slider.setRange(0, 99)
        self._smooth_slider.setValue(int(self.smoothing * 100))
        self._smooth_slider.setFixedWidth(140)
        self._smooth_slider.setToolTip(
            "Smoothing of the training loss (exponential moving average). The faint line is the raw loss; "
            "0 shows the raw loss only. Eval points are never smoothed."
        )
        self._smooth_label = QLabel()
        self._smooth_slider.valueChanged.connect(self._on_smoothing_changed)
        self._update_smooth_label()

        self.readout = QLabel("Hover over the loss curve to read its values.")
        self.readout.setObjectName("plotReadout")
        self.readout.setStyleSheet("color: #555;")
        self.readout.setWordWrap(True)

        controls = QHBoxLayout()
        controls.setContentsMargins(0, 0, 0, 0)
        controls.addWidget(QLabel("X axis:"))
        controls.addWidget(self._step_radio)
        controls.addWidget(self._epoch_radio)
        controls.addSpacing(18)
        controls.addWidget(QLabel("Smoothing:"))
        controls.addWidget(self._smooth_slider)
        controls.addWidget(self._smooth_label)
        controls.addStretch(1)
        # The legend lives outside the plot: inside, it covered the curves and the best-checkpoint star.
        self.legend_row = QGridLayout()
        self.legend_row.setContentsMargins(0, 0, 0, 0)
        self.legend_row.setHorizontalSpacing(14)
        self.legend_row.setVerticalSpacing(0)
        entries = ((TRAIN_COLOR, "train loss (smoothed)", False, ""), (TRAIN_RAW_COLOR, "raw", False, ""),
                   (EVAL_COLOR, "held-out loss", True, "●"), (CHECKPOINT_COLOR, "checkpoint", False, "◆"),
                   ("#c9a400", "best checkpoint", False, "★"))
        for index, (color, text, dashed, symbol) in enumerate(entries):
            self.legend_row.addWidget(_swatch(color, text, dashed=dashed, symbol=symbol), index // 3, index % 3)
        self.legend_row.setColumnStretch(3, 1)

        # -- plots -----------------------------------------------------------------------------
        self.loss_plot = pg.PlotWidget(axisItems={"bottom": StepAxis(orientation="bottom")})
        self.loss_plot.setTitle("Loss", size="10pt")
        # No grid: pyqtgraph grid lines cost ~20 ms per paint (bench: 100k-point redraw 34.6 -> 12.6 ms) and
        # paints are what stalls the event loop while training.
        self.loss_plot.showGrid(x=False, y=False)
        self.loss_plot.setLabel("left", "loss")
        self.loss_plot.setMouseEnabled(x=True, y=True)
        self.lr_plot = pg.PlotWidget(axisItems={"bottom": StepAxis(orientation="bottom")})
        self.lr_plot.setTitle("Learning rate", size="10pt")
        self.lr_plot.showGrid(x=False, y=False)
        self.grad_plot = pg.PlotWidget(axisItems={"bottom": StepAxis(orientation="bottom")})
        self.grad_plot.setTitle("Gradient norm", size="10pt")
        self.grad_plot.showGrid(x=False, y=False)
        for plot in (self.lr_plot, self.grad_plot):
            plot.setMinimumHeight(120)
        self.loss_plot.setMinimumHeight(220)

        def line(plot: pg.PlotWidget, color, name: str | None, width: float = 2.0) -> pg.PlotDataItem:
            item = plot.plot(pen=pg.mkPen(color, width=width), name=name)
            item.setClipToView(True)
            item.setDownsampling(auto=True, method="peak")
            return item

        self._train_raw_item = line(self.loss_plot, TRAIN_RAW_COLOR, None, 1.0)
        self.train_loss = _Curve(line(self.loss_plot, TRAIN_COLOR, None))
        eval_item = self.loss_plot.plot(
            pen=pg.mkPen(EVAL_COLOR, width=2, style=Qt.PenStyle.DashLine),
            symbol="o", symbolSize=8, symbolBrush=EVAL_COLOR, symbolPen=pg.mkPen("w", width=1),
        )
        self.eval_loss = _Curve(eval_item)
        self.learning_rate = _Curve(line(self.lr_plot, LR_COLOR, None))
        self.grad_norm = _Curve(line(self.grad_plot, GRAD_COLOR, None))
        self.lr_plot.getAxis("left").enableAutoSIPrefix(False)

        self._hover_marker = pg.ScatterPlotItem(size=11, pen=pg.mkPen("#222", width=1.5), brush=None)
        self._hover_marker.setZValue(10)
        self.loss_plot.addItem(self._hover_marker, ignoreBounds=True)
        self.loss_plot.scene().sigMouseMoved.connect(self._on_mouse_moved)

        # Checkpoint markers (diamonds on the train curve), the best eval point (a star) and the step
        # where early stopping ended the run (a vertical line with a label).
        self.checkpoint_steps: list[int] = []
        self.best_step: int | None = None
        self.early_stopped_step: int | None = None
        self._checkpoint_item = pg.ScatterPlotItem(symbol="d", size=11, pen=pg.mkPen("#333", width=1),
                                                   brush=pg.mkBrush(CHECKPOINT_COLOR))
        self._checkpoint_item.setZValue(5)
        self.loss_plot.addItem(self._checkpoint_item)
        self._best_item = pg.ScatterPlotItem(symbol="star", size=20, pen=pg.mkPen("#7a5a00", width=1),
                                             brush=pg.mkBrush(BEST_COLOR))
        self._best_item.setZValue(6)
        self.loss_plot.addItem(self._best_item)
        self._early_line = pg.InfiniteLine(angle=90, movable=False,
                                           pen=pg.mkPen("#b42318", width=1.5, style=Qt.PenStyle.DashLine),
                                           label="", labelOpts={"position": 0.2, "color": "#b42318",
                                                                "fill": (255, 255, 255, 220),
                                                                # low: the legend sits at the top right
                                                                # text left of the line: it is often
                                                                # the last step, at the right edge
                                                                "anchors": [(1.05, 0.5), (1.05, 0.5)]})
        self._early_line.setVisible(False)
        self.loss_plot.addItem(self._early_line, ignoreBounds=True)
        self.loss_plot.scene().sigMouseClicked.connect(self._on_mouse_clicked)

        self._empty_text = pg.TextItem("The curves appear here when training starts.", color="#888",
                                       anchor=(0.5, 0.5))
        self.loss_plot.addItem(self._empty_text, ignoreBounds=True)
        self._empty_text.setPos(0.5, 0.5)

        small_box = QWidget()
        small = QHBoxLayout(small_box)
        small.setContentsMargins(0, 0, 0, 0)
        small.addWidget(self.lr_plot)
        small.addWidget(self.grad_plot)
        self.preference_box = self._build_preference_plots(line)
        # The plots under the loss: learning rate and gradient norm; a DPO run adds a first tab with its rewards
        # (a third row of plots squeezed the summary below them out of a 800-pixel window). With one tab the
        # tab bar hides itself, so supervised runs look as before.
        self.lower_tabs = QTabWidget()
        self.lower_tabs.setDocumentMode(True)
        self.lower_tabs.setTabBarAutoHide(True)
        self.lower_tabs.addTab(small_box, "Learning rate · gradient norm")

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(controls)
        layout.addLayout(self.legend_row)
        layout.addWidget(self.readout)
        layout.addWidget(self.loss_plot, 3)
        layout.addWidget(self.lower_tabs, 2)
        self._update_axis_labels()

    def _build_preference_plots(self, line) -> QWidget:
        """Rewards (margin, chosen, rejected) and reward accuracy of a DPO run, with their legend; hidden
        until the run is a preference run (``show_preference``)."""
        box = QFrame()
        box.setObjectName("preferencePlots")
        box.hide()  # until show_preference puts it in its tab
        column = QVBoxLayout(box)
        column.setContentsMargins(0, 4, 0, 0)
        column.setSpacing(2)
        legend = QHBoxLayout()
        legend.setContentsMargins(0, 0, 0, 0)
        legend.setSpacing(14)
        self.preference_legend: list[QWidget] = []
        for color, text, symbol, tip in (
                (MARGIN_COLOR, "margin (chosen − rejected)", "", "Rising: the chosen answers win more clearly."),
                (CHOSEN_COLOR, "chosen reward", "", "Reward of the preferred answers."),
                (REJECTED_COLOR, "rejected reward", "", "Reward of the rejected answers."),
                (ACCURACY_COLOR, "reward accuracy", "", "Share of pairs whose chosen answer wins (0 to 1)."),
                ("#555", "held-out pairs", "●", "Dots: the same numbers on held-out pairs.")):
            entry = _swatch(color, text, symbol=symbol)
            entry.setToolTip(tip)
            self.preference_legend.append(entry)
            legend.addWidget(entry)
        legend.addStretch(1)
        column.addLayout(legend)

        self.reward_plot = pg.PlotWidget(axisItems={"bottom": StepAxis(orientation="bottom")})
        self.reward_plot.setTitle("Rewards: chosen vs rejected", size="10pt")
        self.reward_plot.showGrid(x=False, y=False)
        self.reward_plot.setToolTip(REWARDS_HELP)
        self.reward_plot.getAxis("left").enableAutoSIPrefix(False)
        # Zero: the answer is exactly as likely as under the reference model.
        self.reward_plot.addItem(pg.InfiniteLine(pos=0.0, angle=0, movable=False,
                                                 pen=pg.mkPen("#999", width=1, style=Qt.PenStyle.DotLine)),
                                 ignoreBounds=True)
        self.accuracy_plot = pg.PlotWidget(axisItems={"bottom": StepAxis(orientation="bottom")})
        self.accuracy_plot.setTitle("Reward accuracy (0 to 1)", size="10pt")
        self.accuracy_plot.showGrid(x=False, y=False)
        self.accuracy_plot.setToolTip(ACCURACY_HELP)
        self.accuracy_plot.setYRange(0.0, 1.0, padding=0.05)
        self.accuracy_plot.enableAutoRange(axis="y", enable=False)
        self.accuracy_plot.setMouseEnabled(x=True, y=False)
        self.accuracy_plot.getAxis("left").setTicks([[(0.0, "0"), (0.5, "0.5"), (1.0, "1")]])
        chance = pg.InfiniteLine(pos=0.5, angle=0, movable=False, label="chance",
                                 pen=pg.mkPen("#999", width=1, style=Qt.PenStyle.DashLine),
                                 labelOpts={"position": 0.05, "color": "#777", "anchors": [(0, 1), (0, 1)]})
        self.accuracy_plot.addItem(chance, ignoreBounds=True)
        for plot in (self.reward_plot, self.accuracy_plot):
            plot.setMinimumHeight(120)

        def dots(plot: pg.PlotWidget, color) -> pg.PlotDataItem:
            return plot.plot(pen=None, symbol="o", symbolSize=7, symbolBrush=color, symbolPen=pg.mkPen("w", width=1))

        # (split, field) -> curve; the train split as lines, held-out pairs as dots.
        self.preference_curves: dict[tuple[str, str], _Curve] = {
            ("train", "reward_margin"): _Curve(line(self.reward_plot, MARGIN_COLOR, None)),
            ("train", "chosen_reward"): _Curve(line(self.reward_plot, CHOSEN_COLOR, None, 1.5)),
            ("train", "rejected_reward"): _Curve(line(self.reward_plot, REJECTED_COLOR, None, 1.5)),
            ("train", "reward_accuracy"): _Curve(line(self.accuracy_plot, ACCURACY_COLOR, None)),
            ("eval", "reward_margin"): _Curve(dots(self.reward_plot, MARGIN_COLOR)),
            ("eval", "chosen_reward"): _Curve(dots(self.reward_plot, CHOSEN_COLOR)),
            ("eval", "rejected_reward"): _Curve(dots(self.reward_plot, REJECTED_COLOR)),
            ("eval", "reward_accuracy"): _Curve(dots(self.accuracy_plot, ACCURACY_COLOR)),
        }
        plots = QHBoxLayout()
        plots.setContentsMargins(0, 0, 0, 0)
        plots.addWidget(self.reward_plot)
        plots.addWidget(self.accuracy_plot)
        column.addLayout(plots, 1)
        return box

    def _plots(self) -> list[pg.PlotWidget]:
        return [self.loss_plot, self.lr_plot, self.grad_plot, self.reward_plot, self.accuracy_plot]

    def show_preference(self, shown: bool) -> None:
        """Show (a DPO run: its tab comes first and is selected) or hide (a supervised run) the reward and
        reward-accuracy plots."""
        index = self.lower_tabs.indexOf(self.preference_box)
        if shown and index < 0:
            self.lower_tabs.insertTab(0, self.preference_box, "Rewards · reward accuracy (DPO)")
            self.lower_tabs.setTabToolTip(0, "How the preference training goes: see the tooltips of the two plots")
            self.lower_tabs.setCurrentIndex(0)
        elif not shown and index >= 0:
            self.lower_tabs.removeTab(index)
            self.preference_box.setParent(self)  # kept (and its buffers) for the next DPO run
            self.preference_box.hide()

    @property
    def preference_shown(self) -> bool:
        """Whether the reward plots are part of the view (their tab is there)."""
        return self.lower_tabs.indexOf(self.preference_box) >= 0

    # -- data --------------------------------------------------------------------------------------
    def add_point(self, point: Any) -> None:
        """Add one metric point (MetricPoint, PreferencePoint or metrics.jsonl dict); the redraw follows within
        100 ms. The first preference point shows the reward plots."""
        if isinstance(point, PreferencePoint) or (isinstance(point, dict) and point.get("kind") == "preference"):
            self._add_preference(point)
            return
        kind = _field(point, "kind")
        step = _number(_field(point, "step"))
        if step is None:
            return
        epoch = _number(_field(point, "epoch"))
        if kind == "eval":
            value = _number(_field(point, "eval_loss"))
            if value is not None:
                self.eval_loss.buffer.append(step, epoch, value)
        elif kind == "train":
            loss = _number(_field(point, "loss"))
            if loss is not None:
                self.train_loss.buffer.append(step, epoch, loss)
            self._small_dirty = True
            lr = _number(_field(point, "learning_rate"))
            if lr is not None:
                self.learning_rate.buffer.append(step, epoch, lr)
            grad = _number(_field(point, "grad_norm"))
            if grad is not None:
                self.grad_norm.buffer.append(step, epoch, grad)
        else:
            return
        self._loss_dirty = True
        self.schedule_redraw()

    def _add_preference(self, point: Any) -> None:
        step = _number(_field(point, "step"))
        if step is None:
            return
        split = "eval" if _field(point, "split") == "eval" else "train"
        added = False
        for name in ("reward_margin", "chosen_reward", "rejected_reward", "reward_accuracy"):
            value = _number(_field(point, name))
            if value is not None:
                self.preference_curves[(split, name)].buffer.append(step, None, value)
                added = True
        if not added:
            return
        if not self.preference_shown:
            self.show_preference(True)
        self._small_dirty = True
        self.schedule_redraw()

    def add_points(self, points) -> None:
        """Add many points (e.g. a reopened run's metrics.jsonl) with a single redraw."""
        for point in points:
            self.add_point(point)

    def clear(self) -> None:
        """Forget every point and marker (a new run starts)."""
        for curve in self._curves():
            curve.buffer.clear()
        self.checkpoint_steps = []
        self.best_step = self.early_stopped_step = None
        self._smoothed_upto = 0
        self.show_preference(False)
        self.redraw()

    def point_counts(self) -> dict[str, int]:
        """How many points each series holds (for tests and the status line)."""
        return {
            "train": self.train_loss.buffer.size,
            "eval": self.eval_loss.buffer.size,
            "learning_rate": self.learning_rate.buffer.size,
            "grad_norm": self.grad_norm.buffer.size,
        }

    def preference_counts(self) -> dict[str, int]:
        """How many points each DPO series holds: ``reward_margin``..., held-out ones as ``eval_reward_margin``..."""
        return {(name if split == "train" else f"eval_{name}"): curve.buffer.size
                for (split, name), curve in self.preference_curves.items()}

    def set_checkpoints(self, steps) -> None:
        """Mark the saved checkpoints (steps) on the loss curve."""
        steps = sorted({int(step) for step in steps})
        if steps != self.checkpoint_steps:
            self.checkpoint_steps = steps
            self._loss_dirty = True
            self.schedule_redraw()

    def set_run_markers(self, *, best_step: int | None, early_stopped_step: int | None) -> None:
        """Star the best evaluation (the best checkpoint) and mark where early stopping ended the run."""
        self.best_step = None if best_step is None else int(best_step)
        self.early_stopped_step = None if early_stopped_step is None else int(early_stopped_step)
        self._loss_dirty = True
        self.schedule_redraw()

    def _to_axis(self, steps: np.ndarray) -> np.ndarray:
        """Steps -> x values of the current axis (epochs are interpolated from the train points)."""
        if self.x_axis == "step":
            return steps
        buffer = self.train_loss.buffer
        epochs = buffer.x("epoch")
        ok = np.isfinite(epochs)
        if not ok.any():
            return np.full(len(steps), np.nan)
        return np.interp(steps, buffer.x("step")[ok], epochs[ok])

    def _loss_at(self, steps: np.ndarray) -> np.ndarray:
        """The drawn (smoothed) train loss at ``steps``; the eval loss when there is no train point yet."""
        train = self.train_loss.buffer
        if train.size:
            ys = self._smoothed_train() if self.smoothing > 0 else train.values
            return np.interp(steps, train.x("step"), ys)
        evals = self.eval_loss.buffer
        if evals.size:
            return np.interp(steps, evals.x("step"), evals.values)
        return np.full(len(steps), np.nan)

    def _draw_markers(self) -> None:
        if self.checkpoint_steps and (self.train_loss.buffer.size or self.eval_loss.buffer.size):
            steps = np.asarray(self.checkpoint_steps, dtype=np.float64)
            self._checkpoint_item.setData(self._to_axis(steps), self._loss_at(steps),
                                          data=[int(s) for s in self.checkpoint_steps])
        else:
            self._checkpoint_item.setData([], [])
        evals = self.eval_loss.buffer
        best = None
        if self.best_step is not None and evals.size:
            matches = np.nonzero(evals.x("step") == self.best_step)[0]
            if len(matches):
                best = (float(evals.x(self.x_axis)[matches[-1]]), float(evals.values[matches[-1]]))
        self._best_item.setData([best[0]] if best else [], [best[1]] if best else [])
        if self.early_stopped_step is not None:
            x = float(self._to_axis(np.asarray([float(self.early_stopped_step)]))[0])
            # Visible first: pyqtgraph's label ignores text changes while its line is hidden.
            self._early_line.setVisible(math.isfinite(x))
            self._early_line.setValue(x)
            self._early_line.label.setFormat(f"stopped early at step {self.early_stopped_step}")
        else:
            self._early_line.setVisible(False)

    def step_near(self, x: float, y: float | None = None) -> int | None:
        """The training step of the loss point or checkpoint marker nearest ``(x, y)`` (view coordinates)."""
        found = self.nearest_point(x, y)
        candidates = []
        if found is not None:
            name, px, _py = found
            curve = self.train_loss if name == "train loss" else self.eval_loss
            xs = curve.buffer.x(self.x_axis)
            index = int(np.argmin(np.abs(xs - px)))
            candidates.append((abs(px - x), int(curve.buffer.x("step")[index])))
        if self.checkpoint_steps:
            marks = self._to_axis(np.asarray(self.checkpoint_steps, dtype=np.float64))
            index = int(np.nanargmin(np.abs(marks - x))) if np.isfinite(marks).any() else None
            if index is not None:
                # A marker wins when it is at least as close as the nearest data point.
                candidates.append((abs(marks[index] - x) - 1e-9, self.checkpoint_steps[index]))
        return min(candidates)[1] if candidates else None

    def _on_mouse_clicked(self, event) -> None:
        if event.button() != Qt.MouseButton.LeftButton or event.double():
            return
        plot_item = self.loss_plot.getPlotItem()
        if not plot_item.vb.sceneBoundingRect().contains(event.scenePos()):
            return
        mapped = plot_item.vb.mapSceneToView(event.scenePos())
        step = self.step_near(mapped.x(), mapped.y())
        if step is not None:
            self.stepClicked.emit(step)

    def _curves(self) -> list[_Curve]:
        return [self.train_loss, self.eval_loss, self.learning_rate, self.grad_norm,
                *self.preference_curves.values()]

    # -- drawing -----------------------------------------------------------------------------------
    def schedule_redraw(self) -> None:
        """Coalesce: many points within 100 ms cause one redraw."""
        if not self._timer.isActive():
            self._timer.start()

    def flush(self) -> None:
        """Do a pending redraw now (and stop the redraw timer): before closing, or for a screenshot."""
        if self._timer.isActive():
            self.redraw()

    def set_x_axis(self, axis: str) -> None:
        """"step" or "epoch"."""
        if axis not in ("step", "epoch"):
            raise ValueError(f"unknown x axis {axis!r}")
        self.x_axis = axis
        for radio, name in ((self._step_radio, "step"), (self._epoch_radio, "epoch")):
            radio.blockSignals(True)
            radio.setChecked(name == axis)
            radio.blockSignals(False)
        self._update_axis_labels()
        self.redraw()
        for plot in self._plots():
            plot.enableAutoRange(axis="x" if plot is self.accuracy_plot else None)

    def set_smoothing(self, weight: float) -> None:
        """EMA weight in [0, 0.99]; 0 shows the raw training loss only."""
        self._smooth_slider.setValue(int(round(max(0.0, min(0.99, weight)) * 100)))

    def _on_smoothing_changed(self, value: int) -> None:
        self.smoothing = value / 100.0
        self._smoothed_upto = 0  # the whole smoothed curve changes
        self._loss_dirty = True
        self._update_smooth_label()
        self.schedule_redraw()

    def _update_smooth_label(self) -> None:
        self._smooth_label.setText(f"{self.smoothing:.2f}" if self.smoothing else "off")

    def _update_axis_labels(self) -> None:
        text = "epoch" if self.x_axis == "epoch" else "step"
        for plot in self._plots():
            plot.setLabel("bottom", text)
            plot.getAxis("bottom").integer = self.x_axis == "step"

    def _fit_x_range(self) -> None:
        """A sane x range from the first point: at least 0..(last step + 1), never -400..400."""
        if self.x_axis != "step":
            return
        steps = [buffer.x("step") for buffer in (self.train_loss.buffer, self.eval_loss.buffer) if buffer.size]
        if not steps:
            return
        top = float(max(np.nanmax(x) for x in steps))
        if top < 10:  # few points: pin the range; later pyqtgraph's auto range does well
            self._x_pinned = True
            for plot in self._plots():
                plot.setXRange(0, max(top, 1) + 1, padding=0.02)
        elif getattr(self, "_x_pinned", False):
            self._x_pinned = False
            for plot in self._plots():
                plot.enableAutoRange(axis="x", enable=True)

    def _smoothed_train(self) -> np.ndarray:
        values = self.train_loss.buffer.values
        self._smoothed = ema(values, self.smoothing, start=min(self._smoothed_upto, len(values)),
                             out=self._smoothed)
        self._smoothed_upto = len(values)
        return self._smoothed[: len(values)]

    def _live_redraw(self) -> None:
        small_due = time.monotonic() - self._small_plots_drawn_at >= SMALL_PLOTS_INTERVAL_S
        if self._loss_dirty or (self._small_dirty and small_due):
            self.redraw(small_plots=small_due)
        if self._small_dirty:
            self.schedule_redraw()  # the small plots catch up within SMALL_PLOTS_INTERVAL_S

    def redraw(self, small_plots: bool = True) -> None:
        """Push the buffers to the plot items (setData); pyqtgraph clips and downsamples on paint.

        ``small_plots=False`` updates only the loss plot (live redraws use it to spare the slowly
        changing learning-rate and gradient-norm plots)."""
        self._timer.stop()
        axis = self.x_axis
        train = self.train_loss.buffer
        for item, n in ((self.train_loss.item, train.size), (self._train_raw_item, train.size),
                        (self.learning_rate.item, self.learning_rate.buffer.size),
                        (self.grad_norm.item, self.grad_norm.buffer.size)):
            set_dense(item, n)
        if self.smoothing > 0 and train.size:
            self.train_loss.item.setData(train.x(axis), self._smoothed_train())
            self._train_raw_item.setData(train.x(axis), train.values)
            self._train_raw_item.setVisible(True)
        else:
            self.train_loss.item.setData(train.x(axis), train.values)
            self._train_raw_item.setVisible(False)
        self.eval_loss.item.setData(self.eval_loss.buffer.x(axis), self.eval_loss.buffer.values)
        self._draw_markers()
        self._loss_dirty = False
        if small_plots:
            self._small_plots_drawn_at = time.monotonic()
            self._small_dirty = False
            for curve in (self.learning_rate, self.grad_norm):
                curve.item.setData(curve.buffer.x(axis), curve.buffer.values)
            for curve in self.preference_curves.values():
                # Preference logs carry no epoch: their x comes from the steps (interpolated on the epoch axis).
                steps = curve.buffer.x("step")
                curve.item.setData(self._to_axis(steps) if axis == "epoch" else steps, curve.buffer.values)
        has_data = train.size > 0 or self.eval_loss.buffer.size > 0
        self._empty_text.setVisible(not has_data)
        if has_data:
            self._fit_x_range()
        self.redraw_count += 1
        self.redrawn.emit()

    # -- hover read-out ----------------------------------------------------------------------------
    def nearest_point(self, x: float, y: float | None = None) -> tuple[str, float, float] | None:
        """The data point closest to ``x`` (and ``y`` as a tie-break) among train and eval loss.

        Returns (series name, x, y) or None when there is no data. Distances are measured in screen
        proportions of the current view so that x and y count equally.
        """
        axis = self.x_axis
        view = self.loss_plot.getViewBox().viewRange()
        span_x = max(view[0][1] - view[0][0], 1e-12)
        span_y = max(view[1][1] - view[1][0], 1e-12)
        best = None
        for name, curve in (("train loss", self.train_loss), ("eval loss", self.eval_loss)):
            xs = curve.buffer.x(axis)
            if not len(xs):
                continue
            ys = self._smoothed_train() if (curve is self.train_loss and self.smoothing > 0) else curve.buffer.values
            # Nearest in x by binary search (x is increasing within a run), then compare the neighbours.
            index = int(np.searchsorted(xs, x))
            for i in (index - 1, index):
                if 0 <= i < len(xs) and math.isfinite(xs[i]):
                    dx = (xs[i] - x) / span_x
                    dy = 0.0 if y is None else (ys[i] - y) / span_y
                    distance = dx * dx + dy * dy
                    if best is None or distance < best[0]:
                        best = (distance, name, float(xs[i]), float(ys[i]))
        return None if best is None else best[1:]

    def _on_mouse_moved(self, position) -> None:
        plot_item = self.loss_plot.getPlotItem()
        if not plot_item.sceneBoundingRect().contains(position):
            return
        mapped = plot_item.vb.mapSceneToView(position)
        found = self.nearest_point(mapped.x(), mapped.y())
        if found is None:
            self._hover_marker.setData([], [])
            return
        name, x, y = found
        self._hover_marker.setData([x], [y])
        unit = "epoch" if self.x_axis == "epoch" else "step"
        x_text = f"{x:.2f}" if self.x_axis == "epoch" else f"{x:.0f}"
        self.readout.setText(f"{name}: {y:.4f} at {unit} {x_text}")
