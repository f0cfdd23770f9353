"""Pre-flight estimate of a run's memory and time, a real few-step probe, and ways to make it fit.

What "memory" means here: the growth of the training process's resident memory (RSS on CPU, allocated
CUDA memory on a GPU) from just before the model is loaded (torch, transformers and peft already
imported) to the peak during the training steps. That is what decides whether a run fits next to what the
machine already holds. ``estimate`` predicts it from the architecture (layers, hidden size, heads,
vocabulary) without loading the weights; ``probe`` measures the same quantity by running a few real
training steps through ``core.training.train`` in a child process (so the measurement is clean and the
caller's memory is untouched).

Parts of the estimate:
  weights     every parameter in the load precision (fp32 on CPU)
  trainable   LoRA/prefix adapter weights (fp32) - none for full fine-tuning (they are the weights)
  gradients   fp32, one per trainable parameter
  optimizer   AdamW: two fp32 moments per trainable parameter; Adafactor: factored (~rows + cols)
  activations tensors kept for the backward pass, per layer and token, from the architecture
  logits      batch x length x vocab x 4 bytes, ~3 live copies at the loss (logits, log-softmax, grad):
              for small models with big vocabularies (SmolLM2: 49k) this is the largest single part
  overhead    allocator slack, dataset, Trainer state (a measured constant)

Time: FLOPs per step (forward 2N + backward 2N, + 2N for weight gradients when training all weights)
over a measured matmul throughput of this machine (cached), times an efficiency factor measured on
real small-model training (small matmuls, attention, loss and optimizer run well below peak).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.config import RunConfig
from core.errors import StudioError, TrainingError

GIB = 1024**3
MIB = 1024**2

# Measured on this project's reference runs (SmolLM2-135M and the tiny test model, CPU fp32, see
# tests/test_estimate.py): the share of peak matmul throughput real training steps reach, and the fixed
# memory the Trainer and allocator add on top of the tensors.
TRAINING_EFFICIENCY = {"cpu": 0.58, "cuda": 0.35, "mps": 0.3}
STEP_OVERHEAD_SECONDS = {"cpu": 0.01, "cuda": 0.02, "mps": 0.02}  # data loading, optimizer, callbacks
OVERHEAD_BYTES = {"cpu": 64 * MIB, "cuda": 300 * MIB, "mps": 200 * MIB}
LOGITS_COPIES = 3.0  # fp32 logits, their log-softmax and its gradient are alive together at the loss
# On a CPU a small batch runs far below the matmul peak (short matrices, fixed costs per step): a batch of
# M tokens costs as if it had SMALL_BATCH_TOKENS more, i.e. the efficiency scales by M / (M + extra),
# normalised to 1 at 1024 tokens so the calibration above (batch 8 x 128) is unchanged. Fitted to the idle
# reference runs of SmolLM2-135M LoRA: 8 x 128 at TRAINING_EFFICIENCY, and 8 x 28 at 1.50 s/step
# (bench/results/latest.md), where the plain formula said 0.78 s.
SMALL_BATCH_TOKENS = {"cpu": 360}


@dataclass
class MemoryPart:
    name: str
    bytes: int
    note: str = ""


@dataclass
class Estimate:
    """A run's predicted (or probed) memory and time."""

    parts: list[MemoryPart]
    total_bytes: int  # predicted growth of process memory during training (see module docstring)
    available_bytes: int | None  # free memory on the device now (RAM available / free CUDA memory)
    fits: bool | None  # None when the available memory is unknown
    device: str  # "cpu", "cuda:0", ...
    precision: str
    total_params: int
    trainable_params: int
    tokens_per_step: int  # batch x accumulation x length (upper bound: padding per batch is shorter)
    flops_per_step: float
    device_flops: float  # measured matmul FLOP/s
    seconds_per_step: float
    total_steps: int | None
    seconds_total: float | None
    measured: dict = field(default_factory=dict)  # filled by probe(): peak bytes, seconds per step, ...
    notes: list[str] = field(default_factory=list)
    # The whole run from Start to the end, in seconds per part (loading, evaluations, training, saving), and
    # the held-out examples each evaluation uses (the CPU time cap, see eval_cap); empty when steps are unknown.
    run_parts: dict = field(default_factory=dict)
    eval_examples: int | None = None

    @property
    def run_seconds(self) -> float | None:
        """The estimated time of the whole run (None when the number of steps is unknown)."""
        return sum(self.run_parts.values()) if self.run_parts else None

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        """A plain-text table for the CLI."""
        rows = [(part.name, _size(part.bytes), part.note) for part in self.parts]
        if self.measured:
            rows.append(("total (estimated)", _size(self.measured.get("estimated_bytes", 0)), "from the formula"))
            rows.append(("total (measured)", _size(self.total_bytes), "growth of process memory in the probe"))
        else:
            rows.append(("total", _size(self.total_bytes), "growth of process memory while training"))
        if self.available_bytes is not None:
            rows.append(("available", _size(self.available_bytes), f"free on {self.device} now"))
        width = max(len(r[0]) for r in rows)
        lines = [f"Memory on {self.device} ({self.precision}), {self.total_params:,} parameters, "
                 f"{self.trainable_params:,} trained"]
        lines += [f"  {name:<{width}}  {size:>10}  {note}" for name, size, note in rows]
        verdict = {True: "fits", False: "does NOT fit", None: "fit unknown"}[self.fits]
        lines.append(f"  -> {verdict}")
        steps = f"{self.total_steps} steps" if self.total_steps else "steps unknown"
        line = (f"Time: {self.flops_per_step / 1e9:,.1f} GFLOP per step at {self.device_flops / 1e9:,.0f} GFLOP/s "
                f"measured -> {self.seconds_per_step:.2f} s/step")
        if self.seconds_total is not None:
            line += f", {steps}: {_duration(self.seconds_total)}"
        lines.append(line)
        if self.measured:
            m = self.measured
            lines.append(f"Probe ({m.get('steps')} real steps): peak growth {_size(m.get('peak_bytes', 0))}, "
                         f"{m.get('seconds_per_step', 0):.2f} s/step")
        lines += [f"Note: {note}" for note in self.notes]
        return "\n".join(lines)


