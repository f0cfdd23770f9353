"""Run folders: create them, read and write their status, list checkpoints and runs. No torch here.

A run folder holds ``config.yaml``, ``metrics.jsonl``, ``checkpoints/checkpoint-N/`` (complete only
when it contains ``COMPLETE``), ``final/``, ``environment.json`` and ``status.json``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from core.config import SECTIONS, RunConfig, atomic_write_text
from core.errors import StudioError
from core.jsonl import read_objects

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
STATUS_FILE = "status.json"
ENVIRONMENT_FILE = "environment.json"
CHECKPOINTS_DIR = "checkpoints"
FINAL_DIR = "final"
COMPLETE_MARKER = "COMPLETE"
# An export keeps the run's settings under this name: a folder holding config.yaml is a run.
EXPORT_CONFIG_FILE = "training_config.yaml"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name.strip()).strip("-.")
    return slug[:80] or "run"


def create_run_dir(workspace: str | os.PathLike, name: str) -> Path:
    """Create a new, empty run folder ``workspace/<name>`` (``-2``, ``-3``... appended when taken)."""
    workspace = Path(workspace)
    workspace.mkdir(parents=True, exist_ok=True)
    base = _slug(name or time.strftime("run-%Y%m%d-%H%M%S"))
    for index in range(1, 10_000):
        candidate = workspace / (base if index == 1 else f"{base}-{index}")
        try:
            candidate.mkdir()  # atomic: two processes never get the same folder
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"{workspace}: too many runs named {base!r}")


def is_run_dir(path: str | os.PathLike) -> bool:
    """True for a run folder: config.yaml and no model or adapter at its root.

    An exported model or adapter holds its weights at its root (config.json / adapter_config.json); older
    exports also held config.yaml, so the weights decide: such a folder is a model, not a run.
    """
    path = Path(path)
    return ((path / CONFIG_FILE).is_file() and not (path / "adapter_config.json").is_file()
            and not (path / "config.json").is_file())


def _pid_alive(pid: int | None, started: float | None = None) -> bool:
    """Whether ``pid`` is a live process (and, when known, the same one: pids get reused)."""
    if not pid:
        return False
    try:
        import psutil

        try:
            process = psutil.Process(int(pid))
            if process.status() == psutil.STATUS_ZOMBIE:
                return False
            if started is not None and abs(process.create_time() - float(started)) > 2.0:
                return False
            return True
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False
    except ImportError:
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def _process_start_time(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # psutil missing or the process is gone: the pid check alone is used
        return None


class RunFileError(StudioError):
    """A run file (config.yaml, status.json) that is damaged: the message names it and the next action."""


# status.json fields and the types they must have (None allowed for all but state): a damaged file is
# reported as state "unknown" naming the field, never a crash in whatever reads it next.
_INT, _NUMBER, _TEXT = (int,), (int, float), (str,)
STATUS_FIELDS: dict[str, tuple[type, ...]] = {
    "state": _TEXT, "message": _TEXT, "pid": _INT, "pid_started": _NUMBER, "global_step": _INT,
    "total_steps": _INT, "created": _NUMBER, "started": _NUMBER, "ended": _NUMBER, "updated": _NUMBER,
    "train_seconds": _NUMBER, "best_eval_loss": _NUMBER + _TEXT, "best_step": _INT, "best_checkpoint": _TEXT,
    "last_checkpoint": _TEXT, "early_stopped_step": _INT, "final_dir": _TEXT, "eval_examples": _INT,
}
_KIND_WORDS = {_INT: "a whole number", _NUMBER: "a number", _TEXT: "text", _NUMBER + _TEXT: "a number"}


def status_problem(status: dict) -> str | None:
    """The first field of ``status`` whose type is wrong, in words (None when all are right)."""
    for key, kinds in STATUS_FIELDS.items():
        value = status.get(key)
        if value is None and key != "state":
            continue
        if isinstance(value, bool) or not isinstance(value, kinds):
            return f"field '{key}' should be {_KIND_WORDS[kinds]}, not {value!r}"
    return None


def read_status(run_dir: str | os.PathLike) -> dict:
    """The run's status.json as a dict; ``state`` becomes ``interrupted`` when it says running but its
    process is gone (killed, crashed, machine rebooted). An unreadable file, or one with a field of the
    wrong type, gives ``state: unknown`` (the wrong field is left out) with a message naming it."""
    path = Path(run_dir) / STATUS_FILE
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(status, dict):
            raise ValueError("not an object")
    except FileNotFoundError:
        return {"state": "unknown", "message": "no status.json"}
    except (ValueError, UnicodeDecodeError) as exc:
        return {"state": "unknown", "message": f"status.json unreadable: {exc}"}
    except OSError as exc:
        return {"state": "unknown", "message": f"status.json unreadable: {exc}"}
    problem = status_problem(status)
    if problem:
        clean = {key: value for key, value in status.items()
                 if key not in STATUS_FIELDS or status_problem({"state": "x", key: value}) is None}
        clean.update(state="unknown", message=f"{path}: damaged ({problem})", damaged=True)
        return clean
    if status.get("state") == "running" and not _pid_alive(status.get("pid"), status.get("pid_started")):
        status["state"] = "interrupted"
        status["message"] = ("the training process ended without saying so (killed or crashed); "
                             "resume it from its last complete checkpoint")
    return status


def write_status(run_dir: str | os.PathLike, **fields) -> dict:
    """Merge ``fields`` into status.json (atomic write) and return the new status.

    Setting ``state="running"`` records the current pid (and its start time, against pid reuse)."""
    path = Path(run_dir) / STATUS_FILE
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(status, dict):
            status = {}
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        status = {}
    if fields.get("state") == "running" and "pid" not in fields:
        fields["pid"] = os.getpid()
        fields["pid_started"] = _process_start_time(os.getpid())
    status.update(fields)
    status["updated"] = time.time()
    status.setdefault("created", status["updated"])
    atomic_write_text(path, json.dumps(status, indent=2, default=str) + "\n")
    return status


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """Every object in metrics.jsonl, skipping a torn (half-written) line."""
    # skip_invalid: a line cut short by a kill must not hide the rest of the run's curves.
    return read_objects(Path(run_dir) / METRICS_FILE, skip_invalid=True)


def read_probes(run_dir: str | os.PathLike) -> list[dict]:
    """The probe answers of a run (``{"kind": "probe", "step", "prompt_index", "prompt", "answer",
    "seconds", ...}`` lines of metrics.jsonl), ordered by step then prompt. A resumed run may probe again a
    step already probed before the interruption: the later answer is the one kept."""
    latest: dict[tuple[int, int], dict] = {}
    for record in read_metrics(run_dir):
        if (record.get("kind") == "probe" and isinstance(record.get("step"), int)
                and isinstance(record.get("prompt_index"), int)):
            latest[(record["step"], record["prompt_index"])] = record
    return [latest[key] for key in sorted(latest)]


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """``.../checkpoint-40`` -> 40; None for other names."""
    match = _CHECKPOINT_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints (those holding a COMPLETE marker) as (step, path), oldest first."""
    folder = Path(run_dir) / CHECKPOINTS_DIR
    found = []
    if not folder.is_dir():
        return found
    for child in folder.iterdir():
        step = checkpoint_step(child)
        if step is not None and child.is_dir() and (child / COMPLETE_MARKER).is_file():
            found.append((step, child))
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


