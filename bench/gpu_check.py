"""GPU readiness check: ``python -m bench.gpu_check [--device auto|cuda|cpu] [--out FILE.json]``.

One self-contained script for the first machine with an NVIDIA GPU: no download, no ``datasets``, no Qt.
It imports only torch, transformers, peft, accelerate, tokenizers and safetensors (and bitsandbytes /
the app's ``core.estimate`` when they import), and says which missing package skipped which check.

The model is built from the SmolLM2-135M config with random weights (speed and memory do not depend
on the weight values; the app's bundled SmolLM2 ships as a GGUF file, whose reading needs the ``gguf``
package, which a bare GPU machine lacks). Training is
a plain torch loop over random token batches (forward, backward, AdamW step), not the app's Trainer
(which needs ``datasets``): it measures what the GPU does with this model, precision and method.

Checks (GPU): bf16 LoRA and full fine-tuning, gradient checkpointing off/on; QLoRA 4-bit when
bitsandbytes imports; fp16 with a grad scaler (the fallback for GPUs without bf16); tokens/s and MFU
against the GPU's dense bf16 peak (known devices, else "unknown"); CUDA peak memory vs the app's
estimate; chat time to first token; a 2-process data-parallel run when 2 GPUs exist. ``--device cpu``
runs a smoke version (a tiny model, fp32, a few steps) in seconds; CI runs that.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

# Dense bf16 tensor-core peaks (FLOP/s, no sparsity), from the vendors' data sheets.
BF16_PEAKS = {
    "H200": 989e12, "H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H100 NVL": 835e12, "H100 PCIe": 756e12,
    "H100": 756e12, "A100": 312e12, "A10G": 70e12, "A10": 125e12, "L40S": 362e12, "L40": 181e12,
    "L4": 121e12, "RTX 6000 Ada": 364e12, "RTX A6000": 155e12, "RTX 4090": 165e12, "RTX 3090": 71e12,
}

SMOLLM2_CONFIG = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                      num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
                      max_position_embeddings=2048)
SMOKE_CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True, max_position_embeddings=256)


def bf16_peak(name: str) -> float | None:
    """The dense bf16 peak of a GPU by its device name (longest matching key), None when unknown."""
    for key in sorted(BF16_PEAKS, key=len, reverse=True):
        if key.lower() in name.lower():
            return BF16_PEAKS[key]
    return None


def optional(name: str):
    try:
        return importlib.import_module(name), None
    except Exception as exc:  # noqa: BLE001 - any import failure means "not usable here"
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0][:200]


def build_model(smoke: bool, dtype, device: str, quantization=None):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**(SMOKE_CONFIG if smoke else SMOLLM2_CONFIG))
    torch.manual_seed(0)
    if quantization is not None:
        # 4-bit needs a checkpoint to quantize on load: save the random model once, reload quantized.
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        LlamaForCausalLM(config).to(dtype).save_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, quantization_config=quantization,
                                                     device_map={"": device})
    else:
        model = LlamaForCausalLM(config).to(dtype)
    source = "random weights, tiny smoke shape" if smoke else "random weights, SmolLM2-135M shape"
    if quantization is None:
        model = model.to(device)
    return model, source


def count_params(model) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * (2 if p.__class__.__name__ == "Params4bit" else 1)  # 4-bit packs two per byte
    return total


def train_check(name: str, *, device: str, smoke: bool, method: str, precision: str, checkpointing: bool,
                batch: int, length: int, steps: int, peak: float | None, quantize: bool = False) -> dict:
    """Train ``steps`` steps on random tokens; tokens/s, MFU, peak memory."""
    import torch
    from peft import LoraConfig, get_peft_model

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float32, "fp32": torch.float32}[precision]
    quantization = None
    if quantize:
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                          bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=True)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    model, source = build_model(smoke, dtype, device, quantization)
    total_params = count_params(model)
    if quantize:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if method == "lora":
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                                                 target_modules="all-linear"))
        if checkpointing:
            model.enable_input_require_grads()
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(0)

    def step() -> float:
        ids = torch.randint(0, vocab, (batch, length), generator=generator).to(device)
        if precision == "fp16":
            with torch.autocast("cuda", dtype=torch.float16):
                loss = model(input_ids=ids, labels=ids).loss
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    warmup = 1 if smoke else 3
    for _ in range(warmup):
        step()
    sync()
    started = time.perf_counter()
    losses = [step() for _ in range(steps)]
    sync()
    seconds = time.perf_counter() - started
    tokens = batch * length * steps
    # Matmul FLOPs per token: forward 2P; backward 2P for activation gradients plus 2P for weight
    # gradients only when every weight trains; gradient checkpointing repeats the forward.
    per_token = 2 * total_params + 2 * total_params + (2 * total_params if method == "full" else 0)
    if checkpointing:
        per_token += 2 * total_params
    flops = per_token * tokens / seconds
    result = {"check": name, "method": method, "precision": precision, "gradient_checkpointing": checkpointing,
              "quantized_4bit": quantize, "model": source, "params": total_params, "trainable_params": n_trainable,
              "batch": batch, "length": length, "steps": steps, "seconds": round(seconds, 3),
              "tokens_per_second": round(tokens / seconds, 1), "achieved_tflops": round(flops / 1e12, 3),
              "mfu": round(flops / peak, 4) if peak else None, "final_loss": round(losses[-1], 4)}
    if device.startswith("cuda"):
        result["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated() - before)
    result["estimate"] = app_estimate(model, device, method, precision, checkpointing, batch, length, quantize)
    model = optimizer = None  # free the memory before the next check
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return result


def app_estimate(model, device, method, precision, checkpointing, batch, length, quantize) -> dict:
    """The app's own memory prediction for this run (core.estimate), or why it was skipped."""
    try:
        from core.config import RunConfig
        from core.estimate import architecture_from_model, estimate
    except Exception as exc:  # noqa: BLE001 - core needs pyyaml; report instead of failing
        return {"skipped": f"core.estimate does not import: {type(exc).__name__}: {exc}"[:200]}
    try:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        arch = architecture_from_model(base)
        cfg = RunConfig()
        cfg.method.method = "qlora" if quantize else method
        if method == "lora":
            cfg.method.lora_r = 16
            cfg.method.target_modules = "all-linear"
        cfg.training.batch_size = batch
        cfg.training.max_length = length
        cfg.training.gradient_checkpointing = checkpointing
        cfg.training.precision = precision
        cfg.training.device = device
        est = estimate(cfg, model_info=arch, device=device, measure_device=False)
        return {"total_bytes": int(est.total_bytes), "parts": {p.name: int(p.bytes) for p in est.parts}}
    except Exception as exc:  # noqa: BLE001 - an estimate failure is a finding, not a crash
        return {"skipped": f"{type(exc).__name__}: {exc}"[:200]}