def _size(value: int | float) -> str:
    value = float(value)
    if abs(value) >= GIB:
        return f"{value / GIB:.2f} GiB"
    return f"{value / MIB:.0f} MiB"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# --------------------------------------------------------------------------------------------- architecture
@dataclass
class Architecture:
    """The numbers the estimate needs, read from the model's config (weights not loaded)."""

    model_type: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    total_params: int
    linear_shapes: dict  # module path -> (in_features, out_features), lm_head excluded
    gated_mlp: bool
    load_bytes_per_param: int = 4


def architecture(cfg: RunConfig) -> Architecture:
    """Read the architecture of ``cfg.model`` from its config and a weightless (meta) copy of the model."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from core.consent import allowed
    from core.models import resolve_model_path

    path = resolve_model_path(cfg.model)
    trust = allowed(cfg.model, "trust_remote_code")  # the user's consent, never the config's flag
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust)
    return architecture_from_model(model)


def architecture_from_model(model) -> Architecture:
    """The ``Architecture`` of a model object (real or on the meta device); its config gives the sizes."""
    import torch

    config = model.config
    seen: set[int] = set()
    total = 0
    for param in model.parameters():
        if id(param) not in seen:  # tied embeddings count once
            seen.add(id(param))
            total += param.numel()
    shapes = {name: (module.in_features, module.out_features) for name, module in model.named_modules()
              if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head")}
    hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0))
    heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 1))
    names = " ".join(shapes)
    return Architecture(
        model_type=str(getattr(config, "model_type", "")),
        num_layers=int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0)),
        hidden_size=hidden,
        intermediate_size=int(getattr(config, "intermediate_size", 0) or getattr(config, "n_inner", 0) or 4 * hidden),
        num_heads=heads,
        num_kv_heads=int(getattr(config, "num_key_value_heads", 0) or heads),
        vocab_size=int(getattr(config, "vocab_size", 0)),
        total_params=total,
        linear_shapes=shapes,
        gated_mlp="gate_proj" in names or "w1" in names,
    )


def _targeted(name: str, targets: str) -> bool:
    if targets in ("auto", "all-linear"):
        return True  # every attention and MLP projection (lm_head is already excluded)
    wanted = [t.strip() for t in targets.split(",") if t.strip()]
    return any(name == t or name.endswith("." + t) for t in wanted)


def trainable_params(arch: Architecture, method_cfg) -> int:
    """Trainable parameters of the method on this architecture."""
    method = method_cfg.method
    if method == "full":
        return arch.total_params
    if method == "prefix":
        # Past key/values for every layer: 2 x layers x kv width per virtual token.
        kv_width = arch.hidden_size * arch.num_kv_heads // max(arch.num_heads, 1)
        return method_cfg.prefix_virtual_tokens * arch.num_layers * 2 * kv_width
    r = method_cfg.lora_r
    return sum(r * (n_in + n_out) for name, (n_in, n_out) in arch.linear_shapes.items()
               if _targeted(name, method_cfg.target_modules))


def activation_bytes(arch: Architecture, cfg: RunConfig, *, batch: int, length: int, element: int) -> int:
    """Tensors kept for the backward pass in the transformer layers (logits are counted separately).

    Per layer and token (in elements): the norms, q/k/v/attention output and the residual stream
    (~10 x hidden), the MLP intermediate (gated: gate, up, activation, product = 4 x intermediate;
    plain: 2 x intermediate), and for LoRA each adapted projection keeps its (dropped-out) input and
    the rank-r intermediate. With gradient checkpointing only each layer's input is kept, plus one
    layer recomputed at a time.
    """
    h, i = arch.hidden_size, arch.intermediate_size
    per_token = 10 * h + (4 if arch.gated_mlp else 2) * i
    method = cfg.method.method
    if method in ("lora", "qlora"):
        dropout_copy = 2 if cfg.method.lora_dropout > 0 else 1
        per_layer_inputs = sum(n_in * dropout_copy + cfg.method.lora_r
                               for name, (n_in, _) in arch.linear_shapes.items()
                               if _targeted(name, cfg.method.target_modules))
        per_token += per_layer_inputs // max(arch.num_layers, 1)
    elif method == "full":
        per_token += 4 * h + i  # the inputs of every projection are kept for their weight gradients
    tokens = batch * length
    if cfg.training.gradient_checkpointing:
        return int(tokens * element * (arch.num_layers * h + per_token))
    return int(tokens * element * arch.num_layers * per_token)


# --------------------------------------------------------------------------------------------- device speed
def _benchmark_file() -> Path:
    from core.paths import cache_dir

    return cache_dir() / "matmul_benchmark.json"


def _processor_name(device: str) -> str:
    """The CPU model or the GPU's name."""
    if device.startswith("cuda"):
        import torch

        index = int(device.split(":", 1)[1]) if ":" in device else 0
        return torch.cuda.get_device_name(index)
    from core.devices import cpu_model

    return cpu_model()


