"""The training coach on synthetic loss curves: each rule fires on its case, none on a healthy run."""

from __future__ import annotations

import math
import random
import subprocess
import sys

import pytest

from core.coach import RULES, Advice, Coach, _zigzag_reversals, apply_suggestion, nice_number
from core.config import RunConfig
from core.metrics import MetricPoint


def config(lr: float = 2e-4, method: str = "lora", **training) -> RunConfig:
    cfg = RunConfig()
    cfg.training.learning_rate = lr
    cfg.method.method = method
    for key, value in training.items():
        setattr(cfg.training, key, value)
    return cfg


def feed(coach: Coach, losses, *, evals: dict[int, float] | None = None, total: int | None = None) -> list[Advice]:
    total = total or len(losses)
    fired = []
    for step, loss in enumerate(losses, start=1):
        fired += coach.update(MetricPoint(kind="train", step=step, total_steps=total, loss=loss,
                                          learning_rate=coach.learning_rate, epoch=step / total))
        if evals and step in evals:
            fired += coach.update(MetricPoint(kind="eval", step=step, total_steps=total, eval_loss=evals[step],
                                              epoch=step / total))
    return fired


def healthy(seed: int, n: int = 200, noise: float = 0.06) -> list[float]:
    rng = random.Random(seed)
    return [(1.0 + 2.0 * math.exp(-step / 80)) * (1 + noise * rng.gauss(0, 1)) for step in range(n)]


def rules(advice: list[Advice]) -> list[str]:
    return [a.rule for a in advice]


@pytest.mark.parametrize("seed", range(6))
def test_healthy_noisy_curve_fires_nothing(seed):
    losses = healthy(seed)
    rng = random.Random(100 + seed)
    evals = {s: (1.1 + 2.0 * math.exp(-s / 80)) * (1 + 0.005 * rng.gauss(0, 1)) for s in range(20, 201, 20)}
    assert feed(Coach(config()), losses, evals=evals) == []


def test_learning_rate_1e_1_fires_too_high_before_step_20():
    # What LoRA at 1e-1 looks like: the loss shoots up and jumps around wildly from the first steps.
    rng = random.Random(1)
    losses = [3.0, 4.1, 6.5, 5.2, 9.8, 7.1, 12.5, 8.0, 14.2, 11.0] + [10 + 6 * rng.random() for _ in range(30)]
    coach = Coach(config(lr=1e-1))
    fired = feed(coach, losses)
    too_high = [a for a in fired if a.rule == "lr_too_high"]
    assert too_high and too_high[0].step < 20
    advice = too_high[0]
    assert advice.suggestion == {"training.learning_rate": 2e-4}  # the usual LoRA value, not 1e-2
    assert "2e-4" in advice.action and "from 4.1 to 6.5 by step 5" in advice.sentence
    assert "divergence" not in rules(fired)  # same cause, reported once


def test_wild_but_not_rising_early_loss_is_too_high():
    losses = [3.0, 1.5, 3.2, 1.2, 3.1, 1.4, 3.3, 1.1, 2.9, 1.3]
    fired = feed(Coach(config(lr=5e-4)), losses, total=300)
    assert "lr_too_high" in rules(fired)


def test_nan_loss_fires_error_with_lower_learning_rate():
    losses = [2.5, 2.4, 2.3] + [2.2 - 0.01 * i for i in range(40)] + [float("nan")]
    coach = Coach(config(lr=2e-4, precision="fp16"))
    fired = feed(coach, losses, total=1000)
    nan = [a for a in fired if a.rule == "nan_loss"]
    assert len(nan) == 1 and nan[0].severity == "error" and nan[0].step == 44
    assert nan[0].suggestion["training.learning_rate"] == pytest.approx(2e-5)
    assert nan[0].suggestion["training.precision"] == "fp32"
    # A second NaN does not repeat the advice; a NaN this late is not "learning rate too high".
    assert coach.update({"kind": "train", "step": 45, "loss": "nan"}) == []
    assert "lr_too_high" not in rules(coach.advice)


def test_divergence_after_a_good_start():
    losses = [3.0 - 0.02 * i for i in range(60)] + [1.8 + 0.15 * i for i in range(40)]
    fired = feed(Coach(config(lr=5e-4)), losses)
    assert rules(fired).count("divergence") == 1
    advice = next(a for a in fired if a.rule == "divergence")
    assert advice.suggestion == {"training.learning_rate": 2e-4}
    assert advice.evidence["recent_loss"] > 1.5 * advice.evidence["start_loss"]


