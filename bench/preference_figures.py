"""Preference tuning (DPO) and the forgetting check on the bundled model, end to end, with real numbers.

    .venv/bin/python -m bench.preference_figures [--out bench/results] [--workspace DIR] [--reuse]

On the bundled SmolLM2-135M-Instruct (CPU), in a workspace folder of its own (kept, printed at the end):

1. an SFT run: ``python main.py train --config examples/quickstart.yaml`` (LoRA, trivia sample);
2. scripted blind A/B votes on that run's held-out questions: the reference answer is "chosen", the SFT
   model's own greedy answer "rejected" (pairs where they are the same are skipped), written through the
   app's votes store (core.preference.VoteStore), so the file is what Chat's blind A/B mode writes;
3. a DPO run from the SFT run's adapter on those votes: ``python main.py train --method dpo --data
   <votes.jsonl> --start-from <SFT run>`` (its own held-out split of the votes is never trained on);
4. the figures: the run's logged reward accuracy and margin (training and held-out, first and last), and
   on the held-out pairs the chosen-minus-rejected log-prob margin of the SFT model and of the DPO model
   (core.preference.reward_accuracy), pair by pair;
5. the DPO run's final/ adapter loaded by plain peft in a fresh process, answering a question;
6. the forgetting check (core.forgetting) of the SFT run and of a deliberately over-trained run.

Writes ``<out>/preference.json`` and ``<out>/preference.md``. Takes about 15 minutes on 2 CPU cores.
Trainings run as CLI subprocesses (the commands a user types), one torch process at a time.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
STARTED = time.monotonic()

# DPO on the votes: LoRA from the SFT adapter, a few epochs over ~15 pairs (minutes on 2 cores).
DPO_STEPS = 24
DPO_LEARNING_RATE = 5e-4
DPO_BATCH = 4
DPO_HELD_OUT = 0.35  # of the votes: never trained on, the held-out pairs the figures are measured on
DPO_BETA = 0.1
# The over-trained run: 20 trivia examples, a learning rate far above the quickstart's, many epochs, and
# the last step kept (not the best checkpoint), so that general ability really suffers.
OVER_EXAMPLES = 20
OVER_LEARNING_RATE = 5e-3
OVER_EPOCHS = 25
OVER_BATCH = 4


def log(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.0f} s] {message}", flush=True)


def run_cli(arguments: list[str]) -> None:
    """``python main.py <arguments>`` in a subprocess, its output shown indented; fails on a non-zero exit."""
    command = [sys.executable, str(ROOT / "main.py"), *arguments]
    log("$ python main.py " + " ".join(arguments))
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**__import__("os").environ, "TOKENIZERS_PARALLELISM": "false"})
    assert process.stdout is not None
    for line in process.stdout:
        print("    | " + line.rstrip(), flush=True)
    if process.wait() != 0:
        raise SystemExit(f"`python main.py {' '.join(arguments)}` failed with exit status {process.returncode}")


def finished(run_dir: Path) -> bool:
    from core.runs import read_status

    return run_dir.is_dir() and read_status(run_dir).get("state") == "finished" and (run_dir / "final").is_dir()


def train_run(workspace: Path, name: str, arguments: list[str], reuse: bool) -> Path:
    run_dir = workspace / name
    if reuse and finished(run_dir):
        log(f"reusing the finished run {run_dir}")
        return run_dir
    if run_dir.exists():
        raise SystemExit(f"{run_dir} exists: pass --reuse to use it or choose another --workspace")
    started = time.monotonic()
    run_cli(["train", *arguments, "--output", str(workspace), "--name", name])
    log(f"{name}: trained in {time.monotonic() - started:.0f} s")
    return run_dir


def free_memory() -> None:
    gc.collect()


# --------------------------------------------------------------------------------------------- votes
def write_votes(sft_run: Path, workspace: Path) -> dict:
    """Scripted A/B votes on the SFT run's held-out questions, through the app's votes store."""
    from core.config import GenerationConfig
    from core.data import load_records, training_split
    from core.evaluation import normalize_answer
    from core.generation import ModelSession
    from core.preference import PreferenceRecord, VoteStore, votes_path
    from core.runs import load_run_config

    cfg = load_run_config(sft_run)
    _, _, records, rows = load_records(cfg.data)
    _, held_out, _ = training_split(len(records), cfg.data)
    questions = [records[i] for i in held_out]
    log(f"answering the {len(questions)} held-out questions of {sft_run.name} with the SFT model (greedy)")
    session = ModelSession(sft_run)
    gen_cfg = GenerationConfig(**{**dataclasses.asdict(cfg.generation), "do_sample": False})
    answers = session.generate_batch([{"question": r["question"], "answer": ""} for r in questions], gen_cfg,
                                     use_adapter=True)
    base_name = session.resolved.base_model.name_or_path
    del session
    free_memory()
    store = VoteStore(votes_path(workspace))
    if store.path.exists():
        store.path.unlink()
    shuffle = random.Random(0)  # which side shows the reference answer, as Chat's blind mode shuffles them
    same, written = [], []
    for index, record, answer in zip(held_out, questions, answers, strict=True):
        reference, generated = record["answer"].strip(), answer.text.strip()
        if not generated or normalize_answer(reference) == normalize_answer(generated):
            same.append(rows[index])
            continue
        reference_first = shuffle.random() < 0.5
        a, b = (reference, generated) if reference_first else (generated, reference)
        a_model, b_model = ("reference answer", "fine-tuned") if reference_first else ("fine-tuned",
                                                                                     "reference answer")
        store.add(PreferenceRecord(
            prompt=record["question"], a=a, b=b, a_model=a_model, b_model=b_model,
            vote="a" if reference_first else "b",
            models={"run": str(sft_run), "checkpoint": "final", "fine-tuned": f"{sft_run} (final)",
                    "base": base_name, "reference answer": f"{cfg.data.source} row {rows[index]}"},
            settings=dataclasses.asdict(gen_cfg),
            note="scripted by bench.preference_figures: the reference answer is preferred to the SFT model's"))
        written.append({"row": rows[index], "question": record["question"], "chosen": reference,
                        "rejected": generated})
    log(f"{len(written)} votes written to {store.path} ({len(same)} held-out questions skipped: the SFT answer "
        "equals the reference)")
    return {"path": str(store.path), "held_out_questions": len(questions), "votes": len(written),
            "skipped_same_answer": len(same), "examples": written[:5]}


# --------------------------------------------------------------------------------------------- figures
def logged_preference(run_dir: Path) -> dict:
    """First and last logged DPO numbers (training and held-out) from metrics.jsonl."""
    from core.runs import read_metrics

    lines = [r for r in read_metrics(run_dir) if r.get("kind") == "preference"]
    keys = ("step", "loss", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward")

    def pick(record: dict) -> dict:
        return {k: record.get(k) for k in keys}

    result = {}
    for split in ("train", "eval"):
        chosen = [r for r in lines if r.get("split") == split]
        if chosen:
            result[split] = {"first": pick(chosen[0]), "last": pick(chosen[-1]), "lines": len(chosen)}
    return result


def held_out_margins(sft_run: Path, dpo_run: Path) -> dict:
    """Chosen-minus-rejected log-prob margins of the SFT and the DPO model on the DPO run's own held-out
    pairs (and, for contrast, on its training pairs), pair by pair."""
    from core.data import split_indices
    from core.preference import load_preference_pairs, reward_accuracy
    from core.runs import load_run_config

    cfg = load_run_config(dpo_run)
    pairs, _, _ = load_preference_pairs(cfg.data)
    train_idx, test_idx = split_indices(len(pairs), cfg.data.test_fraction, cfg.data.split_seed)
    if cfg.training.max_eval_examples > 0:
        test_idx = test_idx[: cfg.training.max_eval_examples]
    result = {}
    for label, indices in (("held_out", test_idx), ("training", train_idx)):
        chosen = [pairs[i] for i in indices]
        log(f"log-prob margins of the SFT and the DPO model on {len(chosen)} {label.replace('_', '-')} pairs")
        # Each run's numbers against the base model (the adapter switched off): margin_tuned is the model's
        # own log p(chosen) - log p(rejected).
        sft = reward_accuracy(sft_run, chosen, beta=cfg.method.dpo_beta)
        free_memory()
        dpo = reward_accuracy(dpo_run, chosen, beta=cfg.method.dpo_beta)
        free_memory()
        sft_margins = [row["margin_tuned"] for row in sft["rows"]]
        dpo_margins = [row["margin_tuned"] for row in dpo["rows"]]
        base_margins = [row["margin_reference"] for row in dpo["rows"]]
        n = max(1, len(chosen))
        # The DPO reward against its reference (the SFT adapter): beta x (DPO margin - SFT margin) per pair.
        rewards = [cfg.method.dpo_beta * (d - s) for d, s in zip(dpo_margins, sft_margins, strict=True)]
        result[label] = {
            "pairs": len(chosen),
            "rows": [pairs[i].row for i in indices],
            "base_logp_margin": sum(base_margins) / n,
            "sft_logp_margin": sum(sft_margins) / n,
            "dpo_logp_margin": sum(dpo_margins) / n,
            "base_prefers_chosen": sum(m > 0 for m in base_margins),
            "sft_prefers_chosen": sum(m > 0 for m in sft_margins),
            "dpo_prefers_chosen": sum(m > 0 for m in dpo_margins),
            "reward_accuracy_vs_sft": sum(r > 0 for r in rewards) / n,
            "reward_margin_vs_sft": sum(rewards) / n,
            "margin_grew": sum(d > s for d, s in zip(dpo_margins, sft_margins, strict=True)),
            "per_pair": [{"row": pairs[i].row, "sft": s, "dpo": d} for i, s, d in
                         zip(indices, sft_margins, dpo_margins, strict=True)],
        }
    return result


PEFT_CHECK = r"""
import sys, torch
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer
final = sys.argv[1]
model = AutoPeftModelForCausalLM.from_pretrained(final)
tokenizer = AutoTokenizer.from_pretrained(final)
text = tokenizer.apply_chat_template([{"role": "user", "content": sys.argv[2]}], tokenize=False,
                                     add_generation_prompt=True)
