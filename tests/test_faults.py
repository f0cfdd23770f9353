"""Faults a run must survive (issue 17): exact resume for every method and architecture family, checkpoints
loaded strictly, a full disk, rotation's kill window, two processes on one run, damaged run files,
divergence. Tiny models only; no wall-clock assertions."""

from __future__ import annotations

import errno
import json
import os
import shutil
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


def test_checkpoint_files_reach_the_disk_before_the_complete_marker(cfg, tmp_path, monkeypatch):
    """Every file of a checkpoint is fsynced before COMPLETE is written: after a power cut a "complete"
    checkpoint never holds files that were still only in the page cache."""
    import core.checkpoints as checkpoints_module
    from core.training import train

    synced: dict[str, list[str]] = {}
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.setdefault("paths", []).append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    calls = []
    real_sync_folder = checkpoints_module.sync_folder

    def sync_folder(folder):
        calls.append((Path(folder).name, (Path(folder) / "COMPLETE").exists()))
        synced["paths"] = []
        with monkeypatch.context() as patch:
            patch.setattr(os, "fsync", recording_fsync)
            count = real_sync_folder(folder)
        files = {str(p.resolve()) for p in Path(folder).rglob("*") if p.is_file()}
        assert files and files <= set(synced["paths"]) and count == len(files)
        return count

    monkeypatch.setattr(checkpoints_module, "sync_folder", sync_folder)
    train(cfg, workspace=tmp_path / "ws")
    assert calls and all(not complete for _, complete in calls)  # synced first, marked complete after
    assert {name for name, _ in calls} >= {"checkpoint-2", "checkpoint-4"}


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


# --------------------------------------------------------------------------------------------- 5. run files
def _stopped_run(cfg, tmp_path, name="damaged") -> Path:
    """A LoRA run stopped at step 3: complete checkpoints 2 and 3."""
    from core.training import train

    stop, callback = _stop_at(2)
    cfg.name = name
    run = train(cfg, workspace=tmp_path / "ws", stop=stop, extra_callbacks=[callback]).run_dir
    assert [step for step, _ in list_checkpoints(run)] == [2, 3]
    return run


