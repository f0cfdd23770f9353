"""Training measurements, each run in its own subprocess by ``bench.run`` (so RSS peaks never mix).

Contenders, all on the bundled SmolLM2-135M-Instruct and the same N trivia examples for one epoch
(identical token ids: every contender trains on the app's own tokenization of the same records):

- ``app``: ``core.training.train`` with the RunConfig defaults (only data/model/steps changed).
- ``tutorial``: the tutorials' recipe: plain ``Trainer``, batch 1, gradient accumulation 4, Adafactor,
  ``DataCollatorForLanguageModeling`` (labels = input_ids), each example on its own (no padding).
- ``padded``: plain ``Trainer`` with the app's batch size but every example padded to max_length.

"Trained tokens" are the non-padding input tokens: the same number for every contender.
"""

from __future__ import annotations

import json
import math
import resource
import time
from pathlib import Path
from typing import Any

MAX_LENGTH = 256  # the RunConfig default


# ------------------------------------------------------------------------------------------ helpers
def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def write_subset(path: Path, n: int, offset: int = 0) -> Path:
    """Write ``n`` trivia question/answer records (from the bundled sample) to a JSONL file."""
    from core.config import DataConfig
    from core.data import load_records

    _, _, records, _ = load_records(DataConfig(source="sample:trivia"))
    chosen = records[offset: offset + n]
    if len(chosen) < n:
        raise SystemExit(f"sample:trivia has only {len(records)} records, {n} asked for")
    with open(path, "w", encoding="utf-8") as handle:
        for record in chosen:
            handle.write(json.dumps({"question": record["question"], "answer": record["answer"]}) + "\n")
    return path


def _timer_callback(eval_runtime_key: str = "eval_runtime"):
    """A TrainerCallback recording the training wall clock, per-step times and evaluation time."""
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.begin = self.end = None
            self.step_started = None
            self.step_seconds: list[float] = []
            self.eval_seconds = 0.0
            self.tokens_seen = 0
            self.steps = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.begin = time.perf_counter()
            self.last_step_end = self.begin

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            # Interval between optimizer steps: data loading, forward, backward, optimizer, callbacks.
            self.step_seconds.append(now - self.last_step_end)
            self.last_step_end = now

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and eval_runtime_key in logs:
                self.eval_seconds += float(logs[eval_runtime_key])

        def on_evaluate(self, args, state, control, **kwargs):
            self.last_step_end = time.perf_counter()  # the next step interval must not include eval

        def on_train_end(self, args, state, control, **kwargs):
            self.end = time.perf_counter()
            self.tokens_seen = int(state.num_input_tokens_seen or 0)
            self.steps = int(state.global_step)

    return Timer()


