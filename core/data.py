"""Datasets: read a file / folder / Hub id / bundled sample, understand its columns, render each example
with a prompt template, and tokenize it with a mask saying which tokens the model is trained on.

Heavy libraries (datasets, pyarrow) are imported inside functions: the GUI imports this module at
start-up. No input file is ever written to.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import random
import re
import shutil
import socket
import statistics
import string
import tempfile
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.cancel import ProgressFn, StopToken
from core.errors import DataError

CACHE_VERSION = 1
JSONL_EXTENSIONS = (".jsonl", ".ndjson")
DATA_EXTENSIONS = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet")
IGNORE_INDEX = -100

# ------------------------------------------------------------------------------------------------ raw data


@dataclass
class BadRow:
    line: int  # 1-based line (JSONL) / row (CSV: header = line 1; Parquet/JSON list: row number)
    message: str


@dataclass
class RawDataset:
    source: str
    kind: str  # jsonl | json | csv | parquet | hf_disk | folder | hub | sample
    columns: list[str]
    rows: list[dict]
    bad_rows: list[BadRow]
    # line/row number of every entry of ``rows`` (same length), so later errors can say where
    line_numbers: list[int] = field(default_factory=list)
    line_label: str = "line"  # "line" for text files, "row" for tables

    def line_of(self, index: int) -> int:
        """The 1-based line/row number of ``rows[index]``."""
        return self.line_numbers[index] if index < len(self.line_numbers) else index + 1


def _columns_of(rows: list[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(str(key), None)
    return list(seen)


def _check_binary(path: Path, head: bytes) -> None:
    # Parquet, zip, images... are detected by NUL bytes, which never occur in UTF-8/CSV text.
    if b"\x00" in head:
        raise DataError("this is a binary file, not text (JSONL, JSON and CSV must be UTF-8 text); "
                        "if it is Parquet, give it the .parquet extension", source=str(path))


def _decode(raw: bytes, path: Path, line: int, label: str = "line") -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{label} {line} is not valid UTF-8 text (byte {raw[exc.start:exc.start + 1]!r} at "
                        f"position {exc.start + 1}); re-save the file as UTF-8", source=str(path)) from None


def _iter_jsonl(path: Path, *, max_rows=None, skip_bad_rows=False, stop=None, progress=None,
                bad_rows: list[BadRow]) -> Iterator[tuple[int, dict]]:
    """(line number, row) for each non-blank line; streams, so a huge file is never held at once."""
    size = path.stat().st_size
    produced = 0
    with open(path, "rb") as handle:
        _check_binary(path, handle.read(8192))
        handle.seek(0)
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # UTF-8 byte-order mark written by some Windows editors
            text = _decode(raw, path, number).strip()
            if not text:
                continue
            if number % 1000 == 0:
                if stop is not None:
                    stop.raise_if_set()
                if progress is not None and size:
                    progress(handle.tell() / size, f"reading {path.name}: line {number}")
            try:
                row = json.loads(text)
                problem = None if isinstance(row, dict) else f"expected a JSON object {{...}}, got {type(row).__name__}"
            except json.JSONDecodeError as exc:
                row, problem = None, f"malformed JSON ({exc.msg} at column {exc.colno})"
            if problem:
                if not skip_bad_rows:
                    raise DataError(f"{problem}; fix the line or enable 'skip bad rows'",
                                    source=str(path), line=number)
                bad_rows.append(BadRow(number, problem))
                continue
            yield number, row
            produced += 1
            if max_rows is not None and produced >= max_rows:
                return


def _read_jsonl(path: Path, **kwargs) -> RawDataset:
    bad: list[BadRow] = []
    numbers, rows = [], []
    for number, row in _iter_jsonl(path, bad_rows=bad, **kwargs):
        numbers.append(number)
        rows.append(row)
    return RawDataset(str(path), "jsonl", _columns_of(rows), rows, bad, numbers)


def _read_json(path: Path, *, max_rows=None, skip_bad_rows=False, stop=None, progress=None) -> RawDataset:
    raw = path.read_bytes()
    _check_binary(path, raw[:8192])
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise DataError(f"not valid UTF-8 text (byte {raw[exc.start:exc.start + 1]!r}); re-save the file as UTF-8",
                        source=str(path), line=line) from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        # Many ".json" files are really JSON Lines; read them as such when the first line is an object.
        first = text.lstrip().split("\n", 1)[0].strip()
        try:
            if isinstance(json.loads(first), dict):
                data = _read_jsonl(path, max_rows=max_rows, skip_bad_rows=skip_bad_rows, stop=stop, progress=progress)
                data.kind = "jsonl"
                return data
        except json.JSONDecodeError:
            pass
        raise DataError(f"malformed JSON ({exc.msg} at column {exc.colno})", source=str(path),
                        line=exc.lineno) from None
    if isinstance(document, dict):
        lists = {k: v for k, v in document.items() if isinstance(v, list)}
        if isinstance(document.get("data"), list):
            document = document["data"]
        elif len(lists) == 1:
            document = next(iter(lists.values()))
        else:
            raise DataError('expected a list of objects, or {"data": [...]}; the top-level object has keys '
                            + ", ".join(map(str, document)), source=str(path))
    if not isinstance(document, list):
        raise DataError(f"expected a list of objects, got {type(document).__name__}", source=str(path))
    rows, numbers, bad = [], [], []
    for number, row in enumerate(document, start=1):
        if not isinstance(row, dict):
            problem = f"expected an object {{...}}, got {type(row).__name__}"
            if not skip_bad_rows:
                raise DataError(f"row {number}: {problem}", source=str(path))
            bad.append(BadRow(number, problem))
            continue
        rows.append(row)
        numbers.append(number)
        if max_rows is not None and len(rows) >= max_rows:
            break
    return RawDataset(str(path), "json", _columns_of(rows), rows, bad, numbers, "row")


def _read_csv(path: Path, *, max_rows=None, skip_bad_rows=False, stop=None, progress=None) -> RawDataset:
    with open(path, "rb") as handle:
        _check_binary(path, handle.read(8192))
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    rows, numbers, bad = [], [], []
    # csv needs text; decode line by line ourselves so an encoding error names its line.
    with open(path, "rb") as binary:
        def lines() -> Iterator[str]:
            for number, raw in enumerate(binary, start=1):
                if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                yield _decode(raw, path, number)

        reader = csv.reader(lines(), delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError("the file is empty", source=str(path)) from None
        header = [name.strip() for name in header]
        if not any(header):
            raise DataError("the first line (the header with the column names) is empty", source=str(path), line=1)
        try:
            for values in reader:
                number = reader.line_num
                if not any(value.strip() for value in values):
                    continue
                if len(values) != len(header):
                    problem = f"has {len(values)} fields but the header has {len(header)}"
                    if not skip_bad_rows:
                        raise DataError(problem, source=str(path), line=number)
                    bad.append(BadRow(number, problem))
                    continue
                rows.append(dict(zip(header, values, strict=True)))
                numbers.append(number)
                if stop is not None and len(rows) % 1000 == 0:
                    stop.raise_if_set()
                if max_rows is not None and len(rows) >= max_rows:
                    break
        except csv.Error as exc:
            raise DataError(f"malformed CSV: {exc}", source=str(path), line=reader.line_num) from None
    return RawDataset(str(path), "csv", header, rows, bad, numbers)


def _read_parquet(path: Path, *, max_rows=None, **_) -> RawDataset:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        if max_rows is None:
            table = parquet.read()
        else:
            batches = []
            total = 0
            for batch in parquet.iter_batches(batch_size=max(1, min(max_rows, 65536))):
                batches.append(batch)
                total += batch.num_rows
                if total >= max_rows:
                    break
            table = pa.Table.from_batches(batches, schema=parquet.schema_arrow).slice(0, max_rows)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"cannot read this Parquet file: {exc}", source=str(path)) from None
    rows = table.to_pylist()
    return RawDataset(str(path), "parquet", list(table.column_names), rows, [], list(range(1, len(rows) + 1)), "row")


_READERS = {".jsonl": _read_jsonl, ".ndjson": _read_jsonl, ".json": _read_json, ".csv": _read_csv,
            ".tsv": _read_csv, ".parquet": _read_parquet}


def _read_file(path: Path, **kwargs) -> RawDataset:
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"unsupported file type {path.suffix or '(none)'}; use one of "
                        + ", ".join(DATA_EXTENSIONS), source=str(path))
    if path.stat().st_size == 0:
        raise DataError("the file is empty", source=str(path))
    data = reader(path, **kwargs)
    if not data.rows and not data.bad_rows:
        raise DataError("the file holds no rows (only blank lines or an empty list)", source=str(path))
    return data


def _is_hf_disk_folder(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json"))


def _rows_of_hf_dataset(dataset, max_rows) -> list[dict]:
    if max_rows is not None:
        dataset = dataset.select(range(min(max_rows, len(dataset))))
    return dataset.to_list()


def _read_hf_disk(folder: Path, hub_split: str, max_rows) -> RawDataset:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(folder))
    except (OSError, ValueError, FileNotFoundError) as exc:
        raise DataError(f"cannot read this saved dataset folder: {exc}", source=str(folder)) from None
    if isinstance(loaded, datasets.DatasetDict):
        if hub_split not in loaded:
            raise DataError(f"split {hub_split!r} not found; this folder has: {', '.join(loaded)}",
                            source=str(folder), field="hub_split")
        loaded = loaded[hub_split]
    rows = _rows_of_hf_dataset(loaded, max_rows)
    return RawDataset(str(folder), "hf_disk", list(loaded.column_names), rows, [],
                      list(range(1, len(rows) + 1)), "row")


def _data_files_of(folder: Path, hub_split: str) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in DATA_EXTENSIONS
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    # Hub-style folders name files by split (train-00000.parquet, data/test.jsonl): keep the asked split.
    split_files = [p for p in files if re.search(rf"(^|[\W_]){re.escape(hub_split)}([\W_]|$)",
                                                 str(p.relative_to(folder)))]
    return split_files or files


def _read_folder(folder: Path, *, hub_split="train", max_rows=None, skip_bad_rows=False, stop=None,
                 progress=None) -> RawDataset:
    if _is_hf_disk_folder(folder) or any(_is_hf_disk_folder(child) for child in folder.iterdir() if child.is_dir()):
        return _read_hf_disk(folder, hub_split, max_rows)
    files = _data_files_of(folder, hub_split)
    if not files:
        raise DataError("this folder holds no data files (" + ", ".join(DATA_EXTENSIONS) + ") and is not a "
                        "dataset saved with `datasets.save_to_disk`", source=str(folder))
    rows, numbers, bad, columns = [], [], [], []
    for path in files:
        remaining = None if max_rows is None else max_rows - len(rows)
        if remaining is not None and remaining <= 0:
            break
        part = _read_file(path, max_rows=remaining, skip_bad_rows=skip_bad_rows, stop=stop, progress=progress)
        rows.extend(part.rows)
        numbers.extend(part.line_numbers)
        bad.extend(BadRow(b.line, f"{path.name}: {b.message}") for b in part.bad_rows)
        columns.extend(c for c in part.columns if c not in columns)
    return RawDataset(str(folder), "folder", columns, rows, bad, numbers,
                      "line" if len(files) == 1 else "row")


def looks_like_hub_id(source: str) -> bool:
    """True for ``name`` or ``owner/name`` (no file extension, no path syntax)."""
    if source.startswith((".", "/", "~")) or "\\" in source or Path(source).suffix.lower() in DATA_EXTENSIONS:
        return False
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", source) is not None


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _hub_reachable(timeout: float = 3.0) -> bool:
    from urllib.parse import urlparse

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _read_hub(source: str, hub_split: str, max_rows) -> RawDataset:
    offline = _env_true("HF_HUB_OFFLINE") or _env_true("HF_DATASETS_OFFLINE")
    # Without this check, datasets retries an unreachable Hub for ~25 s before failing.
    if not offline and not _hub_reachable():
        raise DataError("cannot reach the Hugging Face Hub to download this dataset. Check the internet "
                        "connection, or download it and open the file/folder instead (if it is already in "
                        "your Hugging Face cache, set HF_HUB_OFFLINE=1)", source=source)
    import datasets

    try:
        loaded = datasets.load_dataset(source, split=hub_split)
    except (ConnectionError, TimeoutError) as exc:
        raise DataError(f"cannot download from the Hugging Face Hub ({exc}); open a local file instead",
                        source=source) from None
    except FileNotFoundError as exc:
        raise DataError(f"dataset not found on the Hub or in the local cache ({exc})", source=source) from None
    except ValueError as exc:  # unknown split, bad config
        raise DataError(f"cannot load this Hub dataset: {exc}", source=source, field="hub_split") from None
    except Exception as exc:  # DatasetNotFoundError and friends have no common public base
        if type(exc).__module__.startswith(("datasets", "huggingface_hub", "requests", "httpx")):
            raise DataError(f"cannot load this Hub dataset: {exc}", source=source) from None
        raise
    rows = _rows_of_hf_dataset(loaded, max_rows)
    return RawDataset(source, "hub", list(loaded.column_names), rows, [], list(range(1, len(rows) + 1)), "row")


def _read_sample(source: str, max_rows) -> RawDataset:
    from core.samples import load_sample

    rows = load_sample(source.split(":", 1)[1] or "trivia")
    if max_rows is not None:
        rows = rows[:max_rows]
    return RawDataset(source, "sample", ["question", "answer"], rows, [], list(range(1, len(rows) + 1)), "row")


def load_raw(source: str, *, hub_split: str = "train", max_rows: int | None = None, skip_bad_rows: bool = False,
             stop: StopToken | None = None, progress: ProgressFn | None = None) -> RawDataset:
    """Read every row of a file, folder, Hub dataset id or ``sample:<topic>`` as plain dicts.

    Malformed rows raise one DataError naming the file and line, or are skipped and listed in
    ``bad_rows`` when ``skip_bad_rows`` is set.
    """
    source = str(source).strip()
    if not source:
        raise DataError("no dataset given: choose a file, folder, Hub id or sample:<topic>")
    if source.lower().startswith("sample:"):
        return _read_sample(source, max_rows)
    path = Path(source).expanduser()
    kwargs = dict(max_rows=max_rows, skip_bad_rows=skip_bad_rows, stop=stop, progress=progress)
    if path.is_dir():
        return _read_folder(path, hub_split=hub_split, **kwargs)
    if path.is_file():
        return _read_file(path, **kwargs)
    if looks_like_hub_id(source):
        return _read_hub(source, hub_split, max_rows)
    raise DataError("file or folder not found", source=source)


def preview_rows(source: str, n: int = 50) -> RawDataset:
    """The first ``n`` rows, streamed: a 1 GB JSONL/CSV/Parquet file is not read beyond them.

    Bad rows are listed in ``bad_rows`` rather than raised, so a preview always shows something.
    """
    return load_raw(source, max_rows=n, skip_bad_rows=True)


class LazyJsonlTable:
    """Random access to the rows of a big JSONL file without loading it: a line-offset index built a
    chunk at a time (``index_chunk``; call it from a worker or idle timer), and ``row(i)`` that seeks to
    one line and parses it."""

    def __init__(self, path: str | Path, chunk_bytes: int = 8 << 20):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError("file not found", source=str(self.path))
        self.size = self.path.stat().st_size
        self.chunk_bytes = chunk_bytes
        self._offsets = array("q")  # byte offset of each non-blank line
        self._lines = array("q")  # its 1-based line number
        self._position = 0  # bytes indexed so far (always at a line start)
        self._line = 0
        with open(self.path, "rb") as handle:
            head = handle.read(8192)
        _check_binary(self.path, head)
        if head.startswith(b"\xef\xbb\xbf"):
            self._position = 3

    @property
    def complete(self) -> bool:
        """True once every line is indexed."""
        return self._position >= self.size

    @property
    def fraction_indexed(self) -> float:
        return 1.0 if not self.size else min(1.0, self._position / self.size)

    def __len__(self) -> int:
        """Rows indexed so far (the total once ``complete``)."""
        return len(self._offsets)

    def index_chunk(self, max_bytes: int | None = None) -> bool:
        """Index about ``max_bytes`` more of the file; returns ``complete``."""
        budget = max_bytes or self.chunk_bytes
        with open(self.path, "rb") as handle:
            handle.seek(self._position)
            start = self._position
            data = handle.read(budget)
            while data and b"\n" not in data and start + len(data) < self.size:
                data += handle.read(budget)  # one very long line: keep reading until it ends
        if not data:
            self._position = self.size
            return True
        end = len(data) if start + len(data) >= self.size else data.rfind(b"\n") + 1
        line_start = 0
        while line_start < end:
            newline = data.find(b"\n", line_start, end)
            line_end = end if newline < 0 else newline + 1
            self._line += 1
            if data[line_start:line_end].strip():
                self._offsets.append(start + line_start)
                self._lines.append(self._line)
            line_start = line_end
        self._position = start + end
        return self.complete

    def index_all(self, stop: StopToken | None = None, progress: ProgressFn | None = None) -> None:
        """Index the rest of the file, a chunk at a time."""
        while not self.index_chunk():
            if stop is not None:
                stop.raise_if_set()
            if progress is not None:
                progress(self.fraction_indexed, f"indexing {self.path.name}: {len(self)} rows")

    def line_number(self, index: int) -> int:
        return self._lines[index]

    def row(self, index: int) -> dict:
        """Parse row ``index`` (0-based, blank lines not counted); DataError names its line if malformed."""
        if index < 0 or index >= len(self._offsets):
            raise IndexError(index)
        with open(self.path, "rb") as handle:
            handle.seek(self._offsets[index])
            raw = handle.readline()
        line = self._lines[index]
        text = _decode(raw, self.path, line)
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"malformed JSON ({exc.msg} at column {exc.colno})", source=str(self.path),
                            line=line) from None
        if not isinstance(value, dict):
            raise DataError(f"expected a JSON object, got {type(value).__name__}", source=str(self.path), line=line)
        return value

    def rows(self, start: int, stop: int) -> list[dict | None]:
        """Rows ``start..stop-1``; malformed ones come back as None (for a table view)."""
        out: list[dict | None] = []
        for i in range(start, min(stop, len(self))):
            try:
                out.append(self.row(i))
            except DataError:
                out.append(None)
        return out


# ---------------------------------------------------------------------------------------------- schemas

# role -> column names that play it (lower case), best first
ROLE_ALIASES: dict[str, tuple[str, ...]] = {
    "question": ("question", "query", "q", "questions", "user", "human"),
    "answer": ("answer", "response", "reply", "a", "answers", "assistant", "bot"),
    "instruction": ("instruction", "instructions", "task"),
    "input": ("input", "context", "inputs"),
    "output": ("output", "response", "outputs", "answer"),
    "prompt": ("prompt",),
    "completion": ("completion", "completions"),
    "text": ("text", "content", "document", "body"),
    "messages": ("messages", "conversations", "conversation", "chat", "dialogue", "dialog"),
}
# schema -> (required roles, optional roles); the order is the tie-break priority of detection
SCHEMA_ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "messages": (("messages",), ()),
    "alpaca": (("instruction", "output"), ("input",)),
    "question_answer": (("question", "answer"), ()),
    "prompt_completion": (("prompt", "completion"), ()),
    "input_output": (("input", "output"), ()),
    "text": (("text",), ()),
}
ANSWER_ROLES = ("answer", "output", "completion")


@dataclass
class SchemaGuess:
    schema: str
    column_map: dict[str, str]  # role -> column name in the data
    reason: str


def _lookup(columns: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for column in columns:
        found.setdefault(str(column).strip().lower(), column)
    return found


def _map_roles(schema: str, columns: list[str], manual: dict[str, str] | None = None) -> dict[str, str]:
    """role -> column for the schema's roles that the columns (or the manual map) provide."""
    lower = _lookup(columns)
    required, optional = SCHEMA_ROLES[schema]
    mapping: dict[str, str] = {}
    used: set[str] = set()
    for role in required + optional:
        if manual and role in manual:
            mapping[role] = manual[role]
            used.add(manual[role])
            continue
        for alias in ROLE_ALIASES[role]:
            column = lower.get(alias)
            if column is not None and column not in used:
                mapping[role] = column
                used.add(column)
                break
    return mapping


