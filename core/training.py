"""Training: configure the ``transformers`` Trainer (with ``peft``), observe it, save a run folder.

The recipe reads top to bottom: set up the run folder -> tokenizer and data -> model and method ->
TrainingArguments (``core.hf_args``) -> Trainer with one observing callback -> train -> save final/.
Our code never re-implements the loop; it only turns the Trainer's events into ``core.metrics`` objects,
honours the stop token at step boundaries, and turns failures into messages a user can act on.
torch/transformers are imported inside functions so the GUI starts without them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import runs
from core.cancel import StopToken
from core.config import ConfigError, RunConfig, atomic_write_text
from core.errors import Cancelled, DataError, ModelError, StudioError, TrainingError
from core.metrics import MetricPoint, MetricsSink, StatusEvent

logger = logging.getLogger(__name__)

OOM_ADVICE = (
    "Try a smaller batch size with more gradient accumulation (same effective batch), turn on gradient "
    "checkpointing, shorten the max length, or use LoRA instead of full fine-tuning."
)


@dataclass
class RunResult:
    """How a training call ended."""

    run_dir: Path
    state: str  # finished | stopped | failed
    global_step: int
    final_dir: Path | None
    best_checkpoint: Path | None
    best_eval_loss: float | None
    message: str


# --------------------------------------------------------------------------------------------- batching
class PadToLongestCollator:
    """Pads each batch to its own longest example (never to max_length): ``input_ids`` with the pad id,
    ``labels`` with -100 (ignored by the loss), ``attention_mask`` with 0. Right padding, as causal-LM
    training expects. Extra columns (e.g. ``length``) are dropped."""

    def __init__(self, pad_token_id: int, label_pad_id: int = -100):
        if pad_token_id is None:
            raise ConfigError("model.name_or_path", "the tokenizer has no pad token (load_tokenizer sets one)")
        self.pad_token_id = int(pad_token_id)
        self.label_pad_id = label_pad_id

    def __call__(self, features: Sequence[dict]) -> dict:
        import torch

        longest = max(len(feature["input_ids"]) for feature in features)
        input_ids, labels, attention = [], [], []
        for feature in features:
            ids = list(feature["input_ids"])
            pad = longest - len(ids)
            mask = list(feature.get("attention_mask") or [1] * len(ids))
            label = list(feature["labels"]) if feature.get("labels") is not None else list(ids)
            input_ids.append(ids + [self.pad_token_id] * pad)
            attention.append(mask + [0] * pad)
            labels.append(label + [self.label_pad_id] * pad)
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "attention_mask": torch.tensor(attention, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
        }


# --------------------------------------------------------------------------------------------- processes
def _process_rank() -> int:
    """This process's global rank in a multi-process run (``accelerate launch`` / ``torchrun`` set RANK;
    some launchers only LOCAL_RANK); 0 in an ordinary single-process run."""
    for name in ("RANK", "LOCAL_RANK"):
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return 0


def _world_size() -> int:
    value = os.environ.get("WORLD_SIZE", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else 1


def _is_main_process() -> bool:
    """Whether this process owns the run folder: only rank 0 writes status.json, metrics.jsonl, config.yaml,
    environment.json, probes.json and final/ (other ranks train the same Trainer and write nothing)."""
    return _process_rank() == 0


def _write_status(run_dir: Path, **fields) -> None:
    if _is_main_process():
        runs.write_status(run_dir, **fields)


def _distributed() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:
        return False
    return bool(dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)


def _any_rank(flag: bool, device: Any) -> bool:
    """True when ``flag`` is true on any rank (a no-op outside multi-process runs). Ranks must agree on
    stopping at the same step: one rank leaving the loop early would leave the others waiting forever in
    the next gradient all-reduce."""
    if not _distributed():
        return flag
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def _barrier() -> None:
    if _distributed():
        import torch.distributed as dist

        dist.barrier()


# --------------------------------------------------------------------------------------------- helpers
def _emit_metric(sinks: Iterable[MetricsSink], point: MetricPoint) -> None:
    for sink in sinks:
        sink.on_metric(point)


def _emit_status(sinks: Iterable[MetricsSink], event: StatusEvent) -> None:
    for sink in sinks:
        sink.on_status(event)


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number


def _memory_snapshot(device: Any) -> dict:
    """Memory use now (core.devices.memory_snapshot: RSS, CUDA allocated/reserved/peak) plus the
    process's peak RSS, which is what bounds a CPU run."""
    from core.devices import memory_snapshot

    snapshot = dict(memory_snapshot(device))
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # Linux reports KiB, macOS bytes.
        snapshot["peak_rss_bytes"] = int(peak if sys.platform == "darwin" else peak * 1024)
    except ImportError:  # Windows has no resource module: the current RSS stands in
        pass
    return snapshot


