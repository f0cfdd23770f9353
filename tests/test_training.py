"""Training engine on the tiny model: methods, final/ loadable by plain peft, metrics, stop/resume,
SIGKILL recovery, failures turned into messages."""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from core.config import ConfigError, RunConfig
from core.errors import ModelError, TrainingError
from core.metrics import CallbackSink
from core.runs import latest_checkpoint, list_checkpoints, list_runs, read_metrics, read_status

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def qa_file(tmp_path) -> Path:
    path = tmp_path / "qa.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(30):
            # Different lengths so that length grouping and per-batch padding matter.
            answer = f"It is {2 * i}." + " Indeed." * (i % 4)
            handle.write(json.dumps({"question": f"What is {i} plus {i}?", "answer": answer}) + "\n")
    return path


@pytest.fixture()
def cfg(tiny_model_dir, qa_file, isolated_home) -> RunConfig:
    cfg = RunConfig(name="tiny")
    cfg.model.name_or_path = str(tiny_model_dir)
    cfg.data.source = str(qa_file)
    cfg.data.test_fraction = 0.2
    cfg.method.method = "lora"
    t = cfg.training
    t.max_steps, t.batch_size, t.max_length = 6, 4, 64
    t.eval_steps = t.save_steps = 3
    t.learning_rate, t.warmup_ratio, t.max_eval_examples = 1e-3, 0.0, 0
    t.device = "cpu"
    return cfg


def _train_records(run_dir):
    return [r for r in read_metrics(run_dir) if r.get("kind") == "train"]


# --------------------------------------------------------------------------------------------- batching
def test_collator_pads_each_batch_to_its_longest_example():
    from core.training import PadToLongestCollator

    collate = PadToLongestCollator(pad_token_id=7)
    batch = collate([
        {"input_ids": [1, 2, 3], "labels": [-100, 2, 3], "attention_mask": [1, 1, 1], "length": 3},
        {"input_ids": [4, 5], "labels": [-100, 5], "attention_mask": [1, 1], "length": 2},
    ])
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    assert batch["input_ids"].shape == (2, 3)  # the longest in the batch, not max_length
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 5, 7]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [-100, 5, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert collate([{"input_ids": [9], "labels": [9], "attention_mask": [1]}])["input_ids"].shape == (1, 1)


# --------------------------------------------------------------------------------------------- loss
def _loss_and_grads(model, trainer, batch, fast: bool, monkeypatch, num_items):
    import core.training as training

    monkeypatch.setattr(training, "TRAINED_POSITIONS_ONLY", fast)
    model.zero_grad(set_to_none=True)
    loss, outputs = trainer.compute_loss(model, dict(batch), return_outputs=True, num_items_in_batch=num_items)
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), outputs["logits"].shape, grads


def _check_trained_positions_match_stock(model, batch, tmp_path, monkeypatch, rel=1e-5):
    import torch
    from transformers import TrainingArguments

    from core.training import trainer_class

    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none")
    trainer = trainer_class()(model=model, args=args)
    model.train()
    n_trained = int((batch["labels"][:, 1:] != -100).sum())
    assert 0 < n_trained < batch["labels"].numel() // 2  # answers only: most positions are untrained
    for num_items in (torch.tensor(n_trained + 5), None):  # sum / count (accumulation) and the plain mean
        stock_loss, stock_shape, stock_grads = _loss_and_grads(model, trainer, batch, False, monkeypatch, num_items)
        loss, shape, grads = _loss_and_grads(model, trainer, batch, True, monkeypatch, num_items)
        assert tuple(stock_shape[:2]) == tuple(batch["input_ids"].shape)
        assert tuple(shape[:1]) == (n_trained,), "the fast path computes logits at trained positions only"
        assert torch.isclose(loss, stock_loss, rtol=rel, atol=0), (loss, stock_loss)
        assert stock_grads.keys() == grads.keys() and grads
        for name, grad in grads.items():
            scale = stock_grads[name].abs().max().clamp_min(1e-12)
            assert (grad - stock_grads[name]).abs().max() <= rel * scale, name
    return trainer


