"""Live plots: buffers, coalesced redraws, smoothing, hover read-out, and 100k-point redraw speed."""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from core.metrics import MetricPoint  # noqa: E402
from gui.widgets.plots import SeriesBuffer, TrainingPlots, ema  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture()
def plots(qtbot):
    widget = TrainingPlots()
    widget.resize(1000, 700)
    qtbot.addWidget(widget)
    return widget


def test_buffer_grows_by_doubling():
    buffer = SeriesBuffer(capacity=4)
    for i in range(9):
        buffer.append(i, i / 10, float(i))
    assert buffer.size == 9 and buffer.capacity == 16
    assert buffer.values.tolist() == [float(i) for i in range(9)]
    buffer.extend(np.arange(9, 40.0), np.arange(9, 40.0) / 10, np.arange(9, 40.0))
    assert buffer.size == 40 and buffer.capacity == 64
    assert buffer.x("epoch")[-1] == pytest.approx(3.9)


def test_ema_incremental_equals_full():
    values = np.random.default_rng(0).random(500) + 1
    full = ema(values, 0.8)[:500].copy()
    out = ema(values[:200], 0.8)
    out = ema(values, 0.8, start=200, out=out)
    np.testing.assert_allclose(out[:500], full)
    assert full[0] == pytest.approx(values[0])  # debiased: starts at the first value, not near 0
    assert ema(values, 0.0)[:500].tolist() == values.tolist()


def test_points_are_coalesced_into_few_redraws(plots, qtbot):
    start = plots.redraw_count
    plots.add_point(MetricPoint(kind="eval", step=0, eval_loss=3.0, epoch=0.0))
    for step in range(1, 51):
        plots.add_point(MetricPoint(kind="train", step=step, loss=3.0 - step / 50, learning_rate=1e-4,
                                    grad_norm=1.0, epoch=step / 50))
    with qtbot.waitSignal(plots.redrawn, timeout=10000):
        pass
    assert plots.redraw_count - start == 1
    assert plots.point_counts() == {"train": 50, "eval": 1, "learning_rate": 50, "grad_norm": 50}
    x, y = plots.eval_loss.item.getData()
    assert x.tolist() == [0.0] and y.tolist() == [3.0]  # the step-0 eval is drawn as a marker


def test_epoch_axis_and_metrics_file_dicts(plots):
    plots.add_points([{"kind": "train", "step": 1, "epoch": 0.5, "loss": 2.0, "learning_rate": "nan"},
                      {"kind": "status", "state": "running", "message": "x"},
                      {"kind": "eval", "step": 2, "epoch": 1.0, "eval_loss": 1.5}])
    plots.set_x_axis("epoch")
    assert plots.eval_loss.item.getData()[0].tolist() == [1.0]
    assert plots.point_counts()["learning_rate"] == 0  # "nan" strings from metrics.jsonl are skipped
    plots.set_x_axis("step")
    assert plots.eval_loss.item.getData()[0].tolist() == [2.0]


def test_hover_finds_the_nearest_point(plots):
    for step in range(0, 11):
        plots.add_point(MetricPoint(kind="train", step=step, loss=float(10 - step)))
    plots.add_point(MetricPoint(kind="eval", step=5, eval_loss=20.0))
    plots.set_smoothing(0)
    plots.redraw()
    plots.loss_plot.getViewBox().setRange(xRange=(0, 10), yRange=(0, 20), padding=0)
    assert plots.nearest_point(4.2, 6.0) == ("train loss", 4.0, 6.0)
    assert plots.nearest_point(5.1, 19.0) == ("eval loss", 5.0, 20.0)


def test_smoothing_slider_draws_smoothed_and_raw_curves(plots):
    for step in range(1, 21):
        plots.add_point(MetricPoint(kind="train", step=step, loss=float(step % 2)))
    plots.set_smoothing(0.9)
    plots.redraw()
    smoothed = plots.train_loss.item.getData()[1]
    assert np.ptp(smoothed[5:]) < 0.5  # a 0/1 zig-zag is flattened
    assert plots._train_raw_item.isVisible()
    plots.set_smoothing(0)
    plots.redraw()
    assert plots.train_loss.item.getData()[1].tolist() == [float(s % 2) for s in range(1, 21)]
    assert not plots._train_raw_item.isVisible()


def test_redraw_of_100k_points_downsamples(plots, qtbot):
    plots.show()
    qtbot.waitExposed(plots)
    n = 100_000
    steps = np.arange(1, n + 1, dtype=float)
    rng = np.random.default_rng(1)
    loss = 0.5 + 2.5 * np.exp(-steps / 20_000) + 0.15 * rng.standard_normal(n)  # a realistic noisy curve
    for curve, values in ((plots.train_loss, loss), (plots.learning_rate, 2e-4 * (1 - steps / n)),
                          (plots.grad_norm, 1 + 0.3 * rng.random(n))):
        curve.buffer.extend(steps, steps / 10_000, values)
    plots.redraw()  # first smoothing pass over the 100k points
    qtbot.wait(50)  # let the view auto-range to the data, so the paint below clips/downsamples for real
    plots.repaint()
    view = plots.loss_plot.getViewBox().viewRange()
    assert view[0][1] > 90_000  # the whole run is in view: the worst case
    set_data, full = [], []
    for i in range(5):
        step = n + 1 + i
        plots.add_point(MetricPoint(kind="train", step=step, loss=0.6, learning_rate=1e-5, grad_norm=1.0))
        started = time.perf_counter()
        plots.redraw()
        middle = time.perf_counter()
        plots.loss_plot.viewport().repaint()  # synchronous paint of the 100k-point loss plot
        ended = time.perf_counter()
        drawn = len(plots.train_loss.item.curve.xData)
        set_data.append((middle - started) * 1000)
        full.append((ended - started) * 1000)
    print(f"\n100k points: redraw (setData x4) median {statistics.median(set_data):.1f} ms, "
          f"redraw + paint of the loss plot median {statistics.median(full):.1f} ms ({drawn} points drawn after "
          f"peak downsampling)")
    # The mechanic that makes it fast: peak downsampling draws a fraction of the points, dense curves are
    # thin and not antialiased. The milliseconds themselves are measured by `python -m bench gui`.
    assert drawn < n / 10
    assert plots.train_loss.item.opts["antialias"] is False


def test_one_point_gives_an_integer_step_axis_and_a_sane_range(plots, qtbot):
    plots.show()
    qtbot.waitExposed(plots)
    plots.add_point(MetricPoint(kind="train", step=1, epoch=0.01, loss=2.5, learning_rate=1e-4, grad_norm=1.0))
    plots.redraw()
    low, high = plots.loss_plot.getPlotItem().vb.viewRange()[0]
    assert low >= -0.5 and 1 < high <= 3  # not -400..400
    axis = plots.loss_plot.getAxis("bottom")
    assert axis.labelUnitPrefix == "" and not axis.autoSIPrefix  # no "(x0.001)"
    ticks = [v for _, values in axis.tickValues(low, high, 600) for v in values]
    assert ticks and all(float(v).is_integer() for v in ticks)
    # The legend is a row of widgets above the plot: nothing is drawn over the curves.
    assert plots.loss_plot.getPlotItem().legend is None
    texts = [w.text() for w in plots.findChildren(type(plots.readout))]
    assert "held-out loss" in texts and "best checkpoint" in texts
