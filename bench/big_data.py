"""Peak memory of the data path on a big JSONL file: ``python -m bench.big_data [--rows N] [--only prepare,inspect]``.

Writes a ~300 MB / 211,000-row JSONL of synthetic question/answer pairs (English-like words from a fixed
vocabulary, deterministic seed) into a temporary folder, then measures, each in a fresh child process:

- ``prepare``: what ``main.py train`` does with the data before the model is loaded, in the same order and
  in one process: ``core.commands.train.check_data_before_the_run`` (read + map the whole file, then tokenize
  it with the bundled SmolLM2 tokenizer into the tokenized-data cache, progress on the CLI's console), then
  ``prepare_dataset`` once more, as ``core.training.train`` does (a cache hit). The model weights are never
  loaded: the tokenizer alone is enough. The tokenized-data cache lives in the temporary folder.
- ``inspect``: ``main.py data inspect FILE`` (the bundled tokenizer counts tokens).

Peak RSS is ``ru_maxrss`` of the child (``os.wait4``); the child's RSS is also sampled every 0.2 s from /proc,
so the peak of each phase (tokenizing vs the cache hit) is reported too. The console output of ``prepare``
is captured into a file (not a terminal), and its number of lines is reported: progress must be a few
lines, not one per batch. Not a unit test; minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her she there been one all we their has would when if so no will what can more out up "
    "about into them some time could than only other its then also two these may first any new like our "
    "over such after most made work years where between through many well much before must right very "
    "because water river mountain city country people history language science number system energy light "
    "music animal plant garden market window kitchen summer winter morning evening question answer reason "
    "example problem method result change power money school family friend teacher student doctor engine "
    "machine computer program memory network signal pattern surface pressure weather forest ocean island "
    "capital empire battle treaty century modern ancient famous simple common special general important "
    "different possible natural public private national local small large long short early late strong"
).split()


def make_file(path: Path, rows: int, seed: int = 0, question_words: tuple[int, int] = (30, 70),
              answer_words: tuple[int, int] = (120, 255)) -> int:
    """Write ``rows`` {"question", "answer"} lines to ``path``; returns the file size in bytes."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for index in range(rows):
            question = " ".join(rng.choices(_WORDS, k=rng.randint(*question_words))).capitalize() + "?"
            answer = " ".join(rng.choices(_WORDS, k=rng.randint(*answer_words))).capitalize() + "."
            handle.write(json.dumps({"id": index, "question": question, "answer": answer}) + "\n")
    return path.stat().st_size


# ----------------------------------------------------------------------------------------------- children
def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def child_prepare(data: str, model: str, console_log: str) -> None:
    """The data half of ``main.py train`` (see the module docstring); phase marks go to stdout."""
    from core.cancel import StopToken
    from core.commands.progress import TrainingConsole
    from core.commands.train import _ErrorsOnce, _quiet_library_progress_bars, check_data_before_the_run
    from core.config import RunConfig
    from core.data import prepare_dataset
    from core.models import load_tokenizer

    cfg = RunConfig()
    cfg.data.source = data
    cfg.model.name_or_path = model
    _quiet_library_progress_bars()
    print(f"phase check {time.time():.3f} {_rss_mb():.0f}", flush=True)
    with open(console_log, "w", encoding="utf-8") as log:
        console = _ErrorsOnce(TrainingConsole(stream=log))
        check_data_before_the_run(cfg, console, StopToken())
    print(f"phase cache_hit {time.time():.3f} {_rss_mb():.0f}", flush=True)
    prepared = prepare_dataset(cfg.data, load_tokenizer(cfg.model), cfg.training.max_length)
    print(f"phase done {time.time():.3f} {_rss_mb():.0f}", flush=True)
    print("result " + json.dumps({"train": len(prepared.train), "test": len(prepared.test or []),
                                  "truncated": prepared.n_truncated, "dropped": prepared.n_dropped}), flush=True)


def child_inspect(data: str, model: str) -> None:
    from core.cli import main

    code = main(["data", "inspect", data, "--model", model])
    print(f"phase done {time.time():.3f} {_rss_mb():.0f}", flush=True)
    if code:
        raise SystemExit(code)


# ------------------------------------------------------------------------------------------- measuring
def _sampled_rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def measure(args: list[str], env: dict) -> dict:
    """Run ``python -m bench.big_data --child ...`` and return its peak RSS (ru_maxrss), the RSS samples per
    phase, its wall time and its output."""
    started = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "bench.big_data", "--child", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            rss = _sampled_rss_mb(proc.pid)
            if rss is not None:
                samples.append((time.time(), rss))
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    assert proc.stdout is not None
    output = proc.stdout.read()  # the child writes little: reading to the end does not block it
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    sampler.join()
    wall = time.time() - started
    marks = [(line.split()[1], float(line.split()[2])) for line in output.splitlines() if line.startswith("phase ")]
    phases: dict[str, float] = {}
    for (name, begin), (_, end) in zip(marks, marks[1:] + [("end", time.time())], strict=True):
        inside = [rss for t, rss in samples if begin <= t <= end]
        if inside:
            phases[name] = round(max(inside))
    result = next((json.loads(line[7:]) for line in output.splitlines() if line.startswith("result ")), None)
    return {"peak_rss_mb": round(usage.ru_maxrss / 1024), "sampled_peak_by_phase_mb": phases,
            "wall_seconds": round(wall, 1), "exit_status": os.waitstatus_to_exitcode(status), "result": result,
            "output_tail": output[-1500:]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=211_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="prepare,inspect", help="comma-separated: prepare, inspect")
    parser.add_argument("--folder", help="work folder (default: a temporary one, deleted afterwards)")
    parser.add_argument("--out", help="write the results as JSON here too")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    if args.child:
        kind, *rest = args.child
        child_prepare(*rest) if kind == "prepare" else child_inspect(*rest)
        return 0

    from core.models import ensure_bundled_model

    model = str(ensure_bundled_model())  # a folder, so the children's cache folder needs no model copy
    with tempfile.TemporaryDirectory(prefix="big-data-", dir=args.folder) as folder:
        data = Path(folder) / "big.jsonl"
        started = time.time()
        size = make_file(data, args.rows, args.seed)
        print(f"wrote {data}: {args.rows:,} rows, {size / 1e6:.0f} MB in {time.time() - started:.0f} s", flush=True)
        env = dict(os.environ, FINETUNE_STUDIO_CACHE=str(Path(folder) / "cache"), TOKENIZERS_PARALLELISM="false",
                   PYTHONWARNINGS="ignore")
        results: dict = {"rows": args.rows, "file_mb": round(size / 1e6), "load_before": os.getloadavg()}
        for kind in args.only.split(","):
            print(f"measuring {kind} ...", flush=True)
            if kind == "prepare":
                log = Path(folder) / "console.log"
                results[kind] = measure(["prepare", str(data), model, str(log)], env)
                text = log.read_text(encoding="utf-8") if log.exists() else ""
                results[kind]["console_lines"] = len(text.splitlines())
                results[kind]["console"] = text[-3000:]
            else:
                results[kind] = measure(["inspect", str(data), model], env)
            print(json.dumps({k: v for k, v in results[kind].items() if k not in ("output_tail", "console")}),
                  flush=True)
        results["load_after"] = os.getloadavg()
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
