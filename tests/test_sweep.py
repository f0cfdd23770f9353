"""Sweeps and the run queue on the tiny model: variants become real queued runs with a shared sweep id,
run one after another, are ranked on a leaderboard saved as sweep.json; the queue persists in the
workspace and continues after a restart (a new process)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from core import queue
from core.config import ConfigError, RunConfig
from core.runs import list_runs, read_status
from core.sweep import (
    create_sweep,
    describe_leaderboard,
    format_value,
    parse_vary,
    plan_variants,
    read_sweep,
    run_sweep,
    winner_config,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def qa_file(tmp_path) -> Path:
    path = tmp_path / "qa.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(24):
            handle.write(json.dumps({"question": f"What is {i} plus {i}?", "answer": f"It is {2 * i}."}) + "\n")
    return path


@pytest.fixture()
def cfg(tiny_model_dir, qa_file, isolated_home) -> RunConfig:
    cfg = RunConfig(name="tiny")
    cfg.model.name_or_path = str(tiny_model_dir)
    cfg.data.source = str(qa_file)
    cfg.data.test_fraction = 0.25
    t = cfg.training
    t.max_steps, t.batch_size, t.max_length = 4, 4, 64
    t.eval_steps = t.save_steps = 2
    t.warmup_ratio, t.max_eval_examples, t.device = 0.0, 0, "cpu"
    return cfg


def test_vary_parsing_and_planning():
    vary = parse_vary("training.learning_rate=1e-4, 3e-4,1e-3")
    assert vary.field == "training.learning_rate" and vary.values == (1e-4, 3e-4, 1e-3)
    combos = plan_variants([vary, parse_vary("method.lora_r=8,16")])
    assert len(combos) == 6 and combos[0] == {"training.learning_rate": 1e-4, "method.lora_r": 8}
    assert format_value(3e-4) == "3e-4" and format_value(16) == "16" and format_value(0.05) == "0.05"
    with pytest.raises(ConfigError):
        parse_vary("training.learning_rate=1e-4")  # one value is no variation
    with pytest.raises(ConfigError):
        parse_vary("training.no_such_field=1,2")
    with pytest.raises(ConfigError):
        plan_variants([parse_vary("training.learning_rate=1,2,3,4"), parse_vary("method.lora_r=1,2,3,4")])


def test_sweep_of_three_rates_gives_three_runs_and_a_leaderboard(cfg, tmp_path, capsys):
    from core.cli import main

    workspace = tmp_path / "ws"
    config = tmp_path / "run.yaml"
    cfg.save(config)
    code = main(["sweep", "--config", str(config), "--output", str(workspace),
                 "--vary", "training.learning_rate=1e-4,1e-3,1e-2", "--max-steps", "4",
                 "--probe", "What is 2 plus 2?"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "RANK" in out and "lr 1e-3" in out
    sweeps = list((workspace / "sweeps").glob("*/sweep.json"))
    assert len(sweeps) == 1
    sweep = read_sweep(sweeps[0])
    assert sweep["state"] == "finished"
    summaries = list_runs(workspace)
    assert len(summaries) == 3 and all(run.state == "finished" for run in summaries)
    for variant in sweep["variants"]:
        status = read_status(variant["run_dir"])
        assert status["sweep_id"] == sweep["id"] and status["sweep_variant"] == variant["label"]
        assert status["global_step"] == 4
    board = sweep["leaderboard"]
    assert [row["rank"] for row in board] == [1, 2, 3]
    losses = [row["best_eval_loss"] for row in board]
    assert losses == sorted(losses)
    assert all(row["train_seconds"] and row["peak_memory_bytes"] for row in board)
    assert {row["label"] for row in board} == {"lr 1e-4", "lr 1e-3", "lr 1e-2"}
    # the probe answered by every variant, side by side in the leaderboard (the latest answer of each)
    assert all(row["probe_answers"] and row["probe_answers"][0]["prompt"] == "What is 2 plus 2?" for row in board)
    proper = winner_config(sweep)
    assert proper.training.learning_rate == board[0]["values"]["training.learning_rate"]
    assert proper.training.max_steps == 12  # 3x the sweep's steps: the base was not longer
    assert "lr 1e-" in describe_leaderboard(board)


def test_stopped_sweep_continues_from_its_checkpoint(cfg, tmp_path):
    from core.cancel import StopToken
    from core.metrics import CallbackSink

    workspace = tmp_path / "ws"
    sweep = create_sweep(cfg, [parse_vary("training.learning_rate=1e-3,2e-3")], workspace, max_steps=4)
    assert [row["state"] for row in queue.queued_runs(workspace)] == ["queued", "queued"]
    stop = StopToken()

    def stop_at_step_2(point):
        if point.kind == "train" and point.step >= 2:
            stop.request("test")

    sweep = run_sweep(sweep, stop=stop, sinks_for=lambda variant: [CallbackSink(on_metric=stop_at_step_2)])
    assert sweep["state"] == "stopped"
    first, second = (Path(v["run_dir"]) for v in sweep["variants"])
    assert read_status(first)["state"] == "stopped" and read_status(second)["state"] == "queued"
    sweep = run_sweep(sweep["path"])
    assert sweep["state"] == "finished"
    assert read_status(first)["global_step"] == 4 and read_status(second)["global_step"] == 4
    assert all(row["best_eval_loss"] is not None for row in sweep["leaderboard"])


def test_queue_order_is_editable_and_persists(cfg, tmp_path):
    workspace = tmp_path / "ws"
    names = []
    for index in range(3):
        cfg.name = f"q{index}"
        names.append(queue.enqueue(cfg, workspace).name)
    assert [run["name"] for run in queue.queued_runs(workspace)] == names
    queue.move(workspace, workspace / names[2], -2)
    assert [run["name"] for run in queue.queued_runs(workspace)] == [names[2], names[0], names[1]]
    queue.remove(workspace / names[0])
    assert [run["name"] for run in queue.queued_runs(workspace)] == [names[2], names[1]]
    assert {run.state for run in list_runs(workspace)} == {"queued"}  # every page lists them


def test_queue_survives_a_restart(cfg, tmp_path):
    """A process working through the queue is killed mid-run; a new process continues the queue: the
    killed run resumes from its checkpoint and the waiting one runs."""
    workspace = tmp_path / "ws"
    cfg.training.max_steps = 6
    cfg.name = "first"
    first = queue.enqueue(cfg, workspace)
    cfg.name = "second"
    second = queue.enqueue(cfg, workspace)
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from core import queue
        from core.metrics import CallbackSink

        def die_after_checkpoint(event):
            # killed like a closed laptop: after checkpoint-2 is complete, during step 3
            if getattr(event, "kind", "") == "train" and event.step >= 3:
                os._exit(9)

        queue.run_queue({str(workspace)!r}, sinks_for=lambda run: [CallbackSink(on_metric=die_after_checkpoint)])
    """)
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT)}
    killed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == 9, killed.stderr[-2000:]
    assert read_status(first)["state"] == "interrupted"
    assert queue.is_active(workspace)
    waiting = queue.queued_runs(workspace)
    assert [Path(run["run_dir"]) for run in waiting] == [first, second]
    done = queue.run_queue(workspace)  # "after the restart": this process continues the queue
    assert [(path, state) for path, state in done] == [(first, "finished"), (second, "finished")]
    assert read_status(first)["global_step"] == 6 and read_status(second)["global_step"] == 6
    assert queue.queued_runs(workspace) == [] and not queue.is_active(workspace)


def test_a_queued_run_is_claimed_by_one_runner_only(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with queue.claimed(run_dir) as first:
        assert first
        with queue.claimed(run_dir) as second:
            assert not second  # this (live) process holds it
    assert not (run_dir / queue.CLAIM_FILE).exists()
    # a claim left by a process that died is taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run_dir / queue.CLAIM_FILE).write_text(json.dumps({"pid": int(dead.stdout), "started": None}))
    with queue.claimed(run_dir) as taken:
        assert taken
