"""The app against LLaMA-Factory on identical work: ``python -m bench --only peer`` (or ``python -m bench.peer_bench``).

Both tools train the bundled SmolLM2-135M-Instruct (the same converted folder) on the same trivia question/answer
pairs with the model's chat template, answers only trained, batch 8, cutoff 128 tokens, 30 optimizer steps, no
evaluation, no checkpoint until the end, each through its own command line:

- the app: ``python main.py train ...`` (this checkout, this virtual environment);
- LLaMA-Factory 0.9.5: ``llamafactory-cli train config.yaml`` in its own virtual environment, created by
  :func:`ensure_llamafactory` if missing (``--peer-venv`` / ``FTS_PEER_VENV`` to use another one).

Three workloads: LoRA r=8 on q_proj/v_proj, full fine-tuning, LoRA r=16 on every projection. For each tool and
workload, from one run: trained (non-padding) tokens per second of the training loop (each Trainer's own count,
``include_num_input_tokens_seen="non_padding"``, over its own training-loop seconds), the whole command's wall time,
and its peak RSS (``RUSAGE_CHILDREN`` of a fresh worker process: the largest process the command started).
Every other setting is each tool's own default (the optimizer, the data loader, ...): that is what a user gets.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEER_VERSION = "0.9.5"
DEFAULT_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "finetune-studio-bench" / "lf-venv"
STEPS, BATCH, CUTOFF = 30, 8, 128
N_EXAMPLES = STEPS * BATCH  # exactly one epoch: both tools train on every pair once

WORKLOADS = {
    "lora_qv_r8": dict(method="lora", r=8, alpha=16, targets=["q_proj", "v_proj"], lr=2e-4),
    "full": dict(method="full", lr=2e-5),
    "lora_all_r16": dict(method="lora", r=16, alpha=32,
                         targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                         lr=2e-4),
}

# LLaMA-Factory's requirements (its wheel's metadata), pinned to what installs here, with the app's torch build:
# torchaudio and torchvision are left out (multimodal models only; torchaudio has no build for torch 2.13, and the
# registry's torchvision is built against CUDA torch: with the CPU build every import of transformers fails on
# "operator torchvision::nms does not exist"), and llamafactory goes in with --no-deps. LLaMA-Factory imports
# torchaudio at start-up anyway: it gets an import stub (_stub_torchaudio) that text training never touches.
PEER_REQUIREMENTS = [
    "torch==2.13.0", "accelerate>=1.3.0,<=1.11.0", "av>=10.0.0,<=16.0.0",
    "datasets>=2.16.0,<=4.0.0", "einops", "fastapi", "fire", "gradio>=4.38.0,<=5.50.0", "matplotlib>=3.7.0",
    "modelscope", "numpy", "omegaconf", "packaging", "pandas", "peft>=0.18.0,<=0.18.1", "protobuf", "pydantic",
    "pyyaml", "safetensors", "scipy", "sentencepiece", "sse-starlette", "tiktoken", "torchdata>=0.10.0,<=0.11.0",
    "transformers>=4.55.0,<=5.6.0,!=4.52.0,!=4.57.0", "trl>=0.18.0,<=0.24.0", "tyro<0.9.0", "uvicorn",
]


# ------------------------------------------------------------------------------------------ the peer's venv
def ensure_llamafactory(venv: str | os.PathLike | None = None) -> dict:
    """The peer's virtual environment (created and filled if missing); its CLI path and package versions."""
    venv = Path(venv or os.environ.get("FTS_PEER_VENV") or DEFAULT_VENV)
    python, cli = venv / "bin" / "python", venv / "bin" / "llamafactory-cli"
    if not cli.exists():
        print(f"    creating {venv} (LLaMA-Factory {PEER_VERSION} and its requirements; a few minutes)", flush=True)
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q"]
        subprocess.run(pip + PEER_REQUIREMENTS, check=True)
        subprocess.run(pip + ["--no-deps", f"llamafactory=={PEER_VERSION}"], check=True)
    _stub_torchaudio(venv)
    versions = subprocess.run(
        [str(python), "-c", "import json; from importlib.metadata import version as v; print(json.dumps("
         "{p: v(p) for p in ('llamafactory', 'torch', 'transformers', 'peft', 'accelerate', 'datasets')}))"],
        capture_output=True, text=True, check=True).stdout
    return {"venv": str(venv), "cli": str(cli), "versions": json.loads(versions)}


