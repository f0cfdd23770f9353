from __future__ import annotations

import hashlib
import json
import time
import tracemalloc
from pathlib import Path

import pytest

from core.cancel import StopToken
from core.config import DataConfig
from core.data import (
    IGNORE_INDEX,
    LazyJsonlTable,
    Segment,
    detect_schema,
    inspect_report,
    load_raw,
    load_records,
    normalize_record,
    prepare_dataset,
    preview_rows,
    prompt_for,
    render_segments,
    resolve_schema,
    save_jsonl,
    split_indices,
    token_mask_view,
    tokenize_segments,
)
from core.errors import Cancelled, DataError

QA = [{"question": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(20)]


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


# ------------------------------------------------------------------------------------------ formats


def test_reads_jsonl_json_csv_parquet_with_the_same_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = QA[:5]
    write_jsonl(tmp_path / "d.jsonl", rows)
    (tmp_path / "list.json").write_text(json.dumps(rows))
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": rows}))
    (tmp_path / "d.csv").write_text("question,answer\n" + "".join(f'"{r["question"]}",{r["answer"]}\n' for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    for name, kind in [("d.jsonl", "jsonl"), ("list.json", "json"), ("wrapped.json", "json"), ("d.csv", "csv"),
                       ("d.parquet", "parquet")]:
        raw = load_raw(str(tmp_path / name))
        assert raw.kind == kind and raw.rows == rows and raw.columns == ["question", "answer"], name
    assert load_raw(str(tmp_path / "d.csv")).line_numbers == [2, 3, 4, 5, 6]  # header is line 1


def test_reads_saved_hf_dataset_and_folder_of_files(tmp_path):
    import datasets

    datasets.Dataset.from_list(QA[:4]).save_to_disk(str(tmp_path / "saved"))
    raw = load_raw(str(tmp_path / "saved"))
    assert raw.kind == "hf_disk" and raw.rows == QA[:4]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(QA[:3]),
                          "validation": datasets.Dataset.from_list(QA[3:5])}).save_to_disk(str(tmp_path / "dd"))
    assert load_raw(str(tmp_path / "dd"), hub_split="validation").rows == QA[3:5]
    with pytest.raises(DataError, match="split 'test' not found; this folder has: train, validation"):
        load_raw(str(tmp_path / "dd"), hub_split="test")
    folder = tmp_path / "files"
    (folder / "data").mkdir(parents=True)
    write_jsonl(folder / "data" / "train.jsonl", QA[:6])
    write_jsonl(folder / "data" / "test.jsonl", QA[6:8])
    assert load_raw(str(folder)).rows == QA[:6]
    assert load_raw(str(folder), hub_split="test").rows == QA[6:8]


def test_hub_id_offline_fails_fast_with_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError) as info:
        load_raw("someone/no-such-dataset-xyz")
    assert "someone/no-such-dataset-xyz" in str(info.value)


