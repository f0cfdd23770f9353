"""GGUF + Ollama export: a run's model (LoRA merged into the base) as one ``.gguf`` file for llama.cpp,
LM Studio and Ollama, with an Ollama ``Modelfile`` and a model card beside it.

The file is laid out the way llama.cpp's own converter (``convert_hf_to_gguf.py``) writes a
``LlamaForCausalLM``: the same tensor names (from the ``gguf`` package's tensor map, the table that converter
uses), the same q/k row permutation (llama.cpp's rotary embedding pairs neighbouring dimensions, transformers
pairs the two halves of each head), the same hyper-parameter keys, and the tokenizer as a byte-level BPE
("gpt2") vocabulary with its merges, token types, special token ids and chat template.

Supported: llama-architecture models (the bundled SmolLM2 among them) with a byte-level BPE tokenizer;
weights in f16 or q8_0 (1-D tensors, the norms, stay f32 as llama.cpp keeps them).

torch / transformers / gguf are imported inside functions: the GUI imports this module at start-up.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

from core.cancel import ProgressFn
from core.config import atomic_write_text
from core.errors import ModelError

QUANTS = ("f16", "q8_0")
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)

# llama.cpp names the BPE pre-tokenizer (how text is split before merging) by hashing the tokens of this
# text; the same text and a few of its hashes (those of llama-architecture models) let the file say which
# one this tokenizer uses. From llama.cpp's convert_hf_to_gguf.py (get_vocab_base_pre).
_PRE_TOKENIZER_CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 "
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you "
    "sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
_PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # HuggingFaceTB/SmolLM(2)
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Meta-Llama-3
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",
    "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754": "deepseek-llm",
    "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821": "deepseek-coder",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
}

# Placeholders rendered through the run's prompt template to find where the user's text goes.
_USER, _SYSTEM, _ANSWER = "FTSUSERTEXT", "FTSSYSTEMTEXT", "FTSANSWERTEXT"


@dataclass
class GgufExport:
    """What ``export_gguf`` wrote."""

    folder: Path
    gguf_path: Path
    modelfile_path: Path
    quant: str
    ollama_name: str
    tensor_count: int


# ----------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------


def permute_for_llama_cpp(weights, n_head: int, n_head_kv: int | None = None):
    """Reorder the rows of a q or k projection from transformers' rotary layout to llama.cpp's.

    transformers rotates dimension i with i + head_dim/2 of each head; llama.cpp rotates 2i with 2i+1.
    Same operation as llama.cpp's converter (``LlamaModel.permute``); k uses the key/value head count.
    """
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _tensor_data(array, quant: str):
    """(data, ggml type) as llama.cpp's converter stores it: 1-D tensors f32, the rest f16 or q8_0."""
    import numpy as np
    from gguf import GGMLQuantizationType, quants

    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim <= 1:
        return array, GGMLQuantizationType.F32
    if quant == "q8_0":
        block = quants.GGML_QUANT_SIZES[GGMLQuantizationType.Q8_0][0]
        if array.shape[-1] % block == 0:
            return quants.quantize(array, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0
        # A row that does not fill whole 32-value blocks cannot be q8_0: llama.cpp's converter falls back too.
    return array.astype(np.float16), GGMLQuantizationType.F16


def _rope_settings(config) -> tuple[float, dict]:
    """(rope base frequency, its scaling) from a transformers config of either generation."""
    params = getattr(config, "rope_parameters", None) or {}
    scaling = dict(getattr(config, "rope_scaling", None) or {})
    theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    factor = params.get("factor", scaling.get("factor"))
    return float(theta), {"type": kind, "factor": factor}


def _add_hyperparameters(writer, config, name: str, quant: str) -> None:
    from gguf import GGML_QUANT_VERSION, LlamaFileType, RopeScalingType

    n_head = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    writer.add_type("model")
    writer.add_name(name)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(n_head))
    writer.add_head_count_kv(int(getattr(config, "num_key_value_heads", None) or n_head))
    writer.add_rope_dimension_count(int(head_dim))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    theta, scaling = _rope_settings(config)
    writer.add_rope_freq_base(theta)
    if scaling["type"] == "linear" and scaling["factor"]:
        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    elif scaling["type"] != "default":
        raise ModelError(f"GGUF export: rope scaling '{scaling['type']}' is not supported yet "
                         "(only the default and linear ones)")
    writer.add_vocab_size(int(config.vocab_size))
    writer.add_file_type(LlamaFileType.MOSTLY_F16 if quant == "f16" else LlamaFileType.MOSTLY_Q8_0)
    writer.add_quantization_version(GGML_QUANT_VERSION)