def chat_check(*, device: str, smoke: bool, precision: str) -> dict:
    """Time to first token and decode speed of ``generate`` (greedy, KV cache)."""
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model, source = build_model(smoke, dtype, device)
    model.eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 64), generator=torch.Generator().manual_seed(1)).to(device)
    mask = torch.ones_like(ids)
    new_tokens = 8 if smoke else 64

    def timed(n: int) -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                           pad_token_id=0)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - started

    timed(2)  # warm-up (kernels, allocator)
    ttft = min(timed(1) for _ in range(3))
    total = timed(new_tokens)
    return {"check": "chat", "precision": precision, "model": source, "prompt_tokens": 64,
            "ttft_seconds": round(ttft, 4), "new_tokens": new_tokens,
            "decode_tokens_per_second": round((new_tokens - 1) / max(total - ttft, 1e-9), 1)}


def _ddp_worker(rank: int, world: int, port: int, smoke: bool, steps: int, queue) -> None:
    import torch
    import torch.distributed as dist
    from peft import LoraConfig, get_peft_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = torch.cuda.is_available() and torch.cuda.device_count() >= world and not smoke
    device = f"cuda:{rank}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    try:
        model, _ = build_model(smoke, torch.bfloat16 if cuda else torch.float32, device)
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, task_type="CAUSAL_LM",
                                                 target_modules="all-linear"))
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank] if cuda else None)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        batch, length = (2, 32) if smoke else (8, 512)
        generator = torch.Generator().manual_seed(rank)
        started = None
        for i in range(steps + 1):
            if i == 1:
                if cuda:
                    torch.cuda.synchronize()
                started = time.perf_counter()
            ids = torch.randint(0, model.module.config.vocab_size, (batch, length), generator=generator).to(device)
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        # Every process must hold the same adapter after the all-reduced steps.
        first = next(p for p in model.parameters() if p.requires_grad).detach().float().sum()
        gathered = [torch.zeros_like(first) for _ in range(world)]
        dist.all_gather(gathered, first)
        if rank == 0:
            queue.put({"check": "2-process LoRA (DDP)", "backend": "nccl" if cuda else "gloo", "processes": world,
                       "steps": steps, "seconds": round(seconds, 3),
                       "tokens_per_second": round(world * batch * length * steps / seconds, 1),
                       "replicas_in_sync": bool(all(torch.equal(g, gathered[0]) for g in gathered))})
    finally:
        dist.destroy_process_group()


def ddp_check(*, smoke: bool, steps: int) -> dict:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.start_processes(_ddp_worker, args=(2, port, smoke, steps, queue), nprocs=2, join=True, start_method="spawn")
    return queue.get(timeout=30)


