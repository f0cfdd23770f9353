"""Big data (issue #17, finding 9): prepare_dataset streams a JSON Lines file into Arrow files on disk and
tokenizes it with datasets.map, with the same examples, counts and messages as the in-memory pipeline it
replaced; progress on the console stays a few lines. Peak memory is measured in bench/big_data.py, not here."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

import core.data.read as read_module
import core.data.schema as schema_module
from core.config import DataConfig
from core.data import (
    load_records,
    prepare_dataset,
    render_segments,
    summarize_records,
    tokenize_segments,
    training_split,
)
from core.data.read import STREAM_HEAD_ROWS
from core.data.schema import stream_records
from core.errors import DataError


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture()
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUNE_STUDIO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FINETUNE_STUDIO_CACHE", raising=False)
    return tmp_path / "home"


def qa_rows(n: int) -> list[dict]:
    return [{"question": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(n)]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def mixed_file(path: Path) -> Path:
    """Short and overlong rows, a prompt that fills max_length, blank lines, a malformed line, an empty answer."""
    lines = [json.dumps(r) for r in qa_rows(30)]
    lines[4] = json.dumps({"question": "long " * 80, "answer": "x"})  # prompt alone fills max_length
    lines[9] = json.dumps({"question": "q", "answer": "word " * 80})  # truncated (or dropped)
    lines[12] = '{"question": "oops", "answer": '  # malformed JSON
    lines[17] = json.dumps({"question": "q", "answer": "   "})  # empty answer
    lines[20] = ""  # a blank line is not a row
    lines[25] = json.dumps({"question": "  spaced   out ", "answer": " Ünïcödé 😀 "})
    return write_lines(path, lines)


def in_memory_reference(data_cfg, tokenizer, max_length: int) -> dict:
    """The previous prepare_dataset, as it was: every record in a list, every example tokenized into Python
    lists (what datasets.Dataset.from_dict was then given)."""
    raw, guess, records, lines = load_records(data_cfg)
    summary = summarize_records(raw, guess, lines, data_cfg)
    train_idx, test_idx, _ = training_split(len(records), data_cfg)
    out = {"train": [], "test": [], "train_records": [], "test_records": [], "lengths": [], "length_rows": [],
           "n_truncated": 0, "n_dropped": 0, "n_empty": 0, "bad_rows": raw.bad_rows, "summary": summary}
    for split, index in [("train", i) for i in train_idx] + [("test", i) for i in test_idx]:
        example = tokenize_segments(render_segments(records[index], data_cfg, tokenizer), tokenizer, max_length,
                                    data_cfg.train_on_answers_only)
        out["lengths"].append(example.full_length)
        out["length_rows"].append(lines[index])
        if example.truncated and data_cfg.overlong == "drop":
            out["n_dropped"] += 1
            continue
        if example.n_trained == 0:
            out["n_dropped"] += 1
            out["n_empty"] += 1
            continue
        out["n_truncated"] += example.truncated
        out[split].append({"input_ids": example.input_ids, "labels": example.labels,
                           "attention_mask": example.attention_mask})
        out[f"{split}_records"].append(records[index])
    return out


@pytest.mark.parametrize("overlong", ["truncate", "drop"])
def test_streamed_prepare_gives_the_in_memory_examples(tmp_path, tokenizer, cache_home, overlong):
    source = mixed_file(tmp_path / "mixed.jsonl")
    data_cfg = DataConfig(source=str(source), test_fraction=0.2, split_seed=3, skip_bad_rows=True,
                          overlong=overlong, drop_rows=[7])
    expected = in_memory_reference(data_cfg, tokenizer, 48)
    prepared = prepare_dataset(data_cfg, tokenizer, 48)
    for split in ("train", "test"):
        got = prepared.train if split == "train" else prepared.test
        assert got.column_names == ["input_ids", "labels", "attention_mask"]
        assert got.to_list() == expected[split], split
        assert prepared.train_records == expected["train_records"] and list(prepared.test_records) == \
            expected["test_records"]
    assert prepared.stats.lengths == expected["lengths"] and prepared.stats.row_numbers == expected["length_rows"]
    assert (prepared.n_truncated, prepared.n_dropped, prepared.n_no_trained_tokens) == \
        (expected["n_truncated"], expected["n_dropped"], expected["n_empty"])
    assert prepared.n_dropped >= 1 and [b.line for b in prepared.bad_rows] == [13, 18]
    assert prepared.summary == expected["summary"] and prepared.summary.excluded_rows[0].line == 7
    # The records read back from the cache are the same objects, indexed, sliced and with their row numbers.
    assert prepared.train_records[0] == expected["train_records"][0]
    assert prepared.train_records[-1] == expected["train_records"][-1]
    assert prepared.train_records[1:3] == expected["train_records"][1:3]
    assert prepared.train_records.line_numbers()[:1] == [prepared.summary.train_rows[0]]
    again = prepare_dataset(data_cfg, tokenizer, 48)
    assert again.from_cache and again.train.to_list() == expected["train"] and again.test_records == \
        prepared.test_records


class _Counted(dict):
    """A dict that counts how many of its kind are alive at once (freed at once by reference counting)."""
    alive = 0
    peak = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _Counted.alive += 1
        _Counted.peak = max(_Counted.peak, _Counted.alive)

    def __del__(self):
        _Counted.alive -= 1


@pytest.fixture()
def counted_rows(monkeypatch):
    """Every row read from a file and every normalised record is a _Counted."""
    as_row, normalize = read_module._as_row, schema_module.normalize_record

    def counted_row(value):
        row, problem = as_row(value)
        return (None if row is None else _Counted(row)), problem

    monkeypatch.setattr(read_module, "_as_row", counted_row)
    monkeypatch.setattr(schema_module, "normalize_record", lambda *a, **k: _Counted(normalize(*a, **k)))
    _Counted.alive = _Counted.peak = 0
    return _Counted


def test_prepare_streams_rows_instead_of_listing_them(tmp_path, tokenizer, cache_home, counted_rows):
    n = 3 * STREAM_HEAD_ROWS
    source = write_lines(tmp_path / "many.jsonl", [json.dumps(r) for r in qa_rows(n)])
    data_cfg = DataConfig(source=str(source))
    # The instrument works: reading into memory holds every row and every record at once.
    raw, _, records, _ = load_records(data_cfg)
    assert counted_rows.peak == 2 * n
    del raw, records
    counted_rows.alive = counted_rows.peak = 0
    prepared = prepare_dataset(data_cfg, tokenizer, 64)
    assert len(prepared.train) + len(prepared.test) == n
    # Streaming: only the first rows (to detect the format) and a record or two are ever alive together.
    assert counted_rows.peak <= STREAM_HEAD_ROWS + 2
    assert isinstance(prepared.train_records[0], dict) and not isinstance(prepared.train_records[0], _Counted)


def test_stream_records_equals_load_records(tmp_path, counted_rows):
    source = mixed_file(tmp_path / "mixed.jsonl")
    for cfg in (DataConfig(source=str(source), skip_bad_rows=True, drop_rows=[7, 13]),
                DataConfig(source=str(source), skip_bad_rows=True, schema="question_answer")):
        raw, guess, records, lines = load_records(cfg)
        s_raw, s_guess, stream = stream_records(cfg)
        pairs = list(stream)
        assert [line for line, _ in pairs] == lines and [r for _, r in pairs] == records and s_guess == guess
        assert (s_raw.columns, s_raw.bad_rows, s_raw.excluded, s_raw.n_in_file, s_raw.source, s_raw.kind) == \
            (raw.columns, raw.bad_rows, raw.excluded, raw.n_in_file, raw.source, raw.kind)


@pytest.mark.parametrize("line, problem, where", [
    ('{"question": "oops", "answer": ', "malformed JSON", "line 3"),
    ('{"question": "q", "answer": "  "}', "field 'answer': is empty", "line 3"),
    ('[1, 2]', "expected a JSON object", "line 3"),
])
def test_bad_rows_are_reported_with_their_line(tmp_path, tokenizer, cache_home, line, problem, where):
    good = json.dumps(qa_rows(1)[0])
    source = write_lines(tmp_path / "bad.jsonl", [good, good, line, good])
    with pytest.raises(DataError) as info:
        prepare_dataset(DataConfig(source=str(source)), tokenizer, 64)
    message = str(info.value)
    assert str(source) in message and where in message and problem in message, message
    prepared = prepare_dataset(DataConfig(source=str(source), skip_bad_rows=True, test_fraction=0.0), tokenizer, 64)
    assert [b.line for b in prepared.bad_rows] == [3] and problem.split(" (")[0] in prepared.bad_rows[0].message
    assert len(prepared.train) == 3 and prepared.summary.line().startswith("4 rows in the file · 1 bad (skipped)")


def test_no_usable_rows_is_one_error(tmp_path, tokenizer, cache_home):
    source = write_lines(tmp_path / "all_bad.jsonl", ['{"question": "q", "answer": ""}', "{nope"])
    with pytest.raises(DataError, match="no usable rows: all 2 rows are bad"):
        prepare_dataset(DataConfig(source=str(source), skip_bad_rows=True), tokenizer, 64)
    assert not list((cache_home / "cache" / "datasets").glob(".*"))  # no half-built folder is left behind


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [False, True])
def test_cli_progress_is_a_few_lines_for_20k_rows(tmp_path, tiny_model_dir, cache_home, terminal):
    from core.cancel import StopToken
    from core.commands.progress import TrainingConsole
    from core.commands.train import check_data_before_the_run
    from core.config import RunConfig

    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(20_000)]
    cfg = RunConfig()
    cfg.data.source = str(write_lines(tmp_path / "20k.jsonl", [json.dumps(r) for r in rows]))
    cfg.model.name_or_path = str(tiny_model_dir)
    stream = _Terminal() if terminal else io.StringIO()
    console = TrainingConsole(stream=stream)
    events = []
    on_status = console.on_status
    console.on_status = lambda event: (events.append(event), on_status(event))[1]  # type: ignore[method-assign]
    check_data_before_the_run(cfg, console, StopToken())
    console._close_bar()
    text = stream.getvalue()
    assert "tokenizing" in text and "tokenized 18000 training and 2000 held-out examples" in text
    # Hundreds of progress events (every 64 examples, every 1,000 lines), but a few lines on the console.
    assert len(events) > 300 and text.count("\n") <= 40, text
    # Each stage's fraction only grows, from 0 to 1 (the GUI's bar too: it gets the same events).
    by_stage: dict[str, list[float]] = {}
    for event in events:
        if event.fraction is not None:
            by_stage.setdefault(event.message.split(":")[0], []).append(event.fraction)
    for stage, fractions in by_stage.items():
        assert fractions == sorted(fractions) and 0.0 <= fractions[0] and fractions[-1] <= 1.0, stage


def test_cache_entry_is_published_once_and_rebuilt_when_damaged(tmp_path, tokenizer, cache_home):
    from core.data.prepare import _build, _publish

    source = write_lines(tmp_path / "qa.jsonl", [json.dumps(r) for r in qa_rows(40)])
    data_cfg = DataConfig(source=str(source))
    first = prepare_dataset(data_cfg, tokenizer, 64)
    folder = cache_home / "cache" / "datasets" / first.fingerprint
    files = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    # Another process (a rank of the same run) finishing second uses the entry already there and removes nothing.
    work = folder.parent / ".second"
    work.mkdir()
    _build(data_cfg, tokenizer, 64, first.fingerprint, work, None, None)
    second = _publish(work, folder)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == files and work.exists()
    assert second.train.to_list() == first.train.to_list()
    # A damaged entry is rebuilt. (Replaced, not overwritten in place: ``first`` still maps the old file.)
    (folder / "train.arrow").unlink()
    (folder / "train.arrow").write_bytes(b"not arrow")
    rebuilt = prepare_dataset(data_cfg, tokenizer, 64)
    assert not rebuilt.from_cache and rebuilt.train.to_list() == first.train.to_list()
    assert prepare_dataset(data_cfg, tokenizer, 64).from_cache