def measure_matmul_flops(device: str = "cpu", *, size: int = 1024, seconds: float = 0.5,
                         use_cache: bool = True) -> float:
    """Matmul FLOP/s of this machine (fp32 square matmuls for ~``seconds``); cached per device and thread
    count in the app cache so it runs once."""
    import torch

    # The processor is part of the key: a home folder that moves to another machine (or a GPU swapped) must not
    # reuse another processor's speed.
    key = f"{device}:{torch.get_num_threads()}:{size}:{_processor_name(device)}"
    path = _benchmark_file()
    cache: dict = {}
    if use_cache and path.is_file():
        try:
            cache = json.loads(path.read_text())
        except (OSError, ValueError):
            cache = {}
        if key in cache:
            return float(cache[key])
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    torch.matmul(a, b)  # warm-up: thread pool, kernels
    runs = 0
    start = time.perf_counter()
    while True:
        torch.matmul(a, b)
        runs += 1
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and runs >= 3:
            break
    flops = 2 * size**3 * runs / elapsed
    cache[key] = flops
    try:
        from core.config import atomic_write_text

        atomic_write_text(path, json.dumps(cache, indent=1))
    except OSError:
        pass  # a read-only cache only costs a re-measurement
    return flops


# --------------------------------------------------------------------------------------------- estimate
def _available_bytes(device: str) -> int | None:
    if device.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # psutil missing: unknown
        return None


def _total_steps(cfg: RunConfig, dataset_stats: dict | None, processes: int) -> int | None:
    t = cfg.training
    if t.max_steps > 0:
        return t.max_steps
    count = (dataset_stats or {}).get("count")
    if not count:
        return None
    per_step = t.batch_size * t.gradient_accumulation * max(processes, 1)
    return max(1, math.ceil(count / per_step * t.num_epochs))


