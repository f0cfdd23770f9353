"""Preparing: split, tokenize and cache a whole dataset for training (the fifth stage of core.data).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.cancel import ProgressFn, StopToken
from core.data.read import BadRow, RawDataset, save_jsonl
from core.data.render import render_segments
from core.data.schema import SchemaGuess, load_records
from core.data.tokenize import _adds_bos, tokenize_segments
from core.errors import DataError

logger = logging.getLogger(__name__)

CACHE_VERSION = 2


@dataclass
class LengthHistogram:
    """Bars of a length histogram: ``bins`` equal bars from the shortest example to the 99th percentile,
    and one overflow bar for the longer ones, so one huge example does not squash the rest into one bar."""
    edges: list[float]  # len(counts) + 1 bar edges (tokens)
    counts: list[int]
    rows: list[list[int]]  # the row numbers in each bar (to list them when a bar is clicked)
    overflow_from: int | None  # the overflow bar holds the examples longer than this (None: no overflow bar)
    overflow_rows: list[int]


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
    p99: int = 0
    row_numbers: list[int] = field(default_factory=list)  # the row number of each of ``lengths``

    @classmethod
    def from_lengths(cls, lengths: list[int], max_length: int, row_numbers: list[int] | None = None) -> LengthStats:
        """Statistics of per-example lengths; ``row_numbers`` (same order) say which row each one is."""
        rows = list(row_numbers) if row_numbers is not None else list(range(1, len(lengths) + 1))
        if len(rows) != len(lengths):
            raise ValueError("row_numbers and lengths differ in length")
        if not lengths:
            return cls(0, 0, 0, 0.0, 0.0, 0, 0, max_length, [], 0, [])
        ordered = sorted(lengths)

        def percentile(q: float) -> int:
            return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]

        return cls(len(lengths), ordered[0], ordered[-1], statistics.fmean(lengths), statistics.median(ordered),
                   percentile(0.95), sum(1 for n in lengths if n > max_length), max_length, list(lengths),
                   percentile(0.99), rows)

    def longest(self, n: int = 10) -> list[tuple[int, int]]:
        """(row number, length) of the ``n`` longest examples, longest first."""
        pairs = sorted(zip(self.row_numbers, self.lengths, strict=True), key=lambda p: (-p[1], p[0]))
        return pairs[:n]

    def truncated_rows(self) -> list[int]:
        """Row numbers of the examples longer than ``max_length`` (cut, or dropped with overlong=drop)."""
        return sorted(row for row, length in zip(self.row_numbers, self.lengths, strict=True)
                      if length > self.max_length)

    def histogram(self, bins: int = 30) -> LengthHistogram:
        """Bars up to the 99th percentile plus an overflow bar (see LengthHistogram)."""
        if not self.lengths:
            return LengthHistogram([0.0, 1.0], [0], [[]], None, [])
        top = self.p99 if self.max > self.p99 else self.max
        low = self.min
        width = max(1.0, (top - low) / max(1, bins))
        count = max(1, min(bins, int((top - low) / width) + 1))
        edges = [low + i * width for i in range(count + 1)]
        counts, rows = [0] * count, [[] for _ in range(count)]
        overflow: list[int] = []
        for row, length in zip(self.row_numbers, self.lengths, strict=True):
            if length > top:
                overflow.append(row)
                continue
            index = min(count - 1, int((length - low) / width))
            counts[index] += 1
            rows[index].append(row)
        return LengthHistogram(edges, counts, rows, top if overflow else None, sorted(overflow))


@dataclass
class DataSummary:
    """One honest count of a dataset, every number from the same pass:
    rows in the file = usable + bad + left out; usable = train + held-out + unused (beyond max examples)."""
    source: str
    kind: str
    schema: str
    reason: str
    columns: list[str]
    row_label: str  # "line" or "row": how the row numbers below are meant
    n_in_file: int  # rows read (blank lines not counted; for plain text: the pieces it was cut into)
    bad_rows: list[BadRow]  # unusable rows, skipped only when skip_bad_rows
    excluded_rows: list[BadRow]  # left out on purpose: data.drop_rows, KTO rows labelled false
    skip_bad_rows: bool
    usable_rows: list[int]  # row numbers of the usable examples, in file order
    train_rows: list[int]  # row numbers of the training examples
    test_rows: list[int]  # row numbers of the held-out examples
    n_unused: int = 0  # usable examples beyond data.max_examples
    complete: bool = True  # False when only the first rows were read (a preview)

    @property
    def n_bad(self) -> int:
        return len(self.bad_rows)

    @property
    def n_excluded(self) -> int:
        return len(self.excluded_rows)

    @property
    def n_usable(self) -> int:
        return len(self.usable_rows)

    @property
    def n_train(self) -> int:
        return len(self.train_rows)

    @property
    def n_test(self) -> int:
        return len(self.test_rows)

    def line(self) -> str:
        """``121 rows in the file · 3 bad (skipped) · 118 usable · 106 train / 12 held-out``."""
        one = self.n_in_file == 1
        if self.kind == "text":
            unit = "piece of text" if one else "pieces of text"
        else:
            unit = "row" if one else "rows"
        parts = [f"{self.n_in_file:,} {unit} in the {'file' if self.complete else 'first part read'}"]
        if self.bad_rows:
            parts.append(f"{self.n_bad:,} bad ({'skipped' if self.skip_bad_rows else 'not skipped: training stops'})")
        if self.excluded_rows:
            parts.append(f"{self.n_excluded:,} left out")
        parts.append(f"{self.n_usable:,} usable")
        if self.n_unused:
            parts.append(f"{self.n_usable - self.n_unused:,} used (max examples)")
        parts.append(f"{self.n_train:,} train / {self.n_test:,} held-out")
        return " · ".join(parts)

    def problems(self) -> list[str]:
        """Why training on this data would fail (empty when it would not)."""
        found = []
        if self.bad_rows and not self.skip_bad_rows:
            first = self.bad_rows[0]
            found.append(f"{self.source}: {self.n_bad} bad row{'s' if self.n_bad != 1 else ''} (first: "
                         f"{self.row_label} {first.line}: {first.message}); fix them, leave them out "
                         "(data.drop_rows) or enable 'skip bad rows'")
        if not self.train_rows:
            found.append(f"{self.source}: no training examples")
        return found


def measure_lengths(records: list[dict], row_numbers: list[int], data_cfg, tokenizer, max_length: int, *,
                    stop: StopToken | None = None, progress: ProgressFn | None = None) -> LengthStats:
    """Token length of each record as training sees it (rendered with the template, untruncated), with
    its row number; without a tokenizer, whitespace words (+1 for the end-of-text token) stand in."""
    lengths = []
    for index, record in enumerate(records):
        if index % 200 == 0:
            if stop is not None:
                stop.raise_if_set()
            if progress is not None and records:
                progress(index / len(records), f"measuring lengths: {index:,}/{len(records):,}")
        segments = render_segments(record, data_cfg, tokenizer)
        if tokenizer is None:
            lengths.append(sum(len(s.text.split()) for s in segments) + 1)
        else:
            lengths.append(tokenize_segments(segments, tokenizer, max_length,
                                             data_cfg.train_on_answers_only).full_length)
    return LengthStats.from_lengths(lengths, max_length, row_numbers[: len(records)])


def training_split(n_records: int, data_cfg) -> tuple[list[int], list[int], int]:
    """(train indices, held-out indices, unused) of ``n_records`` usable records, exactly as training splits
    them: the first ``data.max_examples`` (0 = all), then ``split_indices`` with the data's seed."""
    used = n_records
    if data_cfg.max_examples and data_cfg.max_examples > 0:
        used = min(n_records, data_cfg.max_examples)
    train_idx, test_idx = split_indices(used, data_cfg.test_fraction, data_cfg.split_seed)
    return train_idx, test_idx, n_records - used


