"""The held-out evaluations' share of a run: ``python -m bench --only eval_share``.

One training run per process (``core.training.train``, the quickstart's settings), before and after the
evaluation changes of issue 14: "before" evaluates every held-out example (``training.eval_time_share=0``) in
split order (random lengths: each batch pads to its longest); "after" is the app's default (the CPU time cap
of ``training.eval_time_share`` and batches sorted by length). Each evaluation's own time comes from
metrics.jsonl (``eval_seconds``, the Trainer's eval_runtime); the share is their sum over the run's wall time
from start to end (model load, data, training, evaluations, saves).
"""

from __future__ import annotations

import json
import time
from pathlib import Path


def share(mode: str = "after", source: str = "sample:trivia", max_steps: int = 60, workdir: str = "/tmp/eval-share",
          config: str = "examples/quickstart.yaml", max_eval_examples: int | None = None) -> dict:
    from core.config import RunConfig
    from core.runs import read_metrics, read_status
    from core import training

    root = Path(__file__).resolve().parent.parent
    cfg = RunConfig.load(root / config)
    cfg.data.source = source
    cfg.training.max_steps = max_steps
    if max_eval_examples is not None:
        cfg.training.max_eval_examples = max_eval_examples
    if mode == "before":
        cfg.training.eval_time_share = 0.0
        training._longest_first = lambda dataset: dataset  # split order, as before
    run_dir = Path(workdir) / f"{mode}-{int(time.time() * 1000)}"
    started = time.perf_counter()
    result = training.train(cfg, run_dir=run_dir)
    seconds = time.perf_counter() - started
    evals = [r for r in read_metrics(run_dir) if r.get("kind") == "eval"]
    eval_seconds = sum(float(r.get("eval_seconds") or 0.0) for r in evals)
    status = read_status(run_dir)
    trains = [r for r in read_metrics(run_dir) if r.get("kind") == "train"]
    return {"mode": mode, "source": source, "max_steps": max_steps, "state": result.state,
            "run_seconds": round(seconds, 1), "evaluations": len(evals),
            "eval_seconds": round(eval_seconds, 1), "eval_share": round(eval_seconds / seconds, 3),
            "eval_examples": status.get("eval_examples"), "eval_examples_available": status.get("eval_examples_available"),
            "eval_capped": status.get("eval_capped"),
            "eval_losses": {r["step"]: r.get("eval_loss") for r in evals},
            "train_seconds_per_step": trains[-1].get("seconds_per_step") if trains else None,
            "status_line": json.dumps({k: status.get(k) for k in ("eval_seconds_estimate", "eval_time_share")})}