def estimate(cfg: RunConfig, *, model_info: Architecture | None = None, device: Any = None,
             dataset_stats: dict | None = None, processes: int = 1, measure_device: bool = True) -> Estimate:
    """Predict the memory and time of training ``cfg`` (no weights are loaded; see the module docstring).

    ``model_info``: an ``Architecture`` (read from the model's config when None). ``device``: a DeviceInfo
    or spec ("cpu", "cuda:0"); the config's device when None. ``dataset_stats``: {"count": examples,
    "mean": mean tokens per example} from the data page (``LengthStats``), for the step count and a
    realistic length (batches are padded to their longest example, not to max length).
    """
    from core.devices import DeviceInfo, pick_device, resolve_precision

    info = device if isinstance(device, DeviceInfo) else pick_device(device or cfg.training.device)
    spec = info.spec
    precision = resolve_precision(cfg.training.precision, info)
    arch = model_info or architecture(cfg)
    t, method = cfg.training, cfg.method.method
    element = 4 if precision == "fp32" else 2
    trainable = trainable_params(arch, cfg.method)
    length = t.max_length
    notes: list[str] = []
    stats = dataset_stats or {}
    if stats.get("max"):
        length = min(length, int(stats["max"]))

    # A bf16 LoRA run loads its frozen weights in bf16 (core.training._frozen_weights_dtype); other 16-bit runs
    # (full fine-tuning, prefix tuning, fp16) keep fp32 weights and compute in 16 bits under autocast.
    weight_bytes_per_param = 0.5 if method == "qlora" else (2 if method == "lora" and precision == "bf16" else 4)
    parts = [MemoryPart("weights", int(arch.total_params * weight_bytes_per_param),
                        f"{arch.total_params / 1e6:.0f}M parameters x {weight_bytes_per_param:g} bytes")]
    if method != "full":
        parts.append(MemoryPart("adapter weights", trainable * 4, f"{trainable / 1e6:.2f}M fp32"))
    parts.append(MemoryPart("gradients", trainable * 4, "fp32, one per trained parameter"))
    if t.optimizer == "adafactor":
        optimizer = int(trainable * 4 * 2 / max(math.sqrt(arch.hidden_size), 1))
        parts.append(MemoryPart("optimizer state", optimizer, "Adafactor: factored second moments"))
    else:
        parts.append(MemoryPart("optimizer state", trainable * 8, "AdamW: two fp32 moments"))
    activations = activation_bytes(arch, cfg, batch=t.batch_size, length=length, element=element)
    parts.append(MemoryPart("activations", activations, f"batch {t.batch_size} x {length} tokens, "
                                                        f"{arch.num_layers} layers"
                            + (", checkpointed" if t.gradient_checkpointing else "")))
    logits = int(t.batch_size * length * arch.vocab_size * 4 * LOGITS_COPIES)
    parts.append(MemoryPart("logits and loss", logits, f"batch x length x {arch.vocab_size:,} vocab x 4 bytes "
                                                       f"x {LOGITS_COPIES:g} copies"))
    parts.append(MemoryPart("overhead", OVERHEAD_BYTES.get(info.kind, 200 * MIB), "allocator, data, Trainer"))
    total = sum(part.bytes for part in parts)
    available = _available_bytes(spec)
    fits = None if available is None else total <= available * 0.9  # keep 10% for the OS and the app

    # Memory follows the longest batch; time follows the typical one. With length grouping, batches are
    # padded only a little past their examples (measured on trivia: ~15% above the mean length).
    time_length = length
    if stats.get("mean"):
        padding = 1.15 if t.group_by_length else 1.6
        time_length = max(1, min(length, math.ceil(float(stats["mean"]) * padding)))
    tokens_per_step = t.batch_size * t.gradient_accumulation * time_length
    n = arch.total_params
    # forward 2N, backward 2N for activation gradients, +2N weight gradients when all weights train.
    flops_per_token = (6.0 * n) if method == "full" else (4.0 * n + 6.0 * trainable)
    # Attention scores: ~12 x layers x length x hidden per token (forward + backward).
    flops_per_token += 12.0 * arch.num_layers * time_length * arch.hidden_size
    if t.gradient_checkpointing:
        flops_per_token += 2.0 * n  # one more forward pass
    flops_per_step = flops_per_token * tokens_per_step
    device_flops = measure_matmul_flops(spec) if measure_device else 1e11
    efficiency = TRAINING_EFFICIENCY.get(info.kind, 0.3)
    efficiency *= batch_efficiency(info.kind, t.batch_size * time_length)
    seconds_per_step = flops_per_step / (device_flops * efficiency) + STEP_OVERHEAD_SECONDS.get(info.kind, 0.02)
    total_steps = _total_steps(cfg, dataset_stats, processes)
    seconds_total = seconds_per_step * total_steps if total_steps else None
    if stats.get("mean"):
        notes.append(f"memory assumes the longest batch ({length} tokens); time assumes typical batches of "
                     f"~{time_length} tokens (mean example {float(stats['mean']):.0f} tokens, padded per batch)")
    else:
        notes.append(f"no dataset statistics: time assumes every batch is {length} tokens long (an upper bound)")
    result = Estimate(parts=parts, total_bytes=int(total), available_bytes=available, fits=fits, device=spec,
                      precision=precision, total_params=n, trainable_params=trainable,
                      tokens_per_step=tokens_per_step, flops_per_step=flops_per_step, device_flops=device_flops,
                      seconds_per_step=seconds_per_step, total_steps=total_steps, seconds_total=seconds_total,
                      notes=notes)
    _add_run_time(result, cfg, arch, info.kind, stats, weight_bytes=parts[0].bytes)
    return result


