"""How much padding a run's batches carry: ``python -m bench --only padding``.

Padding-free packing (``DataCollatorWithFlattening``) can only save the padded positions a run computes. This
counts them for the peer workload (quickstart data and template, batch 8, cutoff 128) with the Trainer's
length-grouped sampler (the app's default: megabatches of 50 batches sorted by length) and with random batches
(LLaMA-Factory's default). Tokenizer only: no model, no timing.
"""

from __future__ import annotations

import random


def padding_share(config: str = "examples/quickstart.yaml", batch_size: int = 8, max_length: int = 128,
                  seed: int = 42) -> dict:
    from pathlib import Path

    from core.config import RunConfig
    from core.data import prepare_dataset
    from core.models import load_tokenizer

    cfg = RunConfig.load(Path(__file__).resolve().parent.parent / config)
    tokenizer = load_tokenizer(cfg.model)
    lengths = [len(ids) for ids in prepare_dataset(cfg.data, tokenizer, max_length).train["input_ids"]]
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)

    def waste(batches: list[list[int]]) -> dict:
        real = sum(sum(lengths[i] for i in b) for b in batches)
        computed = sum(max(lengths[i] for i in b) * len(b) for b in batches)
        return {"real_tokens": real, "computed_tokens": computed, "padding_share": round(1 - real / computed, 4)}

    random_batches = [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
    mega = 50 * batch_size
    grouped = []
    for start in range(0, len(order), mega):
        block = sorted(order[start:start + mega], key=lambda i: -lengths[i])
        grouped += [block[k:k + batch_size] for k in range(0, len(block), batch_size)]
    return {"examples": len(lengths), "mean_tokens": round(sum(lengths) / len(lengths), 1), "batch_size": batch_size,
            "length_grouped": waste(grouped), "random": waste(random_batches)}
