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


def write_dpo_run(tmp_path, preference_lines, evals=((0, 0.6931), (12, 0.41))):
    """A DPO run folder as core.preference writes it: eval losses, plus {"kind": "preference"} lines."""
    run = write_run(tmp_path, list(evals), [(2, 0.69), (4, 0.6)])
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as handle:
        for line in preference_lines:
            handle.write(json.dumps({"kind": "preference", "loss": 0.5, "chosen_reward": 0.1,
                                     "rejected_reward": -0.1, "time": 1.0, **line}) + "\n")
    return run


def test_dpo_run_is_judged_on_held_out_reward_accuracy_and_margin(tmp_path):
    run = write_dpo_run(tmp_path, [
        {"split": "eval", "step": 0, "reward_accuracy": 0.0, "reward_margin": 0.0, "pairs": 8},
        {"split": "train", "step": 2, "reward_accuracy": 0.25, "reward_margin": 0.01},
        {"split": "eval", "step": 6, "reward_accuracy": 0.5, "reward_margin": 0.1, "pairs": 8},
        {"split": "train", "step": 12, "reward_accuracy": 1.0, "reward_margin": 0.9},
        {"split": "eval", "step": 12, "reward_accuracy": 0.875, "reward_margin": 0.42, "pairs": 8},
    ])
    outcome = summarize_outcome(run)
    assert outcome.preference and outcome.verdict == "clear improvement"
    assert outcome.headline.startswith("On 8 held-out pairs it now prefers your chosen answer 7 times out of 8 "
                                       "(reward accuracy 0.88, margin +0.42)"), outcome.headline
    assert (outcome.reward_accuracy, outcome.reward_margin, outcome.reward_pairs) == (0.875, 0.42, 8)
    assert "questions it never saw" not in outcome.headline  # the supervised wording is not used
    assert any("0.693 → 0.410" in note for note in outcome.notes)  # the DPO loss is a note, not the verdict
    assert outcome.perplexity_before is None  # exp(DPO loss) is no perplexity
    text = format_outcome(outcome)
    assert "7 times out of 8" in text and "perplexity" not in text
    assert any("blind A/B" in step for step in outcome.next_steps)
    assert not any("BLEU" in step for step in outcome.next_steps)  # the votes file has no reference answers


def test_dpo_run_that_did_not_learn_and_one_without_held_out_pairs(tmp_path):
    worse = summarize_outcome(write_dpo_run(tmp_path, [
        {"split": "eval", "step": 0, "reward_accuracy": 0.0, "reward_margin": 0.0, "pairs": 6},
        {"split": "eval", "step": 12, "reward_accuracy": 0.3333, "reward_margin": -0.05, "pairs": 6}]))
    assert worse.verdict == "worse" and "prefers only your chosen answer twice out of 6" in worse.headline
    assert any("more pairs" in step for step in worse.next_steps)
    leaning = tmp_path / "leaning"
    leaning.mkdir()
    small = summarize_outcome(write_dpo_run(leaning, [
        {"split": "eval", "step": 12, "reward_accuracy": 0.6, "reward_margin": 0.02}]))  # no pair count logged
    assert small.verdict == "small improvement" and "in 60% of them" in small.headline
    no_eval = tmp_path / "no-eval"
    no_eval.mkdir()
    train_only = summarize_outcome(write_dpo_run(no_eval, [
        {"split": "train", "step": 2, "reward_accuracy": 0.5, "reward_margin": 0.0},
        {"split": "train", "step": 12, "reward_accuracy": 1.0, "reward_margin": 0.8}], evals=()))
    assert train_only.verdict == "" and train_only.reward_split == "train"
    assert train_only.headline.startswith("On its training pairs it now prefers your chosen answer in 100% of them")
    assert "No pairs were held out" in train_only.headline


def test_dpo_run_with_most_pairs_right_but_a_negative_mean_margin_leans_towards_the_preferences(tmp_path):
    # Seen on the bundled model: 7 of 8 held-out pairs right, one far wrong, mean margin -0.003.
    outcome = summarize_outcome(write_dpo_run(tmp_path, [
        {"split": "eval", "step": 6, "reward_accuracy": 0.875, "reward_margin": -0.0034, "pairs": 8}]))
    assert outcome.verdict == "small improvement" and "7 times out of 8" in outcome.headline
    assert "margin -0.00" in outcome.headline