def _present(row: dict, column: str) -> bool:
    value = row.get(column)
    return value is not None and value != ""


def detect_schema(columns: list[str], rows: list[dict]) -> SchemaGuess:
    """Guess the format from the column names, checked against the first rows (case-insensitive)."""
    sample = rows[:500]
    best: tuple[float, int, str, dict] | None = None
    for priority, schema in enumerate(SCHEMA_ROLES):
        required, _ = SCHEMA_ROLES[schema]
        mapping = _map_roles(schema, columns)
        if not all(role in mapping for role in required):
            continue
        coverage = (sum(all(_present(r, mapping[role]) for role in required) for r in sample) / len(sample)
                    if sample else 1.0)
        key = (coverage, -priority)
        if best is None or key > (best[0], best[1]):
            best = (coverage, -priority, schema, mapping)
    if best is None:
        raise DataError("cannot tell which column is the question and which the answer; columns: "
                        + (", ".join(map(str, columns)) or "(none)")
                        + ". Pick the format by hand and map the columns, e.g. question=<column> answer=<column>",
                        field="schema")
    coverage, _, schema, mapping = best
    pairs = ", ".join(str(column) if str(column).lower() == role else f"{column} (as {role})"
                      for role, column in mapping.items())
    reason = f"found the columns {pairs}"
    if sample:
        reason += f" (filled in {coverage:.0%} of the first {len(sample)} rows)"
    return SchemaGuess(schema, mapping, reason)