def _peak_bytes(snapshot: dict) -> int | None:
    for key in ("cuda_peak_bytes", "peak_rss_bytes", "rss_bytes"):
        value = snapshot.get(key)
        if isinstance(value, (int, float)) and value > 0:
            return int(value)
    return None


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):  # an older torch without OutOfMemoryError: the message test below decides
        pass
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def environment_info(device: Any = None) -> dict:
    """Versions and hardware of this machine, for environment.json (no git, no user data)."""
    info: dict = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "device": str(getattr(device, "name", device)) if device is not None else None,
        "device_kind": getattr(device, "kind", None),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    from importlib import metadata

    for package in ("torch", "transformers", "peft", "datasets", "accelerate", "tokenizers", "bitsandbytes"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = None
    try:
        import torch

        info["cuda"] = torch.version.cuda
        info["cuda_available"] = torch.cuda.is_available()
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:  # no torch: environment.json simply lacks the CUDA facts
        pass
    return info


def _check_reporting(cfg: RunConfig) -> None:
    from core.tracking import check_installed

    check_installed(cfg.training.report_to)


def _check_method_supported(cfg: RunConfig, device: Any) -> None:
    """QLoRA needs CUDA + bitsandbytes; say so before anything heavy is loaded."""
    if cfg.method.method != "qlora":
        return
    kind = getattr(device, "kind", str(device))
    if kind != "cuda":
        raise ConfigError("method.method",
                          f"QLoRA (4-bit) needs an NVIDIA GPU with CUDA, but this run would train on {kind}. "
                          "Pick `lora` instead: same adapters, full-precision base model.")
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("method.method", "QLoRA needs the bitsandbytes package: `pip install bitsandbytes`")


def _frozen_weights_dtype(cfg: RunConfig, device: Any) -> str | None:
    """bf16 for the base weights of a bf16 LoRA run: they are frozen, so no fp32 copy is needed
    (half the weight memory, no fp32 -> bf16 conversion at every step); the adapter and its optimizer state stay
    fp32 (peft keeps adapter weights in fp32). Full fine-tuning keeps fp32 master weights under autocast; QLoRA
    loads 4-bit. None: the default (fp32)."""
    from core.devices import DeviceInfo, resolve_precision

    if cfg.method.method != "lora" or not isinstance(device, DeviceInfo):
        return None
    return "bf16" if resolve_precision(cfg.training.precision, device) == "bf16" else None


def _device_string(device: Any) -> str:
    kind = getattr(device, "kind", None)
    if kind is None:
        return str(device)
    index = getattr(device, "index", None)
    return f"{kind}:{index}" if kind == "cuda" and index is not None else kind


def _planned_steps(args: Any, n_train: int) -> int:
    """Optimizer steps the Trainer will run (max_steps, else epochs x batches per epoch)."""
    if args.max_steps and args.max_steps > 0:
        return int(args.max_steps)
    batches = math.ceil(n_train / max(1, args.per_device_train_batch_size * max(1, args.world_size)))
    per_epoch = max(1, math.ceil(batches / max(1, args.gradient_accumulation_steps)))
    return int(math.ceil(args.num_train_epochs * per_epoch))


# --------------------------------------------------------------------------------------------- loss
# Logits only where a label is trained: with answers-only labels most positions carry -100, yet the
# stock loss projects every position onto the vocabulary (SmolLM2: a 576 x 49152 matmul per token,
# forward and backward, plus a log-softmax over 49,152 entries). Module-level so the bench and the
# equivalence tests can switch back to the stock computation.
TRAINED_POSITIONS_ONLY = True

# peft prompt-learning types whose forward keeps the positions of input_ids in the logits (prefix tuning
# feeds its virtual tokens as past key/values); prompt tuning / p-tuning prepend virtual tokens to the
# sequence, which would shift the mask, so they use the stock loss.
_POSITION_PRESERVING_PEFT = {"LORA", "PREFIX_TUNING", "ADALORA", "IA3", "LOHA", "LOKR", "OFT", "BOFT", "DORA"}


def trainer_class():
    """The Trainer subclass the app trains with: ``compute_loss`` computes logits and the cross-entropy only
    at the positions whose next-token label is trained (!= -100), through the model's own
    ``logits_to_keep`` argument (a boolean [batch, seq] mask keeps exactly those rows). The loss equals the
    stock one (same sum / num_items_in_batch or mean, same gradient-accumulation and multi-device scaling);
    anything it does not cover (label smoothing, a custom loss, predictions for compute_metrics, models
    without ``logits_to_keep``, prompt tuning) takes the stock path."""
    import inspect

    import torch
    from transformers import Trainer

    class StudioTrainer(Trainer):
        _logits_to_keep_ok: bool | None = None

        def _model_keeps_positions(self, model) -> bool:
            if self._logits_to_keep_ok is None:
                unwrapped = self.accelerator.unwrap_model(model)
                peft_type = None
                if hasattr(unwrapped, "get_base_model"):  # a peft model
                    config = getattr(unwrapped, "active_peft_config", None)
                    peft_type = str(getattr(getattr(config, "peft_type", None), "value", "") or "")
                    unwrapped = unwrapped.get_base_model()
                try:
                    accepts = "logits_to_keep" in inspect.signature(unwrapped.forward).parameters
                except (TypeError, ValueError):
                    accepts = False
                self._logits_to_keep_ok = accepts and (peft_type is None or peft_type in _POSITION_PRESERVING_PEFT)
            return self._logits_to_keep_ok

        def _fast_path(self, model, inputs, return_outputs: bool) -> bool:
            if not TRAINED_POSITIONS_ONLY or self.label_smoother is not None or self.compute_loss_func is not None:
                return False
            if self.args.n_gpu > 1:
                return False  # nn.DataParallel would gather flattened logits of unequal size per replica
            if return_outputs and self.compute_metrics is not None:
                return False  # predictions must be full [batch, seq, vocab] logits
            pc = getattr(self.accelerator, "parallelism_config", None)
            if pc is not None and getattr(pc, "sp_enabled", False):
                return False
            labels, input_ids = inputs.get("labels"), inputs.get("input_ids")
            if not (isinstance(labels, torch.Tensor) and isinstance(input_ids, torch.Tensor)):
                return False
            if labels.ndim != 2 or labels.shape != input_ids.shape or "logits_to_keep" in inputs:
                return False
            return self._model_keeps_positions(model)

        def training_step(self, *args, **kwargs):
            from core import model_use

            with model_use.running():  # forward + backward: a model load in another thread waits (core.model_use)
                return super().training_step(*args, **kwargs)

        def prediction_step(self, *args, **kwargs):
            from core import model_use

            with model_use.running():
                return super().prediction_step(*args, **kwargs)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not self._fast_path(model, inputs, return_outputs):
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            labels = inputs["labels"]
            # Causal shift: the hidden state at position t predicts the label at t + 1; the last position
            # predicts nothing.
            targets = labels[:, 1:]
            trained = targets != -100
            keep = torch.zeros_like(labels, dtype=torch.bool)
            keep[:, :-1] = trained
            model_inputs = {key: value for key, value in inputs.items() if key != "labels"}
            # A boolean 2-D logits_to_keep returns the logits flattened to [n_trained, vocab], in row-major
            # order of the mask, the same order as targets[trained].
            outputs = model(**model_inputs, logits_to_keep=keep)
            logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
            # As the stock ForCausalLMLoss: fp32 logits; sum / num_items_in_batch when the Trainer hands the
            # count to the model (model_accepts_loss_kwargs), else the mean over the trained tokens.
            count = num_items_in_batch if self.model_accepts_loss_kwargs else None
            logits = logits.float().reshape(-1, logits.shape[-1])
            target = targets[trained].to(logits.device)
            if count is not None:
                loss = torch.nn.functional.cross_entropy(logits, target, reduction="sum")
                loss = loss / (count.to(loss.device) if torch.is_tensor(count) else count)
            else:
                loss = torch.nn.functional.cross_entropy(logits, target, reduction="mean")
            # The stock compute_loss's multi-device scaling, unchanged.
            if (self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs
                    and num_items_in_batch is not None):
                loss_scale = self.accelerator.num_processes // self.get_tp_size()
                loss = loss * (loss_scale if self.args.n_gpu <= 1 else self.args.n_gpu)
            if return_outputs:
                outputs["loss"] = loss
                return loss, outputs
            return loss

        # -- checkpoints: loaded strictly, saved completely, rotated safely ------------------------
        # The run folder (set by _train_and_save); None when the Trainer is used on its own (tests).
        studio_run_dir: Path | None = None
        # training.save_total_limit, applied by our rotation once a new checkpoint is COMPLETE (the Trainer's
        # own rotation, and its end-of-training deletion with a limit of 1, would delete old checkpoints
        # before that: a kill in between left no complete checkpoint). See studio_take_over_rotation.
        studio_keep: int | None = None
        studio_expected_bytes: int | None = None
        studio_space_warned = False
        studio_notice: Any = None  # callable(str): a status line (low disk space)

        def _studio_load(self, model, folder: Path, *, trainable: bool) -> None:
            from core import checkpoints

            if hasattr(model, "peft_config") and hasattr(model, "load_adapter"):
                active = model.active_adapters[0] if getattr(model, "active_adapters", None) else "default"
                try:
                    result = model.load_adapter(str(folder), active, is_trainable=trainable)
                except Exception as exc:  # noqa: BLE001 - a damaged adapter file: name it, suggest the previous one
                    if isinstance(exc, StudioError):
                        raise
                    raise checkpoints.CheckpointError(
                        f"{folder / checkpoints.ADAPTER_WEIGHTS_FILE}: cannot be loaded "
                        f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}). "
                        + checkpoints.damaged_hint(self.studio_run_dir, folder, "resume"), folder) from exc
                config = model.peft_config.get(active) if isinstance(model.peft_config, dict) else None
                checkpoints.check_adapter_load(result, folder,
                                               prompt_learning=bool(getattr(config, "is_prompt_learning", False)))
                return
            if (folder / checkpoints.WEIGHTS_FILE).is_file() or (folder / checkpoints.WEIGHTS_INDEX_FILE).is_file():
                checkpoints.load_full_weights(model, folder, run_dir=self.studio_run_dir)
                return
            raise checkpoints.CheckpointError(f"{folder}: no weights to load (no model.safetensors)", folder)

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            if self.is_fsdp_enabled or self.is_deepspeed_enabled:
                return super()._load_from_checkpoint(resume_from_checkpoint, model=model)
            self._studio_load(model if model is not None else self.model, Path(resume_from_checkpoint),
                              trainable=True)

        def _load_best_model(self):
            if self.is_fsdp_enabled or self.is_deepspeed_enabled or not self.state.best_model_checkpoint:
                return super()._load_best_model()
            logger.info("loading the best checkpoint %s (score %s)", self.state.best_model_checkpoint,
                        self.state.best_metric)
            self._studio_load(self.model, Path(self.state.best_model_checkpoint), trainable=False)

        def _issue_warnings_after_load(self, load_result):
            # Any other loading path: a missing or unexpected key is an error, never a warning.
            from core.checkpoints import CheckpointError

            if load_result.missing_keys or load_result.unexpected_keys:
                raise CheckpointError(f"checkpoint weights do not fit the model (missing {load_result.missing_keys}, "
                                      f"unexpected {load_result.unexpected_keys})")

        def _load_optimizer_and_scheduler(self, checkpoint):
            from core import checkpoints

            try:
                return super()._load_optimizer_and_scheduler(checkpoint)
            except Exception as exc:  # noqa: BLE001 - a damaged optimizer.pt / scheduler.pt
                if isinstance(exc, StudioError) or checkpoint is None:
                    raise
                folder = Path(checkpoint)
                raise checkpoints.CheckpointError(
                    f"{folder}: the optimizer or scheduler state cannot be loaded "
                    f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}). "
                    + checkpoints.damaged_hint(self.studio_run_dir, folder, "resume"), folder) from exc

        def _save_checkpoint(self, model, trial):
            from core import checkpoints

            run_dir = self.studio_run_dir
            owner = bool(self.args.should_save) and _is_main_process() and run_dir is not None
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            if owner:
                # A folder of the same step left by an earlier, killed session (or one we resumed before):
                # written afresh, so no stray .tmp file of the killed write ends up in a COMPLETE checkpoint.
                if folder.exists():
                    checkpoints.remove_checkpoint(folder)
                self._studio_check_space(folder)
            _barrier()  # other ranks write their RNG state into the folder: only after it was cleared
            try:
                super()._save_checkpoint(model, trial)
            except Exception as exc:
                if checkpoints.is_disk_full(exc) and not isinstance(exc, checkpoints.DiskFullError):
                    free = checkpoints.free_bytes(folder)
                    raise checkpoints.DiskFullError(
                        checkpoints.disk_full_message(folder, self.studio_expected_bytes, free,
                                                      what=f"checkpoint-{self.state.global_step}"),
                        folder, self.studio_expected_bytes, free) from exc
                raise
            # Every rank's random-number state is in the folder before rank 0 declares it complete.
            _barrier()
            if not owner or not folder.is_dir():
                return
            config = run_dir / runs.CONFIG_FILE
            if config.is_file():
                shutil.copyfile(config, folder / checkpoints.CONFIG_COPY)
            checkpoints.sync_folder(folder)  # the files on disk before the marker says they are
            atomic_write_text(folder / runs.COMPLETE_MARKER, f"{time.time()}\n")
            checkpoints.sync_directory(folder)  # the marker's name too
            checkpoints.rotate(run_dir, self.studio_keep, self.state.best_model_checkpoint)

        def studio_take_over_rotation(self, run_dir: Path) -> None:
            self.studio_run_dir = run_dir
            self.studio_keep = self.args.save_total_limit
            self.args.save_total_limit = None

        def _studio_check_space(self, folder: Path) -> None:
            from core import checkpoints

            if self.studio_expected_bytes is None:
                full = not (hasattr(self.model, "peft_config") and hasattr(self.model, "load_adapter"))
                self.studio_expected_bytes = checkpoints.expected_checkpoint_bytes(self.studio_run_dir, self.model,
                                                                                  full=full)
            needed = self.studio_expected_bytes
            free = checkpoints.free_bytes(folder.parent)
            if free is None:
                return
            if free < needed:
                raise checkpoints.DiskFullError(
                    checkpoints.disk_full_message(folder, needed, free, what=folder.name), folder, needed, free)
            if free < 3 * needed and not self.studio_space_warned and callable(self.studio_notice):
                self.studio_space_warned = True
                self.studio_notice(f"low disk space: {checkpoints.megabytes(free)} free in {folder.parent}, "
                                   f"each checkpoint needs about {checkpoints.megabytes(needed)}")

    return StudioTrainer


