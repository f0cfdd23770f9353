"""GGUF + Ollama export: the file read back with gguf.GGUFReader (tiny llama), and a real client
(llama-cpp-python) answering like transformers on the bundled SmolLM2 (slow; skipped without llama_cpp)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from core.errors import ModelError

QUESTIONS = ["What is the capital of France?", "Who wrote Hamlet?", "Name a primary colour."]


def make_tiny_llama_run(folder: Path, tiny_model_dir: Path, *, template: str = "chat") -> Path:
    """A finished LoRA run on a random 2-layer llama (4 query heads, 2 key/value heads) with the tiny tokenizer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from core.config import RunConfig

    folder = Path(folder)
    base_dir = folder.parent / f"{folder.name}-base"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.save_pretrained(base_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(base_dir)
    data = folder.parent / f"{folder.name}-data.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": "A"}) + "\n" for q in QUESTIONS * 3),
                    encoding="utf-8")
    cfg = RunConfig(name=folder.name)
    cfg.model.name_or_path = str(base_dir)
    cfg.data.source = str(data)
    cfg.data.template = template
    cfg.method.lora_r, cfg.method.lora_alpha = 4, 8
    folder.mkdir(parents=True)
    cfg.save(folder / "config.yaml")
    model = get_peft_model(LlamaForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                         "gate_proj"], task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # B starts at zero: make the adapter change the weights
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    model.save_pretrained(folder / "final")
    tokenizer.save_pretrained(folder / "final")
    (folder / "status.json").write_text(json.dumps({"state": "finished", "global_step": 2}), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def llama_run(tiny_model_dir, tmp_path_factory):
    return make_tiny_llama_run(tmp_path_factory.mktemp("gguf-runs") / "tiny-llama", tiny_model_dir)


def _merged(run_dir):
    from core.export import _resolve, merged_model

    return merged_model(_resolve(run_dir, None))


def _field(reader, key):
    return reader.fields[key].contents()


def test_gguf_tensors_and_metadata_read_back(llama_run, tmp_path):
    import gguf
    from transformers import AutoTokenizer

    from core.gguf_export import export_gguf, permute_for_llama_cpp

    result = export_gguf(llama_run, tmp_path / "gguf")
    assert result.gguf_path == tmp_path / "gguf" / "tiny-llama-f16.gguf" and result.gguf_path.is_file()
    assert {p.name for p in result.folder.iterdir()} == {"tiny-llama-f16.gguf", "Modelfile", "README.md",
                                                         "training_config.yaml"}
    reader = gguf.GGUFReader(result.gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(llama_run / "final")
    expected = {
        "general.architecture": "llama", "llama.block_count": 2, "llama.context_length": 512,
        "llama.embedding_length": 64, "llama.feed_forward_length": 128, "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2, "llama.rope.dimension_count": 16, "llama.vocab_size": len(tokenizer),
        "general.file_type": int(gguf.LlamaFileType.MOSTLY_F16), "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.eos_token_id": tokenizer.eos_token_id,
        "tokenizer.ggml.bos_token_id": tokenizer.bos_token_id, "tokenizer.ggml.add_bos_token": False,
        "tokenizer.chat_template": tokenizer.chat_template,
    }
    assert {key: _field(reader, key) for key in expected} == expected
    assert _field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert _field(reader, "llama.rope.freq_base") == pytest.approx(10000.0)
    vocab = tokenizer.get_vocab()
    assert _field(reader, "tokenizer.ggml.tokens") == sorted(vocab, key=vocab.get)
    types = _field(reader, "tokenizer.ggml.token_type")
    assert [types[i] for i in tokenizer.all_special_ids] == [int(gguf.TokenType.CONTROL)] * len(
        tokenizer.all_special_ids)
    merges = json.loads((llama_run / "final" / "tokenizer.json").read_text())["model"]["merges"]
    assert len(_field(reader, "tokenizer.ggml.merges")) == len(merges) > 0

    tensors = {t.name: t for t in reader.tensors}
    per_block = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
                 "ffn_down"]
    assert set(tensors) == {"token_embd.weight", "output_norm.weight", "output.weight"} | {
        f"blk.{i}.{part}.weight" for i in range(2) for part in per_block}
    assert result.tensor_count == len(tensors)
    # GGUF lists dimensions fastest-first: the reverse of torch's shape.
    merged = _merged(llama_run)
    state = merged.state_dict()
    assert list(tensors["token_embd.weight"].shape) == [64, len(tokenizer)]
    assert list(tensors["blk.0.attn_k.weight"].shape) == [64, 32]  # 2 kv heads x 16
    assert list(tensors["blk.1.ffn_down.weight"].shape) == [128, 64]
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert tensors["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.F16

    def read(name):
        t = tensors[name]
        return np.asarray(t.data).astype(np.float32).reshape(list(reversed([int(d) for d in t.shape])))

    # The merged weights (the adapter is in them), q and k permuted as llama.cpp's converter does.
    q = state["model.layers.0.self_attn.q_proj.weight"].numpy()
    k = state["model.layers.1.self_attn.k_proj.weight"].numpy()
    np.testing.assert_allclose(read("blk.0.attn_q.weight"), permute_for_llama_cpp(q, 4, 4), atol=2e-3)
    np.testing.assert_allclose(read("blk.1.attn_k.weight"), permute_for_llama_cpp(k, 4, 2), atol=2e-3)
    assert not np.allclose(read("blk.0.attn_q.weight"), q, atol=2e-3)  # the permutation did move rows
    np.testing.assert_allclose(read("blk.1.ffn_gate.weight"), state["model.layers.1.mlp.gate_proj.weight"].numpy(),
                               atol=2e-3)
    np.testing.assert_array_equal(read("output_norm.weight"), state["model.norm.weight"].numpy())
    assert "base_model" not in (result.folder / "README.md").read_text(encoding="utf-8").split("---")[1]


def test_permutation_matches_the_rotary_pairing():
    """transformers rotates dims (i, i + d/2) of a head, llama.cpp (2i, 2i + 1): the permutation maps one onto the
    other, so the i-th and (i + d/2)-th rows of a head become neighbours."""
    from core.gguf_export import permute_for_llama_cpp

    head_dim, heads = 8, 2
    rows = np.arange(heads * head_dim, dtype=np.float32)[:, None]
    out = permute_for_llama_cpp(rows, heads)[:, 0].astype(int).tolist()
    assert out[:8] == [0, 4, 1, 5, 2, 6, 3, 7] and out[8:] == [8, 12, 9, 13, 10, 14, 11, 15]


def test_q8_0_weights(llama_run, tmp_path):
    import gguf

    from core.gguf_export import export_gguf

    result = export_gguf(llama_run, tmp_path / "q8", quant="q8_0")
    reader = gguf.GGUFReader(result.gguf_path)
    assert result.gguf_path.name == "tiny-llama-q8_0.gguf"
    assert _field(reader, "general.file_type") == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    tensors = {t.name: t for t in reader.tensors}
    assert tensors["blk.0.ffn_up.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert tensors["output_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    weights = _merged(llama_run).state_dict()["model.layers.0.mlp.up_proj.weight"].numpy()
    got = gguf.quants.dequantize(tensors["blk.0.ffn_up.weight"].data, gguf.GGMLQuantizationType.Q8_0)
    np.testing.assert_allclose(got.reshape(weights.shape), weights, atol=np.abs(weights).max() / 100)


def test_ollama_modelfile_and_prompt_formats(llama_run, tmp_path):
    import jinja2
    from transformers import AutoTokenizer

    from core.config import DataConfig
    from core.data import prompt_for
    from core.gguf_export import export_gguf, jinja_chat_template, prompt_format

    result = export_gguf(llama_run, tmp_path / "gguf")
    text = result.modelfile_path.read_text(encoding="utf-8")
    assert "FROM ./tiny-llama-f16.gguf\n" in text
    assert 'PARAMETER stop "<|endoftext|>"' in text and 'PARAMETER stop "<|im_end|>"' in text
    assert 'PARAMETER stop "<|im_start|>"' in text
    template = re.search(r'TEMPLATE """(.*?)"""', text, re.S).group(1)
    # {{ if .System }}WITH{{ else }}WITHOUT{{ end }}{{ .Response }}END, filled in as Ollama would.
    match = re.fullmatch(r"\{\{ if \.System \}\}(.*)\{\{ else \}\}(.*)\{\{ end \}\}\{\{ \.Response \}\}(.*)",
                         template, re.S)
    with_system, without, end = match.groups()
    tokenizer = AutoTokenizer.from_pretrained(llama_run / "final")
    question = "Who wrote Hamlet?"
    assert without.replace("{{ .Prompt }}", question) == tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    assert with_system.replace("{{ .System }}", "Be brief.").replace("{{ .Prompt }}", question) == \
        tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": question}], tokenize=False,
                                      add_generation_prompt=True)
    assert end == "<|im_end|>"

    # A run trained in another format: the GGUF's chat template and the Modelfile write that format.
    classic = DataConfig(template="classic")
    fmt = prompt_format(classic, tokenizer)
    assert (fmt.prefix, fmt.suffix, fmt.stops) == ("### Question:\n", "\n### Answer:\n", ("<|endoftext|>",))
    rendered = jinja2.Environment().from_string(jinja_chat_template(fmt)).render(
        messages=[{"role": "user", "content": question}], eos_token="<|endoftext|>")
    assert rendered == prompt_for(question, classic, tokenizer)


def test_only_llama_models(tiny_model_dir, tmp_path):
    from lora_run import make_lora_run

    from core.gguf_export import export_gguf

    run = make_lora_run(tmp_path / "neox-run", tiny_model_dir, with_checkpoint=False)  # GPT-NeoX
    with pytest.raises(ModelError, match="llama-architecture"):
        export_gguf(run, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    with pytest.raises(ModelError, match="unknown weight type"):
        export_gguf(run, tmp_path / "out", quant="q4_k")
