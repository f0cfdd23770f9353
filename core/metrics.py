"""Training metrics as plain frozen dataclasses, and the sinks that receive them.

One ``TrainerCallback`` (in ``core.training``) turns Trainer events into ``MetricPoint`` and
``StatusEvent`` objects and hands them to every sink. Sinks are tiny and Qt-free: a JSONL file for the
run folder, a one-line console progress bar for the CLI, and plain callables (the GUI wraps those in
Qt signals). This module never imports torch.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

from core.jsonl import write_record

STATES = ("running", "stopped", "finished", "failed", "interrupted", "diverged")
# What a running run is doing, in order (StatusEvent.phase): each has its own label in the GUI and CLI.
PHASES = ("loading", "tokenizing", "measuring_base", "training", "evaluating", "saving")


@dataclass(frozen=True)
class MetricPoint:
    """One observation of a run: a training log (``kind="train"``) or an evaluation (``kind="eval"``)."""

    kind: str  # "train" | "eval"
    step: int
    total_steps: int = 0
    epoch: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    tokens_trained: int = 0  # non-padding input tokens seen by the optimizer so far
    tokens_per_second: float | None = None
    seconds_per_step: float | None = None
    eta_seconds: float | None = None
    elapsed_seconds: float = 0.0
    eval_seconds: float | None = None  # an evaluation's own wall time (eval points)
    peak_memory_bytes: int | None = None
    memory: dict = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict:
        """A JSON-ready dict (NaN/inf become strings so the file stays valid JSON)."""
        return {key: _json_safe(value) for key, value in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class StatusEvent:
    """A change of the run's state (running, stopped, finished, failed) or a progress message."""

    state: str
    message: str
    step: int | None = None
    fraction: float | None = None  # 0..1 when known (e.g. tokenizing progress, eval examples k/n)
    time: float = field(default_factory=time.time)
    phase: str | None = None  # one of PHASES: what the run is doing now (None: a plain message)

    def to_dict(self) -> dict:
        return {"kind": "status", **{key: _json_safe(value) for key, value in dataclasses.asdict(self).items()}}


@dataclass(frozen=True)
class ProbeResult:
    """One answer to a pinned probe prompt, generated greedily between training steps (core.probes)."""

    step: int
    prompt_index: int
    prompt: str
    answer: str
    seconds: float  # generating this answer
    n_tokens: int = 0  # new tokens in the answer
    total_seconds: float = 0.0  # every probe answer of this training session so far, this one included
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict:
        return {"kind": "probe", **{key: _json_safe(value) for key, value in dataclasses.asdict(self).items()}}


@dataclass(frozen=True)
class PreferencePoint:
    """One DPO log (core.preference writes it to metrics.jsonl as ``{"kind": "preference", ...}``): the
    implicit rewards of the chosen and the rejected answers (beta x how much more likely the tuned model makes
    each than the reference model), their difference (the margin) and the share of pairs whose chosen answer
    gets the higher reward (the accuracy), on the training batches (``split="train"``) or held-out pairs."""

    split: str  # "train" | "eval"
    step: int
    loss: float | None = None
    reward_margin: float | None = None
    reward_accuracy: float | None = None
    chosen_reward: float | None = None
    rejected_reward: float | None = None
    chosen_logp: float | None = None
    rejected_logp: float | None = None
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict:
        return {"kind": "preference", **{key: _json_safe(value) for key, value in dataclasses.asdict(self).items()}}

    @classmethod
    def from_record(cls, record: dict) -> PreferencePoint | None:
        """The point of a ``{"kind": "preference"}`` record (a metrics.jsonl line); None for other records."""
        if record.get("kind") != "preference" or record.get("step") is None:
            return None

        def number(value: Any) -> float | None:
            if value is None or isinstance(value, bool):
                return None
            try:
                return float(value)  # "nan" / "inf" strings (JsonlSink's JSON-safe form) come back as floats
            except (TypeError, ValueError):
                return None

        names = [f.name for f in dataclasses.fields(cls) if f.name not in ("split", "step", "time")]
        values = {name: number(record.get(name)) for name in names}
        when = number(record.get("time"))
        return cls(split=str(record.get("split") or "train"), step=int(record["step"]), **values,
                   **({"time": when} if when is not None else {}))


