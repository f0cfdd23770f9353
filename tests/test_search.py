"""Optuna search on the tiny model: 4 trials (TPE + median pruner), each a real run, one pruned; the study
(SQLite in the workspace) resumes after the searching process is killed mid-trial."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("optuna")

from core.config import ConfigError, RunConfig  # noqa: E402
from core.runs import list_runs, read_status  # noqa: E402
from core.search import create_search, parse_param, search  # noqa: E402
from core.sweep import read_sweep  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GOOD, HOPELESS = 3e-3, 1e-7


@pytest.fixture()
def cfg(tiny_model_dir, tmp_path, isolated_home) -> RunConfig:
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} plus {i}?", "answer": f"It is {2 * i}."}) + "\n"
                            for i in range(24)), encoding="utf-8")
    cfg = RunConfig(name="tiny")
    cfg.model.name_or_path = str(tiny_model_dir)
    cfg.data.source = str(data)
    cfg.data.test_fraction = 0.25
    t = cfg.training
    t.max_steps, t.batch_size, t.max_length = 4, 4, 64
    t.eval_steps = t.save_steps = 2
    t.warmup_ratio, t.max_eval_examples, t.device = 0.0, 0, "cpu"
    return cfg


def test_param_parsing():
    rate = parse_param("training.learning_rate=1e-5..1e-2:log")
    assert (rate.low, rate.high, rate.log) == (1e-5, 1e-2, True)
    rank = parse_param("method.lora_r=4,8,16")
    assert rank.choices == (4, 8, 16)
    with pytest.raises(ConfigError):
        parse_param("training.learning_rate=1e-2..1e-5")
    with pytest.raises(ConfigError):
        parse_param("training.learning_rate=0..1e-2:log")


def test_four_trials_with_pruning(cfg, tmp_path):
    workspace = tmp_path / "ws"
    # Two good trials finish first; the hopeless third is worse than their median at its first evaluation.
    record = create_search(cfg, [parse_param(f"training.learning_rate={HOPELESS},{GOOD}")], workspace, n_trials=4,
                           first_trials=[{"training.learning_rate": GOOD}, {"training.learning_rate": GOOD},
                                         {"training.learning_rate": HOPELESS}])
    events = []
    record = search(record, on_trial=lambda variant, event: events.append((variant["trial"], event)))
    assert record["state"] == "finished"
    states = record["trial_states"]
    assert len(states) == 4 and states["0"] == states["1"] == "complete" and states["2"] == "pruned"
    third = Path(record["variants"][2]["run_dir"])
    status = read_status(third)
    assert status["pruned_at_step"] == 2 and status["global_step"] == 2 and "pruned" in status["message"]
    assert len(list_runs(workspace)) == 4
    assert record["best_trial"]["params"]["training.learning_rate"] == GOOD
    assert (Path(record["path"]).parent / "study.db").is_file()
    assert record["leaderboard"][0]["best_eval_loss"] is not None


def test_search_resumes_after_the_process_is_killed(cfg, tmp_path):
    workspace = tmp_path / "ws"
    cfg.training.max_steps = 6
    record = create_search(cfg, [parse_param("training.learning_rate=1e-3..1e-2:log")], workspace, n_trials=2)
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from core.metrics import CallbackSink
        from core.search import search

        def die(point):
            if point.kind == "train" and point.step >= 3:   # checkpoint-2 is complete
                os._exit(9)

        search({record['path']!r}, sinks_for=lambda variant: [CallbackSink(on_metric=die)])
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == 9, killed.stderr[-2000:]
    first = Path(read_sweep(record["path"])["variants"][0]["run_dir"])
    assert read_status(first)["state"] == "interrupted"
    record = search(record["path"])
    assert record["state"] == "finished"
    assert record["trial_states"] == {"0": "complete", "1": "complete"}
    assert read_status(first)["global_step"] == 6  # the interrupted trial continued from its checkpoint
    assert len(list_runs(workspace)) == 2