def test_single_spike():
    losses = healthy(3, n=120)
    losses[70] = 9.0
    fired = feed(Coach(config()), losses)
    assert rules(fired) == ["spike"]
    assert fired[0].step == 71 and "jumped to 9," in fired[0].sentence


def test_spike_with_clipping_off_suggests_clipping():
    losses = healthy(3, n=120)
    losses[70] = 9.0
    fired = feed(Coach(config(max_grad_norm=0.0)), losses)
    assert fired[0].suggestion == {"training.max_grad_norm": 1.0}


def test_plateau_after_progress():
    rng = random.Random(5)
    losses = [3.0 - 0.03 * i for i in range(50)] + [1.5 * (1 + 0.03 * rng.gauss(0, 1)) for _ in range(80)]
    fired = feed(Coach(config()), losses)
    assert rules(fired) == ["plateau"]
    assert fired[0].suggestion["training.max_steps"] < 130


def test_oscillation():
    losses = [2.0 + 0.6 * math.sin(2 * math.pi * step / 16) for step in range(100)]
    fired = feed(Coach(config(lr=4e-4, gradient_accumulation=2)), losses)
    assert "oscillation" in rules(fired)
    advice = next(a for a in fired if a.rule == "oscillation")
    assert advice.suggestion == {"training.learning_rate": 2e-4, "training.gradient_accumulation": 4}


def test_overfitting_needs_two_rising_evals_while_train_falls():
    losses = [3.0 * math.exp(-step / 40) + 0.05 for step in range(200)]
    evals = {20: 2.0, 40: 1.6, 60: 1.5, 80: 1.62}
    coach = Coach(config())
    assert "overfitting" not in rules(feed(coach, losses[:80], evals=evals, total=200))  # one rise: not yet
    fired = coach.update(MetricPoint(kind="eval", step=100, total_steps=200, eval_loss=1.8, epoch=1.5))
    assert rules(fired) == ["overfitting"]
    assert fired[0].evidence["best_step"] == 60
    assert fired[0].suggestion["training.early_stopping_patience"] == 2


def test_low_loss_memorising_and_masked():
    memorise = [2.0 * math.exp(-step / 10) for step in range(80)]
    assert "low_loss" in rules(feed(Coach(config()), memorise))
    masked = feed(Coach(config()), [0.0] * 10)
    advice = next(a for a in masked if a.rule == "low_loss")
    assert advice.evidence["masked"] and advice.suggestion == {"data.train_on_answers_only": False}


def test_fast_memorising_with_jittery_tiny_losses_is_not_called_a_high_learning_rate():
    # Seen on SmolLM2 with 32 examples: the loss falls from ~5 to ~0.01 within 20 steps and then jitters
    # by large *relative* amounts; that is memorising (low_loss), not a learning rate that is too high.
    rng = random.Random(0)
    losses = [5.0 * math.exp(-step / 3) * (1 + 0.6 * rng.random()) + 0.005 for step in range(25)]
    fired = rules(feed(Coach(config(lr=2e-3)), losses))
    assert "lr_too_high" not in fired and "low_loss" in fired


def test_learning_rate_too_low():
    rng = random.Random(2)
    losses = [2.5 * (1 - 0.0001 * i) * (1 + 0.01 * rng.gauss(0, 1)) for i in range(40)]
    fired = feed(Coach(config(lr=1e-6)), losses)
    assert rules(fired) == ["lr_too_low"]
    assert fired[0].suggestion == {"training.learning_rate": 2e-4}
    assert "Raise" in fired[0].action


def test_dict_points_from_jsonl_and_review():
    points = [{"kind": "train", "step": i, "loss": "nan" if i == 3 else 2.0} for i in range(1, 5)]
    points.insert(0, {"kind": "status", "state": "running"})
    assert rules(Coach().review(points))[:1] == ["nan_loss"]


def test_each_rule_fires_at_most_once_and_apply_suggestion():
    coach = Coach(config(lr=1e-1))
    feed(coach, [3.0, 9.0, float("nan"), float("inf"), 30.0, 40.0, 50.0, 60.0] * 5)
    assert len(rules(coach.advice)) == len(set(rules(coach.advice)))
    assert set(rules(coach.advice)) <= set(RULES)
    cfg = config(lr=1e-1)
    patched = apply_suggestion(cfg, coach.fired["lr_too_high"])
    assert patched.training.learning_rate == 2e-4 and cfg.training.learning_rate == 1e-1