# Fixed costs of a run besides its steps, measured on this project's reference runs (SmolLM2-135M, CPU):
# reading the weights (safetensors, memory-mapped) and setting up the adapter and the Trainer; writing a
# checkpoint (adapter or weights, plus the optimizer's two moments).
LOAD_SECONDS = {"cpu": 2.0, "cuda": 5.0, "mps": 4.0}
LOAD_BYTES_PER_SECOND = 500 * MIB
SAVE_SECONDS = 0.3
SAVE_BYTES_PER_SECOND = 200 * MIB


def _add_run_time(est: Estimate, cfg: RunConfig, arch: Architecture, kind: str, stats: dict,
                  weight_bytes: int) -> None:
    """Fill ``est.run_parts``: the whole run's time, evaluations (capped as core.training caps them) and
    checkpoint saves included, so a promise such as "about a minute" comes from this, not from a constant."""
    t = cfg.training
    if not est.total_steps or est.seconds_total is None:
        return
    parts = {"loading": LOAD_SECONDS.get(kind, 5.0) + weight_bytes / LOAD_BYTES_PER_SECOND}
    held_out = stats.get("eval_count")
    if held_out is None and stats.get("count") and 0 < cfg.data.test_fraction < 1:
        held_out = round(stats["count"] * cfg.data.test_fraction / (1 - cfg.data.test_fraction))
    if held_out and t.max_eval_examples > 0:
        held_out = min(held_out, t.max_eval_examples)
    mean = stats.get("eval_mean") or stats.get("mean")
    if held_out and mean and cfg.data.test_fraction > 0:
        evaluations = planned_evaluations(cfg, est.total_steps, step_zero=t.eval_before_training)
        per_example = eval_seconds_per_example(arch, mean, est.device_flops, kind, batch_size=t.batch_size)
        cap = eval_cap(cfg, available=int(held_out), evaluations=evaluations, train_seconds=est.seconds_total,
                       seconds_per_example=per_example, device_kind=kind)
        parts["evaluations"] = cap.eval_seconds or 0.0
        est.eval_examples = cap.examples
    parts["training"] = est.seconds_total
    saved = est.trainable_params * 4 * 3  # weights and the optimizer's two moments
    saves = est.total_steps // max(1, t.save_steps) + 1  # checkpoints and final/
    parts["saving"] = saves * (SAVE_SECONDS + saved / SAVE_BYTES_PER_SECOND)
    est.run_parts = parts


def duration_text(est: Estimate | None) -> str:
    """The estimated time of a whole run in words, e.g. "About 1 min on this computer (loading 3 s, 3
    evaluations 2 s, 10 training steps 40 s, saving 1 s)"; "" when unknown."""
    if est is None or not est.run_parts:
        return ""
    parts = est.run_parts
    details = [f"loading {_duration(parts['loading'])}"]
    if "evaluations" in parts:
        details.append(f"evaluations {_duration(parts['evaluations'])}"
                       + (f" on {est.eval_examples} held-out examples" if est.eval_examples else ""))
    details.append(f"{est.total_steps} training steps {_duration(parts['training'])}")
    details.append(f"saving {_duration(parts['saving'])}")
    return (f"About {_duration(est.run_seconds or 0.0)} on this computer when it is otherwise idle "
            f"({', '.join(details)}).")


def dataset_stats_for(cfg: RunConfig, progress=None, stop=None) -> dict:
    """Token-length statistics of the run's training split for ``estimate`` (uses the tokenized-data cache)."""
    from core.data import prepare_dataset
    from core.models import load_tokenizer

    prepared = prepare_dataset(cfg.data, load_tokenizer(cfg.model), cfg.training.max_length,
                               stop=stop, progress=progress)
    lengths = [len(ids) for ids in prepared.train["input_ids"]]
    if not lengths:
        return {}
    stats = {"count": len(lengths), "mean": sum(lengths) / len(lengths), "max": max(lengths)}
    if prepared.test is not None and len(prepared.test) > 0:
        held_out = [len(ids) for ids in prepared.test["input_ids"]]
        stats.update(eval_count=len(held_out), eval_mean=sum(held_out) / len(held_out))
    return stats