def resolve_schema(columns: list[str], rows: list[dict], data_cfg) -> SchemaGuess:
    """The schema to use: detected, or the manual ``data_cfg.schema`` / ``data_cfg.column_map``."""
    manual = {str(k).strip().lower(): str(v) for k, v in (data_cfg.column_map or {}).items()}
    unknown = [role for role in manual if role not in ROLE_ALIASES]
    if unknown:
        raise DataError(f"unknown role {unknown[0]!r} in the column mapping; roles: {', '.join(ROLE_ALIASES)}",
                        field="column_map")
    lower = _lookup(columns)
    for role, column in list(manual.items()):
        actual = column if column in columns else lower.get(column.strip().lower())
        if actual is None:
            raise DataError(f"column {column!r} (mapped to {role}) is not in the data; columns: "
                            + ", ".join(map(str, columns)), field="column_map")
        manual[role] = actual
    schema = data_cfg.schema or "auto"
    if schema == "auto" and not manual:
        return detect_schema(columns, rows)
    if schema == "auto":
        # The mapping names the roles: pick the first schema whose required roles it (plus aliases) fills.
        for candidate in SCHEMA_ROLES:
            mapping = _map_roles(candidate, columns, manual)
            if all(r in mapping for r in SCHEMA_ROLES[candidate][0]) and set(manual) <= set(mapping):
                return SchemaGuess(candidate, mapping, "from the column mapping " + _fmt_map(manual))
        raise DataError("the column mapping " + _fmt_map(manual) + " does not fill any format; e.g. "
                        "question+answer, instruction+output, prompt+completion, input+output, text or messages",
                        field="column_map")
    if schema not in SCHEMA_ROLES:
        raise DataError(f"unknown format {schema!r}; choose one of auto, {', '.join(SCHEMA_ROLES)}", field="schema")
    mapping = _map_roles(schema, columns, manual)
    missing = [role for role in SCHEMA_ROLES[schema][0] if role not in mapping]
    if missing:
        raise DataError(f"format {schema!r} needs a column for {', '.join(missing)}; columns: "
                        + ", ".join(map(str, columns)) + f". Map one, e.g. {missing[0]}=<column>", field="column_map")
    return SchemaGuess(schema, mapping, "chosen by hand" + (" with mapping " + _fmt_map(manual) if manual else ""))


