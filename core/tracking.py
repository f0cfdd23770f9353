"""Experiment tracking: TensorBoard and MLflow, written by the Trainer's own integration callbacks.

``training.report_to`` becomes ``TrainingArguments.report_to`` (core.hf_args); the Trainer then adds its
TensorBoardCallback / MLflowCallback, which do the logging. This module only decides where the logs go,
records that in the run folder (``tracking.json``), and owns the MLflow run's life: it starts the run before
the Trainer does (so a resumed run continues the same MLflow run, and a failed one is marked FAILED) and
ends it afterwards.

Where the logs go:
- TensorBoard: ``RUN/tensorboard/`` (``tensorboard --logdir RUN/tensorboard``, or ``--logdir WORKSPACE`` to
  compare runs). transformers 5 takes the folder from the ``TENSORBOARD_LOGGING_DIR`` environment
  variable (``logging_dir`` is gone from TrainingArguments); it is set only while the Trainer is built.
- MLflow: ``$MLFLOW_TRACKING_URI`` when the user set one (a server, their own store), else a SQLite store
  shared by the runs of a workspace, ``WORKSPACE/mlflow.db`` (MLflow 3 refuses its old file store unless
  told otherwise). Experiment: ``$MLFLOW_EXPERIMENT_NAME`` or ``finetune-studio``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from core.config import ConfigError, RunConfig, atomic_write_text
from core.errors import Cancelled

logger = logging.getLogger(__name__)

TRACKING_FILE = "tracking.json"
TENSORBOARD_DIR = "tensorboard"
MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS_DIR = "mlflow-artifacts"
DEFAULT_EXPERIMENT = "finetune-studio"
# report_to value -> (module that must be importable, pip package that provides it)
_PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow-skinny")}


def reporting_targets(report_to: str) -> list[str]:
    """The integrations named by ``training.report_to``: "none" -> [], "tensorboard+mlflow" -> both."""
    names = [part.strip() for part in str(report_to or "none").replace(",", "+").split("+")]
    return [name for name in names if name and name != "none"]


def check_installed(report_to: str) -> None:
    """Raise ConfigError naming the pip package when a chosen integration is not installed."""
    for target in reporting_targets(report_to):
        if target not in _PACKAGES:
            raise ConfigError("training.report_to", f"unknown tracking target {target!r}: use tensorboard or mlflow")
        module, package = _PACKAGES[target]
        if importlib.util.find_spec(module) is None:
            raise ConfigError("training.report_to",
                              f"{target} is not installed: `pip install {package}` (or the app's `tracking` extra: "
                              "`pip install finetune-studio[tracking]`), or set it to none")


def mlflow_tracking_uri(run_dir: str | os.PathLike) -> str:
    """The MLflow store of a run: the user's $MLFLOW_TRACKING_URI, else WORKSPACE/mlflow.db (SQLite)."""
    override = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if override:
        return override
    # sqlite:/// + an absolute path: sqlite:////home/... on POSIX, sqlite:///C:/... on Windows.
    return "sqlite:///" + (Path(run_dir).resolve().parent / MLFLOW_DB).as_posix()


def read_tracking(run_dir: str | os.PathLike) -> dict:
    """``tracking.json`` of a run ({} when the run reports to neither TensorBoard nor MLflow)."""
    path = Path(run_dir) / TRACKING_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.warning("%s is unreadable (%s); tracking details of this run are unknown", path, exc)
        return {}


def describe(info: dict) -> list[str]:
    """One line per tracker: where the logs are and the command that opens them (for the CLI)."""
    lines = []
    if "tensorboard" in info:
        lines.append(f"TensorBoard logs: {info['tensorboard']['logdir']}  (open: {info['tensorboard']['open']})")
    if "mlflow" in info:
        ml = info["mlflow"]
        lines.append(f"MLflow run {ml['run_id']} in {ml['tracking_uri']}, experiment {ml['experiment']!r}  "
                     f"(open: {ml['open']})")
    return lines


