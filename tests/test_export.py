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

    from core.export import export_adapter

    out = export_adapter(lora_run, tmp_path / "adapter")
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "config.yaml", "README.md", "tokenizer.json"} <= names
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert "PeftModel.from_pretrained" in readme
    # Loadable by plain peft, following the README.
    base = AutoModelForCausalLM.from_pretrained(json.loads((out / "adapter_config.json").read_text())[
        "base_model_name_or_path"])
    PeftModel.from_pretrained(base, str(out))
    AutoTokenizer.from_pretrained(str(out))
    with pytest.raises(ModelError, match="not an empty folder"):
        export_adapter(lora_run, out)
    step1 = export_adapter(lora_run, tmp_path / "adapter-step-1", checkpoint=1)
    assert (step1 / "adapter_model.safetensors").read_bytes() != (out / "adapter_model.safetensors").read_bytes()


def test_merged_model_matches_base_plus_adapter(lora_run, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from core.config import GenerationConfig
    from core.export import export_merged
    from core.generation import ModelSession

    out = export_merged(lora_run, tmp_path / "merged")
    assert (out / "model.safetensors").is_file() and (out / "config.yaml").is_file()
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
