"""Time ``data check`` (core.data.run_checks) on a 10,000-row question/answer file:
``python -m bench.data_check_bench [--rows N] [--repeats K]``.

The file is generated (random questions of 8-40 words from a 2,000-word vocabulary, answers of 1-60 words)
with planted problems: 1% exact duplicates, 1% near duplicates (one word changed), 20 placeholders and
one boilerplate answer repeated 150 times. The target is under 5 s for 10k rows without a tokenizer.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    vocabulary = [f"w{i}{''.join(rng.choices('abcdefghij', k=rng.randint(2, 7)))}" for i in range(2000)]
    rows = []
    for _ in range(n):
        question = " ".join(rng.choices(vocabulary, k=rng.randint(8, 40))) + "?"
        answer = " ".join(rng.choices(vocabulary, k=rng.randint(1, 60))) + "."
        rows.append({"question": question, "answer": answer})
    for i in range(n // 100):  # exact duplicates
        rows[rng.randrange(n)] = dict(rows[i])
    for i in range(n // 100):  # near duplicates: one word changed
        words = rows[n // 2 + i]["question"].split()
        words[len(words) // 2] = rng.choice(vocabulary)
        rows[rng.randrange(n)] = {"question": " ".join(words), "answer": rows[n // 2 + i]["answer"]}
    for _ in range(20):
        rows[rng.randrange(n)]["answer"] = "Dear {{customer_name}}, thank you."
    for _ in range(150):
        rows[rng.randrange(n)]["answer"] = "I am sorry, I cannot help with that."
    return rows


def run(rows: int = 10_000, repeats: int = 3) -> dict:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from core.config import DataConfig
    from core.data import run_checks

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in make_rows(rows)), encoding="utf-8")
        seconds, report = [], None
        for _ in range(repeats):
            started = time.perf_counter()
            report = run_checks(DataConfig(source=str(path)))
            seconds.append(time.perf_counter() - started)
    assert report is not None
    return {"rows": rows, "seconds": [round(s, 3) for s in seconds], "median_seconds": round(statistics.median(seconds), 3),
            "findings": {f.kind: len(f.rows) for f in report.findings}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    result = run(args.rows, args.repeats)
    print(json.dumps(result, indent=2))
    print(f"data check on {result['rows']:,} rows: median {result['median_seconds']} s (target < 5 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
