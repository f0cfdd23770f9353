"""Compute devices: what is there, which one to use, which precision it supports, how much memory is used.

torch is imported inside functions: the GUI imports this module at start-up.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

from core.config import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # "cpu" | "cuda" | "mps"
    name: str  # human-readable, e.g. "NVIDIA RTX 4090" or "CPU (16 cores)"
    index: int | None = None  # CUDA ordinal
    total_memory: int | None = None  # bytes; None when unknown
    supports_bf16: bool = False
    supports_fp16: bool = False

    @property
    def spec(self) -> str:
        """The string torch understands: "cpu", "cuda:0", "mps"."""
        return f"cuda:{self.index}" if self.kind == "cuda" else self.kind

    @property
    def torch_device(self):
        import torch

        return torch.device(self.spec)

    def __str__(self) -> str:
        return f"{self.spec} ({self.name})"


def _cpu_info() -> DeviceInfo:
    total = None
    try:
        import psutil

        total = int(psutil.virtual_memory().total)
    except Exception:  # psutil missing or the platform hides it: memory stays unknown, which callers handle
        logger.debug("total RAM unknown", exc_info=True)
    # bf16 on a CPU only where it has native bf16 instructions (AMX, AVX-512 BF16); elsewhere it is emulated
    # and slower than fp32. fp16 training on a CPU: never.
    return DeviceInfo("cpu", f"CPU ({os.cpu_count() or 1} cores)", None, total, bool(cpu_bf16_instructions()), False)


def _cpuinfo_field(name: str, cpuinfo: str | None = None) -> str:
    """The first ``name`` line of /proc/cpuinfo (or of ``cpuinfo``); "" where there is none (not Linux)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
                cpuinfo = handle.read(200_000)
        except OSError:
            return ""  # no /proc (macOS, Windows): callers fall back to what platform says
    for line in cpuinfo.splitlines():
        if line.startswith(name):
            return line.split(":", 1)[-1].strip()
    return ""


def cpu_model() -> str:
    """The CPU's model name, from the OS alone (no torch): /proc/cpuinfo, else platform.processor()."""
    import platform

    return _cpuinfo_field("model name") or platform.processor() or platform.machine() or "CPU"


def cpu_bf16_instructions(cpuinfo: str | None = None) -> str:
    """The CPU's native bf16 instructions: "amx" (Intel AMX: bf16 matrix multiplies ~4x faster than fp32, measured
    937 vs 216 GFLOPS on 2 Xeon cores), "avx512_bf16", or "" (none, or not Linux: not detected)."""
    flags = set(_cpuinfo_field("flags", cpuinfo).split())
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512_bf16"
    return ""


def _cuda_info(index: int) -> DeviceInfo:
    import torch

    props = torch.cuda.get_device_properties(index)
    if index == torch.cuda.current_device():
        # Without emulation: emulated bf16 "works" on old GPUs but trains far slower than fp16.
        bf16 = bool(torch.cuda.is_bf16_supported(including_emulation=False))
    else:
        bf16 = getattr(props, "major", 0) >= 8  # torch's own criterion, without switching devices
    return DeviceInfo("cuda", str(props.name), index, int(props.total_memory), bf16, True)


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def list_devices() -> list[DeviceInfo]:
    """Every usable device: the CPU always, then CUDA GPUs, then Apple's MPS."""
    import torch

    devices = [_cpu_info()]
    if torch.cuda.is_available():
        devices.extend(_cuda_info(i) for i in range(torch.cuda.device_count()))
    if _mps_available():
        # MPS shares system memory; fp16 works, bf16 only on recent macOS and is not relied on.
        devices.append(DeviceInfo("mps", "Apple GPU (MPS)", None, None, False, True))
    return devices


def pick_device(spec: str = "auto") -> DeviceInfo:
    """Resolve "auto" | "cpu" | "cuda" | "cuda:N" | "mps" to a DeviceInfo, or raise ConfigError (training.device)."""
    import torch

    text = (spec or "auto").strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return _cuda_info(0)
        if _mps_available():
            return list_devices()[-1]
        return _cpu_info()
    if text == "cpu":
        return _cpu_info()
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match:
        if not torch.cuda.is_available():
            raise ConfigError("training.device", f"'{spec}' asked for an NVIDIA GPU but CUDA is not available "
                                                 "(no GPU, or torch was installed without CUDA); use auto or cpu")
        index = int(match.group(1) or 0)
        count = torch.cuda.device_count()
        if index >= count:
            raise ConfigError("training.device", f"'{spec}': there is no GPU {index}; this machine has {count} "
                                                 f"(cuda:0 to cuda:{count - 1})")
        return _cuda_info(index)
    if text == "mps":
        if not _mps_available():
            raise ConfigError("training.device", "'mps' (Apple GPU) is not available on this machine; use auto or cpu")
        return list_devices()[-1]
    raise ConfigError("training.device", f"unknown device '{spec}' (expected auto, cpu, cuda, cuda:N or mps)")


def resolve_precision(precision: str, device: DeviceInfo) -> str:
    """The precision to train with on ``device``: "fp32", "bf16" or "fp16" (ConfigError if unsupported)."""
    wanted = (precision or "auto").strip().lower()
    if wanted == "auto":
        if device.kind == "cuda":
            return "bf16" if device.supports_bf16 else "fp16"
        return "fp32"
    if wanted == "fp32":
        return "fp32"
    if wanted == "bf16":
        if device.kind in ("cuda", "cpu") and device.supports_bf16:
            return "bf16"
        where = f"the GPU {device.name} does not support it" if device.kind == "cuda" else \
            "this CPU has no native bf16 instructions (Intel AMX or AVX-512 BF16)" if device.kind == "cpu" else \
            f"it is not supported on {device.kind.upper()} here"
        raise ConfigError("training.precision", f"bf16 was chosen but {where}; use auto or fp32"
                          + (" (or fp16)" if device.kind == "cuda" else ""))
    if wanted == "fp16":
        if device.kind == "cuda":
            return "fp16"
        raise ConfigError("training.precision", f"fp16 training needs an NVIDIA GPU (the device is {device.kind}); "
                                                "use auto or fp32")
    raise ConfigError("training.precision", f"unknown precision '{precision}' (expected auto, fp32, bf16 or fp16)")


def memory_snapshot(device: DeviceInfo | str | None = None) -> dict:
    """Memory in use: ``rss_bytes`` of this process, plus CUDA ``allocated/reserved/peak_bytes`` on a GPU."""
    snapshot: dict = {}
    try:
        import psutil

        snapshot["rss_bytes"] = int(psutil.Process().memory_info().rss)
    except Exception:  # psutil missing: fall back to the peak RSS the kernel reports
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        snapshot["rss_bytes"] = int(peak if sys.platform == "darwin" else peak * 1024)
    if isinstance(device, str):
        device = pick_device(device)
    if device is not None and device.kind == "cuda":
        import torch

        index = device.index or 0
        snapshot["cuda_allocated_bytes"] = int(torch.cuda.memory_allocated(index))
        snapshot["cuda_reserved_bytes"] = int(torch.cuda.memory_reserved(index))
        snapshot["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated(index))
        if device.total_memory:
            snapshot["cuda_total_bytes"] = int(device.total_memory)
    return snapshot
