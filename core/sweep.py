"""Variants side by side: one or two settings varied over a few values, each variant a real run.

``plan_sweep`` turns a base configuration and ``--vary field=v1,v2,...`` lists into variants (every
combination, at most ``MAX_VARIANTS``); ``create_sweep`` writes ``WORKSPACE/sweeps/<id>/sweep.json`` and one
ordinary run folder per variant in the workspace, in state ``queued`` (core.queue), so every page lists
them at once. ``run_sweep`` trains them one after another (each a normal ``core.training.train``; a
stopped variant is resumed from its checkpoint the next time), then ``leaderboard`` ranks them by best
held-out loss and collects time, memory, probe answers and coach notes for each; ``winner_config`` is the
winning settings with the base configuration's full length (or more steps) for a proper run.

Runs know their sweep through ``status.json`` (``sweep_id``, ``sweep_variant``); config.yaml stays a plain
run configuration that reproduces the variant on its own.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import runs
from core.cancel import StopToken
from core.config import ConfigError, RunConfig, atomic_write_text, field_meta
from core.errors import StudioError

logger = logging.getLogger(__name__)

SWEEPS_DIR = "sweeps"
SWEEP_FILE = "sweep.json"
MAX_VARIANTS = 12
MAX_VARIED = 2

_SHORT_NAMES = {
    "training.learning_rate": "lr",
    "method.lora_r": "r",
    "method.lora_alpha": "alpha",
    "method.lora_dropout": "dropout",
    "training.batch_size": "batch",
    "training.gradient_accumulation": "accum",
    "training.warmup_ratio": "warmup",
    "training.weight_decay": "wd",
    "training.max_steps": "steps",
    "training.num_epochs": "epochs",
    "training.max_length": "len",
    "training.scheduler": "sched",
    "method.method": "method",
}


@dataclass(frozen=True)
class Vary:
    """One varied setting: a dotted config field and its values (already of the field's type)."""

    field: str
    values: tuple


def format_value(value: Any) -> str:
    """A setting value as people write it: 3e-4 rather than 0.0003, 8 rather than 8.0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and value != 0 and (abs(value) <= 1e-2 or abs(value) >= 1e5):
        mantissa, exponent = f"{value:.1e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".")
        return f"{mantissa}e{int(exponent)}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def field_label(dotted: str) -> str:
    """The form's label of a dotted field ("Learning rate"), or the field name."""
    section, _, name = dotted.partition(".")
    try:
        return field_meta(section, name).get("label") or name.replace("_", " ")
    except KeyError:
        return name.replace("_", " ")


def short_name(dotted: str) -> str:
    return _SHORT_NAMES.get(dotted, dotted.partition(".")[2])


def parse_vary(text: str) -> Vary:
    """``training.learning_rate=1e-4,3e-4,1e-3`` -> Vary; each value checked against the field's type."""
    dotted, sep, values_text = text.partition("=")
    dotted = dotted.strip()
    if not sep or not values_text.strip():
        raise ConfigError("--vary", f"expected SECTION.FIELD=V1,V2,... (got {text!r})")
    probe = RunConfig()
    values = []
    for part in values_text.split(","):
        part = part.strip()
        if not part:
            continue
        probe.set_value(dotted, part)  # raises ConfigError naming the field for a wrong type or name
        section, _, name = dotted.partition(".")
        value = getattr(getattr(probe, section), name)
        if value not in values:
            values.append(value)
    if len(values) < 2:
        raise ConfigError(dotted, "a variation needs at least two different values")
    return Vary(dotted, tuple(values))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "", text)


def variant_label(values: dict) -> str:
    """"lr 3e-4, r 8": short names with values, the legend label of a variant."""
    return ", ".join(f"{short_name(dotted)} {format_value(value)}" for dotted, value in values.items())


