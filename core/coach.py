"""A plain-language training coach: watches the loss curve and says what looks wrong and what to change.

``Coach.update(point)`` takes one ``core.metrics.MetricPoint`` (or a dict with the same fields, e.g. a
line of ``metrics.jsonl``) and returns the advice that became true with it. Each rule fires at most once
per run, so the GUI can show the advice as it arrives without de-duplicating; ``finish()`` at the end of a
run adds the "all is well" note when nothing went wrong. ``CoachSink`` runs the coach as a metrics sink
inside ``core.training``, so headless runs get the same notes (printed, and recorded in metrics.jsonl). Every advice carries the
evidence (steps and values) in one sentence and a concrete config patch, e.g.
``{"training.learning_rate": 2e-5}``, that ``apply_suggestion`` applies to a ``RunConfig``.

The rules use robust statistics (medians, a least-squares slope, a smoothed zig-zag) so that ordinary
batch-to-batch noise of a healthy run does not trigger them. No torch import here: the GUI imports this
at start-up.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# Usual starting learning rates per method: the concrete value suggested when the current one is far off.
TYPICAL_LEARNING_RATE = {"lora": 2e-4, "qlora": 2e-4, "full": 2e-5, "prefix": 1e-2}

RULES = (
    "nan_loss",
    "lr_too_high",
    "divergence",
    "spike",
    "plateau",
    "oscillation",
    "overfitting",
    "low_loss",
    "lr_too_low",
    "noisy_batches",
    "all_is_well",
)


@dataclass(frozen=True)
class Advice:
    """One piece of advice: what was seen (with evidence) and what to change."""

    rule: str  # one of RULES
    title: str  # short headline, e.g. "Learning rate likely too high"
    sentence: str  # one plain sentence with the evidence (steps and values)
    evidence: dict  # the numbers behind the sentence
    suggestion: dict  # config patch: dotted field -> new value
    action: str  # short button label, e.g. "Lower the learning rate to 2e-5"
    step: int = 0  # the step at which the advice fired
    severity: str = "warning"  # "info" | "warning" | "error"


def _num(value: Any) -> float | None:
    """A float from a metric value (JSONL writes NaN/inf as strings); None when absent."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _get(point: Any, name: str, default: Any = None) -> Any:
    if isinstance(point, dict):
        return point.get(name, default)
    return getattr(point, name, default)


def nice_number(value: float) -> float:
    """Round to one significant digit (2.37e-4 -> 2e-4) so suggested values read like a human's."""
    if value <= 0 or not math.isfinite(value):
        return value
    return float(f"{value:.0e}")


def fmt(value: float) -> str:
    """Short human form of a number: 2e-5, 0.0131, 2.31."""
    if value == 0:
        return "0"
    if abs(value) < 1e-3 or abs(value) >= 1e5:
        return f"{value:.0e}".replace("e-0", "e-").replace("e+0", "e")
    return f"{value:.3g}"


def _smooth(values: list[float], window: int = 5) -> list[float]:
    """Centred-left moving average (window grows at the start)."""
    out = []
    total = 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        out.append(total / min(index + 1, window))
    return out


def _running_median(values: list[float], window: int) -> list[float]:
    """Median of each value and its ``window - 1`` predecessors."""
    return [statistics.median(values[max(0, i - window + 1): i + 1]) for i in range(len(values))]


def _slope(values: list[float]) -> float:
    """Least-squares slope per point."""
    n = len(values)
    mean_x = (n - 1) / 2
    mean_y = sum(values) / n
    numerator = sum((i - mean_x) * (y - mean_y) for i, y in enumerate(values))
    denominator = sum((i - mean_x) ** 2 for i in range(n))
    return numerator / denominator if denominator else 0.0


