"""The run queue: runs waiting their turn are ordinary run folders in state ``queued``.

``enqueue`` writes a run folder (config.yaml, probes.json when there are probes, status.json with
``state: queued`` and a ``queue_position``) and nothing else, so the queue lives in the workspace: it is
listed by every page, survives a restart of the app, and can be reordered (``move``) or emptied
(``remove``). ``run_queue`` trains the queued runs one after another, oldest position first; whether the
queue was left running is kept in ``WORKSPACE/queue.json`` so the app can continue it after a restart.
Variants of a sweep and trials of a search are queued runs too (with ``sweep_id`` in their status).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from core import runs
from core.cancel import StopToken
from core.config import RunConfig, atomic_write_text
from core.errors import StudioError, TrainingError

logger = logging.getLogger(__name__)

QUEUED = "queued"
QUEUE_FILE = "queue.json"
CLAIM_FILE = ".queue-claim"  # inside a run folder while a process trains it from the queue
# States a queue runner picks up: waiting runs, and runs it was training when the process ended
# (they continue from their checkpoint).
_CONTINUABLE = ("stopped", "interrupted")


def enqueue(cfg: RunConfig, workspace: str | os.PathLike, *, probes: Sequence[str] | None = None,
            probe_every: int | None = None, **status_fields: Any) -> Path:
    """A new run folder in state ``queued`` at the end of the queue; returns its path. ``status_fields`` go
    into its status.json (a sweep's ``sweep_id`` and ``sweep_variant``)."""
    from core.probes import normalize_probes, save_probe_settings

    cfg = cfg.copy()
    cfg.validate()
    name = cfg.name or f"{cfg.method.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = runs.create_run_dir(workspace, name)
    cfg.name = run_dir.name
    cfg.save(run_dir / runs.CONFIG_FILE)
    prompts = normalize_probes(probes)
    if prompts:
        from core.training import DEFAULT_PROBE_TOKENS

        save_probe_settings(run_dir, prompts, probe_every, DEFAULT_PROBE_TOKENS)
    position = max((run["queue_position"] for run in queued_runs(workspace)), default=0.0) + 1.0
    now = time.time()
    runs.write_status(run_dir, state=QUEUED, message="waiting in the queue", global_step=0,
                      total_steps=max(0, cfg.training.max_steps), created=now, queued_at=now,
                      queue_position=position, queue_pending=True, **status_fields)
    logger.info("queued %s (position %g)", run_dir, position)
    return run_dir


def queued_runs(workspace: str | os.PathLike) -> list[dict]:
    """The waiting runs, in the order they will run: ``{"run_dir", "name", "queue_position", "sweep_id", ...}``."""
    workspace = Path(workspace)
    found = []
    if not workspace.is_dir():
        return found
    for child in workspace.iterdir():
        if not (child / runs.STATUS_FILE).is_file():
            continue
        status = runs.read_status(child)
        if not is_pending(status):
            continue
        position = status.get("queue_position")
        found.append({"run_dir": child, "name": child.name,
                      "queue_position": float(position) if isinstance(position, (int, float)) else 0.0,
                      "queued_at": status.get("queued_at") or 0.0, "sweep_id": status.get("sweep_id"),
                      "sweep_variant": status.get("sweep_variant"), "state": status.get("state")})
    return sorted(found, key=lambda run: (run["queue_position"], run["queued_at"], run["name"]))


def is_pending(status: dict) -> bool:
    """Whether a run (its status.json) waits in the queue: queued, or a queued run that was stopped or
    interrupted (the app closed, the machine rebooted) before it finished."""
    state = status.get("state")
    return state == QUEUED or (bool(status.get("queue_pending")) and state in _CONTINUABLE)


def move(workspace: str | os.PathLike, run_dir: str | os.PathLike, offset: int) -> None:
    """Move a queued run ``offset`` places (negative: sooner). Positions are rewritten 1, 2, 3..."""
    order = queued_runs(workspace)
    paths = [Path(run["run_dir"]) for run in order]
    run_dir = Path(run_dir)
    if run_dir not in paths:
        raise StudioError(f"{run_dir.name} is not waiting in the queue")
    index = paths.index(run_dir)
    target = max(0, min(len(paths) - 1, index + offset))
    paths.insert(target, paths.pop(index))
    for position, path in enumerate(paths, start=1):
        runs.write_status(path, queue_position=float(position))


def remove(run_dir: str | os.PathLike) -> None:
    """Take a waiting run out of the queue (its folder holds nothing but its settings: it is deleted)."""
    run_dir = Path(run_dir)
    if runs.read_status(run_dir).get("state") != QUEUED:
        raise StudioError(f"{run_dir.name} is not waiting in the queue (only waiting runs can be removed)")
    shutil.rmtree(run_dir)


def set_active(workspace: str | os.PathLike, active: bool) -> None:
    """Record whether the queue is being worked through (so a restarted app continues it)."""
    path = Path(workspace) / QUEUE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"active": bool(active), "updated": time.time()}) + "\n")


def is_active(workspace: str | os.PathLike) -> bool:
    try:
        return bool(json.loads((Path(workspace) / QUEUE_FILE).read_text(encoding="utf-8")).get("active"))
    except (FileNotFoundError, ValueError, AttributeError):
        return False


