"""Learning-rate finder: the range test of Smith (2015) as fastai's ``lr_find`` runs it.

A short training run on the current model, method and data in which the learning rate grows exponentially
from ``start_lr`` to ``end_lr``, one value per optimizer step, recording the training loss at each.
The loss first barely moves (the rate is too small to matter), then falls, reaches a lowest point and
blows up. The finder stops early once the smoothed loss has clearly diverged, puts every trained weight
back exactly as it was (bit for bit), and suggests a rate with its reason in words.

It is the Trainer of ``transformers`` (our ``core.training.trainer_class``) with a scheduler that grows
the rate instead of decaying it, so optimizer, precision, clipping, batching and loss are those of a real
run. Nothing is written into a run folder: the result is recorded in ``WORKSPACE/lr-finds/*.json``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.cancel import StopToken
from core.config import ConfigError, RunConfig, atomic_write_text
from core.errors import Cancelled, TrainingError

logger = logging.getLogger(__name__)

DEFAULT_START_LR = 1e-7
DEFAULT_END_LR = 1.0
DEFAULT_STEPS = 80
# fastai stops once the smoothed loss exceeds 4x its best; LLM losses start near 2-3 and cross-entropy
# saturates near ln(vocabulary) (~11), so 4x the best may never come: 3x is a clear blow-up for them too.
DEFAULT_DIVERGENCE_FACTOR = 3.0
EMA_BETA = 0.9  # causal smoothing for the divergence check (fastai uses 0.98 over 100 steps)
MIN_STEPS_BEFORE_DIVERGENCE = 5
FINDS_DIR = "lr-finds"


@dataclass(frozen=True)
class LRPoint:
    """One step of the range test: the rate that step trained with and the loss it measured."""

    step: int
    learning_rate: float
    loss: float
    smoothed: float  # the causal moving average the divergence check uses


@dataclass(frozen=True)
class LRFindProgress:
    """What the finder reports while it runs (a frozen snapshot, safe to hand to another thread)."""

    message: str
    points: tuple[LRPoint, ...] = ()
    num_steps: int = 0

    def __str__(self) -> str:
        return self.message


@dataclass
class LRFindResult:
    """A finished range test: the curve, why it ended, and the suggested rate with its reason."""

    points: list[LRPoint]
    smoothed: list[float]  # centred smoothing of the losses (no lag): what the plot and the suggestion use
    start_lr: float
    end_lr: float
    num_steps: int
    ended_because: str  # "diverged" | "completed" | "time budget" | "stopped"
    suggestion: float | None
    reason: str  # the suggestion in words
    candidates: dict = field(default_factory=dict)  # {"steepest": lr, "minimum": lr, "diverged": lr}
    seconds: float = 0.0
    config: dict = field(default_factory=dict)  # the RunConfig the test ran with (to_dict)
    path: str | None = None  # where the result was recorded

    def to_dict(self) -> dict:
        data = asdict(self)
        data["points"] = [asdict(point) for point in self.points]
        return _json_safe(data)

    @classmethod
    def from_dict(cls, data: dict) -> LRFindResult:
        values = dict(data)
        values["points"] = [LRPoint(**point) for point in values.get("points", [])]
        known = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in values.items() if key in known})

    @property
    def learning_rates(self) -> list[float]:
        return [point.learning_rate for point in self.points]

    @property
    def losses(self) -> list[float]:
        return [point.loss for point in self.points]


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


# --------------------------------------------------------------------------------------------- schedule
def learning_rate_at(step_index: int, start_lr: float, end_lr: float, num_steps: int) -> float:
    """The rate of the ``step_index``-th optimizer step (0-based): exponential from start to end."""
    if num_steps <= 1:
        return start_lr
    fraction = min(max(step_index, 0), num_steps - 1) / (num_steps - 1)
    return start_lr * (end_lr / start_lr) ** fraction


def _check_range(start_lr: float, end_lr: float, num_steps: int) -> None:
    if not (0 < start_lr < end_lr):
        raise ConfigError("lr_find", f"the start rate ({start_lr:g}) must be above 0 and below the end rate "
                                     f"({end_lr:g})")
    if end_lr > 100:
        raise ConfigError("lr_find", f"an end rate of {end_lr:g} is far past any useful value; 1 or 10 is enough")
    if not isinstance(num_steps, int) or not 5 <= num_steps <= 2000:
        raise ConfigError("lr_find", f"steps must be a whole number from 5 to 2000 (got {num_steps!r})")


# --------------------------------------------------------------------------------------------- smoothing
def ema(values: Sequence[float], beta: float = EMA_BETA) -> list[float]:
    """Exponential moving average with bias correction (the first values are not pulled towards 0)."""
    out, average = [], 0.0
    for index, value in enumerate(values, start=1):
        average = beta * average + (1 - beta) * value
        out.append(average / (1 - beta ** index))
    return out


def centered_smooth(values: Sequence[float], half_window: int | None = None) -> list[float]:
    """A centred moving average (no lag, unlike the EMA): each value averaged with ``half_window``
    neighbours on each side (fewer at the ends). Non-finite values are left out of the averages."""
    n = len(values)
    if n == 0:
        return []
    if half_window is None:
        half_window = max(1, min(5, n // 15))
    out = []
    for index in range(n):
        window = [v for v in values[max(0, index - half_window): index + half_window + 1] if math.isfinite(v)]
        out.append(sum(window) / len(window) if window else float("nan"))
    return out


# --------------------------------------------------------------------------------------------- suggestion
def suggest_learning_rate(learning_rates: Sequence[float], losses: Sequence[float],
                          diverged: bool) -> tuple[float | None, str, dict, list[float]]:
    """(suggested rate, the reason in words, the candidates, the smoothed curve) for a range-test curve.

    Three classic readings of the smoothed curve: the rate where the loss falls fastest (per decade of
    rate), a tenth of the rate where it is lowest, and a tenth of the rate where it blows up (rises back
    above where it started). The suggestion is the largest of them, never above the minimum: the app's
    runs are short and their schedule warms up to the rate and decays from it, so they make the most
    progress at the highest rate that is still safely below the blow-up."""
    smoothed = centered_smooth(list(losses))
    finite = [i for i, value in enumerate(smoothed) if math.isfinite(value)]
    candidates: dict[str, float] = {}
    if len(finite) < 5:
        return None, "too few steps with a finite loss to read a curve: run the finder with more steps", \
            candidates, smoothed
    last = finite[-1]
    i_min = min(finite, key=lambda i: smoothed[i])
    lr_min = learning_rates[i_min]
    candidates["minimum"] = lr_min
    start_value = smoothed[finite[0]]
    fall = start_value - smoothed[i_min]
    logs = [math.log10(lr) for lr in learning_rates]
    # Steepest fall: the most negative slope of the smoothed loss against log10(rate), before the minimum.
    best_slope, i_steep = 0.0, None
    for i in range(1, i_min + 1):
        left, right = i - 1, min(i + 1, len(smoothed) - 1)
        if not (math.isfinite(smoothed[left]) and math.isfinite(smoothed[right])) or logs[right] == logs[left]:
            continue
        slope = (smoothed[right] - smoothed[left]) / (logs[right] - logs[left])
        if slope < best_slope:
            best_slope, i_steep = slope, i
    if i_steep is not None:
        candidates["steepest"] = learning_rates[i_steep]
    # Blow-up: the first rate after the minimum where the loss is back above where it started (or turned
    # non-finite); when the finder stopped on divergence before that, the rate it stopped at.
    i_blow = next((i for i in range(i_min + 1, len(losses))
                   if not math.isfinite(smoothed[i]) or smoothed[i] > start_value), None)
    if i_blow is None and diverged:
        i_blow = len(learning_rates) - 1
    if i_blow is not None:
        candidates["blows_up"] = learning_rates[i_blow]
    if fall <= 0.02 * abs(start_value) or i_steep is None:
        return None, (f"the loss never clearly fell (from {start_value:.3f} to at best {smoothed[i_min]:.3f}): no rate "
                      "to suggest. Try a wider range, more steps, or check the data"), candidates, smoothed
    steep = candidates["steepest"]
    if i_min >= last - 1 and i_blow is None:
        # The loss was still falling at the end of the range: the minimum is not known, only the steepest fall.
        return steep, (f"steepest fall of the loss, at {steep:.1e}; the loss was still falling at the end of the "
                       f"range ({learning_rates[last]:.1e}), so where it bottoms out is unknown: "
                       "try a higher end rate"), candidates, smoothed
    readings = [(steep, "steepest fall of the loss"), (lr_min / 10, "a tenth of where the loss is lowest")]
    if i_blow is not None:
        readings.append((candidates["blows_up"] / 10, "a tenth of where the loss blows up"))
    value, rule = max(readings, key=lambda reading: reading[0])
    value = min(value, lr_min)
    facts = [f"the loss falls fastest at {steep:.1e}", f"is lowest at {lr_min:.1e}"]
    if i_blow is not None:
        facts.append(f"blows up at {candidates['blows_up']:.1e}")
    return value, f"{rule}: {value:.1e} ({', '.join(facts)})", candidates, smoothed


# --------------------------------------------------------------------------------------------- range test
def _snapshot_trainable(model: Any) -> dict[str, Any]:
    """Copies (on the CPU) of everything the optimizer can change: the trainable parameters and buffers."""
    saved = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            saved["param:" + name] = param.detach().to("cpu", copy=True)
    for name, buffer in model.named_buffers():
        saved["buffer:" + name] = buffer.detach().to("cpu", copy=True)
    return saved


def _restore(model: Any, saved: dict[str, Any]) -> None:
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            kept = saved.get("param:" + name)
            if kept is not None:
                param.copy_(kept.to(param.device))
                param.grad = None
        for name, buffer in model.named_buffers():
            kept = saved.get("buffer:" + name)
            if kept is not None:
                buffer.copy_(kept.to(buffer.device))


def range_test(model: Any, tokenizer: Any, train_dataset: Any, cfg: RunConfig, *,
               start_lr: float = DEFAULT_START_LR, end_lr: float = DEFAULT_END_LR, num_steps: int = DEFAULT_STEPS,
               divergence_factor: float = DEFAULT_DIVERGENCE_FACTOR, max_seconds: float | None = None,
               device: Any = None, stop: StopToken | None = None,
               on_point: Callable[[LRFindProgress], None] | None = None) -> LRFindResult:
    """Run the range test on ``model`` (already made trainable by the method) with ``cfg.training``'s
    optimizer, batch size, clipping and precision; restore every trained weight afterwards, bit for bit,
    whatever happens (divergence, a stop, an error).

    ``on_point`` receives an ``LRFindProgress`` after every step. ``max_seconds`` ends the test early
    (the curve so far still gives a suggestion when it is long enough)."""
    from transformers import TrainerCallback

    from core.devices import pick_device
    from core.hf_args import training_arguments
    from core.training import PadToLongestCollator, trainer_class

    _check_range(start_lr, end_lr, num_steps)
    if divergence_factor <= 1:
        raise ConfigError("lr_find", f"the divergence factor must be above 1 (got {divergence_factor:g})")
    device = device if device is not None else pick_device(cfg.training.device)
    points: list[LRPoint] = []
    outcome = {"ended": "completed"}
    started = time.monotonic()

    class RangeCallback(TrainerCallback):
        def __init__(self) -> None:
            self.best = math.inf
            self.average = 0.0

        def on_step_end(self, args, state, control, **kwargs):
            if stop is not None and stop.is_set:
                outcome["ended"] = "stopped"
                control.should_training_stop = True
            elif max_seconds is not None and time.monotonic() - started > max_seconds:
                outcome["ended"] = "time budget"
                control.should_training_stop = True
            control.should_save = False
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return control
            step = int(state.global_step)
            try:
                loss = float(logs["loss"])
            except (TypeError, ValueError):
                loss = float("nan")
            # The loss logged at step k was measured by the k-th update, which used the rate of index k-1.
            lr = learning_rate_at(step - 1, start_lr, end_lr, num_steps)
            index = len(points) + 1
            if math.isfinite(loss):
                self.average = EMA_BETA * self.average + (1 - EMA_BETA) * loss
                smoothed = self.average / (1 - EMA_BETA ** index)
            else:
                smoothed = float("nan")
            points.append(LRPoint(step=step, learning_rate=lr, loss=loss, smoothed=smoothed))
            if not math.isfinite(loss):
                outcome["ended"] = "diverged"
                control.should_training_stop = True
            else:
                self.best = min(self.best, smoothed)
                if index >= MIN_STEPS_BEFORE_DIVERGENCE and smoothed > divergence_factor * self.best:
                    outcome["ended"] = "diverged"
                    control.should_training_stop = True
            if on_point is not None:
                on_point(LRFindProgress(f"step {step}/{num_steps}: rate {lr:.1e}, loss {loss:.3f}",
                                        tuple(points), num_steps))
            return control

    ratio = end_lr / start_lr

    class RangeTrainer(trainer_class()):  # type: ignore[misc]
        def create_scheduler(self, num_training_steps, optimizer=None):
            if self.lr_scheduler is None:
                from torch.optim.lr_scheduler import LambdaLR

                last = max(1, num_steps - 1)
                self.lr_scheduler = LambdaLR(optimizer if optimizer is not None else self.optimizer,
                                             lambda i: ratio ** (min(i, last) / last))
                self._created_lr_scheduler = True
            return self.lr_scheduler

    was_training = model.training
    saved = _snapshot_trainable(model)
    trainer = None
    try:
        with tempfile.TemporaryDirectory(prefix="lr-find-") as scratch:
            args = training_arguments(
                cfg, scratch, device, eval_available=False,
                learning_rate=start_lr, max_steps=num_steps, warmup_steps=0, lr_scheduler_type="constant",
                logging_steps=1, logging_first_step=True, logging_nan_inf_filter=False, save_strategy="no",
                eval_strategy="no", eval_on_start=False, load_best_model_at_end=False, report_to="none",
                disable_tqdm=True, run_name="lr-find")
            if cfg.training.group_by_length and "length" not in train_dataset.column_names:
                # Batches of similar length, as the run will have them (and as fast): precomputed lengths
                # spare the sampler a pass over the data.
                import pyarrow.compute as pc

                lengths = pc.list_value_length(train_dataset.data.column("input_ids")).to_pylist()
                train_dataset = train_dataset.add_column("length", lengths)
            trainer = RangeTrainer(model=model, args=args, train_dataset=train_dataset,
                                   data_collator=PadToLongestCollator(tokenizer.pad_token_id),
                                   processing_class=tokenizer, callbacks=[RangeCallback()])
            from transformers import PrinterCallback, ProgressCallback

            trainer.remove_callback(PrinterCallback)
            trainer.remove_callback(ProgressCallback)
            trainer.train()
    finally:
        if trainer is not None:
            # The optimizer holds moments as big as the trained weights: let them go before restoring.
            trainer.optimizer = None
            trainer.lr_scheduler = None
        del trainer
        _restore(model, saved)
        model.train(was_training)
    if outcome["ended"] == "stopped" and not points:
        raise Cancelled("the learning-rate finder was stopped before its first step")
    seconds = time.monotonic() - started
    lrs = [point.learning_rate for point in points]
    losses = [point.loss for point in points]
    suggestion, reason, candidates, smoothed = suggest_learning_rate(lrs, losses, outcome["ended"] == "diverged")
    return LRFindResult(points=points, smoothed=smoothed, start_lr=start_lr, end_lr=end_lr, num_steps=num_steps,
                        ended_because=outcome["ended"], suggestion=suggestion, reason=reason, candidates=candidates,
                        seconds=seconds, config=cfg.to_dict())


# --------------------------------------------------------------------------------------------- whole recipe
def find_learning_rate(cfg: RunConfig, *, workspace: str | os.PathLike | None = None, save: bool = True,
                       start_lr: float = DEFAULT_START_LR, end_lr: float = DEFAULT_END_LR,
                       num_steps: int = DEFAULT_STEPS, divergence_factor: float = DEFAULT_DIVERGENCE_FACTOR,
                       max_seconds: float | None = None, stop: StopToken | None = None,
                       progress: Callable[[float | None, Any], None] | None = None) -> LRFindResult:
    """The range test on ``cfg``'s model, method and training data, as a run would load them.

    No run folder is created: the result (curve, suggestion, configuration) is recorded as
    ``WORKSPACE/lr-finds/lr-find-<time>.json`` when ``save``. ``progress(fraction, message)`` receives
    status lines while loading and an ``LRFindProgress`` (str() is its message) after every step."""
    import transformers

    from core.data import prepare_dataset
    from core.devices import pick_device
    from core.hf_args import apply_method
    from core.models import load_model, load_tokenizer
    from core.training import _check_method_supported, _device_string

    cfg = cfg.copy()
    cfg.validate()
    _check_range(start_lr, end_lr, num_steps)

    def say(fraction: float | None, message: Any) -> None:
        if progress is not None:
            progress(fraction, message)

    device = pick_device(cfg.training.device)
    _check_method_supported(cfg, device)
    say(None, "loading the tokenizer")
    tokenizer = load_tokenizer(cfg.model)
    if stop is not None:
        stop.raise_if_set()
    prepared = prepare_dataset(cfg.data, tokenizer, cfg.training.max_length, stop=stop,
                               progress=lambda fraction, message, *_: say(fraction, message))
    if len(prepared.train) == 0:
        raise TrainingError(f"{cfg.data.source}: no training examples left after preparing the data")
    say(None, "loading the model")
    transformers.set_seed(cfg.training.seed)
    model = load_model(cfg.model, device=_device_string(device), quantize_4bit=cfg.method.method == "qlora")
    model = apply_method(model, cfg.method, gradient_checkpointing=cfg.training.gradient_checkpointing)
    if stop is not None:
        stop.raise_if_set()
    say(0.0, f"range test: {num_steps} steps, rate {start_lr:.0e} → {end_lr:.0e}")
    logger.info("lr-find: %s on %s, data %s, %d steps %g..%g", cfg.method.method, cfg.model.name_or_path,
                cfg.data.source, num_steps, start_lr, end_lr)

    def on_point(snapshot: LRFindProgress) -> None:
        say(len(snapshot.points) / max(1, num_steps), snapshot)

    result = range_test(model, tokenizer, prepared.train, cfg, start_lr=start_lr, end_lr=end_lr,
                        num_steps=num_steps, divergence_factor=divergence_factor, max_seconds=max_seconds,
                        device=device, stop=stop, on_point=on_point)
    del model
    logger.info("lr-find: %s after %d steps; suggestion %s (%s)", result.ended_because, len(result.points),
                result.suggestion, result.reason)
    if save:
        from core.paths import default_workspace

        result.path = str(save_result(result, Path(workspace) if workspace else default_workspace()))
    say(1.0, f"done: {result.reason}")
    return result


def save_result(result: LRFindResult, workspace: Path) -> Path:
    """Record a finder result as ``WORKSPACE/lr-finds/lr-find-<time>.json`` (atomic write)."""
    folder = Path(workspace) / FINDS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = folder / f"lr-find-{stamp}.json"
    index = 2
    while path.exists():
        path = folder / f"lr-find-{stamp}-{index}.json"
        index += 1
    result.path = str(path)
    atomic_write_text(path, json.dumps(result.to_dict(), indent=1) + "\n")
    return path


def load_result(path: str | os.PathLike) -> LRFindResult:
    """A recorded finder result."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    for point in data.get("points", []):
        for key in ("loss", "smoothed"):
            if isinstance(point.get(key), str):
                point[key] = float(point[key])
    data["smoothed"] = [float(value) for value in data.get("smoothed", [])]
    return LRFindResult.from_dict(data)


def describe(result: LRFindResult) -> list[str]:
    """The result as console lines: a coarse table of the curve, how it ended and the suggestion."""
    lines = [f"{len(result.points)} steps, rate {result.start_lr:.0e} → {result.end_lr:.0e}, "
             f"ended: {result.ended_because} ({result.seconds:.0f} s)"]
    if result.points:
        lines.append("      rate   loss  smoothed")
        stride = max(1, len(result.points) // 16)
        shown = list(range(0, len(result.points), stride))
        if shown[-1] != len(result.points) - 1:
            shown.append(len(result.points) - 1)
        for i in shown:
            point = result.points[i]
            lines.append(f"  {point.learning_rate:8.1e}  {point.loss:6.3f}  {result.smoothed[i]:6.3f}")
    if result.suggestion is not None:
        lines.append(f"suggested learning rate: {result.suggestion:.1e}")
    lines.append(f"why: {result.reason}")
    if result.path:
        lines.append(f"recorded in {result.path}")
    return lines
