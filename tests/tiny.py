"""A tiny random GPT-NeoX model and a byte-level BPE tokenizer trained on the spot: offline, < 1 s."""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "### Question:\nWhat is the capital of France?\n### Answer:\nParis",
    "### Question:\nWho wrote Hamlet?\n### Answer:\nWilliam Shakespeare",
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "### Instruction:\n### Input:\n### Response:\n",
    "The quick brown fox jumps over the lazy dog. 0123456789 !?.,;:'\"()[]{}<>-_=+*/\\|@#$%^&~`",
] * 20


def make_tiny_model(folder: Path, *, vocab_size: int = 512, seed: int = 0, arch: str = "gpt_neox",
                    tie_word_embeddings: bool = False) -> Path:
    """Write a random 2-layer model (hidden 64) with its tokenizer into ``folder``: GPT-NeoX (the Pythia
    family; ``arch="gpt_neox"``) or Llama (``arch="llama"``; with ``tie_word_embeddings`` the output layer
    shares the input embedding, as SmolLM2 does)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    config_class, model_class = {"gpt_neox": (GPTNeoXConfig, GPTNeoXForCausalLM),
                                 "llama": (LlamaConfig, LlamaForCausalLM)}[arch]
    config = config_class(
        vocab_size=len(fast),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=512,
        eos_token_id=fast.eos_token_id,
        bos_token_id=fast.bos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=tie_word_embeddings,
    )
    model = model_class(config)
    model.save_pretrained(folder)
    return folder