# --------------------------------------------------------------------------------------------- evaluation
# Share of the matmul throughput a forward-only evaluation pass reaches (no backward, no optimizer; logits
# only at trained positions). Measured with SmolLM2-135M on CPU fp32 (the closing note of issue 13).
EVAL_EFFICIENCY = {"cpu": 0.5, "cuda": 0.35, "mps": 0.3}
EVAL_PADDING = 1.6  # held-out batches are not length-grouped: padded ~60% past their mean example
MIN_EVAL_EXAMPLES = 8  # fewer held-out examples make an eval loss too noisy to compare across evaluations


def planned_evaluations(cfg: RunConfig, total_steps: int | None, *, step_zero: bool) -> int:
    """How many held-out evaluations a run of ``total_steps`` makes: every ``eval_steps``, one at the last
    step when it falls between (the Trainer's rule), plus the step-0 one."""
    periodic = math.ceil(total_steps / max(1, cfg.training.eval_steps)) if total_steps else 0
    return periodic + int(step_zero)


def batch_efficiency(kind: str, tokens: float) -> float:
    """The share of the large-batch efficiency a batch of ``tokens`` tokens reaches (SMALL_BATCH_TOKENS)."""
    extra = SMALL_BATCH_TOKENS.get(kind, 0)
    if not extra or tokens <= 0:
        return 1.0
    return min(1.0, (tokens / (tokens + extra)) / (1024 / (1024 + extra)))


def eval_seconds_per_example(arch: Architecture, mean_tokens: float, device_flops: float, kind: str, *,
                             batch_size: int = 8) -> float:
    """Seconds one held-out example costs in an evaluation (a forward pass: 2N FLOPs per token plus
    attention) in batches of ``batch_size``, at this machine's measured matmul speed."""
    length = max(1.0, float(mean_tokens) * EVAL_PADDING)
    flops = (2.0 * arch.total_params + 4.0 * arch.num_layers * length * arch.hidden_size) * length
    efficiency = EVAL_EFFICIENCY.get(kind, 0.3) * batch_efficiency(kind, batch_size * length)
    return flops / (device_flops * efficiency)


@dataclass
class EvalCap:
    """How many held-out examples each evaluation of a run uses, and why."""

    examples: int  # held-out examples every evaluation uses (the first ``examples`` of the split)
    available: int  # held-out examples there are (after ``training.max_eval_examples``)
    evaluations: int  # evaluations planned, the step-0 one included
    seconds_per_example: float | None  # estimated
    train_seconds: float | None  # estimated time of the training steps
    share: float  # training.eval_time_share (0: no time cap)
    capped: bool  # fewer examples than available because of the time cap

    @property
    def eval_seconds(self) -> float | None:
        """Estimated time of all evaluations together."""
        if self.seconds_per_example is None:
            return None
        return self.evaluations * self.examples * self.seconds_per_example

    def describe(self) -> str:
        """One line for the log: the examples used, the cap and its reason."""
        head = f"held-out evaluation: {self.examples} of {self.available} examples"
        if not self.capped:
            head = f"held-out evaluation: all {self.available} examples"
        if self.eval_seconds is None or not self.evaluations:
            return head
        line = (f"{head}, {self.evaluations} evaluation{'s' if self.evaluations != 1 else ''} of about "
                f"{_duration(self.eval_seconds / self.evaluations)} each")
        if self.capped and self.train_seconds:
            line += (f" (capped to {self.share:.0%} of the ~{_duration(self.train_seconds)} of training "
                     f"estimated: training.eval_time_share)")
        return line

    def to_status(self) -> dict:
        """The fields status.json keeps (a resumed run evaluates on the same examples)."""
        return {"eval_examples": self.examples, "eval_examples_available": self.available,
                "eval_capped": self.capped, "eval_time_share": self.share,
                "eval_seconds_estimate": self.eval_seconds}