TORCHAUDIO_STUB = '''"""Stand-in written by FineTune Studio's bench: no torchaudio build loads with the CPU torch 2.13 used for
both tools, and LLaMA-Factory imports it at start-up only for audio models (llamafactory/data/mm_plugin.py).
Text fine-tuning never calls it; any use says so."""


def __getattr__(name):
    raise ImportError(f"torchaudio.{name}: torchaudio is not installed in this benchmark environment")
'''


def _stub_torchaudio(venv: Path) -> None:
    """LLaMA-Factory 0.9.5 imports torchaudio unconditionally (audio plugins); give it an import stub when the
    real one is missing or does not load (text training never uses it)."""
    python = venv / "bin" / "python"
    if subprocess.run([str(python), "-c", "import torchaudio.functional"], capture_output=True).returncode == 0:
        return
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    folder = Path(site) / "torchaudio"
    if (folder / "lib").exists():  # a real but unloadable build: leave it alone, say so
        raise SystemExit(f"{folder}: torchaudio is installed but does not load with this torch; uninstall it")
    folder.mkdir(exist_ok=True)
    (folder / "__init__.py").write_text(TORCHAUDIO_STUB, encoding="utf-8")


# ------------------------------------------------------------------------------------------ data
def write_data(folder: str) -> dict:
    """The same N_EXAMPLES trivia pairs as the app's JSONL and as LLaMA-Factory's alpaca dataset."""
    from core.config import DataConfig
    from core.data import load_records

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _, _, records, _ = load_records(DataConfig(source="sample:trivia"))
    pairs = [(r["question"], r["answer"]) for r in records[:N_EXAMPLES]]
    if len(pairs) < N_EXAMPLES:
        raise SystemExit(f"sample:trivia has {len(pairs)} pairs, {N_EXAMPLES} needed")
    with open(folder / "trivia.jsonl", "w", encoding="utf-8") as handle:
        for question, answer in pairs:
            handle.write(json.dumps({"question": question, "answer": answer}) + "\n")
    (folder / "trivia_alpaca.json").write_text(json.dumps(
        [{"instruction": q, "input": "", "output": a} for q, a in pairs], ensure_ascii=False), encoding="utf-8")
    (folder / "dataset_info.json").write_text(json.dumps({"trivia": {"file_name": "trivia_alpaca.json"}}),
                                              encoding="utf-8")
    return {"examples": len(pairs), "folder": str(folder)}


# ------------------------------------------------------------------------------------------ one run
def _timed(cmd: list[str], cwd: str, env: dict, log: Path) -> dict:
    """Run ``cmd``; wall seconds and the peak RSS of the largest process it started (this worker is fresh)."""
    started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    peak = int(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) * 1024
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed (exit {proc.returncode}); last lines of {log}:\n"
                         + "\n".join(log.read_text(errors="replace").splitlines()[-30:]))
    return {"wall_seconds": round(wall, 1), "peak_rss_bytes": peak}


def run_app(workload: str, data_folder: str, workdir: str, threads: int | None = None,
            checkpointing: bool = False, precision: str = "fp32") -> dict:
    """``python main.py train`` on the workload; tokens/s from its metrics.jsonl (HF's non-padding token count).
    ``checkpointing``: gradient checkpointing on (off by default in the app; on by default in LLaMA-Factory)."""
    spec = WORKLOADS[workload]
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(ROOT / "main.py"), "train", "--model", "bundled:SmolLM2-135M-Instruct",
           "--data", str(Path(data_folder) / "trivia.jsonl"), "--method", spec["method"],
           "--max-steps", str(STEPS), "--batch-size", str(BATCH), "--learning-rate", str(spec["lr"]),
           "--output", str(workdir), "--name", "peer",
           "--set", "data.template=chat",  # the model's chat template, as LLaMA-Factory's smollm2 template
           "--set", f"training.max_length={CUTOFF}", "--set", "training.gradient_accumulation=1",
           "--set", "data.test_fraction=0", "--set", "training.logging_steps=10",
           "--set", f"training.save_steps={STEPS}", "--set", "training.eval_before_training=false"]
    if checkpointing:
        cmd += ["--set", "training.gradient_checkpointing=true"]
    cmd += ["--set", f"training.precision={precision}"]
    if spec["method"] == "lora":
        cmd += ["--set", f"method.lora_r={spec['r']}", "--set", f"method.lora_alpha={spec['alpha']}",
                "--set", f"method.target_modules={','.join(spec['targets'])}"]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    result = _timed(cmd, str(ROOT), env, workdir / "command.log")
    lines = [json.loads(line) for line in (workdir / "peer" / "metrics.jsonl").read_text().splitlines() if line]
    train = [line for line in lines if line.get("kind") == "train"]
    last = train[-1]
    result.update(tool="app", workload=workload, checkpointing=checkpointing, precision=precision, steps=last["step"],
                  tokens=last["tokens_trained"],
                  train_seconds=round(last["elapsed_seconds"], 1))
    result["tokens_per_second"] = round(result["tokens"] / last["elapsed_seconds"], 1)
    return result