def _fmt_map(mapping: dict) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in mapping.items()) + "}"


_WHITESPACE = re.compile(r"\s+")


def _text_value(value: Any, column: str, *, required: bool, clean: bool) -> str:
    if value is None:
        text = ""
    elif isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, (int, float)):
        text = str(value)  # numbers are fine as text ("1963")
    else:
        raise DataError(f"expected text, got a {type(value).__name__} ({_short(value)})", field=column)
    text = _WHITESPACE.sub(" ", text).strip() if clean else text
    if required and not text.strip():
        raise DataError("is empty", field=column)
    return text


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[:limit] + "…"


_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "bot": "assistant", "model": "assistant", "system": "system", "tool": "tool"}


def _normalize_messages(value: Any, column: str, clean: bool) -> list[dict]:
    if isinstance(value, str):
        try:
            value = json.loads(value)  # CSV/Parquet exports often store the list as a JSON string
        except json.JSONDecodeError:
            raise DataError("expected a list of messages, got plain text", field=column) from None
    if not isinstance(value, list) or not value:
        raise DataError("expected a non-empty list of messages", field=column)
    messages = []
    for number, message in enumerate(value, start=1):
        if not isinstance(message, dict):
            raise DataError(f"message {number} is not an object with role/content", field=column)
        lower = {str(k).lower(): v for k, v in message.items()}
        role = lower.get("role", lower.get("from"))
        content = lower.get("content", lower.get("value"))
        if not isinstance(role, str) or role.strip().lower() not in _SHAREGPT_ROLES:
            raise DataError(f"message {number} has an unknown role {role!r} (expected user/assistant/system "
                            "or human/gpt)", field=column)
        messages.append({"role": _SHAREGPT_ROLES[role.strip().lower()],
                         "content": _text_value(content, f"{column}[{number}].content", required=False, clean=clean)})
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise DataError("the conversation has no (non-empty) assistant message to learn from", field=column)
    return messages