def plan_variants(varies: Sequence[Vary]) -> list[dict]:
    """Every combination of the varied values, as {dotted field: value} dicts, in the order given."""
    if not varies:
        raise ConfigError("--vary", "name at least one setting to vary, e.g. training.learning_rate=1e-4,3e-4")
    if len(varies) > MAX_VARIED:
        raise ConfigError("--vary", f"vary at most {MAX_VARIED} settings at once (got {len(varies)})")
    fields = [vary.field for vary in varies]
    if len(set(fields)) != len(fields):
        raise ConfigError("--vary", "the same setting is varied twice")
    combos = [dict(zip(fields, combo, strict=True)) for combo in itertools.product(*(v.values for v in varies))]
    if len(combos) > MAX_VARIANTS:
        raise ConfigError("--vary", f"{len(combos)} variants are too many to run one after another; at most "
                                    f"{MAX_VARIANTS} (e.g. 3 x 3)")
    return combos


def variant_config(base: RunConfig, values: dict, max_steps: int | None = None) -> RunConfig:
    """The base configuration with the variant's values (and the sweep's step count) applied."""
    cfg = base.copy()
    for dotted, value in values.items():
        cfg.set_value(dotted, value)
    if max_steps is not None:
        cfg.training.max_steps = int(max_steps)
        _fit_schedule(cfg)
    cfg.validate()
    return cfg


