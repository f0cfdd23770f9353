"""Every number and setting the app shows, in plain words: one place for the GUI's "?" buttons and the CLI.

``GLOSSARY`` holds the terms that are not settings: model facts (``fact.*``), the parts of the memory
estimate (``memory.*``), evaluation metrics (``metric.*``, with the direction that is better and the
range) and chat read-outs (``chat.*``). Settings keep their words where they are defined, in the
``help`` of the ``core.config`` fields; ``explain("training.max_steps")`` reads them from there, so
one call explains anything the user sees. ``format_metric`` gives each metric one number format,
for values and (signed) changes alike.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from core.config import SECTIONS, field_meta


@dataclass(frozen=True)
class Term:
    """One explained term: ``short`` is one or two plain sentences, no jargon left unexplained."""

    label: str
    short: str
    higher_is_better: bool | None = None  # metrics only: which direction is an improvement
    range: str = ""  # metrics only: the values it can take, e.g. "0 to 100"


GLOSSARY: dict[str, Term] = {
    # -- model facts (Model page, `models info`) ------------------------------------------------------
    "fact.architecture": Term(
        "Architecture",
        "The model's class in the transformers library: its family (e.g. Llama) and its job; 'ForCausalLM' "
        "means it writes text by predicting the next token. The type in brackets is the family's short name."),
    "fact.shape": Term(
        "Layers × hidden",
        "How many transformer blocks are stacked (layers), and how many numbers describe each token inside "
        "them (hidden size). More of either: a bigger model that is slower and can learn more."),
    "fact.vocab": Term(
        "Vocabulary",
        "How many different tokens (words and word pieces) the tokenizer knows. Text is cut into these "
        "pieces before the model reads it; about 3 tokens make 2 English words."),
    "fact.context": Term(
        "Context length",
        "The longest text, in tokens, the model was built to read at once: prompt and answer together."),
    "fact.total": Term(
        "Parameters",
        "The learned numbers (weights) that make up the model; 135M means 135 million. Each takes 4 bytes of "
        "memory in fp32 (32-bit numbers) or 2 in bf16/fp16 (16-bit)."),
    "fact.trainable": Term(
        "Trainable",
        "How many of the parameters the chosen method changes. LoRA trains a small add-on (often under 1%) "
        "and leaves the model's own weights frozen; full fine-tuning changes all of them."),
    "fact.weights": Term(
        "Weights in memory",
        "The memory the model's weights take once loaded, at their number format (4 bytes per parameter in "
        "fp32). Training needs this plus the parts listed under Training memory."),
    "fact.memory": Term(
        "Training memory",
        "A rough peak of the memory training needs: the weights, their gradients (one correction per trained "
        "number), the optimizer's running averages and the activations (intermediate results kept for the "
        "backward pass), for the current batch size and max length."),
    "fact.flops_token": Term(
        "FLOPs per token",
        "FLOPs are floating-point operations, the multiplications and additions a computer does. This is the "
        "work of training on one token: about 6 x the parameters (about 4 x when the base is frozen, as with "
        "LoRA). Only the size matters: twice the FLOPs, about twice the time."),
    "fact.flops_step": Term(
        "FLOPs per step",
        "The work of training on one batch: FLOPs per token x batch size x max length (with gradient "
        "accumulation one update of the model reads that many batches). A CPU does some billions (GFLOP) a "
        "second, a GPU trillions (TFLOP): dividing gives a lower bound for the time per batch."),
    "fact.chat": Term(
        "Chat template",
        "Whether the tokenizer carries its own recipe for writing a conversation as text (who speaks, where "
        "a turn ends). The 'chat' prompt template needs it."),
    # -- the memory estimate (Train page) -------------------------------------------------------------
    "memory.weights": Term(
        "weights",
        "The model's parameters at their load precision (4 bytes each in fp32, 2 in bf16/fp16)."),
    "memory.adapter weights": Term(
        "adapter weights",
        "The small LoRA add-on matrices that training changes, kept in fp32 (4 bytes per number)."),
    "memory.gradients": Term(
        "gradients",
        "One correction per trained number, computed on every step to say which way to move it."),
    "memory.optimizer state": Term(
        "optimizer state",
        "Running averages the optimizer keeps per trained number to take smoother steps (AdamW keeps two)."),
    "memory.activations": Term(
        "activations",
        "Intermediate results of every layer, kept from the forward pass for the backward pass; they grow "
        "with batch size x max length. Gradient checkpointing trades them for extra compute."),
    "memory.logits and loss": Term(
        "logits and loss",
        "The model's score for every vocabulary token at every position (logits), from which the loss is "
        "computed: batch x length x vocabulary numbers, large for big vocabularies."),
    "memory.overhead": Term(
        "overhead",
        "Memory the libraries need besides the model: the allocator's reserve, the data batches, the Trainer."),
    "memory.measured peak": Term(
        "measured peak",
        "The highest memory use seen while a few real training steps ran (replaces the formula)."),
    "estimate.time": Term(
        "Time",
        "How long one training step (one update of the model) takes on this device, from a formula or, after "
        "Measure, from real steps; total time = steps x this. In brackets, the number format training computes "
        "in: fp32 (32-bit, exact, the CPU default) or bf16/fp16 (16-bit: half the activation memory, faster on "
        "GPUs that support them)."),
    # -- evaluation metrics (Evaluate page, `evaluate`) -----------------------------------------------
    "metric.loss": Term(
        "Loss",
        "How surprised the model is by the reference answers, averaged per answer token (cross-entropy, on "
        "held-out examples it never trained on).", False, "0 (no surprise) and up; 1-3 is usual"),
    "metric.perplexity": Term(
        "Perplexity",
        "The loss made easier to read (e to the power of the loss): roughly how many equally likely next "
        "tokens the model hesitates between.", False, "1 (always sure and right) and up"),
    "metric.bleu": Term(
        "BLEU",
        "How many runs of 1 to 4 words in the generated answer also appear in the reference answer, with a "
        "penalty for answers that are too short. Rewards the same wording.", True, "0 to 100"),
    "metric.rouge1": Term(
        "ROUGE-1",
        "How many single words the generated answer and the reference share, balancing missing words against "
        "extra ones (F1).", True, "0 to 1"),
    "metric.rouge2": Term(
        "ROUGE-2",
        "Like ROUGE-1 but for pairs of neighbouring words: rewards getting the words in the right order.",
        True, "0 to 1"),
    "metric.rougeL": Term(
        "ROUGE-L",
        "The longest run of words found in both answers in the same order (gaps allowed), as F1.",
        True, "0 to 1"),
    "metric.exact_match": Term(
        "Exact match",
        "The share of answers equal to the reference once case, punctuation and a/an/the are ignored.",
        True, "0% to 100%"),
    # -- chat read-outs (Chat page, `generate`) -------------------------------------------------------
    "chat.greedy": Term(
        "Greedy",
        "Sampling off: the model always takes its single most likely next token, so the same question gets "
        "the same answer every time. The fairest way to compare two models."),
    "chat.ended_by": Term(
        "Ended by",
        "Why an answer stopped: 'finished' when the model produced its end-of-text token (eos) by itself; "
        "'cut off' when it used all the Max new tokens allowed (Continue goes on); 'stop string' when one of "
        "your stop strings appeared."),
    "chat.first_token": Term(
        "First token",
        "Seconds from Send to the first piece of the answer (includes loading the model the first time)."),
    "chat.tokens_per_second": Term(
        "tok/s",
        "Tokens generated per second: the answer's speed. A token is about 3/4 of an English word."),
}

# How each metric is written: digits after the point, and whether it is a share shown as a percentage.
_METRIC_FORMAT = {
    "loss": (3, False),
    "perplexity": (1, False),
    "bleu": (1, False),
    "rouge1": (3, False),
    "rouge2": (3, False),
    "rougeL": (3, False),
    "exact_match": (1, True),
}
METRIC_KEYS = tuple(_METRIC_FORMAT)

# Module class names (the Type column of the architecture tree), most specific pattern first.
_MODULE_KINDS = (
    (r"ForCausalLM$|LMHeadModel$", "the whole model: the transformer plus the head that scores every "
                                    "vocabulary token as the next one"),
    (r"(RMSNorm|LayerNorm|Norm)$", "normalisation: rescales each token's numbers to a steady size so the "
                                   "layers stay stable (RMSNorm is a cheaper LayerNorm)"),
    (r"RotaryEmbedding$", "rotary position encoding: tells attention where each token sits in the text"),
    (r"(DecoderLayer|Block|Layer)$", "one transformer block: attention followed by a feed-forward network"),
    (r"(Attention|SdpaAttention|FlashAttention2)$", "attention: lets each token look back at earlier tokens "
                                                    "and take what it needs from them"),
    (r"(MLP|FeedForward)$", "feed-forward network: works on each token on its own, where much of the "
                            "knowledge is stored"),
    (r"^Embedding$", "embedding table: one learned row of numbers per vocabulary token"),
    (r"^Linear$", "a learned matrix multiplication (a weight matrix); LoRA attaches its add-ons to these"),
    (r"^lora\.Linear$|LoraLayer", "a weight matrix with a LoRA add-on (two small trained matrices)"),
    (r"^(SiLU|SiLUActivation|GELU|GELUActivation|NewGELUActivation|ReLU|Tanh)$",
     "activation function: a fixed curve (no weights) applied between the feed-forward layers"),
    (r"^Dropout$", "dropout: randomly silences some numbers during training, against overfitting"),
    (r"^ModuleList$", "the stack of repeated blocks"),
    (r"Model$", "the transformer body: embeddings, the stack of blocks and a final normalisation"),
)


def explain(key: str) -> str:
    """One plain explanation of ``key``: a glossary term (metrics with direction and range) or a setting.

    Settings are ``section.field`` as in the config (``training.max_steps``); their words are the
    field's help. Raises KeyError for an unknown key.
    """
    term = GLOSSARY.get(key)
    if term is not None:
        text = term.short
        if term.higher_is_better is not None:
            text += " Higher is better." if term.higher_is_better else " Lower is better."
        if term.range:
            text += f" Range: {term.range}."
        return text
    section, _, name = key.partition(".")
    if section in SECTIONS and name:
        return field_meta(section, name)["help"].replace("`", "")
    raise KeyError(key)


def label(key: str) -> str:
    """The short name of ``key`` as the app shows it."""
    term = GLOSSARY.get(key)
    if term is not None:
        return term.label
    section, _, name = key.partition(".")
    return field_meta(section, name).get("label") or name


def has_entry(key: str) -> bool:
    """True when ``explain(key)`` has words for ``key``."""
    try:
        explain(key)
    except KeyError:
        return False
    return True


def explain_module(type_name: str) -> str:
    """What a module class of the architecture tree does (e.g. ``LlamaRMSNorm``), "" when unknown."""
    for pattern, text in _MODULE_KINDS:
        if re.search(pattern, type_name):
            return text[0].upper() + text[1:] + "."
    return ""


def format_metric(key: str, value: float | None, *, signed: bool = False) -> str:
    """``value`` of metric ``key`` in its one format; ``signed`` for a change ("+0.123", "-4.5%")."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    decimals, percent = _METRIC_FORMAT.get(key, (3, False))
    number = 100 * value if percent else value
    if round(number, decimals) == 0:
        number = 0.0  # no "-0.000"
    text = f"{number:+.{decimals}f}" if signed else f"{number:.{decimals}f}"
    return text + ("%" if percent else "")


def legend(keys, width: int = 100) -> str:
    """"Label: explanation" for each key, wrapped at ``width`` (continuation lines indented): the CLI's notes."""
    import textwrap

    return "\n".join(textwrap.fill(f"{label(key)}: {explain(key)}", width=width, subsequent_indent="    ")
                     for key in keys)


def metric_legend(keys=METRIC_KEYS, width: int = 100) -> str:
    """The metrics explained, one per paragraph (direction and range included), for the CLI and reports."""
    return legend([f"metric.{key}" for key in keys], width)
