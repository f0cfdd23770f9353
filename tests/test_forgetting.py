"""Forgetting check (core.forgetting) and per-example loss (core.example_loss) on real tiny-model runs."""

from __future__ import annotations

import json

import pytest

from core.forgetting import (
    FINE_DROP,
    FORGETTING_DROP,
    ability_change_percent,
    check_forgetting,
    load_forgetting,
    load_probes,
    verdict_for,
)


def test_probe_set_ships_as_package_data():
    probes = load_probes()
    assert len(probes) >= 30
    assert {p.kind for p in probes} >= {"knowledge", "arithmetic", "instruction"}
    assert all(p.question.strip() and p.answer.strip() for p in probes)


def test_verdict_thresholds():
    assert ability_change_percent(2.0, 2.0) == pytest.approx(0.0)
    assert ability_change_percent(2.0, 2.0 + 0.5) == pytest.approx(-39.35, abs=0.01)
    assert verdict_for(-3.0) == "fine" and verdict_for(+12.0) == "fine"
    assert verdict_for(FINE_DROP - 1) == "some forgetting"
    assert verdict_for(FORGETTING_DROP - 1) == "forgetting"
    assert verdict_for(float("nan")) == "forgetting"


def _config(tiny_model_dir, data_file, **training):
    from core.config import RunConfig

    cfg = RunConfig()
    cfg.model.name_or_path = str(tiny_model_dir)
    cfg.data.source = str(data_file)
    cfg.data.test_fraction = 0.1
    cfg.training.max_length = 64
    cfg.training.batch_size = 4
    cfg.training.eval_before_training = False
    cfg.training.warmup_ratio = 0.0
    cfg.training.eval_steps = 1000
    cfg.training.save_steps = 1000
    cfg.training.group_by_length = False
    cfg.generation.max_new_tokens = 8
    for name, value in training.items():
        setattr(cfg.training, name, value)
    return cfg


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


FACTS = [("what is the capital of France?", "Paris"), ("who wrote Hamlet?", "William Shakespeare"),
         ("which planet is red?", "Mars"), ("what do bees make?", "Honey")]


def test_over_trained_run_is_flagged_and_a_gentle_one_is_not(tiny_model_dir, tmp_path, isolated_home):
    from core.outcome import summarize_outcome
    from core.training import train

    data = _write(tmp_path / "twenty.jsonl", [{"question": f"Question {i}: {q}", "answer": a}
                                              for i, (q, a) in ((i, FACTS[i % 4]) for i in range(20))])
    gentle = _config(tiny_model_dir, data, learning_rate=1e-5, max_steps=2)
    gentle.name = "gentle"
    harsh = _config(tiny_model_dir, data, learning_rate=3e-3, num_epochs=40)
    harsh.method.method = "full"
    harsh.name = "harsh"
    reports = {}
    for cfg in (gentle, harsh):
        result = train(cfg, workspace=tmp_path / "ws")
        assert result.state == "finished"
        reports[cfg.name] = check_forgetting(result.run_dir, n_answers=2)
        assert load_forgetting(result.run_dir).verdict == reports[cfg.name].verdict
    assert reports["gentle"].verdict == "fine", reports["gentle"].sentence()
    assert reports["harsh"].verdict == "forgetting", reports["harsh"].sentence()
    assert reports["harsh"].change_percent < FORGETTING_DROP
    assert "the model is forgetting" in reports["harsh"].headline
    assert "25 %" in reports["harsh"].sentence()  # the threshold is explained
    # The Evaluate page's short form: numbers and advice, the threshold's meaning only in the tooltip (sentence()).
    short = reports["harsh"].short_sentence()
    assert "25 %" not in short and "general probes" in short and "To forget less" in short
    assert "To forget less" not in reports["gentle"].short_sentence()
    answered = [i for i in reports["harsh"].items if i.base_answer is not None]
    assert len(answered) == 2 and all(i.tuned_answer is not None for i in answered)
    # The run summary quotes it.
    outcome = summarize_outcome(tmp_path / "ws" / "harsh")
    assert any("general ability" in note.lower() and "forgetting" in note for note in outcome.notes)


def test_per_example_loss_ranks_a_planted_wrong_label_high(tiny_model_dir, tmp_path, isolated_home):
    from core.example_loss import load_example_losses, rank_examples
    from core.training import train

    rows = [{"question": f"Question {i}: {q}", "answer": a} for i, (q, a) in ((i, FACTS[i % 4]) for i in range(80))]
    planted = 37  # a Hamlet question (37 % 4 == 1) answered with another row's answer
    rows[planted - 1]["answer"] = rows[planted]["answer"]  # row 37 of the file, 0-based 36: answer of row 38
    assert rows[planted - 1]["answer"] != FACTS[(planted - 1) % 4][1]
    data = _write(tmp_path / "planted.jsonl", rows)
    cfg = _config(tiny_model_dir, data, learning_rate=3e-3, num_epochs=6)
    cfg.data.test_fraction = 0.0
    result = train(cfg, workspace=tmp_path / "ws")
    report = rank_examples(result.run_dir)
    assert len(report.examples) == 80 and report.row_label == "line"
    top = [e.row for e in report.hardest(3)]
    assert planted in top, report.table(5)
    assert report.rank_of_row(planted) <= 3
    assert all(e.change < 0 for e in report.easiest(5))
    again = load_example_losses(result.run_dir)
    assert [e.row for e in again.hardest(3)] == top
    assert "wrong or inconsistent label" in report.table()


def test_cli_evaluate_reports_general_ability_and_per_example_loss(tiny_model_dir, tmp_path, isolated_home, capsys):
    from lora_run import make_lora_run

    from core.cli import main

    run = make_lora_run(tmp_path / "run", tiny_model_dir)
    assert main(["evaluate", str(run), "--n", "1", "--max-new-tokens", "3", "--per-example"]) == 0
    out = capsys.readouterr().out
    assert "General ability:" in out and "25 %" in out  # verdict and threshold
    assert "base:" in out and "fine-tuned:" in out  # answers side by side
    assert "Hardest after training" in out and "line " in out and "wrong or inconsistent label" in out
    html = (run / "evaluation" / "report.html").read_text(encoding="utf-8")
    assert "General ability (forgetting check)" in html
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["general_ability"]["verdict"] in ("fine", "some forgetting", "forgetting")
    assert (run / "evaluation" / "per_example.jsonl").is_file()