def eval_cap(cfg: RunConfig, *, available: int, evaluations: int, train_seconds: float | None,
             seconds_per_example: float | None, device_kind: str) -> EvalCap:
    """The number of held-out examples per evaluation so that all ``evaluations`` together take at most
    ``training.eval_time_share`` of ``train_seconds`` (CPU only; never below MIN_EVAL_EXAMPLES)."""
    share = float(cfg.training.eval_time_share)
    examples = available
    if (device_kind == "cpu" and share > 0 and available > MIN_EVAL_EXAMPLES and evaluations > 0
            and train_seconds and seconds_per_example):
        fits = math.floor(share * train_seconds / (evaluations * seconds_per_example) + 1e-9)  # 29.9999 is 30
        examples = min(available, max(MIN_EVAL_EXAMPLES, fits))
    return EvalCap(examples=examples, available=available, evaluations=evaluations,
                   seconds_per_example=seconds_per_example, train_seconds=train_seconds, share=share,
                   capped=examples < available)


# --------------------------------------------------------------------------------------------- probe
def probe_config(cfg: RunConfig, steps: int) -> RunConfig:
    """The config a probe trains: the same model, method, batch and length, only ``steps`` steps, no
    evaluation, no intermediate checkpoints, and just enough examples."""
    probe_cfg = cfg.copy()
    t = probe_cfg.training
    t.max_steps = steps
    t.eval_before_training = False
    t.save_steps = 10**6
    t.eval_steps = 10**6
    t.logging_steps = 1
    t.load_best_model_at_end = False
    t.early_stopping_patience = 0
    t.report_to = "none"
    # Random batches (not length-grouped) so the probe sees typical lengths, not the longest first.
    t.group_by_length = False
    probe_cfg.data.test_fraction = 0.0
    needed = t.batch_size * t.gradient_accumulation * (steps + 1) * 4
    if probe_cfg.data.max_examples == 0 or probe_cfg.data.max_examples > needed:
        probe_cfg.data.max_examples = needed
    return probe_cfg


def _child_probe(config_path: str, out_path: str, run_dir: str) -> None:
    """Runs in the child process: baseline memory, real training steps, peak memory and step times."""
    import resource

    # transformers' modules load lazily: touch everything a run imports before taking the baseline, so
    # the measured growth is the run's memory and not a few hundred MB of library code.
    import datasets  # noqa: F401
    import peft  # noqa: F401  imported before the baseline: their import cost is not the run's memory
    import psutil
    import torch
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments  # noqa: F401

    from core import training  # noqa: F401
    from core.data import prepare_dataset  # noqa: F401

    cfg = RunConfig.load(config_path)
    baseline = psutil.Process().memory_info().rss
    step_times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            step_times.append(time.perf_counter() - self.start)

    device = None
    from core.devices import pick_device

    info = pick_device(cfg.training.device)
    if info.kind == "cuda":
        torch.cuda.reset_peak_memory_stats(info.index or 0)
        device = info
    training.train(cfg, run_dir=run_dir, extra_callbacks=[Timer()])
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    result = {"baseline_rss": baseline, "peak_rss": peak_rss, "step_times": step_times, "device": info.spec}
    if device is not None:
        result["cuda_peak"] = int(torch.cuda.max_memory_allocated(info.index or 0))
    Path(out_path).write_text(json.dumps(result))


