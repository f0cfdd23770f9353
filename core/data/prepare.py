"""Preparing: split, tokenize and cache a whole dataset for training (the fifth stage of core.data).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.cancel import ProgressFn, StopToken
from core.data.read import BadRow, save_jsonl
from core.data.render import render_segments
from core.data.schema import SchemaGuess, load_records
from core.data.tokenize import _adds_bos, tokenize_segments
from core.errors import DataError

CACHE_VERSION = 1



@dataclass
class LengthStats:
    count: int
    min: int
    max: int
    mean: float
    median: float
    p95: int
    n_over_max: int  # examples that max_length cuts (or drops)
    max_length: int
    lengths: list[int]

    @classmethod
    def from_lengths(cls, lengths: list[int], max_length: int) -> LengthStats:
        if not lengths:
            return cls(0, 0, 0, 0.0, 0.0, 0, 0, max_length, [])
        ordered = sorted(lengths)
        p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
        return cls(len(lengths), ordered[0], ordered[-1], statistics.fmean(lengths), statistics.median(ordered),
                   p95, sum(1 for n in lengths if n > max_length), max_length, list(lengths))


@dataclass
class PreparedData:
    train: Any  # datasets.Dataset
    test: Any  # datasets.Dataset | None
    stats: LengthStats
    bad_rows: list[BadRow]
    schema: SchemaGuess
    n_truncated: int
    n_dropped: int
    fingerprint: str
    train_records: list[dict]
    test_records: list[dict]
    from_cache: bool = False
    n_no_trained_tokens: int = 0  # dropped because the prompt alone fills max_length


def _hash_file(digest, path: Path) -> None:
    stat = path.stat()
    digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    if stat.st_size <= 64 << 20:  # small files: the content too, so an edit within one mtime tick counts
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)


def _source_signature(digest, source: str, hub_split: str) -> None:
    digest.update(f"source={source}|split={hub_split}".encode())
    if source.lower().startswith("sample:"):
        from core.samples import sample_files

        for path in sample_files(source.split(":", 1)[1] or "trivia"):
            _hash_file(digest, path)
        return
    path = Path(source).expanduser()
    if path.is_file():
        _hash_file(digest, path)
    elif path.is_dir():
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            _hash_file(digest, child)


_VOCAB_HASH: dict[int, tuple[Any, int, str]] = {}


def _tokenizer_signature(digest, tokenizer) -> None:
    if tokenizer is None:
        digest.update(b"tokenizer=None")
        return
    digest.update(f"{type(tokenizer).__name__}|{getattr(tokenizer, 'name_or_path', '')}|{len(tokenizer)}".encode())
    cached = _VOCAB_HASH.get(id(tokenizer))
    if cached is None or cached[0] is not tokenizer or cached[1] != len(tokenizer):
        # Hashing a 50k vocabulary takes ~0.1 s: once per tokenizer object (new tokens change len()).
        vocab_hash = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
                                    .encode()).hexdigest()
        cached = _VOCAB_HASH[id(tokenizer)] = (tokenizer, len(tokenizer), vocab_hash)
    digest.update(cached[2].encode())
    for name in ("bos_token", "eos_token", "pad_token", "chat_template"):
        digest.update(f"|{name}={getattr(tokenizer, name, None)}".encode())
    digest.update(f"|bos={_adds_bos(tokenizer)}".encode())


def dataset_fingerprint(data_cfg, tokenizer, max_length: int) -> str:
    """Cache key: data file contents (or mtime+size when huge) + tokenizer + every data setting + max_length."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}|max_length={max_length}|".encode())
    digest.update(json.dumps(dataclasses.asdict(data_cfg), sort_keys=True, default=str).encode())
    _source_signature(digest, data_cfg.source, data_cfg.hub_split)
    _tokenizer_signature(digest, tokenizer)
    return digest.hexdigest()[:24]


def _cache_folder(fingerprint: str) -> Path:
    from core.paths import cache_dir

    return cache_dir() / "datasets" / fingerprint


