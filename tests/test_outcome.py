"""core.outcome: the end of a run in plain words, from the run folder's files."""

from __future__ import annotations

import json

from core.outcome import format_outcome, summarize_outcome


def write_run(tmp_path, evals, trains=(), state="finished", message=""):
    run = tmp_path / "run"
    run.mkdir()
    lines = [{"kind": "eval", "step": step, "eval_loss": loss} for step, loss in evals]
    lines += [{"kind": "train", "step": step, "loss": loss} for step, loss in trains]
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    (run / "status.json").write_text(json.dumps({"state": state, "global_step": 10, "message": message}),
                                     encoding="utf-8")
    return run


def test_clear_improvement_with_noisy_rising_train_loss(tmp_path):
    run = write_run(tmp_path, [(0, 3.29), (5, 3.0), (10, 2.91)],
                    [(1, 0.8), (2, 1.2), (3, 2.0), (4, 2.5), (5, 2.9), (6, 3.1), (7, 3.0), (8, 3.1)])
    outcome = summarize_outcome(run)
    assert outcome.verdict == "clear improvement" and outcome.best_step == 10
    assert outcome.change_percent < -5 and "3.290 → 2.910" in outcome.headline
    assert outcome.perplexity_before > outcome.perplexity_after
    assert any("trust it" in note for note in outcome.notes)  # the train curve rose: say which number to trust
    assert "next:" in format_outcome(outcome)


def test_no_change_worse_and_no_eval(tmp_path):
    assert summarize_outcome(write_run(tmp_path, [(0, 2.0), (10, 1.995)])).verdict == "no real change"
    other = tmp_path / "b"
    other.mkdir()
    assert summarize_outcome(write_run(other, [(0, 2.0), (10, 2.4)])).verdict == "worse"
    third = tmp_path / "c"
    third.mkdir()
    outcome = summarize_outcome(write_run(third, []))
    assert outcome.verdict == "" and "no held-out evaluation" in outcome.headline


def test_failed_and_diverged_say_what_to_do(tmp_path):
    failed = summarize_outcome(write_run(tmp_path, [(0, 2.0)], state="failed", message="out of memory"))
    assert "out of memory" in failed.headline and failed.next_steps
    other = tmp_path / "d"
    other.mkdir()
    diverged = summarize_outcome(write_run(other, [(0, 2.0), (5, 9.0)], state="diverged", message="loss 30"))
    assert "ran away" in diverged.headline and "lower learning rate" in diverged.next_steps[0]
