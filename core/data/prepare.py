"""Preparing: split, tokenize and cache a whole dataset for training (the fifth stage of core.data).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import logging
import os
import random
import shutil
import statistics
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.cancel import ProgressFn, StopToken
from core.data.read import BadRow, RawDataset
from core.data.render import render_segments
from core.data.schema import SchemaGuess, stream_records
from core.data.tokenize import _adds_bos, tokenize_segments
from core.errors import DataError

logger = logging.getLogger(__name__)

CACHE_VERSION = 3  # 3: Arrow files (records, train, test) written while streaming


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
    raw, guess, stream = stream_records(relaxed, stop=stop, progress=progress, max_rows=max_rows)
    lines = [line for line, _ in stream]
    summary = summarize_records(raw, guess, lines, data_cfg, complete=max_rows is None or raw.n_in_file < max_rows)
    return summary


def require_trainable(data_cfg, tokenizer=None, *, stop: StopToken | None = None,
                      progress: ProgressFn | None = None) -> DataSummary:
    """Load and map the data exactly as training will (no tokenizing, no model) and raise the DataError
    training would raise; with a ``tokenizer``, the first example is also rendered with the template.
    Returns the DataSummary. Call it before creating a run folder."""
    raw, guess, stream = stream_records(data_cfg, stop=stop, progress=progress)
    lines: list[int] = []
    first: dict | None = None
    for line, record in stream:  # a row at a time: only the row numbers are kept
        if first is None:
            first = record
        lines.append(line)
    summary = summarize_records(raw, guess, lines, data_cfg)
    if not summary.train_rows or first is None:
        raise DataError("no training examples", source=raw.source)
    if tokenizer is not None or data_cfg.template != "chat":
        try:
            render_segments(first, data_cfg, tokenizer)
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
    train_records: Sequence[dict]  # a RecordList: read from the cache's records file when asked for
    test_records: Sequence[dict]
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


class RecordList(Sequence):
    """The canonical records of one split, in order, read from the records file of the tokenized-data cache
    when they are asked for (a 200,000-row dataset is not held as Python dicts). Indexing, slicing (a list)
    and iterating work as on a list, and it compares equal to a list of the same records."""

    def __init__(self, records: Any, positions: list[int]):
        self._records = records  # datasets.Dataset with the columns line (int64) and record (JSON text)
        self._positions = positions  # the rows of ``records`` in this split, in order

    def __len__(self) -> int:
        return len(self._positions)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return list(self._iterate(self._positions[index]))
        return json.loads(self._records[self._positions[index]]["record"])

    def __iter__(self) -> Iterator[dict]:
        return self._iterate(self._positions)

    def _iterate(self, positions: list[int]) -> Iterator[dict]:
        for start in range(0, len(positions), _RECORD_BATCH_ROWS):
            for text in self._records[positions[start:start + _RECORD_BATCH_ROWS]]["record"]:
                yield json.loads(text)

    def line_numbers(self) -> list[int]:
        """The row number (as the reports show it) of each record."""
        lines: list[int] = []
        for start in range(0, len(self._positions), _RECORD_BATCH_ROWS):
            lines.extend(self._records[self._positions[start:start + _RECORD_BATCH_ROWS]]["line"])
        return lines

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (RecordList, list, tuple)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RecordList({len(self)} records)"


_RECORD_BATCH_ROWS = 1000  # records written / read / tokenized per batch: memory stays flat whatever the size
_RECORD_BATCH_BYTES = 32 << 20  # ...and a batch of huge rows is written early


def _token_features():
    import datasets

    return datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32")),
                              "labels": datasets.Sequence(datasets.Value("int64")),
                              "attention_mask": datasets.Sequence(datasets.Value("int8"))})


def _load_cached(folder: Path) -> PreparedData | None:
    """The prepared data of a cache folder (memory-mapped Arrow files), or None when absent or damaged."""
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return None
    import datasets

    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        records = datasets.Dataset.from_file(str(folder / "records.arrow"))
        train = datasets.Dataset.from_file(str(folder / "train.arrow"))
        test = datasets.Dataset.from_file(str(folder / "test.arrow")) if meta["has_test"] else None
        return PreparedData(
            train=train, test=test, stats=LengthStats(**meta["stats"]),
            bad_rows=[BadRow(**b) for b in meta["bad_rows"]], schema=SchemaGuess(**meta["schema"]),
            n_truncated=meta["n_truncated"], n_dropped=meta["n_dropped"], fingerprint=meta["fingerprint"],
            train_records=RecordList(records, meta["train_positions"]),
            test_records=RecordList(records, meta["test_positions"]), from_cache=True,
            n_no_trained_tokens=meta.get("n_no_trained_tokens", 0), summary=_summary_from(meta.get("summary")))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a damaged cache entry is rebuilt


@contextlib.contextmanager
def _library_bars_off():
    """datasets' own tqdm bars (map, writing) would garble the console and go nowhere in the GUI: progress is
    reported through ``progress`` instead."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    bars_were_on = not are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if bars_were_on:
            enable_progress_bars()