def normalize_record(row: dict, schema: str, column_map: dict[str, str], clean_whitespace: bool = True) -> dict:
    """The canonical record of one row: ``question``/``answer`` plus the schema's own roles.

    Raises DataError (with ``field``) for a missing, empty or non-text value.
    """
    required, optional = SCHEMA_ROLES[schema]
    record: dict[str, Any] = {}
    for role in required + optional:
        column = column_map.get(role)
        if column is None:
            if role in required:
                raise DataError(f"no column for {role}", field=role)
            record[role] = ""
            continue
        if column not in row and role in required:
            keys = ", ".join(map(str, row)) or "(none)"
            raise DataError(f"column {column!r} is missing in this row (it has: {keys}); rows with different "
                            "columns (mixed formats) cannot be combined: split the file, or enable 'skip bad rows'",
                            field=column)
        if role == "messages":
            record["messages"] = _normalize_messages(row.get(column), column, clean_whitespace)
        else:
            record[role] = _text_value(row.get(column), column, required=role in required, clean=clean_whitespace)
    if schema == "alpaca":
        record["question"] = record["instruction"] + (("\n\n" + record["input"]) if record["input"].strip() else "")
        record["answer"] = record["output"]
    elif schema == "prompt_completion":
        record["question"], record["answer"] = record["prompt"], record["completion"]
    elif schema == "input_output":
        record["question"], record["answer"] = record["input"], record["output"]
    elif schema == "text":
        record["question"], record["answer"] = "", record["text"]
    elif schema == "messages":
        messages = record["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        users = [m["content"] for m in messages[:last] if m["role"] == "user"]
        record["question"] = users[-1] if users else ""
        record["answer"] = messages[last]["content"]
    return record


# ------------------------------------------------------------------------------------------- templates


@dataclass
class Segment:
    text: str
    trained: bool


ALPACA_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                     "context. Write a response that appropriately completes the request.\n\n"
                     "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
ALPACA_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                   "the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")


