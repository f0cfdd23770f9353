"""Evaluate's answers: 26 held-out trivia questions answered by the base and the fine-tuned model (2 x 26
answers, greedy, the quickstart's generation settings), one question at a time (before) or in left-padded
batches of 8 (``ModelSession.generate_batch``, what ``evaluate_run`` does now). Same session, same adapter
(``chat_bench.make_adapter``), answers checked identical; each mode in its own process."""

from __future__ import annotations

import time


def answers(adapter: str, mode: str = "batched", n: int = 26, max_new_tokens: int = 48) -> dict:
    from core.config import DataConfig, GenerationConfig
    from core.data import load_records
    from core.generation import ModelSession

    _, _, records, _ = load_records(DataConfig(source="sample:trivia"))
    questions = [r["question"] for r in records[-n:]]
    gen_cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=1.1)
    session = ModelSession(adapter, device="cpu")
    session.generate("Hi", GenerationConfig(max_new_tokens=2, do_sample=False))  # one-off costs, paid once
    started = time.perf_counter()
    texts = []
    for use_adapter in (False, True):
        if mode == "batched":
            results = session.generate_batch(questions, gen_cfg, use_adapter=use_adapter, batch_size=8)
        else:
            results = [session.generate(q, gen_cfg, use_adapter=use_adapter) for q in questions]
        texts.append([r.text for r in results])
    seconds = time.perf_counter() - started
    tokens = sum(len(t) for t in texts)
    return {"mode": mode, "questions": n, "answers": 2 * n, "max_new_tokens": max_new_tokens,
            "seconds": round(seconds, 1), "answer_chars": tokens, "texts": texts}