def _zigzag_reversals(values: list[float], threshold: float) -> list[tuple[int, float]]:
    """Turning points of ``values`` where the curve reverses by more than ``threshold`` (the start is not one)."""
    if not values:
        return []
    pivots: list[tuple[int, float]] = []
    high, low = (0, values[0]), (0, values[0])
    trend = 0  # unknown until the first move larger than the threshold
    extreme = high
    for index, value in enumerate(values):
        if trend == 0:
            high = max(high, (index, value), key=lambda item: item[1])
            low = min(low, (index, value), key=lambda item: item[1])
            if high[1] - low[1] > threshold:
                trend, extreme = (1, high) if high[0] > low[0] else (-1, low)
        elif trend == 1:
            if value > extreme[1]:
                extreme = (index, value)
            elif extreme[1] - value > threshold:
                pivots.append(extreme)
                trend, extreme = -1, (index, value)
        else:
            if value < extreme[1]:
                extreme = (index, value)
            elif value - extreme[1] > threshold:
                pivots.append(extreme)
                trend, extreme = 1, (index, value)
    return pivots


@dataclass
class _History:
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_losses: list[float] = field(default_factory=list)
    eval_epochs: list[float | None] = field(default_factory=list)
    pending_spike: tuple[int, float, float] | None = None  # (step, value, median before)