def _pairs(record: dict) -> list[tuple[str, str]]:
    """(prompt, answer) turns of a record; a conversation gives one per assistant message."""
    if "messages" not in record:
        return [(record.get("question", ""), record.get("answer", ""))]
    pairs, pending = [], []
    for message in record["messages"]:
        if message["role"] == "assistant":
            pairs.append(("\n".join(pending), message["content"]))
            pending = []
        else:
            pending.append(message["content"])
    return pairs


def _chat_messages(record: dict) -> list[dict]:
    if "messages" in record:
        return [dict(m) for m in record["messages"]]
    return [{"role": "user", "content": record.get("question", "")},
            {"role": "assistant", "content": record.get("answer", "")}]


def _apply_chat(tokenizer, messages, add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _render_chat(record: dict, tokenizer, include_answer: bool) -> list[Segment]:
    if tokenizer is None:
        raise DataError("the chat template needs the model's tokenizer; pick a model, or use the classic, "
                        "alpaca or plain template", field="template")
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"the tokenizer of {getattr(tokenizer, 'name_or_path', 'this model')!r} has no chat "
                        "template; use the classic, alpaca or plain template instead", field="template")
    messages = _chat_messages(record)
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        return [Segment(_apply_chat(tokenizer, messages, True), False)]
    if not include_answer:
        return [Segment(_apply_chat(tokenizer, messages[:last], True), False)]
    # Render the conversation turn by turn; the text each assistant message adds is trained, the rest is
    # context. Templates are prefix-stable in practice; if one is not, fall back to the common prefix.
    segments: list[Segment] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _apply_chat(tokenizer, messages[:i], True)
        full = _apply_chat(tokenizer, messages[: i + 1], False)
        cut = len(done) if prompt.startswith(done) else len(os.path.commonprefix([prompt, done]))
        segments.append(Segment(prompt[cut:], False))
        cut = len(prompt) if full.startswith(prompt) else len(os.path.commonprefix([full, prompt]))
        reply = full[cut:]
        body = reply.rstrip()
        # The newline after an end-of-turn marker is context, so the trained part ends on the marker
        # (which often is the EOS token: then no second EOS gets appended).
        segments.append(Segment(body, True))
        segments.append(Segment(reply[len(body):], False))
        done = full
    final = _apply_chat(tokenizer, messages, False)
    if final.startswith(done) and len(final) > len(done):
        segments.append(Segment(final[len(done):], False))  # e.g. trailing user turn
    segments = [s for s in segments if s.text]
    if segments and not segments[-1].trained and not segments[-1].text.strip():
        segments.pop()  # the newline after the last turn: EOS should end the sequence, not follow it
    return segments


def template_fields(record: dict) -> dict[str, str]:
    """The fields a custom template may use for this record."""
    return {k: v for k, v in record.items() if isinstance(v, str)}


def _render_custom(record: dict, template: str, include_answer: bool) -> list[Segment]:
    fields = template_fields(record)
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise DataError(f"the custom template is malformed ({exc}); write fields as {{question}} and a "
                        "literal brace as {{{{ or }}}}", field="custom_template") from None
    names = [name for _, name, _, _ in parsed if name is not None]
    for name in names:
        if name not in fields:
            raise DataError(f"unknown field {{{name}}}; available: " + ", ".join("{" + f + "}" for f in fields),
                            field="custom_template")
    if not any(name in ANSWER_ROLES for name in names):
        raise DataError("the custom template has no answer field; add {answer}, {output} or {completion} "
                        "where the model's reply goes", field="custom_template")
    prompt, answer, in_answer = [], [], False
    for literal, name, spec, conversion in parsed:
        target = answer if in_answer else prompt
        target.append(literal)
        if name is None:
            continue
        if name in ANSWER_ROLES and not in_answer:
            in_answer, target = True, answer
        value = fields[name]
        if conversion:
            value = {"r": repr, "s": str, "a": ascii}[conversion](value)
        target.append(format(value, spec or ""))
    segments = [Segment("".join(prompt), False)]
    if include_answer:
        segments.append(Segment("".join(answer), True))
    return segments


def render_segments(record: dict, data_cfg, tokenizer=None, *, include_answer: bool = True) -> list[Segment]:
    """The text of one record as [Segment(text, trained)] under ``data_cfg.template``.

    With ``include_answer=False`` only the prompt (what generation starts from) is returned.
    """
    template = data_cfg.template
    if "text" in record and "messages" not in record and not record.get("question"):
        # Plain text is learned entirely: there is no prompt to leave out.
        return [Segment(record["text"], True)] if include_answer else [Segment("", False)]
    if template == "chat":
        return _render_chat(record, tokenizer, include_answer)
    if template == "custom":
        return _render_custom(record, data_cfg.custom_template, include_answer)
    segments: list[Segment] = []
    pairs = _pairs(record)
    for number, (question, answer) in enumerate(pairs):
        last = number == len(pairs) - 1
        separator = "\n\n" if number else ""
        if template == "classic":
            prompt = f"{separator}### Question:\n{question}\n### Answer:\n"
        elif template == "alpaca":
            instruction = record.get("instruction") if "instruction" in record and len(pairs) == 1 else question
            extra = record.get("input", "") if "instruction" in record and len(pairs) == 1 else ""
            fill = ALPACA_WITH_INPUT if extra.strip() else ALPACA_NO_INPUT
            prompt = separator + fill.format(instruction=instruction, input=extra)
        elif template == "plain":
            prompt = f"{separator}{question}\n"
        else:
            raise DataError(f"unknown template {template!r}; choose classic, alpaca, chat, plain or custom",
                            field="template")
        segments.append(Segment(prompt, False))
        if last and not include_answer:
            break
        segments.append(Segment(answer, True))
    return segments


