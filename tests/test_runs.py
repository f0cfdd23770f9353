"""Run folders: status, checkpoints, listing (no torch)."""

from __future__ import annotations

import os
import subprocess
import sys

from core.config import RunConfig
from core.runs import (
    create_run_dir,
    latest_checkpoint,
    list_checkpoints,
    list_runs,
    load_run_config,
    read_metrics,
    read_status,
    write_status,
)


def test_create_run_dir_unique(tmp_path):
    first = create_run_dir(tmp_path, "my run/1")
    second = create_run_dir(tmp_path, "my run/1")
    assert first.name == "my-run-1" and second.name == "my-run-1-2"
    assert first.is_dir() and second.is_dir()


def test_status_running_then_interrupted_when_pid_gone(tmp_path):
    run = create_run_dir(tmp_path, "r")
    status = write_status(run, state="running", global_step=3)
    assert status["pid"] == os.getpid()
    assert read_status(run)["state"] == "running"  # we are alive
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_status(run, state="running", pid=dead.pid, pid_started=None)
    status = read_status(run)
    assert status["state"] == "interrupted" and "resume" in status["message"]
    assert status["global_step"] == 3  # merged, not replaced
    write_status(run, state="finished")
    assert read_status(run)["state"] == "finished"
    assert not list(run.glob(".status.json.*"))  # atomic write left no temp file


def test_status_missing_or_broken(tmp_path):
    assert read_status(tmp_path)["state"] == "unknown"
    (tmp_path / "status.json").write_text("{not json")
    assert read_status(tmp_path)["state"] == "unknown"


def test_only_complete_checkpoints_are_listed(tmp_path):
    run = create_run_dir(tmp_path, "r")
    for step, complete in ((2, True), (10, True), (12, False)):
        folder = run / "checkpoints" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        if complete:
            (folder / "COMPLETE").write_text("")
    (run / "checkpoints" / "notes").mkdir()
    assert [step for step, _ in list_checkpoints(run)] == [2, 10]  # numeric, not lexical, order
    assert latest_checkpoint(run).name == "checkpoint-10"
    assert latest_checkpoint(tmp_path / "nothing") is None


def test_list_runs_summaries(tmp_path):
    cfg = RunConfig(name="alpha")
    cfg.method.method = "full"
    old = create_run_dir(tmp_path, "alpha")
    cfg.save(old / "config.yaml")
    write_status(old, state="finished", global_step=10, total_steps=10, created=100.0, started=100.0,
                 ended=160.0)
    (old / "metrics.jsonl").write_text('{"kind":"eval","step":0,"eval_loss":3.0}\n'
                                       '{"kind":"eval","step":10,"eval_loss":2.5}\n{"kind":"ev')
    new = create_run_dir(tmp_path, "beta")
    (new / "config.yaml").write_text("training: [broken")
    write_status(new, state="failed", created=200.0)
    (tmp_path / "not-a-run").mkdir()
    runs = list_runs(tmp_path)
    assert [r.path.name for r in runs] == ["beta", "alpha"]
    alpha = runs[1]
    assert alpha.name == "alpha" and alpha.method == "full" and alpha.state == "finished"
    assert alpha.global_step == 10 and alpha.best_eval_loss == 2.5 and alpha.duration_seconds == 60.0
    assert runs[0].state == "failed" and runs[0].method == "?"
    assert load_run_config(old).method.method == "full"
    assert len(read_metrics(old)) == 2
    assert list_runs(tmp_path / "missing") == []
