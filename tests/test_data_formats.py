"""Formats, detection and mapping, preference and tool-call data, the one count line, length statistics,
the token view of multi-byte text, the streamed Hub preview, and spreadsheet-safe comparison.csv."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from core.config import DataConfig, RunConfig
from core.data import (
    LengthStats,
    Segment,
    check_trainable,
    data_summary,
    detect_schema,
    load_raw,
    load_records,
    prepare_dataset,
    preview_rows,
    require_trainable,
    split_indices,
    text_chunks,
    token_mask_view,
    tokenize_segments,
)
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


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def cfg(source, **kwargs) -> DataConfig:
    return DataConfig(source=str(source), **kwargs)


# ------------------------------------------------------------------------------------ detection, mapping


@pytest.mark.parametrize("columns, schema, mapping", [
    (["prompt", "response"], "question_answer", {"question": "prompt", "answer": "response"}),
    (["question", "answer"], "question_answer", {"question": "question", "answer": "answer"}),
    (["instruction", "input", "output"], "alpaca", {"instruction": "instruction", "output": "output",
                                                    "input": "input"}),
    (["input", "output"], "input_output", {"input": "input", "output": "output"}),
    (["query", "response"], "question_answer", {"question": "query", "answer": "response"}),
    (["context", "response"], "input_output", {"input": "context", "output": "response"}),
    (["human", "assistant"], "question_answer", {"question": "human", "answer": "assistant"}),
    (["prompt", "completion"], "prompt_completion", {"prompt": "prompt", "completion": "completion"}),
    (["text"], "text", {"text": "text"}),
    (["content"], "text", {"text": "content"}),
    (["messages"], "messages", {"messages": "messages"}),
    (["conversations", "system"], "messages", {"messages": "conversations", "system": "system"}),
])
def test_detection_knows_the_usual_names(columns, schema, mapping):
    row = {c: ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
               if c in ("messages", "conversations") else "x") for c in columns}
    guess = detect_schema(columns, [row])
    assert (guess.schema, guess.column_map) == (schema, mapping)


def test_a_manual_mapping_always_wins(tmp_path):
    source = write_jsonl(tmp_path / "m.jsonl", [{"question": "q", "answer": "a", "better": "b"}])
    _, guess, records, _ = load_records(cfg(source, column_map={"answer": "better"}))
    assert guess.column_map == {"question": "question", "answer": "better"} and records[0]["answer"] == "b"
    _, guess, records, _ = load_records(cfg(source, column_map={"question": "answer", "answer": "question"}))
    assert records[0]["question"] == "a" and records[0]["answer"] == "q"


def test_nested_keys_are_columns_and_can_be_mapped(tmp_path):
    source = write_jsonl(tmp_path / "n.jsonl", [{"id": i, "meta": {"q": f"question {i}", "a": f"answer {i}"}}
                                                for i in range(3)])
    raw = load_raw(str(source))
    assert raw.columns == ["id", "meta", "meta.q", "meta.a"]
    _, guess, records, _ = load_records(cfg(source, column_map={"question": "meta.q", "answer": "meta.a"}))
    assert guess.schema == "question_answer" and records[2]["answer"] == "answer 2"


def test_train_and_inspect_share_one_map_option(tmp_path):
    from core.cli import build_parser
    from core.commands.train import build_config

    args = build_parser().parse_args(["train", "--data", "x.csv", "--map", "question=tip_question",
                                      "--map", "answer=tip_answer"])
    assert build_config(args).data.column_map == {"question": "tip_question", "answer": "tip_answer"}
    config = tmp_path / "run.yaml"
    base = RunConfig()
    base.data.column_map = {"question": "q", "answer": "a"}
    base.save(config)
    args = build_parser().parse_args(["train", "--config", str(config), "--map", "answer=reply"])
    assert build_config(args).data.column_map == {"question": "q", "answer": "reply"}
    inspect = build_parser().parse_args(["data", "inspect", "x.csv", "--map", "question=tip_question"])
    assert inspect.map == ["question=tip_question"]


# --------------------------------------------------------------------------------------------- formats


def test_openai_content_parts_are_joined_and_an_image_part_is_named(tmp_path):
    rows = [{"messages": [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                          {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]},
                          {"role": "assistant", "content": [{"type": "text", "text": "Hello."}]}]},
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                          {"role": "assistant", "content": "A cat."}]}]
    source = write_jsonl(tmp_path / "parts.jsonl", rows)
    raw, _, records, _ = load_records(cfg(source, skip_bad_rows=True, clean_whitespace=False))
    assert records[0]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert records[0]["question"] == "Hi\nthere" and records[0]["answer"] == "Hello."
    assert [b.line for b in raw.bad_rows] == [2] and "'image_url'" in raw.bad_rows[0].message


def test_single_conversation_json_is_one_row(tmp_path):
    conversation = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
                    {"from": "human", "value": "Bye"}, {"from": "gpt", "value": "Goodbye"}]
    for name, document in [("a.json", {"conversations": conversation}), ("b.json", {"messages": conversation}),
                           ("c.json", conversation)]:
        (tmp_path / name).write_text(json.dumps(document), encoding="utf-8")
        raw, guess, records, _ = load_records(cfg(tmp_path / name))
        assert len(raw.rows) == 1 and guess.schema == "messages" and len(records[0]["messages"]) == 4
    # a JSONL line holding a bare list of messages is one conversation too
    source = write_jsonl(tmp_path / "lists.jsonl", [conversation, conversation[:2]])
    _, guess, records, _ = load_records(cfg(source))
    assert guess.schema == "messages" and [len(r["messages"]) for r in records] == [4, 2]


def test_csv_delimiters_and_multi_line_cells_name_row_and_line(tmp_path):
    path = tmp_path / "semi.csv"
    path.write_text('question;answer\n"Two\nlines?";yes\nq2;a2\n"Three\nline\ncell";a3\nq4;a4;extra\n', encoding="utf-8")
    raw = load_raw(str(path), skip_bad_rows=True)
    assert [r["question"] for r in raw.rows] == ["Two\nlines?", "q2", "Three\nline\ncell"]
    assert raw.line_numbers == [2, 3, 4] and raw.where(4) == "row 4 (line 5)" and raw.where(2) == "row 2"
    assert raw.bad_rows[0].line == 5 and "starts on line 8" in raw.bad_rows[0].message
    with pytest.raises(DataError) as info:
        load_raw(str(path))
    assert "line 8" in str(info.value) and "row 5 has 3 fields but the header has 2" in str(info.value)
    tab = tmp_path / "tab.csv"
    tab.write_text("question\tanswer\nWhat, exactly?\tThis; that.\n", encoding="utf-8")
    assert load_raw(str(tab)).rows == [{"question": "What, exactly?", "answer": "This; that."}]
    comma = tmp_path / "comma.csv"
    comma.write_text('question,answer\n"Semi; colons; here",fine\n', encoding="utf-8")
    assert load_raw(str(comma)).rows == [{"question": "Semi; colons; here", "answer": "fine"}]


def test_a_bad_value_in_a_multi_line_csv_names_row_and_line(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text('question,answer\n"a\nb",x\nq,\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_records(cfg(path))
    assert "row 3 (line 4): field 'answer': is empty" in str(info.value)


def test_jsonl_with_bom_and_crlf(tmp_path):
    path = tmp_path / "win.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"question": "q1", "answer": "a1"}\r\n\r\n{"question": "q2", "answer": "a2"}\r\n')
    raw = load_raw(str(path))
    assert raw.rows == [{"question": "q1", "answer": "a1"}, {"question": "q2", "answer": "a2"}]
    assert raw.line_numbers == [1, 3]


def test_plain_text_is_cut_into_pieces_at_paragraphs(tmp_path):
    paragraphs = [f"Paragraph {i} " + "word " * (20 + 10 * i) for i in range(4)]
    text = "\n\n".join(p.strip() + "\nsecond line." for p in paragraphs)
    chunks = text_chunks(text, 300)
    assert all(len(chunk) <= 300 for _, chunk in chunks)
    assert "".join(chunk.replace("\n", " ").replace(" ", "") for _, chunk in chunks) == \
        text.replace("\n", " ").replace(" ", "")  # nothing lost, nothing repeated
    lines = text.split("\n")
    for line, chunk in chunks:
        assert lines[line - 1].strip() and chunk.split("\n")[0].split(" ")[0] in lines[line - 1]
    path = tmp_path / "book.txt"
    path.write_text(text, encoding="utf-8")
    raw, guess, records, numbers = load_records(cfg(path, text_chunk_chars=300))
    assert raw.kind == "text" and guess.schema == "text" and numbers == list(range(1, len(chunks) + 1))
    assert [raw.start_lines[n] for n in numbers] == [line for line, _ in chunks]
    assert raw.where(2) == f"piece 2 (line {chunks[1][0]})"
    # one long paragraph gives several pieces, each with its own number
    long = tmp_path / "long.txt"
    long.write_text("A sentence that goes on. " * 100, encoding="utf-8")
    raw = load_raw(str(long), text_chunk_chars=300)
    assert len(raw.rows) > 1 and raw.line_numbers == list(range(1, len(raw.rows) + 1))
    assert set(raw.start_lines.values()) == {1}
    assert load_raw(str(long), max_rows=2, text_chunk_chars=300).rows == raw.rows[:2]  # a preview reads the start
    assert "\nsecond line." in records[0]["text"]  # line breaks kept: whitespace clean-up is for table cells


def test_parquet_shards_are_numbered_on_across_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "shards"
    folder.mkdir()
    pq.write_table(pa.table({"question": ["a", "b"], "answer": ["1", "2"]}), folder / "train-00000.parquet")
    pq.write_table(pa.table({"question": ["c", "d", "e"], "answer": ["3", "4", "5"]}), folder / "train-00001.parquet")
    raw = load_raw(str(folder))
    assert raw.line_numbers == [1, 2, 3, 4, 5] and raw.where(4) == "row 4 (train-00001.parquet row 2)"
    _, _, records, lines = load_records(cfg(folder, drop_rows=[4]))
    assert [r["question"] for r in records] == ["a", "b", "c", "e"] and lines == [1, 2, 3, 5]


# ------------------------------------------------------------------------------ preference and tool calls

DPO = [{"prompt": f"Question {i}?", "chosen": f"Good answer {i}.", "rejected": f"Bad answer {i}."} for i in range(5)]
KTO = [{"prompt": f"Question {i}?", "completion": f"Answer {i}.", "label": i % 2 == 0} for i in range(6)]


def test_dpo_data_is_refused_with_what_to_do(tmp_path):
    source = write_jsonl(tmp_path / "dpo.jsonl", DPO)
    with pytest.raises(DataError) as info:
        load_records(cfg(source))
    message = str(info.value)
    assert "this is preference data (DPO: prompt/chosen/rejected)" in message and "train it with DPO" in message
    assert "data.preference=chosen_only" in message and "--map answer=chosen" in message
    _, guess, records, _ = load_records(cfg(source, preference="chosen_only"))
    assert guess.schema == "preference" and "chosen answers only" in guess.reason
    assert [(r["question"], r["answer"]) for r in records][:1] == [("Question 0?", "Good answer 0.")]
    _, guess, records, _ = load_records(cfg(source, column_map={"answer": "chosen"}))
    assert guess.schema == "question_answer" and records[1]["answer"] == "Good answer 1."
    assert not any("Bad answer" in json.dumps(r) for r in records)


def test_conversational_dpo_keeps_the_prompt_once(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": "Hi?"}],
             "chosen": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello!"}],
             "rejected": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Go away."}]}]
    source = write_jsonl(tmp_path / "conv.jsonl", rows)
    _, _, records, _ = load_records(cfg(source, preference="chosen_only"))
    assert records[0]["messages"] == [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello!"}]


def test_kto_data_trains_only_rows_labelled_true_when_asked(tmp_path):
    source = write_jsonl(tmp_path / "kto.jsonl", KTO)
    with pytest.raises(DataError, match=r"this is preference data \(KTO: prompt/completion/label\)"):
        load_records(cfg(source))
    with pytest.raises(DataError, match="KTO"):  # a mapping that ignores the labels is refused too
        load_records(cfg(source, column_map={"question": "prompt", "answer": "completion"}))
    raw, guess, records, lines = load_records(cfg(source, preference="chosen_only"))
    assert guess.schema == "kto" and lines == [1, 3, 5] and [r["answer"] for r in records] == \
        ["Answer 0.", "Answer 2.", "Answer 4."]
    assert [b.line for b in raw.excluded] == [2, 4, 6] and "label=false" in raw.excluded[0].message
    summary = data_summary(cfg(source, preference="chosen_only"))
    assert summary.line() == "6 rows in the file · 3 left out · 3 usable · 2 train / 1 held-out"


def test_a_label_column_of_categories_is_not_kto(tmp_path):
    source = write_jsonl(tmp_path / "cat.jsonl", [{"prompt": "p", "completion": "c", "label": "sports"}] * 3)
    _, guess, _, _ = load_records(cfg(source))
    assert guess.schema == "prompt_completion"


def test_tool_call_data_is_refused_by_name(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "Weather?"},
                          {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function"}]},
                          {"role": "tool", "content": "{\"t\": 4}"}, {"role": "assistant", "content": "4 C."}]}] * 3
    source = write_jsonl(tmp_path / "tools.jsonl", rows)
    with pytest.raises(DataError) as info:
        load_records(cfg(source))
    assert "tool-call (function-calling) data" in str(info.value) and "'tool_calls'" in str(info.value)
    # a few tool rows among ordinary ones are bad rows that say why
    plain = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    source = write_jsonl(tmp_path / "mixed.jsonl", [plain] * 5 + rows[:1])
    raw, _, records, _ = load_records(cfg(source, skip_bad_rows=True))
    assert len(records) == 5 and raw.bad_rows[0].line == 6 and "tool-call" in raw.bad_rows[0].message


# ------------------------------------------------------------------------------------- one honest count


def test_the_count_line_adds_up(tmp_path):
    path = tmp_path / "tips.csv"
    lines = ["tip_question,tip_answer"] + [f"Question number {i}?,Answer {i}" for i in range(118)]
    lines[10:10] = ["broken,row,with,fields"]
    lines[50:50] = ["Empty answer?,"]
    lines[90:90] = ["Another broken,row,here"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    data_cfg = cfg(path, column_map={"question": "tip_question", "answer": "tip_answer"})
    summary = data_summary(data_cfg)
    assert summary.n_in_file == 121 and summary.n_bad == 3 and summary.n_usable == 118
    assert summary.n_train + summary.n_test == summary.n_usable == len(summary.usable_rows)
    assert summary.n_usable + summary.n_bad + summary.n_excluded == summary.n_in_file
    assert summary.line() == "121 rows in the file · 3 bad (not skipped: training stops) · 118 usable · " \
                             "106 train / 12 held-out"
    assert [b.line for b in summary.bad_rows] == [11, 51, 91]
    problems = check_trainable(data_cfg)
    assert len(problems) == 1 and "row 11" in problems[0] and str(path) in problems[0]
    data_cfg.skip_bad_rows = True
    assert check_trainable(data_cfg) == [] and require_trainable(data_cfg).n_train == 106
    train_idx, test_idx = split_indices(118, 0.1, 42)
    assert summary.test_rows == [summary.usable_rows[i] for i in test_idx]
    data_cfg.drop_rows = [11, 12, 13]
    dropped = data_summary(data_cfg)
    assert dropped.line() == "121 rows in the file · 2 bad (skipped) · 3 left out · 116 usable · " \
                             "104 train / 12 held-out"
    assert [b.line for b in dropped.excluded_rows] == [11, 12, 13]
    data_cfg.max_examples = 50
    assert data_summary(data_cfg).line().endswith("116 usable · 50 used (max examples) · 45 train / 5 held-out")


def test_check_trainable_needs_no_model_and_names_the_problem(tmp_path):
    assert "file or folder not found" in check_trainable(cfg(tmp_path / "missing.jsonl"))[0]
    source = write_jsonl(tmp_path / "x.jsonl", [{"tip": "a", "hint": "b"}])
    assert "cannot tell which column" in check_trainable(cfg(source))[0]


# --------------------------------------------------------------------------------------- lengths


def test_length_stats_know_their_rows():
    lengths = [10, 12, 11, 9, 1419, 13, 12, 300]
    rows = [2, 3, 4, 5, 6, 7, 8, 9]
    stats = LengthStats.from_lengths(lengths, 256, rows)
    assert stats.longest(2) == [(6, 1419), (9, 300)] and stats.truncated_rows() == [6, 9]
    assert stats.p99 == 1419 and stats.p95 == 1419
    outlier_tokens = 5000  # a token length, not a time: one planted outlier past the p99 clip
    many = [20 + i % 30 for i in range(200)] + [outlier_tokens]
    stats = LengthStats.from_lengths(many, 64, list(range(1, 202)))
    bars = stats.histogram(10)
    assert bars.overflow_from == stats.p99 < outlier_tokens and bars.overflow_rows == [201]
    assert sum(bars.counts) + len(bars.overflow_rows) == 201 and len(bars.edges) == len(bars.counts) + 1
    assert sorted(r for bar in bars.rows for r in bar) == list(range(1, 201))


def test_prepare_honours_drop_rows_and_reports_rows(tmp_path, tokenizer, cache_home):
    rows = [{"question": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(20)]
    rows[7] = {"question": "What is long? " + "very " * 200, "answer": "yes"}
    source = write_jsonl(tmp_path / "d.jsonl", rows)
    before = source.read_bytes()
    prepared = prepare_dataset(cfg(source, test_fraction=0.0), tokenizer, 64)
    assert sorted(prepared.stats.row_numbers) == list(range(1, 21)) and prepared.stats.truncated_rows() == [8]
    assert prepared.summary is not None and prepared.summary.n_train == 20
    dropped = prepare_dataset(cfg(source, test_fraction=0.0, drop_rows=[8, 9]), tokenizer, 64)
    assert len(dropped.train) == 18 and dropped.stats.truncated_rows() == []
    assert dropped.summary.line() == "20 rows in the file · 2 left out · 18 usable · 18 train / 0 held-out"
    assert source.read_bytes() == before  # the file is never modified
    cached = prepare_dataset(cfg(source, test_fraction=0.0, drop_rows=[8, 9]), tokenizer, 64)
    assert cached.from_cache and cached.summary == dropped.summary and cached.stats.row_numbers == \
        dropped.stats.row_numbers


# ------------------------------------------------------------------------------------ token view


def test_token_view_shows_multi_byte_text_right(tokenizer):
    segments = [Segment("### Question:\nSay café 😀 日本\n### Answer:\n", False), Segment("café 😀 日本", True)]
    view = token_mask_view(segments, tokenizer, 256)
    example = tokenize_segments(segments, tokenizer, 256)
    assert len(view) == len(example.input_ids)
    text = "".join(t for t, _ in view)
    assert text == "### Question:\nSay café 😀 日本\n### Answer:\ncafé 😀 日本" + tokenizer.eos_token
    assert "\ufffd" not in text
    trained = "".join(t for t, on in view if on)
    assert trained == "café 😀 日本" + tokenizer.eos_token
    assert [on for _, on in view] == [label != -100 for label in example.labels]
    cut = token_mask_view(segments, tokenizer, 12)
    assert len(cut) == 12 and "".join(t for t, _ in cut) == text[: len("".join(t for t, _ in cut))]


# ------------------------------------------------------------------------------------ Hub preview


def test_hub_preview_streams_only_the_first_rows(monkeypatch):
    import datasets

    consumed = []
    calls = []

    def rows():
        for i in range(10_000):
            consumed.append(i)
            yield {"question": f"q{i}", "answer": f"a{i}"}

    def fake_load_dataset(name, split=None, streaming=False, **kwargs):
        calls.append((name, split, streaming))
        if not streaming:
            raise AssertionError("a preview must not download the whole split")
        return datasets.IterableDataset.from_generator(rows)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no reachability probe
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    preview = preview_rows("someone/big-dataset", n=5)
    assert calls == [("someone/big-dataset", "train", True)]
    assert [r["question"] for r in preview.rows] == ["q0", "q1", "q2", "q3", "q4"]
    assert preview.columns == ["question", "answer"] and len(consumed) < 100


# ------------------------------------------------------------------------------------ comparison.csv


def test_comparison_csv_cells_cannot_run_as_formulas(tmp_path):
    from core.evaluation import ComparisonRow, EvaluationReport, spreadsheet_safe, write_evaluation

    assert spreadsheet_safe("=1+1") == "'=1+1" and spreadsheet_safe("plain") == "plain"
    assert spreadsheet_safe(-0.5) == -0.5 and spreadsheet_safe("\tx") == "'\tx"
    scores = {k: 0.0 for k in ("bleu", "rouge1", "rouge2", "rougeL", "exact_match")}
    rows = [ComparisonRow(0, "=HYPERLINK(\"http://x\")", "+1", "-2", "@SUM(A1)", scores, scores, scores),
            ComparisonRow(1, "Normal question", "ref", "base", "tuned", scores, scores, {**scores, "bleu": -0.25})]
    report = EvaluationReport(tmp_path, tmp_path / "evaluation", "data.jsonl", "held-out", 2, 10,
                              {"loss": 1.0}, {"loss": 0.9}, rows)
    write_evaluation(report, RunConfig(), [])
    with open(tmp_path / "evaluation" / "comparison.csv", newline="", encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    assert table[0]["question"] == "'=HYPERLINK(\"http://x\")" and table[0]["reference"] == "'+1"
    assert table[0]["base_answer"] == "'-2" and table[0]["tuned_answer"] == "'@SUM(A1)"
    assert table[1]["question"] == "Normal question" and table[1]["delta_bleu"] == "-0.25"
