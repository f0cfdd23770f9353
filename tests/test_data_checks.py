"""Data checks before training (core.data.checks and `data check`): planted exact and near duplicates,
leakage between the training and held-out split (the same split training uses), short and repeated
answers, placeholders and extreme lengths, each with the file's row numbers; leaving the suggested
rows out of a run through data.drop_rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.config import DataConfig
from core.data import (
    data_summary,
    load_records,
    near_duplicate_groups,
    normalize_text,
    run_checks,
    split_indices,
)

TOPICS = ["volcano", "glacier", "desert", "rainforest", "coral reef", "tundra", "savanna", "wetland", "canyon",
          "prairie", "fjord", "delta", "atoll", "mesa", "steppe", "lagoon", "geyser", "oasis", "plateau", "estuary"]
ASPECTS = ["how it forms", "which animals live there", "its typical climate", "why it matters to people",
           "where the largest one is"]


def base_rows() -> list[dict]:
    """100 distinct questions and answers (no problem planted yet)."""
    rows = []
    for topic in TOPICS:
        for aspect in ASPECTS:
            rows.append({"question": f"Tell me about the {topic}: {aspect}.",
                         "answer": f"A short explanation of {aspect} for the {topic}, in two plain sentences."})
    return rows


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture()
def planted(tmp_path):
    """A 100-row JSONL file (line = row number) with known problems at known lines."""
    rows = base_rows()
    _, test_idx = split_indices(len(rows), 0.1, 42)
    train_idx = [i for i in range(len(rows)) if i not in test_idx]
    # exact duplicate of row 1 at row 30 (both in training, whatever the split: chosen below)
    a, b = train_idx[0], train_idx[25]
    rows[b] = {"question": "  TELL me about the volcano:   how it forms!", "answer": rows[a]["answer"]}
    # near duplicate of row at train_idx[40] (one word changed)
    c, d = train_idx[40], train_idx[60]
    rows[d] = {"question": rows[c]["question"].replace("Tell me", "Tell us"), "answer": "Another answer, rewritten."}
    # leakage: a held-out question that also is in the training split
    t, e = test_idx[0], train_idx[70]
    rows[e] = {"question": rows[t]["question"], "answer": "The same question, trained on."}
    # placeholders and a short answer and an extremely long answer
    f, g, h, k = train_idx[10], train_idx[11], train_idx[12], train_idx[13]
    rows[f]["answer"] = "Dear {{customer_name}}, thank you for asking."
    rows[g]["answer"] = "Please contact [INSERT PHONE NUMBER] for details."
    rows[h]["answer"] = "."
    rows[k]["answer"] = "word " * 3000
    path = write_jsonl(tmp_path / "planted.jsonl", rows)
    line = lambda i: i + 1  # noqa: E731 - a JSONL file's row number is its line
    return path, {"exact": sorted([line(a), line(b)]), "near": sorted([line(c), line(d)]),
                  "leak": (line(t), line(e)), "placeholder": sorted([line(f), line(g)]), "short": [line(h)],
                  "long": [line(k)]}


def finding(report, kind):
    found = [f for f in report.findings if f.kind == kind]
    assert found, f"no {kind} finding in:\n{report.text()}"
    return found[0]


def test_normalize_text_ignores_case_punctuation_and_spacing():
    assert normalize_text("  TELL me   about the Volcano:  how it forms!") == "tell me about the volcano how it forms"
    assert normalize_text("“Quoted” — dash… done") == "quoted dash done"


def test_near_duplicate_groups():
    texts = ["the quick brown fox jumps over the lazy dog near the river bank",
             "the quick brown fox jumped over the lazy dog near the river bank",
             "an entirely different sentence about the weather in the mountains",
             "short one", "short two"]
    assert near_duplicate_groups(texts, 0.6) == [[0, 1]]
    assert near_duplicate_groups(texts, 0.99) == []


def test_checks_find_planted_problems_with_row_numbers(planted):
    path, expected = planted
    report = run_checks(DataConfig(source=str(path)))
    assert report.summary.n_usable == 100 and report.length_unit == "characters"
    exact = finding(report, "duplicate_question")
    held_out, twin = expected["leak"]
    assert sorted(exact.groups) == sorted([expected["exact"], sorted([held_out, twin])])
    assert set(exact.drop) == {expected["exact"][1], max(held_out, twin)}
    near = finding(report, "near_duplicate_question")
    assert expected["near"] in near.groups
    leak = finding(report, "leakage")
    assert leak.groups == [[held_out, twin]] and leak.drop == [held_out]
    assert held_out in report.summary.test_rows and twin in report.summary.train_rows
    assert finding(report, "placeholder").rows == expected["placeholder"]
    assert "{{customer_name}}" in " ".join(finding(report, "placeholder").examples)
    assert finding(report, "short_answer").rows == expected["short"]
    assert finding(report, "extremely_long").rows == expected["long"]
    assert not [f for f in report.findings if f.kind == "repeated_answer"]


def test_repeated_answers_across_many_questions(tmp_path):
    rows = base_rows()
    for i in range(0, 100, 10):
        rows[i]["answer"] = "I am sorry, I cannot help with that."
    report = run_checks(DataConfig(source=str(write_jsonl(tmp_path / "r.jsonl", rows))))
    repeated = finding(report, "repeated_answer")
    assert repeated.groups == [list(range(1, 101, 10))] and repeated.drop == list(range(11, 101, 10))


def test_over_max_length_uses_the_tokenizer(planted, tiny_model_dir):
    from transformers import AutoTokenizer

    path, expected = planted
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    report = run_checks(DataConfig(source=str(path)), tokenizer, 128)
    assert report.length_unit == "tokens" and finding(report, "over_max_length").rows == expected["long"]


def test_dropping_the_suggested_rows_clears_the_findings(planted):
    path, expected = planted
    before = path.read_bytes()
    report = run_checks(DataConfig(source=str(path)))
    drop = report.drop_rows()
    assert set(expected["exact"][1:]) <= set(drop) and expected["leak"][0] in drop
    after = run_checks(DataConfig(source=str(path), drop_rows=drop))
    kinds = {f.kind for f in after.findings}
    assert not kinds & {"duplicate_question", "placeholder", "short_answer", "extremely_long"}
    assert after.summary.n_excluded == len(drop) and after.summary.n_usable == 100 - len(drop)
    _, _, _, lines = load_records(DataConfig(source=str(path), drop_rows=drop))
    assert not set(lines) & set(drop)
    assert path.read_bytes() == before  # the file is never modified


def test_cli_data_check(planted, capsys):
    from core.cli import main

    path, expected = planted
    assert main(["data", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Rows:      100 rows in the file · 100 usable · 90 train / 10 held-out" in out
    assert f"lines {expected['exact'][0]}, {expected['exact'][1]}" in out
    held_out, twin = expected["leak"]
    assert f"lines {held_out}, {twin}" in out and "held-out example also occurs in the training split" in out
    assert "still hold a template placeholder" in out and "data.drop_rows=[" in out
    assert "lengths in characters" in out
    summary = data_summary(DataConfig(source=str(path)))
    assert summary.line() in out