def run_peer(workload: str, data_folder: str, workdir: str, cli: str, threads: int | None = None,
             precision: str = "fp32") -> dict:
    """``llamafactory-cli train`` on the workload; tokens/s from its trainer_state/train_results."""
    from core.models import ensure_bundled_model

    spec = WORKLOADS[workload]
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "output"
    config = {
        "model_name_or_path": str(ensure_bundled_model()), "stage": "sft", "do_train": True,
        "finetuning_type": spec["method"], "dataset": "trivia", "dataset_dir": str(data_folder),
        "template": "smollm2", "cutoff_len": CUTOFF, "per_device_train_batch_size": BATCH,
        "gradient_accumulation_steps": 1, "max_steps": STEPS, "learning_rate": spec["lr"], "logging_steps": 10,
        "save_strategy": "no", "report_to": "none", "output_dir": str(out), "overwrite_output_dir": True,
        "overwrite_cache": True, "include_num_input_tokens_seen": "non_padding", "bf16": precision == "bf16", "fp16": False,
        "plot_loss": False, "val_size": 0.0,
    }
    if precision == "bf16":
        config["use_cpu"] = True  # the Trainer refuses bf16 without a GPU unless told it runs on the CPU
    if spec["method"] == "lora":
        config.update(lora_rank=spec["r"], lora_alpha=spec["alpha"], lora_dropout=0.0,
                      lora_target=",".join(spec["targets"]))
    import yaml

    path = workdir / "config.yaml"  # llamafactory-cli's JSON branch is broken in 0.9.5 (json.load of a Path)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    env.update(TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", DISABLE_VERSION_CHECK="1",
               PATH=f"{Path(cli).parent}:{os.environ.get('PATH', '')}")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    result = _timed([cli, "train", str(path)], str(workdir), env, workdir / "command.log")
    state = json.loads((out / "trainer_state.json").read_text())
    runtime = json.loads((out / "train_results.json").read_text())["train_runtime"]
    tokens = int(state.get("num_input_tokens_seen") or max(
        (e.get("num_input_tokens_seen", 0) for e in state.get("log_history", [])), default=0))
    result.update(tool="llamafactory", workload=workload, precision=precision, steps=state["global_step"], tokens=tokens,
                  train_seconds=round(runtime, 1), tokens_per_second=round(tokens / runtime, 1))
    return result


