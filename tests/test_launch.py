"""Multi-process (data-parallel, gloo on CPU) training through accelerate, on the tiny model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import psutil

from core.cancel import StopToken
from core.config import RunConfig
from core.launch import _crash_message, launch_command, launch_distributed


def tiny_config(model_dir: Path, data: Path, **training) -> RunConfig:
    cfg = RunConfig()
    cfg.model.name_or_path = str(model_dir)
    cfg.data.source = str(data)
    cfg.data.test_fraction = 0.0  # exactly 48 training examples: the step count is known
    cfg.training.device = "cpu"
    cfg.training.batch_size = 4
    cfg.training.max_length = 64
    cfg.training.num_epochs = 1.0
    cfg.training.save_steps = 3
    cfg.method.lora_dropout = 0.0
    for key, value in training.items():
        setattr(cfg.training, key, value)
    return cfg


def examples(path: Path, n: int = 48) -> Path:
    rows = [{"question": f"What is {i} plus {i}?", "answer": f"It is {2 * i}."} for i in range(n)]
    path.write_text("\n".join(json.dumps(row) for row in rows), encoding="utf-8")
    return path


def no_process_mentions(text: str) -> bool:
    for process in psutil.process_iter(["cmdline"]):
        try:
            if any(text in part for part in process.info["cmdline"] or []):
                return False
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return True


def test_launch_command_shapes():
    command = launch_command(Path("c.yaml"), Path("run"), processes=2, device_kind="cpu")
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert "--multi_gpu" in command and command[-5:] == ["--module", "core.launch", "--worker", "c.yaml", "run"]
    with_file = launch_command(Path("c.yaml"), Path("run"), processes=2, accelerate_config="acc.yaml")
    assert "--config_file" in with_file and "--multi_gpu" not in with_file
    torchrun = launch_command(Path("c.yaml"), Path("run"), processes=3, launcher="torchrun")
    assert torchrun[1:5] == ["-m", "torch.distributed.run", "--nproc_per_node", "3"]


def test_crash_message_prefers_the_rank_root_cause():
    lines = ["loading", "[rank1]: Traceback (most recent call last):", "[rank1]: ValueError: bad shape (3, 4)",
             "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ", "core.launch FAILED"]
    assert _crash_message(lines, 1, {}) == "[rank1]: ValueError: bad shape (3, 4)"
    assert _crash_message(lines, 1, {"state": "failed", "message": "out of memory"}) == "out of memory"


def test_two_processes_one_run_folder_half_the_steps(tiny_model_dir, tmp_path, isolated_home):
    workspace = tmp_path / "runs"
    cfg = tiny_config(tiny_model_dir, examples(tmp_path / "data.jsonl"))
    lines: list[str] = []
    result = launch_distributed(cfg, processes=2, workspace=workspace, on_line=lines.append)
    output = "\n".join(lines)
    assert result.state == "finished", output[-3000:]
    # One run folder, written by rank 0 only.
    assert [p.name for p in workspace.iterdir()] == [result.run_dir.name]
    assert (result.run_dir / "final" / "adapter_config.json").is_file()
    points = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [p["step"] for p in points if p.get("kind") == "train"]
    # 48 examples, batch 4 per process x 2 processes: 6 steps (one process would take 12), each logged once.
    assert train_steps == [1, 2, 3, 4, 5, 6], output[-3000:]
    assert result.status["total_steps"] == 6 and result.status["global_step"] == 6
    assert output.count("[rank 0] finished") == 1 and "[rank 1] finished" in output
    # Resumable: every complete checkpoint holds the RNG state of both ranks.
    from core.runs import list_checkpoints

    checkpoints = list_checkpoints(result.run_dir)
    assert checkpoints, "no complete checkpoint"
    for _, folder in checkpoints:
        assert (folder / "rng_state_0.pth").is_file() and (folder / "rng_state_1.pth").is_file()
    assert no_process_mentions(str(result.run_dir))


def test_stop_relays_to_every_rank_and_leaves_a_checkpoint(tiny_model_dir, tmp_path, isolated_home):
    # Deterministic: the run is far too long to end by itself (100k steps), and the stop is requested on an
    # event (the first progress line), not after a timer; so the only way it ends is the relayed stop.
    cfg = tiny_config(tiny_model_dir, examples(tmp_path / "data.jsonl", n=400), save_steps=100_000,
                      max_steps=100_000)
    stop = StopToken()

    def watch(line: str) -> None:
        if "/100000" in line and not stop.is_set:  # training has started: ask to stop
            stop.request("test stop")

    result = launch_distributed(cfg, processes=2, workspace=tmp_path / "runs", stop=stop, on_line=watch,
                                grace_seconds=120)
    assert stop.is_set, "no progress line was seen"
    assert result.state == "stopped", result.message
    status = result.status
    assert 0 < status["global_step"] < 100_000
    assert (result.run_dir / "checkpoints").is_dir() and any((result.run_dir / "checkpoints").iterdir())
    assert no_process_mentions(str(result.run_dir))
