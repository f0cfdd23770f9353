"""Metrics on known inputs, the teacher-forced loss, and a full evaluation of a hand-made LoRA run."""

from __future__ import annotations

import csv
import json
import math

import pytest

from core.cancel import StopToken
from core.errors import Cancelled


def test_identical_strings_score_perfectly():
    from core.evaluation import corpus_bleu, exact_match, rouge_scores, score_answer, sentence_bleu

    for text in ("Paris", "William Shakespeare", "The quick brown fox jumps over the lazy dog"):
        assert sentence_bleu(text, text) == pytest.approx(100.0)
        assert rouge_scores(text, text)["rouge1"] == pytest.approx(1.0)
        assert rouge_scores(text, text)["rougeL"] == pytest.approx(1.0)
        assert exact_match(text, text) == 1.0
    assert corpus_bleu(["Paris", "Blue sky"], ["Paris", "Blue sky"]) == pytest.approx(100.0)
    scores = score_answer("the cat sat on the mat", "the cat sat on the mat")
    assert scores["rouge2"] == pytest.approx(1.0) and scores["bleu"] == pytest.approx(100.0)


def test_disjoint_strings_score_zero():
    from core.evaluation import corpus_bleu, exact_match, rouge_scores, sentence_bleu

    assert sentence_bleu("alpha beta gamma", "one two three") == 0.0
    assert corpus_bleu(["alpha beta"], ["one two"]) == 0.0
    assert all(v == 0.0 for v in rouge_scores("alpha beta gamma", "one two three").values())
    assert exact_match("alpha", "beta") == 0.0
    assert sentence_bleu("", "Paris") == 0.0


def test_partial_overlap_is_between():
    from core.evaluation import rouge_scores, sentence_bleu

    bleu = sentence_bleu("the cat sat on a mat", "the cat sat on the mat")
    assert 0 < bleu < 100
    rouge = rouge_scores("Paris France", "Paris")
    assert rouge["rouge1"] == pytest.approx(2 * 0.5 * 1.0 / 1.5)  # precision 1/2, recall 1
    # Non-ASCII words count (rouge-score's own tokenizer would drop them all).
    assert rouge_scores("Zürich est belle", "Zürich")["rouge1"] > 0


def test_exact_match_normalisation():
    from core.evaluation import exact_match, normalize_answer

    assert normalize_answer("  The  Eiffel Tower! ") == "eiffel tower"
    assert exact_match("The Beatles.", "beatles") == 1.0
    assert exact_match("An apple, of course", "apple of course") == 1.0
    assert exact_match("Paris", "Paris, France") == 0.0
    assert normalize_answer("There are a few") == "there are few"  # words containing articles survive


def test_svg_chart_escapes_and_draws():
    from core.evaluation import svg_line_chart

    svg = svg_line_chart({"loss <&>": [(1, 3.0), (2, 2.5), (3, 2.0)]}, title="Loss <b>")
    assert svg.startswith("<svg") and "<polyline" in svg
    assert "loss &lt;&amp;&gt;" in svg and "Loss &lt;b&gt;" in svg
    assert "no data" in svg_line_chart({}, title="empty")


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory):
    from lora_run import make_lora_run

    return make_lora_run(tmp_path_factory.mktemp("eval-runs") / "eval-run", tiny_model_dir)


@pytest.fixture()
def session(lora_run, isolated_home):
    from core.generation import ModelSession

    return ModelSession(lora_run, device="cpu")


def test_teacher_forced_loss_matches_the_library_loss(session):
    import torch

    from core.evaluation import teacher_forced_loss

    ids = session.tokenizer("### Question:\nWho wrote Hamlet?\n### Answer:\nWilliam Shakespeare")["input_ids"]
    labels = [-100] * 8 + ids[8:]
    loss, count = teacher_forced_loss(session, [{"input_ids": ids, "labels": labels}], use_adapter=True)
    assert count == len(ids) - 8
    with torch.no_grad(), session.model_for(True) as model:
        expected = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.item()
    assert loss == pytest.approx(expected, rel=1e-5)
    # Padding a batch with a shorter example does not change a row's contribution.
    short = {"input_ids": ids[:10], "labels": labels[:10]}
    both, both_count = teacher_forced_loss(session, [{"input_ids": ids, "labels": labels}, short], use_adapter=True)
    single_short, short_count = teacher_forced_loss(session, [short], use_adapter=True)
    assert both_count == count + short_count
    assert both == pytest.approx((loss * count + single_short * short_count) / both_count, rel=1e-5)


