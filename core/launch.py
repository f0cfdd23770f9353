"""Multi-process (data-parallel) training through ``accelerate launch`` or ``torchrun``.

``launch_distributed`` starts the launcher as its own process group, streams its output line by line,
relays a stop request to the whole group as SIGINT (each rank's worker treats it as Stop and the run saves
a checkpoint), escalates to SIGTERM and SIGKILL when the group does not end in time, and makes sure no
process of the group is left behind. A crashed rank ends the run with its error message.

One run folder: the launcher creates it once; every rank trains into it with ``core.training.train``,
which writes the run's own files (status.json, metrics.jsonl, config.yaml, final/) on rank 0 only; the
Trainer saves weights and optimizer state on the main process and each rank's RNG state in the checkpoint.

No torch import at module level: the GUI imports this at start-up.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.cancel import StopToken
from core.config import RunConfig
from core.errors import TrainingError

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class LaunchResult:
    """How a multi-process run ended."""

    run_dir: Path | None
    state: str  # finished | stopped | failed
    returncode: int
    message: str
    status: dict


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch_command(config_path: Path, run_dir: Path, *, processes: int, accelerate_config: str | None = None,
                   launcher: str = "accelerate", device_kind: str = "cpu") -> list[str]:
    """The command line that runs the worker in ``processes`` processes."""
    worker = ["--worker", str(config_path), str(run_dir)]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                "--master_port", str(_free_port()), "-m", "core.launch", *worker]
    if launcher != "accelerate":
        raise ValueError(f"unknown launcher {launcher!r} (accelerate or torchrun)")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
               "--main_process_port", str(_free_port())]
    if accelerate_config:
        command += ["--config_file", str(accelerate_config)]
    elif processes > 1:
        # accelerate's "--cpu" runs a single process (multi-CPU needs MPI); "--multi_gpu" starts
        # torch.distributed ranks, which use the gloo backend when no GPU is visible.
        command += ["--multi_gpu"]
        if device_kind == "cpu":
            # Split the cores between ranks instead of every rank starting a thread per core.
            command += ["--num_cpu_threads_per_process", str(max(1, (os.cpu_count() or 1) // processes))]
    return command + ["--module", "core.launch", *worker]


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def launch_distributed(cfg: str | os.PathLike | RunConfig, *, processes: int, accelerate_config: str | None = None,
                       workspace: str | os.PathLike | None = None, stop: StopToken | None = None,
                       on_line: Callable[[str], None] | None = None, launcher: str = "accelerate",
                       grace_seconds: float = 60.0, term_seconds: float = 10.0) -> LaunchResult:
    """Train ``cfg`` (a RunConfig or a YAML path) in ``processes`` data-parallel processes.

    Output lines go to ``on_line``. ``stop`` sends SIGINT to every process (the run saves a checkpoint and
    ends as stopped); after ``grace_seconds`` SIGTERM, after ``term_seconds`` more SIGKILL. Returns a
    LaunchResult; the run folder's status.json tells the rest."""
    from core import runs

    if processes < 1:
        raise TrainingError(f"processes must be at least 1 (got {processes})")
    run_cfg = cfg if isinstance(cfg, RunConfig) else RunConfig.load(cfg)
    run_cfg = run_cfg.copy()
    run_cfg.validate()
    if workspace is None:
        from core.paths import default_workspace

        workspace = default_workspace()
    name = run_cfg.name or f"{run_cfg.method.method}-x{processes}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = runs.create_run_dir(Path(workspace), name)
    from core.locks import RunLock

    # The launcher holds the run folder; its ranks inherit the right to it (core.locks).
    lock = RunLock(run_dir, f"launch {run_dir.name}").acquire()
    try:
        return _launch_locked(run_cfg, run_dir, lock, processes=processes, accelerate_config=accelerate_config,
                              stop=stop, on_line=on_line, launcher=launcher, grace_seconds=grace_seconds,
                              term_seconds=term_seconds)
    finally:
        lock.release()