# --------------------------------------------------------------------------------------------- callback
def _token_lengths(dataset: Any) -> list[int]:
    """Each example's token count, in the dataset's order (a ``select``ed dataset reads through its indices)."""
    import pyarrow.compute as pc

    lengths = pc.list_value_length(dataset.data.column("input_ids"))
    indices = getattr(dataset, "_indices", None)
    if indices is not None:
        lengths = lengths.take(indices.column(0))
    return lengths.to_pylist()


def _longest_first(eval_dataset: Any) -> Any:
    """The held-out examples in batches of similar length, longest first: each evaluation batch pads to its
    longest example, so sorted batches compute ~no padding (random order padded trivia batches by ~25 %), and
    the largest batch comes first (an out-of-memory shows at once). The Trainer's eval loader keeps this order."""
    if eval_dataset is None or len(eval_dataset) < 2:
        return eval_dataset
    lengths = _token_lengths(eval_dataset)
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return eval_dataset if order == list(range(len(lengths))) else eval_dataset.select(order)


def _cap_evaluation(cfg: RunConfig, run_dir: Path, sinks: Sequence[MetricsSink], model: Any, device: Any,
                    train_dataset: Any, eval_dataset: Any, total_steps: int, *, resuming: bool) -> Any:
    """The held-out examples every evaluation uses: on a CPU, only as many as let all evaluations together
    take ``training.eval_time_share`` of the estimated training time (core.estimate.eval_cap), the first of
    the split, the same every time. A resumed run keeps the number of its first session. The choice is
    shown as a status line and kept in status.json."""
    if eval_dataset is None:
        return None
    if resuming:
        kept = runs.read_status(run_dir).get("eval_examples")
        if isinstance(kept, int) and 0 < kept < len(eval_dataset):
            return eval_dataset.select(range(kept))
        return eval_dataset
    from core.estimate import (
        MIN_EVAL_EXAMPLES,
        architecture_from_model,
        estimate,
        eval_cap,
        eval_seconds_per_example,
        planned_evaluations,
    )

    kind = getattr(device, "kind", str(device))
    evaluations = planned_evaluations(cfg, total_steps, step_zero=cfg.training.eval_before_training)
    train_seconds = per_example = None
    # Every rank must evaluate the same examples: a multi-process run keeps them all rather than let each
    # rank's own speed measurement pick a different number.
    if (kind == "cpu" and cfg.training.eval_time_share > 0 and len(eval_dataset) > MIN_EVAL_EXAMPLES
            and _world_size() == 1):
        arch = architecture_from_model(model)
        lengths = _token_lengths(train_dataset)
        stats = {"count": len(lengths), "mean": sum(lengths) / len(lengths), "max": max(lengths)}
        est = estimate(cfg, model_info=arch, device=device, dataset_stats=stats)
        train_seconds = est.seconds_per_step * total_steps
        held_out = _token_lengths(eval_dataset)
        per_example = eval_seconds_per_example(arch, sum(held_out) / len(held_out), est.device_flops, kind,
                                               batch_size=cfg.training.batch_size)
    cap = eval_cap(cfg, available=len(eval_dataset), evaluations=evaluations, train_seconds=train_seconds,
                   seconds_per_example=per_example, device_kind=kind)
    _write_status(run_dir, **cap.to_status())
    _emit_status(sinks, StatusEvent("running", cap.describe(), phase="loading"))
    return eval_dataset.select(range(cap.examples)) if cap.capped else eval_dataset