class Coach:
    """Watches a run's metric points and returns new ``Advice`` as rules fire (each at most once).

    ``config`` (a ``RunConfig``) gives the learning rate, method and batch settings so suggestions are
    concrete; without it the coach uses the learning rate seen in the metrics and LoRA defaults.
    """

    # Thresholds, kept as class attributes so a caller (or a test) can see what "well above" means.
    early_points = 30  # "early in training" for the learning-rate-too-high rule
    divergence_factor = 1.5  # recent median above start x this = diverging
    spike_factor = 3.0  # single point above recent median x this = spike
    plateau_window = 40  # points per half-window of the plateau check
    plateau_min_drop = 0.01  # projected relative improvement over the window below this = plateau
    oscillation_window = 60  # points inspected for oscillation
    oscillation_swing = 0.2  # swing (relative to level) of the smoothed curve that counts as a reversal
    low_loss = 0.02  # training loss below this is suspicious
    too_low_points = 30  # points after which a loss that barely moved means the learning rate is too low
    too_low_drop = 0.02  # relative drop below this after ``too_low_points``
    eval_improved = 0.01  # held-out loss this much (relative) below its first value = improving
    noisy_rise = 1.2  # training loss median this many times its start = rising (while held-out falls)

    def __init__(self, config: Any = None, *, learning_rate: float | None = None, method: str | None = None):
        self.config = config
        training = getattr(config, "training", None)
        self._learning_rate = learning_rate or getattr(training, "learning_rate", None)
        self.method = method or getattr(getattr(config, "method", None), "method", None) or "lora"
        self.fired: dict[str, Advice] = {}
        self._history = _History()
        self._max_seen_lr: float | None = None
        self._total_steps = 0

    # -- public API ----------------------------------------------------------------------------
    @property
    def advice(self) -> list[Advice]:
        """Every advice fired so far, in order."""
        return list(self.fired.values())

    def update(self, point: Any) -> list[Advice]:
        """Feed one metric point (MetricPoint or dict); return the advice that fired because of it."""
        kind = _get(point, "kind", "train")
        step = int(_get(point, "step", 0) or 0)
        self._total_steps = int(_get(point, "total_steps", 0) or 0) or self._total_steps
        lr = _num(_get(point, "learning_rate"))
        if lr is not None and math.isfinite(lr) and lr > 0:
            self._max_seen_lr = max(self._max_seen_lr or 0.0, lr)
        new: list[Advice] = []
        if kind == "eval":
            value = _num(_get(point, "eval_loss"))
            if value is None:
                return new
            if not math.isfinite(value):
                self._fire(new, self._nan_advice(step, value, "eval loss"))
                return new
            history = self._history
            history.eval_steps.append(step)
            history.eval_losses.append(value)
            history.eval_epochs.append(_num(_get(point, "epoch")))
            self._check_overfitting(new)
            self._check_noisy_batches(new)
            return new
        value = _num(_get(point, "loss"))
        if value is None:
            return new
        if not math.isfinite(value):
            self._fire(new, self._nan_advice(step, value, "training loss"))
            if self._is_early(step):
                self._fire(new, self._lr_too_high_advice(step, f"the training loss became {value} at step {step}",
                                                         {"step": step, "loss": str(value)}))
            return new
        history = self._history
        history.steps.append(step)
        history.losses.append(value)
        for check in (self._check_spike, self._check_lr_too_high, self._check_divergence, self._check_low_loss,
                      self._check_lr_too_low, self._check_plateau, self._check_oscillation):
            check(new)
        return new

    def review(self, points: Iterable[Any]) -> list[Advice]:
        """Feed a whole run (e.g. ``core.runs.read_metrics``); return every advice in order."""
        for point in points:
            if _get(point, "kind", "train") in ("train", "eval"):
                self.update(point)
        return self.advice

    def diverged(self, step: int, what: str) -> list[Advice]:
        """The run was stopped as diverged (core.training: non-finite, or far above its start and rising)
        before a rule fired: fire the learning-rate advice now (once) and return what fired. ``what`` says
        what was seen, e.g. "the training loss rose to 43.5 at step 3"."""
        new: list[Advice] = []
        if any(rule in self.fired for rule in ("nan_loss", "lr_too_high", "divergence")):
            return new
        if self._is_early(step):
            self._fire(new, self._lr_too_high_advice(step, what, {"step": step}))
            return new
        new_lr = self._lower_lr(3)
        self._fire(new, Advice(
            rule="divergence",
            title="Training is diverging",
            sentence=(f"{what[:1].upper()}{what[1:]}, so training is making the model worse; resume from an "
                      f"earlier checkpoint with a lower learning rate ({fmt(new_lr)})."),
            evidence={"step": step, "learning_rate": self.learning_rate},
            suggestion={"training.learning_rate": new_lr},
            action=f"Lower the learning rate to {fmt(new_lr)}",
            step=step,
            severity="error",
        ))
        return new

    def finish(self) -> list[Advice]:
        """Call once when the run has finished: the "all is well" note when no warning fired and the held-out
        loss improved (empty otherwise)."""
        new: list[Advice] = []
        if any(advice.severity != "info" for advice in self.fired.values()):
            return new
        history = self._history
        improved = self._eval_improvement()
        if improved is None:
            return new
        first, last = history.eval_losses[0], history.eval_losses[-1]
        first_step, last_step = history.eval_steps[0], history.eval_steps[-1]
        self._fire(new, Advice(
            rule="all_is_well",
            title="All is well",
            sentence=(f"The held-out loss fell from {fmt(first)} at step {first_step} to {fmt(last)} at step "
                      f"{last_step} ({improved:+.0%}) and nothing in the curves calls for a change: the model "
                      f"learned from the data."),
            evidence={"first_eval_step": first_step, "first_eval_loss": first, "last_eval_step": last_step,
                      "last_eval_loss": last, "relative_change": improved},
            suggestion={},
            action="Nothing to change",
            step=last_step,
            severity="info",
        ))
        return new

    # -- helpers -------------------------------------------------------------------------------
    @property
    def learning_rate(self) -> float:
        return self._learning_rate or self._max_seen_lr or TYPICAL_LEARNING_RATE.get(self.method, 2e-4)

    @property
    def typical_learning_rate(self) -> float:
        return TYPICAL_LEARNING_RATE.get(self.method, 2e-4)

    def _setting(self, section: str, name: str, default: Any) -> Any:
        return getattr(getattr(self.config, section, None), name, default)

    def _is_early(self, step: int) -> bool:
        # Counted in logged points, not steps, so it means the same whatever the logging interval.
        return len(self._history.losses) <= self.early_points

    def _fire(self, new: list[Advice], advice: Advice | None) -> None:
        if advice is not None and advice.rule not in self.fired:
            self.fired[advice.rule] = advice
            new.append(advice)

    def _lower_lr(self, factor: float) -> float:
        """A lower learning rate: the method's usual value when far above it, else current / factor."""
        current = self.learning_rate
        if current > 3 * self.typical_learning_rate:
            return self.typical_learning_rate
        return nice_number(current / factor)

    def _raise_lr(self) -> float:
        current = self.learning_rate
        if current < self.typical_learning_rate / 3:
            return self.typical_learning_rate
        return nice_number(current * 3)

    # -- rules ---------------------------------------------------------------------------------
    def _nan_advice(self, step: int, value: float, what: str) -> Advice:
        precision = self._setting("training", "precision", "auto")
        if step == 0 and not self._history.losses:
            return self._base_model_nan_advice(value, what, precision)
        new_lr = self._lower_lr(10)
        suggestion: dict[str, Any] = {"training.learning_rate": new_lr}
        extra = ""
        if precision == "fp16":
            # fp16 overflows at 65504: the classic source of inf/NaN losses.
            suggestion["training.precision"] = "fp32"
            extra = " fp16 overflows easily; train in fp32 or bf16."
        if self._setting("training", "max_grad_norm", 1.0) == 0:
            suggestion["training.max_grad_norm"] = 1.0
            extra += " Gradient clipping is off; turn it back on (1.0)."
        return Advice(
            rule="nan_loss",
            title="Loss is not a number",
            sentence=(f"The {what} became {value} at step {step}, so the model's weights are now broken and "
                      f"training cannot recover; restart with a lower learning rate ({fmt(new_lr)}).{extra}"),
            evidence={"step": step, "value": str(value), "what": what, "learning_rate": self.learning_rate},
            suggestion=suggestion,
            action=f"Restart with learning rate {fmt(new_lr)}",
            step=step,
            severity="error",
        )

    def _base_model_nan_advice(self, value: float, what: str, precision: str) -> Advice:
        """NaN before any training step: the learning rate played no part; the weights or the precision did."""
        suggestion: dict[str, Any] = {} if precision == "fp32" else {"training.precision": "fp32"}
        return Advice(
            rule="nan_loss",
            title="The base model gives no usable loss",
            sentence=(f"The untouched base model's {what} is already {value} at step 0, before any training, so "
                      f"the learning rate is not the cause: the model's numbers overflow in this precision "
                      f"({precision}) or its weights are broken; train in fp32 (or bf16), and check that the model "
                      f"loads and answers on the Model page."),
            evidence={"step": 0, "value": str(value), "what": what, "precision": precision},
            suggestion=suggestion,
            action="Train in fp32" if suggestion else "Check the model",
            step=0,
            severity="error",
        )

    def _eval_improvement(self) -> float | None:
        """Relative change of the held-out loss from its first to its last value when it improved by at least
        ``eval_improved`` (negative, e.g. -0.12), else None."""
        evals = self._history.eval_losses
        if len(evals) < 2 or evals[0] <= 0:
            return None
        change = (evals[-1] - evals[0]) / evals[0]
        return change if change <= -self.eval_improved else None

    def _lr_too_high_advice(self, step: int, what: str, evidence: dict) -> Advice:
        new_lr = self._lower_lr(10)
        return Advice(
            rule="lr_too_high",
            title="Learning rate likely too high",
            sentence=(f"Early in training {what}, which is what a learning rate that is too high "
                      f"({fmt(self.learning_rate)}) looks like; try {fmt(new_lr)}."),
            evidence={**evidence, "learning_rate": self.learning_rate},
            suggestion={"training.learning_rate": new_lr},
            action=f"Lower the learning rate to {fmt(new_lr)}",
            step=step,
            severity="error",
        )

    def _check_lr_too_high(self, new: list[Advice]) -> None:
        history = self._history
        losses, steps = history.losses, history.steps
        if len(losses) < 5 or not self._is_early(steps[-1]):
            return
        if self._eval_improvement() is not None:
            return  # the held-out loss falls: a rising or jumpy training loss is batch noise (noisy_batches)
        start = statistics.median(losses[:3])
        recent = statistics.median(losses[-3:])
        if recent > 1.5 * start:
            self._fire(new, self._lr_too_high_advice(
                steps[-1],
                f"the loss rose from {fmt(start)} to {fmt(recent)} by step {steps[-1]}",
                {"start_loss": start, "recent_loss": recent, "step": steps[-1]},
            ))
            return
        if len(losses) >= 8 and statistics.median(losses[-8:]) > 0.25 * start:
            # "Wild": typical step-to-step jumps are a large share of the loss itself. Not once the loss
            # has fallen far below its start: near zero (memorising) relative jumps are large but harmless.
            jumps = [abs(b - a) for a, b in zip(losses, losses[1:], strict=False)]
            wildness = statistics.median(jumps) / max(statistics.median(losses), 1e-8)
            if wildness > 0.35:
                self._fire(new, self._lr_too_high_advice(
                    steps[-1],
                    f"the loss jumps by {wildness:.0%} of its value from one step to the next "
                    f"(steps {steps[0]}-{steps[-1]})",
                    {"median_jump_fraction": wildness, "step": steps[-1]},
                ))

    def _check_divergence(self, new: list[Advice]) -> None:
        history = self._history
        losses, steps = history.losses, history.steps
        if len(losses) < 8 or "lr_too_high" in self.fired:
            return  # early blow-ups are reported (with the same remedy) as "learning rate too high"
        if self._eval_improvement() is not None:
            return  # the model gets better on held-out data: not diverging
        start = statistics.median(losses[:3])
        best = min(_smooth(losses))
        recent = statistics.median(losses[-5:])
        if recent > self.divergence_factor * start and recent > 2 * best:
            new_lr = self._lower_lr(3)
            self._fire(new, Advice(
                rule="divergence",
                title="Training is diverging",
                sentence=(f"The loss climbed from {fmt(start)} at the start to {fmt(recent)} by step {steps[-1]} "
                          f"(its best was {fmt(best)}), so training is making the model worse; resume from an "
                          f"earlier checkpoint with a lower learning rate ({fmt(new_lr)})."),
                evidence={"start_loss": start, "recent_loss": recent, "best_loss": best, "step": steps[-1],
                          "learning_rate": self.learning_rate},
                suggestion={"training.learning_rate": new_lr},
                action=f"Lower the learning rate to {fmt(new_lr)}",
                step=steps[-1],
                severity="error",
            ))

    def _check_spike(self, new: list[Advice]) -> None:
        history = self._history
        losses, steps = history.losses, history.steps
        if history.pending_spike is not None:
            spike_step, spike_value, median_before = history.pending_spike
            history.pending_spike = None
            if losses[-1] < 2 * median_before:  # it came back down: a single jump, not a divergence
                clipping = self._setting("training", "max_grad_norm", 1.0)
                if clipping == 0:
                    suggestion: dict[str, Any] = {"training.max_grad_norm": 1.0}
                    action = "Turn gradient clipping on (1.0)"
                    remedy = "turn gradient clipping on (1.0) so one bad batch cannot derail training"
                else:
                    new_lr = self._lower_lr(2)
                    suggestion = {"training.learning_rate": new_lr}
                    action = f"Lower the learning rate to {fmt(new_lr)}"
                    remedy = (f"a few are harmless, but if they repeat lower the learning rate to {fmt(new_lr)} "
                              f"and check the data for odd examples")
                self._fire(new, Advice(
                    rule="spike",
                    title="Loss spike",
                    sentence=(f"At step {spike_step} the loss jumped to {fmt(spike_value)}, "
                              f"{spike_value / median_before:.1f}x the recent median of {fmt(median_before)}, and "
                              f"came back down; {remedy}."),
                    evidence={"step": spike_step, "loss": spike_value, "recent_median": median_before},
                    suggestion=suggestion,
                    action=action,
                    step=spike_step,
                    severity="info",
                ))
        if len(losses) >= 6:
            median_before = statistics.median(losses[-11:-1])
            if losses[-1] > self.spike_factor * median_before:
                history.pending_spike = (steps[-1], losses[-1], median_before)

    def _check_plateau(self, new: list[Advice]) -> None:
        history = self._history
        losses, steps = history.losses, history.steps
        window = 2 * self.plateau_window
        if len(losses) < window + 5 or "lr_too_low" in self.fired:
            return
        start = statistics.median(losses[:5])
        recent = losses[-window:]
        level = statistics.median(recent)
        if level > 0.9 * start:
            return  # it never got going: that is "learning rate too low", not a plateau
        # A running median first, so one spike cannot tilt the fitted line.
        projected_drop = -_slope(_running_median(recent, 5)) * window / max(level, 1e-8)
        if projected_drop < self.plateau_min_drop:
            first_step = steps[-window]
            self._fire(new, Advice(
                rule="plateau",
                title="The loss has stopped improving",
                sentence=(f"From step {first_step} to step {steps[-1]} the loss stayed around {fmt(level)} "
                          f"(down from {fmt(start)} at the start), so more steps at this setting are unlikely to "
                          f"help; stopping around step {first_step} saves time."),
                evidence={"from_step": first_step, "to_step": steps[-1], "level": level, "start_loss": start,
                          "projected_relative_drop": projected_drop},
                suggestion={"training.max_steps": int(first_step)},
                action=f"Stop at step {first_step} next time",
                step=steps[-1],
                severity="info",
            ))

    def _check_oscillation(self, new: list[Advice]) -> None:
        history = self._history
        losses, steps = history.losses, history.steps
        if len(losses) < 20:
            return
        window_losses = losses[-self.oscillation_window:]
        window_steps = steps[-self.oscillation_window:]
        smoothed = _smooth(window_losses, 5)
        level = statistics.median(smoothed)
        # Batch noise also makes the smoothed curve wiggle: only swings well beyond what white noise of the
        # observed size leaves after smoothing count (noise sd from step-to-step jumps; /sqrt(5) for MA5).
        jumps = [abs(b - a) for a, b in zip(window_losses, window_losses[1:], strict=False)]
        noise_sd = statistics.median(jumps) / (0.6745 * math.sqrt(2))
        threshold = max(self.oscillation_swing * level, 6 * noise_sd / math.sqrt(5))
        pivots = _zigzag_reversals(smoothed, threshold)
        if len(pivots) >= 4:  # two full up-down cycles of large amplitude
            amplitude = max(v for _, v in pivots) - min(v for _, v in pivots)
            new_lr = self._lower_lr(2)
            accumulation = int(self._setting("training", "gradient_accumulation", 1))
            self._fire(new, Advice(
                rule="oscillation",
                title="The loss swings up and down",
                sentence=(f"Between steps {window_steps[pivots[0][0]]} and {window_steps[pivots[-1][0]]} the "
                          f"smoothed loss turned {len(pivots)} times with swings of {fmt(amplitude)} around "
                          f"{fmt(level)}, so the updates overshoot; halve the learning rate ({fmt(new_lr)}) or "
                          f"average over more examples per update."),
                evidence={"reversals": len(pivots), "amplitude": amplitude, "level": level,
                          "turning_steps": [window_steps[i] for i, _ in pivots]},
                suggestion={"training.learning_rate": new_lr, "training.gradient_accumulation": accumulation * 2},
                action=f"Lower the learning rate to {fmt(new_lr)} and double accumulation",
                step=steps[-1],
            ))

    def _check_overfitting(self, new: list[Advice]) -> None:
        history = self._history
        evals = history.eval_losses
        if len(evals) < 3:
            return
        best_index = min(range(len(evals)), key=evals.__getitem__)
        # At least two evaluations after the best, each higher than the one before, clearly above the best.
        if best_index > len(evals) - 3:
            return
        tail = evals[best_index:]
        rising = all(b > a for a, b in zip(tail[-3:], tail[-2:], strict=False))
        if not rising or evals[-1] < 1.02 * evals[best_index]:
            return
        best_step, last_step = history.eval_steps[best_index], history.eval_steps[-1]
        train_then = self._train_loss_near(best_step)
        train_now = self._train_loss_near(last_step)
        if train_then is None or train_now is None or train_now >= train_then:
            return  # both rising is divergence, not overfitting
        best_epoch = history.eval_epochs[best_index]
        suggestion: dict[str, Any] = {"training.early_stopping_patience": 2, "training.load_best_model_at_end": True}
        if best_epoch:
            suggestion["training.num_epochs"] = max(0.1, round(best_epoch, 1))
            stop_at = f"epoch {best_epoch:.1f} (step {best_step})"
        else:
            suggestion["training.max_steps"] = int(best_step)
            stop_at = f"step {best_step}"
        self._fire(new, Advice(
            rule="overfitting",
            title="Overfitting: memorising the training examples",
            sentence=(f"The eval loss rose from {fmt(evals[best_index])} at step {best_step} to {fmt(evals[-1])} at "
                      f"step {last_step} while the training loss kept falling ({fmt(train_then)} -> "
                      f"{fmt(train_now)}), so the model is memorising instead of generalising; keep the "
                      f"checkpoint from step {best_step} and stop around {stop_at}."),
            evidence={"best_step": best_step, "best_eval_loss": evals[best_index], "last_step": last_step,
                      "last_eval_loss": evals[-1], "train_loss_at_best": train_then, "train_loss_now": train_now},
            suggestion=suggestion,
            action=f"Stop at {stop_at} (early stopping)",
            step=last_step,
        ))

    def _check_noisy_batches(self, new: list[Advice]) -> None:
        """Training loss rising while the held-out loss falls: on small batches each step's loss depends on
        which few examples it drew; the held-out loss (the same examples every time) is the number to trust."""
        history = self._history
        losses, steps = history.losses, history.steps
        improvement = self._eval_improvement()
        if improvement is None or len(losses) < 4:
            return
        start = statistics.median(losses[:3])
        recent = statistics.median(losses[-3:])
        if recent <= self.noisy_rise * start:
            return
        batch = int(self._setting("training", "batch_size", 0) or 0)
        accumulation = int(self._setting("training", "gradient_accumulation", 1) or 1)
        per_step = batch * accumulation
        examples = f"only {per_step} examples" if per_step else "only a few examples"
        evals = history.eval_losses
        self._fire(new, Advice(
            rule="noisy_batches",
            title="Trust the held-out loss: it improved",
            sentence=(f"The training loss rose from {fmt(start)} to {fmt(recent)} (steps {steps[0]}-{steps[-1]}) "
                      f"while the held-out loss fell from {fmt(evals[0])} at step {history.eval_steps[0]} to "
                      f"{fmt(evals[-1])} at step {history.eval_steps[-1]} ({improvement:.0%}); each training step "
                      f"sees {examples}, so its loss is noisy and depends on which examples it drew, while the "
                      f"held-out loss is measured on the same examples every time: it is the number to trust, "
                      f"and it says training works."),
            evidence={"start_loss": start, "recent_loss": recent, "first_eval_loss": evals[0],
                      "last_eval_loss": evals[-1], "examples_per_step": per_step or None},
            suggestion={},
            action="Nothing to change",
            step=max(steps[-1], history.eval_steps[-1]),
            severity="info",
        ))

    def _train_loss_near(self, step: int) -> float | None:
        """Median of the training losses logged up to ``step`` (the last five), None without any."""
        history = self._history
        values = [loss for s, loss in zip(history.steps, history.losses, strict=False) if s <= step][-5:]
        return statistics.median(values) if values else None

    def _check_low_loss(self, new: list[Advice]) -> None:
        history = self._history
        losses, steps = history.losses, history.steps
        if len(losses) < 3:
            return
        recent = statistics.median(losses[-3:])
        if recent >= self.low_loss:
            return
        masked = max(losses[-3:]) <= 1e-6 or steps[-1] <= 5
        if masked:
            sentence = (f"The training loss is {fmt(recent)} at step {steps[-1]}, essentially zero from the start, "
                        f"which usually means almost no token counts in the loss (everything masked); check the "
                        f"template and 'Train on answers only' on the data page.")
            suggestion: dict[str, Any] = {"data.train_on_answers_only": False}
            action = "Train on the whole text"
            title = "Loss is zero: nothing to learn from?"
        else:
            epochs = float(self._setting("training", "num_epochs", 1.0))
            fewer = max(0.5, round(epochs / 2, 1))
            sentence = (f"The training loss fell to {fmt(recent)} by step {steps[-1]}, which means the model can "
                        f"recite the training examples word for word; watch the eval loss and train for fewer "
                        f"epochs ({fmt(fewer)}) unless memorising is the goal.")
            suggestion = {"training.num_epochs": fewer}
            action = f"Train for {fmt(fewer)} epochs"
            title = "Suspiciously low loss: memorising"
        self._fire(new, Advice(
            rule="low_loss", title=title, sentence=sentence,
            evidence={"step": steps[-1], "recent_loss": recent, "masked": masked},
            suggestion=suggestion, action=action, step=steps[-1],
        ))

    def _check_lr_too_low(self, new: list[Advice]) -> None:
        history = self._history
        losses, steps = history.losses, history.steps
        if len(losses) < self.too_low_points or len(losses) > 3 * self.too_low_points:
            return
        start = statistics.median(losses[:10])
        recent = statistics.median(losses[-10:])
        drop = (start - recent) / max(start, 1e-8)
        if drop < self.too_low_drop and recent > self.low_loss:
            new_lr = self._raise_lr()
            self._fire(new, Advice(
                rule="lr_too_low",
                title="Learning rate likely too low",
                sentence=(f"After {steps[-1]} steps the loss has barely moved ({fmt(start)} -> {fmt(recent)}, "
                          f"{drop:+.1%}), so the updates are too small to learn anything; raise the learning rate "
                          f"from {fmt(self.learning_rate)} to {fmt(new_lr)}."),
                evidence={"step": steps[-1], "start_loss": start, "recent_loss": recent, "relative_drop": drop,
                          "learning_rate": self.learning_rate},
                suggestion={"training.learning_rate": new_lr},
                action=f"Raise the learning rate to {fmt(new_lr)}",
                step=steps[-1],
            ))