@runtime_checkable
class MetricsSink(Protocol):
    """Anything that receives metric points and status events. A sink may also define
    ``on_probe(result: ProbeResult)``; senders call it only when it is there (``emit_probe``), so older
    sinks keep working."""

    def on_metric(self, point: MetricPoint) -> None: ...

    def on_status(self, event: StatusEvent) -> None: ...


def emit_probe(sinks, result: ProbeResult) -> None:
    """Hand ``result`` to every sink that has an ``on_probe`` method (it is optional)."""
    for sink in sinks:
        on_probe = getattr(sink, "on_probe", None)
        if callable(on_probe):
            on_probe(result)


def emit_advice(sinks, advice: Any) -> None:
    """Hand a coach ``Advice`` (core.coach) to every sink that has an ``on_advice`` method (it is optional)."""
    for sink in sinks:
        on_advice = getattr(sink, "on_advice", None)
        if callable(on_advice):
            on_advice(advice)


def advice_record(advice: Any) -> dict:
    """A coach ``Advice`` as a metrics.jsonl line: ``{"kind": "coach", "rule", "title", "sentence", ...}``."""
    fields = dataclasses.asdict(advice) if dataclasses.is_dataclass(advice) else dict(advice)
    return {"kind": "coach", **{key: _json_safe(value) for key, value in fields.items()}, "time": time.time()}


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf": json.dumps would write invalid JSON tokens
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return value


class JsonlSink:
    """Appends one JSON object per event to ``path`` and flushes each line (a crash loses nothing)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # Repair a torn last line left by a killed process, so appended lines stay parseable.
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as handle:
                handle.seek(-1, 2)
                torn = handle.read(1) != b"\n"
            if torn:
                with open(self.path, "ab") as handle:
                    handle.write(b"\n")

    def _write(self, record: dict) -> None:
        with self._lock, open(self.path, "a", encoding="utf-8") as handle:
            write_record(handle, record)

    def on_metric(self, point: MetricPoint) -> None:
        self._write(point.to_dict())

    def on_status(self, event: StatusEvent) -> None:
        self._write(event.to_dict())

    def on_probe(self, result: ProbeResult) -> None:
        self._write(result.to_dict())

    def on_advice(self, advice: Any) -> None:
        self._write(advice_record(advice))

    def on_record(self, record: dict) -> None:
        """A free-form line, e.g. DPO's ``{"kind": "preference", ...}`` (core.preference)."""
        self._write({key: _json_safe(value) for key, value in record.items()})