def _fit_schedule(cfg: RunConfig) -> None:
    """Short variants still evaluate: at least twice (and save at the evaluations, for the best checkpoint)."""
    t = cfg.training
    if t.max_steps > 0 and cfg.data.test_fraction > 0 and t.eval_steps > max(1, t.max_steps // 2):
        t.eval_steps = max(1, t.max_steps // 2)
    if t.load_best_model_at_end and t.save_steps % t.eval_steps != 0:
        t.save_steps = t.eval_steps


# --------------------------------------------------------------------------------------------- the record
def sweeps_folder(workspace: str | os.PathLike) -> Path:
    return Path(workspace) / SWEEPS_DIR


def new_sweep_id() -> str:
    return time.strftime("sweep-%Y%m%d-%H%M%S")


def sweep_path(workspace: str | os.PathLike, sweep_id: str) -> Path:
    return sweeps_folder(workspace) / sweep_id / SWEEP_FILE


def read_sweep(path: str | os.PathLike) -> dict:
    """A sweep record (``sweep.json``, or its folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / SWEEP_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StudioError(f"{path}: no sweep record here") from None
    except ValueError as exc:
        raise StudioError(f"{path}: the sweep record is damaged ({exc})") from None
    data["path"] = str(path)
    return data


def write_sweep(sweep: dict) -> Path:
    path = Path(sweep["path"])
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {key: value for key, value in sweep.items() if key != "path"}
    record["updated"] = time.time()
    atomic_write_text(path, json.dumps(record, indent=1, default=str) + "\n")
    return path


def list_sweeps(workspace: str | os.PathLike) -> list[dict]:
    """Every sweep record of the workspace, newest first (damaged ones are skipped)."""
    folder = sweeps_folder(workspace)
    found = []
    if folder.is_dir():
        for child in folder.iterdir():
            if (child / SWEEP_FILE).is_file():
                try:
                    found.append(read_sweep(child))
                except StudioError:
                    logger.warning("skipping the damaged sweep record in %s", child)
    return sorted(found, key=lambda s: s.get("created", 0), reverse=True)


def create_sweep(base: RunConfig, varies: Sequence[Vary], workspace: str | os.PathLike, *,
                 max_steps: int | None = None, kind: str = "grid", probes: Sequence[str] | None = None,
                 probe_every: int | None = None) -> dict:
    """Plan the variants, write sweep.json and one queued run folder per variant; returns the record.
    ``probes``: prompts every variant answers while it trains (the leaderboard shows the answers side by
    side)."""
    from core.queue import enqueue

    base = base.copy()
    base.validate()
    workspace = Path(workspace)
    combos = plan_variants(varies)
    configs = [variant_config(base, values, max_steps) for values in combos]  # all valid before anything is written
    sweep_id = new_sweep_id()
    while sweep_path(workspace, sweep_id).exists():
        sweep_id = f"{sweep_id}-{int(time.time() * 1000) % 1000}"
    sweep = {
        "id": sweep_id,
        "kind": kind,
        "created": time.time(),
        "state": "queued",
        "base": base.to_dict(),
        "varies": [{"field": v.field, "label": field_label(v.field), "values": list(v.values)} for v in varies],
        "max_steps": max_steps,
        "variants": [],
        "leaderboard": [],
        "path": str(sweep_path(workspace, sweep_id)),
    }
    for values, cfg in zip(combos, configs, strict=True):
        label = variant_label(values)
        cfg.name = f"{sweep_id}-{_slug(label.replace(', ', '-').replace(' ', ''))}"
        run_dir = enqueue(cfg, workspace, probes=probes, probe_every=probe_every, sweep_id=sweep_id,
                          sweep_variant=label)
        sweep["variants"].append({"label": label, "values": values, "run_dir": str(run_dir)})
    write_sweep(sweep)
    logger.info("sweep %s: %d variants of %s", sweep_id, len(combos), ", ".join(v.field for v in varies))
    return sweep


# --------------------------------------------------------------------------------------------- running
def _variant_state(variant: dict) -> str:
    run_dir = variant.get("run_dir")
    if not run_dir or not Path(run_dir).is_dir():
        return "missing"
    return str(runs.read_status(run_dir).get("state", "unknown"))


def run_sweep(sweep: dict | str | os.PathLike, *, stop: StopToken | None = None,
              sinks_for: Callable[[dict], Sequence[Any]] | None = None,
              on_variant: Callable[[dict, str], None] | None = None) -> dict:
    """Train the sweep's variants one after another: queued ones start, stopped or interrupted ones
    resume from their checkpoint, finished and failed ones are kept. A variant that fails (e.g. a rate so
    high the loss becomes NaN) is recorded and the next one runs. A stop request stops the current
    variant at its next step (checkpoint saved) and ends the sweep; ``run_sweep`` again continues it.

    ``sinks_for(variant)`` gives extra metric sinks for a variant's run (e.g. a console);
    ``on_variant(variant, event)`` is told "started" and "ended". Returns the updated record."""
    from core.queue import run_queued

    if not isinstance(sweep, dict):
        sweep = read_sweep(sweep)
    sweep["state"] = "running"
    write_sweep(sweep)
    stopped = False
    for variant in sweep["variants"]:
        if stop is not None and stop.is_set:
            stopped = True
            break
        state = _variant_state(variant)
        if state in ("finished", "failed", "missing", "running"):
            continue
        if on_variant is not None:
            on_variant(variant, "started")
        sinks = list(sinks_for(variant)) if sinks_for is not None else []
        outcome = run_queued(Path(variant["run_dir"]), sinks=sinks, stop=stop)
        if on_variant is not None:
            on_variant(variant, "ended")
        update_leaderboard(sweep)
        if outcome == "stopped":
            stopped = True
            break
    update_leaderboard(sweep)
    states = [_variant_state(variant) for variant in sweep["variants"]]
    if stopped or any(state in ("queued", "stopped", "interrupted") for state in states):
        sweep["state"] = "stopped"
    else:
        sweep["state"] = "finished"
    write_sweep(sweep)
    return sweep


# --------------------------------------------------------------------------------------------- leaderboard
def _variant_facts(run_dir: Path) -> dict:
    """Best and last held-out loss, time, memory, probe answers and coach notes of one run."""
    records = runs.read_metrics(run_dir) if run_dir.is_dir() else []
    status = runs.read_status(run_dir) if run_dir.is_dir() else {"state": "missing"}
    evals = [(r.get("step", 0), r["eval_loss"]) for r in records
             if r.get("kind") == "eval" and isinstance(r.get("eval_loss"), (int, float))
             and math.isfinite(r["eval_loss"])]
    trained = [(step, loss) for step, loss in evals if step > 0]
    best = min(trained, key=lambda pair: pair[1]) if trained else None
    base = next((loss for step, loss in evals if step == 0), None)
    memory = []
    for record in records:
        snapshot = record.get("memory") if isinstance(record.get("memory"), dict) else {}
        value = snapshot.get("cuda_peak_bytes") or snapshot.get("rss_bytes")
        if isinstance(value, (int, float)):
            memory.append(int(value))
    coach = [{"step": r.get("step"), "title": r.get("title", ""), "sentence": r.get("sentence", ""),
              "severity": r.get("severity", "")}
             for r in records if r.get("kind") == "coach"]
    probes = runs.read_probes(run_dir) if run_dir.is_dir() else []
    last_probe_step = max((p["step"] for p in probes), default=None)
    answers = [{"prompt": p.get("prompt", ""), "answer": p.get("answer", ""), "step": p["step"]}
               for p in probes if p["step"] == last_probe_step]
    seconds = status.get("train_seconds")
    return {
        "state": status.get("state", "unknown"),
        "step": status.get("global_step") or 0,
        "total_steps": status.get("total_steps") or 0,
        "best_eval_loss": best[1] if best else None,
        "best_step": best[0] if best else None,
        "last_eval_loss": trained[-1][1] if trained else None,
        "base_eval_loss": base,
        "train_seconds": float(seconds) if isinstance(seconds, (int, float)) else None,
        "peak_memory_bytes": max(memory) if memory else None,
        "coach": coach,
        "probe_answers": answers,
        "message": status.get("message", ""),
    }


def leaderboard(sweep: dict) -> list[dict]:
    """The variants ranked by best held-out loss (lower first; runs without one last), then by time."""
    rows = []
    for variant in sweep.get("variants", []):
        facts = _variant_facts(Path(variant["run_dir"]))
        rows.append({"label": variant["label"], "values": variant["values"], "run_dir": variant["run_dir"],
                     **facts})

    def key(row: dict):
        loss = row["best_eval_loss"]
        return (loss is None, loss if loss is not None else 0.0, row["train_seconds"] or math.inf)

    rows.sort(key=key)
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank if row["best_eval_loss"] is not None else None
    return rows


def update_leaderboard(sweep: dict) -> list[dict]:
    """Recompute the leaderboard into the record and write sweep.json."""
    sweep["leaderboard"] = leaderboard(sweep)
    write_sweep(sweep)
    return sweep["leaderboard"]


def winner(sweep: dict) -> dict | None:
    """The best-ranked leaderboard row (None before any variant has a held-out loss)."""
    board = sweep.get("leaderboard") or leaderboard(sweep)
    return board[0] if board and board[0].get("best_eval_loss") is not None else None


def winner_config(sweep: dict, steps: int | None = None) -> RunConfig:
    """The winning settings for a proper run: the base configuration's own length (epochs or steps) when
    the sweep shortened it, else ``steps`` or three times the sweep's steps."""
    best = winner(sweep)
    if best is None:
        raise StudioError("no variant has a held-out loss yet: nothing to pick a winner from")
    base = RunConfig.from_dict(sweep["base"])
    cfg = variant_config(base, best["values"])
    sweep_steps = sweep.get("max_steps")
    if steps is not None:
        cfg.training.max_steps = int(steps)
    elif sweep_steps and (base.training.max_steps <= 0 or base.training.max_steps > sweep_steps):
        cfg.training.max_steps = base.training.max_steps  # the base's own length (-1: its epochs)
    else:
        cfg.training.max_steps = 3 * int(sweep_steps or base.training.max_steps)
    cfg.name = ""
    cfg.validate()
    return cfg


def describe_leaderboard(rows: Sequence[dict]) -> str:
    """The leaderboard as a console table."""
    header = ("RANK", "VARIANT", "BEST EVAL", "AT STEP", "TIME", "MEMORY", "STATE", "COACH")
    table = [header]
    for row in rows:
        best = f"{row['best_eval_loss']:.4f}" if row["best_eval_loss"] is not None else "-"
        seconds = f"{row['train_seconds']:.0f} s" if row["train_seconds"] is not None else "-"
        memory = f"{row['peak_memory_bytes'] / 2**30:.2f} GiB" if row["peak_memory_bytes"] else "-"
        coach = "; ".join(note["title"] for note in row["coach"]) or "-"
        table.append((str(row["rank"] or "-"), row["label"], best, str(row["best_step"] or "-"), seconds, memory,
                      row["state"], coach))
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
                     for line in table)
