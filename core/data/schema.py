"""Schemas: which column plays which role (detection, manual mapping) and the canonical record of each
row (the second stage of core.data).

Preference data (DPO chosen/rejected, KTO label) and tool-call data are recognised and refused for
supervised fine-tuning with a message that says what they are, unless ``data.preference=chosen_only``
asks for the chosen answers (DPO) or the rows labelled true (KTO) explicitly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from core.cancel import ProgressFn, StopToken
from core.data.read import (
    TEXT_CHUNK_CHARS,
    BadRow,
    RawDataset,
    column_value,
    has_column,
    is_message_list,
    iter_jsonl_rows,
    load_raw,
    scan_jsonl,
    streamable_jsonl,
)
from core.errors import DataError

# role -> column names that play it (lower case), best first
ROLE_ALIASES: dict[str, tuple[str, ...]] = {
    "question": ("question", "query", "q", "questions", "user", "human", "prompt", "user_input", "user_message"),
    "answer": ("answer", "response", "reply", "a", "answers", "assistant", "bot", "assistant_response"),
    "instruction": ("instruction", "instructions", "task"),
    "input": ("input", "context", "inputs", "source"),
    "output": ("output", "response", "outputs", "answer", "target", "targets"),
    "prompt": ("prompt", "question", "instruction", "query"),
    "completion": ("completion", "completions", "response"),
    "text": ("text", "content", "document", "body", "passage"),
    "messages": ("messages", "conversations", "conversation", "chat", "dialogue", "dialog", "turns"),
    "system": ("system", "system_prompt", "system_message"),
    "chosen": ("chosen", "chosen_response", "preferred"),
    "rejected": ("rejected", "rejected_response", "dispreferred"),
    "label": ("label", "labels", "kto_label"),
}
# schema -> (required roles, optional roles); the order is the tie-break priority of detection
SCHEMA_ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "preference": (("chosen", "rejected"), ("prompt",)),
    "kto": (("completion", "label"), ("prompt",)),
    "messages": (("messages",), ("system",)),
    "alpaca": (("instruction", "output"), ("input",)),
    "question_answer": (("question", "answer"), ()),
    "prompt_completion": (("prompt", "completion"), ()),
    "input_output": (("input", "output"), ()),
    "text": (("text",), ()),
}
ANSWER_ROLES = ("answer", "output", "completion")
PREFERENCE_CHOICES = ("refuse", "chosen_only")

# chat roles -> the canonical user / assistant / system
_CHAT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
               "bot": "assistant", "model": "assistant", "system": "system", "developer": "system"}
# roles of tool-call (function-calling) conversations: refused by name (see tool_call_problem)
TOOL_ROLES = ("tool", "function", "function_call", "observation", "ipython", "tool_call", "tool_response", "tools")
_TOOL_KEYS = ("tool_calls", "function_call")
_TOOL_COLUMNS = ("tools", "functions", "tool_calls")

DPO_ADVICE = ("train it with DPO, or set data.preference=chosen_only (CLI: --set data.preference=chosen_only, "
              "or --map answer=chosen) to train on the chosen answers only")
KTO_ADVICE = ("train it with KTO, or set data.preference=chosen_only (CLI: --set data.preference=chosen_only) "
              "to train only on the rows labelled true")
TOOL_ADVICE = ("tool calls cannot be trained with these templates: remove the tool turns (or those "
               "conversations), or convert them to plain user/assistant messages")


@dataclass
class SchemaGuess:
    schema: str
    column_map: dict[str, str]  # role -> column name in the data
    reason: str
    # KTO data trained with data.preference=chosen_only: rows whose value in this column is false are left out
    keep_if_true: str = ""


def _lookup(columns: list[str]) -> dict[str, str]:
    """lower-case name -> column; a nested column (``meta.question``) also answers to its last part."""
    found: dict[str, str] = {}
    for column in columns:
        found.setdefault(str(column).strip().lower(), column)
    for column in columns:
        if "." in str(column):
            found.setdefault(str(column).rsplit(".", 1)[1].strip().lower(), column)
    return found


def _map_roles(schema: str, columns: list[str], manual: dict[str, str] | None = None) -> dict[str, str]:
    """role -> column for the schema's roles that the columns (or the manual map) provide."""
    lower = _lookup(columns)
    required, optional = SCHEMA_ROLES[schema]
    mapping: dict[str, str] = {}
    used: set[str] = set(manual.values()) if manual else set()
    for role in required + optional:
        if manual and role in manual:
            mapping[role] = manual[role]
            continue
        for alias in ROLE_ALIASES[role]:
            column = lower.get(alias)
            if column is not None and column not in used:
                mapping[role] = column
                used.add(column)
                break
    return mapping


