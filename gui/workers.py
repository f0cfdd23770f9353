"""Training off the GUI thread: a worker QObject moved to a QThread, owned by a controller.

The worker calls ``core.training.train`` / ``resume`` with a ``CallbackSink`` whose callables emit
Qt signals carrying the frozen ``MetricPoint`` / ``StatusEvent`` objects; Qt queues them to the GUI
thread, where the page updates its widgets. Stopping is cooperative (a ``StopToken`` checked by the
training loop at step boundaries), never ``QThread.terminate``.

Importing torch/transformers in a thread holds the GIL for long stretches and stalls the event loop
(measured ~200 ms on this machine). ``TrainingController.preload`` imports them in a worker early
(while the user is on another page), with a short GIL switch interval so the GUI thread gets the GIL
back often during the import.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
import traceback
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QThread, Signal, Slot

from core.cancel import StopToken
from core.config import RunConfig
from core.metrics import CallbackSink, MetricPoint, PreferencePoint, ProbeResult, StatusEvent
from gui.import_lock import heavy_imports_lock, heavy_libraries_imported, import_heavy_libraries, no_gc_during_import
from gui.tasks import GuardedWorker

# Every QThread this module started and that has not finished yet (tests assert it ends up empty).
_LIVE_THREADS: weakref.WeakSet[QThread] = weakref.WeakSet()

HEAVY_MODULES = ("torch", "transformers", "peft", "datasets", "accelerate")
IMPORT_SWITCH_INTERVAL = 0.0005  # seconds; Python's default is 0.005
# While training runs, the worker thread holds the GIL between torch calls. With Python's default 5 ms
# switch interval, each of the many GIL hand-overs a pyqtgraph repaint needs can wait 5 ms (measured:
# event-loop gaps of 190-300 ms). A 0.5 ms interval makes the hand-overs quick at a small cost in throughput.
TRAINING_SWITCH_INTERVAL = 0.0005

def running_threads() -> list[QThread]:
    """Threads started here that are still running (empty when all work has ended)."""
    return [thread for thread in list(_LIVE_THREADS) if thread.isRunning()]


def preimport_heavy_modules() -> float:
    """Import torch, transformers, peft, datasets and core.training once; returns the seconds it took.

    Called on a worker thread, under the shared ``gui.import_lock.heavy_imports_lock`` (other workers
    import transformers too, and concurrent first imports fail). The garbage collector is paused meanwhile.
    """
    started = time.perf_counter()

    def done() -> bool:
        return heavy_libraries_imported() and all(n in sys.modules for n in (*HEAVY_MODULES, "core.training"))

    if done():  # without the lock: a chat pane may hold it for a whole model load
        return 0.0
    with heavy_imports_lock:
        if done():
            return 0.0
        import_heavy_libraries()
        with no_gc_during_import():
            for name in HEAVY_MODULES:
                try:
                    __import__(name)
                except ImportError:
                    pass  # optional here; core.training reports a clear error if one is really missing
            import core.training  # noqa: F401
    return time.perf_counter() - started


@dataclass(frozen=True)
class TrainingJob:
    """What the worker should do: train a new run from ``config``, or resume ``run_dir``."""

    mode: str  # "train" | "resume" | "launch" (several processes through core.launch)
    config: RunConfig | None = None
    workspace: Path | None = None
    run_dir: Path | None = None
    probes: tuple[str, ...] = ()
    probe_every: int | None = None
    processes: int = 1


_METRIC_FIELDS = set(MetricPoint.__dataclass_fields__)
_STATUS_FIELDS = set(StatusEvent.__dataclass_fields__)
_PROBE_FIELDS = set(ProbeResult.__dataclass_fields__)


def _revive_numbers(record: dict) -> dict:
    # JsonlSink writes NaN / inf as strings so the file stays valid JSON: turn them back into floats.
    return {key: float(value) if isinstance(value, str) and value in ("nan", "inf", "-inf", "NaN", "Infinity",
                                                                      "-Infinity") else value
            for key, value in record.items()}


def record_to_event(record: dict) -> MetricPoint | StatusEvent | ProbeResult | PreferencePoint | None:
    """A metrics.jsonl line (dict) as the object a single-process run hands its sinks; None if unknown."""
    kind = record.get("kind")
    try:
        if kind in ("train", "eval"):
            return MetricPoint(**{k: v for k, v in _revive_numbers(record).items() if k in _METRIC_FIELDS})
        if kind == "status":
            return StatusEvent(**{k: v for k, v in record.items() if k in _STATUS_FIELDS})
        if kind == "probe":
            return ProbeResult(**{k: v for k, v in _revive_numbers(record).items() if k in _PROBE_FIELDS})
        if kind == "preference":
            return PreferencePoint.from_record(record)
    except TypeError:
        return None  # a line missing a required field (another version wrote it): skip it
    return None


class MetricsTail:
    """Reads the lines appended to a metrics.jsonl since the last call; a half-written last line waits."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._offset = 0
        self._partial = b""

    def read_new(self) -> list[dict]:
        """New complete JSON objects (torn or foreign lines are skipped)."""
        import json

        try:
            with open(self.path, "rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()  # after the last newline: incomplete (or empty)
        records = []
        for line in lines:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line.decode("utf-8", errors="replace"))
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records