@dataclass
class TrackingSession:
    """What ``tracking`` set up: ``info`` is tracking.json's content; set ``status`` to how the run ended."""

    info: dict = field(default_factory=dict)
    status: str = "FINISHED"  # MLflow's run status: FINISHED, KILLED (stopped by the user), FAILED


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def tensorboard_folder(session: TrackingSession) -> Iterator[None]:
    """Point transformers' TensorBoardCallback at the run's folder while the Trainer is built (it reads
    TENSORBOARD_LOGGING_DIR in its constructor); the process environment is restored afterwards."""
    logdir = session.info.get("tensorboard", {}).get("logdir")
    if not logdir:
        yield
        return
    with _environment(TENSORBOARD_LOGGING_DIR=logdir):
        yield


def _start_mlflow_run(cfg: RunConfig, run_dir: Path, previous: dict, resuming: bool) -> dict:
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = mlflow_tracking_uri(run_dir)
    experiment_name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "").strip() or DEFAULT_EXPERIMENT
    # Set explicitly, not through the environment: the fluent API remembers the first URI it saw, so a
    # second run of the same app process in another workspace would otherwise log into the first one's store.
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        # Artifacts (none by default) next to our SQLite store, not in ./mlruns of whatever the cwd is.
        artifacts = None if os.environ.get("MLFLOW_TRACKING_URI") else (
            (run_dir.resolve().parent / MLFLOW_ARTIFACTS_DIR).as_uri())
        experiment_id = client.create_experiment(experiment_name, artifact_location=artifacts)
    else:
        experiment_id = experiment.experiment_id
    run_id = None
    if resuming and previous.get("tracking_uri") == uri and previous.get("run_id"):
        run_id = previous["run_id"]  # a resumed run continues its MLflow run: one unbroken loss curve
    run = mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment_id,
                           run_name=None if run_id else (cfg.name or run_dir.name))
    if uri.startswith("sqlite:"):
        how_to_open = f"mlflow ui --backend-store-uri {uri}"
    else:
        how_to_open = f"open {uri} in a browser (or `mlflow ui --backend-store-uri {uri}`)"
    return {"tracking_uri": uri, "experiment": experiment_name, "experiment_id": str(experiment_id),
            "run_id": run.info.run_id, "open": how_to_open}


@contextmanager
def tracking(cfg: RunConfig, run_dir: str | os.PathLike, *, main: bool, resuming: bool) -> Iterator[TrackingSession]:
    """Set up TensorBoard / MLflow for one training run (``main``: this process writes the run folder).

    Writes tracking.json into the run folder, starts the MLflow run (continuing the previous one when
    ``resuming``) and ends it on exit with the session's status (FAILED when an exception leaves).
    """
    run_dir = Path(run_dir)
    targets = reporting_targets(cfg.training.report_to)
    session = TrackingSession()
    if not targets or not main:
        # Other ranks of a multi-process run: the Trainer's callbacks only log on rank 0 anyway.
        yield session
        return
    previous = read_tracking(run_dir)
    if "tensorboard" in targets:
        logdir = run_dir.resolve() / TENSORBOARD_DIR
        session.info["tensorboard"] = {"logdir": str(logdir), "open": f"tensorboard --logdir {logdir}"}
    mlflow_started = False
    user_uri = os.environ.get("MLFLOW_TRACKING_URI")
    if "mlflow" in targets:
        session.info["mlflow"] = _start_mlflow_run(cfg, run_dir, previous.get("mlflow", {}), resuming)
        mlflow_started = True
    atomic_write_text(run_dir / TRACKING_FILE, json.dumps(session.info, indent=2) + "\n")
    for line in describe(session.info):
        logger.info("%s: %s", run_dir.name, line)
    try:
        yield session
    except (KeyboardInterrupt, Cancelled):
        session.status = "KILLED"
        raise
    except BaseException:
        session.status = "FAILED"
        raise
    finally:
        if mlflow_started:
            _end_mlflow_run(session.status, user_uri)


def _end_mlflow_run(status: str, user_uri: str | None) -> None:
    import mlflow

    try:
        if mlflow.active_run() is not None:
            mlflow.end_run(status=status)  # also waits for the Trainer's asynchronous metric logging
        # set_tracking_uri also wrote $MLFLOW_TRACKING_URI: put back the user's (or none), so the next run
        # of this process (another workspace) picks its own store.
        mlflow.set_tracking_uri(user_uri)
    except Exception:
        # Safe to continue: the run's own files (metrics.jsonl, checkpoints) are complete; only the MLflow
        # run's end mark is missing, and the traceback is in the log file for the user to send.
        logger.exception("could not end the MLflow run (status %s)", status)