def _present(row: dict, column: str) -> bool:
    value = column_value(row, column)
    return value is not None and value != ""


def _label_value(value: Any) -> bool | None:
    """A KTO label as a bool (true/false, 1/0, "yes"/"no"), or None when it is not one."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    return None


def _boolean_column(rows: list[dict], column: str) -> bool:
    values = [column_value(r, column) for r in rows[:500] if has_column(r, column)]
    return bool(values) and all(_label_value(v) is not None for v in values)


def detect_schema(columns: list[str], rows: list[dict]) -> SchemaGuess:
    """Guess the format from the column names, checked against the first rows (case-insensitive).

    Nested keys (``meta.question``) are looked at only when the top-level columns fit no format."""
    top = [c for c in columns if "." not in str(c)]
    try:
        return _detect(top, rows)
    except DataError:
        if len(top) == len(columns):
            raise
        return _detect(columns, rows)


def _detect(columns: list[str], rows: list[dict]) -> SchemaGuess:
    sample = rows[:500]
    best: tuple[float, int, str, dict] | None = None
    for priority, schema in enumerate(SCHEMA_ROLES):
        required, _ = SCHEMA_ROLES[schema]
        mapping = _map_roles(schema, columns)
        if not all(role in mapping for role in required):
            continue
        if schema == "kto" and not _boolean_column(sample, mapping["label"]):
            continue  # a "label" column of categories is not a KTO label
        coverage = (sum(all(_present(r, mapping[role]) for role in required) for r in sample) / len(sample)
                    if sample else 1.0)
        key = (coverage, -priority)
        if best is None or key > (best[0], best[1]):
            best = (coverage, -priority, schema, mapping)
    if best is None:
        raise DataError("cannot tell which column is the question and which the answer; columns: "
                        + (", ".join(map(str, columns)) or "(none)")
                        + ". Pick the format by hand and map the columns, e.g. question=<column> answer=<column> "
                          "(CLI: --map question=<column> --map answer=<column>)", field="schema")
    coverage, _, schema, mapping = best
    pairs = ", ".join(str(column) if str(column).lower() == role else f"{column} (as {role})"
                      for role, column in mapping.items())
    reason = f"found the columns {pairs}"
    if sample:
        reason += f" (filled in {coverage:.0%} of the first {len(sample)} rows)"
    return SchemaGuess(schema, mapping, reason)


def preference_kind(columns: list[str], rows: list[dict]) -> str | None:
    """``"dpo"`` (chosen + rejected columns), ``"kto"`` (a true/false label + a completion), or None."""
    lower = _lookup(columns)
    if any(a in lower for a in ROLE_ALIASES["chosen"]) and any(a in lower for a in ROLE_ALIASES["rejected"]):
        return "dpo"
    label = next((lower[a] for a in ROLE_ALIASES["label"] if a in lower), None)
    if label is not None and any(a in lower for a in ROLE_ALIASES["completion"]) and _boolean_column(rows, label):
        return "kto"
    return None


def _preference_refusal(kind: str, columns: list[str]) -> DataError:
    if kind == "dpo":
        shape = "prompt/chosen/rejected" if "prompt" in _lookup(columns) else "chosen/rejected"
        return DataError(f"this is preference data (DPO: {shape}): each row pairs a preferred and a rejected "
                         f"answer, which supervised fine-tuning cannot use as they are; {DPO_ADVICE}",
                         field="preference")
    return DataError("this is preference data (KTO: prompt/completion/label): rows labelled false are bad answers, "
                     f"and supervised fine-tuning would learn them too; {KTO_ADVICE}", field="preference")


def _message_tool_problem(message: Any, number: int) -> str | None:
    if not isinstance(message, dict):
        return None
    lower = {str(k).lower(): v for k, v in message.items()}
    role = lower.get("role", lower.get("from"))
    if isinstance(role, str) and role.strip().lower() in TOOL_ROLES:
        return f"message {number} has the role {role.strip()!r}"
    for key in _TOOL_KEYS:
        if lower.get(key):
            return f"message {number} has {key!r}"
    return None


def tool_call_problem(row: dict, column_map: dict[str, str]) -> str | None:
    """Why ``row`` is tool-call (function-calling) data (e.g. "message 3 has the role 'observation'"), or None."""
    for name in _TOOL_COLUMNS:
        value = row.get(name)
        if value not in (None, "", [], "[]"):
            return f"it has a {name!r} column"
    columns = [column_map[r] for r in ("messages", "chosen", "prompt") if r in column_map]
    for column in columns:
        value = column_value(row, column)
        if isinstance(value, str) and value.lstrip().startswith("["):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                continue
        if isinstance(value, list):
            for number, message in enumerate(value, start=1):
                problem = _message_tool_problem(message, number)
                if problem:
                    return problem
    return None


def resolve_schema(columns: list[str], rows: list[dict], data_cfg, *, allow_preference: bool = False) -> SchemaGuess:
    """The schema to use: detected, or the manual ``data_cfg.schema`` / ``data_cfg.column_map`` (a manual
    mapping always wins). Preference and tool-call data are refused with a DataError that says what
    they are and what to do (see the module docstring); ``allow_preference`` (DPO, core.preference) takes
    preference data as it is."""
    guess = _resolve(columns, rows, data_cfg)
    if allow_preference:
        return guess
    chosen_only = getattr(data_cfg, "preference", "refuse") == "chosen_only"
    kind = "dpo" if guess.schema == "preference" else "kto" if guess.schema == "kto" else preference_kind(columns, rows)
    if kind is not None:
        explicit_chosen = guess.column_map.get("answer") in _chosen_columns(columns) or \
            any(v in _chosen_columns(columns) for k, v in guess.column_map.items()
                if k in ANSWER_ROLES + ("text", "messages"))
        if not chosen_only and not (kind == "dpo" and explicit_chosen and guess.schema != "preference"):
            raise _preference_refusal(kind, columns)
        if kind == "kto":
            lower = _lookup(columns)
            guess.keep_if_true = guess.column_map.get("label") or next(lower[a] for a in ROLE_ALIASES["label"]
                                                                       if a in lower)
            guess.reason += "; KTO data: only the rows labelled true are trained (data.preference=chosen_only)"
        elif guess.schema == "preference":
            guess.reason += "; DPO data: trained on the chosen answers only (data.preference=chosen_only)"
    sample = rows[:200]
    tool_rows = [(i, p) for i, p in ((i, tool_call_problem(r, guess.column_map)) for i, r in enumerate(sample)) if p]
    if sample and len(tool_rows) * 2 >= len(sample):
        index, problem = tool_rows[0]
        raise DataError(f"this is tool-call (function-calling) data ({len(tool_rows)} of the first {len(sample)} "
                        f"rows; e.g. row {index + 1}: {problem}); {TOOL_ADVICE}", field="messages")
    return guess


def _chosen_columns(columns: list[str]) -> set[str]:
    lower = _lookup(columns)
    return {lower[a] for a in ROLE_ALIASES["chosen"] if a in lower}


def _resolve(columns: list[str], rows: list[dict], data_cfg) -> SchemaGuess:
    manual = {str(k).strip().lower(): str(v) for k, v in (data_cfg.column_map or {}).items() if str(v).strip()}
    unknown = [role for role in manual if role not in ROLE_ALIASES]
    if unknown:
        raise DataError(f"unknown role {unknown[0]!r} in the column mapping; roles: {', '.join(ROLE_ALIASES)}",
                        field="column_map")
    lower = {str(c).strip().lower(): c for c in columns}
    for role, column in list(manual.items()):
        actual = column if column in columns else lower.get(column.strip().lower())
        if actual is None and rows and any(has_column(r, column) for r in rows[:100]):
            actual = column  # a nested path the columns list does not show
        if actual is None:
            raise DataError(f"column {column!r} (mapped to {role}) is not in the data; columns: "
                            + ", ".join(map(str, columns)), field="column_map")
        manual[role] = actual
    schema = data_cfg.schema or "auto"
    if schema == "auto" and not manual:
        return detect_schema(columns, rows)
    if schema == "auto":
        # The mapping names the roles: pick the first schema whose required roles it (plus aliases) fills.
        candidates = [s for s in SCHEMA_ROLES if s not in ("preference", "kto")] + ["preference", "kto"]
        for candidate in candidates:
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


def _text_value(value: Any, column: str, *, required: bool, clean: bool) -> str:
    if value is None:
        text = ""
    elif isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, (int, float)):
        text = str(value)  # numbers are fine as text ("1963")
    elif isinstance(value, list) and value and all(_is_text_part(p) for p in value):
        text = _join_parts(value, column)
    else:
        raise DataError(f"expected text, got a {type(value).__name__} ({_short(value)})", field=column)
    text = " ".join(text.split()) if clean else text  # runs of whitespace -> one space, ends stripped
    if required and not text.strip():
        raise DataError("is empty", field=column)
    return text


def _is_text_part(part: Any) -> bool:
    return isinstance(part, str) or (isinstance(part, dict) and ("type" in part or "text" in part))


def _join_parts(parts: list, column: str) -> str:
    """OpenAI content parts: the text parts joined by newlines; an image or audio part cannot be trained."""
    texts = []
    for part in parts:
        if isinstance(part, str):
            texts.append(part)
            continue
        kind = str(part.get("type", "text"))
        if kind in ("text", "input_text", "output_text") and isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            raise DataError(f"has a content part of type {kind!r}; only text parts can be trained on by a text model",
                            field=column)
    return "\n".join(texts)


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[:limit] + "…"


def _normalize_messages(value: Any, column: str, clean: bool, *, need_assistant: bool = True) -> list[dict]:
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
        problem = _message_tool_problem(message, number)
        if problem:
            raise DataError(f"{problem}: this is tool-call (function-calling) data; {TOOL_ADVICE}", field=column)
        lower = {str(k).lower(): v for k, v in message.items()}
        role = lower.get("role", lower.get("from"))
        content = lower.get("content", lower.get("value", lower.get("text")))
        if not isinstance(role, str) or role.strip().lower() not in _CHAT_ROLES:
            raise DataError(f"message {number} has an unknown role {role!r} (expected user/assistant/system "
                            "or human/gpt)", field=column)
        messages.append({"role": _CHAT_ROLES[role.strip().lower()],
                         "content": _text_value(content, f"{column}[{number}].content", required=False, clean=clean)})
    if need_assistant and not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise DataError("the conversation has no (non-empty) assistant message to learn from", field=column)
    return messages


def _from_messages(record: dict, messages: list[dict]) -> dict:
    record["messages"] = messages
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    users = [m["content"] for m in messages[:last] if m["role"] == "user"]
    record["question"] = users[-1] if users else ""
    record["answer"] = messages[last]["content"]
    return record


def _looks_like_messages(value: Any) -> bool:
    if isinstance(value, str) and value.lstrip().startswith("[{"):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return False
    return is_message_list(value)


def _normalize_preference(row: dict, column_map: dict[str, str], clean: bool, answer_role: str) -> dict:
    """The chosen answer (DPO) / the completion (KTO) with its prompt, as a record to train on."""
    answer_column = column_map[answer_role]
    answer = column_value(row, answer_column)
    prompt_column = column_map.get("prompt")
    prompt = column_value(row, prompt_column) if prompt_column else None
    if _looks_like_messages(answer) or _looks_like_messages(prompt):
        messages = []
        if _looks_like_messages(prompt):
            messages = _normalize_messages(prompt, str(prompt_column), clean, need_assistant=False)
        elif prompt not in (None, ""):
            messages = [{"role": "user", "content": _text_value(prompt, str(prompt_column), required=True,
                                                                 clean=clean)}]
        if _looks_like_messages(answer):
            reply = _normalize_messages(answer, answer_column, clean)
            # Conversational DPO files often repeat the prompt inside "chosen": keep it once.
            if messages and reply[: len(messages)] == messages:
                reply = reply[len(messages):]
            messages += reply
        else:
            messages.append({"role": "assistant", "content": _text_value(answer, answer_column, required=True,
                                                                         clean=clean)})
        if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
            raise DataError("the conversation has no (non-empty) assistant message to learn from", field=answer_column)
        return _from_messages({}, messages)
    answer_text = _text_value(answer, answer_column, required=True, clean=clean)
    if prompt_column is None:
        # chosen/rejected without a prompt column: the chosen text is a whole conversation, learned as text
        return {"text": answer_text, "question": "", "answer": answer_text}
    prompt_text = _text_value(prompt, prompt_column, required=True, clean=clean)
    return {"prompt": prompt_text, "completion": answer_text, "question": prompt_text, "answer": answer_text}


def normalize_record(row: dict, schema: str, column_map: dict[str, str], clean_whitespace: bool = True) -> dict:
    """The canonical record of one row: ``question``/``answer`` plus the schema's own roles.

    Raises DataError (with ``field``) for a missing, empty or non-text value.
    """
    if schema == "preference":
        return _normalize_preference(row, column_map, clean_whitespace, "chosen")
    if schema == "kto":
        return _normalize_preference(row, column_map, clean_whitespace, "completion")
    required, optional = SCHEMA_ROLES[schema]
    record: dict[str, Any] = {}
    for role in required + optional:
        column = column_map.get(role)
        if column is None:
            if role in required:
                raise DataError(f"no column for {role}", field=role)
            record[role] = ""
            continue
        if not has_column(row, column) and role in required:
            keys = ", ".join(map(str, row)) or "(none)"
            raise DataError(f"column {column!r} is missing in this row (it has: {keys}); rows with different "
                            "columns (mixed formats) cannot be combined: split the file, or enable 'skip bad rows'",
                            field=column)
        if role == "messages":
            record["messages"] = _normalize_messages(column_value(row, column), column, clean_whitespace)
        else:
            record[role] = _text_value(column_value(row, column), column, required=role in required,
                                       clean=clean_whitespace)
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
        system = record.pop("system", "")
        messages = record["messages"]
        if system.strip() and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": system})
        _from_messages(record, messages)
    return record


def load_records(data_cfg, *, stop: StopToken | None = None, progress: ProgressFn | None = None,
                 max_rows: int | None = None) -> tuple[RawDataset, SchemaGuess, list[dict], list[int]]:
    """Read the source and normalise every row: (raw data, schema, records, row number of each record).

    Row problems raise one DataError naming the source and line, or are added to ``raw.bad_rows``
    when ``data_cfg.skip_bad_rows`` is set. Rows named in ``data_cfg.drop_rows`` (and, for KTO data
    with ``data.preference=chosen_only``, rows labelled false) are left out and listed in ``raw.excluded``.
    """
    raw = load_raw(data_cfg.source, hub_split=data_cfg.hub_split, skip_bad_rows=data_cfg.skip_bad_rows,
                   stop=stop, progress=progress, max_rows=max_rows,
                   text_chunk_chars=getattr(data_cfg, "text_chunk_chars", TEXT_CHUNK_CHARS) or TEXT_CHUNK_CHARS)
    guess, drop = _resolve_raw(raw, data_cfg)
    records, lines = [], []
    # Plain text keeps its paragraphs and line breaks; the clean-up is for table cells.
    clean = data_cfg.clean_whitespace and not raw.plain_text
    for index, row in enumerate(raw.rows):
        if stop is not None and index % 1000 == 0:
            stop.raise_if_set()
        line = raw.line_of(index)
        record = _usable_record(raw, guess, data_cfg, row, line, drop, clean)
        if record is not None:
            records.append(record)
            lines.append(line)
    _finish(raw, bool(records))
    return raw, guess, records, lines


def stream_records(data_cfg, *, stop: StopToken | None = None, progress: ProgressFn | None = None,
                   max_rows: int | None = None) -> tuple[RawDataset, SchemaGuess, Iterator[tuple[int, dict]]]:
    """``load_records`` a row at a time: (raw data, schema, iterator of (row number, record)), the same records,
    row numbers, bad and left-out rows and DataErrors in the same order.

    A JSON Lines file is read twice and never held in memory: a first pass (now) counts it, collects its
    columns and bad rows and detects the format from its first rows; the iterator reads it again and
    normalises each row as it goes (``raw.bad_rows`` and ``raw.excluded`` are complete once it is exhausted).
    Other sources (JSON, CSV, Parquet, text, folders, the Hub, samples) are read whole by ``load_records``
    and only handed out one by one. ``progress`` runs 0 -> 0.5 over the first pass and 0.5 -> 1 over the second.
    """
    path = streamable_jsonl(data_cfg.source)
    if path is None:
        raw, guess, records, lines = load_records(data_cfg, stop=stop, progress=progress, max_rows=max_rows)
        return raw, guess, iter(zip(lines, records, strict=True))

    def scaled(offset: float):
        if progress is None:
            return None
        label = f" (pass {1 + int(offset * 2)} of 2)"
        return lambda fraction, message: progress(None if fraction is None else offset + fraction / 2, message + label)

    raw = scan_jsonl(path, max_rows=max_rows, skip_bad_rows=data_cfg.skip_bad_rows, stop=stop, progress=scaled(0.0))
    guess, drop = _resolve_raw(raw, data_cfg)
    raw.rows, raw.line_numbers = [], []  # the first rows served the detection; the iterator reads the file again

    def records() -> Iterator[tuple[int, dict]]:
        found = False
        for line, row in iter_jsonl_rows(path, max_rows=max_rows, stop=stop, progress=scaled(0.5)):
            record = _usable_record(raw, guess, data_cfg, row, line, drop, data_cfg.clean_whitespace)
            if record is not None:
                found = True
                yield line, record
        _finish(raw, found)

    return raw, guess, records()


def _resolve_raw(raw: RawDataset, data_cfg) -> tuple[SchemaGuess, set[int]]:
    """The schema of ``raw`` (DataError naming its source) and the row numbers data.drop_rows leaves out
    (the bad ones among them move to ``raw.excluded``)."""
    drop = {int(n) for n in (getattr(data_cfg, "drop_rows", None) or [])}
    if drop:
        dropped_bad = [b for b in raw.bad_rows if b.line in drop]
        raw.bad_rows = [b for b in raw.bad_rows if b.line not in drop]
        raw.excluded.extend(BadRow(b.line, "dropped (data.drop_rows)") for b in dropped_bad)
    if not raw.rows:
        raise DataError(f"no usable rows ({len(raw.bad_rows)} bad rows skipped)", source=raw.source)
    try:
        return resolve_schema(raw.columns, raw.rows, data_cfg), drop
    except DataError as exc:
        raise DataError(exc.message, source=raw.source, field=exc.field) from None


def _usable_record(raw: RawDataset, guess: SchemaGuess, data_cfg, row: dict, line: int, drop: set[int],
                   clean: bool) -> dict | None:
    """The canonical record of one row, or None when it is left out (``raw.excluded``) or bad and skipped
    (``raw.bad_rows``); a bad row raises a DataError naming its row when bad rows are not skipped."""
    if line in drop:
        raw.excluded.append(BadRow(line, "dropped (data.drop_rows)"))
        return None
    try:
        if guess.keep_if_true:
            label = _label_value(column_value(row, guess.keep_if_true))
            if label is None:
                raise DataError(f"expected true or false, got {_short(column_value(row, guess.keep_if_true))}",
                                field=guess.keep_if_true)
            if not label:
                raw.excluded.append(BadRow(line, f"{guess.keep_if_true}=false (a bad answer in KTO data): "
                                                 "left out by data.preference=chosen_only"))
                return None
        return normalize_record(row, guess.schema, guess.column_map, clean)
    except DataError as exc:
        if not data_cfg.skip_bad_rows:
            message = exc.message if "skip bad rows" in exc.message else exc.message + \
                "; fix it or enable 'skip bad rows'"
            if raw.line_label == "row" or raw.parts or line in raw.start_lines:
                # DataError words its location as "line N"; tables say "row N (...)" in the message instead.
                error = DataError(f"{raw.where(line)}: " + (f"field '{exc.field}': " if exc.field else "")
                                  + message, source=raw.source)
                error.line, error.field = line, exc.field
            else:
                error = DataError(message, source=raw.source, line=line, field=exc.field)
            raise error from None
        raw.bad_rows.append(BadRow(line, f"field '{exc.field}': {exc.message}" if exc.field else exc.message))
        return None


def _finish(raw: RawDataset, found: bool) -> None:
    """After the last row: a DataError when no record is usable; the bad and left-out rows in row order."""
    if not found:
        if raw.bad_rows:
            first = raw.bad_rows[0]
            raise DataError(f"no usable rows: all {len(raw.bad_rows)} rows are bad (first: {raw.where(first.line)}: "
                            f"{first.message})", source=raw.source)
        raise DataError(f"no usable rows: all {len(raw.excluded)} rows are left out (first: "
                        f"{raw.where(raw.excluded[0].line)}: {raw.excluded[0].message})", source=raw.source)
    raw.bad_rows.sort(key=lambda b: b.line)
    raw.excluded.sort(key=lambda b: b.line)