CONFIG_COPY = "run_config.yaml"  # the copy of config.yaml each checkpoint keeps (core.checkpoints)


def last_config_copy(run_dir: str | os.PathLike) -> Path | None:
    """The copy of config.yaml in the newest complete checkpoint that has one (the last good copy)."""
    for _step, path in reversed(list_checkpoints(run_dir)):
        if (path / CONFIG_COPY).is_file():
            return path / CONFIG_COPY
    return None


def _config_problem(text: str, reference: dict | None) -> str | None:
    """Why a run's config.yaml text is not a complete config (None when it is). A damaged file must be an
    error, not a config silently filled with defaults (a cut file lost `training:` and trained 30 steps
    instead of 10; an empty one switched to the bundled model)."""
    import yaml

    if not text.strip():
        return "empty"
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return f"not valid YAML: {getattr(exc, 'problem', exc)}"
    if not isinstance(raw, dict):
        return "not a mapping of sections"
    missing = [section for section in SECTIONS if not isinstance(raw.get(section), dict)]
    if missing:
        return f"no `{missing[0]}:` section"
    if isinstance(reference, dict):
        for section in SECTIONS:
            expected = reference.get(section)
            if isinstance(expected, dict):
                lost = [key for key in expected if key not in raw[section]]
                if lost:
                    return f"`{section}.{lost[0]}` is missing"
    if not text.endswith("\n"):
        return "cut short (its last line is incomplete)"
    return None