def test_evaluate_run_writes_comparison_and_report(lora_run, session):
    from core.evaluation import evaluate_run

    seen = []
    report = evaluate_run(lora_run, n=2, session=session, progress=lambda f, m: seen.append((f, m)))
    out = lora_run / "evaluation"
    assert report.split == "held-out" and report.n_loss_examples == 3  # 30% of 10 rows
    assert len(report.rows) == 2
    for side in (report.base, report.tuned):
        assert math.isfinite(side["loss"]) and side["perplexity"] == pytest.approx(math.exp(side["loss"]))
        assert {"bleu", "rouge1", "rouge2", "rougeL", "exact_match"} <= set(side)
    assert report.base["loss"] != report.tuned["loss"]  # the adapter changes the model
    fractions = [f for f, _ in seen if f is not None]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0

    rows = [json.loads(line) for line in (out / "comparison.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["question"] for r in rows] == [r.question for r in report.rows]
    first = rows[0]
    assert set(first) >= {"question", "reference", "base_answer", "tuned_answer", "base_scores", "tuned_scores",
                          "delta"}
    assert first["delta"]["bleu"] == pytest.approx(first["tuned_scores"]["bleu"] - first["base_scores"]["bleu"])
    with open(out / "comparison.csv", newline="", encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 2 and "delta_rougeL" in table[0]
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["base"]["loss"] == pytest.approx(report.base["loss"])
    assert metrics["delta"]["loss"] == pytest.approx(report.tuned["loss"] - report.base["loss"])

    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count("<svg") == 2 and "training loss" in page and "learning rate" in page
    assert "http" not in page.replace("http://www.w3.org/2000/svg", "")  # self-contained
    assert "<style>" in page and "perplexity" in page
    assert "base" in report.table() and "Perplexity" in report.table()
    change = report.tuned["loss"] - report.base["loss"]
    assert f"{change:+.3f}" in report.table()  # loss: 3 decimals, signed change


def test_evaluation_on_another_dataset_escapes_its_text(lora_run, session, tmp_path):
    from core.evaluation import data_config_for, evaluate_run
    from core.runs import load_run_config

    data = tmp_path / "other.jsonl"
    rows = [{"question": "<script>alert(1)</script> what?", "answer": "<b>bold</b> & co"},
            {"question": "Two?", "answer": "Two"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    report = evaluate_run(lora_run, data_cfg=data_config_for(str(data), load_run_config(lora_run)), n=5,
                          session=session)
    assert report.split.startswith("all rows of") and len(report.rows) == 2 and report.n_loss_examples == 2
    page = report.report_path.read_text(encoding="utf-8")
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; co" in page


def test_evaluation_is_cancellable(lora_run, session):
    from core.evaluation import evaluate_run

    stop = StopToken()

    def progress(fraction, message):
        if message.startswith("answering"):
            stop.request("user pressed stop")

    with pytest.raises(Cancelled):
        evaluate_run(lora_run, n=3, session=session, progress=progress, stop=stop)


def test_cli_generate_evaluate_export(lora_run, isolated_home, tmp_path, capsys):
    from core.cli import main

    assert main(["generate", str(lora_run), "--prompt", "Who wrote Hamlet?", "--max-new-tokens", "5"]) == 0
    captured = capsys.readouterr()
    assert "tokens/s" in captured.err and "stopped by" in captured.err
    assert main(["generate", str(lora_run), "--prompt", "Who wrote Hamlet?", "--base", "--checkpoint", "1",
                 "--max-new-tokens", "3", "--sample", "--temperature", "0.9"]) == 0
    capsys.readouterr()

    assert main(["evaluate", str(lora_run), "--n", "1", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "Perplexity" in out and "fine-tuned" in out and "report.html" in out
    # Under the table, every score in words with its direction and range (core.glossary).
    from core.glossary import METRIC_KEYS, explain

    assert "What the scores mean:" in out
    for key in METRIC_KEYS:
        assert " ".join(explain(f"metric.{key}").split()) in " ".join(out.split())
    flat = " ".join(out.split())
    assert "Higher is better. Range: 0 to 100." in flat and "Lower is better." in flat

    assert main(["export", str(lora_run), "--adapter", "--output", str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "adapter_config.json").is_file()
    assert main(["export", str(lora_run), "--adapter", "--output", str(tmp_path / "a")]) == 2  # not empty
    assert "not an empty folder" in capsys.readouterr().err
    assert main(["generate", str(tmp_path / "missing-run"), "--prompt", "x"]) == 2