def _answer_batch(tokenizer_dir, n=4):
    """A batch with answers-only labels and unequal lengths (right padding), as prepare_dataset makes."""
    from transformers import AutoTokenizer

    from core.training import PadToLongestCollator

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    features = []
    for i in range(n):
        prompt = tokenizer(f"### Question:\nWhat is {i} plus {i}, exactly?\n### Answer:\n")["input_ids"]
        answer = tokenizer(f"It is {2 * i}." + " Indeed." * i)["input_ids"]
        ids = prompt + answer
        features.append({"input_ids": ids, "attention_mask": [1] * len(ids),
                         "labels": [-100] * len(prompt) + answer})
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return PadToLongestCollator(pad)(features)


@pytest.mark.parametrize("method", ["lora", "full", "prefix"])
def test_loss_at_trained_positions_equals_stock_loss_and_gradients(tiny_model_dir, tmp_path, monkeypatch, method):
    from core.config import MethodConfig, ModelConfig
    from core.hf_args import apply_method
    from core.models import load_model

    model = load_model(ModelConfig(name_or_path=str(tiny_model_dir)), device="cpu")
    model = apply_method(model, MethodConfig(method=method, lora_dropout=0.0))
    _check_trained_positions_match_stock(model, _answer_batch(tiny_model_dir), tmp_path, monkeypatch)


@pytest.mark.real_model
def test_loss_at_trained_positions_equals_stock_on_llama(tmp_path, monkeypatch):
    """SmolLM2 (LlamaForCausalLM, tied lm_head), LoRA: same loss and adapter gradients as the stock loss."""
    from core.config import MethodConfig, ModelConfig
    from core.hf_args import apply_method
    from core.models import load_model

    model_cfg = ModelConfig()
    model = apply_method(load_model(model_cfg, device="cpu"), MethodConfig(method="lora", lora_dropout=0.0))
    from core.models import ensure_bundled_model

    _check_trained_positions_match_stock(model, _answer_batch(str(ensure_bundled_model())), tmp_path,
                                         monkeypatch, rel=1e-4)


def test_run_with_trained_positions_matches_stock_run(cfg, tmp_path, monkeypatch):
    """Five steps with evaluation: the same training losses (1e-4) and eval losses (1e-5) as the stock loss."""
    import core.training as training

    cfg.training.max_steps, cfg.training.eval_steps, cfg.training.save_steps = 5, 5, 5
    cfg.training.logging_steps, cfg.training.gradient_accumulation = 1, 2  # loss = sum / count over 2 batches
    taken = []  # (fast path?, training?) per compute_loss call
    stock_trainer_class = training.trainer_class

    def spying_trainer_class():
        class Spy(stock_trainer_class()):
            def _fast_path(self, model, inputs, return_outputs):
                fast = super()._fast_path(model, inputs, return_outputs)
                taken.append((fast, model.training))
                return fast
        return Spy

    monkeypatch.setattr(training, "trainer_class", spying_trainer_class)
    losses = {}
    for fast in (False, True):
        taken.clear()
        monkeypatch.setattr(training, "TRAINED_POSITIONS_ONLY", fast)
        cfg.name = f"fast-{fast}"
        result = training.train(cfg, workspace=tmp_path / "ws")
        # Both training and evaluation batches take the path under test.
        assert {(fast, True), (fast, False)} == set(taken)
        records = read_metrics(result.run_dir)
        losses[fast] = ({r["step"]: r["loss"] for r in records if r.get("kind") == "train"},
                        {r["step"]: r["eval_loss"] for r in records if r.get("kind") == "eval"})
    (train_stock, eval_stock), (train_fast, eval_fast) = losses[False], losses[True]
    assert sorted(train_fast) == sorted(train_stock) == [1, 2, 3, 4, 5]
    for step, value in train_stock.items():
        assert train_fast[step] == pytest.approx(value, rel=1e-4), step
    assert sorted(eval_fast) == sorted(eval_stock) and 5 in eval_stock
    for step, value in eval_stock.items():
        assert eval_fast[step] == pytest.approx(value, rel=1e-5), step