TAIL_INTERVAL_S = 0.5


class TrainingWorker(GuardedWorker):
    """Lives on the worker thread. Only emits signals; never touches a widget."""

    metric = Signal(object)  # core.metrics.MetricPoint
    status = Signal(object)  # core.metrics.StatusEvent
    probe = Signal(object)  # core.metrics.ProbeResult
    preference = Signal(object)  # core.metrics.PreferencePoint (DPO runs: rewards and reward accuracy)
    logLine = Signal(str)  # output of launched processes
    runDirReady = Signal(object)  # Path of the run folder, as soon as it exists
    # succeeded(core.training.RunResult) / failed(exception) / done come from GuardedWorker.

    def __init__(self, job: TrainingJob, stop: StopToken):
        super().__init__()
        self.job = job
        self.stop = stop

    def work(self) -> Any:
        if any(name not in sys.modules for name in ("torch", "transformers", "core.training")):
            self.status.emit(StatusEvent("running", "Loading the training libraries (torch, transformers)..."))
            preimport_heavy_modules()
        from core import training
        from core.runs import create_run_dir

        sink = CallbackSink(on_metric=self.metric.emit, on_status=self.status.emit, on_probe=self.probe.emit,
                            on_preference=self.preference.emit)
        job = self.job
        probes = list(job.probes) or None
        if job.mode == "resume":
            assert job.run_dir is not None
            self.runDirReady.emit(Path(job.run_dir))
            return training.resume(job.run_dir, sinks=[sink], stop=self.stop)
        assert job.config is not None and job.workspace is not None
        if job.mode == "launch":
            return self._run_launched()
        # Unusable data is refused before a run folder exists (the same check as the CLI's `train`): reading
        # and mapping, then tokenizing with the model's tokenizer (the run loads that result from the cache).
        from core.commands.train import check_data_before_the_run

        check_data_before_the_run(job.config, sink, self.stop)
        # The folder is created here (not inside train) so the page knows it at once: Resume and
        # error messages can point at it even when the run stops during loading.
        run_dir = create_run_dir(job.workspace, job.config.name or time.strftime("run-%Y%m%d-%H%M%S"))
        self.runDirReady.emit(run_dir)
        return training.train(job.config, workspace=job.workspace, run_dir=run_dir, sinks=[sink], stop=self.stop,
                              probes=probes, probe_every=job.probe_every if probes else None)

    def _run_launched(self) -> Any:
        """Several processes via ``core.launch.launch_distributed`` on a helper thread; this thread supervises:
        it finds the new run folder and tails its metrics.jsonl every ~0.5 s, emitting the same objects a
        single-process run emits. Stop reaches every process through the StopToken."""
        from core.launch import launch_distributed

        job = self.job
        workspace = Path(job.workspace)  # type: ignore[arg-type]
        workspace.mkdir(parents=True, exist_ok=True)
        before = {child.name for child in workspace.iterdir()}
        outcome: dict[str, Any] = {}

        def launch() -> None:
            try:
                outcome["result"] = launch_distributed(job.config, processes=job.processes, workspace=workspace,
                                                       stop=self.stop, on_line=self.logLine.emit)
            except BaseException as exc:  # noqa: BLE001 - re-raised on the supervising thread
                exc.__traceback_text__ = traceback.format_exc()  # type: ignore[attr-defined]
                outcome["error"] = exc

        self.status.emit(StatusEvent("running", f"Launching {job.processes} processes (accelerate)..."))
        launcher = threading.Thread(target=launch, name="studio-launch", daemon=True)
        launcher.start()
        tail: MetricsTail | None = None
        while True:
            alive = launcher.is_alive()
            if tail is None:
                new = sorted(child for child in workspace.iterdir() if child.name not in before and child.is_dir())
                if new:
                    self.runDirReady.emit(new[0])
                    tail = MetricsTail(new[0] / "metrics.jsonl")
            if tail is not None:
                self.emit_records(tail.read_new())
            if not alive:
                break
            time.sleep(TAIL_INTERVAL_S)
        launcher.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    def emit_records(self, records: list[dict]) -> None:
        """Emit metrics.jsonl records as MetricPoint / StatusEvent / ProbeResult / PreferencePoint signals."""
        for record in records:
            event = record_to_event(record)
            if isinstance(event, MetricPoint):
                self.metric.emit(event)
            elif isinstance(event, StatusEvent):
                self.status.emit(event)
            elif isinstance(event, ProbeResult):
                self.probe.emit(event)
            elif isinstance(event, PreferencePoint):
                self.preference.emit(event)


