"""Schemas: which column plays which role (detection, manual mapping) and the canonical record of each
row (the second stage of core.data).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from core.cancel import ProgressFn, StopToken
from core.data.read import BadRow, RawDataset, load_raw
from core.errors import DataError

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


