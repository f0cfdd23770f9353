"""The Qt binding must keep Python's refcounts right. PySide6 6.12.0 decrements None's refcount in pyqtgraph's
paint path (``boundingRect``): after a few hundred redraws None is deallocated and the process aborts or
segfaults anywhere (the random CI crashes in GUI tests). constraints.txt pins a release without the bug; this
test fails if an upgrade brings it back."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("pytestqt")

SCRIPT = r"""
import sys
from PySide6.QtWidgets import QApplication
import pyqtgraph as pg
app = QApplication([])
widget = pg.PlotWidget()
widget.resize(400, 300)
widget.show()
curve = widget.plot([1, 2, 3], [3, 2, 1], symbol="o")
before = sys.getrefcount(None)
for i in range(1500):
    curve.setData([1, 2, 3, i], [3, 2, 1, i])
    app.processEvents()
print(sys.getrefcount(None) - before)
"""


def test_redrawing_a_plot_does_not_release_none():
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]  # 6.12.0: "none_dealloc: deallocating None", SIGABRT
    assert int(result.stdout.strip().splitlines()[-1]) >= 0  # None never loses references it did not give