def test_damaged_config_is_an_error_naming_the_last_good_copy(cfg, tmp_path, capsys):
    from core.cli import main
    from core.runs import RunFileError, load_run_config

    run = _stopped_run(cfg, tmp_path)
    config = run / "config.yaml"
    good = config.read_text(encoding="utf-8")
    copy = run / "checkpoints" / "checkpoint-3" / "run_config.yaml"
    assert copy.read_text(encoding="utf-8") == good
    for damaged in (good[: int(len(good) * 0.4)], "", "training: [cut", good.rstrip("\n")[:-1]):
        config.write_text(damaged, encoding="utf-8")
        with pytest.raises(RunFileError) as info:
            load_run_config(run)
        assert str(config) in str(info.value) and f"cp {copy} {config}" in str(info.value)
    assert main(["resume", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {config}: damaged") and "Traceback" not in "".join(err)
    assert read_status(run)["state"] == "stopped"  # nothing ran
    config.write_text(good.replace("max_eval_examples: 0", "max_eval_examples: 5"), encoding="utf-8")
    assert load_run_config(run).training.max_eval_examples == 5  # an edited, complete file is accepted


def test_wrong_typed_status_marks_that_run_unknown_and_runs_lists_the_rest(tmp_path, capsys):
    from core.cli import main
    from core.runs import create_run_dir, list_runs, write_status

    good = create_run_dir(tmp_path, "good")
    RunConfig(name="good").save(good / "config.yaml")
    write_status(good, state="finished", global_step=4, total_steps=4)
    bad = create_run_dir(tmp_path, "bad")
    RunConfig(name="bad").save(bad / "config.yaml")
    (bad / "status.json").write_text(json.dumps({"state": "running", "pid": "lots", "global_step": "lots",
                                                 "train_seconds": [1]}), encoding="utf-8")
    status = read_status(bad)
    assert status["state"] == "unknown" and "field 'pid' should be a whole number, not 'lots'" in status["message"]
    assert "pid" not in status and "global_step" not in status and "train_seconds" not in status
    assert {r.path.name: r.state for r in list_runs(tmp_path)} == {"good": "finished", "bad": "unknown"}
    assert main(["runs", "--workspace", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "bad" in table and "unknown" in table and "good" in table


# --------------------------------------------------------------------------------------------- 7. damaged checkpoints
@pytest.mark.parametrize("damaged", ["adapter_model.safetensors", "optimizer.pt", "trainer_state.json"])
def test_damaged_checkpoint_file_is_one_line_naming_it_and_the_previous_checkpoint(cfg, tmp_path, capsys,
                                                                                    damaged):
    from core.cli import main

    run = _stopped_run(cfg, tmp_path)
    path = run / "checkpoints" / "checkpoint-3" / damaged
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    capsys.readouterr()
    assert main(["resume", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: damaged"), err
    assert f"python main.py resume {run} --checkpoint 2" in err[0]
    if damaged == "adapter_model.safetensors":
        assert main(["generate", str(run), "--checkpoint", "3", "--prompt", "hi", "--max-new-tokens", "2"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {path}: damaged"), err
        assert f"python main.py generate {run} --checkpoint 2" in err[0]
    assert main(["resume", str(run), "--checkpoint", "2"]) == 0  # the suggestion works


def test_damaged_full_weights_are_named(tiny_model_dir, tmp_path):
    from core.checkpoints import CheckpointError, check_checkpoint

    folder = tmp_path / "checkpoint-7"
    shutil.copytree(tiny_model_dir, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=rf"{weights}: damaged \(Error while deserializing header"):
        check_checkpoint(folder, for_resume=False)


# --------------------------------------------------------------------------------------------- 6. divergence
def test_nan_in_the_untouched_model_blames_weights_or_precision(cfg, tmp_path, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from core.training import train

    broken = tmp_path / "broken-model"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.gpt_neox.final_layer_norm.weight.fill_(float("nan"))
    model.save_pretrained(broken)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_model_dir / name).is_file():
            shutil.copy(tiny_model_dir / name, broken / name)
    cfg.model.name_or_path = str(broken)
    with pytest.raises(TrainingError) as info:
        train(cfg, workspace=tmp_path / "ws")
    message = str(info.value)
    assert "untouched model's held-out loss is already nan at step 0" in message and "fp32" in message
    assert "learning rate is not the cause" in message and "lower the learning rate" not in message.lower()
    run = next((tmp_path / "ws").iterdir())
    assert read_status(run)["state"] == "failed" and not list_checkpoints(run)


# --------------------------------------------------------------------------------------------- 8. smaller ones
def test_killed_during_the_final_save_resumes_without_an_extra_step(cfg, tmp_path):
    from core.training import resume, train

    run = train(cfg, workspace=tmp_path / "ws").run_dir
    shutil.rmtree(run / "final")
    (run / "final.partial").mkdir()
    (run / "final.partial" / ".tmpabc").write_bytes(b"cut")
    _mark_dead(run)
    assert read_status(run)["state"] == "interrupted"
    result = resume(run)
    assert result.state == "finished" and result.global_step == 6
    assert max(_losses(run, "train")) == 6 and (run / "final" / "adapter_model.safetensors").is_file()
    assert not (run / "final.partial").exists()


def test_ctrl_c_notice_fits_the_phase_and_piped_progress_is_a_few_lines():
    import io

    from core.cancel import StopToken
    from core.commands.progress import TrainingConsole
    from core.commands.train import _ErrorsOnce, stop_on_ctrl_c
    from core.metrics import StatusEvent

    stream = io.StringIO()
    console = _ErrorsOnce(TrainingConsole(stream=stream))
    notices = []
    import core.commands.train as train_command

    original = train_command._stop_on_ctrl_c
    try:
        train_command._stop_on_ctrl_c = lambda stop, notice: notices.append(notice) or original(stop, notice)
        with stop_on_ctrl_c(StopToken(), console):
            pass
    finally:
        train_command._stop_on_ctrl_c = original
    notice = notices[0]
    for i in range(1563):  # 100k rows in batches: one progress event per batch
        console.on_status(StatusEvent("running", f"tokenizing: {i}/1563 batches", fraction=i / 1562,
                                      phase="tokenizing"))
    assert "nothing is trained yet" in notice() and "saving a checkpoint" not in notice()
    lines = [line for line in stream.getvalue().splitlines() if "tokenizing" in line]
    assert 1 <= len(lines) <= 11, len(lines)
    console.on_status(StatusEvent("running", "training 10 steps", step=0, phase="training"))
    assert "saving a checkpoint" in notice()


@pytest.mark.slow
def test_killing_the_parent_of_launch_leaves_the_run_interrupted_and_resumable(tiny_model_dir, qa_file, tmp_path,
                                                                               isolated_home):
    """SIGKILL of the process running launch_distributed: its ranks (whose output pipe is gone) stop at the
    next step, save a checkpoint and leave the run 'interrupted', not 'failed: BrokenPipeError'; while
    they run the folder stays locked; afterwards the run resumes."""
    import time

    from core.launch import PARENT_ENV
    from core.locks import RunLock, RunLockedError
    from core.training import resume

    cfg = _config(tiny_model_dir, qa_file)
    cfg.training.max_steps, cfg.training.save_steps, cfg.training.eval_steps = 100_000, 100_000, 100_000
    cfg.name = "launched"
    config = tmp_path / "run.yaml"
    cfg.save(config)
    script = ("import sys; from core.launch import launch_distributed; "
              "launch_distributed(sys.argv[1], processes=2, workspace=sys.argv[2], "
              "on_line=lambda line: print(line, flush=True))")
    parent = subprocess.Popen([sys.executable, "-c", script, str(config), str(tmp_path / "ws")], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    run = tmp_path / "ws" / "launched"
    try:
        for line in parent.stdout:  # wait for a training step (an event, not a timer)
            if "/100000" in line:
                break
        else:
            pytest.fail("the launched run never trained")
        parent.kill()
        parent.wait(timeout=60)
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.stdout.close()
    assert PARENT_ENV  # the ranks watch the parent named there
    deadline = time.monotonic() + 300  # a guard against hanging, not a speed assertion
    from core.locks import holder_alive, read_holder

    # Wait for the ranks to end (they hold the run's lock until then): rank 0 writes "stopped" from train() and
    # then "interrupted"; reading in between was a race.
    while read_status(run).get("state") == "running" or holder_alive(read_holder(run) or {}):
        assert time.monotonic() < deadline, "the ranks never noticed their parent was gone"
        time.sleep(0.5)
    status = read_status(run)
    assert status["state"] == "interrupted", status
    assert "launching command ended" in status["message"] and "BrokenPipe" not in status["message"]
    assert latest_checkpoint(run) is not None
    while True:  # held by the launcher's processes until they have all ended, then free
        try:
            with RunLock(run, "check"):
                break
        except RunLockedError:
            assert time.monotonic() < deadline, "the run stayed locked"
            time.sleep(0.5)
    interrupted_at = status["global_step"]
    stop, callback = _stop_at(interrupted_at + 1)
    resumed = resume(run, stop=stop, extra_callbacks=[callback])
    assert resumed.state == "stopped" and resumed.global_step == interrupted_at + 2