def summarize_records(raw: RawDataset, guess: SchemaGuess, lines: list[int], data_cfg, *,
                      complete: bool = True) -> DataSummary:
    """The DataSummary of rows already loaded with ``load_records`` (``lines``: its row numbers)."""
    train_idx, test_idx, unused = training_split(len(lines), data_cfg)
    return DataSummary(raw.source, raw.kind, guess.schema, guess.reason, list(raw.columns), raw.line_label,
                       raw.n_in_file, list(raw.bad_rows), list(raw.excluded), bool(data_cfg.skip_bad_rows),
                       list(lines), [lines[i] for i in train_idx], [lines[i] for i in test_idx], unused, complete)


def data_summary(data_cfg, *, max_rows: int | None = None, stop: StopToken | None = None,
                 progress: ProgressFn | None = None) -> DataSummary:
    """Read the data and count it (DataSummary). Bad rows are counted, not raised, whatever
    ``data.skip_bad_rows`` says (``DataSummary.problems`` tells whether training would stop on them);
    a whole-file problem (unknown format, preference data...) raises DataError."""
    relaxed = dataclasses.replace(data_cfg, skip_bad_rows=True)
    raw, guess, _, lines = load_records(relaxed, stop=stop, progress=progress, max_rows=max_rows)
    summary = summarize_records(raw, guess, lines, data_cfg, complete=max_rows is None or raw.n_in_file < max_rows)
    return summary