def probe(cfg: RunConfig, steps: int = 3, *, base: Estimate | None = None, timeout: float = 900,
          stop=None) -> Estimate:
    """Run ``steps`` real training steps in a child process and return the estimate refined with them.

    ``measured`` gets ``peak_bytes`` (RSS growth above the child's baseline before loading the model; CUDA:
    peak allocated), ``seconds_per_step`` (median of the steps after the first, which pays for warm-up),
    ``step_times`` and ``baseline_rss``. The returned estimate's total and time use the measured values.
    """
    base = base or estimate(cfg)
    probe_cfg = probe_config(cfg, steps)
    with tempfile.TemporaryDirectory(prefix="ft-probe-") as folder:
        config_path = Path(folder) / "config.yaml"
        out_path = Path(folder) / "probe.json"
        probe_cfg.save(config_path)
        command = [sys.executable, "-m", "core.estimate", "--probe-child", str(config_path), str(out_path),
                   str(Path(folder) / "run")]
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
        root = Path(__file__).resolve().parent.parent
        process = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, start_new_session=True)
        deadline = time.monotonic() + timeout
        output = ""
        while process.poll() is None:
            if stop is not None and stop.is_set:
                process.kill()
                process.wait()
                stop.raise_if_set()
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise TrainingError(f"the probe did not finish {steps} steps within {timeout:.0f} s")
            time.sleep(0.1)
        output = process.stdout.read() if process.stdout else ""
        if process.returncode != 0 or not out_path.is_file():
            tail = "\n".join(output.strip().splitlines()[-6:])
            raise TrainingError(f"the probe run failed (exit status {process.returncode}):\n{tail}")
        result = json.loads(out_path.read_text())
    times = result["step_times"]
    steady = times[1:] if len(times) > 1 else times
    seconds_per_step = sorted(steady)[len(steady) // 2] if steady else base.seconds_per_step
    peak = result.get("cuda_peak") or max(0, result["peak_rss"] - result["baseline_rss"])
    measured = {"steps": len(times), "peak_bytes": int(peak), "seconds_per_step": seconds_per_step,
                "step_times": times, "baseline_rss": result["baseline_rss"], "peak_rss": result["peak_rss"],
                "estimated_bytes": base.total_bytes, "estimated_seconds_per_step": base.seconds_per_step}
    refined = Estimate(**{**asdict(base), "parts": list(base.parts), "notes": list(base.notes)})
    refined.measured = measured
    refined.total_bytes = int(peak)
    refined.seconds_per_step = seconds_per_step
    if base.run_parts and base.seconds_per_step:
        # The probe's speed applies to the whole run: evaluations are forward passes on the same machine.
        ratio = seconds_per_step / base.seconds_per_step
        refined.run_parts = {**base.run_parts, "training": seconds_per_step * (refined.total_steps or 0)}
        if "evaluations" in base.run_parts:
            refined.run_parts["evaluations"] = base.run_parts["evaluations"] * ratio
    if refined.total_steps:
        refined.seconds_total = seconds_per_step * refined.total_steps
    if refined.available_bytes is not None:
        refined.fits = peak <= refined.available_bytes * 0.9
    return refined


# --------------------------------------------------------------------------------------------- make it fit
@dataclass
class FitSuggestion:
    """One way to lower the memory, with the config patch and the predicted total after it."""

    title: str
    patch: dict  # dotted field -> value
    predicted_bytes: int
    explanation: str


def make_it_fit(cfg: RunConfig, current: Estimate, *, model_info: Architecture | None = None,
                device: Any = None) -> list[FitSuggestion]:
    """Config patches that lower the memory, best saving first, each with its re-estimated total.

    Tried: half the batch with double accumulation (same effective batch), gradient checkpointing,
    LoRA instead of full fine-tuning, QLoRA on a CUDA GPU, a shorter max length."""
    arch = model_info or architecture(cfg)
    t = cfg.training
    candidates: list[tuple[str, dict, str]] = []
    if t.batch_size > 1:
        half = max(1, t.batch_size // 2)
        candidates.append((f"Batch {half} with accumulation {t.gradient_accumulation * 2}",
                           {"training.batch_size": half,
                            "training.gradient_accumulation": t.gradient_accumulation * 2},
                           "same effective batch, half the activations; a little slower"))
    if not t.gradient_checkpointing and cfg.method.method != "prefix":
        candidates.append(("Gradient checkpointing", {"training.gradient_checkpointing": True},
                           "recomputes activations in the backward pass: ~30% slower"))
    if cfg.method.method == "full":
        candidates.append(("LoRA instead of full fine-tuning", {"method.method": "lora"},
                           "trains small adapters: no gradients or optimizer state for the base weights"))
    if current.device.startswith("cuda") and cfg.method.method in ("lora", "full"):
        candidates.append(("QLoRA (4-bit base)", {"method.method": "qlora"},
                           "stores the frozen base in 4 bits: ~1/8 of the fp32 weights"))
    if t.max_length > 64:
        shorter = max(64, t.max_length // 2)
        candidates.append((f"Max length {shorter}", {"training.max_length": shorter},
                           "halves activations and logits; longer examples are cut (see the data page)"))
    found = []
    for title, patch, explanation in candidates:
        patched = cfg.copy()
        for dotted, value in patch.items():
            patched.set_value(dotted, value)
        try:
            after = estimate(patched, model_info=arch, device=device or current.device, measure_device=False)
        except StudioError:
            continue  # e.g. QLoRA refused on this device
        if after.total_bytes < current.total_bytes:
            found.append(FitSuggestion(title, patch, after.total_bytes, explanation))
    found.sort(key=lambda s: s.predicted_bytes)
    return found


if __name__ == "__main__":  # the probe's child process
    if len(sys.argv) == 5 and sys.argv[1] == "--probe-child":
        _child_probe(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        print("usage: python -m core.estimate --probe-child CONFIG OUT.json RUN_DIR", file=sys.stderr)
        sys.exit(2)