def _alive(info: dict) -> bool:
    pid = info.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        import psutil

        process = psutil.Process(pid)
        started = info.get("started")
        return not (isinstance(started, (int, float)) and abs(process.create_time() - started) > 2.0)
    except ImportError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    except Exception:  # psutil.NoSuchProcess / AccessDenied: the claim is stale
        return False


@contextlib.contextmanager
def claimed(run_dir: str | os.PathLike) -> Iterator[bool]:
    """Claim a waiting run for this process (True), or learn that a live process already trains it (False).

    Two runners may look at the same queue (the Runs page's queue and a sweep, or two windows): the claim
    file, created atomically, makes sure each run is trained by one of them. A claim left by a process that
    died is taken over."""
    path = Path(run_dir) / CLAIM_FILE
    for _attempt in range(2):
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                info = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                info = {}
            if isinstance(info, dict) and _alive(info):
                yield False
                return
            path.unlink(missing_ok=True)
            continue
        started = None
        try:
            import psutil

            started = psutil.Process(os.getpid()).create_time()
        except Exception as exc:  # psutil missing or refused: the pid alone identifies the claim (safe)
            logger.debug("no process start time for the queue claim: %s", exc)
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump({"pid": os.getpid(), "started": started}, out)
        try:
            yield True
        finally:
            path.unlink(missing_ok=True)
        return
    yield False


def run_queued(run_dir: Path, *, sinks: Sequence[Any] = (), stop: StopToken | None = None) -> str:
    """Train one queued run (or continue a stopped/interrupted one from its checkpoint). Returns the state
    it ended in: finished, stopped or failed (a failure is recorded in its status.json, not raised), or
    "elsewhere" when another live process is training it."""
    run_dir = Path(run_dir)
    with claimed(run_dir) as mine:
        if not mine:
            logger.info("%s is trained by another process: skipped", run_dir)
            return "elsewhere"
        return _train_queued(run_dir, sinks, stop)


def _train_queued(run_dir: Path, sinks: Sequence[Any], stop: StopToken | None) -> str:
    from core import training
    from core.probes import load_probe_settings

    state = runs.read_status(run_dir).get("state")
    if not (state == QUEUED or state in _CONTINUABLE):
        return str(state)  # finished or failed meanwhile (another runner)
    try:
        if state in _CONTINUABLE and runs.latest_checkpoint(run_dir) is not None:
            result = training.resume(run_dir, sinks=sinks, stop=stop)
        else:
            if state != QUEUED:
                # Stopped before its first checkpoint: start afresh, without the curves of the first try.
                (run_dir / runs.METRICS_FILE).unlink(missing_ok=True)
                shutil.rmtree(run_dir / runs.CHECKPOINTS_DIR, ignore_errors=True)
            cfg = runs.load_run_config(run_dir)
            probe = load_probe_settings(run_dir)
            result = training.train(cfg, run_dir=run_dir, sinks=sinks, stop=stop, probes=probe["prompts"] or None,
                                    probe_every=probe["every"] if probe["prompts"] else None,
                                    probe_max_new_tokens=probe["max_new_tokens"])
    except (TrainingError, StudioError) as exc:
        # Recorded as failed in status.json by core.training; the queue goes on with the next run.
        logger.warning("queued run %s failed: %s", run_dir, exc)
        runs.write_status(run_dir, queue_pending=False)
        return "failed"
    # A stopped run stays in the queue, first in line: the next start continues it.
    runs.write_status(run_dir, queue_pending=result.state == "stopped",
                      **({"queue_position": 0.0} if result.state == "stopped" else {}))
    return result.state


def run_queue(workspace: str | os.PathLike, *, stop: StopToken | None = None,
              sinks_for: Callable[[Path], Sequence[Any]] | None = None,
              on_run: Callable[[Path, str], None] | None = None,
              deactivate_on_stop: bool = True) -> list[tuple[Path, str]]:
    """Work through the queue until it is empty or a stop is requested (the current run then stops at its
    next step with a checkpoint; it continues first the next time). Returns (run folder, end state) pairs.

    The queue is marked active (queue.json) while this runs. ``deactivate_on_stop=False`` leaves it marked
    active after a stop: the app closing stops the queue that way, so the next start continues it.

    ``on_run(run_dir, event)`` is told "started" and the end state of each run."""
    workspace = Path(workspace)
    done: list[tuple[Path, str]] = []
    set_active(workspace, True)
    try:
        while not (stop is not None and stop.is_set):
            waiting = queued_runs(workspace)
            if not waiting:
                break
            run_dir = Path(waiting[0]["run_dir"])
            if on_run is not None:
                on_run(run_dir, "started")
            state = run_queued(run_dir, sinks=list(sinks_for(run_dir)) if sinks_for else (), stop=stop)
            if state == "elsewhere":
                # Another runner trains the head of the queue: wait for it rather than spin.
                time.sleep(2.0)
                continue
            done.append((run_dir, state))
            if on_run is not None:
                on_run(run_dir, state)
            if state == "stopped":
                break
    finally:
        stopped = stop is not None and stop.is_set
        set_active(workspace, bool(queued_runs(workspace)) and not (stopped and deactivate_on_stop))
    return done
