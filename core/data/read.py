"""Reading: files, folders, Hub datasets and bundled samples into plain rows, with the line or row
number of each (the first stage of core.data).
"""

from __future__ import annotations

import bisect
import csv
import itertools
import json
import os
import re
import socket
import tempfile
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.cancel import ProgressFn, StopToken
from core.errors import DataError

JSONL_EXTENSIONS = (".jsonl", ".ndjson")
TABLE_EXTENSIONS = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet")
TEXT_EXTENSIONS = (".txt", ".md", ".markdown")
DATA_EXTENSIONS = TABLE_EXTENSIONS + TEXT_EXTENSIONS
# Plain text is cut into pieces of about this many characters (~4 characters make a token in English),
# at paragraph breaks when possible; the tokenizer's truncation at max_length handles the rest.
TEXT_CHUNK_CHARS = 1000
_CSV_DELIMITERS = ",;\t|"
# keys a message of a conversation has (OpenAI role/content, ShareGPT from/value)
_MESSAGE_ROLE_KEYS = ("role", "from")
_MESSAGE_CONTENT_KEYS = ("content", "value", "text", "tool_calls", "function_call")


@dataclass
class BadRow:
    line: int  # the row number a user sees (see RawDataset.line_numbers)
    message: str


@dataclass
class RawDataset:
    source: str
    kind: str  # jsonl | json | csv | parquet | text | hf_disk | folder | hub | sample
    columns: list[str]  # top-level columns, then nested keys written parent.child
    rows: list[dict]
    bad_rows: list[BadRow]
    # The row number of every entry of ``rows`` (same length), as a user finds it: the line of a JSONL
    # file, the piece number of plain text, the spreadsheet row of a CSV (header = row 1), the 1-based
    # position in a JSON list / Parquet file / Hub split; in a folder of several files the rows are
    # numbered on across the files. ``data.drop_rows`` and every message use these numbers.
    line_numbers: list[int] = field(default_factory=list)
    line_label: str = "line"  # "line" for JSONL, "row" for tables, "piece" for plain text
    # row number -> line it starts on, where they differ (CSV rows after a multi-line cell, text pieces)
    start_lines: dict[int, int] = field(default_factory=dict)
    # (number of the rows before it, file name, its own label) of each file of a multi-file folder
    parts: list[tuple[int, str, str]] = field(default_factory=list)
    # rows left out on purpose (``data.drop_rows``, KTO rows labelled false): number and why
    excluded: list[BadRow] = field(default_factory=list)
    n_in_file: int = 0  # rows read: usable + bad (+ excluded), blank lines not counted
    plain_text: bool = False  # pieces of .txt/.md files: their line breaks are kept (no whitespace clean-up)

    def line_of(self, index: int) -> int:
        """The row number (see ``line_numbers``) of ``rows[index]``."""
        return self.line_numbers[index] if index < len(self.line_numbers) else index + 1

    def where(self, number: int) -> str:
        """How a user finds row ``number``: ``line 12``, ``row 7 (line 12)``, ``row 250 (b.parquet row 50)``."""
        text = f"{self.line_label} {number}"
        if self.parts:
            index = bisect.bisect_left([offset for offset, _, _ in self.parts], number) - 1
            offset, name, label = self.parts[max(index, 0)]
            text += f" ({name} {label} {number - offset})"
        line = self.start_lines.get(number)
        if line is not None:
            text += f" (line {line})"
        return text


def column_value(row: dict, column: str) -> Any:
    """The value of ``column`` in ``row``; ``parent.child`` reaches into a nested object."""
    if column in row:
        return row[column]
    value: Any = row
    for key in column.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def has_column(row: dict, column: str) -> bool:
    """True when ``row`` has ``column`` (a ``parent.child`` path reaches into nested objects)."""
    if column in row:
        return True
    value: Any = row
    for key in column.split("."):
        if not isinstance(value, dict) or key not in value:
            return False
        value = value[key]
    return True


def _columns_of(rows: list[dict], nested_sample: int = 1000) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(str(key), None)
    # Nested objects ({"meta": {"question": ...}}) offer their keys as parent.child columns.
    nested: dict[str, None] = {}
    for row in rows[:nested_sample]:
        for key, value in row.items():
            if isinstance(value, dict):
                for child, inner in value.items():
                    nested.setdefault(f"{key}.{child}", None)
                    if isinstance(inner, dict):
                        for grandchild in inner:
                            nested.setdefault(f"{key}.{child}.{grandchild}", None)
    return list(seen) + [name for name in nested if name not in seen]