def _make_callback(sinks: Sequence[MetricsSink], stop: StopToken | None, run_dir: Path, device: Any,
                   prior_elapsed: float):
    """The one TrainerCallback turning Trainer events into MetricPoint / StatusEvent objects."""
    from transformers import TrainerCallback

    class StudioCallback(TrainerCallback):
        def __init__(self) -> None:
            self.stopped_by_user = False
            # Divergence (a state, not a warning): the step, what was seen, whether the loss is non-finite.
            self.diverged_step: int | None = None
            self.diverged_what = ""
            self.diverged_nonfinite = False
            self.first_loss: float | None = None  # the run's first logged training loss (the untouched model's)
            self.previous_loss: float | None = None
            self.resumed = False
            self.best_eval_loss: float | None = None
            self.total_steps = 0
            self.session_start = time.time()
            self.session_first_step = 0
            self.last_step_time: float | None = None
            self.seconds_per_step: float | None = None
            self.last_tokens = 0
            self.last_tokens_time: float | None = None
            self.tokens_per_second: float | None = None
            self.eval_in_between = False
            self.paused_seconds = 0.0  # evaluation time since the last train log, kept out of tokens/s
            self.last_status_write = 0.0
            self.training_started = False
            self.eval_examples = 0  # held-out examples one evaluation covers (set by _train_steps)
            self.eval_batches = 0  # batches of the evaluation in progress
            self.last_eval_status = 0.0

        # -- timing ---------------------------------------------------------------------------
        def elapsed(self) -> float:
            return prior_elapsed + (time.time() - self.session_start)

        def eta(self, step: int) -> float | None:
            done = step - self.session_first_step
            if done <= 0 or not self.total_steps:
                return None
            # Wall time per step of this session, evaluations and saves included: an honest ETA.
            per_step = (time.time() - self.session_start) / done
            return max(0.0, (self.total_steps - step) * per_step)

        # -- events ---------------------------------------------------------------------------
        def on_train_begin(self, args, state, control, **kwargs):
            self.total_steps = int(state.max_steps or self.total_steps or 0)
            self.session_start = time.time()
            self.session_first_step = int(state.global_step)
            self.last_tokens = int(state.num_input_tokens_seen or 0)
            self.last_tokens_time = self.session_start
            self.last_step_time = self.session_start
            # A resumed run: the evaluations up to its checkpoint (trainer_state.json's log history), so the
            # best eval loss is that of the whole run, not of this session; its first and last training loss
            # keep the divergence check going where it was.
            self.resumed = int(state.global_step) > 0
            for entry in state.log_history or []:
                value = _finite(entry.get("loss"))
                if value is not None and math.isfinite(value) and "eval_loss" not in entry:
                    self.first_loss = value if self.first_loss is None else self.first_loss
                    self.previous_loss = value

                value, at = _finite(entry.get("eval_loss")), entry.get("step")
                if value is not None and math.isfinite(value) and isinstance(at, int) and at > 0:
                    self.best_eval_loss = value if self.best_eval_loss is None else min(self.best_eval_loss, value)
            _write_status(run_dir, state="running", global_step=int(state.global_step),
                          total_steps=self.total_steps, message="training")
            self.training_started = True
            _emit_status(sinks, StatusEvent("running", f"training {self.total_steps} steps",
                                            step=int(state.global_step), phase="training"))

        def on_step_end(self, args, state, control, **kwargs):
            now = time.time()
            if self.last_step_time is not None and not self.eval_in_between:
                interval = now - self.last_step_time
                # Smooth per-step times so the display does not jitter.
                self.seconds_per_step = (interval if self.seconds_per_step is None
                                         else 0.7 * self.seconds_per_step + 0.3 * interval)
            self.last_step_time = now
            self.eval_in_between = False
            requested = stop is not None and stop.is_set
            # Every rank learns of a stop seen by any rank, so they all leave at the same step.
            if not self.stopped_by_user and _any_rank(requested, args.device):
                self.stopped_by_user = True
                control.should_training_stop = True
                control.should_save = True  # stop always leaves a resumable checkpoint
            if control.should_evaluate:
                self.eval_started(state)
            elif control.should_save:
                _emit_status(sinks, StatusEvent("running", f"saving checkpoint-{state.global_step}",
                                                phase="saving"))
            return control

        def eval_started(self, state) -> None:
            """Say that an evaluation begins (0 of n held-out examples); its batches then report k/n."""
            self.eval_batches = 0
            self.last_eval_status = 0.0
            self._eval_status(state, 0, None, None)

        def _eval_status(self, state, batches: int, total_batches: int | None, batch_size: int | None) -> None:
            n = self.eval_examples
            done = min(n, batches * batch_size) if n and batch_size else None
            count = f"{done if done is not None else 0}/{n} held-out examples" if n else "held-out examples"
            fraction = (batches / total_batches) if total_batches else 0.0
            if self.training_started or state.global_step > 0:
                message, phase = f"evaluating at step {state.global_step}: {count}", "evaluating"
            else:
                message, phase = f"measuring the base model: {count}", "measuring_base"
            # No step: the progress bar shows this evaluation's k/n until the next training step.
            _emit_status(sinks, StatusEvent("running", message, fraction=fraction, phase=phase))

        def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
            self.eval_batches += 1
            try:
                total = len(eval_dataloader) if eval_dataloader is not None else None
            except TypeError:  # an iterable dataset has no length
                total = None
            now = time.time()
            # At most one progress line a second, and always the last batch.
            if (total is None or self.eval_batches < total) and now - self.last_eval_status < 1.0:
                return control
            self.last_eval_status = now
            self._eval_status(state, self.eval_batches, total, args.per_device_eval_batch_size)
            return control

        def on_evaluate(self, args, state, control, **kwargs):
            self.eval_in_between = True
            if self.training_started and control.should_save:
                _emit_status(sinks, StatusEvent("running", f"saving checkpoint-{state.global_step}",
                                                phase="saving"))

        def add_pause(self, seconds: float) -> None:
            """Time spent outside training steps (probe answers): kept out of seconds/step and tokens/s."""
            self.paused_seconds += seconds
            self.eval_in_between = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = dict(logs or {})
            step = int(state.global_step)
            tokens = int(state.num_input_tokens_seen or 0)
            snapshot = _memory_snapshot(device)
            common = dict(step=step, total_steps=self.total_steps or int(state.max_steps or 0),
                          epoch=_finite(logs.get("epoch", state.epoch)), tokens_trained=tokens,
                          elapsed_seconds=self.elapsed(), peak_memory_bytes=_peak_bytes(snapshot),
                          memory=snapshot)
            if "eval_loss" in logs:
                self.paused_seconds += float(logs.get("eval_runtime") or 0.0)
                eval_loss = _finite(logs["eval_loss"])
                if eval_loss is not None and math.isfinite(eval_loss) and step > 0:
                    if self.best_eval_loss is None or eval_loss < self.best_eval_loss:
                        self.best_eval_loss = eval_loss
                point = MetricPoint(kind="eval", eval_loss=eval_loss, eta_seconds=self.eta(step),
                                    eval_seconds=_finite(logs.get("eval_runtime")),
                                    seconds_per_step=self.seconds_per_step,
                                    tokens_per_second=self.tokens_per_second, **common)
                _emit_metric(sinks, point)
                return control
            if "loss" not in logs:
                return control  # the end-of-training summary (train_runtime, ...)
            now = time.time()
            busy = (now - self.last_tokens_time - self.paused_seconds) if self.last_tokens_time is not None else 0.0
            if busy > 0 and tokens >= self.last_tokens:
                self.tokens_per_second = (tokens - self.last_tokens) / busy
            self.last_tokens, self.last_tokens_time, self.paused_seconds = tokens, now, 0.0
            loss = _finite(logs.get("loss"))
            grad_norm = _finite(logs.get("grad_norm"))
            point = MetricPoint(kind="train", loss=loss, learning_rate=_finite(logs.get("learning_rate")),
                                grad_norm=grad_norm, tokens_per_second=self.tokens_per_second,
                                seconds_per_step=self.seconds_per_step, eta_seconds=self.eta(step), **common)
            _emit_metric(sinks, point)
            if self._diverging(step, loss):
                # The weights are poisoned or being wrecked: stop here and do not save or evaluate them.
                control.should_training_stop = True
                control.should_save = False
                control.should_evaluate = False
            elif now - self.last_status_write > 2.0:
                self.last_status_write = now
                _write_status(run_dir, global_step=step, total_steps=self.total_steps,
                              train_seconds=self.elapsed())
            return control

        def _diverging(self, step: int, loss: float | None) -> bool:
            """Non-finite, or at least DIVERGENCE_FACTOR x the first training loss at two logged points in a
            row and still rising: the run has diverged."""
            first, previous = self.first_loss, self.previous_loss
            if loss is None or not math.isfinite(loss):
                self.diverged_step, self.diverged_nonfinite = step, True
                self.diverged_what = f"the training loss became {loss} at step {step}"
                return True
            if first is None:
                self.first_loss = loss
            self.previous_loss = loss
            if (first is not None and first > 0 and previous is not None and previous >= DIVERGENCE_FACTOR * first
                    and loss >= DIVERGENCE_FACTOR * first and loss > previous):
                self.diverged_step = step
                self.diverged_what = (f"the training loss rose to {loss:.4g} at step {step}, "
                                      f"{loss / first:.1f}x its first value {first:.4g}, and is still rising")
                return True
            return False

        def on_save(self, args, state, control, **kwargs):
            # The COMPLETE marker is already written (StudioTrainer._save_checkpoint, after every rank's files).
            folder = run_dir / runs.CHECKPOINTS_DIR / f"checkpoint-{state.global_step}"
            if not (state.is_world_process_zero and _is_main_process()):
                return control
            best = Path(state.best_model_checkpoint).name if state.best_model_checkpoint else None
            _write_status(run_dir, global_step=int(state.global_step), total_steps=self.total_steps,
                          last_checkpoint=folder.name, best_checkpoint=best, best_step=_best_step(state),
                          best_eval_loss=_eval_loss_at(state, _best_step(state)) if best else self.best_eval_loss,
                          train_seconds=self.elapsed())
            return control

    return StudioCallback()


