"""Chat measurements: two panes streaming at once, as the Chat page does (one thread per pane).

The Chat page's default (``pair_answers``) answers both panes of a LoRA run from one ``ModelSession``: one
mixed-adapter ``generate`` (base row and fine-tuned row) streams both answers at once. Measured against the
previous default, one ``ModelSession`` per pane each generating in its own thread (two copies of the model),
and one shared session whose lock serialises the answers; plus torch on 1 thread while both panes stream.
Every mode loads the same LoRA adapter (a fresh peft LoRA on the bundled model, saved to a temporary folder),
as the Chat page loads the chosen run; peak RSS is the worker process's (one mode per process).
"""

from __future__ import annotations

import threading
import time

QUESTIONS = ("What is the capital of France?", "Who wrote Romeo and Juliet?")


def _pane(session, question: str, gen_cfg, results: dict, side: str, start_event: threading.Event,
          use_adapter: bool = False) -> None:
    start_event.wait()
    started = time.perf_counter()
    first: list[float] = []
    count = [0]

    def on_token(piece: str) -> None:
        if not first:
            first.append(time.perf_counter() - started)
        count[0] += 1

    # A message list goes through the model's chat template (an instruct model), as the Chat page sends it.
    messages = [{"role": "user", "content": question}]
    result = session.generate(messages, gen_cfg, use_adapter=use_adapter, on_token=on_token, raw=False)
    total = time.perf_counter() - started
    decode = total - (first[0] if first else 0.0)
    results[side] = {"ttft_seconds": round(first[0], 3) if first else None, "tokens": result.n_tokens,
                     "seconds": round(total, 3),
                     "tokens_per_second": round(result.n_tokens / total, 2) if total else None,
                     "decode_tokens_per_second": round((result.n_tokens - 1) / decode, 2)
                     if decode > 0 and result.n_tokens > 1 else None}


def make_adapter() -> dict:
    """A LoRA adapter (r=16, every projection, the app's default) on the bundled model, in a temp folder
    (made in its own process, so loading the base for it does not count in a chat mode's peak RSS)."""
    import tempfile

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from core.models import ensure_bundled_model

    folder = tempfile.mkdtemp(prefix="chat-bench-adapter-")
    base = AutoModelForCausalLM.from_pretrained(ensure_bundled_model())
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules=targets,
                                    task_type="CAUSAL_LM")).save_pretrained(folder)
    del base
    return {"folder": folder}


def _paired(session, gen_cfg, results: dict) -> None:
    started = time.perf_counter()
    counts = {"left": 0, "right": 0}

    def counter(side):
        def on_token(piece: str) -> None:
            counts[side] += 1
        return on_token

    messages = [[{"role": "user", "content": q}] for q in QUESTIONS]
    answers = session.generate_pair(messages, gen_cfg, use_adapter=[False, True],
                                    on_tokens=[counter("left"), counter("right")])
    total = time.perf_counter() - started
    for side, result in zip(("left", "right"), answers, strict=True):
        first = result.first_token_seconds
        results[side] = {"ttft_seconds": round(first, 3) if first is not None else None, "tokens": result.n_tokens,
                         "seconds": round(total, 3),
                         "tokens_per_second": round(result.n_tokens / total, 2) if total else None,
                         "decode_tokens_per_second": round((result.n_tokens - 1) / (total - first), 2)
                         if first is not None and total > first and result.n_tokens > 1 else None}


def chat(adapter: str, mode: str = "separate", threads: int | None = None, max_new_tokens: int = 48,
         rounds: int = 2) -> dict:
    """Both panes answer at once (base on the left, fine-tuned on the right); ``mode``: "paired" (one session,
    both answers in one mixed-adapter batch: the page default), "separate" (a ModelSession per pane) or
    "shared" (one session: the answers run one after the other). Best of ``rounds`` by worst TTFT."""
    import resource

    import torch

    if threads:
        torch.set_num_threads(threads)
    from core.config import GenerationConfig
    from core.generation import ModelSession

    gen_cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False)
    gen_cfg.stop_strings = []
    rss_before_load = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    started = time.perf_counter()
    first = ModelSession(adapter, device="cpu")
    second = first if mode in ("shared", "paired") else ModelSession(adapter, device="cpu")
    load_seconds = time.perf_counter() - started
    # Warm-up: the first generate pays one-off costs (kernels, caches) a user pays once per session.
    first.generate("Hi", GenerationConfig(max_new_tokens=2, do_sample=False))
    if second is not first:
        second.generate("Hi", GenerationConfig(max_new_tokens=2, do_sample=False))
    trials = []
    for _ in range(rounds):
        results: dict = {}
        if mode == "paired":
            _paired(first, gen_cfg, results)
            trials.append(results)
            continue
        go = threading.Event()
        workers = [threading.Thread(target=_pane, args=(session, q, gen_cfg, results, side, go, side == "right"))
                   for session, q, side in ((first, QUESTIONS[0], "left"), (second, QUESTIONS[1], "right"))]
        for worker in workers:
            worker.start()
        go.set()
        for worker in workers:
            worker.join()
        trials.append(results)
    best = min(trials, key=lambda r: max(p["ttft_seconds"] or 1e9 for p in r.values()))
    # Reference: one pane alone.
    alone: dict = {}
    solo = threading.Event()
    solo.set()
    _pane(first, QUESTIONS[0], gen_cfg, alone, "alone", solo)
    return {"mode": mode, "peak_rss_bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
            "peak_rss_before_loading_bytes": rss_before_load, "torch_threads": torch.get_num_threads(), "max_new_tokens": max_new_tokens,
            "load_seconds": round(load_seconds, 2), "panes": best,
            "worst_ttft_seconds": max((p["ttft_seconds"] or float("inf")) for p in best.values()),
            "one_pane_alone": alone["alone"], "all_trials": trials}
