"""GUI measurements (offscreen Qt): window launch, event-loop stalls during real training, plot redraw.

Each function runs in its own subprocess (started by ``bench.run``), with ``QT_QPA_PLATFORM=offscreen``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------ launch
def launch(python: str, *, preimport_torch: bool = False, repeats: int = 3) -> dict:
    """Seconds from spawning ``python main.py`` to the first paint of the main window.

    ``main.py --startup-report FILE`` writes FILE from the window's first paint event; its modification
    time minus the spawn time is launch-to-first-paint including interpreter start-up. With
    ``preimport_torch`` torch+transformers are imported first: the cost the lazy imports avoid.
    """
    results = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            report = Path(tmp) / "startup.json"
            argv = ["main.py", "--screenshot", str(Path(tmp) / "shot.png"), "--no-autoload",
                    "--startup-report", str(report), "--wait", "5"]
            code = ("import sys, runpy; "
                    + ("import torch, transformers; " if preimport_torch else "")
                    + f"sys.argv = {argv!r}; runpy.run_path('main.py', run_name='__main__')")
            env = dict(os.environ, QT_QPA_PLATFORM="offscreen", FINETUNE_STUDIO_HOME=str(Path(tmp) / "home"))
            spawned = time.time()
            proc = subprocess.run([python, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=180)
            if not report.exists():
                raise RuntimeError(f"no startup report (rc {proc.returncode}): {proc.stderr[-2000:]}")
            import json

            data = json.loads(report.read_text())
            results.append({"seconds_to_first_paint": round(report.stat().st_mtime - spawned, 3),
                            "in_app_seconds": data.get("seconds_to_first_paint"),
                            "torch_imported_at_first_paint": data.get("torch_imported_at_first_paint")})
    best = min(r["seconds_to_first_paint"] for r in results)
    return {"preimport_torch": preimport_torch, "runs": results, "best_seconds": best,
            "median_seconds": statistics.median(r["seconds_to_first_paint"] for r in results)}


# ------------------------------------------------------------------------------------------ stalls
class _Probe:
    """A 5 ms QTimer on the GUI thread; the gaps between its ticks are the event-loop stalls."""

    def __init__(self, interval_ms: int = 5):
        from PySide6.QtCore import Qt, QTimer

        self.interval = interval_ms / 1000
        self.ticks: list[float] = []
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))

    def start(self) -> None:
        self.ticks.append(time.perf_counter())
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()

    def gaps_ms(self, start: float | None = None, end: float | None = None) -> list[float]:
        ticks = [t for t in self.ticks if (start is None or t >= start) and (end is None or t <= end)]
        return [(b - a) * 1000 for a, b in zip(ticks, ticks[1:], strict=False)]


def _stats(gaps: list[float]) -> dict:
    if not gaps:
        return {"ticks": 0}
    ordered = sorted(gaps)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return {"ticks": len(gaps), "max_gap_ms": round(ordered[-1], 1), "p99_gap_ms": round(p99, 1),
            "median_gap_ms": round(statistics.median(ordered), 2),
            "gaps_over_100ms": sum(1 for g in gaps if g > 100), "gaps_over_30ms": sum(1 for g in gaps if g > 30)}


def training_stalls(model: str, workdir: str, *, max_steps: int, eval_steps: int, switch_interval: float | None = None,
                    plot_grid: bool = True, torch_threads: int | None = None, timeout_s: float = 480.0) -> dict:
    """Start a real run from the Train page (its TrainingController and live plots) and probe the GUI
    thread every 5 ms. ``model``: "tiny" (the tests' tiny GPT-NeoX) or "smollm2" (the bundled model).
    Reported for the whole run (libraries import included) and for the training phase alone (first
    metric point to the end). ``switch_interval`` overrides gui.workers.TRAINING_SWITCH_INTERVAL; ``plot_grid=False`` turns the plots' grid lines off and
    ``torch_threads`` limits torch's intra-op threads (alternatives measured against the defaults)."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ["FINETUNE_STUDIO_HOME"] = str(Path(workdir) / "home")
    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    class TimedApplication(QApplication):
        """Records every top-level event delivery on the GUI thread that takes > 10 ms (what it was
        for), so each long gap of the probe can be attributed to GUI-thread work or not."""

        def __init__(self, argv):
            super().__init__(argv)
            self.depth = 0
            self.slow: list[tuple[float, float, str, str]] = []

        def notify(self, receiver, event):
            if self.depth:
                return super().notify(receiver, event)
            self.depth += 1
            started = time.perf_counter()
            try:
                return super().notify(receiver, event)
            finally:
                self.depth -= 1
                took = time.perf_counter() - started
                if took > 0.010:
                    self.slow.append((started, took, type(receiver).__name__, str(event.type()).split(".")[-1]))

    app = QApplication.instance() or TimedApplication([])
    from core.config import RunConfig
    from gui import workers
    from gui.pages.train_page import TrainPage
    from gui.state import StudioState

    if switch_interval is not None:
        workers.TRAINING_SWITCH_INTERVAL = switch_interval
    cfg = RunConfig()
    if model == "tiny":
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny import make_tiny_model

        # Built before the probe starts (it imports torch here, on purpose outside the measurement).
        cfg.model.name_or_path = str(make_tiny_model(Path(workdir) / "tiny-model"))
        import torch  # noqa: F401  (already imported by make_tiny_model)
    cfg.training.max_steps = max_steps
    cfg.training.eval_steps = eval_steps
    cfg.training.save_steps = eval_steps
    cfg.data.source = "sample:trivia"
    state = StudioState(cfg, workspace=Path(workdir) / "workspace")
    page = TrainPage(state, preload_delay_ms=None)
    if not plot_grid:
        for plot in (page.plots.loss_plot, page.plots.lr_plot, page.plots.grad_plot):
            plot.showGrid(x=False, y=False)
    if torch_threads:
        import torch

        torch.set_num_threads(torch_threads)
    page.resize(1280, 800)
    page.show()
    app.processEvents()

    marks: dict[str, float] = {}
    points = []
    statuses: list[tuple[float, str]] = []
    page.controller.metricReceived.connect(
        lambda p: (marks.setdefault("first_metric", time.perf_counter()), points.append(p)))
    page.controller.statusReceived.connect(lambda e: statuses.append((time.perf_counter(), e.message)))
    page.controller.metricReceived.connect(
        lambda p: statuses.append((time.perf_counter(), f"{p.kind} point step {p.step}")))
    loop = QEventLoop()
    ended: list = []
    page.runEnded.connect(lambda outcome: (ended.append(outcome), loop.quit()))
    probe = _Probe()
    probe.start()
    marks["start"] = time.perf_counter()
    if not page.start():
        raise RuntimeError(f"the Train page refused to start: {page.problems()}")
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    loop.exec()
    marks["end"] = time.perf_counter()
    probe.stop()
    page.shutdown(60000)
    deadline = time.monotonic() + 60
    while workers.running_threads() and time.monotonic() < deadline:
        app.processEvents()
        time.sleep(0.01)
    outcome = ended[0] if ended else "timeout"
    train_phase = _stats(probe.gaps_ms(marks.get("first_metric"), marks["end"]))
    # Attribute every gap > 30 ms: GUI-thread events overlapping it, and the last status/metric before it.
    slow = getattr(app, "slow", [])
    long_gaps = []
    ticks = probe.ticks
    for a, b in zip(ticks, ticks[1:], strict=False):
        if (b - a) * 1000 > 30:
            overlapping = [f"{name}/{kind} {took * 1000:.0f} ms" for at, took, name, kind in slow
                           if at < b and at + took > a]
            before = [message for at, message in statuses if at <= a]
            long_gaps.append({"at_s": round(a - marks["start"], 2), "gap_ms": round((b - a) * 1000, 1),
                              "phase": "training" if a >= marks.get("first_metric", float("inf")) else "loading",
                              "gui_thread_events": overlapping[:4],
                              "after": before[-1][:80] if before else "start"})
    return {"model": model, "max_steps": max_steps, "eval_steps": eval_steps, "plot_grid": plot_grid,
            "torch_threads": torch_threads,
            "switch_interval": switch_interval or workers.TRAINING_SWITCH_INTERVAL,
            "outcome": type(outcome).__name__ if not isinstance(outcome, str) else outcome,
            "outcome_text": str(getattr(outcome, "message", outcome))[:300],
            "metric_points": len(points), "run_seconds": round(marks["end"] - marks["start"], 2),
            "whole_run": _stats(probe.gaps_ms()), "training_phase": train_phase, # The 40 longest (the loading phase alone can have more than 40 gaps > 30 ms).
            "long_gaps": sorted(long_gaps, key=lambda g: -g["gap_ms"])[:40]}


# ------------------------------------------------------------------------------------------ plot redraw
def _plot_times(app, n_points: int, repeats: int, grid: bool) -> dict:
    import numpy as np

    from gui.widgets.plots import TrainingPlots

    plots = TrainingPlots()
    plots.resize(900, 600)
    plots.show()
    if not grid:  # the alternative measured: no grid lines (the axes' grid is most of the paint time)
        for plot in (plots.loss_plot, plots.lr_plot, plots.grad_plot):
            plot.showGrid(x=False, y=False)
    app.processEvents()
    steps = np.arange(n_points, dtype=float)
    epochs = steps / 1000
    rng = np.random.default_rng(0)
    loss = 3 * np.exp(-steps / 20000) + 0.1 * rng.standard_normal(n_points)
    plots.train_loss.buffer.extend(steps, epochs, loss)
    plots.learning_rate.buffer.extend(steps, epochs, np.linspace(2e-4, 0, n_points))
    plots.grad_norm.buffer.extend(steps, epochs, np.abs(rng.standard_normal(n_points)))
    plots.eval_loss.buffer.extend(steps[::500], epochs[::500], loss[::500])

    def timed(fn) -> float:
        started = time.perf_counter()
        fn()
        return (time.perf_counter() - started) * 1000

    def full() -> None:  # setData of every curve and a forced repaint of the whole widget
        plots.redraw()
        plots.repaint()
        app.processEvents()

    def live() -> None:  # what a new training point costs: append, redraw, let Qt paint what changed
        step = float(plots.train_loss.buffer.size)
        plots.train_loss.buffer.append(step, step / 1000, 1.0)
        plots.redraw()
        app.processEvents()

    full()  # the first draw builds caches
    full_ms = [timed(full) for _ in range(repeats)]
    setdata_ms = [timed(plots.redraw) for _ in range(repeats)]
    live_ms = [timed(live) for _ in range(repeats)]
    return {"full_redraw_ms_median": round(statistics.median(full_ms), 2), "full_redraw_ms_max": round(max(full_ms), 2),
            "setdata_only_ms_median": round(statistics.median(setdata_ms), 2),
            "live_append_redraw_ms_median": round(statistics.median(live_ms), 2)}


def plot_redraw(n_points: int = 100_000, repeats: int = 10, grid: bool = True) -> dict:
    """Time to redraw the Train page's TrainingPlots holding ``n_points`` per series (train loss raw and
    smoothed, learning rate, gradient norm; eval every 500): ``redraw()`` (setData) plus the paint, as a
    forced full repaint and as a live update (one appended point). ``grid=False``: the alternative with
    the grid lines off. One widget per process (a second TrainingPlots after closing the first crashed
    PySide6 6.12 in pyqtgraph's ViewBox.updateMatrix here)."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    times = _plot_times(app, n_points, repeats, grid=grid)
    return {"points_per_series": n_points, "grid": grid, **times,
            "redraw_ms_median": times["full_redraw_ms_median"], "redraw_ms_max": times["full_redraw_ms_max"],
            "append_one_and_redraw_ms_median": times["live_append_redraw_ms_median"]}