# --------------------------------------------------------------------------------------------- public API
DEFAULT_PROBE_TOKENS = 24


@dataclass(frozen=True)
class _ProbeSettings:
    prompts: list[str]
    every: int | None  # None: at each checkpoint save
    max_new_tokens: int


def _check_probe_numbers(every: int | None, max_new_tokens: int) -> tuple[int | None, int]:
    if every is not None and (not isinstance(every, int) or every < 1):
        raise ConfigError("probe_every", f"must be a whole number of steps, at least 1 (got {every!r})")
    if not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= 512:
        raise ConfigError("probe_max_new_tokens", f"must be between 1 and 512 tokens (got {max_new_tokens!r}); "
                                                  "probe answers run between steps, so keep them short")
    return every, max_new_tokens


def train(cfg: RunConfig, *, workspace: str | os.PathLike | None = None, run_dir: str | os.PathLike | None = None,
          sinks: Sequence[MetricsSink] = (), stop: StopToken | None = None,
          extra_callbacks: Sequence[Any] = (), probes: Sequence[str] | None = None,
          probe_every: int | None = None, probe_max_new_tokens: int = DEFAULT_PROBE_TOKENS) -> RunResult:
    """Train ``cfg`` in a new run folder (``run_dir``, or a new folder in ``workspace``).

    ``probes``: up to 5 prompts answered greedily (``probe_max_new_tokens`` new tokens) at step 0 and
    every ``probe_every`` steps (default: at each checkpoint save); each answer reaches the sinks'
    optional ``on_probe`` as a ProbeResult and metrics.jsonl as a ``"probe"`` line (core.probes).

    In a multi-process run (``accelerate launch`` / ``torchrun``) every rank calls this with the same
    ``run_dir``; only rank 0 writes into it.

    Returns a RunResult for finished and stopped runs; raises TrainingError (out of memory, NaN loss,
    disk full), ModelError, DataError or ConfigError after recording ``failed`` in status.json."""
    from core.environment import prepare_environment
    from core.probes import normalize_probes, save_probe_settings

    prepare_environment()  # the GUI, the CLI and scripts all train through here: no telemetry from TRL
    cfg = cfg.copy()
    cfg.validate()
    _check_reporting(cfg)
    probe_prompts = normalize_probes(probes)
    probe_every, probe_max_new_tokens = _check_probe_numbers(probe_every, probe_max_new_tokens)
    if run_dir is None and _world_size() > 1:
        # Each rank would create its own folder: the launcher must create one and pass it to every rank.
        raise TrainingError("a multi-process run needs one run folder for every process: start it with "
                            "`python main.py launch` (core.launch), which creates the folder and passes it on")
    created_here = run_dir is None
    if run_dir is None:
        from core.paths import default_workspace

        name = cfg.name or f"{cfg.method.method}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = runs.create_run_dir(Path(workspace) if workspace else default_workspace(), name)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock_run(run_dir, "train")
    try:
        if not cfg.name:
            cfg.name = run_dir.name
        if _is_main_process():
            cfg.save(run_dir / runs.CONFIG_FILE)
            if probe_prompts:
                save_probe_settings(run_dir, probe_prompts, probe_every, probe_max_new_tokens)
        now = time.time()
        _write_status(run_dir, state="running", message="starting", global_step=0, total_steps=0,
                      created=now, started=now, ended=None, train_seconds=0.0,
                      config_sha256=_sha256(run_dir / runs.CONFIG_FILE))
        logger.info("run %s: starting (%s on %s, data %s, rank %d of %d)", run_dir, cfg.method.method,
                    cfg.model.name_or_path, cfg.data.source, _process_rank(), _world_size())
        probe_settings = _ProbeSettings(probe_prompts, probe_every, probe_max_new_tokens)
        return _run(cfg, run_dir, sinks=sinks, stop=stop, extra_callbacks=extra_callbacks, resume_from=None,
                    probes=probe_settings)
    except (ModelError, DataError) as exc:
        if created_here and _is_main_process() and not (run_dir / runs.CHECKPOINTS_DIR).exists():
            # A start that failed before any training (missing model, not a model, unusable data): no
            # run folder is left behind to list as "failed".
            if lock is not None:
                lock.release()
                lock = None
            shutil.rmtree(run_dir, ignore_errors=True)
            logger.info("run %s: removed (it failed before training: %s)", run_dir, exc)
        raise
    finally:
        if lock is not None:
            lock.release()


def _sha256(path: Path) -> str | None:
    import hashlib

    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _lock_run(run_dir: Path, command: str) -> Any:
    """Hold the run folder for this process (core.locks); ranks other than 0 leave that to rank 0."""
    if not _is_main_process():
        return None
    from core.locks import RunLock

    return RunLock(run_dir, f"{command} {run_dir.name}").acquire()


def resolve_checkpoint(run_dir: str | os.PathLike, checkpoint: int | str | os.PathLike | None = None) -> Path:
    """The complete checkpoint to resume from: the latest, a step number, or a folder."""
    run_dir = Path(run_dir)
    complete = runs.list_checkpoints(run_dir)
    if checkpoint is None:
        if not complete:
            raise TrainingError(f"{run_dir}: no complete checkpoint to resume from; start the run again "
                                "(checkpoints are written every `training.save_steps` steps)")
        return complete[-1][1]
    if isinstance(checkpoint, int) or (isinstance(checkpoint, str) and checkpoint.isdigit()):
        wanted = int(checkpoint)
        for step, path in complete:
            if step == wanted:
                return path
        steps = ", ".join(str(step) for step, _ in complete) or "none"
        raise TrainingError(f"{run_dir}: no complete checkpoint at step {wanted} (complete ones: {steps})")
    path = Path(checkpoint)
    if not (path / runs.COMPLETE_MARKER).is_file():
        raise TrainingError(f"{path}: not a complete checkpoint (no {runs.COMPLETE_MARKER} marker)")
    return path


def resume(run_dir: str | os.PathLike, *, checkpoint: int | str | os.PathLike | None = None,
           sinks: Sequence[MetricsSink] = (), stop: StopToken | None = None,
           extra_callbacks: Sequence[Any] = (), probes: Sequence[str] | None = None,
           probe_every: int | None = None, probe_max_new_tokens: int | None = None) -> RunResult:
    """Continue a stopped or interrupted run from its latest (or the chosen) complete checkpoint,
    with the optimizer, scheduler and random-number state saved there. The probe prompts (and their
    interval and length) are those of run_dir/probes.json unless given here."""
    from core.environment import prepare_environment

    prepare_environment()
    run_dir = Path(run_dir)
    if not (run_dir / runs.CONFIG_FILE).is_file():
        raise TrainingError(f"{run_dir}: not a run folder (no {runs.CONFIG_FILE})")
    lock = _lock_run(run_dir, "resume")
    try:
        return _resume_locked(run_dir, checkpoint=checkpoint, sinks=sinks, stop=stop,
                              extra_callbacks=extra_callbacks, probes=probes, probe_every=probe_every,
                              probe_max_new_tokens=probe_max_new_tokens)
    finally:
        if lock is not None:
            lock.release()


