"""Remote code and pickled weights load only with the user's consent on this machine, never because a run's
config.yaml says so."""

from __future__ import annotations

import json
import shutil
import textwrap

import pytest

from core import consent, models
from core.config import ModelConfig, RunConfig
from core.consent import ConsentRequired
from core.runs import load_run_config

CONFIGURATION = '''
from transformers import GPTNeoXConfig


class SecretConfig(GPTNeoXConfig):
    model_type = "studio_secret_arch"
'''

MODELING = '''
from transformers import GPTNeoXForCausalLM

from .configuration_secret import SecretConfig


class SecretLM(GPTNeoXForCausalLM):
    config_class = SecretConfig
    ran_repository_code = True
'''


@pytest.fixture()
def remote_code_model(tiny_model_dir, tmp_path):
    return make_remote_code_model(tiny_model_dir, tmp_path)


def make_remote_code_model(tiny_model_dir, tmp_path):
    """A model folder whose architecture exists only in its own Python files (auto_map)."""
    folder = tmp_path / "secret-model"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="studio_secret_arch", architectures=["SecretLM"],
                  auto_map={"AutoConfig": "configuration_secret.SecretConfig",
                            "AutoModelForCausalLM": "modeling_secret.SecretLM"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_secret.py").write_text(textwrap.dedent(CONFIGURATION))
    (folder / "modeling_secret.py").write_text(textwrap.dedent(MODELING))
    return folder


def _received_run(tmp_path, model_folder, **flags):
    """A run folder as someone else might send it: its config.yaml claims the permissions."""
    cfg = RunConfig(name="received")
    cfg.model.name_or_path = str(model_folder)
    for name, value in flags.items():
        setattr(cfg.model, name, value)
    run_dir = tmp_path / "received-run"
    cfg.save(run_dir / "config.yaml")
    return run_dir


def test_run_config_saying_trust_remote_code_does_not_grant_it(remote_code_model, tmp_path, isolated_home):
    run_dir = _received_run(tmp_path, remote_code_model, trust_remote_code=True)
    cfg = load_run_config(run_dir)
    assert cfg.model.trust_remote_code is True  # the file says so...
    with pytest.raises(ConsentRequired) as info:  # ...and still nothing of the repository runs
        models.load_model(cfg.model)
    assert info.value.kind == "trust_remote_code" and info.value.model == str(remote_code_model)
    assert "--trust-remote-code" in str(info.value) and "permissions" in str(info.value)
    with pytest.raises(ConsentRequired):
        models.load_tokenizer(cfg.model)
    assert consent.requested(cfg.model) == ["trust_remote_code"]  # what the GUI asks about before loading
    assert not consent.consent_path().exists()

    consent.grant(str(remote_code_model), "trust_remote_code")  # the person on this machine says yes
    assert consent.requested(cfg.model) == []
    model = models.load_model(cfg.model)
    assert type(model).__name__ == "SecretLM" and model.ran_repository_code  # the repository's code ran
    stored = json.loads(consent.consent_path().read_text())
    assert list(stored["models"]) == [str(remote_code_model.resolve())]

    consent.revoke(str(remote_code_model), "trust_remote_code")
    with pytest.raises(ConsentRequired):
        models.load_model(cfg.model)


def test_run_config_saying_allow_pickle_does_not_grant_it(tiny_model_dir, tmp_path, isolated_home):
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    cfg = load_run_config(_received_run(tmp_path, folder, allow_pickle=True))
    with pytest.raises(ConsentRequired) as info:
        models.load_model(cfg.model)
    assert info.value.kind == "allow_pickle" and "--allow-pickle" in str(info.value)
    consent.grant(str(folder), "allow_pickle")
    assert models.load_model(cfg.model) is not None


def test_consent_is_per_model(remote_code_model, tmp_path, isolated_home):
    other = tmp_path / "other-secret"
    shutil.copytree(remote_code_model, other)
    consent.grant(str(other), "trust_remote_code")
    with pytest.raises(ConsentRequired):
        models.resolve_model_path(ModelConfig(name_or_path=str(remote_code_model), trust_remote_code=True))
    assert consent.granted(str(other), "trust_remote_code")
    assert not consent.granted(str(other), "allow_pickle")


def test_unreadable_consent_store_grants_nothing_and_says_so_on_write(isolated_home):
    isolated_home.mkdir(parents=True)
    consent.consent_path().write_text("{not json")
    assert not consent.granted("some/model", "trust_remote_code")
    with pytest.raises(Exception, match="consent.json: cannot read the saved consents"):
        consent.grant("some/model", "trust_remote_code")
    with pytest.raises(ValueError, match="unknown consent"):
        consent.granted("some/model", "run_anything")


def test_cli_flag_records_consent_for_that_model(remote_code_model, isolated_home, capsys):
    from core.cli import main

    assert main(["models", "info", str(remote_code_model)]) == 2
    assert "--trust-remote-code" in capsys.readouterr().err
    assert not consent.granted(str(remote_code_model), "trust_remote_code")
    assert main(["models", "info", str(remote_code_model), "--trust-remote-code"]) == 0
    assert consent.granted(str(remote_code_model), "trust_remote_code")
    assert main(["models", "info", str(remote_code_model)]) == 0  # remembered: no flag needed the next time


def test_exported_script_never_trusts_remote_code_by_itself():
    from core.export import _SCRIPT

    assert "trust_remote_code=True" not in _SCRIPT
    assert 'SETTINGS["trust_remote_code"]' not in _SCRIPT
    assert "--trust-remote-code" in _SCRIPT and "trust_remote_code=args.trust_remote_code" in _SCRIPT
