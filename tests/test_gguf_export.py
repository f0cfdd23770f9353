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


# ----------------------------------------------------------------------------------------------
# The quickstart run (bundled SmolLM2, 2 real LoRA steps), exported and opened by real clients
# ----------------------------------------------------------------------------------------------

LONG_PROMPTS = ["Explain why the sky is blue.", "Write a short poem about the sea.",
                "Give three tips for learning a new language."]


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    from core.config import RunConfig
    from core.training import train

    cfg = RunConfig.load(Path(__file__).resolve().parent.parent / "examples" / "quickstart.yaml")
    cfg.training.max_steps = 2
    cfg.training.save_steps = 2
    cfg.training.eval_steps = 2
    cfg.training.max_eval_examples = 4
    cfg.training.eval_before_training = False
    cfg.training.load_best_model_at_end = False
    cfg.training.device = "cpu"
    run_dir = tmp_path_factory.mktemp("quickstart") / "quickstart-2-steps"
    result = train(cfg, run_dir=run_dir)
    assert (run_dir / "final" / "adapter_model.safetensors").is_file(), result
    return run_dir


def _transformers_answers(run_dir, n_tokens):
    """The app's fine-tuned model (base + adapter, as the Chat page loads it): prompt ids and greedy tokens."""
    import torch

    from core.generation import ModelSession

    session = ModelSession(run_dir, device="cpu")
    answers = []
    for question in LONG_PROMPTS:
        text, ids = session.build_prompt(question)
        with torch.no_grad(), session.model_for(True) as model:
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=n_tokens, do_sample=False, repetition_penalty=1.0,
                                 pad_token_id=session.tokenizer.pad_token_id)
        answers.append((text, ids, out[0, len(ids):].tolist()))
    return answers, session.tokenizer


def _matching_prefix(a, b) -> int:
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        count += 1
    return count


_LLAMA_CPP_CLIENT = """
import json, sys
import llama_cpp
import llama_cpp.llama_cpp as low_level

# No "extra buffer types" (llama.cpp's AMX / repacked weight kernels): on a machine whose CPU lists AMX but
# cannot run it (this VM), they die with SIGILL on any quantized file, llama.cpp's own Q4_1 SmolLM2 included.
_default_params = low_level.llama_model_default_params


def _model_params():
    params = _default_params()
    params.use_extra_bufts = False
    return params


low_level.llama_model_default_params = _model_params
job = json.loads(sys.stdin.read())
# One thread: llama.cpp's spinning workers crawl on a busy machine.
llm = llama_cpp.Llama(model_path=job["gguf"], n_ctx=512, n_threads=1, seed=0, verbose=False)
answers = []
for text, ids in job["prompts"]:
    # llama.cpp's own reading of the prompt text (special tokens parsed, BOS as the file says).
    prompt_tokens = llm.tokenize(text.encode("utf-8"), add_bos=llm.metadata.get("tokenizer.ggml.add_bos_token")
                                 == "true", special=True)
    tokens = []
    for token in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
        tokens.append(token)
        if token == llm.token_eos() or len(tokens) == job["n_tokens"]:
            break
    answers.append({"prompt_tokens": prompt_tokens, "tokens": tokens})
llm.close()
print(json.dumps(answers))
"""


@pytest.mark.slow
@pytest.mark.real_model
@pytest.mark.timeout(1800)  # trains the 2-step run first; a loaded 2-core machine is slow
def test_quickstart_gguf_answers_like_transformers_in_llama_cpp(quickstart_run, tmp_path):
    """llama-cpp-python, in its own process as any client would run it, loads the exported GGUF and answers the
    prompts greedily with the same tokens as the app's transformers model (f16: all 16; q8_0: reported)."""
    import subprocess
    import sys

    pytest.importorskip("llama_cpp")
    from core.gguf_export import export_gguf

    n_tokens = 16
    expected, tokenizer = _transformers_answers(quickstart_run, n_tokens)
    assert all(len(a) == n_tokens for _, _, a in expected)  # long answers: all 16 tokens compared
    report = {}
    for quant in ("f16", "q8_0"):
        result = export_gguf(quickstart_run, tmp_path / quant, quant=quant)
        job = {"gguf": str(result.gguf_path), "n_tokens": n_tokens, "prompts": [[t, i] for t, i, _ in expected]}
        client = subprocess.run([sys.executable, "-c", _LLAMA_CPP_CLIENT], input=json.dumps(job),
                                capture_output=True, text=True, timeout=900)
        assert client.returncode == 0, client.stderr[-3000:]
        answers = json.loads(client.stdout.strip().splitlines()[-1])
        matches = []
        for (text, ids, answer), got in zip(expected, answers, strict=True):
            assert got["prompt_tokens"] == ids  # llama.cpp tokenizes the prompt as transformers does
            matches.append(_matching_prefix(got["tokens"], answer))
            if quant == "f16":
                assert got["tokens"] == answer, (text, tokenizer.decode(got["tokens"]), tokenizer.decode(answer))
        report[quant] = {"matching tokens": matches, "of": n_tokens,
                         "MiB": round(result.gguf_path.stat().st_size / 2**20, 1)}
    print("\nllama.cpp vs transformers, greedy:", json.dumps(report))


