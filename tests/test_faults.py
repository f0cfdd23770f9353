"""Faults a run must survive (issue 17): exact resume for every method and architecture family, checkpoints
loaded strictly, a full disk, rotation's kill window, two processes on one run, damaged run files,
divergence. Tiny models only; no wall-clock assertions."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import RunConfig
from core.errors import TrainingError
from core.runs import latest_checkpoint, list_checkpoints, read_metrics, read_status

ROOT = Path(__file__).resolve().parent.parent

ARCHITECTURES = {
    "gpt_neox": {"arch": "gpt_neox"},  # Pythia: lm_head saved as embed_out
    "llama": {"arch": "llama"},
    "llama_tied": {"arch": "llama", "tie_word_embeddings": True},  # SmolLM2: lm_head shares the embedding
}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    from tiny import make_tiny_model

    return {name: make_tiny_model(tmp_path_factory.mktemp(f"tiny-{name}"), **kwargs)
            for name, kwargs in ARCHITECTURES.items()}


@pytest.fixture()
def qa_file(tmp_path) -> Path:
    path = tmp_path / "qa.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(30):
            answer = f"It is {2 * i}." + " Indeed." * (i % 4)
            handle.write(json.dumps({"question": f"What is {i} plus {i}?", "answer": answer}) + "\n")
    return path


def _config(model_dir: Path, qa_file: Path, method: str = "lora") -> RunConfig:
    cfg = RunConfig(name="tiny")
    cfg.model.name_or_path = str(model_dir)
    cfg.data.source = str(qa_file)
    cfg.data.test_fraction = 0.2
    cfg.method.method = method
    t = cfg.training
    t.max_steps, t.batch_size, t.max_length = 6, 4, 64
    t.eval_steps = t.save_steps = 2
    t.learning_rate, t.warmup_ratio, t.max_eval_examples = 1e-3, 0.0, 0
    t.device = "cpu"
    return cfg


@pytest.fixture()
def cfg(tiny_model_dir, qa_file, isolated_home) -> RunConfig:
    return _config(tiny_model_dir, qa_file)


def _losses(run_dir: Path, kind: str) -> dict[int, float]:
    key = "loss" if kind == "train" else "eval_loss"
    return {r["step"]: r[key] for r in read_metrics(run_dir) if r.get("kind") == kind}


def _stop_at(step: int):
    from transformers import TrainerCallback

    from core.cancel import StopToken

    stop = StopToken()

    class StopThere(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                stop.request("test stop")

    return stop, StopThere()


def _tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    found = {}
    for path in sorted(folder.glob("*.safetensors")):
        found.update(load_file(str(path)))
    return found


# --------------------------------------------------------------------------------------------- 1. exact resume
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
@pytest.mark.parametrize("method", ["full", "lora", "prefix"])
def test_resume_equals_uninterrupted(tiny_models, qa_file, isolated_home, tmp_path, caplog, method, arch):
    """Stopped at step 3 and resumed: every later training and held-out loss equals the uninterrupted run's
    (1e-6 relative) and final/ holds the same tensors; nothing is reported missing or unexpected."""
    from core.training import resume, train

    if method == "prefix" and arch == "llama_tied":
        pytest.skip("prefix tuning is covered on the two untied families; the tie changes nothing for it")
    cfg = _config(tiny_models[arch], qa_file, method)
    cfg.training.group_by_length = True
    cfg.method.lora_dropout = 0.1  # uses the random-number state, which must be restored too
    cfg.name = "whole"
    whole = train(cfg, workspace=tmp_path / "ws")
    stop, callback = _stop_at(2)
    cfg.name = "stopped"
    stopped = train(cfg, workspace=tmp_path / "ws", stop=stop, extra_callbacks=[callback])
    assert stopped.state == "stopped" and latest_checkpoint(stopped.run_dir).name == "checkpoint-3"
    caplog.clear()
    resumed = resume(stopped.run_dir)
    assert resumed.state == "finished" and resumed.global_step == 6
    assert not [r for r in caplog.records if "missing keys" in r.getMessage() or "unexpected keys" in r.getMessage()]
    for kind in ("train", "eval"):
        expected, got = _losses(whole.run_dir, kind), _losses(resumed.run_dir, kind)
        assert sorted(got) == sorted(expected)
        for step in expected:
            assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=0), (kind, step)
    a, b = _tensors(whole.final_dir), _tensors(resumed.final_dir)
    assert a.keys() == b.keys() and a
    for name in a:
        assert (a[name] - b[name]).abs().max() <= 1e-6 * a[name].abs().max().clamp_min(1e-12), name
    assert read_status(resumed.run_dir)["best_checkpoint"] == read_status(whole.run_dir)["best_checkpoint"]
    assert read_status(resumed.run_dir)["best_eval_loss"] == pytest.approx(read_status(whole.run_dir)["best_eval_loss"],
                                                                           rel=1e-6)


def test_full_weights_load_like_from_pretrained_and_strictly(tiny_models, tmp_path):
    """The checkpoint loader gives the same tensors as transformers' own from_pretrained (which applies the
    renamings save_pretrained reverted: GPT-NeoX's embed_out), and a key left over or missing is an error."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from core.checkpoints import CheckpointError, load_full_weights

    for arch, folder in tiny_models.items():
        saved = tmp_path / arch
        trained = AutoModelForCausalLM.from_pretrained(folder)
        with torch.no_grad():
            for parameter in trained.parameters():
                parameter.add_(0.5)
        trained.save_pretrained(saved)
        names = set(load_file(str(saved / "model.safetensors")))
        if arch == "gpt_neox":
            assert "embed_out.weight" in names and "lm_head.weight" not in names  # what tripped the Trainer
        model = AutoModelForCausalLM.from_pretrained(folder)
        load_full_weights(model, saved)
        reference = AutoModelForCausalLM.from_pretrained(saved).state_dict()
        for name, tensor in model.state_dict().items():
            assert torch.equal(tensor, reference[name]), (arch, name)

        state = load_file(str(saved / "model.safetensors"))
        state["extra.weight"] = torch.zeros(2)
        save_file(state, str(saved / "model.safetensors"))
        with pytest.raises(CheckpointError, match="unexpected extra.weight"):
            load_full_weights(model, saved)
        del state["extra.weight"]
        dropped = sorted(name for name in state if "layers.1" in name)[0]
        del state[dropped]
        save_file(state, str(saved / "model.safetensors"))
        with pytest.raises(CheckpointError, match="missing"):
            load_full_weights(model, saved)