def _add_tensors(writer, model, quant: str, progress: ProgressFn | None) -> int:
    import gguf

    config = model.config
    n_head = config.num_attention_heads
    n_head_kv = getattr(config, "num_key_value_heads", None) or n_head
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    state = model.state_dict()
    tied = bool(getattr(config, "tie_word_embeddings", False))
    count = 0
    for index, (name, tensor) in enumerate(state.items()):
        if name.endswith(".rotary_emb.inv_freq"):
            continue  # recomputed by llama.cpp from the rope settings
        if name == "lm_head.weight" and tied:
            continue  # llama.cpp uses token_embd for the output when there is no output.weight
        new_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise ModelError(f"GGUF export: no llama.cpp name for the tensor {name!r}")
        array = tensor.detach().to("cpu").float().numpy()
        if name.endswith("q_proj.weight"):
            array = permute_for_llama_cpp(array, n_head, n_head)
        elif name.endswith("k_proj.weight"):
            array = permute_for_llama_cpp(array, n_head, n_head_kv)
        data, kind = _tensor_data(array, quant)
        writer.add_tensor(new_name, data, raw_dtype=kind)
        count += 1
        if progress is not None and index % 16 == 0:
            progress(0.5 + 0.3 * index / max(1, len(state)), f"converting {new_name}")
    return count


# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------


def _pre_tokenizer_name(tokenizer, tokenizer_json: dict) -> str:
    digest = sha256(str(tokenizer.encode(_PRE_TOKENIZER_CHECK_TEXT)).encode()).hexdigest()
    if digest in _PRE_TOKENIZERS:
        return _PRE_TOKENIZERS[digest]
    pre = tokenizer_json.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"  # byte-level with GPT-2's own split regex and nothing else: that is llama.cpp's "gpt-2"
    raise ModelError("GGUF export: llama.cpp does not know this tokenizer's pre-tokenizer (its check hash is "
                     f"{digest}); export the merged model and convert it with llama.cpp's convert_hf_to_gguf.py")