def test_unreachable_hub_fails_fast_without_offline_flag(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: refused at once
    with pytest.raises(DataError, match="cannot reach the Hugging Face Hub"):
        load_raw("tatsu-lab/alpaca")


def test_missing_path_is_not_mistaken_for_a_hub_id(tmp_path):
    with pytest.raises(DataError, match="file or folder not found"):
        load_raw(str(tmp_path / "missing.jsonl"))


def test_sample_source():
    raw = load_raw("sample:trivia")
    assert raw.kind == "sample" and len(raw.rows) == 261


# ------------------------------------------------------------------------------------------ schemas


@pytest.mark.parametrize("row, schema, mapping", [
    ({"question": "q", "answer": "a"}, "question_answer", {"question": "question", "answer": "answer"}),
    ({"Question": "q", "ANSWER": "a"}, "question_answer", {"question": "Question", "answer": "ANSWER"}),
    ({"query": "q", "response": "a"}, "question_answer", {"question": "query", "answer": "response"}),
    ({"instruction": "i", "input": "x", "output": "o"}, "alpaca",
     {"instruction": "instruction", "output": "output", "input": "input"}),
    ({"instruction": "i", "context": "x", "response": "o"}, "alpaca",
     {"instruction": "instruction", "output": "response", "input": "context"}),
    ({"prompt": "p", "completion": "c"}, "prompt_completion", {"prompt": "prompt", "completion": "completion"}),
    ({"input": "p", "output": "c"}, "input_output", {"input": "input", "output": "output"}),
    ({"text": "hello"}, "text", {"text": "text"}),
    ({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}, "messages",
     {"messages": "messages"}),
    ({"conversations": [{"from": "human", "value": "u"}, {"from": "gpt", "value": "a"}]}, "messages",
     {"messages": "conversations"}),
])
def test_detect_schema(row, schema, mapping):
    guess = detect_schema(list(row), [row])
    assert guess.schema == schema and guess.column_map == mapping
    assert guess.reason
    record = normalize_record(row, guess.schema, guess.column_map)
    assert record["answer"] in ("a", "o", "c", "hello")


def test_undetectable_columns_name_the_columns():
    with pytest.raises(DataError, match="columns: foo, bar"):
        detect_schema(["foo", "bar"], [{"foo": 1, "bar": 2}])


def test_manual_schema_and_column_map():
    rows = [{"prompt_text": "p", "reply": "r", "question": "other"}]
    guess = resolve_schema(["prompt_text", "reply", "question"], rows,
                           DataConfig(column_map={"question": "prompt_text", "answer": "reply"}))
    assert guess.schema == "question_answer" and guess.column_map == {"question": "prompt_text", "answer": "reply"}
    guess = resolve_schema(["a", "b"], [{"a": 1, "b": 2}], DataConfig(schema="input_output",
                                                                      column_map={"input": "A", "output": "b"}))
    assert guess.column_map == {"input": "a", "output": "b"}  # case-insensitive column names
    with pytest.raises(DataError, match="column 'nope' .* is not in the data"):
        resolve_schema(["a"], [{"a": 1}], DataConfig(column_map={"question": "nope"}))
    with pytest.raises(DataError, match="format 'alpaca' needs a column for instruction"):
        resolve_schema(["question", "answer"], [{}], DataConfig(schema="alpaca"))


def test_alpaca_and_sharegpt_records():
    record = normalize_record({"instruction": "Add", "input": "1+1", "output": 2}, "alpaca",
                              {"instruction": "instruction", "input": "input", "output": "output"})
    assert record == {"instruction": "Add", "input": "1+1", "output": "2", "question": "Add\n\n1+1", "answer": "2"}
    conv = normalize_record({"conversations": [{"from": "system", "value": "Be brief."},
                                               {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
                                               {"from": "human", "value": "Bye"}, {"from": "gpt", "value": "Bye!"}]},
                            "messages", {"messages": "conversations"})
    assert [m["role"] for m in conv["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert conv["question"] == "Bye" and conv["answer"] == "Bye!"


def test_whitespace_cleanup_is_optional():
    row = {"question": "  What   is\n\n this?  ", "answer": "a\tb "}
    mapping = {"question": "question", "answer": "answer"}
    assert normalize_record(row, "question_answer", mapping)["question"] == "What is this?"
    assert normalize_record(row, "question_answer", mapping, clean_whitespace=False)["answer"] == "a\tb "


# ---------------------------------------------------------------------------------------- templates

QA_RECORD = {"question": "What is 2+2?", "answer": "4"}


def joined(segments):
    return "".join(s.text for s in segments), "".join(s.text for s in segments if s.trained)


def test_classic_plain_alpaca_templates():
    assert joined(render_segments(QA_RECORD, DataConfig(template="classic"))) == (
        "### Question:\nWhat is 2+2?\n### Answer:\n4", "4")
    assert joined(render_segments(QA_RECORD, DataConfig(template="plain"))) == ("What is 2+2?\n4", "4")
    text, trained = joined(render_segments(QA_RECORD, DataConfig(template="alpaca")))
    assert text == ("Below is an instruction that describes a task. Write a response that appropriately completes "
                    "the request.\n\n### Instruction:\nWhat is 2+2?\n\n### Response:\n4") and trained == "4"
    alpaca = {"instruction": "Add", "input": "1+1", "output": "2", "question": "Add\n\n1+1", "answer": "2"}
    text, _ = joined(render_segments(alpaca, DataConfig(template="alpaca")))
    assert text.startswith("Below is an instruction that describes a task, paired with an input")
    assert text.endswith("### Instruction:\nAdd\n\n### Input:\n1+1\n\n### Response:\n2")
    assert prompt_for("What is 2+2?", DataConfig()) == "### Question:\nWhat is 2+2?\n### Answer:\n"


def test_text_schema_is_trained_entirely():
    record = normalize_record({"text": "Once upon a time"}, "text", {"text": "text"})
    assert render_segments(record, DataConfig(template="classic")) == [Segment("Once upon a time", True)]


def test_custom_template_trains_from_the_answer_field():
    data_cfg = DataConfig(template="custom", custom_template="Q: {question}\nA: {answer}\n-- end")
    assert render_segments(QA_RECORD, data_cfg) == [Segment("Q: What is 2+2?\nA: ", False),
                                                    Segment("4\n-- end", True)]
    with pytest.raises(DataError) as info:
        render_segments(QA_RECORD, DataConfig(template="custom", custom_template="{instruction} {answer}"))
    message = str(info.value)
    assert "{instruction}" in message and "{question}" in message and "{answer}" in message
    with pytest.raises(DataError, match="no answer field"):
        render_segments(QA_RECORD, DataConfig(template="custom", custom_template="{question}"))


def test_chat_template_trains_every_assistant_turn(tokenizer):
    record = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                           {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Ciao"}],
              "question": "Bye", "answer": "Ciao"}
    segments = render_segments(record, DataConfig(template="chat"), tokenizer)
    text, _ = joined(segments)
    full = tokenizer.apply_chat_template(record["messages"], tokenize=False)
    assert full.startswith(text) and full[len(text):] == "\n"  # only the newline after the last turn goes
    assert [s.text for s in segments if s.trained] == ["Hello<|im_end|>", "Ciao<|im_end|>"]
    prompt = prompt_for(record, DataConfig(template="chat"), tokenizer)
    assert prompt.endswith("<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n")
    example = tokenize_segments(segments, tokenizer, 256)
    # <|im_end|> is not the EOS of this tokenizer, so EOS follows the last trained turn.
    assert example.input_ids[-1] == tokenizer.eos_token_id and example.labels[-1] == tokenizer.eos_token_id


def test_chat_template_without_one_in_the_tokenizer(tokenizer):
    import copy

    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    with pytest.raises(DataError, match="no chat template; use the classic"):
        render_segments(QA_RECORD, DataConfig(template="chat"), plain)


# ------------------------------------------------------------------------------------- tokenization


def test_tokenize_masks_the_prompt_and_appends_eos(tokenizer):
    segments = render_segments(QA_RECORD, DataConfig())
    example = tokenize_segments(segments, tokenizer, 256)
    prompt_ids = tokenizer(segments[0].text, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer("4", add_special_tokens=False)["input_ids"]
    assert example.input_ids == prompt_ids + answer_ids + [tokenizer.eos_token_id]
    assert example.labels == [IGNORE_INDEX] * len(prompt_ids) + answer_ids + [tokenizer.eos_token_id]
    assert example.n_trained == len(answer_ids) + 1 and not example.truncated
    everything = tokenize_segments(segments, tokenizer, 256, train_on_answers_only=False)
    assert everything.labels == everything.input_ids
    short = tokenize_segments(segments, tokenizer, 5)
    assert short.truncated and len(short.input_ids) == 5 and short.full_length == len(example.input_ids)
    # A huge answer is only partly tokenized, yet the kept tokens are exactly those of the full text.
    huge = [Segment("Q: ", False), Segment("What is 2+2? The quick brown fox. " * 6000, True)]
    full = tokenize_segments(huge, tokenizer, 10**7)
    cut = tokenize_segments(huge, tokenizer, 48)
    assert cut.input_ids == full.input_ids[:48] and cut.labels == full.labels[:48] and cut.truncated
    assert abs(cut.full_length - full.full_length) < 0.05 * full.full_length


def test_bos_is_added_when_the_tokenizer_adds_one(tokenizer):
    import copy

    from tokenizers import processors

    bos_tok = copy.deepcopy(tokenizer)
    bos = bos_tok.bos_token_id
    bos_tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos)])
    example = tokenize_segments(render_segments(QA_RECORD, DataConfig()), bos_tok, 256)
    assert example.input_ids[0] == bos and example.labels[0] == IGNORE_INDEX
    assert tokenize_segments(render_segments(QA_RECORD, DataConfig()), tokenizer, 256).input_ids[0] != bos


def test_token_mask_view(tokenizer):
    view = token_mask_view(render_segments(QA_RECORD, DataConfig()), tokenizer, 256)
    assert "".join(t for t, trained in view if trained) == "4<|endoftext|>"
    assert "".join(t for t, trained in view if not trained) == "### Question:\nWhat is 2+2?\n### Answer:\n"


# ---------------------------------------------------------------------------------------- preparing


def test_prepare_dataset_split_cache_and_no_padding(tmp_path, tokenizer, cache_home):
    source = write_jsonl(tmp_path / "qa.jsonl", QA)
    data_cfg = cfg(source, test_fraction=0.2, split_seed=1)
    started = time.perf_counter()
    first = prepare_dataset(data_cfg, tokenizer, 64)
    cold = time.perf_counter() - started
    assert first.train.column_names == ["input_ids", "labels", "attention_mask"]
    assert len(first.train) == 16 and len(first.test) == 4 and len(first.train_records) == 16
    lengths = {len(ids) for ids in first.train["input_ids"]}
    assert len(lengths) > 1  # not padded to max_length
    assert first.stats.count == 20 and first.stats.n_over_max == 0 and first.schema.schema == "question_answer"
    assert not first.from_cache
    started = time.perf_counter()
    second = prepare_dataset(data_cfg, tokenizer, 64)
    warm = time.perf_counter() - started
    print(f"\nprepare_dataset 20 rows: cold {cold * 1000:.0f} ms, cached {warm * 1000:.0f} ms")
    assert second.from_cache and second.fingerprint == first.fingerprint
    assert second.train["input_ids"] == first.train["input_ids"] and second.test_records == first.test_records
    # Same seed -> same split; another seed -> another split; new data contents -> new cache entry.
    assert prepare_dataset(cfg(source, test_fraction=0.2, split_seed=2), tokenizer, 64).test_records != \
        first.test_records
    write_jsonl(source, QA[:10])
    changed = prepare_dataset(data_cfg, tokenizer, 64)
    assert not changed.from_cache and len(changed.train) + len(changed.test) == 10


def test_split_is_deterministic():
    assert split_indices(100, 0.1, 42) == split_indices(100, 0.1, 42)
    train, test = split_indices(100, 0.1, 42)
    assert len(test) == 10 and sorted(train + test) == list(range(100))
    assert split_indices(10, 0.0, 42) == (list(range(10)), [])


def test_prepare_max_examples_overlong_and_no_test(tmp_path, tokenizer, cache_home):
    rows = QA[:8] + [{"question": "long " * 100, "answer": "x"}, {"question": "q", "answer": "word " * 100}]
    source = write_jsonl(tmp_path / "long.jsonl", rows)
    truncated = prepare_dataset(cfg(source, test_fraction=0.0), tokenizer, 40)
    assert truncated.test is None and truncated.stats.n_over_max == 2
    # The long question fills max_length by itself: nothing to learn, so it is left out.
    assert truncated.n_truncated == 1 and truncated.n_dropped == 1 and len(truncated.train) == 9
    assert max(len(ids) for ids in truncated.train["input_ids"]) == 40
    dropped = prepare_dataset(cfg(source, test_fraction=0.0, overlong="drop"), tokenizer, 40)
    assert dropped.n_dropped == 2 and len(dropped.train) == 8
    capped = prepare_dataset(cfg(source, test_fraction=0.0, max_examples=3), tokenizer, 40)
    assert len(capped.train) == 3


def test_prepare_honours_stop(tmp_path, tokenizer, cache_home):
    stop = StopToken()
    stop.request("user pressed stop")
    with pytest.raises(Cancelled, match="user pressed stop"):
        prepare_dataset(cfg(write_jsonl(tmp_path / "s.jsonl", QA)), tokenizer, 64, stop=stop)


def test_real_sample_trivia(tokenizer, cache_home):
    prepared = prepare_dataset(DataConfig(), tokenizer, 256)
    assert len(prepared.train) + len(prepared.test) == 261 and len(prepared.test) == 26
    assert prepared.bad_rows == [] and prepared.n_truncated == 0
    record = prepared.train_records[0]
    assert set(record) == {"question", "answer"} and record["answer"]


# ---------------------------------------------------------------------------------------- bad input


def fingerprint_files(folder: Path) -> dict:
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture()
def bad_files(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    good = json.dumps(QA[0])
    (folder / "malformed.jsonl").write_text(f'{good}\n{{"question": "oops", "answer": \n{good}\n')
    (folder / "empty_field.jsonl").write_text(f'{good}\n{{"question": "q", "answer": "   "}}\n{good}\n')
    (folder / "number.jsonl").write_text('{"question": "Year?", "answer": 1963}\n')
    (folder / "dict.jsonl").write_text(f'{good}\n{good}\n{{"question": {{"a": 1}}, "answer": "x"}}\n')
    (folder / "mixed.jsonl").write_text(f'{good}\n{good}\n{{"instruction": "i", "output": "o"}}\n')
    (folder / "list.json").write_text(json.dumps([QA[0], {"question": "q", "answer": ""}]))
    (folder / "empty.jsonl").write_text("")
    (folder / "blank.jsonl").write_text("\n\n  \n")
    (folder / "binary.jsonl").write_bytes(bytes(range(256)) * 4)
    (folder / "latin1.jsonl").write_bytes(f"{good}\n".encode() + '{"question": "Café?", "answer": "oui"}\n'.encode(
        "latin-1"))
    (folder / "latin1.csv").write_bytes("question,answer\nq,a\nCafé,oui\n".encode("latin-1"))
    (folder / "missing_col.csv").write_text("question,comment\nq,a\n")
    (folder / "ragged.csv").write_text("question,answer\nq,a\nq,a,extra\n")
    return folder


@pytest.mark.parametrize("name, where, what", [
    ("malformed.jsonl", "line 2", "malformed JSON"),
    ("empty_field.jsonl", "line 2", "field 'answer': is empty"),
    ("dict.jsonl", "line 3", "field 'question': expected text, got a dict"),
    ("mixed.jsonl", "line 3", "column 'question' is missing in this row (it has: instruction, output)"),
    ("list.json", "row 2", "field 'answer': is empty"),
    ("empty.jsonl", "empty.jsonl", "the file is empty"),
    ("blank.jsonl", "blank.jsonl", "no rows"),
    ("binary.jsonl", "binary.jsonl", "binary file"),
    ("latin1.jsonl", "line 2", "not valid UTF-8"),
    ("latin1.csv", "line 3", "not valid UTF-8"),
    ("ragged.csv", "line 3", "has 3 fields but the header has 2"),
])
def test_bad_input_gives_one_clear_error(bad_files, name, where, what):
    with pytest.raises(DataError) as info:
        load_records(cfg(bad_files / name))
    message = str(info.value)
    assert str(bad_files / name) in message and where in message and what in message, message


def test_missing_column_in_the_whole_file(bad_files):
    with pytest.raises(DataError, match="format 'question_answer' needs a column for answer"):
        load_records(cfg(bad_files / "missing_col.csv", schema="question_answer"))


@pytest.mark.parametrize("name, lines", [("malformed.jsonl", [2]), ("empty_field.jsonl", [2]),
                                          ("dict.jsonl", [3]), ("mixed.jsonl", [3]), ("ragged.csv", [3])])
def test_skip_bad_rows_counts_them(bad_files, name, lines):
    raw, _, records, _ = load_records(cfg(bad_files / name, skip_bad_rows=True))
    assert [b.line for b in raw.bad_rows] == lines and records


def test_numbers_become_text(bad_files):
    _, _, records, _ = load_records(cfg(bad_files / "number.jsonl"))
    assert records[0]["answer"] == "1963"


def test_inputs_are_never_modified(bad_files, tokenizer, cache_home):
    before = fingerprint_files(bad_files)
    for path in bad_files.iterdir():
        for skip in (False, True):
            try:
                prepare_dataset(cfg(path, skip_bad_rows=skip), tokenizer, 32)
            except DataError:
                pass
    assert fingerprint_files(bad_files) == before


def test_ten_megabyte_row_is_just_long(tmp_path, tokenizer, cache_home):
    big = "lorem ipsum dolor sit amet " * (10_000_000 // 27)
    source = write_jsonl(tmp_path / "big.jsonl", [{"question": "Summarise", "answer": big}, QA[0]])
    assert source.stat().st_size > 10_000_000
    started = time.perf_counter()
    assert len(preview_rows(str(source), 1).rows) == 1
    prepared = prepare_dataset(cfg(source, test_fraction=0.0), tokenizer, 128)
    print(f"\n10 MB row: preview + tokenize in {time.perf_counter() - started:.1f} s")
    assert prepared.n_truncated == 1 and len(prepared.train) == 2
    assert prepared.stats.max > 1_000_000


# ------------------------------------------------------------------------------------ big-file preview


@pytest.fixture(scope="module")
def fifty_mb_jsonl(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("big") / "big.jsonl"
    filler = "x" * 400
    with open(path, "w", encoding="utf-8") as handle:
        number = 0
        while handle.tell() < 50_000_000:
            for _ in range(1000):
                handle.write(json.dumps({"question": f"q{number} {filler}", "answer": f"a{number}"}) + "\n")
                number += 1
            if number % 20000 == 0:
                handle.write("\n")  # blank lines are not rows
    return path


def test_preview_of_a_big_file_streams(fifty_mb_jsonl):
    tracemalloc.start()
    started = time.perf_counter()
    preview = preview_rows(str(fifty_mb_jsonl), 50)
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"\npreview of {fifty_mb_jsonl.stat().st_size / 1e6:.0f} MB JSONL: {seconds * 1000:.1f} ms, "
          f"peak {peak / 1e6:.2f} MB")
    assert len(preview.rows) == 50 and preview.rows[49]["answer"] == "a49"
    assert peak < 2_000_000  # streamed: memory, not time, is the mechanic (time is in bench/)


def test_lazy_jsonl_table_indexes_in_chunks(fifty_mb_jsonl):
    table = LazyJsonlTable(fifty_mb_jsonl, chunk_bytes=4 << 20)
    assert len(table) == 0 and not table.complete
    assert table.index_chunk() is False and 0 < table.fraction_indexed < 0.2
    assert table.row(0)["answer"] == "a0"
    tracemalloc.start()
    started = time.perf_counter()
    table.index_all()
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"\nLazyJsonlTable: indexed {len(table)} rows of {table.size / 1e6:.0f} MB in {seconds:.2f} s, "
          f"peak {peak / 1e6:.1f} MB")
    assert table.complete and peak < 20_000_000
    last = len(table) - 1
    assert table.row(last)["answer"] == f"a{last}"
    assert table.line_number(20000) == 20002  # the blank line after row 19999 is counted as a line
    assert table.row(123_456 % len(table))["answer"] == f"a{123_456 % len(table)}"


def test_lazy_table_reports_malformed_lines(bad_files):
    table = LazyJsonlTable(bad_files / "malformed.jsonl")
    table.index_all()
    assert len(table) == 3
    with pytest.raises(DataError, match="line 2: malformed JSON"):
        table.row(1)
    assert table.rows(0, 3)[1] is None


# ----------------------------------------------------------------------------------- report and CLI


def test_save_jsonl_round_trip(tmp_path):
    rows = [{"text": "é ⟦ü⟧"}, {"text": "two\nlines"}]
    save_jsonl(rows, tmp_path / "out" / "rows.jsonl")
    assert load_raw(str(tmp_path / "out" / "rows.jsonl")).rows == rows
    assert list((tmp_path / "out").iterdir()) == [tmp_path / "out" / "rows.jsonl"]  # no temp file left


def test_inspect_report(tmp_path, tokenizer):
    rows = QA[:4] + [{"question": "long " * 50, "answer": "x"}]
    source = write_jsonl(tmp_path / "r.jsonl", rows)
    report = inspect_report(cfg(source), tokenizer, n_examples=3, max_length=32)
    assert "question_answer" in report and "found the columns question, answer" in report
    assert "Rows:      5 rows in the file · 5 usable · 4 train / 1 held-out" in report
    assert "⟦0⟧" in report and "wrapped in ⟦ ⟧" in report
    assert report.count("--- Example") == 3 and "--- Example 1 of 5 (line 1) ---" in report
    assert "1 of 5 examples (20.0%) are longer than max length 32 and would be truncated: line 5" in report
    assert "longest: line 5 (" in report and "99% " in report
    rough = inspect_report(cfg(source), None)
    assert "approximate" in rough


def test_cli_inspect_and_export(tmp_path, tiny_model_dir, capsys):
    from core.cli import main

    source = write_jsonl(tmp_path / "cli.jsonl", QA[:5])
    assert main(["data", "inspect", str(source), "--model", str(tiny_model_dir), "--max-length", "64",
                 "--template", "alpaca"]) == 0
    out = capsys.readouterr().out
    assert "### Instruction:" in out and "Lengths in tokens" in out
    out_file = tmp_path / "exported.jsonl"
    assert main(["data", "export", str(source), "--output", str(out_file)]) == 0
    exported = load_raw(str(out_file)).rows
    assert exported[0]["text"] == "### Question:\nWhat is 0 plus 0?\n### Answer:\n0"
    assert exported[0]["prompt"] == "### Question:\nWhat is 0 plus 0?\n### Answer:\n" and exported[0]["answer"] == "0"
    assert main(["data", "export", str(source), "--output", str(source)]) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\nnot json\n')
    assert main(["data", "inspect", str(bad), "--model", str(tiny_model_dir)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}, line 2: malformed JSON" in err and "Traceback" not in err
    assert main(["data", "inspect", str(bad), "--model", str(tiny_model_dir), "--skip-bad-rows", "--map",
                 "question=question"]) == 0
    assert "line 2: malformed JSON" in capsys.readouterr().out


def test_cli_without_models_module_counts_words(tmp_path, capsys, monkeypatch):
    import sys

    from core.cli import main

    monkeypatch.setitem(sys.modules, "core.models", None)  # as if core/models.py were not written yet
    source = write_jsonl(tmp_path / "w.jsonl", QA[:2])
    assert main(["data", "inspect", str(source)]) == 0
    out = capsys.readouterr().out
    assert "core.models is not available" in out and "approximate" in out