inputs = tokenizer(text, return_tensors="pt")
with torch.inference_mode():
    out = model.generate(**inputs, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.pad_token_id)
print("ADAPTERS", list(model.peft_config))
print("BASE", model.peft_config["default"].base_model_name_or_path)
print("ANSWER", tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
"""


def plain_peft_check(dpo_run: Path, question: str) -> dict:
    """Load final/ with peft's AutoPeftModelForCausalLM in a fresh process (no app code) and answer."""
    log("loading the DPO run's final/ with plain peft in a fresh process")
    done = subprocess.run([sys.executable, "-c", PEFT_CHECK, str(dpo_run / "final"), question], cwd=tempfile.gettempdir(),
                          capture_output=True, text=True, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if line.split(" ", 1)[0] in
                 ("ADAPTERS", "BASE", "ANSWER") and " " in line)
    result = {"ok": done.returncode == 0 and "ANSWER" in lines, "question": question,
              "answer": lines.get("ANSWER"), "adapters": lines.get("ADAPTERS"), "base": lines.get("BASE")}
    if not result["ok"]:
        result["error"] = (done.stderr or done.stdout)[-1500:]
    log(f"plain peft: {'loaded' if result['ok'] else 'FAILED'}; answer to {question!r}: {result['answer']!r}")
    return result


def forgetting(run_dir: Path) -> dict:
    from core.forgetting import check_forgetting

    log(f"forgetting check of {run_dir.name} (30 general probes, base vs fine-tuned)")
    report = check_forgetting(run_dir)
    free_memory()
    log(f"{run_dir.name}: {report.headline} (loss {report.base_loss:.3f} -> {report.tuned_loss:.3f})")
    answers = [{"question": i.question, "base": i.base_answer, "tuned": i.tuned_answer}
               for i in report.items if i.base_answer is not None][:3]
    return {"base_loss": report.base_loss, "tuned_loss": report.tuned_loss,
            "change_percent": report.change_percent, "verdict": report.verdict, "headline": report.headline,
            "probes": report.n_probes, "answers": answers}


def eval_loss(run_dir: Path) -> dict:
    from core.outcome import summarize_outcome

    outcome = summarize_outcome(run_dir)
    return {"before": outcome.before_loss, "after": outcome.after_loss, "best": outcome.best_loss,
            "headline": outcome.headline, "steps": outcome.global_step}


# --------------------------------------------------------------------------------------------- report
def _f(value, digits: int = 3, sign: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"# Preference tuning and forgetting on the bundled model ({result['date']})", "",
             f"`{result['command']}` — {m['cpus']} CPU cores, torch {m['torch']}, transformers {m['transformers']}, "
             f"peft {m['peft']}, trl {m['trl']}; total {result['seconds']:.0f} s.", ""]
    sft, dpo, votes = result["sft"], result["dpo"], result["votes"]
    lines += ["## Runs", "",
              "| run | what | steps | seconds | held-out loss before → after |", "|---|---|---|---|---|",
              f"| {sft['name']} | SFT, examples/quickstart.yaml (LoRA r16, lr 1e-3) | {sft['loss']['steps']} | "
              f"{sft['seconds']:.0f} | {_f(sft['loss']['before'])} → {_f(sft['loss']['after'])} |",
              f"| {dpo['name']} | DPO from {sft['name']}'s adapter on {votes['votes']} votes "
              f"(lr {dpo['settings']['learning_rate']:g}, beta {dpo['settings']['beta']}, batch "
              f"{dpo['settings']['batch_size']}) | {dpo['loss']['steps']} | {dpo['seconds']:.0f} | "
              f"{_f(dpo['loss']['before'])} → {_f(dpo['loss']['after'])} (DPO loss) |"]
    over = result.get("overtrained")
    if over:
        lines.append(f"| {over['name']} | SFT, {over['settings']['examples']} trivia examples, lr "
                     f"{over['settings']['learning_rate']:g}, {over['settings']['epochs']} epochs, last step kept | "
                     f"{over['loss']['steps']} | {over['seconds']:.0f} | {_f(over['loss']['before'])} → "
                     f"{_f(over['loss']['after'])} |")
    lines += ["", f"Votes: {votes['votes']} scripted A/B votes from the SFT run's {votes['held_out_questions']} "
              f"held-out questions (reference answer chosen, the SFT model's greedy answer rejected; "
              f"{votes['skipped_same_answer']} skipped where they were the same), in `{votes['path']}`.", ""]
    logged = dpo["logged"]
    lines += ["## DPO as logged (metrics.jsonl preference lines; the reference model is the SFT adapter)", "",
              "| split | first step | reward accuracy | reward margin | last step | reward accuracy | reward margin |",
              "|---|---|---|---|---|---|---|"]
    for split, label in (("train", "training batches"), ("eval", "held-out pairs")):
        if split in logged:
            first, last = logged[split]["first"], logged[split]["last"]
            lines.append(f"| {label} | {first['step']} | {_f(first['reward_accuracy'], 2)} | "
                         f"{_f(first['reward_margin'], 3, True)} | {last['step']} | {_f(last['reward_accuracy'], 2)} | "
                         f"{_f(last['reward_margin'], 3, True)} |")
    lines += ["", "(At step 0 the model is its reference, so every reward is 0 and the accuracy 0.)", "",
              "## Chosen-minus-rejected log-prob margin, SFT model vs DPO model (core.preference.reward_accuracy)", "",
              "| pairs | n | base margin | SFT margin | DPO margin | pairs whose margin grew | prefers chosen: "
              "base / SFT / DPO | reward accuracy vs SFT | reward margin vs SFT |",
              "|---|---|---|---|---|---|---|---|---|"]
    for label, name in (("held_out", "held-out (never trained on)"), ("training", "training")):
        h = dpo["margins"][label]
        lines.append(f"| {name} | {h['pairs']} | {_f(h['base_logp_margin'], 2, True)} | "
                     f"{_f(h['sft_logp_margin'], 2, True)} | {_f(h['dpo_logp_margin'], 2, True)} | "
                     f"{h['margin_grew']} of {h['pairs']} | {h['base_prefers_chosen']} / {h['sft_prefers_chosen']} / "
                     f"{h['dpo_prefers_chosen']} | {_f(h['reward_accuracy_vs_sft'], 2)} | "
                     f"{_f(h['reward_margin_vs_sft'], 3, True)} |")
    peft = result["plain_peft"]
    lines += ["", "Plain peft (`AutoPeftModelForCausalLM.from_pretrained(final)` in a fresh process): "
              + (f"loaded (adapters {peft['adapters']}); asked {peft['question']!r} it answered {peft['answer']!r}."
                 if peft["ok"] else f"FAILED: {peft.get('error', '')[-300:]}"), "",
              "## Forgetting check (30 general probes, core.forgetting)", "",
              "| run | base loss | fine-tuned loss | general ability | verdict |", "|---|---|---|---|---|"]
    for key in ("sft", "overtrained"):
        if key in result and result[key].get("forgetting"):
            f = result[key]["forgetting"]
            lines.append(f"| {result[key]['name']} | {f['base_loss']:.3f} | {f['tuned_loss']:.3f} | "
                         f"{f['change_percent']:+.1f} % | {f['verdict']} |")
    return "\n".join(lines) + "\n"


def machine() -> dict:
    import os

    import peft
    import torch
    import transformers
    import trl

    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "trl": trl.__version__}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), help="where preference.json/.md go")
    parser.add_argument("--workspace", default=None, help="folder for the runs and votes (default: a new temporary "
                                                          "folder, kept)")
    parser.add_argument("--reuse", action="store_true", help="reuse finished runs already in --workspace")
    parser.add_argument("--dpo-steps", type=int, default=DPO_STEPS)
    parser.add_argument("--dpo-learning-rate", type=float, default=DPO_LEARNING_RATE)
    parser.add_argument("--over-learning-rate", type=float, default=OVER_LEARNING_RATE)
    parser.add_argument("--over-epochs", type=int, default=OVER_EPOCHS)
    parser.add_argument("--skip-overtrained", action="store_true")
    args = parser.parse_args(argv)
    if not QUICKSTART.is_file():
        raise SystemExit(f"{QUICKSTART} is missing")
    workspace = Path(args.workspace) if args.workspace else Path(tempfile.mkdtemp(prefix="preference-bench-"))
    workspace.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log(f"workspace {workspace}")
    sys.path.insert(0, str(ROOT))
    result: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "workspace": str(workspace),
                    "command": "python -m bench.preference_figures " + " ".join(argv if argv is not None
                                                                                 else sys.argv[1:])}
    result["command"] = result["command"].strip()
    result["machine"] = machine()

    started = time.monotonic()
    sft_run = train_run(workspace, "quickstart-sft", ["--config", str(QUICKSTART)], args.reuse)
    result["sft"] = {"name": sft_run.name, "run": str(sft_run), "seconds": time.monotonic() - started,
                     "loss": eval_loss(sft_run)}

    votes = write_votes(sft_run, workspace)
    result["votes"] = votes

    started = time.monotonic()
    dpo_settings = {"steps": args.dpo_steps, "learning_rate": args.dpo_learning_rate, "batch_size": DPO_BATCH,
                    "beta": DPO_BETA, "held_out_fraction": DPO_HELD_OUT}
    dpo_run = train_run(workspace, "dpo-votes", [
        "--method", "dpo", "--data", votes["path"], "--start-from", str(sft_run), "--beta", str(DPO_BETA),
        "--max-steps", str(args.dpo_steps), "--learning-rate", str(args.dpo_learning_rate),
        "--batch-size", str(DPO_BATCH),
        "--set", "data.template=chat",  # the SFT run's template: the prompts must look as they did in SFT
        "--set", f"data.test_fraction={DPO_HELD_OUT}", "--set", "training.max_length=128",
        "--set", "training.logging_steps=2", "--set", "training.eval_steps=6", "--set", "training.save_steps=12",
        "--set", "training.load_best_model_at_end=false", "--set", "method.lora_dropout=0"], args.reuse)
    result["dpo"] = {"name": dpo_run.name, "run": str(dpo_run), "seconds": time.monotonic() - started,
                     "settings": dpo_settings, "loss": eval_loss(dpo_run), "logged": logged_preference(dpo_run)}
    result["dpo"]["margins"] = held_out_margins(sft_run, dpo_run)
    held = result["dpo"]["margins"]["held_out"]
    log(f"held-out pairs: log-prob margin SFT {held['sft_logp_margin']:+.2f} -> DPO {held['dpo_logp_margin']:+.2f}; "
        f"reward accuracy vs SFT {held['reward_accuracy_vs_sft']:.2f}")
    result["plain_peft"] = plain_peft_check(dpo_run, "What is the capital of France?")

    result["sft"]["forgetting"] = forgetting(sft_run)
    if not args.skip_overtrained:
        started = time.monotonic()
        over_settings = {"examples": OVER_EXAMPLES, "learning_rate": args.over_learning_rate,
                         "epochs": args.over_epochs, "batch_size": OVER_BATCH}
        over_run = train_run(workspace, "overtrained", [
            "--config", str(QUICKSTART), "--learning-rate", str(args.over_learning_rate),
            "--epochs", str(args.over_epochs), "--max-steps", "-1", "--batch-size", str(OVER_BATCH),
            "--set", f"data.max_examples={OVER_EXAMPLES}", "--set", "training.load_best_model_at_end=false",
            "--set", "training.warmup_ratio=0", "--set", "training.scheduler=constant",
            "--set", "training.eval_steps=25", "--set", "training.save_steps=50",
            "--set", "training.logging_steps=5"], args.reuse)
        result["overtrained"] = {"name": over_run.name, "run": str(over_run),
                                 "seconds": time.monotonic() - started, "settings": over_settings,
                                 "loss": eval_loss(over_run), "forgetting": forgetting(over_run)}
    result["seconds"] = time.monotonic() - STARTED
    (out / "preference.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / "preference.md").write_text(markdown(result), encoding="utf-8")
    log(f"wrote {out / 'preference.json'} and {out / 'preference.md'}; the runs stay in {workspace}")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
