"""Learning-rate finder on the tiny model: the rate grows exponentially, the test stops once the loss
diverges, every weight is restored bit for bit, the suggestion comes with its reason, the CLI prints it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from core.config import RunConfig
from core.lr_find import (
    find_learning_rate,
    learning_rate_at,
    load_result,
    range_test,
    suggest_learning_rate,
)


@pytest.fixture()
def qa_file(tmp_path) -> Path:
    path = tmp_path / "qa.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(40):
            handle.write(json.dumps({"question": f"What is {i} plus {i}?", "answer": f"It is {2 * i}."}) + "\n")
    return path


@pytest.fixture()
def cfg(tiny_model_dir, qa_file, isolated_home) -> RunConfig:
    cfg = RunConfig(name="tiny")
    cfg.model.name_or_path = str(tiny_model_dir)
    cfg.data.source = str(qa_file)
    cfg.data.test_fraction = 0.1
    cfg.method.method = "lora"
    cfg.training.batch_size, cfg.training.max_length = 4, 64
    cfg.training.device = "cpu"
    return cfg


def _model_and_data(cfg):
    from core.data import prepare_dataset
    from core.hf_args import apply_method
    from core.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(cfg.model)
    prepared = prepare_dataset(cfg.data, tokenizer, cfg.training.max_length)
    model = apply_method(load_model(cfg.model, device="cpu"), cfg.method)
    return model, tokenizer, prepared.train


def _state(model):
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def test_schedule_is_exponential():
    rates = [learning_rate_at(i, 1e-6, 1.0, 7) for i in range(7)]
    assert rates[0] == pytest.approx(1e-6) and rates[-1] == pytest.approx(1.0)
    ratios = [b / a for a, b in zip(rates, rates[1:], strict=False)]
    assert all(r == pytest.approx(10.0) for r in ratios)


def test_rate_grows_and_weights_are_restored_bit_for_bit(cfg):
    model, tokenizer, train = _model_and_data(cfg)
    before = _state(model)
    # A rate that stays small: the test runs every step, without diverging.
    snapshots = []
    result = range_test(model, tokenizer, train, cfg, start_lr=1e-6, end_lr=1e-3, num_steps=12,
                        on_point=snapshots.append)
    assert result.ended_because == "completed"
    assert [p.step for p in result.points] == list(range(1, 13))
    rates = result.learning_rates
    assert rates[0] == pytest.approx(1e-6) and rates[-1] == pytest.approx(1e-3)
    assert all(b > a for a, b in zip(rates, rates[1:], strict=False))
    assert all(math.isfinite(loss) for loss in result.losses)
    assert len(snapshots) == 12 and len(snapshots[-1].points) == 12
    after = model.state_dict()
    assert before.keys() == after.keys()
    changed = [name for name in before if not __import__("torch").equal(before[name], after[name])]
    assert changed == []


def test_stops_early_once_the_loss_diverges_and_restores_full_weights(cfg):
    import torch

    cfg.method.method = "full"
    cfg.training.max_grad_norm = 0.0  # no clipping: a rate of 10 blows the loss up within a few steps
    model, tokenizer, train = _model_and_data(cfg)
    before = _state(model)
    result = range_test(model, tokenizer, train, cfg, start_lr=1e-4, end_lr=50.0, num_steps=60)
    assert result.ended_because == "diverged"
    assert len(result.points) < 60
    last = result.points[-1]
    assert not math.isfinite(last.loss) or last.smoothed > 3.0 * min(p.smoothed for p in result.points)
    for name, tensor in model.state_dict().items():
        assert torch.equal(before[name], tensor), name


def test_suggestion_reads_a_typical_curve():
    import numpy as np

    lrs = list(np.logspace(-6, 0, 61))
    x = np.log10(lrs)
    # flat until 1e-5, falls to a minimum near 1e-2, then blows up
    loss = 3.0 - 1.5 / (1 + np.exp(-(x + 3.5) * 3)) + np.where(x > -2, (x + 2) ** 2 * 6, 0)
    suggestion, reason, candidates, smoothed = suggest_learning_rate(lrs, list(loss), diverged=True)
    assert candidates["minimum"] == pytest.approx(1e-2, rel=0.6)
    assert 1e-4 < candidates["steepest"] < 1e-3
    assert candidates["minimum"] < candidates["blows_up"]
    readings = (candidates["steepest"], candidates["minimum"] / 10, candidates["blows_up"] / 10)
    assert suggestion == pytest.approx(min(max(readings), candidates["minimum"]))
    assert reason.startswith(("a tenth of where the loss", "steepest fall")) and f"{suggestion:.1e}" in reason
    flat, why, _, _ = suggest_learning_rate(lrs, [2.0] * 61, diverged=False)
    assert flat is None and "never clearly fell" in why


def test_find_learning_rate_records_a_result_and_no_run(cfg, tmp_path, capsys):
    from core.cli import main

    workspace = tmp_path / "ws"
    config = tmp_path / "run.yaml"
    cfg.save(config)
    code = main(["lr-find", "--config", str(config), "--output", str(workspace), "--steps", "30",
                 "--start-lr", "1e-5", "--end-lr", "10"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "why:" in out
    records = list((workspace / "lr-finds").glob("*.json"))
    assert len(records) == 1
    result = load_result(records[0])
    assert result.points and result.reason
    assert not [child for child in workspace.iterdir() if (child / "config.yaml").exists()]  # no run folder
    again = find_learning_rate(cfg, workspace=workspace, num_steps=10, start_lr=1e-5, end_lr=1e-2)
    assert Path(again.path).exists() and len(list((workspace / "lr-finds").glob("*.json"))) == 2
