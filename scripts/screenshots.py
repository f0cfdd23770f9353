"""Take the README's screenshots on a real run: every page mid-run and after the run, at 1280×800.

    QT_QPA_PLATFORM=offscreen .venv/bin/python scripts/screenshots.py [--out docs/screenshots] [--model M]
        [--steps 10] [--size 1280x800]

Uses the bundled model and the trivia sample unless told otherwise, in a temporary workspace (nothing of
the user's is touched). Takes a few minutes on a CPU: it trains, chats and evaluates for real.

    QT_QPA_PLATFORM=offscreen .venv/bin/python scripts/screenshots.py --preference-runs WORKSPACE

takes the preference-tuning shots instead, on the runs ``python -m bench.preference_figures --workspace
WORKSPACE`` made (copied into a temporary workspace, so its votes file is not touched): Chat in blind A/B mode
after a few votes with the win rate (chat-blind-ab.png), the Train page on the finished DPO run with its reward
plots (train-dpo.png) and the Evaluate page's forgetting check of the SFT run (evaluate-forgetting.png).
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
    parser.add_argument("--preference-runs", metavar="WORKSPACE", default=None,
                        help="take the preference-tuning shots on bench.preference_figures' runs in WORKSPACE")
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
    if args.preference_runs:
        import shutil

        for name in ("quickstart-sft", "dpo-votes"):
            shutil.copytree(Path(args.preference_runs) / name, workspace / name)
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

    if args.preference_runs:
        preference_shots(window, workspace, shot, wait, pump)
        window.shutdown(60000)
        print(f"workspace of the shots: {workspace}")
        return 0

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

    evaluate_shot(window, run_dir, "evaluate", shot, wait, "the evaluation")

    runs = window.pages["runs"]
    runs.refresh()
    runs.select_runs([run_dir])
    shot("runs", "runs")
    window.shutdown(60000)
    print(f"workspace of the tour: {workspace}")
    return 0


def evaluate_shot(window, run_dir: Path, name: str, shot, wait, what: str, questions: int = 5) -> None:
    """Evaluate ``run_dir`` on the Evaluate page (``questions`` questions) and take the shot ``name``."""
    evaluate = window.pages["evaluate"]
    window.open_next_step(("evaluate", run_dir))
    evaluate.n_spin.setValue(questions)
    evaluate.start()
    wait(lambda: not evaluate.is_busy, 1800, what)
    shot(name, "evaluate")


def preference_shots(window, workspace: Path, shot, wait, pump, n_votes: int = 5) -> None:
    """Blind A/B votes in Chat on the SFT run, the DPO run's rewards on Train, the forgetting check on Evaluate."""
    from core.config import DataConfig
    from core.data import load_records, training_split
    from core.evaluation import score_answer
    from core.runs import load_run_config

    sft, dpo = workspace / "quickstart-sft", workspace / "dpo-votes"
    # Held-out trivia questions, judged by ROUGE-L against the reference answer (a scripted voter that
    # does not know which model is which: the vote is cast on A and B).
    data_cfg: DataConfig = load_run_config(sft).data
    _, _, records, _ = load_records(data_cfg)
    _, held_out, _ = training_split(len(records), data_cfg)
    chat = window.pages["chat"]
    window.open_next_step(("chat", sft))
    chat.max_tokens_spin.setValue(32)
    chat.blind_toggle.setChecked(True)
    for index in held_out[:n_votes]:
        question, reference = records[index]["question"], records[index]["answer"]
        chat.send(question)
        wait(lambda: not chat.is_busy, 900, "the A/B answers")
        a_side, b_side = chat._ab_sides
        answers = chat._turns[-1].answers
        a_score = score_answer(answers[a_side], reference)["rougeL"]
        b_score = score_answer(answers[b_side], reference)["rougeL"]
        vote = "a" if a_score > b_score else "b" if b_score > a_score else ("tie" if a_score > 0 else "both_bad")
        chat.ab_bar.buttons[vote].click()
        pump(0.2)
        print(f"voted {vote} on {question!r} (ROUGE-L A {a_score:.2f}, B {b_score:.2f})")
    shot("chat-blind-ab", "chat")
    chat.blind_toggle.setChecked(False)

    train = window.pages["train"]
    window.show_page("train")
    train.show_run(dpo)
    pump(1.0)
    shot("train-dpo", "train")

    evaluate_shot(window, sft, "evaluate-forgetting", shot, wait, "the evaluation with the forgetting check")


if __name__ == "__main__":
    sys.exit(main())