def _resume_locked(run_dir: Path, *, checkpoint: int | str | os.PathLike | None, sinks: Sequence[MetricsSink],
                   stop: StopToken | None, extra_callbacks: Sequence[Any], probes: Sequence[str] | None,
                   probe_every: int | None, probe_max_new_tokens: int | None) -> RunResult:
    from core.checkpoints import check_checkpoint, remove_incomplete
    from core.probes import load_probe_settings, normalize_probes, save_probe_settings

    status = runs.read_status(run_dir)
    if status.get("state") == "running":
        raise TrainingError(f"{run_dir}: this run is still training (process {status.get('pid')})")
    if status.get("state") == "finished":
        raise TrainingError(f"{run_dir}: this run already finished; start a new run to train further")
    cfg = runs.load_run_config(run_dir)
    start_from = resolve_checkpoint(run_dir, checkpoint)
    # A damaged file is one line naming it and the previous complete checkpoint, before anything loads.
    check_checkpoint(start_from, for_resume=True, run_dir=run_dir, command="python main.py resume")
    if _is_main_process():
        remove_incomplete(run_dir)  # half-written checkpoints and stray .tmp files of a killed session
    saved = load_probe_settings(run_dir)
    given = probes is not None or probe_every is not None or probe_max_new_tokens is not None
    probe_prompts = normalize_probes(probes) if probes is not None else saved["prompts"]
    probe_every, probe_max_new_tokens = _check_probe_numbers(
        probe_every if probe_every is not None else saved["every"],
        probe_max_new_tokens if probe_max_new_tokens is not None else saved["max_new_tokens"])
    if given and _is_main_process():
        save_probe_settings(run_dir, probe_prompts, probe_every, probe_max_new_tokens)
    _write_status(run_dir, state="running", message=f"resuming from {start_from.name}", ended=None)
    logger.info("run %s: resuming from %s (rank %d of %d)", run_dir, start_from.name, _process_rank(), _world_size())
    return _run(cfg, run_dir, sinks=sinks, stop=stop, extra_callbacks=extra_callbacks, resume_from=start_from,
                prior_elapsed=runs._number(status.get("train_seconds"), float) or 0.0,
                probes=_ProbeSettings(probe_prompts, probe_every, probe_max_new_tokens))


def _fail(run_dir: Path, sinks: Sequence[MetricsSink], message: str, step: int | None,
          state: str = "failed") -> None:
    try:
        _write_status(run_dir, state=state, message=message, ended=time.time(),
                      **({"global_step": step} if step is not None else {}))
    except OSError:  # a full disk may refuse even this small file; the raised error still tells the user
        logger.warning("%s: could not record the failure in status.json", run_dir, exc_info=True)
    try:
        _emit_status(sinks, StatusEvent(state, message, step=step))
    except OSError:  # metrics.jsonl on a full disk: same; the raised error reaches the user anyway
        logger.warning("%s: could not record the failure in metrics.jsonl", run_dir, exc_info=True)


def _coach_sink(cfg: RunConfig, run_dir: Path, targets: Sequence[MetricsSink], *, resuming: bool) -> Any:
    """The coach (core.coach) as a sink: its notes reach the other sinks as they fire (printed by the CLI,
    recorded in metrics.jsonl as ``{"kind": "coach"}`` lines). A resumed run's coach first reads the points
    so far, so it neither repeats an earlier note nor loses the history its rules look at."""
    from core.coach import Coach, CoachSink

    coach = Coach(cfg)
    if resuming:
        coach.review(runs.read_metrics(run_dir))
    return CoachSink(coach, list(targets))


def _run(cfg: RunConfig, run_dir: Path, *, sinks: Sequence[MetricsSink], stop: StopToken | None,
         extra_callbacks: Sequence[Any], resume_from: Path | None, prior_elapsed: float = 0.0,
         probes: _ProbeSettings | None = None) -> RunResult:
    from core.checkpoints import is_disk_full
    from core.metrics import JsonlSink

    # Ranks other than 0 report nothing: rank 0 speaks for the run (one metrics.jsonl, one console line).
    all_sinks: list[MetricsSink] = [JsonlSink(run_dir / runs.METRICS_FILE), *sinks] if _is_main_process() else []
    coach = _coach_sink(cfg, run_dir, all_sinks, resuming=resume_from is not None) if all_sinks else None
    if coach is not None:
        all_sinks.append(coach)
    probes = probes or _ProbeSettings([], None, DEFAULT_PROBE_TOKENS)
    try:
        steps = _train_steps
        if cfg.method.method == "dpo":  # preference tuning: core.preference builds TRL's DPOTrainer
            from core.preference import dpo_train_steps as steps
        result = steps(cfg, run_dir, all_sinks, stop, extra_callbacks, resume_from, prior_elapsed, probes)
        if coach is not None and result.state == "finished":
            coach.finish()
        return result
    except Cancelled as exc:
        # Stopped before training began (tokenizing, loading): nothing to save.
        message = f"stopped before training started ({exc})"
        logger.info("run %s: %s", run_dir, message)
        _write_status(run_dir, state="stopped", message=message, ended=time.time())
        _emit_status(all_sinks, StatusEvent("stopped", message))
        return RunResult(run_dir, "stopped", 0, None, None, None, message)
    except _Diverged as exc:
        if coach is not None:
            try:
                coach.diverged(exc.step, exc.what)  # printed by the CLI, recorded in metrics.jsonl
            except OSError:  # metrics.jsonl unwritable: the advice still reaches the message below
                logger.warning("%s: could not record the coach's advice", run_dir, exc_info=True)
        last = runs.latest_checkpoint(run_dir)
        message = (f"diverged: {exc.what}; training stopped there and nothing after "
                   f"{last.name if last else 'the start'} was saved. {_divergence_advice(cfg, coach)}")
        logger.warning("run %s: %s", run_dir, message)
        _fail(run_dir, all_sinks, message, exc.step, state="diverged")
        raise TrainingError(message) from None
    except _BaseModelBroken as exc:
        logger.warning("run %s: %s", run_dir, exc)
        _fail(run_dir, all_sinks, str(exc), 0)
        raise TrainingError(str(exc)) from None
    except KeyboardInterrupt:
        last = runs.latest_checkpoint(run_dir)
        message = ("aborted (second Ctrl+C); " + (f"resume from {last.name}" if last else "no checkpoint was saved"))
        _write_status(run_dir, state="stopped", message=message, ended=time.time())
        _emit_status(all_sinks, StatusEvent("stopped", message))
        raise
    except Exception as exc:
        if is_disk_full(exc):
            message = _disk_full(run_dir, exc)
            logger.error("run %s: %s", run_dir, message, exc_info=True)
            _fail(run_dir, all_sinks, message, None)
            raise TrainingError(message) from exc
        if isinstance(exc, StudioError):
            logger.error("run %s failed: %s", run_dir, exc, exc_info=True)
            _fail(run_dir, all_sinks, str(exc), None)
            raise
        logger.exception("run %s failed", run_dir)
        if _is_out_of_memory(exc):
            message = f"out of memory while training ({type(exc).__name__}). {OOM_ADVICE}"
            _fail(run_dir, all_sinks, message, None)
            raise TrainingError(message) from exc
        _fail(run_dir, all_sinks, f"{type(exc).__name__}: {exc}", None)
        raise


def _disk_full(run_dir: Path, exc: BaseException) -> str:
    """Clean up after a full disk (incomplete checkpoint, final.partial, stray .tmp files: that frees the space
    status.json needs) and say where, how much, and what is intact."""
    from core.checkpoints import DiskFullError, disk_full_message, free_bytes, remove_incomplete

    if _is_main_process():
        remove_incomplete(run_dir)
    full = exc if isinstance(exc, DiskFullError) else None
    cause: BaseException | None = exc
    while full is None and cause is not None:
        cause = cause.__cause__ or cause.__context__
        full = cause if isinstance(cause, DiskFullError) else None
    head = str(full) if full is not None else disk_full_message(run_dir, None, free_bytes(run_dir),
                                                                 what="a run file")
    last = runs.latest_checkpoint(run_dir)
    return head + ("; the previous checkpoint " + last.name + f" is intact: `python main.py resume {run_dir}` "
                   "continues from it once there is room" if last else "; no earlier checkpoint exists")


def _eval_loss_at(state: Any, step: int | None) -> float | None:
    """The held-out loss logged at ``step`` (the best checkpoint's), so the two are reported as a pair."""
    if step is None:
        return None
    for entry in reversed(state.log_history or []):
        value = _finite(entry.get("eval_loss"))
        if entry.get("step") == step and value is not None and math.isfinite(value):
            return value
    return None


