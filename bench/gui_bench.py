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
        return [(b - a) * 1000 for a, b in zip(ticks, ticks[1:])]


def _stats(gaps: list[float]) -> dict:
    if not gaps:
        return {"ticks": 0}
    ordered = sorted(gaps)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return {"ticks": len(gaps), "max_gap_ms": round(ordered[-1], 1), "p99_gap_ms": round(p99, 1),
            "median_gap_ms": round(statistics.median(ordered), 2),
            "gaps_over_100ms": sum(1 for g in gaps if g > 100), "gaps_over_30ms": sum(1 for g in gaps if g > 30)}


def training_stalls(model: str, workdir: str, *, max_steps: int, eval_steps: int, switch_interval: float | None = None,
                    timeout_s: float = 480.0) -> dict:
    """Start a real run from the Train page (its TrainingController and live plots) and probe the GUI
    thread every 5 ms. ``model``: "tiny" (the tests' tiny GPT-NeoX) or "smollm2" (the bundled model).
    Reported for the whole run (libraries import included) and for the training phase alone (first
    metric point to the end). ``switch_interval`` overrides gui.workers.TRAINING_SWITCH_INTERVAL."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ["FINETUNE_STUDIO_HOME"] = str(Path(workdir) / "home")
    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
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
    page.resize(1280, 800)
    page.show()
    app.processEvents()

    marks: dict[str, float] = {}
    points = []
    page.controller.metricReceived.connect(
        lambda p: (marks.setdefault("first_metric", time.perf_counter()), points.append(p)))
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
    outcome = ended[0] if ended else "timeout"
    train_phase = _stats(probe.gaps_ms(marks.get("first_metric"), marks["end"]))
    return {"model": model, "max_steps": max_steps, "eval_steps": eval_steps,
            "switch_interval": switch_interval or workers.TRAINING_SWITCH_INTERVAL,
            "outcome": type(outcome).__name__ if not isinstance(outcome, str) else outcome,
            "outcome_text": str(getattr(outcome, "message", outcome))[:300],
            "metric_points": len(points), "run_seconds": round(marks["end"] - marks["start"], 2),
            "whole_run": _stats(probe.gaps_ms()), "training_phase": train_phase}


# ------------------------------------------------------------------------------------------ plot redraw
def plot_redraw(n_points: int = 100_000, repeats: int = 10) -> dict:
    """Time to redraw the Train page's TrainingPlots holding ``n_points`` per series: the widget's
    redraw() (setData of every curve) plus a synchronous repaint, the way a live update reaches the
    screen. Also one appended point + redraw (the live case)."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import numpy as np
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    from gui.widgets.plots import TrainingPlots

    plots = TrainingPlots()
    plots.resize(900, 600)
    plots.show()
    app.processEvents()
    steps = np.arange(n_points, dtype=float)
    epochs = steps / 1000
    rng = np.random.default_rng(0)
    loss = 3 * np.exp(-steps / 20000) + 0.1 * rng.standard_normal(n_points)
    plots.train_loss.buffer.extend(steps, epochs, loss)
    plots.learning_rate.buffer.extend(steps, epochs, np.linspace(2e-4, 0, n_points))
    plots.grad_norm.buffer.extend(steps, epochs, np.abs(rng.standard_normal(n_points)))
    plots.eval_loss.buffer.extend(steps[::500], epochs[::500], loss[::500])

    def once() -> float:
        started = time.perf_counter()
        plots.redraw()
        plots.repaint()
        app.processEvents()
        return (time.perf_counter() - started) * 1000

    once()  # first draw builds caches
    full = [once() for _ in range(repeats)]
    live = []
    for i in range(repeats):
        step = float(n_points + i)
        plots.train_loss.buffer.append(step, step / 1000, 1.0)
        live.append(once())
    return {"points_per_series": n_points, "redraw_ms_median": round(statistics.median(full), 2),
            "redraw_ms_max": round(max(full), 2), "append_one_and_redraw_ms_median": round(statistics.median(live), 2),
            "smoothing": plots.smoothing}