def prompt_for(record_or_question, data_cfg, tokenizer=None) -> str:
    """The prompt text (no answer) to generate from, rendered with the data's template."""
    record = ({"question": record_or_question, "answer": ""} if isinstance(record_or_question, str)
              else record_or_question)
    return "".join(s.text for s in render_segments(record, data_cfg, tokenizer, include_answer=False))


# ---------------------------------------------------------------------------------------- tokenization


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX (-100) where the token is not trained
    truncated: bool
    n_trained: int
    full_length: int = 0  # length before truncation

    @property
    def attention_mask(self) -> list[int]:
        return [1] * len(self.input_ids)


_ADDS_BOS: dict[int, tuple[Any, bool]] = {}


def _adds_bos(tokenizer) -> bool:
    cached = _ADDS_BOS.get(id(tokenizer))
    if cached is not None and cached[0] is tokenizer:
        return cached[1]
    bos = getattr(tokenizer, "bos_token_id", None)
    adds = False
    if bos is not None:
        with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
        adds = bool(with_special) and with_special[0] == bos and \
            tokenizer("a", add_special_tokens=False)["input_ids"][:1] != [bos]
    _ADDS_BOS[id(tokenizer)] = (tokenizer, adds)
    return adds


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


_CHARS_PER_TOKEN_BOUND = 32  # a prefix this many characters per needed token is sure to hold enough tokens


def _encode_bounded(tokenizer, text: str, budget: int) -> tuple[list[int], int | None]:
    """Token ids of ``text``; when it is far longer than the ``budget`` tokens still to fill, only a prefix
    is tokenized (a 10 MB row would take seconds) and the full length is estimated: (ids, estimate)."""
    limit = (max(budget, 0) + 64) * _CHARS_PER_TOKEN_BOUND
    if len(text) <= 4 * limit:
        return _encode(tokenizer, text), None
    prefix = _encode(tokenizer, text[:limit])
    # Only the last few tokens of the prefix can differ from the full text's (the cut splits a word).
    if len(prefix) < budget + 16:
        return _encode(tokenizer, text), None
    kept = prefix[: budget + 16]
    return kept, round(len(prefix) * len(text) / limit)


def tokenize_segments(segments: list[Segment], tokenizer, max_length: int,
                      train_on_answers_only: bool = True) -> TokenizedExample:
    """Token ids and labels of rendered segments: each segment tokenized on its own, EOS after the last
    trained segment, BOS first if the tokenizer normally adds one, cut to ``max_length``.

    ``full_length`` is the untruncated length (estimated for huge segments)."""
    pieces = []
    used = 1  # room for BOS
    extra = 0  # estimated tokens beyond those kept from huge segments
    for segment in segments:
        ids, estimate = _encode_bounded(tokenizer, segment.text, max_length - used)
        if estimate is not None:
            extra += estimate - len(ids)
        used += len(ids)
        pieces.append((ids, segment.trained or not train_on_answers_only))
    eos = getattr(tokenizer, "eos_token_id", None)
    trained_positions = [i for i, (_, trained) in enumerate(pieces) if trained]
    if eos is not None and trained_positions:
        ids, trained = pieces[trained_positions[-1]]
        if not ids or ids[-1] != eos:
            pieces[trained_positions[-1]] = (ids + [eos], trained)
    input_ids: list[int] = []
    labels: list[int] = []
    bos = getattr(tokenizer, "bos_token_id", None)
    first = next((ids for ids, _ in pieces if ids), [])
    if bos is not None and _adds_bos(tokenizer) and first[:1] != [bos]:
        input_ids.append(bos)
        labels.append(IGNORE_INDEX)
    for ids, trained in pieces:
        input_ids.extend(ids)
        labels.extend(ids if trained else [IGNORE_INDEX] * len(ids))
    full_length = len(input_ids) + extra
    truncated = full_length > max_length
    if truncated:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    n_trained = sum(1 for label in labels if label != IGNORE_INDEX)
    return TokenizedExample(input_ids, labels, truncated, n_trained, full_length)


def token_mask_view(segments: list[Segment], tokenizer, max_length: int,
                    train_on_answers_only: bool = True) -> list[tuple[str, bool]]:
    """(token text, trained) for each token the model sees, to show which ones it learns."""
    example = tokenize_segments(segments, tokenizer, max_length, train_on_answers_only)
    return [(tokenizer.decode([token_id]), label != IGNORE_INDEX)
            for token_id, label in zip(example.input_ids, example.labels, strict=True)]


# ------------------------------------------------------------------------------------------- preparing


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