def _write_records(stream: Iterable[tuple[int, dict]], path: Path) -> list[int]:
    """Write (row number, record) pairs to an Arrow stream file (columns line, record as JSON text), a batch
    at a time; returns the row numbers."""
    import pyarrow as pa

    schema = pa.schema([("line", pa.int64()), ("record", pa.large_string())])
    lines: list[int] = []
    batch_lines: list[int] = []
    batch_texts: list[str] = []
    size = 0
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        def flush() -> None:
            writer.write_batch(pa.record_batch([pa.array(batch_lines, pa.int64()),
                                                pa.array(batch_texts, pa.large_string())], schema=schema))
            batch_lines.clear()
            batch_texts.clear()

        for line, record in stream:
            text = json.dumps(record, ensure_ascii=False)
            lines.append(line)
            batch_lines.append(line)
            batch_texts.append(text)
            size += len(text)
            if len(batch_lines) >= _RECORD_BATCH_ROWS or size >= _RECORD_BATCH_BYTES:
                flush()
                size = 0
        if batch_lines:
            flush()
    return lines


@dataclass
class _Tally:
    """What tokenizing both splits counts, in the order the examples are tokenized (train, then held-out)."""
    total: int
    done: int = 0
    lengths: list[int] = field(default_factory=list)
    length_rows: list[int] = field(default_factory=list)
    n_truncated: int = 0
    n_dropped: int = 0
    n_empty: int = 0


def _tokenize_split(records: Any, indices: list[int], out_path: Path, tag: str, data_cfg, tokenizer,
                    max_length: int, tally: _Tally, stop: StopToken | None, progress: ProgressFn | None) -> list[int]:
    """Tokenize the records at ``indices`` into the Arrow file ``out_path`` with ``datasets.map`` (batched,
    written as it goes); returns the positions (in ``records``) of the examples kept."""
    kept: list[int] = []

    def tokenize_batch(batch: dict, offsets: list[int]) -> dict:
        out: dict[str, list] = {"input_ids": [], "labels": [], "attention_mask": []}
        for line, text, offset in zip(batch["line"], batch["record"], offsets, strict=True):
            if tally.done % 64 == 0:
                if stop is not None:
                    stop.raise_if_set()
                if progress is not None:
                    progress(tally.done / tally.total, f"tokenizing: {tally.done}/{tally.total} examples")
            tally.done += 1
            example = tokenize_segments(render_segments(json.loads(text), data_cfg, tokenizer), tokenizer,
                                        max_length, data_cfg.train_on_answers_only)
            tally.lengths.append(example.full_length)
            tally.length_rows.append(line)
            if example.truncated and data_cfg.overlong == "drop":
                tally.n_dropped += 1
                continue
            if example.n_trained == 0:
                # The prompt alone fills max_length: nothing left to learn, and an all-masked batch gives NaN loss.
                tally.n_dropped += 1
                tally.n_empty += 1
                continue
            tally.n_truncated += example.truncated
            out["input_ids"].append(example.input_ids)
            out["labels"].append(example.labels)
            out["attention_mask"].append(example.attention_mask)
            kept.append(indices[offset])
        return out

    # Explicit fingerprints: datasets would otherwise hash the function (and the tokenizer inside it).
    chosen = records.select(indices, new_fingerprint=f"{tag}-select")
    chosen.map(tokenize_batch, batched=True, batch_size=_RECORD_BATCH_ROWS, with_indices=True,
               remove_columns=records.column_names, features=_token_features(), cache_file_name=str(out_path),
               load_from_cache_file=False, new_fingerprint=f"{tag}-tokens", writer_batch_size=_RECORD_BATCH_ROWS)
    return kept


