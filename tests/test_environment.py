"""core.environment: the app turns the Hugging Face libraries' telemetry off (TRL pings on each trainer start)
and keeps the tokenizers' threads away from forks, before those libraries need it; a user's own setting wins."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def no_telemetry_setting(monkeypatch):
    """The variable unset and huggingface_hub's flag as read at import without it; both restored afterwards."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "restore-me")  # so that teardown removes what we set
    monkeypatch.delenv("HF_HUB_DISABLE_TELEMETRY")
    monkeypatch.delenv("DISABLE_TELEMETRY", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_TELEMETRY", False)
    return hub_constants


def test_prepare_environment_sets_defaults_and_tells_an_imported_hub(no_telemetry_setting, monkeypatch):
    from core.environment import prepare_environment

    prepare_environment()
    assert os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1"
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    # huggingface_hub was imported before the variable was set: its flag is set too.
    assert no_telemetry_setting.HF_HUB_DISABLE_TELEMETRY is True


def test_a_user_who_turned_telemetry_on_keeps_it(no_telemetry_setting, monkeypatch):
    from core.environment import prepare_environment

    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "0")
    prepare_environment()
    assert os.environ["HF_HUB_DISABLE_TELEMETRY"] == "0"
    assert no_telemetry_setting.HF_HUB_DISABLE_TELEMETRY is False


def test_the_training_entry_point_turns_telemetry_off_first(no_telemetry_setting, tmp_path):
    from core.config import ConfigError, RunConfig
    from core.training import train

    cfg = RunConfig(name="never-runs")
    cfg.training.learning_rate = -1.0  # refused by validation, after the environment is prepared
    with pytest.raises(ConfigError):
        train(cfg, workspace=tmp_path)
    assert os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1"
    assert no_telemetry_setting.HF_HUB_DISABLE_TELEMETRY is True
    assert not any(tmp_path.iterdir())  # nothing was started


def test_the_cli_prepares_the_environment_before_any_command(no_telemetry_setting, capsys):
    from core.cli import main

    assert main([]) == 0  # no command: prints the help
    assert os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1"