def format_duration(seconds: float | None) -> str:
    """``75`` -> ``1:15``; ``3725`` -> ``1:02:05``; None -> ``?``."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_progress_line(point: MetricPoint, last_eval_loss: float | None = None, width: int = 20) -> str:
    """The console progress line: bar, step/total, loss, eval loss, tokens/s, ETA."""
    total = max(point.total_steps, 0)
    fraction = min(point.step / total, 1.0) if total else 0.0
    filled = int(round(fraction * width))
    bar = "#" * filled + "-" * (width - filled)
    parts = [f"[{bar}] {point.step}/{total or '?'}"]
    if point.loss is not None:
        parts.append(f"loss {point.loss:.4f}")
    eval_loss = point.eval_loss if point.eval_loss is not None else last_eval_loss
    if eval_loss is not None:
        parts.append(f"eval {eval_loss:.4f}")
    if point.tokens_per_second:
        parts.append(f"{point.tokens_per_second:,.0f} tok/s")
    parts.append(f"ETA {format_duration(point.eta_seconds)}")
    return "  ".join(parts)


class ConsoleSink:
    """A one-line progress bar for the CLI. On a terminal the line is rewritten in place; otherwise
    (a log file, a pipe) a plain line is written at most every ``min_interval`` seconds and at evals."""

    def __init__(self, stream: IO[str] | None = None, min_interval: float = 5.0):
        self.stream = stream if stream is not None else sys.stderr
        self.min_interval = min_interval
        self._last_eval_loss: float | None = None
        self._last_write: float | None = None
        self._line_open = False
        isatty = getattr(self.stream, "isatty", None)
        self._tty = bool(isatty and isatty())

    def on_metric(self, point: MetricPoint) -> None:
        if point.eval_loss is not None:
            self._last_eval_loss = point.eval_loss
        line = format_progress_line(point, self._last_eval_loss)
        if self._tty:
            self.stream.write("\r\x1b[K" + line)
            self._line_open = True
        else:
            now = time.monotonic()
            if (point.kind != "eval" and self._last_write is not None
                    and now - self._last_write < self.min_interval):
                return
            self._last_write = now
            self.stream.write(line + "\n")
        self.stream.flush()

    def on_status(self, event: StatusEvent) -> None:
        if self._line_open:
            self.stream.write("\n")
            self._line_open = False
        self.stream.write(f"{event.state}: {event.message}\n")
        self.stream.flush()

    def on_probe(self, result: ProbeResult) -> None:
        if self._line_open:
            self.stream.write("\n")
            self._line_open = False
        self.stream.write(f"probe {result.prompt_index + 1} @ step {result.step}: "
                          f"{_one_line(result.prompt, 40)} -> {_one_line(result.answer, 80)}\n")
        self.stream.flush()

    def on_advice(self, advice: Any) -> None:
        if self._line_open:
            self.stream.write("\n")
            self._line_open = False
        self.stream.write(f"coach @ step {advice.step}: {advice.title}. {advice.sentence}\n")
        self.stream.flush()

    def on_record(self, record: dict) -> None:
        if record.get("kind") != "preference":
            return
        if self._line_open:
            self.stream.write("\n")
            self._line_open = False
        accuracy, margin = record.get("reward_accuracy"), record.get("reward_margin")
        self.stream.write(f"dpo {record.get('split', 'train')} @ step {record.get('step')}: "
                          + (f"reward accuracy {accuracy:.2f}, " if isinstance(accuracy, float) else "")
                          + (f"reward margin {margin:+.4f}" if isinstance(margin, float) else "") + "\n")
        self.stream.flush()


def _one_line(text: str, limit: int) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis (repr-quoted so blanks show)."""
    flat = " ".join(text.split())
    if len(flat) > limit:
        flat = flat[: limit - 1] + "\u2026"
    return repr(flat)


class CallbackSink:
    """Forwards events to plain Python callables (the GUI connects these to Qt signals)."""

    def __init__(self, on_metric: Callable[[MetricPoint], None] | None = None,
                 on_status: Callable[[StatusEvent], None] | None = None,
                 on_probe: Callable[[ProbeResult], None] | None = None,
                 on_advice: Callable[[Any], None] | None = None,
                 on_preference: Callable[[PreferencePoint], None] | None = None):
        self._on_metric = on_metric
        self._on_status = on_status
        self._on_probe = on_probe
        self._on_advice = on_advice
        self._on_preference = on_preference

    def on_metric(self, point: MetricPoint) -> None:
        if self._on_metric is not None:
            self._on_metric(point)

    def on_status(self, event: StatusEvent) -> None:
        if self._on_status is not None:
            self._on_status(event)

    def on_probe(self, result: ProbeResult) -> None:
        if self._on_probe is not None:
            self._on_probe(result)

    def on_advice(self, advice: Any) -> None:
        if self._on_advice is not None:
            self._on_advice(advice)

    def on_record(self, record: dict) -> None:
        """A free-form record (core.preference's DPO logs): preference records reach ``on_preference`` as a
        frozen PreferencePoint, so nothing mutable crosses to the receiving thread."""
        if self._on_preference is None:
            return
        point = PreferencePoint.from_record(record)
        if point is not None:
            self._on_preference(point)