def _best_step(state: Any) -> int | None:
    """The step of the best checkpoint so far (None before the first evaluation that picked one)."""
    step = getattr(state, "best_global_step", None)
    if isinstance(step, int) and step > 0:
        return step
    if state.best_model_checkpoint:
        return runs.checkpoint_step(state.best_model_checkpoint)
    return None


def _early_stopped_step(early_stopping: Any, state: Any, cfg: RunConfig) -> int | None:
    """The step at which EarlyStoppingCallback ended the run, or None when it did not."""
    if early_stopping is None:
        return None
    step = int(state.global_step)
    ran_out_of_patience = early_stopping.early_stopping_patience_counter >= cfg.training.early_stopping_patience
    return step if ran_out_of_patience and step < int(state.max_steps or step) else None


def _early_stop_message(cfg: RunConfig, state: Any, step: int, best_checkpoint: Path | None,
                        best_eval: float | None, kept_best: bool) -> str:
    patience = cfg.training.early_stopping_patience
    value = state.best_metric if isinstance(state.best_metric, (int, float)) else best_eval
    best = best_checkpoint.name if best_checkpoint else None
    threshold = cfg.training.early_stopping_threshold
    head = (f"stopped early at step {step} (early stopping): eval loss did not improve"
            + (f" by at least {threshold:g}" if threshold > 0 else "")
            + f" for {patience} evaluation{'s' if patience != 1 else ''}")
    if best is None:
        return head + f"; final/ holds the weights of step {step}"
    scored = f"{best} (eval loss {value:.4f})" if value is not None else best
    if kept_best:  # the Trainer loaded the best checkpoint back before final/ was saved
        return head + f"; best {scored} kept as final"
    return head + f"; best was {scored}, final/ holds the weights of step {step}"


# A run has diverged when its training loss is non-finite, or at least this many times its first value at
# two logged points in a row and still rising: it stops as ``diverged`` (nothing more is saved).
DIVERGENCE_FACTOR = 3.0


class _Diverged(Exception):
    def __init__(self, what: str, step: int, nonfinite: bool):
        super().__init__(what)
        self.what = what
        self.step = step
        self.nonfinite = nonfinite


class _BaseModelBroken(Exception):
    """The untouched model's loss is already not a number: the weights or the precision, not training."""


def _load_finished_checkpoint(trainer: Any, checkpoint: Path, args: Any) -> None:
    from transformers import TrainerState

    from core.checkpoints import TRAINER_STATE_FILE

    trainer._load_from_checkpoint(str(checkpoint))
    trainer.state = TrainerState.load_from_json(str(checkpoint / TRAINER_STATE_FILE))
    best = trainer.state.best_model_checkpoint
    if best and not Path(best).is_dir():  # the run folder moved since: the same name under this one
        moved = checkpoint.parent / Path(best).name
        trainer.state.best_model_checkpoint = str(moved) if moved.is_dir() else None
    if args.load_best_model_at_end and trainer.state.best_model_checkpoint:
        trainer._load_best_model()


def _base_model_message(cfg: RunConfig, what: str, value: Any, when: str) -> str:
    precision = cfg.training.precision
    return (f"the untouched model's {what} is already {value} {when}, before any training, so the learning rate "
            f"is not the cause: the model's numbers overflow in this precision ({precision}) or its weights are "
            f"broken. Train in fp32 (`--set training.precision=fp32`) and check that {cfg.model.name_or_path} "
            "loads and answers (`python main.py generate MODEL --prompt ...`)")


def _divergence_advice(cfg: RunConfig, coach: Any) -> str:
    """The coach's plain advice for a diverged run (its learning-rate or NaN note when one fired), else the
    same remedy in our own words."""
    fired = getattr(getattr(coach, "coach", None), "fired", {}) or {}
    for rule in ("lr_too_high", "divergence", "nan_loss"):
        advice = fired.get(rule)
        if advice is not None and getattr(advice, "sentence", ""):
            return f"{advice.title}: {advice.sentence}"
    t = cfg.training
    hints = [f"lower the learning rate (now {t.learning_rate:g}; try {t.learning_rate / 10:g})"]
    if not t.max_grad_norm:
        hints.append("turn gradient clipping back on (`training.max_grad_norm=1.0`)")
    if t.precision == "fp16":
        hints.append("train in bf16 or fp32 (fp16 overflows easily)")
    return "Start again and " + ", ".join(hints[:-1]) + (" and " if len(hints) > 1 else "") + hints[-1] + "."


def _train_steps(cfg: RunConfig, run_dir: Path, sinks: Sequence[MetricsSink], stop: StopToken | None,
                 extra_callbacks: Sequence[Any], resume_from: Path | None, prior_elapsed: float,
                 probes: _ProbeSettings) -> RunResult:
    """The linear recipe: device -> data -> model -> arguments -> Trainer -> train -> save."""
    from core.devices import pick_device
    from core.hf_args import apply_method, training_arguments
    from core.metrics import emit_probe
    from core.probes import make_probe_callback
    from core.tracking import tracking

    main = _is_main_process()
    device = pick_device(cfg.training.device)
    _check_method_supported(cfg, device)
    if main:
        atomic_write_text(run_dir / runs.ENVIRONMENT_FILE, json.dumps(environment_info(device), indent=2) + "\n")

    def progress(fraction: float | None, message: str, phase: str = "tokenizing") -> None:
        _emit_status(sinks, StatusEvent("running", message, fraction=fraction, phase=phase))

    # -- tokenizer and data ---------------------------------------------------------------------
    from core.data import prepare_dataset
    from core.models import load_model, load_tokenizer

    progress(None, "loading the tokenizer", "loading")
    tokenizer = load_tokenizer(cfg.model)
    if stop is not None:
        stop.raise_if_set()
    prepared = prepare_dataset(cfg.data, tokenizer, cfg.training.max_length, stop=stop, progress=progress)
    train_dataset = prepared.train
    logger.info("run %s: data ready: %d training and %d held-out examples", run_dir.name, len(train_dataset),
                len(prepared.test) if prepared.test is not None else 0)
    if len(train_dataset) == 0:
        raise TrainingError(f"{cfg.data.source}: no training examples left after preparing the data")
    eval_dataset = prepared.test if prepared.test is not None and len(prepared.test) > 0 else None
    if eval_dataset is not None and cfg.training.max_eval_examples > 0:
        eval_dataset = eval_dataset.select(range(min(cfg.training.max_eval_examples, len(eval_dataset))))
    if cfg.training.group_by_length and "length" not in train_dataset.column_names:
        # Precomputed lengths (from the Arrow offsets, no Python loop) spare the Trainer's length-grouped
        # sampler a pass over every example at start-up.
        train_dataset = train_dataset.add_column("length", _token_lengths(train_dataset))
    if stop is not None:
        stop.raise_if_set()

    # -- model and method -----------------------------------------------------------------------
    import transformers
    from transformers import EarlyStoppingCallback

    progress(None, "loading the model", "loading")
    # Seed before the adapter is created so LoRA's random initialisation is reproducible.
    transformers.set_seed(cfg.training.seed)
    model = load_model(cfg.model, device=_device_string(device), quantize_4bit=cfg.method.method == "qlora",
                       dtype=_frozen_weights_dtype(cfg, device))
    model = apply_method(model, cfg.method, gradient_checkpointing=cfg.training.gradient_checkpointing)
    if stop is not None:
        stop.raise_if_set()

    overrides: dict[str, Any] = {
        # Our console/GUI sinks replace the Trainer's tqdm bar and its printing of log dicts.
        "disable_tqdm": True,
        # A NaN loss must reach our callback, not be replaced by an average of previous losses.
        "logging_nan_inf_filter": False,
        "include_num_input_tokens_seen": "non_padding",
        # Our collator picks its columns; the Trainer's signature inspection is unreliable with peft.
        "remove_unused_columns": False,
        # The step-0 evaluation is done below, before train(), so the data order does not depend on it
        # and a resumed run does not evaluate again.
        "eval_on_start": False,
    }
    args = training_arguments(cfg, str(run_dir / runs.CHECKPOINTS_DIR), device,
                              eval_available=eval_dataset is not None, **overrides)

    studio_callback = _make_callback(sinks, stop, run_dir, device, prior_elapsed)
    studio_callback.total_steps = _planned_steps(args, len(train_dataset))
    eval_dataset = _cap_evaluation(cfg, run_dir, sinks, model, device, train_dataset, eval_dataset,
                                   studio_callback.total_steps, resuming=resume_from is not None)
    eval_dataset = _longest_first(eval_dataset)
    studio_callback.eval_examples = len(eval_dataset) if eval_dataset is not None else 0
    callbacks: list[Any] = [studio_callback]
    early_stopping = None
    if cfg.training.early_stopping_patience > 0 and eval_dataset is not None:
        early_stopping = EarlyStoppingCallback(early_stopping_patience=cfg.training.early_stopping_patience,
                                               early_stopping_threshold=cfg.training.early_stopping_threshold)
        callbacks.append(early_stopping)
    if probes.prompts:
        # Generation happens on rank 0 only; the other ranks simply wait for it at the next all-reduce.
        callbacks.append(make_probe_callback(
            probes.prompts, data_cfg=cfg.data, gen_cfg=cfg.generation, tokenizer=tokenizer,
            emit=lambda result: emit_probe(sinks, result),
            status=lambda message, step: _emit_status(sinks, StatusEvent("running", message, step=step)),
            stop=stop, every=probes.every, max_new_tokens=probes.max_new_tokens,
            on_pause=studio_callback.add_pause, enabled=main))
    callbacks.extend(extra_callbacks)
    # TensorBoard / MLflow (training.report_to): the MLflow run spans the step-0 evaluation and training.
    with tracking(cfg, run_dir, main=main, resuming=resume_from is not None) as tracking_session:
        return _train_and_save(cfg, run_dir, sinks, stop, resume_from, model, args, train_dataset, eval_dataset,
                               tokenizer, callbacks, studio_callback, early_stopping, tracking_session)