class _PreloadWorker(QObject):
    done = Signal(object)  # seconds the import took, or the exception

    @Slot()
    def run(self) -> None:
        try:
            seconds: object = preimport_heavy_modules()
        except BaseException as exc:  # noqa: BLE001 - reported; training will raise it properly later
            seconds = exc
        self.done.emit(seconds)
        QThread.currentThread().quit()  # not via a queued signal: the GUI thread may be blocked in wait()


class TrainingController(QObject):
    """Owns the training thread: start, stop (cooperative), resume, wait. Signals arrive on the GUI thread.

    Signals:
      metricReceived(MetricPoint), statusReceived(StatusEvent), preferenceReceived(PreferencePoint: DPO rewards),
      runStarted(Path run_dir),
      runFinished(RunResult), runFailed(exception), busyChanged(bool), preloaded(object seconds | exception)
    """

    metricReceived = Signal(object)
    statusReceived = Signal(object)
    probeReceived = Signal(object)
    preferenceReceived = Signal(object)
    logLine = Signal(str)
    runStarted = Signal(object)
    runFinished = Signal(object)
    runFailed = Signal(object)
    busyChanged = Signal(bool)
    preloaded = Signal(object)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._thread: QThread | None = None
        self._worker: TrainingWorker | None = None
        self._stop: StopToken | None = None
        self._preload_thread: QThread | None = None
        self._preload_worker: _PreloadWorker | None = None
        self.last_run_dir: Path | None = None
        self.stop_requested = False
        self._previous_switch_interval = sys.getswitchinterval()

    # -- state -------------------------------------------------------------------------------------
    @property
    def is_busy(self) -> bool:
        """True from start() until the training thread has finished."""
        return self._thread is not None

    # -- preload -----------------------------------------------------------------------------------
    def preload(self) -> bool:
        """Import torch/transformers on a worker thread now, so Start does not pay for it. False when
        they are already imported or a preload is under way."""
        if self._preload_thread is not None or all(n in sys.modules for n in ("torch", "transformers",
                                                                                "core.training")):
            return False
        thread = QThread()
        thread.setObjectName("studio-preload")
        worker = _PreloadWorker()
        worker.moveToThread(thread)
        thread.started.connect(worker.run)
        worker.done.connect(self._on_preloaded)
        thread.finished.connect(self._on_preload_thread_finished)
        self._preload_thread, self._preload_worker = thread, worker
        _LIVE_THREADS.add(thread)
        thread.start(QThread.Priority.LowPriority)
        return True

    @Slot(object)
    def _on_preloaded(self, outcome: object) -> None:
        self.preloaded.emit(outcome)

    @Slot()
    def _on_preload_thread_finished(self) -> None:
        if self._preload_thread is None or not self._preload_thread.isFinished():
            return
        _LIVE_THREADS.discard(self._preload_thread)
        self._preload_thread = self._preload_worker = None

    # -- training ----------------------------------------------------------------------------------
    def start(self, config: RunConfig, workspace: str | Path, *, probes=(), probe_every: int | None = None,
              processes: int = 1) -> None:
        """Train a new run from a copy of ``config`` into a new folder under ``workspace``; ``processes`` > 1
        runs it through ``core.launch.launch_distributed`` (probes are not supported there)."""
        mode = "launch" if processes > 1 else "train"
        self._launch(TrainingJob(mode, config=config.copy(), workspace=Path(workspace), probes=tuple(probes),
                                 probe_every=probe_every, processes=int(processes)))

    def resume(self, run_dir: str | Path) -> None:
        """Continue ``run_dir`` from its latest complete checkpoint."""
        self._launch(TrainingJob("resume", run_dir=Path(run_dir)))

    def _launch(self, job: TrainingJob) -> None:
        if self._thread is not None:
            raise RuntimeError("a training run is already in progress")
        self.stop_requested = False
        self._stop = StopToken()
        thread = QThread()
        thread.setObjectName("studio-training")
        worker = TrainingWorker(job, self._stop)
        worker.moveToThread(thread)
        thread.started.connect(worker.run)
        # Queued connections (worker thread -> this object's thread): slots run on the GUI thread.
        worker.metric.connect(self.metricReceived)
        worker.status.connect(self.statusReceived)
        worker.probe.connect(self.probeReceived)
        worker.preference.connect(self.preferenceReceived)
        worker.logLine.connect(self.logLine)
        worker.runDirReady.connect(self._on_run_dir)
        worker.succeeded.connect(self.runFinished)
        worker.failed.connect(self.runFailed)
        thread.finished.connect(self._on_thread_finished)
        self._thread, self._worker = thread, worker
        _LIVE_THREADS.add(thread)
        self._previous_switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._previous_switch_interval, TRAINING_SWITCH_INTERVAL))
        # Everything alive now (Qt wrappers, torch/transformers modules) will outlive the run: move it out of
        # the collector's reach so a full collection triggered by the training thread (which holds the GIL,
        # stalling the event loop) only scans new objects. Measured: stalls of ~380 ms in a long-lived process.
        gc.freeze()
        thread.start()
        self.busyChanged.emit(True)

    @Slot(object)
    def _on_run_dir(self, run_dir: object) -> None:
        self.last_run_dir = Path(run_dir)  # type: ignore[arg-type]
        self.runStarted.emit(self.last_run_dir)

    def stop(self, reason: str = "stopped by the user") -> bool:
        """Ask the run to stop at the next step boundary (it saves a checkpoint first). False if idle."""
        if self._stop is None or self._thread is None:
            return False
        self.stop_requested = True
        self._stop.request(reason)
        return True

    def wait(self, timeout_ms: int = 60000) -> bool:
        """Block until the training and preload threads have ended (True) or the timeout passed."""
        deadline = time.monotonic() + timeout_ms / 1000
        for thread in (self._thread, self._preload_thread):
            if thread is not None:
                left = max(0, int((deadline - time.monotonic()) * 1000))
                if not thread.wait(left):
                    return False
        # Deliver the queued finished() notifications so is_busy is accurate when we return.
        from PySide6.QtCore import QCoreApplication

        QCoreApplication.sendPostedEvents(self)
        if self._thread is not None and self._thread.isFinished():
            self._on_thread_finished()
        if self._preload_thread is not None and self._preload_thread.isFinished():
            self._on_preload_thread_finished()
        return True

    @Slot()
    def _on_thread_finished(self) -> None:
        if self._thread is None or not self._thread.isFinished():
            return  # a stale notification (wait() already cleaned up) or a newer run is going
        # Deliver the worker's last queued signals (succeeded/failed) before announcing "idle".
        from PySide6.QtCore import QCoreApplication

        QCoreApplication.sendPostedEvents(self)
        # The worker's thread has ended, so dropping the last references deletes both objects here.
        _LIVE_THREADS.discard(self._thread)
        self._thread = self._worker = None
        self._stop = None
        sys.setswitchinterval(self._previous_switch_interval)
        self.busyChanged.emit(False)