class CoachSink:
    """A metrics sink that runs a ``Coach`` on the run's points and hands each new ``Advice`` to the
    ``targets``' optional ``on_advice`` (core.metrics.emit_advice): the JSONL sink records it as a
    ``{"kind": "coach"}`` line, the console sink prints it. ``core.training`` adds one to every run, so the
    CLI and the GUI get the same notes."""

    def __init__(self, coach: Coach, targets: Iterable[Any]):
        self.coach = coach
        self.targets = list(targets)

    def on_metric(self, point: Any) -> None:
        self._announce(self.coach.update(point))

    def on_status(self, event: Any) -> None:
        pass

    def finish(self) -> None:
        """The run finished: announce the closing note (``Coach.finish``)."""
        self._announce(self.coach.finish())

    def diverged(self, step: int, what: str) -> None:
        """The run was stopped as diverged: announce the coach's advice (``Coach.diverged``) if none fired."""
        self._announce(self.coach.diverged(step, what))

    def _announce(self, advice: list[Advice]) -> None:
        from core.metrics import emit_advice

        for item in advice:
            emit_advice(self.targets, item)


def apply_suggestion(config: Any, advice: Advice) -> Any:
    """A copy of ``config`` (a RunConfig) with the advice's suggestion applied; the original is untouched."""
    patched = config.copy()
    for dotted, value in advice.suggestion.items():
        patched.set_value(dotted, value)
    return patched