# --------------------------------------------------------------------------------------------- 2. disk full
def _safetensors_full(monkeypatch):
    """safetensors' writer fails as on a full disk, after leaving a temp file behind (as a cut write does)."""
    import transformers.modeling_utils as modeling_utils
    from safetensors import SafetensorError

    original = modeling_utils.safe_save_file

    def writer(tensors, filename, *args, **kwargs):
        if "checkpoint-4" in str(filename):
            Path(filename).with_name(".tmp-model.safetensors").write_bytes(b"x" * 100)
            raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                                  "message: \"No space left on device\" })")
        return original(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(modeling_utils, "safe_save_file", writer)


def _torch_zip_full(monkeypatch):
    """torch.save's zip writer fails as on a full disk (a short write: 'unexpected pos')."""
    import torch

    original = torch.save

    def writer(obj, f, *args, **kwargs):
        if "checkpoint-4" in str(f):
            Path(f).write_bytes(b"PK\x03\x04 cut")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4352 vs 4240")
        return original(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", writer)


def _os_error_full(monkeypatch):
    from transformers import TrainerState

    original = TrainerState.save_to_json

    def writer(self, path):
        if "checkpoint-4" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, path)

    monkeypatch.setattr(TrainerState, "save_to_json", writer)


@pytest.mark.parametrize("failure", [_safetensors_full, _torch_zip_full, _os_error_full],
                         ids=["SafetensorError", "torch-unexpected-pos", "OSError-ENOSPC"])
def test_disk_full_at_a_save_is_recognised_cleaned_and_resumable(cfg, tmp_path, monkeypatch, failure):
    from core.training import resume, train

    cfg.method.method = "full"  # model.safetensors is written by transformers' save_pretrained
    with monkeypatch.context() as patch:
        failure(patch)
        with pytest.raises(TrainingError) as info:
            train(cfg, workspace=tmp_path / "ws")
    message = str(info.value)
    run = next((tmp_path / "ws").iterdir())
    assert "the disk is full" in message and "checkpoint-4" in message and str(run) in message
    assert "checkpoint-2 is intact" in message and "resume" in message
    status = read_status(run)
    assert status["state"] == "failed" and status["message"] == message
    assert [step for step, _ in list_checkpoints(run)] == [2]
    assert not (run / "checkpoints" / "checkpoint-4").exists()
    assert not [p for p in run.rglob("*") if p.name.startswith(".tmp") or p.name.endswith(".tmp")]
    # Space freed (the writer works again): the run resumes from the intact checkpoint and finishes.
    result = resume(run)
    assert result.state == "finished" and result.global_step == 6


def test_too_little_free_space_stops_before_writing(cfg, tmp_path, monkeypatch):
    import core.checkpoints as checkpoints
    from core.training import train

    def free(folder):  # checkpoint-2 fits; after it, the disk is nearly full
        return 1000 if list((tmp_path / "ws").glob("*/checkpoints/checkpoint-2/COMPLETE")) else 10**12

    monkeypatch.setattr(checkpoints, "free_bytes", free)
    with pytest.raises(TrainingError, match=r"disk is full: checkpoint-4 could not be written.*needs about .* "
                                            r"and 1 KB is free.*checkpoint-2 is intact"):
        train(cfg, workspace=tmp_path / "ws")
    run = next((tmp_path / "ws").iterdir())
    assert [step for step, _ in list_checkpoints(run)] == [2] and not (run / "checkpoints" / "checkpoint-4").exists()


def test_disk_full_errors_are_recognised_through_their_causes():
    from safetensors import SafetensorError

    from core.checkpoints import is_disk_full

    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(SafetensorError("I/O error: No space left on device (os error 28)"))
    assert is_disk_full(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0"))
    wrapped = RuntimeError("saving failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert is_disk_full(wrapped)
    assert not is_disk_full(RuntimeError("shape mismatch")) and not is_disk_full(OSError(errno.EACCES, "denied"))


# --------------------------------------------------------------------------------------------- 3. rotation
class _Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs, no handler records anything."""


def _mark_dead(run: Path) -> None:
    from core.runs import write_status

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_status(run, state="running", pid=dead.pid, pid_started=None)


def test_kill_between_save_and_complete_keeps_the_previous_checkpoint(cfg, tmp_path, monkeypatch):
    """save_total_limit=1: killed after checkpoint-4's files are written but before it is COMPLETE, the run
    still has checkpoint-2 (rotation waits for COMPLETE); resume removes the half checkpoint and its stray
    temp file, saves checkpoint-4 afresh without it, and rotation then keeps one checkpoint and the best."""
    from transformers import Trainer

    from core.training import resume, train

    cfg.training.save_total_limit = 1
    original = Trainer._save_checkpoint

    def killed_after_writing(self, model, trial):
        original(self, model, trial)
        if self.state.global_step == 4:
            (Path(self.args.output_dir) / "checkpoint-4" / ".tmpkilled").write_bytes(b"half")
            raise _Killed()

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_save_checkpoint", killed_after_writing)
        with pytest.raises(_Killed):
            train(cfg, workspace=tmp_path / "ws")
    run = next((tmp_path / "ws").iterdir())
    assert [step for step, _ in list_checkpoints(run)] == [2]  # the previous one is still complete
    assert (run / "checkpoints" / "checkpoint-4").is_dir()  # written, never marked COMPLETE
    _mark_dead(run)
    result = resume(run)
    assert result.state == "finished" and result.global_step == 6
    kept = [step for step, _ in list_checkpoints(run)]
    best = read_status(run)["best_step"]
    assert kept == sorted({6, best}) and not list(run.rglob(".tmp*"))


def test_rotation_keeps_the_newest_and_the_best_and_clears_stale_halves(tmp_path):
    from core.checkpoints import rotate

    folder = tmp_path / "checkpoints"
    for step, complete in ((2, True), (4, True), (5, False), (6, True), (8, True), (10, False)):
        (folder / f"checkpoint-{step}").mkdir(parents=True)
        if complete:
            (folder / f"checkpoint-{step}" / "COMPLETE").write_text("")
    rotate(tmp_path, keep=1, best=str(folder / "checkpoint-4"))
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-10", "checkpoint-4", "checkpoint-8"]
    rotate(tmp_path, keep=1, best=None)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [8]


# --------------------------------------------------------------------------------------------- 4. locks
def _hold_lock(run: Path, command: str = "resume other") -> subprocess.Popen:
    """Another process holding the run's lock until its stdin closes."""
    script = ("import sys; from core.locks import RunLock; lock = RunLock(sys.argv[1], sys.argv[2]).acquire(); "
              "print('held', flush=True); sys.stdin.read(); lock.release()")
    holder = subprocess.Popen([sys.executable, "-c", script, str(run), command], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_second_command_on_a_run_is_refused_and_names_the_holder(cfg, tmp_path, capsys):
    from core.cli import main
    from core.locks import RunLock, RunLockedError
    from core.training import resume, train

    stop, callback = _stop_at(1)
    run = train(cfg, workspace=tmp_path / "ws", stop=stop, extra_callbacks=[callback]).run_dir
    holder = _hold_lock(run)
    try:
        with pytest.raises(RunLockedError, match=rf"in use by `resume other` \(process {holder.pid}"):
            resume(run)
        assert main(["resume", str(run)]) == 2
        err = capsys.readouterr().err
        assert f"process {holder.pid}" in err and "Traceback" not in err
        assert read_status(run)["state"] == "stopped"  # the refused command changed nothing
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    # Held by a process that was then SIGKILLed: the OS released it; the next command goes ahead.
    holder = _hold_lock(run)
    holder.kill()
    holder.wait(timeout=60)
    with RunLock(run, "check"):
        pass
    assert resume(run).state == "finished"


def test_lock_file_fallback_detects_stale_holders(tmp_path, monkeypatch):
    """Without flock (Windows) the lock file itself is the lock: a live holder refuses, a dead one (or a
    reused pid: another start time) is stale and taken over."""
    import core.locks as locks

    monkeypatch.setattr(locks, "fcntl", None)
    run = tmp_path / "run"
    run.mkdir()
    first = locks.RunLock(run, "train run").acquire()
    with pytest.raises(locks.RunLockedError, match=f"`train run` \\(process {os.getpid()}"):
        locks.RunLock(run, "resume run").acquire()
    first.release()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for holder in ({"pid": dead.pid, "command": "train run"},
                   {"pid": os.getpid(), "pid_started": 12.0, "command": "train run"}):  # pid reused
        (run / locks.LOCK_FILE).write_text(json.dumps(holder))
        taken = locks.RunLock(run, "resume run").acquire()
        assert locks.read_holder(run)["command"] == "resume run"
        taken.release()
    assert not (run / locks.LOCK_FILE).exists()
