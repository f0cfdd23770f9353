"""Token-length histogram: bars (pyqtgraph BarGraphItem), a vertical max-length line, and an overflow bar.

Real data has outliers (one 1,400-token answer among 40-token ones): the axis is clipped at the 99th
percentile (or max length, whichever is larger) and everything longer is drawn as one overflow bar at the
right edge, so the typical lengths stay readable. Clicking a bar emits the rows it holds.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Signal
from PySide6.QtWidgets import QWidget

from gui import theme


def clip_point(lengths: np.ndarray, max_length: int) -> int:
    """Where the axis stops: the 99th percentile of the lengths, at least max_length (and never past the max)."""
    if lengths.size == 0:
        return max_length
    p99 = int(np.percentile(lengths, 99))
    longest = int(lengths.max())
    return min(longest, max(p99, max_length))


class LengthHistogram(pg.PlotWidget):
    """Shows how many examples have each length; bars past max_length are tinted.

    ``barClicked(object)``: a dict ``{"low", "high", "indices"}`` for the clicked bar (indices into the
    lengths given to ``set_data``); the overflow bar has ``high = None``.
    """

    barClicked = Signal(object)

    def __init__(self, parent: QWidget | None = None):
        colors = theme.colors()
        super().__init__(parent=parent, background=colors["plot_bg"])
        self.lengths = np.zeros(0, dtype=np.int64)
        self.max_length = 256
        self.edges = np.zeros(0)
        self.clip_at: int | None = None  # lengths above this are in the overflow bar
        self.setMenuEnabled(False)
        self.setMouseEnabled(x=False, y=False)
        self.hideButtons()
        item = self.getPlotItem()
        item.setLabel("bottom", "tokens per example", color=colors["plot_fg"])
        item.setLabel("left", "examples", color=colors["plot_fg"])
        for axis in ("bottom", "left"):
            item.getAxis(axis).setTextPen(colors["plot_fg"])
            item.getAxis(axis).setPen(colors["plot_fg"])
        self.bars_within = pg.BarGraphItem(x=[], height=[], width=1, brush=colors["bar"], pen=None)
        self.bars_over = pg.BarGraphItem(x=[], height=[], width=1, brush=colors["bar_over"], pen=None)
        self.bar_overflow = pg.BarGraphItem(x=[], height=[], width=1, brush=colors["bar_over"],
                                            pen=pg.mkPen(colors["plot_fg"], width=1))
        self.overflow_label = pg.TextItem("", color=colors["plot_fg"], anchor=(1, 1))
        self.addItem(self.bars_within)
        self.addItem(self.bars_over)
        self.addItem(self.bar_overflow)
        self.addItem(self.overflow_label)
        self.limit_line = pg.InfiniteLine(pos=self.max_length, angle=90,
                                          pen=pg.mkPen(colors["line"], width=2, style=pg.QtCore.Qt.PenStyle.DashLine),
                                          label="max length {value:.0f}",
                                          labelOpts={"position": 0.9, "color": colors["line"], "movable": False})
        self.addItem(self.limit_line)
        self.scene().sigMouseClicked.connect(self._on_click)
        self.setToolTip("Click a bar to list its examples")

    @property
    def n_over(self) -> int:
        """Examples longer than max_length (they would be truncated)."""
        return int((self.lengths > self.max_length).sum())

    def set_data(self, lengths, max_length: int) -> None:
        """Redraw from the example lengths (full, before truncation)."""
        self.lengths = np.asarray(list(lengths), dtype=np.int64)
        self.max_length = int(max_length)
        self._redraw()

    def set_max_length(self, max_length: int) -> None:
        self.max_length = int(max_length)
        self._redraw()

    def clear_data(self) -> None:
        self.set_data([], self.max_length)

    def _redraw(self) -> None:
        self.limit_line.setValue(self.max_length)
        if self.lengths.size == 0:
            for bars in (self.bars_within, self.bars_over, self.bar_overflow):
                bars.setOpts(x=[], height=[], width=1)
            self.overflow_label.setText("")
            self.edges = np.zeros(0)
            self.clip_at = None
            self.getPlotItem().setXRange(0, self.max_length * 1.1, padding=0)
            self.getPlotItem().setYRange(0, 10, padding=0)  # a sane empty axis, not -400..400 (x0.001)
            return
        clip = clip_point(self.lengths, self.max_length)
        longest = int(self.lengths.max())
        self.clip_at = clip if longest > clip else None
        top = max(clip, self.max_length) + 1
        bins = min(60, max(10, top // 4))
        edges = np.linspace(0, top, bins + 1)
        self.edges = edges
        counts, _ = np.histogram(np.minimum(self.lengths, top - 1e-9) if self.clip_at is None
                                 else self.lengths[self.lengths <= clip], bins=edges)
        centers = (edges[:-1] + edges[1:]) / 2
        width = float(edges[1] - edges[0]) * 0.9
        over = centers > self.max_length
        self.bars_within.setOpts(x=centers[~over], height=counts[~over], width=width)
        self.bars_over.setOpts(x=centers[over], height=counts[over], width=width)
        tallest = int(counts.max()) if counts.size else 1
        right = top
        if self.clip_at is not None:
            n_overflow = int((self.lengths > clip).sum())
            x = top + width * 1.2
            self.bar_overflow.setOpts(x=[x], height=[n_overflow], width=width * 1.5)
            self.overflow_label.setText(f"{n_overflow} longer than {clip} (up to {longest})")
            self.overflow_label.setPos(x + width, max(tallest, n_overflow) * 1.08)
            tallest = max(tallest, n_overflow)
            right = x + width
        else:
            self.bar_overflow.setOpts(x=[], height=[], width=1)
            self.overflow_label.setText("")
        self.getPlotItem().setXRange(0, right, padding=0.02)
        self.getPlotItem().setYRange(0, max(1, tallest) * 1.15, padding=0)

    # -- clicks ------------------------------------------------------------------------------------
    def bar_at(self, x: float) -> dict | None:
        """The bar under data coordinate ``x``: its range and the indices of its examples."""
        if self.lengths.size == 0 or self.edges.size < 2:
            return None
        top = self.edges[-1]
        if self.clip_at is not None and x >= top:
            indices = np.nonzero(self.lengths > self.clip_at)[0]
            return {"low": self.clip_at + 1, "high": None, "indices": indices.tolist()}
        if x < 0 or x >= top:
            return None
        position = int(np.searchsorted(self.edges, x, side="right")) - 1
        low, high = self.edges[position], self.edges[position + 1]
        inside = (self.lengths >= low) & (self.lengths < high)
        if self.clip_at is not None:
            inside &= self.lengths <= self.clip_at
        return {"low": int(np.ceil(low)), "high": int(np.ceil(high)) - 1, "indices": np.nonzero(inside)[0].tolist()}

    def _on_click(self, event) -> None:
        if not self.sceneBoundingRect().contains(event.scenePos()):
            return
        point = self.getPlotItem().vb.mapSceneToView(event.scenePos())
        bar = self.bar_at(point.x())
        if bar is not None and bar["indices"]:
            self.barClicked.emit(bar)