def run_checks(device: str, smoke: bool) -> dict:
    import torch

    report: dict = {"device": device, "smoke": smoke, "python": platform.python_version(), "versions": {},
                    "checks": [], "skipped": []}
    for name in ("torch", "transformers", "peft", "accelerate", "tokenizers", "safetensors", "bitsandbytes"):
        module, error = optional(name)
        report["versions"][name] = getattr(module, "__version__", "?") if module else None
        if error and name != "bitsandbytes":
            report["skipped"].append({"check": "all", "missing": name, "why": error})
    cuda = device.startswith("cuda")
    name = torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu"
    peak = bf16_peak(name) if cuda else None
    report.update(device_name=name, bf16_peak_flops=peak if peak else "unknown",
                  gpus=torch.cuda.device_count() if torch.cuda.is_available() else 0)

    def attempt(label: str, fn, **kwargs) -> None:
        started = time.perf_counter()
        try:
            result = fn(**kwargs)
        except Exception as exc:  # noqa: BLE001 - one failing check must not hide the others
            result = {"check": label, "error": f"{type(exc).__name__}: {exc}"[:300]}
        result["wall_seconds"] = round(time.perf_counter() - started, 2)
        report["checks"].append(result)
        print(f"  {label}: {'failed' if 'error' in result else 'done'} in {result['wall_seconds']} s", file=sys.stderr)

    if smoke:
        shape = dict(batch=2, length=32, steps=2)
        precision = "fp32"
    else:
        shape = dict(batch=8, length=512, steps=10)
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    common = dict(device=device, smoke=smoke, peak=peak, **shape)
    for method in ("lora", "full"):
        for checkpointing in (False, True):
            label = f"{method} {precision}{' +ckpt' if checkpointing else ''}"
            attempt(label, lambda label=label, **kw: train_check(label, **kw), method=method, precision=precision,
                    checkpointing=checkpointing, **common)
    if cuda:
        attempt("lora fp16 (GradScaler)", lambda **kw: train_check("lora fp16 (GradScaler)", **kw), method="lora",
                precision="fp16", checkpointing=False, **common)
        bnb, error = optional("bitsandbytes")
        if bnb is None:
            report["skipped"].append({"check": "qlora 4-bit", "missing": "bitsandbytes", "why": error})
        else:
            attempt("qlora 4-bit bf16 +ckpt", lambda **kw: train_check("qlora 4-bit bf16 +ckpt", **kw),
                    method="lora", precision="bf16", checkpointing=True, quantize=True, **common)
    else:
        report["skipped"].append({"check": "fp16 (GradScaler)", "missing": "CUDA", "why": "fp16 autocast needs a GPU"})
        report["skipped"].append({"check": "qlora 4-bit", "missing": "CUDA", "why": "bitsandbytes 4-bit needs a GPU"})
    attempt("chat", chat_check, device=device, smoke=smoke, precision=precision)
    if report["gpus"] >= 2:
        attempt("2-process LoRA (DDP)", ddp_check, smoke=False, steps=10)
    else:
        report["skipped"].append({"check": "2-process LoRA (DDP)", "missing": "2 GPUs",
                                  "why": f"{report['gpus']} GPU(s) visible"})
    return report


def _gib(value) -> str:
    return f"{value / 2**30:.2f}" if isinstance(value, (int, float)) else "-"


def table(report: dict) -> str:
    peak = report["bf16_peak_flops"]
    peak_text = peak if isinstance(peak, str) else f"{peak / 1e12:.0f} TFLOP/s"
    lines = [f"GPU check on {report['device_name']} ({report['device']}), bf16 peak {peak_text}",
             f"{'check':<26} {'tok/s':>10} {'TFLOP/s':>8} {'MFU':>6} {'peak GiB':>9} {'est GiB':>8} {'note':<30}"]
    for r in report["checks"]:
        if "error" in r:
            lines.append(f"{r['check']:<26} {'error: ' + r['error'][:70]}")
            continue
        if r["check"] == "chat":
            lines.append(f"{'chat':<26} {r['decode_tokens_per_second']:>10} {'':>8} {'':>6} {'':>9} {'':>8} "
                         f"TTFT {r['ttft_seconds'] * 1000:.1f} ms")
            continue
        mfu = f"{r['mfu'] * 100:.1f}%" if r.get("mfu") is not None else "-"
        est = r.get("estimate", {}).get("total_bytes")
        lines.append(f"{r['check']:<26} {r['tokens_per_second']:>10} {r.get('achieved_tflops', ''):>8} {mfu:>6} "
                     f"{_gib(r.get('cuda_peak_bytes')):>9} {_gib(est):>8} loss {r.get('final_loss', '')}")
    for s in report["skipped"]:
        lines.append(f"skipped {s['check']}: needs {s['missing']} ({s['why']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cuda, cuda:N or cpu")
    parser.add_argument("--out", default=None, help="write the results as JSON to this file")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    missing = [name for name in ("torch", "transformers", "peft") if optional(name)[0] is None]
    if missing:
        print(f"cannot run: {', '.join(missing)} missing", file=sys.stderr)
        return 2
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device visible to torch; run with --device cpu for the smoke check", file=sys.stderr)
        return 2
    if device == "cuda":
        device = "cuda:0"
    report = run_checks(device, smoke=device == "cpu")
    print(table(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 1 if any("error" in c for c in report["checks"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
