"""JSON Lines (one JSON object per line, UTF-8, not ASCII-escaped) through the ``jsonlines`` library.

Used for the files the app writes and reads back: metrics.jsonl, evaluation comparisons, exported data.
(Dataset files a user brings are read by ``core.data.read``, which reports bad lines by line number.)
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import jsonlines


def write_record(handle: IO[str], record: Any) -> None:
    """Write ``record`` as one line to an open text file and flush it (a crash loses nothing written)."""
    jsonlines.Writer(handle, flush=True).write(record)


def to_jsonl(records: Iterable[Any]) -> str:
    """``records`` as JSON Lines text (each line ends with a newline), e.g. for an atomic write."""
    buffer = io.StringIO()
    with jsonlines.Writer(buffer) as writer:
        writer.write_all(records)
    return buffer.getvalue()


def read_objects(path: str | os.PathLike, *, skip_invalid: bool = False) -> list[dict]:
    """The JSON objects of a JSON Lines file, blank lines ignored (a missing file gives []).

    ``skip_invalid``: drop lines that are not a JSON object (a line cut short when a writer was killed);
    otherwise the first one raises ValueError naming the file and its line number."""
    try:
        handle = open(Path(path), encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    with handle, jsonlines.Reader(handle) as reader:
        try:
            return list(reader.iter(type=dict, skip_empty=True, skip_invalid=skip_invalid))
        except jsonlines.InvalidLineError as exc:
            raise ValueError(f"{path}: line {exc.lineno} is not a JSON object: {exc.line[:80]!r}") from None
