"""core.glossary: every metric and setting the app shows has plain words, one number format per metric."""

from __future__ import annotations

import dataclasses

import pytest

from core.config import SECTIONS, iter_fields
from core.glossary import GLOSSARY, METRIC_KEYS, explain, explain_module, format_metric, has_entry, metric_legend


def test_every_setting_has_plain_help():
    for section in SECTIONS:
        for f, _meta in iter_fields(section):
            text = explain(f"{section}.{f.name}")
            assert len(text) > 30, f"{section}.{f.name}: help too short to explain anything"
            assert "`" not in text  # markdown backticks are for the CLI docs, not for the words shown


@pytest.mark.parametrize(("key", "words"), [
    ("method.lora_r", "add-on matrices"),
    ("training.gradient_accumulation", "Read this many batches before updating the model once"),
    ("training.max_steps", "-1 means no step limit"),
    ("training.precision", "fp32 = 32-bit"),
    ("generation.top_p", "chances add up"),
    ("generation.do_sample", "Off (greedy)"),
    ("generation.temperature", "adventurous"),
    ("generation.repetition_penalty", "do not loop"),
    ("generation.max_new_tokens", "cut off"),
])
def test_jargon_settings_say_it_in_plain_words(key, words):
    assert words in explain(key)


def test_metrics_say_which_way_is_better_and_their_range():
    from core.evaluation import SCORE_NAMES

    assert set(METRIC_KEYS) == {"loss", "perplexity", *SCORE_NAMES}
    for key in METRIC_KEYS:
        term = GLOSSARY[f"metric.{key}"]
        assert term.higher_is_better is not None and term.range
        text = explain(f"metric.{key}")
        assert ("Higher is better." if term.higher_is_better else "Lower is better.") in text
        assert f"Range: {term.range}." in text
    assert not GLOSSARY["metric.loss"].higher_is_better and GLOSSARY["metric.bleu"].higher_is_better
    legend = metric_legend()
    assert all(GLOSSARY[f"metric.{key}"].label in legend for key in METRIC_KEYS)


def test_one_number_format_per_metric_for_values_and_changes():
    assert format_metric("loss", 2.91234) == "2.912" and format_metric("loss", -0.8902, signed=True) == "-0.890"
    assert format_metric("perplexity", 18.456) == "18.5" and format_metric("perplexity", 0.06903, signed=True) == "+0.1"
    assert format_metric("bleu", 23.456) == "23.5" and format_metric("bleu", 0.8902, signed=True) == "+0.9"
    assert format_metric("rougeL", 0.41234) == "0.412" and format_metric("rouge1", 0.06903, signed=True) == "+0.069"
    assert format_metric("exact_match", 0.4) == "40.0%" and format_metric("exact_match", 0.05, signed=True) == "+5.0%"
    assert format_metric("loss", -0.0000001, signed=True) == "+0.000"  # never "-0.000"
    assert format_metric("loss", None) == "—" and format_metric("loss", float("nan")) == "—"


def test_memory_parts_of_the_estimate_are_explained(tiny_model_dir, isolated_home):
    from test_estimate import tiny_config

    from core.estimate import architecture, estimate

    cfg = tiny_config(tiny_model_dir)
    for method in ("lora", "full"):
        cfg = dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, method=method))
        for part in estimate(cfg, model_info=architecture(cfg), measure_device=False).parts:
            assert has_entry(f"memory.{part.name}"), part.name
    assert has_entry("memory.measured peak")  # the panel's extra row after Measure


def test_module_kinds_of_real_architectures_are_explained(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from core.models import architecture_tree

    for kind in ("LlamaForCausalLM", "LlamaModel", "LlamaDecoderLayer", "LlamaAttention", "LlamaMLP",
                 "LlamaRMSNorm", "LlamaRotaryEmbedding", "Embedding", "Linear", "SiLUActivation", "ModuleList"):
        assert explain_module(kind), kind
    assert explain_module("LlamaRMSNorm").startswith("Normalisation")

    def kinds(node):
        yield node["type"]
        for child in node.get("children", []):
            yield from kinds(child)

    tree = architecture_tree(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)))
    assert all(explain_module(kind) for kind in kinds(tree))  # the tiny GPT-NeoX too


def test_unknown_keys_are_refused():
    with pytest.raises(KeyError):
        explain("metric.nonsense")
    assert not has_entry("training.nonsense") and not has_entry("nothing")