def require_trainable(data_cfg, tokenizer=None, *, stop: StopToken | None = None,
                      progress: ProgressFn | None = None) -> DataSummary:
    """Load and map the data exactly as training will (no tokenizing, no model) and raise the DataError
    training would raise; with a ``tokenizer``, the first example is also rendered with the template.
    Returns the DataSummary. Call it before creating a run folder."""
    raw, guess, records, lines = load_records(data_cfg, stop=stop, progress=progress)
    summary = summarize_records(raw, guess, lines, data_cfg)
    if not summary.train_rows:
        raise DataError("no training examples", source=raw.source)
    if tokenizer is not None or data_cfg.template != "chat":
        try:
            render_segments(records[0], data_cfg, tokenizer)
        except DataError as exc:
            raise DataError(exc.message, source=raw.source, field=exc.field) from None
    return summary


def check_trainable(data_cfg, tokenizer=None, *, stop: StopToken | None = None,
                    progress: ProgressFn | None = None) -> list[str]:
    """The problems that would make training on ``data_cfg`` fail, as messages naming the file, row and
    field (empty: trainable). The GUI calls it before starting a run; see ``require_trainable``."""
    try:
        require_trainable(data_cfg, tokenizer, stop=stop, progress=progress)
    except DataError as exc:
        return [str(exc)]
    return []


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
    summary: DataSummary | None = None


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
            n_no_trained_tokens=meta.get("n_no_trained_tokens", 0), summary=_summary_from(meta.get("summary")))
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
                "n_dropped": prepared.n_dropped, "n_no_trained_tokens": prepared.n_no_trained_tokens,
                "summary": dataclasses.asdict(prepared.summary) if prepared.summary is not None else None}
        (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # caching is an optimisation: never fail the run over it
    finally:
        if bars_were_on:
            enable_progress_bars()


def _summary_from(values: dict | None) -> DataSummary | None:
    if not values:
        return None
    values = dict(values)
    values["bad_rows"] = [BadRow(**b) for b in values["bad_rows"]]
    values["excluded_rows"] = [BadRow(**b) for b in values["excluded_rows"]]
    return DataSummary(**values)


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
        logger.info("data %s: tokenized dataset loaded from the cache %s", data_cfg.source, folder)
        if progress is not None:
            progress(1.0, "tokenized dataset loaded from the cache")
        return cached
    import datasets

    raw, guess, records, lines = load_records(data_cfg, stop=stop, progress=progress)
    logger.info("data %s: %d records read (%s), %d bad rows", data_cfg.source, len(records), raw.kind,
                len(raw.bad_rows))
    summary = summarize_records(raw, guess, lines, data_cfg)
    train_idx, test_idx, _ = training_split(len(records), data_cfg)
    lengths: list[int] = []
    length_rows: list[int] = []
    n_truncated = n_dropped = n_empty = 0
    columns: dict[str, dict[str, list]] = {name: {"input_ids": [], "labels": [], "attention_mask": []}
                                           for name in ("train", "test")}
    kept: dict[str, list[dict]] = {"train": [], "test": []}
    total = len(train_idx) + len(test_idx)
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
        length_rows.append(lines[index])
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
        reasons = []
        if n_dropped - n_empty:
            reasons.append(f"{n_dropped - n_empty} are longer than max_length {max_length} and dropped "
                           "(choose 'truncate' to keep them cut)")
        if n_empty:
            reasons.append(f"{n_empty} have a prompt that fills max_length {max_length} by itself, leaving no "
                           "answer token to learn")
        raise DataError(f"no training examples left of {total}: " + "; ".join(reasons) + "; raise the max length",
                        source=data_cfg.source)
    features = datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32")),
                                  "labels": datasets.Sequence(datasets.Value("int64")),
                                  "attention_mask": datasets.Sequence(datasets.Value("int8"))})
    train = datasets.Dataset.from_dict(columns["train"], features=features)
    test = datasets.Dataset.from_dict(columns["test"], features=features) if kept["test"] else None
    prepared = PreparedData(train, test, LengthStats.from_lengths(lengths, max_length, length_rows), raw.bad_rows,
                            guess, n_truncated, n_dropped, fingerprint, kept["train"], kept["test"],
                            n_no_trained_tokens=n_empty, summary=summary)
    _save_cache(folder, prepared)
    logger.info("data %s: tokenized %d training and %d held-out examples (max length %d: %d truncated, %d dropped)",
                data_cfg.source, len(train), len(test) if test is not None else 0, max_length, n_truncated, n_dropped)
    if progress is not None:
        progress(1.0, f"tokenized {len(train)} training and {len(test) if test is not None else 0} held-out examples")
    return prepared


