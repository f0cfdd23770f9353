"""bench.gpu_check: the CPU smoke mode runs end to end and writes the JSON the GPU run will write."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_cpu_smoke_writes_its_json(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "lora fp32" in done.stdout  # the table is printed
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["smoke"] is True
    assert report["bf16_peak_flops"] == "unknown"
    assert {"torch", "transformers", "peft"} <= set(report["versions"])
    checks = {c["check"]: c for c in report["checks"]}
    assert set(checks) == {"lora fp32", "lora fp32 +ckpt", "full fp32", "full fp32 +ckpt", "chat"}
    for name in ("lora fp32", "lora fp32 +ckpt", "full fp32", "full fp32 +ckpt"):
        check = checks[name]
        assert "error" not in check, check
        assert check["tokens_per_second"] > 0 and check["steps"] == 2
        assert 0 < check["trainable_params"] <= check["params"]
        assert check["mfu"] is None  # no known peak on a CPU
        assert "total_bytes" in check["estimate"] or "skipped" in check["estimate"]
    assert checks["lora fp32"]["trainable_params"] < checks["full fp32"]["trainable_params"]
    assert checks["chat"]["ttft_seconds"] > 0 and checks["chat"]["new_tokens"] == 8
    skipped = {s["check"] for s in report["skipped"]}
    assert {"fp16 (GradScaler)", "qlora 4-bit", "2-process LoRA (DDP)"} <= skipped


def test_bf16_peak_table_matches_device_names():
    from bench.gpu_check import bf16_peak

    assert bf16_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert bf16_peak("NVIDIA H100 PCIe") == 756e12
    assert bf16_peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert bf16_peak("NVIDIA A10G") == 70e12
    assert bf16_peak("Some Future GPU") is None