def _read_records(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _load_cached(folder: Path) -> PreparedData | None:
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return None
    import datasets

    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        train = datasets.load_from_disk(str(folder / "train"))
        test = datasets.load_from_disk(str(folder / "test")) if meta["has_test"] else None
        return PreparedData(
            train=train, test=test, stats=LengthStats(**meta["stats"]),
            bad_rows=[BadRow(**b) for b in meta["bad_rows"]], schema=SchemaGuess(**meta["schema"]),
            n_truncated=meta["n_truncated"], n_dropped=meta["n_dropped"], fingerprint=meta["fingerprint"],
            train_records=_read_records(folder / "train_records.jsonl"),
            test_records=_read_records(folder / "test_records.jsonl"), from_cache=True,
            n_no_trained_tokens=meta.get("n_no_trained_tokens", 0))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a damaged cache entry is rebuilt


def _save_cache(folder: Path, prepared: PreparedData) -> None:
    # Build in a temporary sibling folder and rename it into place, so a crash never leaves half a cache.
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    bars_were_on = not are_progress_bars_disabled()
    disable_progress_bars()  # a cache write is not worth a progress bar on the console
    try:
        prepared.train.save_to_disk(str(tmp / "train"))
        if prepared.test is not None:
            prepared.test.save_to_disk(str(tmp / "test"))
        save_jsonl(prepared.train_records, tmp / "train_records.jsonl")
        save_jsonl(prepared.test_records, tmp / "test_records.jsonl")
        meta = {"fingerprint": prepared.fingerprint, "has_test": prepared.test is not None,
                "stats": dataclasses.asdict(prepared.stats), "bad_rows": [dataclasses.asdict(b) for b in prepared.bad_rows],
                "schema": dataclasses.asdict(prepared.schema), "n_truncated": prepared.n_truncated,
                "n_dropped": prepared.n_dropped, "n_no_trained_tokens": prepared.n_no_trained_tokens}
        (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # caching is an optimisation: never fail the run over it
    finally:
        if bars_were_on:
            enable_progress_bars()



def split_indices(n: int, test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic (train, test) index lists; the same n, fraction and seed give the same split."""
    if test_fraction <= 0 or n < 2:
        return list(range(n)), []
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_test = min(n - 1, max(1, int(round(n * test_fraction))))
    test = sorted(order[:n_test])
    chosen = set(test)
    return [i for i in range(n) if i not in chosen], test


def prepare_dataset(data_cfg, tokenizer, max_length: int, *, stop: StopToken | None = None,
                    progress: ProgressFn | None = None) -> PreparedData:
    """Load, normalise, render and tokenize the dataset into train/test ``datasets.Dataset`` objects
    (input_ids, labels, attention_mask; unpadded), cached under ``cache_dir()/datasets``."""
    fingerprint = dataset_fingerprint(data_cfg, tokenizer, max_length)
    folder = _cache_folder(fingerprint)
    cached = _load_cached(folder)
    if cached is not None:
        if progress is not None:
            progress(1.0, "tokenized dataset loaded from the cache")
        return cached
    import datasets

    raw, guess, records, _ = load_records(data_cfg, stop=stop, progress=progress)
    if data_cfg.max_examples and data_cfg.max_examples > 0:
        records = records[: data_cfg.max_examples]
    train_idx, test_idx = split_indices(len(records), data_cfg.test_fraction, data_cfg.split_seed)
    lengths: list[int] = []
    n_truncated = n_dropped = n_empty = 0
    columns: dict[str, dict[str, list]] = {name: {"input_ids": [], "labels": [], "attention_mask": []}
                                           for name in ("train", "test")}
    kept: dict[str, list[dict]] = {"train": [], "test": []}
    total = len(records)
    for done, (split, index) in enumerate([("train", i) for i in train_idx] + [("test", i) for i in test_idx]):
        if done % 64 == 0:
            if stop is not None:
                stop.raise_if_set()
            if progress is not None:
                progress(done / total, f"tokenizing: {done}/{total} examples")
        record = records[index]
        example = tokenize_segments(render_segments(record, data_cfg, tokenizer), tokenizer, max_length,
                                    data_cfg.train_on_answers_only)
        lengths.append(example.full_length)
        if example.truncated and data_cfg.overlong == "drop":
            n_dropped += 1
            continue
        if example.n_trained == 0:
            # The prompt alone fills max_length: nothing left to learn, and an all-masked batch gives NaN loss.
            n_dropped += 1
            n_empty += 1
            continue
        n_truncated += example.truncated
        columns[split]["input_ids"].append(example.input_ids)
        columns[split]["labels"].append(example.labels)
        columns[split]["attention_mask"].append(example.attention_mask)
        kept[split].append(record)
    if not kept["train"]:
        raise DataError(f"no training examples left: {n_dropped} of {total} are longer than max_length "
                        f"{max_length}; raise the max length or choose 'truncate'", source=data_cfg.source)
    features = datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32")),
                                  "labels": datasets.Sequence(datasets.Value("int64")),
                                  "attention_mask": datasets.Sequence(datasets.Value("int8"))})
    train = datasets.Dataset.from_dict(columns["train"], features=features)
    test = datasets.Dataset.from_dict(columns["test"], features=features) if kept["test"] else None
    prepared = PreparedData(train, test, LengthStats.from_lengths(lengths, max_length), raw.bad_rows, guess,
                            n_truncated, n_dropped, fingerprint, kept["train"], kept["test"],
                            n_no_trained_tokens=n_empty)
    _save_cache(folder, prepared)
    if progress is not None:
        progress(1.0, f"tokenized {len(train)} training and {len(test) if test is not None else 0} held-out examples")
    return prepared


