"""Token-length histogram: bars (pyqtgraph BarGraphItem) and a vertical max-length line."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QWidget

from gui import theme


class LengthHistogram(pg.PlotWidget):
    """Shows how many examples have each length; bars past max_length are tinted."""

    def __init__(self, parent: QWidget | None = None):
        colors = theme.colors()
        super().__init__(parent=parent, background=colors["plot_bg"])
        self.lengths = np.zeros(0, dtype=np.int64)
        self.max_length = 256
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
        self.addItem(self.bars_within)
        self.addItem(self.bars_over)
        self.limit_line = pg.InfiniteLine(pos=self.max_length, angle=90,
                                          pen=pg.mkPen(colors["line"], width=2, style=pg.QtCore.Qt.PenStyle.DashLine),
                                          label="max length {value:.0f}",
                                          labelOpts={"position": 0.9, "color": colors["line"], "movable": False})
        self.addItem(self.limit_line)

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

    def _redraw(self) -> None:
        self.limit_line.setValue(self.max_length)
        if self.lengths.size == 0:
            self.bars_within.setOpts(x=[], height=[], width=1)
            self.bars_over.setOpts(x=[], height=[], width=1)
            return
        top = max(int(self.lengths.max()), self.max_length) + 1
        bins = min(60, max(10, top // 4))
        edges = np.linspace(0, top, bins + 1)
        counts, edges = np.histogram(self.lengths, bins=edges)
        centers = (edges[:-1] + edges[1:]) / 2
        width = float(edges[1] - edges[0]) * 0.9
        over = centers > self.max_length
        self.bars_within.setOpts(x=centers[~over], height=counts[~over], width=width)
        self.bars_over.setOpts(x=centers[over], height=counts[over], width=width)
        self.getPlotItem().setXRange(0, top, padding=0.02)
        self.getPlotItem().setYRange(0, max(1, int(counts.max())) * 1.1, padding=0)