def load_records(data_cfg, *, stop: StopToken | None = None, progress: ProgressFn | None = None,
                 max_rows: int | None = None) -> tuple[RawDataset, SchemaGuess, list[dict], list[int]]:
    """Read the source and normalise every row: (raw data, schema, records, line number of each record).

    Row problems raise one DataError naming the source and line, or are added to ``raw.bad_rows``
    when ``data_cfg.skip_bad_rows`` is set.
    """
    raw = load_raw(data_cfg.source, hub_split=data_cfg.hub_split, skip_bad_rows=data_cfg.skip_bad_rows,
                   stop=stop, progress=progress, max_rows=max_rows)
    if not raw.rows:
        raise DataError(f"no usable rows ({len(raw.bad_rows)} bad rows skipped)", source=raw.source)
    try:
        guess = resolve_schema(raw.columns, raw.rows, data_cfg)
    except DataError as exc:
        raise DataError(exc.message, source=raw.source, field=exc.field) from None
    records, lines = [], []
    for index, row in enumerate(raw.rows):
        if stop is not None and index % 1000 == 0:
            stop.raise_if_set()
        try:
            records.append(normalize_record(row, guess.schema, guess.column_map, data_cfg.clean_whitespace))
            lines.append(raw.line_of(index))
        except DataError as exc:
            line = raw.line_of(index)
            if not data_cfg.skip_bad_rows:
                # DataError words its location as "line N"; tables say "row N" in the message instead.
                message = exc.message if "skip bad rows" in exc.message else exc.message + \
                    "; fix it or enable 'skip bad rows'"
                if raw.line_label == "row":
                    error = DataError(f"row {line}: " + (f"field '{exc.field}': " if exc.field else "") + message,
                                      source=raw.source)
                    error.line, error.field = line, exc.field
                else:
                    error = DataError(message, source=raw.source, line=line, field=exc.field)
                raise error from None
            raw.bad_rows.append(BadRow(line, f"field '{exc.field}': {exc.message}" if exc.field else exc.message))
    if not records:
        raise DataError(f"no usable rows: all {len(raw.bad_rows)} rows are bad (first: line "
                        f"{raw.bad_rows[0].line}: {raw.bad_rows[0].message})", source=raw.source)
    raw.bad_rows.sort(key=lambda b: b.line)
    return raw, guess, records, lines


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


def save_jsonl(rows, path: str | Path) -> None:
    """Write rows as JSON Lines (UTF-8), atomically: a temporary file renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------- reports

TRAINED_OPEN, TRAINED_CLOSE = "⟦", "⟧"


def marked_text(segments: list[Segment], train_on_answers_only: bool = True) -> str:
    """The rendered text with the trained parts wrapped in ⟦ ⟧."""
    out = io.StringIO()
    for segment in segments:
        if segment.trained or not train_on_answers_only:
            out.write(f"{TRAINED_OPEN}{segment.text}{TRAINED_CLOSE}")
        else:
            out.write(segment.text)
    return out.getvalue()


def _whitespace_length(segments: list[Segment]) -> int:
    return sum(len(s.text.split()) for s in segments) + 1  # +1 for the end-of-text token


def inspect_report(data_cfg, tokenizer=None, n_examples: int = 3, max_length: int = 256,
                   stats_limit: int = 20000) -> str:
    """Plain-text report for ``data inspect``: schema and why, rows, bad rows, examples with the trained
    part marked, and token-length statistics (whitespace words when no tokenizer is given)."""
    started = time.perf_counter()
    raw, guess, records, lines = load_records(data_cfg)
    out = [f"Dataset:   {raw.source} ({raw.kind})",
           f"Columns:   {', '.join(map(str, raw.columns))}",
           f"Format:    {guess.schema} — {guess.reason}",
           f"Rows:      {len(records)} usable, {len(raw.bad_rows)} bad"
           + (" (skipped)" if raw.bad_rows else "")]
    for bad in raw.bad_rows[:10]:
        out.append(f"  {raw.line_label} {bad.line}: {bad.message}")
    if len(raw.bad_rows) > 10:
        out.append(f"  … and {len(raw.bad_rows) - 10} more")
    out.append(f"Template:  {data_cfg.template}; trained on "
               + ("the answers only" if data_cfg.train_on_answers_only else "the whole text"))
    out.append(f"Legend:    the prompt is shown as-is; the part the model learns to produce is wrapped in "
               f"{TRAINED_OPEN} {TRAINED_CLOSE}" + ("" if tokenizer is None else " (plus the end-of-text token)"))
    for number, record in enumerate(records[:n_examples], start=1):
        segments = render_segments(record, data_cfg, tokenizer)
        out.append("")
        out.append(f"--- Example {number} ({raw.line_label} {lines[number - 1]}) ---")
        out.append(marked_text(segments, data_cfg.train_on_answers_only))
    measured = records[:stats_limit]
    if tokenizer is not None:
        lengths = [tokenize_segments(render_segments(r, data_cfg, tokenizer), tokenizer, max_length,
                                     data_cfg.train_on_answers_only).full_length for r in measured]
        unit = f"tokens ({getattr(tokenizer, 'name_or_path', 'tokenizer')})"
    else:
        lengths = [_whitespace_length(render_segments(r, data_cfg, None)) for r in measured]
        unit = "words (approximate: no tokenizer available, counted by whitespace)"
    stats = LengthStats.from_lengths(lengths, max_length)
    out.append("")
    out.append(f"Lengths in {unit}" + (f", first {stats_limit} examples" if len(records) > stats_limit else "") + ":")
    out.append(f"  min {stats.min}, mean {stats.mean:.1f}, median {stats.median:g}, 95% {stats.p95}, max {stats.max}")
    share = stats.n_over_max / stats.count if stats.count else 0.0
    out.append(f"  {stats.n_over_max} of {stats.count} examples ({share:.1%}) are longer than max length "
               f"{max_length} and would be " + ("dropped" if data_cfg.overlong == "drop" else "truncated"))
    out.append(f"({time.perf_counter() - started:.1f} s)")
    return "\n".join(out)