def _summary(timer, n_tokens: int, n_examples: int, extra: dict | None = None) -> dict:
    train_seconds = (timer.end - timer.begin) - timer.eval_seconds
    steps = sorted(timer.step_seconds)
    result = {
        "examples": n_examples,
        "trained_tokens": n_tokens,
        "tokens_seen_by_trainer": timer.tokens_seen,
        "optimizer_steps": timer.steps,
        "train_seconds": round(train_seconds, 3),
        "tokens_per_second": round(n_tokens / train_seconds, 2),
        "seconds_per_step_mean": round(sum(steps) / len(steps), 4) if steps else None,
        "seconds_per_step_median": round(steps[len(steps) // 2], 4) if steps else None,
        "examples_per_step": round(n_examples / max(1, timer.steps), 2),
        "peak_rss_bytes": peak_rss_bytes(),
    }
    result.update(extra or {})
    return result


def _prepared(source: str, tokenizer, test_fraction: float = 0.0):
    from core.config import DataConfig
    from core.data import prepare_dataset

    data_cfg = DataConfig(source=source, test_fraction=test_fraction)
    return data_cfg, prepare_dataset(data_cfg, tokenizer, MAX_LENGTH)


def _model(method: str):
    from core.config import MethodConfig, ModelConfig
    from core.hf_args import apply_method
    from core.models import load_model

    model = load_model(ModelConfig(), device="cpu")
    return apply_method(model, MethodConfig(method=method))


def _plain_args(output_dir: str, **kwargs):
    from transformers import TrainingArguments

    base = dict(output_dir=output_dir, num_train_epochs=1, learning_rate=2e-4, save_strategy="no",
                eval_strategy="no", logging_steps=10, report_to="none", use_cpu=True, disable_tqdm=True,
                include_num_input_tokens_seen="non_padding", seed=42, dataloader_num_workers=0)
    base.update(kwargs)
    return TrainingArguments(**base)


# ------------------------------------------------------------------------------------------ throughput
def throughput(contender: str, method: str, data_file: str, workdir: str, *, threads: int | None = None,
               group_by_length: bool | None = None, pad_to_max_length: bool = False,
               trained_positions_only: bool = True, optim: str | None = None) -> dict:
    """Train one epoch on ``data_file`` with one contender; returns throughput, step time, peak RSS.

    App-only "before" variants: ``trained_positions_only=False`` (the stock loss: logits at every
    position), ``optim="adamw_torch"`` (the foreach AdamW the app used before the fused kernel)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from core.config import ModelConfig
    from core.models import load_tokenizer

    tokenizer = load_tokenizer(ModelConfig())
    data_cfg, prepared = _prepared(data_file, tokenizer)
    train = prepared.train
    n_tokens = sum(len(ids) for ids in train["input_ids"])
    n_examples = len(train)
    info = {"contender": contender, "method": method, "torch_threads": torch.get_num_threads()}

    if contender == "app":
        from core import hf_args, training
        from core.config import RunConfig

        training.TRAINED_POSITIONS_ONLY = trained_positions_only
        if optim:
            stock_arguments = hf_args.training_arguments

            def with_optim(*args, **kwargs):
                return stock_arguments(*args, **{**kwargs, "optim": optim})

            hf_args.training_arguments = with_optim  # core.training imports it at call time
        info.update(trained_positions_only=trained_positions_only, optim_override=optim)

        cfg = RunConfig()
        cfg.data.source = data_file
        cfg.data.test_fraction = 0.0  # throughput only: no held-out set, so no evaluation at all
        cfg.method.method = method
        cfg.training.num_epochs = 1.0
        if group_by_length is not None:
            cfg.training.group_by_length = group_by_length
        if pad_to_max_length:
            # The "before" of per-batch padding: the app's collator, but padding every batch to max_length.
            base_collator = training.PadToLongestCollator

            class PadToMax(base_collator):
                def __call__(self, features):
                    features = [dict(f) for f in features]
                    features[0] = dict(features[0])
                    pad = MAX_LENGTH - len(features[0]["input_ids"])
                    features[0]["input_ids"] = list(features[0]["input_ids"]) + [self.pad_token_id] * pad
                    features[0]["labels"] = list(features[0]["labels"]) + [-100] * pad
                    features[0]["attention_mask"] = list(features[0]["attention_mask"]) + [0] * pad
                    return super().__call__(features)

            training.PadToLongestCollator = PadToMax
        timer = _timer_callback()
        result = training.train(cfg, run_dir=Path(workdir) / "app-run", extra_callbacks=[timer])
        info.update(group_by_length=cfg.training.group_by_length, batch_size=cfg.training.batch_size,
                    gradient_accumulation=cfg.training.gradient_accumulation, optimizer=cfg.training.optimizer,
                    pad_to_max_length=pad_to_max_length, state=result.state)
        return _summary(timer, n_tokens, n_examples, info)

    from transformers import DataCollatorForLanguageModeling, Trainer, default_data_collator

    model = _model(method)
    timer = _timer_callback()
    if contender == "tutorial":
        # The tutorials: labels = input_ids (prompt included), one example per batch, so never padded.
        dataset = train.remove_columns(["labels"])
        args = _plain_args(workdir, per_device_train_batch_size=1, gradient_accumulation_steps=4,
                           optim="adafactor")
        collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
        info.update(batch_size=1, gradient_accumulation=4, optimizer="adafactor")
    elif contender == "padded":
        pad_id = tokenizer.pad_token_id

        def pad(example):
            n = MAX_LENGTH - len(example["input_ids"])
            return {"input_ids": list(example["input_ids"]) + [pad_id] * n,
                    "labels": list(example["labels"]) + [-100] * n,
                    "attention_mask": list(example["attention_mask"]) + [0] * n}

        dataset = train.map(pad)
        args = _plain_args(workdir, per_device_train_batch_size=8, gradient_accumulation_steps=1,
                           optim="adamw_torch")
        collator = default_data_collator
        info.update(batch_size=8, gradient_accumulation=1, optimizer="adamw_torch", padded_to=MAX_LENGTH)
    else:
        raise SystemExit(f"unknown contender {contender}")
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=[timer])
    trainer.train()
    return _summary(timer, n_tokens, n_examples, info)


# ------------------------------------------------------------------------------------------ FLOPs
def model_flops_per_token(method: str, lora_r: int = 16) -> dict:
    """FLOPs per trained token for one training step (forward + backward), matmuls only.

    N = weights used in matmuls per token: every Linear of the decoder plus the lm_head (tied to the
    embedding, but still a d x V matmul); the embedding lookup is not a matmul and attention scores
    (4*L*seq*d, < 2% at trivia lengths) are left out, so the count is slightly conservative.
    - full: 6N (forward 2N, backward activation-grad 2N, weight-grad 2N).
    - LoRA: forward 2N + backward activation-grad 2N (frozen weights need no weight-grad) + for every
      adapted layer (in, out): 6*r*(in + out) (A and B forward, activation-grad, weight-grad).
    """
    import torch

    from core.config import MethodConfig, ModelConfig
    from core.hf_args import apply_method, default_target_modules
    from core.models import load_model

    model = load_model(ModelConfig(), device="cpu")
    targets = default_target_modules(model)
    n_matmul = 0
    adapter_dims = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            n_matmul += module.in_features * module.out_features
            leaf = name.rsplit(".", 1)[-1]
            if leaf != "lm_head" and (targets == "all-linear" or leaf in targets):
                adapter_dims += module.in_features + module.out_features
    n_params = sum(p.numel() for p in model.parameters())
    lora = 4 * n_matmul + 6 * lora_r * adapter_dims
    full = 6 * n_matmul
    del apply_method, MethodConfig
    return {"n_params": n_params, "n_matmul_weights": n_matmul, "lora_adapter_in_plus_out": adapter_dims,
            "lora_r": lora_r, "flops_per_token_lora": lora, "flops_per_token_full": full,
            "flops_per_token": lora if method == "lora" else full}


def matmul_benchmark(threads: int = 2, rows: int = 512, repeats: int = 10) -> dict:
    """fp32 torch.matmul FLOP/s at the model's shapes (rows x K @ K x N) with ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    shapes = [(rows, 576, 576), (rows, 576, 192), (rows, 576, 1536), (rows, 1536, 576), (rows, 576, 49152)]
    results = {}
    for m, k, n in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        for _ in range(2):
            torch.matmul(a, b)
        reps = max(2, repeats if n < 10000 else 3)
        best = math.inf
        for _ in range(reps):
            t = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - t)
        results[f"{m}x{k}x{n}"] = round(2 * m * k * n / best / 1e9, 2)
    return {"threads": threads, "gflops_by_shape": results, "peak_gflops": max(results.values())}


# ------------------------------------------------------------------------------------------ time to quality
def _held_out_loss(model, batch) -> float:
    """Mean cross-entropy over the answer tokens of the held-out set (eval mode, no grad)."""
    import torch

    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
        shift_labels = batch["labels"][:, 1:].reshape(-1)
        loss = torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum")
        count = (shift_labels != -100).sum()
    if was_training:
        model.train()
    return float(loss / count)


def _quality_callback(eval_batch, every_examples: int, examples_per_step: int, cap_seconds: float,
                      ratio: float, stop_ratio: float):
    from transformers import TrainerCallback

    class Quality(TrainerCallback):
        def __init__(self) -> None:
            self.curve: list[dict] = []
            self.base = None
            self.reached_at = None
            self.excluded = 0.0
            self.begin = None
            self.every_steps = max(1, every_examples // examples_per_step)

        def _wall(self) -> float:
            return time.perf_counter() - self.begin - self.excluded

        def _evaluate(self, model, step: int) -> float:
            started = time.perf_counter()
            value = _held_out_loss(model, eval_batch)
            self.excluded += time.perf_counter() - started
            return value

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.begin = time.perf_counter()
            self.base = self._evaluate(model, 0)
            self.curve.append({"step": 0, "examples": 0, "wall": 0.0, "eval_loss": round(self.base, 4)})

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "eval_runtime" in logs:
                self.excluded += float(logs["eval_runtime"])  # the app's own evaluations

        def on_step_end(self, args, state, control, model=None, **kwargs):
            wall = self._wall()
            if state.global_step % self.every_steps == 0:
                value = self._evaluate(model, state.global_step)
                self.curve.append({"step": state.global_step, "examples": state.global_step * examples_per_step,
                                   "wall": round(wall, 2), "eval_loss": round(value, 4)})
                if value <= ratio * self.base and self.reached_at is None:
                    self.reached_at = wall
                if value <= stop_ratio * self.base:
                    control.should_training_stop = True
            if wall > cap_seconds:
                control.should_training_stop = True
            return control

    return Quality()


def time_to_quality(contender: str, workdir: str, *, cap_seconds: float = 360.0, ratio: float = 0.8,
                    stop_ratio: float = 0.5, every_examples: int = 16, epochs: float = 3.0) -> dict:
    """Wall time (evaluations excluded) until the held-out answer loss reaches ``ratio`` x the base
    model's, training on sample:trivia's train split (LoRA), evaluated every ``every_examples``.
    Training goes on until ``stop_ratio`` x base (or the cap), so stricter targets can be read off the curve."""
    import torch

    from core.config import ModelConfig
    from core.models import load_tokenizer
    from core.training import PadToLongestCollator

    tokenizer = load_tokenizer(ModelConfig())
    _, prepared = _prepared("sample:trivia", tokenizer, test_fraction=0.1)  # the app's default split
    eval_batch = PadToLongestCollator(tokenizer.pad_token_id)([prepared.test[i] for i in range(len(prepared.test))])
    info: dict[str, Any] = {"contender": contender, "cap_seconds": cap_seconds, "target_ratio": ratio,
                            "held_out_examples": len(prepared.test), "train_examples": len(prepared.train),
                            "torch_threads": torch.get_num_threads()}
    if contender == "app":
        from core import training
        from core.config import RunConfig

        cfg = RunConfig()
        cfg.training.num_epochs = epochs
        quality = _quality_callback(eval_batch, every_examples, cfg.training.batch_size, cap_seconds, ratio,
                                    stop_ratio)
        result = training.train(cfg, run_dir=Path(workdir) / "ttq-app", extra_callbacks=[quality])
        info["run_dir"] = str(result.run_dir)
    elif contender == "tutorial":
        from transformers import DataCollatorForLanguageModeling, Trainer

        model = _model("lora")
        args = _plain_args(workdir, per_device_train_batch_size=1, gradient_accumulation_steps=4,
                           optim="adafactor", num_train_epochs=epochs)
        quality = _quality_callback(eval_batch, every_examples, 4, cap_seconds, ratio, stop_ratio)
        trainer = Trainer(model=model, args=args, train_dataset=prepared.train.remove_columns(["labels"]),
                          data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False), callbacks=[quality])
        trainer.train()
    else:
        raise SystemExit(f"unknown contender {contender}")
    info.update(base_eval_loss=round(quality.base, 4), target_eval_loss=round(ratio * quality.base, 4),
                seconds_to_target=round(quality.reached_at, 2) if quality.reached_at is not None else None,
                reached=quality.reached_at is not None, curve=quality.curve,
                seconds_to_ratio={str(r): next((p["wall"] for p in quality.curve if p["eval_loss"] <= r * quality.base),
                                               None) for r in (0.8, 0.7, 0.6, 0.5)},
                best_eval_loss=min(p["eval_loss"] for p in quality.curve),
                peak_rss_bytes=peak_rss_bytes())
    return info


# ------------------------------------------------------------------------------------------ caches
def dataset_cache(cache_dir: str) -> dict:
    """prepare_dataset twice with an empty cache folder: the first tokenizes, the second loads."""
    import os

    os.environ["FINETUNE_STUDIO_CACHE"] = cache_dir  # read by core.paths.cache_dir at call time
    from core.config import DataConfig, ModelConfig
    from core.data import prepare_dataset
    from core.models import load_tokenizer

    tokenizer = load_tokenizer(ModelConfig())
    times = []
    for _ in range(2):
        started = time.perf_counter()
        prepared = prepare_dataset(DataConfig(source="sample:all"), tokenizer, MAX_LENGTH)
        times.append(time.perf_counter() - started)
    return {"source": "sample:all", "examples": len(prepared.train) + len(prepared.test or []),
            "first_seconds": round(times[0], 3), "cached_seconds": round(times[1], 3),
            "second_from_cache": bool(prepared.from_cache)}


def model_cache(cache_dir: str) -> dict:
    """ensure_bundled_model into an empty cache (GGUF conversion) and again (already converted)."""
    import os

    os.environ["FINETUNE_STUDIO_CACHE"] = cache_dir
    from core.models import ensure_bundled_model

    times = []
    for _ in range(2):
        started = time.perf_counter()
        ensure_bundled_model()
        times.append(time.perf_counter() - started)
    return {"convert_seconds": round(times[0], 3), "cached_seconds": round(times[1], 4)}


def write_subset_json(path: str, n: int, offset: int = 0) -> dict:
    """``write_subset`` for the worker protocol (a JSON-ready result)."""
    write_subset(Path(path), n, offset)
    return {"path": path, "examples": n}


# ------------------------------------------------------------------------------------------ profile
def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def profile_step(workdir: str, batch_size: int = 8, repeats: int = 3) -> dict:
    """Where one app LoRA step's time goes, and two alternatives measured on the same batch:

    - ops: torch.profiler self-CPU time per op for forward + backward (matmuls vs the rest);
    - ``lm_head_trained_only``: the logits (576 x 49152 matmul and the fp32 [batch, seq, 49152] tensor)
      computed only at the positions whose next token is trained (answers only), instead of everywhere;
    - optimizer step of full fine-tuning: AdamW (foreach, the Trainer's adamw_torch), AdamW fused,
      Adafactor (what the tutorials use).
    """
    import torch

    from core.config import ModelConfig
    from core.models import load_tokenizer
    from core.training import PadToLongestCollator

    tokenizer = load_tokenizer(ModelConfig())
    Path(workdir).mkdir(parents=True, exist_ok=True)
    data_file = write_subset(Path(workdir) / "profile.jsonl", 64)
    _, prepared = _prepared(str(data_file), tokenizer)
    train = prepared.train
    # A typical length-grouped batch: 8 consecutive examples after sorting by length, from the middle.
    order = sorted(range(len(train)), key=lambda i: len(train[i]["input_ids"]))
    middle = len(order) // 2
    batch = PadToLongestCollator(tokenizer.pad_token_id)([train[i] for i in order[middle: middle + batch_size]])
    n_tokens = int(batch["attention_mask"].sum())
    n_trained = int((batch["labels"][:, 1:] != -100).sum())
    model = _model("lora")
    model.train()

    def default_step():
        loss = model(**batch).loss
        loss.backward()
        model.zero_grad(set_to_none=True)

    base = model.get_base_model()

    def trained_only_step():
        hidden = base.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        labels = batch["labels"][:, 1:]
        keep = labels != -100
        logits = base.lm_head(hidden[:, :-1][keep])
        loss = torch.nn.functional.cross_entropy(logits.float(), labels[keep])
        loss.backward()
        model.zero_grad(set_to_none=True)

    default_step()
    trained_only_step()
    default_s = _median_seconds(default_step, repeats)
    trained_s = _median_seconds(trained_only_step, repeats)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        default_step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    matmul_names = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear",
                    "aten::_scaled_dot_product_flash_attention_for_cpu",
                    "aten::_scaled_dot_product_flash_attention_for_cpu_backward")
    matmul_share = sum(e.self_cpu_time_total for e in events if e.key in matmul_names) / total
    result = {"batch_size": batch_size, "tokens_in_batch": n_tokens, "trained_positions": n_trained,
              "padded_shape": list(batch["input_ids"].shape),
              "lora_step_seconds": round(default_s, 3), "lora_step_lm_head_trained_only_seconds": round(trained_s, 3),
              "lm_head_trained_only_speedup": round(default_s / trained_s, 3),
              "profile_matmul_share": round(matmul_share, 3),
              "profile_top_ops_ms": {e.key: round(e.self_cpu_time_total / 1000, 1) for e in top}}
    model = base = None  # free the LoRA model before the full one loads
    # Full fine-tuning optimizer step over every weight (135 M parameters).
    from transformers.optimization import Adafactor

    from core.config import ModelConfig as _MC
    from core.models import load_model

    full = load_model(_MC(), device="cpu")
    full.train()
    loss = full(**batch).loss
    loss.backward()
    params = [p for p in full.parameters() if p.requires_grad]
    optimizers = {
        "adamw_foreach": lambda: torch.optim.AdamW(params, lr=2e-4, foreach=True),
        "adamw_fused": lambda: torch.optim.AdamW(params, lr=2e-4, fused=True),
        "adafactor": lambda: Adafactor(params, lr=2e-4, scale_parameter=False, relative_step=False, warmup_init=False),
    }
    steps = {}
    for name, make in optimizers.items():
        try:
            optimizer = make()
            optimizer.step()  # creates the state
            steps[name] = round(_median_seconds(optimizer.step, repeats), 3)
            del optimizer
        except (RuntimeError, TypeError, ValueError) as exc:
            steps[name] = f"error: {exc}"[:200]
    started = time.perf_counter()
    full.zero_grad(set_to_none=False)
    loss = full(**batch).loss
    loss.backward()
    result["full_forward_backward_seconds"] = round(time.perf_counter() - started, 3)
    result["full_optimizer_step_seconds"] = steps
    result["peak_rss_bytes"] = peak_rss_bytes()
    return result