def test_rising_train_loss_with_falling_held_out_loss_says_trust_the_held_out_loss():
    """The case of a 10-step quick look on batches of 4: the train loss climbs 0.8 -> ~3 while the held-out
    loss improves 3.29 -> 2.91. Not a learning-rate problem: the coach says which number to trust."""
    losses = [0.8, 2.9, 1.6, 3.4, 2.2, 3.0, 2.6, 3.3, 2.8, 3.1]
    coach = Coach(config(lr=3e-4, batch_size=4, gradient_accumulation=1))
    fired = coach.update(MetricPoint(kind="eval", step=0, total_steps=10, eval_loss=3.29))
    fired += feed(coach, losses, evals={5: 3.05, 10: 2.91})
    assert rules(fired) == ["noisy_batches"]
    advice = fired[0]
    assert advice.severity == "info" and advice.suggestion == {}
    assert "held-out loss" in advice.sentence and "the number to trust" in advice.sentence
    assert "only 4 examples" in advice.sentence and "fell from 3.29 at step 0 to 3.05 at step 5" in advice.sentence
    assert rules(coach.finish()) == ["all_is_well"]  # an info note is no warning sign


def test_all_is_well_only_when_nothing_fired_and_held_out_loss_improved():
    coach = Coach(config())
    coach.update(MetricPoint(kind="eval", step=0, eval_loss=2.0))
    feed(coach, healthy(0, n=60), evals={30: 1.8, 60: 1.6})
    [note] = coach.finish()
    assert note.rule == "all_is_well" and note.severity == "info" and note.step == 60
    assert "2 at step 0 to 1.6 at step 60 (-20%)" in note.sentence
    assert coach.finish() == []  # once
    flat = Coach(config())
    flat.update(MetricPoint(kind="eval", step=0, eval_loss=2.0))
    feed(flat, healthy(1, n=60), evals={60: 1.995})
    assert flat.finish() == []  # held-out loss did not really improve
    warned = Coach(config(lr=1e-1))
    warned.update(MetricPoint(kind="eval", step=0, eval_loss=3.0))
    feed(warned, [3.0, 4.1, 6.5, 5.2, 9.8, 7.1, 12.5, 8.0], evals={8: 2.9})
    assert "lr_too_high" in warned.fired and warned.finish() == []


def test_nan_in_the_untouched_models_step_0_eval_blames_precision_or_weights_not_learning_rate():
    coach = Coach(config(precision="fp16"))
    [advice] = coach.update(MetricPoint(kind="eval", step=0, eval_loss=float("nan")))
    assert advice.rule == "nan_loss" and advice.step == 0
    assert "learning_rate" not in str(advice.suggestion) and advice.suggestion == {"training.precision": "fp32"}
    assert "not the cause" in advice.sentence and "Lower" not in advice.action
    assert "lower the learning rate" not in advice.sentence.lower()


def test_coach_sink_announces_each_note_once_and_jsonl_records_it(tmp_path):
    import io

    from core.coach import CoachSink
    from core.metrics import ConsoleSink, JsonlSink
    from core.runs import read_metrics

    stream = io.StringIO()
    jsonl = JsonlSink(tmp_path / "metrics.jsonl")
    sink = CoachSink(Coach(config(lr=1e-1)), [jsonl, ConsoleSink(stream)])
    losses = [3.0, 4.1, 6.5, 5.2, 9.8, 7.1, 12.5, 8.0]
    for step, loss in enumerate(losses, start=1):
        point = MetricPoint(kind="train", step=step, total_steps=100, loss=loss, learning_rate=1e-1)
        jsonl.on_metric(point)
        sink.on_metric(point)
    sink.finish()
    notes = [r for r in read_metrics(tmp_path) if r.get("kind") == "coach"]
    assert [r["rule"] for r in notes] == ["lr_too_high"] and notes[0]["step"] == 5
    assert notes[0]["suggestion"] == {"training.learning_rate": 2e-4} and notes[0]["title"]
    assert stream.getvalue().count("coach @ step 5: Learning rate likely too high.") == 1
    # A resumed run's coach reads the run so far first: the same note is not announced again.
    resumed = Coach(config(lr=1e-1))
    resumed.review(read_metrics(tmp_path))
    assert resumed.update(MetricPoint(kind="train", step=9, loss=13.0)) == []


def test_helpers():
    assert nice_number(2.37e-4) == 2e-4
    assert _zigzag_reversals([0, 1, 0, 1, 0], 0.5) == [(1, 1), (2, 0), (3, 1)]
    assert _zigzag_reversals([5, 4, 3, 2, 1], 0.5) == []


def test_coach_imports_without_torch():
    code = "import sys, core.coach; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
