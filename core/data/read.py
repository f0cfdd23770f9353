"""Reading: files, folders, Hub datasets and bundled samples into plain rows, with the line or row
number of each (the first stage of core.data).
"""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import tempfile
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from core.cancel import ProgressFn, StopToken
from core.errors import DataError

JSONL_EXTENSIONS = (".jsonl", ".ndjson")
DATA_EXTENSIONS = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet")



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
        except json.JSONDecodeError:  # not JSON Lines either: the error below describes the JSON problem
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