def load_run_config(run_dir: str | os.PathLike) -> RunConfig:
    """The RunConfig saved in the run folder, read strictly: a damaged or incomplete config.yaml raises
    RunFileError naming the file and the last good copy (in the newest checkpoint), never defaults."""
    import yaml

    from core.config import ConfigError

    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    copy = last_config_copy(run_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunFileError(f"{path}: missing; this is not a run folder" +
                           (f" (a copy is in {copy})" if copy else "")) from None
    except (UnicodeDecodeError, OSError) as exc:
        text, problem = None, f"unreadable: {exc}"
    reference = None
    if copy is not None:
        try:
            reference = yaml.safe_load(copy.read_text(encoding="utf-8"))
        except (yaml.YAMLError, OSError, UnicodeDecodeError):
            reference = None
    if text is not None:
        problem = _config_problem(text, reference)
    if problem is None:
        try:
            return RunConfig.from_yaml(text, source=str(path))
        except ConfigError as exc:
            problem = str(exc)
    action = (f"The last good copy is {copy}: `cp {copy} {path}` restores it." if copy is not None else
              "No copy exists (no complete checkpoint yet); start the run again.")
    raise RunFileError(f"{path}: damaged ({problem}). {action}")


@dataclass
class RunSummary:
    """One line of the runs table."""

    name: str
    path: Path
    created: float | None
    method: str
    model: str
    state: str
    global_step: int
    total_steps: int
    best_eval_loss: float | None
    duration_seconds: float | None
    has_weights: bool = False  # a final model or a complete checkpoint exists: it can be chatted with/evaluated
    weights_note: str = ""     # why there are no weights yet, in words (empty when there are)


def _number(value, kind=int):
    """A status field as a number, or None when it is missing or of the wrong type (a damaged file)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return kind(value)
    except (TypeError, ValueError):
        return None


def run_weights(run_dir: str | os.PathLike) -> tuple[bool, str]:
    """(has weights, why not): a run can be chatted with, evaluated or exported once it saved a model."""
    run_dir = Path(run_dir)
    final = run_dir / "final"
    if final.is_dir() and (any(final.glob("*.safetensors")) or any(final.glob("*.bin"))):
        return True, ""
    try:
        if list_checkpoints(run_dir):
            return True, ""
    except OSError:  # an unreadable checkpoints/ folder: safe, the run is listed as having no weights yet
        logger.debug("%s: checkpoints unreadable", run_dir, exc_info=True)
    state = str(read_status(run_dir).get("state", "unknown"))
    if state in ("running", "preparing", "starting"):
        return False, "still training: no checkpoint saved yet"
    if state == "failed":
        return False, "the run failed before saving any weights"
    return False, "no trained weights were saved (no final model, no complete checkpoint)"


def summarize_run(run_dir: str | os.PathLike) -> RunSummary:
    """A RunSummary from the files of one run folder (tolerant of missing or broken files)."""
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    method = model = "?"
    name = run_dir.name
    try:
        cfg = load_run_config(run_dir)
        method, model, name = cfg.method.method, cfg.model.name_or_path, cfg.name or run_dir.name
    except Exception:  # a broken config.yaml must not hide the run from the list (it shows with defaults)
        logger.debug("%s: config.yaml unreadable", run_dir, exc_info=True)
    best = status.get("best_eval_loss")
    if best is None:
        losses = [r["eval_loss"] for r in read_metrics(run_dir)
                  if r.get("kind") == "eval" and isinstance(r.get("eval_loss"), (int, float))]
        best = min(losses) if losses else None
    started = _number(status.get("started"), float)
    ended = _number(status.get("ended"), float) or _number(status.get("updated"), float)
    duration = _number(status.get("train_seconds"), float)
    if duration is None and started and ended:
        duration = max(0.0, ended - started)
    created = _number(status.get("created"), float)
    if created is None:
        try:
            created = run_dir.stat().st_mtime
        except OSError:
            created = None
    global_step, total_steps = _number(status.get("global_step")), _number(status.get("total_steps"))
    best = _number(best, float)
    state = status.get("state", "unknown")
    if not isinstance(state, str) or (status.get("global_step") is not None and global_step is None) or \
            (status.get("total_steps") is not None and total_steps is None):
        state = "unknown"  # a damaged status.json marks this run, never breaks the whole list
    has_weights, weights_note = run_weights(run_dir)
    return RunSummary(
        name=name,
        path=run_dir,
        created=created,
        method=method,
        model=model,
        state=state,
        global_step=global_step or 0,
        total_steps=total_steps or 0,
        best_eval_loss=best,
        duration_seconds=duration,
        has_weights=has_weights,
        weights_note=weights_note,
    )


def list_runs(workspace: str | os.PathLike) -> list[RunSummary]:
    """Every run folder in ``workspace`` (holding status.json or config.yaml), newest first."""
    workspace = Path(workspace)
    if not workspace.is_dir():
        return []
    runs = [summarize_run(child) for child in workspace.iterdir()
            if child.is_dir() and ((child / STATUS_FILE).exists() or is_run_dir(child))]
    return sorted(runs, key=lambda run: run.created or 0.0, reverse=True)
