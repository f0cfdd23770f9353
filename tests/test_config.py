"""The typed configuration: defaults, help texts, validation messages, YAML round trip."""

from __future__ import annotations

import dataclasses

import pytest

from core.config import SECTIONS, ConfigError, RunConfig, field_meta, iter_fields


def test_every_field_has_plain_language_help_and_a_label():
    for section in SECTIONS:
        for f, meta in iter_fields(section):
            assert meta["label"], f"{section}.{f.name} has no label"
            assert len(meta["help"]) >= 40, f"{section}.{f.name} help is too short to explain anything"


def test_defaults_are_valid_and_round_trip_through_yaml(tmp_path):
    cfg = RunConfig(name="demo")
    assert cfg.problems() == []
    cfg.training.learning_rate = 1e-4
    cfg.data.column_map = {"question": "q", "answer": "a"}
    cfg.generation.stop_strings = ["###"]
    path = tmp_path / "run.yaml"
    cfg.save(path)
    again = RunConfig.load(path)
    assert again == cfg
    assert dataclasses.asdict(again) == dataclasses.asdict(cfg)


@pytest.mark.parametrize(
    ("dotted", "value", "fragment"),
    [
        ("training.learning_rate", 5.0, "between 1e-08 and 1"),
        ("training.batch_size", 0, "between 1 and 4096"),
        ("data.test_fraction", 0.9, "between 0 and 0.5"),
        ("method.method", "magic", "one of lora, full, prefix, qlora"),
        ("training.scheduler", "zigzag", "one of cosine, linear, constant"),
    ],
)
def test_validation_names_the_field_and_the_allowed_range(dotted, value, fragment):
    cfg = RunConfig()
    section, name = dotted.split(".")
    setattr(getattr(cfg, section), name, value)
    problems = cfg.problems()
    assert [p.field for p in problems] == [dotted]
    assert fragment in problems[0].message
    with pytest.raises(ConfigError) as info:
        cfg.validate()
    assert info.value.field == dotted


def test_cross_field_rules():
    cfg = RunConfig()
    cfg.data.test_fraction = 0.0
    cfg.training.early_stopping_patience = 3
    assert [p.field for p in cfg.problems()] == ["training.early_stopping_patience"]


def test_unknown_keys_and_wrong_types_are_reported_with_their_field():
    with pytest.raises(ConfigError, match=r"training\.lr: unknown setting"):
        RunConfig.from_dict({"training": {"lr": 1}})
    with pytest.raises(ConfigError, match=r"training\.batch_size: expected a whole number"):
        RunConfig.from_dict({"training": {"batch_size": "eight"}})
    with pytest.raises(ConfigError, match="unknown section"):
        RunConfig.from_dict({"optimizer": {}})
    with pytest.raises(ConfigError, match=r"bad\.yaml, line \d+: not valid YAML"):
        RunConfig.from_yaml("training:\n  lr: [1,\n", source="bad.yaml")


def test_set_value_parses_strings_like_the_cli():
    cfg = RunConfig()
    cfg.set_value("training.learning_rate", "1e-4")
    cfg.set_value("training.max_steps", "10")
    cfg.set_value("training.gradient_checkpointing", "yes")
    cfg.set_value("data.column_map", "{question: q, answer: a}")
    assert cfg.training.learning_rate == pytest.approx(1e-4)
    assert cfg.training.max_steps == 10
    assert cfg.training.gradient_checkpointing is True
    assert cfg.data.column_map == {"question": "q", "answer": "a"}
    with pytest.raises(ConfigError):
        cfg.set_value("training.nonexistent", "1")
    assert field_meta("training", "learning_rate")["min"] == 1e-8


def test_best_checkpoint_needs_saves_on_evaluation_steps():
    cfg = RunConfig()
    cfg.training.eval_steps = 20
    cfg.training.save_steps = 30
    assert [p.field for p in cfg.problems()] == ["training.save_steps"]
    cfg.training.load_best_model_at_end = False
    assert cfg.problems() == []