def _train_and_save(cfg: RunConfig, run_dir: Path, sinks: Sequence[MetricsSink], stop: StopToken | None,
                    resume_from: Path | None, model: Any, args: Any, train_dataset: Any, eval_dataset: Any,
                    tokenizer: Any, callbacks: list[Any], studio_callback: Any, early_stopping: Any,
                    tracking_session: Any) -> RunResult:
    """The second half of the recipe: Trainer -> step-0 evaluation -> train -> save final/."""
    import transformers
    from transformers import PrinterCallback, ProgressCallback

    from core.tracking import tensorboard_folder

    main = _is_main_process()

    def progress(fraction: float | None, message: str, phase: str) -> None:
        _emit_status(sinks, StatusEvent("running", message, fraction=fraction, phase=phase))

    with tensorboard_folder(tracking_session):
        trainer = trainer_class()(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                                  data_collator=PadToLongestCollator(tokenizer.pad_token_id),
                                  processing_class=tokenizer, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.studio_take_over_rotation(run_dir)
    trainer.studio_notice = lambda message: _emit_status(sinks, StatusEvent("running", message, phase="saving"))

    # -- train ----------------------------------------------------------------------------------
    if resume_from is None and eval_dataset is not None and cfg.training.eval_before_training:
        studio_callback.eval_started(trainer.state)
        base_loss = _finite(trainer.evaluate().get("eval_loss"))
        if base_loss is not None and not math.isfinite(base_loss):
            raise _BaseModelBroken(_base_model_message(cfg, "held-out loss", base_loss, "at step 0"))
    if stop is not None:
        stop.raise_if_set()
    # Same seed right before train() in a fresh and a resumed run: the shuffling (and length grouping)
    # of the first epoch is identical, so the Trainer's skipping of seen batches lands on the same data.
    transformers.set_seed(cfg.training.seed)
    done = runs.checkpoint_step(resume_from) if resume_from is not None else None
    if done is not None and studio_callback.total_steps and done >= studio_callback.total_steps:
        # Killed while saving final/ after its last step: the Trainer would train one step past the end
        # (11/10). Load that checkpoint (and the best one, as the end of train() would) and save final/.
        _load_finished_checkpoint(trainer, resume_from, args)
    else:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    state = trainer.state
    step = int(state.global_step)
    best_checkpoint = Path(state.best_model_checkpoint) if state.best_model_checkpoint else None
    best_step = _best_step(state)
    best_eval = _eval_loss_at(state, best_step) if best_checkpoint else None
    if best_eval is None:
        best_eval = studio_callback.best_eval_loss
    if studio_callback.diverged_step is not None:
        if (studio_callback.diverged_nonfinite and not studio_callback.resumed and studio_callback.diverged_step <= 1
                and studio_callback.first_loss is None):
            # The first step's loss comes from the untouched weights: no update has happened yet.
            raise _BaseModelBroken(_base_model_message(cfg, "training loss", "nan", "at step 1"))
        raise _Diverged(studio_callback.diverged_what, studio_callback.diverged_step,
                        studio_callback.diverged_nonfinite)
    if studio_callback.stopped_by_user:
        last = runs.latest_checkpoint(run_dir)
        message = (f"stopped at step {step}" + (f"; resume from {last.name}" if last else ""))
        _write_status(run_dir, state="stopped", message=message, global_step=step, ended=time.time(),
                      best_checkpoint=best_checkpoint.name if best_checkpoint else None, best_step=best_step,
                      best_eval_loss=best_eval, train_seconds=studio_callback.elapsed())
        _emit_status(sinks, StatusEvent("stopped", message, step=step))
        tracking_session.status = "KILLED"  # MLflow's word for a run ended before its last step
        logger.info("run %s: %s", run_dir, message)
        return RunResult(run_dir, "stopped", step, None, best_checkpoint, best_eval, message)

    # -- save final/ ----------------------------------------------------------------------------
    progress(None, "saving the final model", "saving")
    final_dir = run_dir / runs.FINAL_DIR
    partial = run_dir / (runs.FINAL_DIR + ".partial")
    if main:
        shutil.rmtree(partial, ignore_errors=True)
    # Every rank calls save_model (sharded set-ups gather weights collectively); only rank 0 writes.
    try:
        trainer.save_model(str(partial))  # adapter (peft) or full model, plus the tokenizer
    except Exception as exc:
        from core import checkpoints

        if checkpoints.is_disk_full(exc) and not isinstance(exc, checkpoints.DiskFullError):
            free = checkpoints.free_bytes(run_dir)
            raise checkpoints.DiskFullError(checkpoints.disk_full_message(partial, None, free, what="the final model"),
                                            partial, None, free) from exc
        raise
    early_stopped_step = _early_stopped_step(early_stopping, state, cfg)
    if not main:
        message = f"finished at step {step} (rank {_process_rank()}; rank 0 saves the run)"
        return RunResult(run_dir, "finished", step, None, best_checkpoint, best_eval, message)
    # A pickle nobody needs to load the model (config.yaml reproduces the run): keep final/ pickle-free.
    (partial / "training_args.bin").unlink(missing_ok=True)
    shutil.rmtree(final_dir, ignore_errors=True)
    os.replace(partial, final_dir)
    if early_stopped_step is not None:
        message = _early_stop_message(cfg, state, early_stopped_step, best_checkpoint, best_eval,
                                      kept_best=bool(args.load_best_model_at_end))
    else:
        message = (f"finished at step {step}"
                   + (f"; best eval loss {best_eval:.4f} at {best_checkpoint.name}" if best_eval is not None
                      and best_checkpoint else ""))
    _write_status(run_dir, state="finished", message=message, global_step=step, ended=time.time(),
                  best_checkpoint=best_checkpoint.name if best_checkpoint else None, best_step=best_step,
                  best_eval_loss=best_eval, early_stopped_step=early_stopped_step,
                  train_seconds=studio_callback.elapsed(), final_dir=runs.FINAL_DIR)
    _emit_status(sinks, StatusEvent("finished", message, step=step, fraction=1.0))
    logger.info("run %s: %s", run_dir, message)
    return RunResult(run_dir, "finished", step, final_dir, best_checkpoint, best_eval, message)
