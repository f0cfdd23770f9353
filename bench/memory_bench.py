"""Where a training run's memory goes, phase by phase: ``python -m bench --only memory``.

One run of ``core.training.train`` per process; a sampler thread reads ``/proc/self/status`` every 20 ms and
keeps, for each phase the run reports (its status events: loading, measuring the base model, training,
evaluating, saving, ...), the peak resident set split into anonymous memory (Python/torch heap: activations,
optimizer state, copies of weights) and file-backed pages (the mmapped ``model.safetensors`` the weights are
read from, and the libraries' code). Library imports are measured before the run starts.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path


def _rss() -> dict:
    out = {}
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(("VmRSS", "RssAnon", "RssFile")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) * 1024
    return out


class _Sampler:
    def __init__(self) -> None:
        self.phase = "imports"
        self.peaks: dict[str, dict] = {}
        self.order: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(0.02)

    def sample(self) -> None:
        now, phase = _rss(), self.phase
        if phase not in self.peaks:
            self.order.append(phase)
        peak = self.peaks.setdefault(phase, {"VmRSS": 0, "RssAnon": 0, "RssFile": 0})
        if now.get("VmRSS", 0) > peak["VmRSS"]:
            peak.update(now)

    def set_phase(self, phase: str) -> None:
        self.sample()
        self.phase = phase
        self.sample()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def _phase_of(message: str) -> str:
    message = message.lower()
    for key, label in (("loading the model", "model load"), ("tokeniz", "data"), ("checking the data", "data"),
                       ("measuring the base", "eval (step 0)"), ("evaluating", "eval"), ("saving", "save"),
                       ("training", "train steps"), ("loading the best", "load best"), ("final", "save")):
        if key in message:
            return label
    return ""


def breakdown(config: str = "examples/quickstart.yaml", max_steps: int = 4, workdir: str = "/tmp/memory-bench",
              overrides: dict | None = None) -> dict:
    """Peak RSS per phase of a short run of ``config`` (``overrides``: dotted settings, e.g. gradient checkpointing)."""
    sampler = _Sampler()
    sampler.start()
    started = time.perf_counter()
    import torch  # noqa: F401  (the libraries' share is what importing them costs)
    import transformers  # noqa: F401

    from core.config import RunConfig
    from core.metrics import CallbackSink
    from core.training import train

    sampler.set_phase("run start")
    root = Path(__file__).resolve().parent.parent
    cfg = RunConfig.load(root / config)
    cfg.training.max_steps = max_steps
    cfg.training.eval_steps = max(1, max_steps // 2)
    cfg.training.save_steps = max(1, max_steps // 2)
    for dotted, value in (overrides or {}).items():
        section, name = dotted.split(".")
        setattr(getattr(cfg, section), name, value)

    def on_status(event) -> None:
        phase = _phase_of(event.message or "")
        if phase:
            sampler.set_phase(phase)

    result = train(cfg, run_dir=Path(workdir) / f"run-{int(time.time() * 1000)}",
                   sinks=[CallbackSink(on_status=on_status)])
    sampler.stop()
    to_mib = {k: {key: round(v / 2**20) for key, v in peak.items()} for k, peak in sampler.peaks.items()}
    overall = max(sampler.peaks.values(), key=lambda p: p["VmRSS"])
    return {"config": config, "max_steps": max_steps, "overrides": overrides or {}, "state": result.state,
            "phases_mib": {phase: to_mib[phase] for phase in sampler.order},
            "peak_mib": {k: round(v / 2**20) for k, v in overall.items()},
            "seconds": round(time.perf_counter() - started, 1)}
