"""core.devices: listing, picking, precision, memory. The GPU branches run against a mocked torch.cuda."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from core import devices
from core.config import ConfigError
from core.devices import DeviceInfo, list_devices, memory_snapshot, pick_device, resolve_precision

CPU = DeviceInfo("cpu", "CPU", None, None, False, False)
AMPERE = DeviceInfo("cuda", "NVIDIA A100", 0, 80 << 30, True, True)
TURING = DeviceInfo("cuda", "NVIDIA T4", 1, 16 << 30, False, True)
MPS = DeviceInfo("mps", "Apple GPU (MPS)", None, None, False, True)


@pytest.fixture()
def fake_cuda(monkeypatch):
    """Two GPUs: cuda:0 an A100 (bf16), cuda:1 a T4 (no bf16)."""
    gpus = [SimpleNamespace(name="NVIDIA A100", total_memory=80 << 30, major=8),
            SimpleNamespace(name="NVIDIA T4", total_memory=16 << 30, major=7)]
    state = {"allocated": 1000, "reserved": 4000, "peak": 3000}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(gpus))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: gpus[index])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: gpus[0].major >= 8)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda index=None: state["allocated"])
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda index=None: state["reserved"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda index=None: state["peak"])
    monkeypatch.setattr(devices, "_mps_available", lambda: False)
    return gpus


@pytest.fixture()
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: False)


def test_cpu_is_always_listed_and_picked_without_gpu(no_gpu):
    found = list_devices()
    assert [d.kind for d in found] == ["cpu"]
    cpu = pick_device("auto")
    assert cpu.kind == "cpu" and cpu.spec == "cpu" and not cpu.supports_fp16
    assert cpu.supports_bf16 == bool(devices.cpu_bf16_instructions())  # native bf16 (AMX / AVX-512 BF16) only
    assert pick_device("cpu") == cpu
    assert str(cpu.torch_device) == "cpu"


def test_gpus_are_listed_with_names_memory_and_bf16(fake_cuda):
    found = list_devices()
    assert [d.spec for d in found] == ["cpu", "cuda:0", "cuda:1"]
    a100, t4 = found[1], found[2]
    assert (a100.name, a100.total_memory, a100.supports_bf16, a100.supports_fp16) == ("NVIDIA A100", 80 << 30,
                                                                                      True, True)
    assert (t4.name, t4.supports_bf16, t4.index) == ("NVIDIA T4", False, 1)


def test_pick_device_specs_with_gpus(fake_cuda):
    assert pick_device("auto").spec == "cuda:0"
    assert pick_device("cuda").spec == "cuda:0"
    assert pick_device("CUDA:1").name == "NVIDIA T4"
    with pytest.raises(ConfigError) as info:
        pick_device("cuda:2")
    assert info.value.field == "training.device" and "cuda:0 to cuda:1" in str(info.value)


def test_pick_device_errors_without_gpu(no_gpu):
    for spec, words in (("cuda", "CUDA is not available"), ("cuda:1", "CUDA is not available"),
                        ("mps", "not available"), ("tpu", "unknown device")):
        with pytest.raises(ConfigError) as info:
            pick_device(spec)
        assert info.value.field == "training.device"
        assert words in str(info.value)


def test_mps_is_picked_when_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: True)
    assert pick_device("auto").kind == "mps"
    assert pick_device("mps").spec == "mps"


@pytest.mark.parametrize(
    "precision, device, expected",
    [("auto", CPU, "fp32"), ("fp32", CPU, "fp32"), ("auto", AMPERE, "bf16"), ("auto", TURING, "fp16"),
     ("bf16", AMPERE, "bf16"), ("fp16", AMPERE, "fp16"), ("fp16", TURING, "fp16"), ("auto", MPS, "fp32"),
     ("fp32", AMPERE, "fp32")],
)
def test_resolve_precision(precision, device, expected):
    assert resolve_precision(precision, device) == expected


@pytest.mark.parametrize(
    "precision, device, words",
    [("bf16", CPU, "bf16"), ("fp16", CPU, "NVIDIA GPU"), ("bf16", TURING, "does not support"),
     ("fp16", MPS, "NVIDIA GPU"), ("int8", CPU, "unknown precision")],
)
def test_resolve_precision_refuses_unsupported(precision, device, words):
    # CPU here has no native bf16: bf16 is refused with the reason
    with pytest.raises(ConfigError) as info:
        resolve_precision(precision, device)
    assert info.value.field == "training.precision"
    assert words in str(info.value)


def test_memory_snapshot_cpu_has_rss_only(no_gpu):
    snapshot = memory_snapshot(pick_device("cpu"))
    assert snapshot["rss_bytes"] > 10 << 20  # this process imported torch
    assert not any(key.startswith("cuda") for key in snapshot)
    assert memory_snapshot()["rss_bytes"] > 0


def test_memory_snapshot_cuda_reports_allocated_reserved_peak(fake_cuda):
    snapshot = memory_snapshot("cuda:0")
    assert snapshot["cuda_allocated_bytes"] == 1000
    assert snapshot["cuda_reserved_bytes"] == 4000
    assert snapshot["cuda_peak_bytes"] == 3000
    assert snapshot["cuda_total_bytes"] == 80 << 30
    assert snapshot["rss_bytes"] > 0


def test_bf16_on_a_cpu_with_native_bf16_instructions():
    amx = "processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
    zen4 = "flags\t\t: fpu sse2 avx512f avx512_bf16\n"
    old = "flags\t\t: fpu sse2 avx2 fma\n"
    assert [devices.cpu_bf16_instructions(text) for text in (amx, zen4, old, "")] == ["amx", "avx512_bf16", "", ""]
    bf16_cpu = DeviceInfo("cpu", "CPU", None, None, True, False)
    assert resolve_precision("bf16", bf16_cpu) == "bf16"
    assert resolve_precision("auto", bf16_cpu) == "fp32"  # opt-in: auto stays fp32 on a CPU
    with pytest.raises(ConfigError, match="no native bf16 instructions"):
        resolve_precision("bf16", CPU)