# ------------------------------------------------------------------------------------------ the section
def section(run_worker, work: Path, venv: str | None = None, precisions: tuple[str, ...] | None = None) -> dict:
    """Both tools on every workload, interleaved (app, peer, app, peer, ...) so drift in the machine's load
    hits both alike; the ratios and the targets. ``precisions``: fp32, plus bf16 (both tools) where the CPU has
    native bf16 instructions (core.devices.cpu_bf16_instructions)."""
    from core.devices import cpu_bf16_instructions

    if precisions is None:
        precisions = ("fp32", "bf16") if cpu_bf16_instructions() else ("fp32",)
    peer = ensure_llamafactory(venv)
    data = run_worker("peer_bench:write_data", folder=str(work / "peer-data"))
    rows = []
    for workload, precision in ((w, p) for p in precisions for w in WORKLOADS):
        tag = workload if precision == "fp32" else f"{workload}-{precision}"
        app = run_worker("peer_bench:run_app", timeout=1800, workload=workload, data_folder=data["folder"],
                         workdir=str(work / f"peer-app-{tag}"), precision=precision)
        other = run_worker("peer_bench:run_peer", timeout=1800, workload=workload, data_folder=data["folder"],
                           workdir=str(work / f"peer-lf-{tag}"), cli=peer["cli"], precision=precision)
        row = {"workload": workload if precision == "fp32" else f"{workload}, both {precision}", "precision": precision,
               "app": app, "llamafactory": other}
        if WORKLOADS[workload]["method"] == "lora" and precision == "fp32":
            # The memory lever LLaMA-Factory uses by default: recompute activations in the backward pass.
            row["app_checkpointing"] = run_worker(
                "peer_bench:run_app", timeout=1800, workload=workload, data_folder=data["folder"],
                workdir=str(work / f"peer-app-gc-{workload}"), checkpointing=True)
        for key in ("app", "app_checkpointing"):
            mine = row.get(key)
            if mine and "error" not in mine and "error" not in other:
                suffix = "" if key == "app" else "_checkpointing"
                row["tokens_per_second_ratio" + suffix] = round(mine["tokens_per_second"] / other["tokens_per_second"],
                                                                2)
                row["wall_ratio" + suffix] = round(other["wall_seconds"] / mine["wall_seconds"], 2)
                row["rss_ratio" + suffix] = round(mine["peak_rss_bytes"] / other["peak_rss_bytes"], 2)
        rows.append(row)
    return {"peer": peer["versions"], "venv": peer["venv"], "examples": data.get("examples"), "rows": rows,
            "targets": {"tokens_per_second_ratio": 2.0, "lora_peak_rss_gib": 1.5}}


def markdown(result: dict) -> list[str]:
    """The section's table for latest.md / PERFORMANCE.md."""
    if "rows" not in result:
        return [f"Peer comparison failed: {result.get('error', '?')[-500:]}"]
    versions = result["peer"]
    lines = [f"LLaMA-Factory {versions.get('llamafactory')} (transformers {versions.get('transformers')}, peft "
             f"{versions.get('peft')}, torch {versions.get('torch')}) against the app, {result['examples']} trivia "
             f"pairs, batch {BATCH}, cutoff {CUTOFF}, {STEPS} steps, no evaluation.", "",
             "| workload | app tokens/s | LLaMA-Factory tokens/s | ratio (≥ 2×) | app wall | LF wall | app peak RSS "
             "| LF peak RSS |", "|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        other = row["llamafactory"]
        for key, label in (("app", ""), ("app_checkpointing", " (app with gradient checkpointing)")):
            app = row.get(key)
            if app is None:
                continue
            suffix = "" if key == "app" else "_checkpointing"
            if "error" in app or "error" in other:
                lines.append(f"| {row['workload']}{label} | failed: "
                             f"{(app.get('error') or other.get('error'))[-200:]!r} |")
                continue
            lines.append(
                f"| {row['workload']}{label} | {app['tokens_per_second']:.0f} ({app['tokens']} tokens) | "
                f"{other['tokens_per_second']:.0f} ({other['tokens']} tokens) | "
                f"{row['tokens_per_second_ratio' + suffix]:.2f}× | {app['wall_seconds']:.0f} s | "
                f"{other['wall_seconds']:.0f} s | {app['peak_rss_bytes'] / 2**30:.2f} GiB | "
                f"{other['peak_rss_bytes'] / 2**30:.2f} GiB |")
    lines += ["", "LLaMA-Factory runs with its defaults, which include gradient checkpointing; the app's default "
              "does not checkpoint (the rows marked 'with gradient checkpointing' turn it on)."]
    return lines


if __name__ == "__main__":
    import argparse
    import tempfile

    sys.path.insert(0, str(ROOT))
    from bench.run import run_worker as _run_worker

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-venv", help="LLaMA-Factory's virtual environment (created if missing)")
    parser.add_argument("--only", help="comma-separated workloads: " + ",".join(WORKLOADS))
    parser.add_argument("--precisions", help="comma-separated: fp32,bf16 (default: bf16 too where the CPU has it)")
    args = parser.parse_args()
    if args.only:
        WORKLOADS = {k: v for k, v in WORKLOADS.items() if k in args.only.split(",")}  # noqa: N816
    outcome = section(_run_worker, Path(tempfile.mkdtemp(prefix="studio-peer-")), args.peer_venv,
                      tuple(args.precisions.split(",")) if args.precisions else None)
    print(json.dumps(outcome, indent=2))
    print("\n".join(markdown(outcome)))