@pytest.mark.slow
@pytest.mark.real_model
@pytest.mark.timeout(1800)
def test_quickstart_adapter_loads_on_another_machine(quickstart_run, tmp_path):
    """Different HOME (no app cache), base pulled by Hub id from an offline HF cache holding the converted model."""
    import os
    import subprocess
    import sys

    import torch
    from hub_cache import populate_hub_cache

    from core.export import export_adapter
    from core.generation import ModelSession
    from core.models import BUNDLED_HUB_ID, ensure_bundled_model

    out = export_adapter(quickstart_run, tmp_path / "adapter")
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == BUNDLED_HUB_ID
    other = tmp_path / "other-machine"
    populate_hub_cache(other / "hf-home", BUNDLED_HUB_ID, ensure_bundled_model(), link=True)
    (other / "home").mkdir()
    session = ModelSession(quickstart_run, device="cpu")
    text, ids = session.build_prompt(LONG_PROMPTS[0])
    script = f"""
import json, torch
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer
model = AutoPeftModelForCausalLM.from_pretrained(".").eval()
ids = AutoTokenizer.from_pretrained(".")({text!r}, add_special_tokens=False, return_tensors="pt").input_ids
assert ids[0].tolist() == {ids!r}
with torch.no_grad():
    print(json.dumps(model(ids).logits[0, -1].tolist()))
"""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "FINETUNE_STUDIO"))}
    env.update(HOME=str(other / "home"), HF_HOME=str(other / "hf-home"), HF_HUB_OFFLINE="1", PYTHONPATH="",
               TOKENIZERS_PARALLELISM="false")
    result = subprocess.run([sys.executable, "-c", script], cwd=out, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    got = torch.tensor(json.loads(result.stdout.strip().splitlines()[-1]))
    with torch.no_grad(), session.model_for(True) as tuned:
        expected = tuned(torch.tensor([ids])).logits[0, -1]
    with torch.no_grad(), session.model_for(False) as base:
        untuned = base(torch.tensor([ids])).logits[0, -1]
    # fp32 logits of ~30 after 30 layers: another process may pick other kernels / thread splits, which moves them by
    # ~1e-3 (seen 2.3e-3 at a logit scale of 27). The adapter itself moves them by ~9, so 1e-2 still tells them apart.
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-2)
    assert (got - untuned).abs().max() > 100 * 1e-2, "the exported adapter did not change the base model's answer"


@pytest.mark.slow
@pytest.mark.real_model
@pytest.mark.timeout(1800)
def test_quickstart_gguf_is_laid_out_like_llama_cpp_converter_output(quickstart_run, tmp_path):
    """The bundled SmolLM2 GGUF was written by llama.cpp's converter: ours must have the same tokenizer, the same
    hyper-parameters and tensors, and the same (permuted) q/k rows, up to that file's 4-bit rounding."""
    import gguf

    from core.gguf_export import export_gguf
    from core.models import bundled_gguf_path

    ours = gguf.GGUFReader(export_gguf(quickstart_run, tmp_path / "gguf").gguf_path)
    reference = gguf.GGUFReader(bundled_gguf_path())
    same_keys = [key for key in reference.fields if key.startswith(("llama.", "tokenizer."))
                 and key != "tokenizer.ggml.add_space_prefix"]
    assert len(same_keys) > 15
    for key in same_keys:
        assert _field(ours, key) == _field(reference, key), key
    ours_tensors = {t.name: t for t in ours.tensors}
    reference_tensors = {t.name: t for t in reference.tensors}
    assert {n: list(t.shape) for n, t in ours_tensors.items()} == {n: list(t.shape) for n, t in
                                                                  reference_tensors.items()}

    def values(tensor):
        flat = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        return np.asarray(flat, dtype=np.float32).reshape(list(reversed([int(d) for d in tensor.shape])))

    for name in ("blk.0.attn_q.weight", "blk.7.attn_k.weight", "blk.29.ffn_down.weight"):
        mine, theirs = values(ours_tensors[name]), values(reference_tensors[name])
        error = np.abs(mine - theirs).max()
        assert error < 0.05 * np.abs(theirs).max(), (name, error)  # our f16 = their 4-bit + a 2-step LoRA
        if "attn_q" in name or "attn_k" in name:  # un-permuted rows would be far off
            heads = 9 if "attn_q" in name else 3
            undone = mine.reshape(heads, mine.shape[0] // heads // 2, 2, -1).swapaxes(1, 2).reshape(mine.shape)
            assert np.abs(undone - theirs).max() > 4 * error
