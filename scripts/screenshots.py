"""Take the README's screenshots on a real run: every page mid-run and after the run, at 1280×800.

    QT_QPA_PLATFORM=offscreen .venv/bin/python scripts/screenshots.py [--out docs/screenshots] [--model M]
        [--steps 10] [--size 1280x800]

Uses the bundled model and the trivia sample unless told otherwise, in a temporary workspace (nothing of
the user's is touched). Takes a few minutes on a CPU: it trains, chats and evaluates for real.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    parser.add_argument("--model", default=None, help="model (default: the bundled SmolLM2)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", default="1280x800")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    from core.config import RunConfig
    from gui import theme
    from gui.main_window import MainWindow
    from gui.state import StudioState

    theme.apply_theme(app, "light")
    cfg = RunConfig(name="tour")
    if args.model:
        cfg.model.name_or_path = args.model
    cfg.data.source = "sample:trivia"
    t = cfg.training
    t.max_steps, t.batch_size, t.max_length = args.steps, 4, 256
    t.eval_steps, t.save_steps, t.logging_steps = max(1, args.steps // 2), max(1, args.steps // 2), 1
    workspace = Path(tempfile.mkdtemp(prefix="studio-tour-"))
    state = StudioState(cfg, workspace=workspace)
    window = MainWindow(state, autoload=False, restore=False)
    window.resize(width, height)
    window.show()

    def pump(seconds: float = 0.2) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            app.processEvents()
            time.sleep(0.01)

    def wait(condition, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > end:
                raise SystemExit(f"timed out waiting for {what}")
            pump(0.05)

    def shot(name: str, page: str) -> None:
        window.show_page(page)
        pump(0.5)
        path = out / f"{name}.png"
        window.grab().save(str(path))
        print(f"wrote {path}")

    data = window.pages["data"]
    data.load_source("sample:trivia")
    wait(lambda: not data.is_busy and data.analysis is not None, 600, "the data analysis")
    shot("data", "data")
    model = window.pages["model"]
    activate = getattr(model, "activate", None)
    if callable(activate):
        activate()
        wait(lambda: not getattr(model, "is_busy", False), 600, "the model facts")
    shot("model", "model")

    train = window.pages["train"]
    window.show_page("train")
    train.start()
    wait(lambda: train.plots.point_counts().get("train", 0) >= max(2, args.steps // 3), 1800, "training points")
    shot("train-midrun", "train")
    finished: list = []
    train.runEnded.connect(finished.append)
    wait(lambda: bool(finished), 3600, "the end of the run")
    pump(1.0)
    shot("train", "train")
    run_dir = Path(finished[0].run_dir)

    chat = window.pages["chat"]
    window.open_next_step(("chat", run_dir))
    chat.send("What is the capital of France?")
    wait(lambda: not chat.is_busy, 600, "the chat answers")
    shot("chat", "chat")

    evaluate = window.pages["evaluate"]
    window.open_next_step(("evaluate", run_dir))
    evaluate.n_spin.setValue(5)
    evaluate.start()
    wait(lambda: not evaluate.is_busy, 1800, "the evaluation")
    shot("evaluate", "evaluate")

    runs = window.pages["runs"]
    runs.refresh()
    runs.select_runs([run_dir])
    shot("runs", "runs")
    window.shutdown(60000)
    print(f"workspace of the tour: {workspace}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