def _build(data_cfg, tokenizer, max_length: int, fingerprint: str, work: Path, stop: StopToken | None,
           progress: ProgressFn | None) -> None:
    """Read, split and tokenize into the cache folder ``work`` (records.arrow, train.arrow, test.arrow,
    meta.json), streaming: records go to disk as they are read, examples as they are tokenized."""
    import datasets

    raw, guess, stream = stream_records(data_cfg, stop=stop, progress=progress)
    lines = _write_records(stream, work / "records.arrow")
    logger.info("data %s: %d records read (%s), %d bad rows", data_cfg.source, len(lines), raw.kind,
                len(raw.bad_rows))
    summary = summarize_records(raw, guess, lines, data_cfg)
    train_idx, test_idx, _ = training_split(len(lines), data_cfg)
    records = datasets.Dataset.from_file(str(work / "records.arrow"))
    tally = _Tally(total=len(train_idx) + len(test_idx))
    kept = {split: _tokenize_split(records, indices, work / f"{split}.arrow", f"{fingerprint}-{split}", data_cfg,
                                   tokenizer, max_length, tally, stop, progress) if indices else []
            for split, indices in (("train", train_idx), ("test", test_idx))}
    if not kept["train"]:
        reasons = []
        if tally.n_dropped - tally.n_empty:
            reasons.append(f"{tally.n_dropped - tally.n_empty} are longer than max_length {max_length} and dropped "
                           "(choose 'truncate' to keep them cut)")
        if tally.n_empty:
            reasons.append(f"{tally.n_empty} have a prompt that fills max_length {max_length} by itself, leaving no "
                           "answer token to learn")
        raise DataError(f"no training examples left of {tally.total}: " + "; ".join(reasons)
                        + "; raise the max length", source=data_cfg.source)
    stats = LengthStats.from_lengths(tally.lengths, max_length, tally.length_rows)
    meta = {"fingerprint": fingerprint, "has_test": bool(kept["test"]), "stats": dataclasses.asdict(stats),
            "bad_rows": [dataclasses.asdict(b) for b in raw.bad_rows], "schema": dataclasses.asdict(guess),
            "n_truncated": tally.n_truncated, "n_dropped": tally.n_dropped, "n_no_trained_tokens": tally.n_empty,
            "summary": dataclasses.asdict(summary), "train_positions": kept["train"], "test_positions": kept["test"]}
    (work / "meta.json").write_text(json.dumps(meta), encoding="utf-8")


def _rename(work: Path, folder: Path) -> None:
    try:
        os.replace(work, folder)
    except OSError:
        # Windows refuses to rename a folder with a file still memory-mapped: a Dataset of the build may live
        # on in a reference cycle. Collecting takes ~0.2 s with torch loaded, so only when needed.
        gc.collect()
        os.replace(work, folder)


def _publish(work: Path, folder: Path) -> PreparedData:
    """Rename the finished ``work`` folder into place (a crash never leaves half a cache entry) and open it."""
    if folder.exists():
        existing = _load_cached(folder)
        if existing is not None:  # another process (a rank of the same run) finished first: the same data
            existing.from_cache = False
            return existing
        shutil.rmtree(folder, ignore_errors=True)  # damaged: a finished folder appears whole, by one rename
    try:
        _rename(work, folder)
    except OSError:
        if not (folder / "meta.json").is_file():  # not lost to another process's rename a moment before
            raise
    prepared = _load_cached(folder)
    if prepared is None:
        raise DataError(f"the tokenized data just written to {folder} cannot be read back")
    prepared.from_cache = False
    return prepared


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
    (input_ids, labels, attention_mask; unpadded), cached under ``cache_dir()/datasets``.

    Nothing grows with the data in memory but a few integers per row: records are streamed from the file
    (JSON Lines) into an Arrow file, tokenized a batch at a time by ``datasets.map`` into Arrow files, and the
    result is memory-mapped from the cache folder; the records of each split come back as a ``RecordList``."""
    fingerprint = dataset_fingerprint(data_cfg, tokenizer, max_length)
    folder = _cache_folder(fingerprint)
    cached = _load_cached(folder)
    if cached is not None:
        logger.info("data %s: tokenized dataset loaded from the cache %s", data_cfg.source, folder)
        if progress is not None:
            progress(1.0, "tokenized dataset loaded from the cache")
        return cached
    # Built in a temporary sibling folder and renamed into place when complete.
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        with _library_bars_off():
            _build(data_cfg, tokenizer, max_length, fingerprint, work, stop, progress)
        prepared = _publish(work, folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # already gone when it was renamed into place
    n_train, n_test = len(prepared.train), len(prepared.test) if prepared.test is not None else 0
    logger.info("data %s: tokenized %d training and %d held-out examples (max length %d: %d truncated, %d dropped)",
                data_cfg.source, n_train, n_test, max_length, prepared.n_truncated, prepared.n_dropped)
    if progress is not None:
        progress(1.0, f"tokenized {n_train} training and {n_test} held-out examples")
    return prepared