def _is_message(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    keys = {str(k).lower() for k in value}
    return bool(keys & set(_MESSAGE_ROLE_KEYS)) and bool(keys & set(_MESSAGE_CONTENT_KEYS))


def is_message_list(value: Any) -> bool:
    """True for a conversation: a non-empty list of role/content (or from/value) objects."""
    return isinstance(value, list) and bool(value) and all(_is_message(m) for m in value[:50])


def _as_row(value: Any) -> tuple[dict | None, str | None]:
    """(row, problem): an object is a row; a bare list of messages is one conversation."""
    if isinstance(value, dict):
        return value, None
    if is_message_list(value):
        return {"messages": value}, None
    return None, f"expected a JSON object {{...}}, got {type(value).__name__}"


def _check_binary(path: Path, head: bytes) -> None:
    # Parquet, zip, images... are detected by NUL bytes, which never occur in UTF-8/CSV text.
    if b"\x00" in head:
        raise DataError("this is a binary file, not text (JSONL, JSON, CSV and text files must be UTF-8 text); "
                        "if it is Parquet, give it the .parquet extension", source=str(path))


def _decode(raw: bytes, path: Path, line: int, label: str = "line") -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{label} {line} is not valid UTF-8 text (byte {raw[exc.start:exc.start + 1]!r} at "
                        f"position {exc.start + 1}); re-save the file as UTF-8", source=str(path)) from None


def _decode_whole(raw: bytes, path: Path) -> str:
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise DataError(f"not valid UTF-8 text (byte {raw[exc.start:exc.start + 1]!r}); re-save the file as UTF-8",
                        source=str(path), line=line) from None


def _iter_jsonl(path: Path, *, max_rows=None, skip_bad_rows=False, stop=None, progress=None,
                bad_rows: list[BadRow], **_) -> Iterator[tuple[int, dict]]:
    """(line number, row) for each non-blank line; streams, so a huge file is never held at once."""
    size = path.stat().st_size
    produced = 0
    with open(path, "rb") as handle:
        _check_binary(path, handle.read(8192))
        handle.seek(0)
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # UTF-8 byte-order mark written by some Windows editors
            text = _decode(raw, path, number).strip()  # strip() also drops the \r of CRLF line ends
            if not text:
                continue
            if number % 1000 == 0:
                if stop is not None:
                    stop.raise_if_set()
                if progress is not None and size:
                    progress(handle.tell() / size, f"reading {path.name}: line {number}")
            try:
                row, problem = _as_row(json.loads(text))
            except json.JSONDecodeError as exc:
                row, problem = None, f"malformed JSON ({exc.msg} at column {exc.colno})"
            if problem or row is None:
                if not skip_bad_rows:
                    raise DataError(f"{problem}; fix the line or enable 'skip bad rows'",
                                    source=str(path), line=number)
                bad_rows.append(BadRow(number, str(problem)))
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


# The first rows a streamed file keeps to detect its format: schema detection reads at most the first 500 rows
# and _columns_of nests into the first 1000, so the result equals reading the whole file.
STREAM_HEAD_ROWS = 1000


def streamable_jsonl(source: str) -> Path | None:
    """The path of ``source`` when it is one JSON Lines file (read a row at a time by ``scan_jsonl`` and
    ``iter_jsonl_rows`` instead of into memory), else None."""
    source = str(source).strip()
    if not source or source.lower().startswith("sample:"):
        return None
    path = Path(source).expanduser()
    return path if path.suffix.lower() in JSONL_EXTENSIONS and path.is_file() else None


def scan_jsonl(path: Path, *, max_rows: int | None = None, skip_bad_rows: bool = False,
               stop: StopToken | None = None, progress: ProgressFn | None = None) -> RawDataset:
    """One pass over a JSON Lines file that keeps only what ``load_raw`` would say about it: the columns of
    every row, the bad rows, the count, and the first ``STREAM_HEAD_ROWS`` rows (with their line numbers);
    the same DataErrors as ``load_raw``. The rows themselves are then read again by ``iter_jsonl_rows``."""
    if path.stat().st_size == 0:
        raise DataError("the file is empty", source=str(path))
    bad: list[BadRow] = []
    head, numbers = [], []
    seen: dict[str, None] = {}
    count = 0
    for number, row in _iter_jsonl(path, max_rows=max_rows, skip_bad_rows=skip_bad_rows, stop=stop,
                                   progress=progress, bad_rows=bad):
        count += 1
        for key in row:
            seen.setdefault(str(key), None)
        if len(head) < STREAM_HEAD_ROWS:
            head.append(row)
            numbers.append(number)
    if not count and not bad:
        raise DataError("the file holds no rows (only blank lines or an empty list)", source=str(path))
    # Top-level keys of every row, then the nested keys of the first rows: exactly _columns_of(all rows).
    columns = list(seen) + [name for name in _columns_of(head) if name not in seen]
    data = RawDataset(str(path), "jsonl", columns, head, bad, numbers)
    data.n_in_file = count + len(bad)
    return data


def iter_jsonl_rows(path: Path, *, max_rows: int | None = None, stop: StopToken | None = None,
                    progress: ProgressFn | None = None) -> Iterator[tuple[int, dict]]:
    """(line number, row) of every usable row of a file ``scan_jsonl`` has read (its bad rows are skipped
    silently here: the scan has listed them)."""
    return _iter_jsonl(path, max_rows=max_rows, skip_bad_rows=True, stop=stop, progress=progress, bad_rows=[])


def _one_conversation(document: Any) -> bool:
    """A whole file that is a single conversation: {"messages": [...]} / {"conversations": [...]} (maybe
    with other keys such as "system" or "id"), or a bare list of messages."""
    if isinstance(document, dict):
        return any(is_message_list(value) for value in document.values())
    if isinstance(document, list) and is_message_list(document):
        # A list of role/content objects only (no question/answer columns besides): one conversation.
        allowed = set(_MESSAGE_ROLE_KEYS) | set(_MESSAGE_CONTENT_KEYS) | {"name", "weight", "tool_call_id"}
        return all({str(k).lower() for k in message} <= allowed for message in document)
    return False


def _read_json(path: Path, *, max_rows=None, skip_bad_rows=False, stop=None, progress=None, **_) -> RawDataset:
    raw = path.read_bytes()
    _check_binary(path, raw[:8192])
    text = _decode_whole(raw, path)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        # Many ".json" files are really JSON Lines; read them as such when the first line is an object.
        first = text.lstrip().split("\n", 1)[0].strip()
        try:
            if isinstance(json.loads(first), (dict, list)):
                data = _read_jsonl(path, max_rows=max_rows, skip_bad_rows=skip_bad_rows, stop=stop, progress=progress)
                data.kind = "jsonl"
                return data
        except json.JSONDecodeError:  # not JSON Lines either: the error below describes the JSON problem
            pass
        raise DataError(f"malformed JSON ({exc.msg} at column {exc.colno})", source=str(path),
                        line=exc.lineno) from None
    if _one_conversation(document):
        row = document if isinstance(document, dict) else {"messages": document}
        return RawDataset(str(path), "json", _columns_of([row]), [row], [], [1], "row")
    if isinstance(document, dict):
        lists = {k: v for k, v in document.items() if isinstance(v, list)}
        if isinstance(document.get("data"), list):
            document = document["data"]
        elif len(lists) == 1:
            document = next(iter(lists.values()))
        else:
            raise DataError('expected a list of objects, {"data": [...]}, or one conversation {"messages": [...]}; '
                            "the top-level object has keys " + ", ".join(map(str, document)), source=str(path))
    if not isinstance(document, list):
        raise DataError(f"expected a list of objects, got {type(document).__name__}", source=str(path))
    rows, numbers, bad = [], [], []
    for number, value in enumerate(document, start=1):
        row, problem = _as_row(value)
        if row is None:
            if not skip_bad_rows:
                raise DataError(f"row {number}: {problem}; fix it or enable 'skip bad rows'", source=str(path))
            bad.append(BadRow(number, str(problem)))
            continue
        rows.append(row)
        numbers.append(number)
        if max_rows is not None and len(rows) >= max_rows:
            break
    return RawDataset(str(path), "json", _columns_of(rows), rows, bad, numbers, "row")


def _unquoted_count(line: str, character: str) -> int:
    count, quoted = 0, False
    for c in line:
        if c == '"':
            quoted = not quoted
        elif c == character and not quoted:
            count += 1
    return count


def _csv_delimiter(path: Path) -> str:
    """The delimiter of a CSV: csv.Sniffer on the first 64 kB, checked against the header line (a comma
    file whose cells hold semicolons must not be split at them)."""
    if path.suffix.lower() == ".tsv":
        return "\t"
    with open(path, "rb") as handle:
        head = handle.read(65536)
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    sample = head.decode("utf-8", errors="replace")
    if len(head) == 65536 and "\n" in sample:
        sample = sample[: sample.rfind("\n") + 1]  # whole lines only
    header = sample.split("\n", 1)[0]
    counts = {d: _unquoted_count(header, d) for d in _CSV_DELIMITERS}
    try:
        sniffed = csv.Sniffer().sniff(sample, delimiters=_CSV_DELIMITERS).delimiter
    except csv.Error:
        sniffed = None
    if sniffed and counts.get(sniffed):
        return sniffed
    best = max(_CSV_DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def _read_csv(path: Path, *, max_rows=None, skip_bad_rows=False, stop=None, progress=None, **_) -> RawDataset:
    """Rows are numbered as a spreadsheet shows them (header = row 1); a quoted cell may span several
    lines, so a row whose first line differs from its number says so (``start_lines``)."""
    with open(path, "rb") as handle:
        _check_binary(path, handle.read(8192))
    delimiter = _csv_delimiter(path)
    rows, numbers, bad = [], [], []
    start_lines: dict[int, int] = {}
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
        except csv.Error as exc:
            raise DataError(f"malformed CSV header: {exc}", source=str(path), line=1) from None
        header = [name.strip() for name in header]
        if not any(header):
            raise DataError("the first line (the header with the column names) is empty", source=str(path), line=1)
        number = 1
        last_line = reader.line_num
        try:
            for values in reader:
                number += 1
                start, last_line = last_line + 1, reader.line_num
                if not any(value.strip() for value in values):
                    continue
                if start != number:
                    start_lines[number] = start
                if len(values) != len(header):
                    problem = f"row {number} has {len(values)} fields but the header has {len(header)}" + \
                        (f" (delimiter {delimiter!r})" if len(header) == 1 or len(values) == 1 else "")
                    if not skip_bad_rows:
                        raise DataError(problem + "; fix it or enable 'skip bad rows'", source=str(path), line=start)
                    bad.append(BadRow(number, problem[len(f"row {number} "):]
                                      + (f" (starts on line {start})" if start != number else "")))
                    continue
                rows.append(dict(zip(header, values, strict=True)))
                numbers.append(number)
                if stop is not None and len(rows) % 1000 == 0:
                    stop.raise_if_set()
                if max_rows is not None and len(rows) >= max_rows:
                    break
        except csv.Error as exc:
            raise DataError(f"malformed CSV in row {number + 1}: {exc} (a quoted cell opened on line {last_line + 1} "
                            "may never be closed)", source=str(path), line=reader.line_num) from None
    return RawDataset(str(path), "csv", header, rows, bad, numbers, "row", start_lines)


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
    return RawDataset(str(path), "parquet", _columns_of(rows) or list(table.column_names), rows, [],
                      list(range(1, len(rows) + 1)), "row")


def _paragraphs(text: str) -> Iterator[tuple[int, str]]:
    """(first line, text) of each paragraph (lines separated by blank lines)."""
    start, lines = 0, []
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            if not lines:
                start = number
            lines.append(line.rstrip("\r"))
        elif lines:
            yield start, "\n".join(lines)
            lines = []
    if lines:
        yield start, "\n".join(lines)


def _cut(text: str, limit: int) -> int:
    """Where to cut ``text`` at most ``limit`` characters in: after a sentence end, else at a space."""
    window = text[:limit]
    for pattern in (r"[.!?][\"')\]]?\s", r"\s"):
        ends = [m.end() for m in re.finditer(pattern, window)]
        if ends and ends[-1] > limit // 2:
            return ends[-1]
    return limit


def text_chunks(text: str, chunk_chars: int = TEXT_CHUNK_CHARS) -> list[tuple[int, str]]:
    """(first line, chunk) for plain text cut into pieces of at most ``chunk_chars`` characters: whole
    paragraphs packed together while they fit; a longer paragraph cut after a sentence (or at a space)."""
    chunk_chars = max(50, int(chunk_chars))
    chunks: list[tuple[int, str]] = []
    current: list[str] = []
    current_start, size = 0, 0
    for start, paragraph in _paragraphs(text):
        if current and size + 2 + len(paragraph) > chunk_chars:
            chunks.append((current_start, "\n\n".join(current)))
            current, size = [], 0
        while len(paragraph) > chunk_chars:
            cut = _cut(paragraph, chunk_chars)
            chunks.append((start, paragraph[:cut].rstrip()))
            start += paragraph[:cut].count("\n")
            paragraph = paragraph[cut:].lstrip(" \t")
            if paragraph.startswith("\n"):
                start += 1
                paragraph = paragraph.lstrip()
        if not paragraph:
            continue
        if not current:
            current_start = start
        current.append(paragraph)
        size += len(paragraph) + (2 if len(current) > 1 else 0)
    if current:
        chunks.append((current_start, "\n\n".join(current)))
    return chunks


def _read_text(path: Path, *, max_rows=None, text_chunk_chars=TEXT_CHUNK_CHARS, **_) -> RawDataset:
    """Plain text (.txt, .md) for continued pre-training: one ``text`` row per chunk (``text_chunks``),
    numbered 1, 2, 3... (``start_lines`` has the line each starts on)."""
    with open(path, "rb") as handle:
        if max_rows is None:
            raw = handle.read()
        else:
            # A preview reads only enough for max_rows pieces (a piece holds at most 4 bytes per character).
            raw = handle.read((max_rows + 1) * max(50, int(text_chunk_chars)) * 4 + 65536)
            if handle.read(1):
                raw = raw[: raw.rfind(b"\n") + 1] or raw  # whole lines only: no character cut in two
    _check_binary(path, raw[:8192])
    chunks = text_chunks(_decode_whole(raw, path).replace("\r\n", "\n"), text_chunk_chars)
    if max_rows is not None:
        chunks = chunks[:max_rows]
    # Pieces are numbered 1, 2, 3...: a long paragraph gives several pieces that start on the same line.
    return RawDataset(str(path), "text", ["text"], [{"text": chunk} for _, chunk in chunks], [],
                      list(range(1, len(chunks) + 1)), "piece",
                      {number: line for number, (line, _) in enumerate(chunks, start=1)}, plain_text=True)


_READERS = {".jsonl": _read_jsonl, ".ndjson": _read_jsonl, ".json": _read_json, ".csv": _read_csv,
            ".tsv": _read_csv, ".parquet": _read_parquet, ".txt": _read_text, ".md": _read_text,
            ".markdown": _read_text}


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
    return RawDataset(str(folder), "hf_disk", _columns_of(rows) or list(loaded.column_names), rows, [],
                      list(range(1, len(rows) + 1)), "row")


def _data_files_of(folder: Path, hub_split: str) -> list[Path]:
    def files_with(extensions) -> list[Path]:
        return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in extensions
                      and not any(part.startswith(".") for part in p.relative_to(folder).parts))

    # Text files count only in a folder of text: a downloaded dataset's README.md is not data.
    files = files_with(TABLE_EXTENSIONS) or files_with(TEXT_EXTENSIONS)
    # Hub-style folders name files by split (train-00000.parquet, data/test.jsonl): keep the asked split.
    split_files = [p for p in files if re.search(rf"(^|[\W_]){re.escape(hub_split)}([\W_]|$)",
                                                 str(p.relative_to(folder)))]
    return split_files or files


def _read_folder(folder: Path, *, hub_split="train", max_rows=None, skip_bad_rows=False, stop=None,
                 progress=None, text_chunk_chars=TEXT_CHUNK_CHARS) -> RawDataset:
    if _is_hf_disk_folder(folder) or any(_is_hf_disk_folder(child) for child in folder.iterdir() if child.is_dir()):
        return _read_hf_disk(folder, hub_split, max_rows)
    files = _data_files_of(folder, hub_split)
    if not files:
        raise DataError("this folder holds no data files (" + ", ".join(DATA_EXTENSIONS) + ") and is not a "
                        "dataset saved with `datasets.save_to_disk`", source=str(folder))
    if len(files) == 1:
        data = _read_file(files[0], max_rows=max_rows, skip_bad_rows=skip_bad_rows, stop=stop, progress=progress,
                          text_chunk_chars=text_chunk_chars)
        data.source, data.kind = str(folder), "folder"
        return data
    rows, numbers, bad, columns, parts = [], [], [], [], []
    start_lines: dict[int, int] = {}
    offset = 0
    for path in files:
        remaining = None if max_rows is None else max_rows - len(rows)
        if remaining is not None and remaining <= 0:
            break
        part = _read_file(path, max_rows=remaining, skip_bad_rows=skip_bad_rows, stop=stop, progress=progress,
                          text_chunk_chars=text_chunk_chars)
        # Rows are numbered on across the files, so each number names one row of the folder.
        name = str(path.relative_to(folder))
        parts.append((offset, name, part.line_label))
        rows.extend(part.rows)
        numbers.extend(offset + n for n in part.line_numbers)
        bad.extend(BadRow(offset + b.line, f"{name} {part.line_label} {b.line}: {b.message}") for b in part.bad_rows)
        start_lines.update({offset + n: line for n, line in part.start_lines.items()})
        columns.extend(c for c in part.columns if c not in columns)
        offset += max(part.line_numbers + [b.line for b in part.bad_rows], default=0)
    return RawDataset(str(folder), "folder", columns, rows, bad, numbers, "row", start_lines, parts,
                      plain_text=all(p.suffix.lower() in TEXT_EXTENSIONS for p in files))


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
    """A Hub dataset: the first ``max_rows`` rows streamed (a preview never downloads the whole split),
    or the whole split (training) through the local cache."""
    offline = _env_true("HF_HUB_OFFLINE") or _env_true("HF_DATASETS_OFFLINE")
    # Without this check, datasets retries an unreachable Hub for ~25 s before failing.
    if not offline and not _hub_reachable():
        raise DataError("cannot reach the Hugging Face Hub to download this dataset. Check the internet "
                        "connection, or download it and open the file/folder instead (if it is already in "
                        "your Hugging Face cache, set HF_HUB_OFFLINE=1)", source=source)
    import datasets

    try:
        if max_rows is not None:
            streamed = datasets.load_dataset(source, split=hub_split, streaming=True)
            rows = [dict(row) for row in itertools.islice(iter(streamed), max_rows)]
            columns = _columns_of(rows) or list(getattr(streamed, "column_names", None) or [])
        else:
            loaded = datasets.load_dataset(source, split=hub_split)
            rows = _rows_of_hf_dataset(loaded, None)
            columns = _columns_of(rows) or list(loaded.column_names)
    except (ConnectionError, TimeoutError) as exc:
        raise DataError(f"cannot download from the Hugging Face Hub ({exc}); open a local file instead",
                        source=source) from None
    except FileNotFoundError as exc:
        raise DataError(f"dataset not found on the Hub or in the local cache ({exc})", source=source) from None
    except ValueError as exc:  # unknown split, bad config
        raise DataError(f"cannot load this Hub dataset: {exc}", source=source, field="hub_split") from None
    except Exception as exc:  # DatasetNotFoundError and friends have no common public base
        if type(exc).__module__.startswith(("datasets", "huggingface_hub", "requests", "httpx", "aiohttp", "fsspec")):
            raise DataError(f"cannot load this Hub dataset: {exc}", source=source) from None
        raise
    return RawDataset(source, "hub", columns, rows, [], list(range(1, len(rows) + 1)), "row")


def _read_sample(source: str, max_rows) -> RawDataset:
    from core.samples import load_sample

    rows = load_sample(source.split(":", 1)[1] or "trivia")
    if max_rows is not None:
        rows = rows[:max_rows]
    return RawDataset(source, "sample", ["question", "answer"], rows, [], list(range(1, len(rows) + 1)), "row")


def load_raw(source: str, *, hub_split: str = "train", max_rows: int | None = None, skip_bad_rows: bool = False,
             stop: StopToken | None = None, progress: ProgressFn | None = None,
             text_chunk_chars: int = TEXT_CHUNK_CHARS) -> RawDataset:
    """Read every row of a file, folder, Hub dataset id or ``sample:<topic>`` as plain dicts.

    Malformed rows raise one DataError naming the file and line, or are skipped and listed in
    ``bad_rows`` when ``skip_bad_rows`` is set. Plain text (.txt, .md) becomes ``text`` rows of about
    ``text_chunk_chars`` characters.
    """
    source = str(source).strip()
    if not source:
        raise DataError("no dataset given: choose a file, folder, Hub id or sample:<topic>")
    if source.lower().startswith("sample:"):
        data = _read_sample(source, max_rows)
    else:
        path = Path(source).expanduser()
        kwargs = dict(max_rows=max_rows, skip_bad_rows=skip_bad_rows, stop=stop, progress=progress,
                      text_chunk_chars=text_chunk_chars)
        if path.is_dir():
            data = _read_folder(path, hub_split=hub_split, **kwargs)
        elif path.is_file():
            data = _read_file(path, **kwargs)
        elif looks_like_hub_id(source):
            data = _read_hub(source, hub_split, max_rows)
        else:
            raise DataError("file or folder not found", source=source)
    data.n_in_file = len(data.rows) + len(data.bad_rows)
    return data


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
        row, problem = _as_row(value)  # a bare list of messages is one conversation, as load_raw reads it
        if row is None:
            raise DataError(str(problem), source=str(self.path), line=line)
        return row

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