def _looks_special(token: str) -> bool:
    # llama.cpp's converter marks these as control tokens even when the tokenizer does not say special.
    return (token in ("<pad>", "<mask>") or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<unused") and token.endswith(">")))


def _add_tokenizer(writer, tokenizer, vocab_size: int, chat_template: str | None) -> None:
    """tokens, token types, merges, special ids, add_bos and the chat template (llama.cpp's gpt2 vocab)."""
    from gguf import SpecialVocab, TokenType

    if not getattr(tokenizer, "is_fast", False):
        raise ModelError("GGUF export needs a fast (tokenizers) tokenizer")
    with tempfile.TemporaryDirectory(prefix="fts-gguf-tokenizer-") as folder:
        tokenizer.save_pretrained(folder)
        tokenizer_json = json.loads((Path(folder) / "tokenizer.json").read_text(encoding="utf-8"))
        if tokenizer_json.get("model", {}).get("type") != "BPE":
            raise ModelError("GGUF export: only byte-level BPE tokenizers (GPT-2 style, as SmolLM2's) are "
                             f"supported; this one is {tokenizer_json.get('model', {}).get('type')!r}")
        pre = _pre_tokenizer_name(tokenizer, tokenizer_json)
        vocab = tokenizer.get_vocab()
        by_id = {index: token for token, index in vocab.items()}
        added = tokenizer.get_added_vocab()
        decoder = tokenizer.added_tokens_decoder
        if max(by_id) >= vocab_size:
            raise ModelError(f"GGUF export: the tokenizer has token ids up to {max(by_id)}, the model only "
                             f"{vocab_size} embeddings")
        tokens, types = [], []
        for index in range(vocab_size):
            token = by_id.get(index)
            if token is None:  # embedding rows no token uses (vocab padded to a round size)
                tokens.append(f"[PAD{index}]")
                types.append(TokenType.UNUSED)
            elif token in added:
                special = decoder[index].special if index in decoder else False
                types.append(TokenType.CONTROL if special or _looks_special(token) else TokenType.USER_DEFINED)
                tokens.append(token)
            else:
                tokens.append(token)
                types.append(TokenType.NORMAL)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        special = SpecialVocab(folder, load_merges=True, n_vocab=len(tokens))
    if not special.merges:
        raise ModelError("GGUF export: the tokenizer has no BPE merges")
    # Whether a BOS starts every text: what the transformers tokenizer does, so both tokenize alike.
    bos = tokenizer.bos_token_id
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    special.add_special_token["bos"] = bool(bos is not None and with_special[:1] == [bos]
                                            and tokenizer("a", add_special_tokens=False)["input_ids"][:1] != [bos])
    special.chat_template = chat_template
    special.add_to_gguf(writer, quiet=True)


def write_gguf(model, tokenizer, path, *, quant: str = "f16", name: str = "model", chat_template: str | None = None,
               progress: ProgressFn | None = None) -> int:
    """Write ``model`` (a transformers ``LlamaForCausalLM``) and ``tokenizer`` as one GGUF file; return its
    tensor count. ``chat_template``: the Jinja template to store (default: the tokenizer's)."""
    import gguf

    if quant not in QUANTS:
        raise ModelError(f"GGUF export: unknown weight type {quant!r} (choose {' or '.join(QUANTS)})")
    architecture = (getattr(model.config, "architectures", None) or [type(model).__name__])[0]
    if architecture not in SUPPORTED_ARCHITECTURES and type(model).__name__ not in SUPPORTED_ARCHITECTURES:
        raise ModelError(f"GGUF export supports llama-architecture models ({', '.join(SUPPORTED_ARCHITECTURES)}); "
                         f"this one is {architecture}: export the merged model and convert it with llama.cpp")
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    try:
        _add_hyperparameters(writer, model.config, name, quant)
        _add_tokenizer(writer, tokenizer, int(model.config.vocab_size),
                       chat_template if chat_template is not None else getattr(tokenizer, "chat_template", None))
        count = _add_tensors(writer, model, quant, progress)
        if progress is not None:
            progress(0.85, f"writing {Path(path).name}")
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return count


# ----------------------------------------------------------------------------------------------
# Prompt format: the GGUF chat template and the Ollama Modelfile
# ----------------------------------------------------------------------------------------------


@dataclass
class PromptFormat:
    """The run's prompt format cut around the user's text: what Ollama and llama.cpp clients need.

    ``prefix`` + user text + ``suffix`` is the prompt; ``system_prefix`` / ``system_suffix`` surround a
    system message (None when the format has no system turn); ``answer_end`` follows the answer.
    """

    prefix: str
    suffix: str
    answer_end: str
    system_prefix: str | None = None
    system_middle: str | None = None
    stops: tuple[str, ...] = ()


def prompt_format(data_cfg, tokenizer) -> PromptFormat:
    """Cut the run's template (``data.template``) around placeholder texts rendered through it."""
    from core.data import prompt_for, render_segments

    prompt = prompt_for(_USER, data_cfg, tokenizer)
    if prompt.count(_USER) != 1:
        raise ModelError(f"GGUF export: the {data_cfg.template!r} template does not show the question once")
    prefix, suffix = prompt.split(_USER)
    full = "".join(s.text for s in render_segments({"question": _USER, "answer": _ANSWER}, data_cfg, tokenizer))
    answer_end = full.split(_ANSWER, 1)[1] if full.count(_ANSWER) == 1 else ""
    system_prefix = system_middle = None
    if data_cfg.template == "chat":
        try:
            with_system = prompt_for({"messages": [{"role": "system", "content": _SYSTEM},
                                                   {"role": "user", "content": _USER},
                                                   {"role": "assistant", "content": ""}]}, data_cfg, tokenizer)
        except Exception:  # noqa: BLE001 - templates that refuse a system turn: the format simply has none
            with_system = ""
        if with_system.count(_SYSTEM) == 1 and with_system.count(_USER) == 1 and with_system.endswith(suffix) \
                and with_system.index(_SYSTEM) < with_system.index(_USER):
            system_prefix, rest = with_system.split(_SYSTEM)
            system_middle = rest.split(_USER)[0]
    stops = []
    eos = tokenizer.eos_token
    if eos:
        stops.append(eos)
    if data_cfg.template == "chat":
        # Special tokens that open or close a turn: the model must stop before writing the next one.
        for text in (prefix, suffix, answer_end):
            for token in tokenizer.all_special_tokens + list(tokenizer.get_added_vocab()):
                if token in text and token not in stops and token.strip():
                    stops.append(token)
    return PromptFormat(prefix, suffix, answer_end.rstrip("\n") if data_cfg.template == "chat" else answer_end,
                        system_prefix, system_middle, tuple(stops))


def _jinja_text(text: str) -> str:
    return text if not re.search(r"{[{%#]", text) else "{% raw %}" + text + "{% endraw %}"


def jinja_chat_template(fmt: PromptFormat) -> str:
    """A Jinja chat template writing a conversation in the run's format (for templates other than chat)."""
    return ("{% for message in messages %}"
            "{% if message['role'] == 'user' %}" + _jinja_text(fmt.prefix) + "{{ message['content'] }}"
            + _jinja_text(fmt.suffix)
            + "{% elif message['role'] == 'assistant' %}{{ message['content'] }}" + _jinja_text(fmt.answer_end)
            + "{{ eos_token }}{% endif %}{% endfor %}")


def _go_text(text: str) -> str:
    return text.replace("{{", '{{ "{{" }}')


def ollama_template(fmt: PromptFormat) -> str:
    """The prompt format as an Ollama (Go text/template) TEMPLATE: ``.System``, ``.Prompt``, ``.Response``."""
    no_system = _go_text(fmt.prefix) + "{{ .Prompt }}" + _go_text(fmt.suffix)
    if fmt.system_prefix is not None and fmt.system_middle is not None:
        with_system = (_go_text(fmt.system_prefix) + "{{ .System }}" + _go_text(fmt.system_middle) + "{{ .Prompt }}"
                       + _go_text(fmt.suffix))
        head = "{{ if .System }}" + with_system + "{{ else }}" + no_system + "{{ end }}"
    else:
        head = no_system
    return head + "{{ .Response }}" + _go_text(fmt.answer_end)


def ollama_modelfile(gguf_name: str, fmt: PromptFormat, generation_cfg=None, *, model_name: str = "my-model") -> str:
    """An Ollama Modelfile: FROM the GGUF beside it, the TEMPLATE, stop tokens and the run's sampling."""
    template = ollama_template(fmt)
    if '"""' in template:
        raise ModelError('GGUF export: the prompt template contains """, which a Modelfile cannot quote')
    lines = [
        f"# Ollama: ollama create {model_name} -f Modelfile && ollama run {model_name}",
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{template}"""',
    ]
    lines += [f"PARAMETER stop {json.dumps(stop)}" for stop in fmt.stops]
    if generation_cfg is not None:
        lines.append(f"PARAMETER temperature {generation_cfg.temperature if generation_cfg.do_sample else 0}")
        if generation_cfg.do_sample:
            lines.append(f"PARAMETER top_p {generation_cfg.top_p}")
        lines.append(f"PARAMETER repeat_penalty {generation_cfg.repetition_penalty}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# The export
# ----------------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-.") or "model"


def export_gguf(run_dir, out_dir, *, checkpoint=None, quant: str = "f16", base_model: str | None = None,
                progress: ProgressFn | None = None) -> GgufExport:
    """Merge the run's adapter into its base and write ``out_dir/<run>-<quant>.gguf``, a ``Modelfile`` for
    Ollama and a model card (README.md). Returns where everything went."""
    from core.export import (
        _chosen_base,
        _copy_training_config,
        _new_output_dir,
        _report,
        _resolve,
        _StagingDir,
        merged_model,
        model_card,
    )
    from core.generation import load_session_tokenizer

    if quant not in QUANTS:
        raise ModelError(f"GGUF export: unknown weight type {quant!r} (choose {' or '.join(QUANTS)})")
    resolved = _resolve(run_dir, checkpoint)
    cfg = resolved.run_config
    base = _chosen_base(cfg, base_model)
    out = _new_output_dir(out_dir)
    name = _slug(cfg.name or resolved.run_dir.name)
    gguf_name = f"{name}-{quant}.gguf"
    tokenizer = load_session_tokenizer(resolved.base_model, resolved.weights_dir)
    fmt = prompt_format(cfg.data, tokenizer)  # before the slow part: a template problem fails fast
    chat_template = getattr(tokenizer, "chat_template", None) if cfg.data.template == "chat" \
        else jinja_chat_template(fmt)
    with _StagingDir(out) as tmp:
        model = merged_model(resolved, progress)
        count = write_gguf(model, tokenizer, tmp / gguf_name, quant=quant, name=cfg.name or resolved.run_dir.name,
                           chat_template=chat_template, progress=progress)
        del model
        atomic_write_text(tmp / "Modelfile", ollama_modelfile(gguf_name, fmt, cfg.generation, model_name=name))
        _copy_training_config(resolved, tmp)
        how = f"""llama.cpp: `llama-cli -m {gguf_name} -cnv` (the chat template is in the file).

Ollama: `ollama create {name} -f Modelfile && ollama run {name}` (the Modelfile holds the prompt template and
stop tokens). LM Studio: import `{gguf_name}`.

Python, with llama-cpp-python:

```python
from llama_cpp import Llama

llm = Llama(model_path="{gguf_name}")
print(llm.create_chat_completion(messages=[{{"role": "user", "content": "Who wrote Hamlet?"}}]))
```

Weights: {quant} (adapter merged into the base; norms in f32)."""
        model_card(cfg, resolved.run_dir, "gguf", base, how).save(tmp / "README.md")
    _report(progress, 1.0, f"GGUF exported to {out / gguf_name}")
    return GgufExport(folder=out, gguf_path=out / gguf_name, modelfile_path=out / "Modelfile", quant=quant,
                      ollama_name=name, tensor_count=count)