# --------------------------------------------------------------------------------------------- methods
@pytest.mark.parametrize("method", ["full", "prefix"])
def test_method_trains_and_writes_final(cfg, tmp_path, method):
    from core.training import train

    cfg.method.method = method
    cfg.training.max_steps = 3
    result = train(cfg, workspace=tmp_path / "ws")
    assert result.state == "finished" and result.global_step == 3
    final = result.final_dir
    assert (final / "tokenizer_config.json").is_file()
    if method == "full":
        assert (final / "model.safetensors").is_file() and (final / "config.json").is_file()
    else:
        assert json.loads((final / "adapter_config.json").read_text())["peft_type"] == "PREFIX_TUNING"
    losses = [r["loss"] for r in _train_records(result.run_dir)]
    assert len(losses) == 3 and all(isinstance(x, float) and math.isfinite(x) for x in losses)


def test_lora_run_folder_metrics_and_plain_peft_loading(cfg, tmp_path):
    """final/ of a LoRA run loads with plain transformers+peft (no app code) and gives the same logits."""
    import torch
    from transformers import TrainerCallback

    from core.training import train

    captured = {}

    class Capture(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            captured["model"] = model

    points, events = [], []
    result = train(cfg, workspace=tmp_path / "ws", extra_callbacks=[Capture()],
                   sinks=[CallbackSink(points.append, events.append)])
    run = result.run_dir
    assert result.state == "finished" and read_status(run)["state"] == "finished"
    assert RunConfig.load(run / "config.yaml").to_dict() == cfg.to_dict()
    env = json.loads((run / "environment.json").read_text())
    assert env["torch"] and env["transformers"] and env["peft"] and env["cpu_count"]
    assert [step for step, _ in list_checkpoints(run)] == [3, 6]

    records = read_metrics(run)
    evals = [r for r in records if r["kind"] == "eval"]
    assert evals[0]["step"] == 0 and evals[0]["total_steps"] == 6  # the base model's loss starts the curve
    assert [r["step"] for r in evals] == [0, 3, 6]
    assert all(r["eval_seconds"] > 0 for r in evals)  # each evaluation's own time (the eval share in bench)
    trains = _train_records(run)
    assert [r["step"] for r in trains] == [1, 2, 3, 4, 5, 6]
    tokens = [r["tokens_trained"] for r in trains]
    assert all(b > a for a, b in zip(tokens, tokens[1:], strict=False)) and tokens[0] > 0
    last = trains[-1]
    for key in ("learning_rate", "grad_norm", "tokens_per_second", "seconds_per_step", "peak_memory_bytes",
                "elapsed_seconds", "epoch"):
        assert last[key] is not None and last[key] > 0, key
    assert last["eta_seconds"] == 0
    assert [p.kind for p in points] == [r["kind"] for r in records if r["kind"] in ("train", "eval")]
    assert events[-1].state == "finished"
    assert result.best_eval_loss == min(r["eval_loss"] for r in evals[1:])

    # Logits of the in-app model vs. a fresh process that only knows transformers + peft.
    model = captured["model"].eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits[0].tolist()
    script = tmp_path / "load_plain.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys, torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
        assert not any(name == "core" or name.startswith("core.") for name in sys.modules)
        base = AutoModelForCausalLM.from_pretrained({str(cfg.model.name_or_path)!r})
        model = PeftModel.from_pretrained(base, {str(result.final_dir)!r}).eval()
        with torch.no_grad():
            print(json.dumps(model(input_ids=torch.tensor([[5, 6, 7, 8, 9, 10]])).logits[0].tolist()))
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert torch.allclose(torch.tensor(got), torch.tensor(expected), atol=1e-4)
    assert not torch.allclose(torch.tensor(got), torch.zeros(1)), "logits must be real numbers"


# --------------------------------------------------------------------------------------------- stop / resume
def test_stop_then_resume_matches_uninterrupted_run(cfg, tmp_path):
    from transformers import TrainerCallback

    from core.cancel import StopToken
    from core.training import resume, train

    cfg.training.max_steps = 10  # 24 training examples / batch 4 = 6 steps per epoch: crosses an epoch
    cfg.training.group_by_length = True
    cfg.method.lora_dropout = 0.1  # uses the random-number state, which must be restored too
    full = train(cfg, workspace=tmp_path / "ws", )
    assert full.state == "finished"

    stop = StopToken()

    class StopAtFour(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 4:
                stop.request("test stop")

    cfg.name = "interrupted"
    stopped = train(cfg, workspace=tmp_path / "ws", stop=stop, extra_callbacks=[StopAtFour()])
    # Checked at the next step boundary: step 5, with a checkpoint saved there.
    assert stopped.state == "stopped" and stopped.global_step == 5
    assert read_status(stopped.run_dir)["state"] == "stopped"
    assert latest_checkpoint(stopped.run_dir).name == "checkpoint-5"
    assert not (stopped.run_dir / "final").exists()

    resumed = resume(stopped.run_dir)
    assert resumed.state == "finished" and resumed.global_step == 10
    expected = {r["step"]: r["loss"] for r in _train_records(full.run_dir)}
    got = {r["step"]: r["loss"] for r in _train_records(resumed.run_dir)}
    for step in (6, 7, 10):
        assert got[step] == pytest.approx(expected[step], rel=1e-3), step
    tokens = {r["step"]: r["tokens_trained"] for r in _train_records(full.run_dir)}
    assert {r["step"]: r["tokens_trained"] for r in _train_records(resumed.run_dir)}[10] == tokens[10]
    with pytest.raises(TrainingError, match="already finished"):
        resume(stopped.run_dir)


def test_sigkilled_run_is_interrupted_and_resumes(cfg, tmp_path):
    from core.training import resume

    cfg.training.max_steps = 60
    cfg.training.save_steps = 5
    cfg.training.eval_steps = 30
    cfg.training.load_best_model_at_end = False  # saves between evaluations
    config = tmp_path / "run.yaml"
    cfg.save(config)
    workspace = tmp_path / "ws"
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), "train", "--config", str(config), "--output", str(workspace),
         "--name", "killed"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run = workspace / "killed"
    try:
        deadline = time.time() + 120
        while latest_checkpoint(run) is None:
            assert process.poll() is None, process.stderr.read().decode()
            assert time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()
    killed_at = latest_checkpoint(run)
    status = read_status(run)
    assert status["state"] == "interrupted", status
    assert [r.state for r in list_runs(workspace)] == ["interrupted"]
    assert status["global_step"] < 60

    result = resume(run)
    assert result.state == "finished" and result.global_step == 60
    steps = [r["step"] for r in _train_records(run)]
    first_after_resume = int(killed_at.name.split("-")[1]) + 1
    assert first_after_resume in steps and steps[-1] == 60


# --------------------------------------------------------------------------------------------- failures
def test_nan_loss_stops_at_that_step_with_advice(cfg, tmp_path, monkeypatch):
    import torch
    from transformers import Trainer

    original = Trainer.training_step

    def poisoned(self, *args, **kwargs):
        loss = original(self, *args, **kwargs)
        return loss * float("nan") if self.state.global_step >= 2 else loss  # the 3rd step diverges

    monkeypatch.setattr(Trainer, "training_step", poisoned)
    cfg.training.save_steps = cfg.training.eval_steps = 2
    with pytest.raises(TrainingError, match=r"diverged: the training loss became nan at step 3.*learning rate") as info:
        from core.training import train

        train(cfg, workspace=tmp_path / "ws")
    run = next((tmp_path / "ws").iterdir())
    status = read_status(run)
    assert status["state"] == "diverged" and "step 3" in status["message"] and status["global_step"] == 3
    assert [step for step, _ in list_checkpoints(run)] == [2]  # the poisoned weights were not saved
    assert "checkpoint-2" in str(info.value)
    assert torch.isnan(torch.tensor(float(_train_records(run)[-1]["loss"])))


def test_disk_full_while_saving_keeps_previous_checkpoint(cfg, tmp_path, monkeypatch):
    from transformers import Trainer

    from core.training import train

    original = Trainer._save_optimizer_and_scheduler

    def full_disk(self, output_dir):
        if self.state.global_step >= 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", full_disk)
    cfg.training.save_steps = 2
    cfg.training.eval_steps = 2
    with pytest.raises(TrainingError, match="disk is full.*checkpoint-2 is intact"):
        train(cfg, workspace=tmp_path / "ws")
    run = next((tmp_path / "ws").iterdir())
    assert read_status(run)["state"] == "failed"
    assert [step for step, _ in list_checkpoints(run)] == [2]
    assert not (run / "checkpoints" / "checkpoint-4").exists()  # the half-written one is cleaned up


def test_out_of_memory_becomes_advice(cfg, tmp_path, monkeypatch):
    import torch
    from transformers import Trainer

    from core.training import train

    def oom(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Trainer, "training_step", oom)
    with pytest.raises(TrainingError, match="out of memory.*batch size.*gradient checkpointing"):
        train(cfg, workspace=tmp_path / "ws")
    assert read_status(next((tmp_path / "ws").iterdir()))["state"] == "failed"


def test_early_stopping_ends_the_run(cfg, tmp_path):
    from core.training import train

    cfg.training.max_steps = 12
    cfg.training.eval_steps = cfg.training.save_steps = 2
    cfg.training.early_stopping_patience = 1
    cfg.training.early_stopping_threshold = 10.0  # no eval loss can improve by 10: stop at the 2nd eval
    events = []
    result = train(cfg, workspace=tmp_path / "ws", sinks=[CallbackSink(on_status=events.append)])
    assert result.state == "finished" and result.global_step == 4
    assert "early stopping" in result.message and (result.final_dir / "adapter_model.safetensors").is_file()
    assert not (result.final_dir / "training_args.bin").exists()
    # Nothing improves by 10, so step 4 ran out of patience; the best checkpoint is still the lower of
    # the two eval losses (the threshold only decides about stopping).
    evals = {r["step"]: r["eval_loss"] for r in read_metrics(result.run_dir) if r["kind"] == "eval"}
    best = min((2, 4), key=evals.__getitem__)
    status = read_status(result.run_dir)
    assert status["early_stopped_step"] == 4 and status["best_step"] == best
    assert status["best_checkpoint"] == f"checkpoint-{best}"
    expected = (f"stopped early at step 4 (early stopping): eval loss did not improve by at least 10 for 1 evaluation; "
                f"best checkpoint-{best} (eval loss {evals[best]:.4f}) kept as final")
    assert status["message"] == expected and result.message == expected
    assert events[-1].state == "finished" and events[-1].message == expected and events[-1].step == 4

    # A run that simply reaches max_steps has no early-stop mark.
    cfg.training.early_stopping_patience = 0
    cfg.training.max_steps = 2
    plain = read_status(train(cfg, workspace=tmp_path / "ws").run_dir)
    assert plain["early_stopped_step"] is None and plain["best_step"] == 2


def test_qlora_refused_on_cpu_and_missing_model(cfg, tmp_path):
    import importlib.util

    from core.training import train

    if importlib.util.find_spec("tensorboard") is None:
        cfg.training.report_to = "tensorboard"
        with pytest.raises(ConfigError, match="tensorboard is not installed"):
            train(cfg, workspace=tmp_path / "ws")
        cfg.training.report_to = "none"

    cfg.method.method = "qlora"
    with pytest.raises(ConfigError, match="NVIDIA GPU") as info:
        train(cfg, workspace=tmp_path / "ws")
    assert info.value.field == "method.method"
    cfg.method.method = "lora"
    cfg.model.name_or_path = str(tmp_path / "no-such-model")
    with pytest.raises(ModelError):
        train(cfg, workspace=tmp_path / "ws")
    # Refused before training: the QLoRA run keeps its folder (failed, with the reason); the missing model
    # leaves none; the report_to check refuses before creating a folder.
    assert [r.state for r in list_runs(tmp_path / "ws")] == ["failed"]


# --------------------------------------------------------------------------------------------- phases
def test_every_phase_is_labelled_and_evaluations_report_examples_done(cfg, tmp_path):
    """Loading, tokenizing, measuring the base model, training, evaluating and saving each have a phase;
    every evaluation reports k/n held-out examples and ends at n/n. With a time share far below what any
    evaluation costs, the held-out set is cut to the minimum (8 of 15), the same examples every time; the
    cap is a status line and status.json keeps it."""
    from core.training import train

    cfg.data.test_fraction = 0.5
    cfg.training.eval_time_share = 1e-9
    events = []
    result = train(cfg, workspace=tmp_path / "ws", sinks=[CallbackSink(on_status=events.append)])
    assert result.state == "finished"
    phases = [event.phase for event in events if event.phase]
    assert list(dict.fromkeys(phases)) == ["loading", "tokenizing", "measuring_base", "training", "evaluating",
                                           "saving"]
    cap_lines = [event.message for event in events if event.message.startswith("held-out evaluation")]
    assert cap_lines and "8 of 15 examples" in cap_lines[0] and "training.eval_time_share" in cap_lines[0]
    status = read_status(result.run_dir)
    assert status["eval_examples"] == 8 and status["eval_examples_available"] == 15 and status["eval_capped"]
    for phase, step in (("measuring_base", 0), ("evaluating", 3), ("evaluating", 6)):
        tag = "measuring the base model:" if step == 0 else f"at step {step}:"
        progress = [event for event in events if event.phase == phase and tag in event.message]
        assert progress[0].fraction == 0.0 and progress[0].message.endswith("0/8 held-out examples")
        assert progress[-1].fraction == 1.0 and progress[-1].message.endswith("8/8 held-out examples")
        assert all(event.step is None for event in progress)
    assert any(event.message == "saving checkpoint-3" for event in events)
    assert [r["step"] for r in read_metrics(result.run_dir) if r["kind"] == "eval"] == [0, 3, 6]


def test_resumed_run_evaluates_the_examples_of_its_first_session(tmp_path, cfg):
    from datasets import Dataset

    from core.runs import write_status
    from core.training import _cap_evaluation

    held_out = Dataset.from_dict({"input_ids": [[1, 2, 3]] * 15})
    write_status(tmp_path, state="stopped", eval_examples=8)
    assert len(_cap_evaluation(cfg, tmp_path, [], None, "cpu", None, held_out, 6, resuming=True)) == 8
    cfg.training.eval_time_share = 0.0  # no time cap: every held-out example
    events = []
    kept = _cap_evaluation(cfg, tmp_path, [CallbackSink(on_status=events.append)], None, "cpu", None, held_out, 6,
                           resuming=False)
    assert len(kept) == 15 and read_status(tmp_path)["eval_examples"] == 15
    assert events[0].message == "held-out evaluation: all 15 examples"


# --------------------------------------------------------------------------------------------- CLI
def test_cli_train_flags_and_runs_table(cfg, tmp_path, capsys):
    from core.cli import main

    config = tmp_path / "run.yaml"
    cfg.save(config)
    code = main(["train", "--config", str(config), "--max-steps", "2", "--learning-rate", "5e-4",
                 "--set", "training.eval_steps=2", "--set", "training.save_steps=2", "--output", str(tmp_path / "ws"), "--name", "cli-run"])
    assert code == 0
    run = tmp_path / "ws" / "cli-run"
    saved = RunConfig.load(run / "config.yaml")
    assert saved.training.max_steps == 2 and saved.training.learning_rate == 5e-4 and saved.training.eval_steps == 2
    assert saved.name == "cli-run" and saved.model.name_or_path == cfg.model.name_or_path
    capsys.readouterr()
    assert main(["runs", "--workspace", str(tmp_path / "ws")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["NAME", "STATUS", "STEPS"]
    assert table[1].split()[:4] == ["cli-run", "finished", "2/2", f"{read_status(run)['best_eval_loss']:.4f}"]
    assert main(["train", "--config", str(config), "--set", "training.nope=1"]) == 2


def test_cli_train_probes(cfg, tmp_path, capsys):
    """--probe / --probe-every reach core.training.train: answers at step 0 and every 2 steps, on the
    console and in metrics.jsonl; probe flags without a prompt are refused."""
    from core.cli import main
    from core.probes import load_probe_settings

    config = tmp_path / "run.yaml"
    cfg.save(config)
    code = main(["train", "--config", str(config), "--max-steps", "4", "--output", str(tmp_path / "ws"),
                 "--name", "probed", "--probe", "What is 2 plus 2?", "--probe", "Say hi",
                 "--probe-every", "2", "--probe-tokens", "5"])
    assert code == 0
    run = tmp_path / "ws" / "probed"
    settings = load_probe_settings(run)
    assert settings["prompts"] == ["What is 2 plus 2?", "Say hi"]
    assert settings["every"] == 2 and settings["max_new_tokens"] == 5
    answers = [r for r in read_metrics(run) if r.get("kind") == "probe"]
    assert sorted({(r["step"], r["prompt_index"]) for r in answers}) == [
        (step, index) for step in (0, 2, 4) for index in (0, 1)]
    err = capsys.readouterr().err
    assert "probe 1 @ step 0:" in err and "probe 2 @ step 4:" in err
    assert main(["train", "--config", str(config), "--probe-every", "2"]) == 2
    assert "needs at least one --probe" in capsys.readouterr().err


def test_cli_prints_and_records_the_coach_on_a_forced_divergence(cfg, tmp_path, capsys):
    """The coach runs headless: a learning rate far too high (1.0, full fine-tuning, no clipping) makes the
    CLI print "learning rate too high" within 20 steps, and the note is a {"kind": "coach"} line of
    metrics.jsonl, once. The run ends as diverged (exit 2), with that advice in its one error line."""
    from core.cli import main

    cfg.method.method = "full"
    t = cfg.training
    t.learning_rate, t.max_grad_norm, t.logging_steps = 1.0, 0.0, 1
    t.max_steps, t.eval_steps, t.save_steps = 8, 8, 8
    config = tmp_path / "run.yaml"
    cfg.save(config)
    assert main(["train", "--config", str(config), "--output", str(tmp_path / "ws"), "--name", "diverged"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "diverged" in errors[0] and "Learning rate likely too high" in errors[0], err
    assert read_status(tmp_path / "ws" / "diverged")["state"] == "diverged"
    printed = [line for line in err.splitlines() if line.startswith("coach @ step")]
    assert any("Learning rate likely too high" in line for line in printed), err
    notes = [r for r in read_metrics(tmp_path / "ws" / "diverged") if r.get("kind") == "coach"]
    too_high = [r for r in notes if r["rule"] == "lr_too_high"]
    assert len(too_high) == 1 and too_high[0]["step"] <= 20 and too_high[0]["severity"] == "error"
    assert too_high[0]["suggestion"] == {"training.learning_rate": 2e-5}
    assert "all_is_well" not in {r["rule"] for r in notes}


# --------------------------------------------------------------------------------------------- multi-process
def test_only_rank_zero_writes_the_run_folder(cfg, tmp_path, monkeypatch):
    """A rank other than 0 trains but leaves status, metrics, config, environment, probes and final/ to
    rank 0 (the 2-process run itself is tests/test_launch.py); without a given folder a multi-process
    run is refused, since every rank would make its own."""
    from core.training import train

    cfg.training.max_steps = 2
    cfg.training.eval_before_training = False
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(TrainingError, match="one run folder for every process"):
        train(cfg, workspace=tmp_path / "ws")
    # Rank 1 without a real process group (accelerate would try to join one on seeing RANK/WORLD_SIZE).
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setattr("core.training._process_rank", lambda: 1)
    run = tmp_path / "shared-run"
    events = []
    result = train(cfg, run_dir=run, probes=["What is 1 plus 1?"], sinks=[CallbackSink(events.append, events.append)])
    assert result.state == "finished" and result.global_step == 2 and "rank 1" in result.message
    assert result.final_dir is None and events == []
    # Only what the Trainer itself writes (here it believes it is alone, so it also saves checkpoints and
    # final.partial; in a real process group it writes nothing on rank 1).
    ours = {"config.yaml", "status.json", "metrics.jsonl", "environment.json", "probes.json", "final"}
    assert not ours & {p.name for p in run.iterdir()}
    assert not list(run.glob("checkpoints/*/COMPLETE"))


def test_held_out_examples_are_evaluated_longest_first():
    """Evaluation batches pad to their longest example: the held-out split is sorted by length (longest first,
    ties in split order), also when it is already a selection of another dataset (read through its indices)."""
    from datasets import Dataset

    from core.training import _longest_first, _token_lengths

    data = Dataset.from_dict({"input_ids": [[1] * n for n in (3, 7, 5, 7, 2, 9)]})
    ordered = _longest_first(data)
    assert _token_lengths(ordered) == [9, 7, 7, 5, 3, 2]
    assert [len(x) for x in ordered["input_ids"]] == [9, 7, 7, 5, 3, 2]
    picked = data.select([4, 0, 2])  # an indices mapping over the full table
    assert _token_lengths(picked) == [2, 3, 5]
    assert _token_lengths(_longest_first(picked)) == [5, 3, 2]
    assert _longest_first(None) is None


@pytest.mark.skipif(not __import__("core.devices", fromlist=["x"]).cpu_bf16_instructions(),
                    reason="this CPU has no native bf16 instructions (AMX / AVX-512 BF16)")
def test_bf16_lora_on_a_cpu_with_native_bf16_keeps_frozen_weights_in_bf16(cfg, tmp_path, monkeypatch):
    """On a CPU with AMX / AVX-512 BF16, precision=bf16 trains a LoRA run under bf16 autocast with the frozen base
    weights loaded in bf16 (no fp32 copy) and the adapter in fp32; its final/ loads like any LoRA run."""
    from core import hf_args, training

    seen = {}
    original = hf_args.apply_method

    def spy(model, *args, **kwargs):
        peft_model = original(model, *args, **kwargs)
        seen["frozen"] = {p.dtype for p in peft_model.parameters() if not p.requires_grad}
        seen["trainable"] = {p.dtype for p in peft_model.parameters() if p.requires_grad}
        return peft_model

    monkeypatch.setattr(hf_args, "apply_method", spy)
    cfg.training.precision = "bf16"
    cfg.training.max_steps = 3
    result = training.train(cfg, workspace=tmp_path / "ws")
    assert result.state == "finished" and result.global_step == 3
    import torch

    assert seen == {"frozen": {torch.bfloat16}, "trainable": {torch.float32}}
    losses = [r["loss"] for r in _train_records(result.run_dir)]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert json.loads((result.final_dir / "adapter_config.json").read_text())["peft_type"] == "LORA"