def _launch_locked(run_cfg: RunConfig, run_dir: Path, lock, *, processes: int, accelerate_config: str | None,
                   stop: StopToken | None, on_line: Callable[[str], None] | None, launcher: str,
                   grace_seconds: float, term_seconds: float) -> LaunchResult:
    from core import runs

    run_cfg.name = run_dir.name
    config_path = run_dir / runs.CONFIG_FILE
    run_cfg.save(config_path)
    device_kind = "cuda" if run_cfg.training.device.startswith("cuda") else "cpu"
    if run_cfg.training.device == "auto":
        device_kind = "cuda" if _has_cuda() else "cpu"
    command = launch_command(config_path, run_dir, processes=processes, accelerate_config=accelerate_config,
                             launcher=launcher, device_kind=device_kind)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", **lock.child_environment())
    # The ranks watch this process: if it is killed, they stop at the next step, save a checkpoint and leave
    # the run "interrupted" (their output pipe is gone too: writing to it must not fail the run).
    env[PARENT_ENV] = f"{os.getpid()}:{_start_time(os.getpid()) or ''}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if device_kind == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, bufsize=1, start_new_session=True, pass_fds=lock.inheritable_fds())
    pgid = process.pid  # start_new_session: the launcher leads a new process group holding every rank
    tail: deque[str] = deque(maxlen=400)

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            if on_line is not None:
                on_line(line)

    reader = threading.Thread(target=pump, name="launch-output", daemon=True)
    reader.start()
    stop_sent_at: float | None = None
    term_sent_at: float | None = None
    try:
        while process.poll() is None:
            now = time.monotonic()
            if stop is not None and stop.is_set and stop_sent_at is None:
                stop_sent_at = now
                _signal_group(process, signal.SIGINT)
            elif stop_sent_at is not None and term_sent_at is None and now - stop_sent_at > grace_seconds:
                term_sent_at = now
                _signal_group(process, signal.SIGTERM)
            elif term_sent_at is not None and now - term_sent_at > term_seconds:
                _signal_group(process, signal.SIGKILL)
            time.sleep(0.1)
    except BaseException:
        _signal_group(process, signal.SIGKILL)  # our caller is going away: take the ranks with us
        raise
    finally:
        returncode = process.wait()
        # The launcher has exited; a rank that outlived it (crash of the launcher) is ended here.
        deadline = time.monotonic() + term_seconds
        while _group_alive(pgid) and time.monotonic() < deadline:
            _signal_group(process, signal.SIGTERM)
            time.sleep(0.2)
        if _group_alive(pgid):
            _signal_group(process, signal.SIGKILL)
        reader.join(timeout=5)
    status = runs.read_status(run_dir)
    state = str(status.get("state") or "")
    if returncode == 0 and state in ("finished", "stopped"):
        return LaunchResult(run_dir, state, returncode, str(status.get("message", "")), status)
    if stop is not None and stop.is_set:
        message = str(status.get("message") or "stopped")
        if state != "stopped":
            last = runs.latest_checkpoint(run_dir)
            message = "stopped" + (f"; resume from {last.name}" if last else "; no checkpoint was saved")
            runs.write_status(run_dir, state="stopped", message=message, ended=time.time())
        return LaunchResult(run_dir, "stopped", returncode, message, runs.read_status(run_dir))
    message = _crash_message(list(tail), returncode, status)
    runs.write_status(run_dir, state="failed", message=message, ended=time.time())
    return LaunchResult(run_dir, "failed", returncode, message, runs.read_status(run_dir))


def _has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


_ERROR_LINE = re.compile(r"^(\[rank\d+\]:\s*)?(error|[A-Za-z_.]*(Error|Exception|Interrupt)):\s")


def _crash_message(lines: list[str], returncode: int, status: dict) -> str:
    """The most useful line of a failed launch: the run's own failure message, else the first error line
    of a rank (the root cause; the launcher's own ChildFailedError comes after it)."""
    if status.get("state") == "failed" and status.get("message"):
        return str(status["message"])
    for line in lines:
        text = line.strip()
        if _ERROR_LINE.match(text) and "ChildFailedError" not in text:
            return text
    return f"a training process failed (exit status {returncode})" + (f": {lines[-1].strip()}" if lines else "")


