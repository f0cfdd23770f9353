"""Evaluate's answers: 26 held-out trivia questions answered by the base and the fine-tuned model (2 x 26
answers, greedy, the quickstart's generation settings) of a real quickstart run (``make_run``: the 60-step
quickstart, so prompts are in the run's chat template and the fine-tuned answers are short while the base
model's are long, as in Evaluate). Modes, each in its own process, same run, answers checked identical:

- ``one_by_one``: one ``generate`` per question and side (Evaluate when issue 14 was filed);
- ``generate_batches``: left-padded batches of 8 through one ``generate`` call each, side after side (the first
  batched version: finished rows stay in the batch until its longest answer ends);
- ``batched``: ``generate_batch`` side after side, rows leaving the batch as they end;
- ``both``: ``generate_both``, base and fine-tuned rows of each question in one mixed-adapter batch (what
  ``evaluate_run`` does now).
"""

from __future__ import annotations

import time


def make_run(workdir: str, max_steps: int = 60) -> dict:
    """The quickstart run (examples/quickstart.yaml) Evaluate's answers are measured on."""
    from pathlib import Path

    from core.config import RunConfig
    from core.training import train

    cfg = RunConfig.load(Path(__file__).resolve().parent.parent / "examples" / "quickstart.yaml")
    cfg.training.max_steps = max_steps
    run_dir = Path(workdir) / f"evaluate-run-{int(time.time())}"
    result = train(cfg, run_dir=run_dir)
    return {"folder": str(run_dir), "state": result.state, "max_steps": max_steps}


def answers(adapter: str, mode: str = "batched", n: int = 26, max_new_tokens: int = 48) -> dict:
    """``adapter``: a run folder (its held-out questions, its prompt template) or an adapter folder."""
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
        if mode == "both":
            if not use_adapter:
                base, tuned = session.generate_both(questions, gen_cfg)
                texts += [[r.text for r in base], [r.text for r in tuned]]
            continue
        if mode == "batched":
            results = session.generate_batch(questions, gen_cfg, use_adapter=use_adapter)
        elif mode == "generate_batches":
            results = _generate_batches(session, questions, gen_cfg, use_adapter)
        else:
            results = [session.generate(q, gen_cfg, use_adapter=use_adapter) for q in questions]
        texts.append([r.text for r in results])
    seconds = time.perf_counter() - started
    chars = sum(len(t) for side in texts for t in side)
    return {"mode": mode, "questions": n, "answers": 2 * n, "max_new_tokens": max_new_tokens,
            "seconds": round(seconds, 1), "answer_chars": chars,
            "answer_chars_by_side": {"base": sum(map(len, texts[0])), "fine-tuned": sum(map(len, texts[1]))},
            "texts": texts}


def _generate_batches(session, questions, gen_cfg, use_adapter: bool, batch_size: int = 8):
    """The first batched Evaluate: prompts sorted by length, batches of 8, one ``generate`` call each."""
    from core.generation import _answer_batch_generate

    built = [session.build_prompt(q) for q in questions]
    order = sorted(range(len(built)), key=lambda i: len(built[i][1]))
    results = [None] * len(built)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        with session.model_for(use_adapter) as model:
            answers = _answer_batch_generate(model, session.tokenizer, [built[i] for i in chunk], gen_cfg)
        for i, answer in zip(chunk, answers, strict=True):
            results[i] = answer
    return results
