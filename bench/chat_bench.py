"""Chat measurements: two panes streaming at once, as the Chat page does (one thread per pane).

The Chat page's default (``share_model=False``) gives each pane its own ``ModelSession``; both generate
concurrently. Variants measured to find what limits time-to-first-token: one shared session (the lock
serialises the answers) and torch limited to 1 thread per process while both panes stream.
"""

from __future__ import annotations

import threading
import time

QUESTIONS = ("What is the capital of France?", "Who wrote Romeo and Juliet?")


def _pane(session, question: str, gen_cfg, results: dict, side: str, start_event: threading.Event) -> None:
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
    result = session.generate(messages, gen_cfg, use_adapter=False, on_token=on_token, raw=False)
    total = time.perf_counter() - started
    decode = total - (first[0] if first else 0.0)
    results[side] = {"ttft_seconds": round(first[0], 3) if first else None, "tokens": result.n_tokens,
                     "seconds": round(total, 3),
                     "tokens_per_second": round(result.n_tokens / total, 2) if total else None,
                     "decode_tokens_per_second": round((result.n_tokens - 1) / decode, 2)
                     if decode > 0 and result.n_tokens > 1 else None}


def chat(mode: str = "separate", threads: int | None = None, max_new_tokens: int = 48, rounds: int = 2) -> dict:
    """Both panes answer at once; ``mode``: "separate" (a ModelSession per pane, the page default) or
    "shared" (one session: the answers run one after the other). Best of ``rounds`` by worst TTFT."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from core.config import GenerationConfig
    from core.generation import ModelSession

    gen_cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False)
    gen_cfg.stop_strings = []
    started = time.perf_counter()
    first = ModelSession("bundled:SmolLM2-135M-Instruct", device="cpu")
    second = first if mode == "shared" else ModelSession("bundled:SmolLM2-135M-Instruct", device="cpu")
    load_seconds = time.perf_counter() - started
    # Warm-up: the first generate pays one-off costs (kernels, caches) a user pays once per session.
    first.generate("Hi", GenerationConfig(max_new_tokens=2, do_sample=False))
    if second is not first:
        second.generate("Hi", GenerationConfig(max_new_tokens=2, do_sample=False))
    trials = []
    for _ in range(rounds):
        results: dict = {}
        go = threading.Event()
        workers = [threading.Thread(target=_pane, args=(session, q, gen_cfg, results, side, go))
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
    return {"mode": mode, "torch_threads": torch.get_num_threads(), "max_new_tokens": max_new_tokens,
            "load_seconds": round(load_seconds, 2), "panes": best,
            "worst_ttft_seconds": max((p["ttft_seconds"] or float("inf")) for p in best.values()),
            "one_pane_alone": alone["alone"], "all_trials": trials}