# --------------------------------------------------------------------------------------------- worker
PARENT_ENV = "FINETUNE_STUDIO_LAUNCH_PARENT"  # "pid:start time" of the process that called launch_distributed


def _start_time(pid: int) -> float | None:
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:  # psutil missing or the process gone: the pid alone is checked
        return None


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)


class _TolerantStream:
    """A stream whose writes never fail: once the reader of the pipe is gone (the launching command was
    killed), output is dropped instead of failing the run with BrokenPipeError."""

    def __init__(self, stream):
        self._stream = stream
        self.broken = False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self._stream.write(text)
            except (BrokenPipeError, OSError, ValueError):
                self.broken = True
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except (BrokenPipeError, OSError, ValueError):
                self.broken = True

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _launching_parent_alive() -> bool:
    """Whether the launching process (PARENT_ENV) still runs (True when none is named)."""
    from core.runs import _pid_alive

    pid_text, _, started_text = os.environ.get(PARENT_ENV, "").partition(":")
    if not pid_text.isdigit():
        return True
    return _pid_alive(int(pid_text), float(started_text) if started_text else None)


def _watch_parent(stop: StopToken, gone: threading.Event, interval: float = 0.5) -> None:
    """Request a stop once the launching process (PARENT_ENV) has ended."""
    if not os.environ.get(PARENT_ENV, "").partition(":")[0].isdigit():
        return

    def watch() -> None:
        while not gone.is_set():
            if not _launching_parent_alive():
                gone.set()
                stop.request("the launching command ended")
                return
            time.sleep(interval)

    threading.Thread(target=watch, name="launch-parent-watch", daemon=True).start()


def worker(config_path: str, run_dir: str) -> int:
    """One rank: train into the shared ``run_dir`` (only rank 0 writes the run's files); SIGINT = Stop."""
    from core.metrics import ConsoleSink
    from core.training import train

    cfg = RunConfig.load(config_path)
    rank = _rank()
    stop = StopToken()

    def on_sigint(signum, frame):
        if stop.is_set:
            raise KeyboardInterrupt
        stop.request("stopped with Ctrl+C")

    signal.signal(signal.SIGINT, on_sigint)
    sys.stdout = _TolerantStream(sys.stdout)
    sys.stderr = _TolerantStream(sys.stderr)
    parent_gone = threading.Event()
    _watch_parent(stop, parent_gone)
    # Every rank trains in the same run folder: core.training lets only rank 0 write the run's files
    # (status, metrics, config, final/), while each rank's own RNG state lands in the shared checkpoints,
    # which is what makes a multi-process run resumable.
    sinks = [ConsoleSink(stream=sys.stdout)] if rank == 0 else []
    result = train(cfg, run_dir=run_dir, sinks=sinks, stop=stop)
    # The parent's death can reach a rank first as a SIGINT or a broken pipe, before the watcher's next look:
    # ask again now, so such a stop is still recorded as "interrupted".
    if (parent_gone.is_set() or not _launching_parent_alive()) and result.state == "stopped" and rank == 0:
        from core import runs

        last = runs.latest_checkpoint(run_dir)
        message = ("the launching command ended (killed?), so training stopped at step "
                   f"{result.global_step}" + (f"; `python main.py resume {run_dir}` continues from {last.name}"
                                              if last else "; no checkpoint was saved"))
        runs.write_status(run_dir, state="interrupted", message=message, ended=time.time())
    print(f"[rank {rank}] {result.state}: {result.message}", flush=True)
    return 0 if result.state in ("finished", "stopped") else 1


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        from core.cli import main as _cli_main  # noqa: F401  same environment set-up as the CLI
        from core.environment import prepare_environment

        prepare_environment()
        try:
            sys.exit(worker(sys.argv[2], sys.argv[3]))
        except Exception as exc:  # noqa: BLE001 - one line a user can read; the launcher relays it
            from core.errors import StudioError

            if isinstance(exc, StudioError):
                print(f"error: [rank {_rank()}] {exc}", file=sys.stderr, flush=True)
                sys.exit(2)
            raise
    print("usage: python -m core.launch --worker CONFIG RUN_DIR", file=sys.stderr)
    sys.exit(2)
