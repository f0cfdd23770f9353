"""core.hf_args: the one mapping from our config onto peft / TrainingArguments / generate, field by field."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from core import hf_args
from core.config import ConfigError, GenerationConfig, MethodConfig, RunConfig, TrainingConfig
from core.devices import DeviceInfo

CPU = DeviceInfo("cpu", "CPU", None, None, False, False)
GPU = DeviceInfo("cuda", "NVIDIA A100", 0, 80 << 30, True, True)


def _tiny(kind: str):
    """A randomly initialised 1-2 layer model of an architecture (no files, a fraction of a second)."""
    import transformers

    if kind == "llama":
        config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=2, num_key_value_heads=1)
    elif kind == "gpt2":
        config = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=64)
    elif kind == "bloom":
        config = transformers.BloomConfig(vocab_size=64, hidden_size=32, n_layer=1, n_head=2)
    else:
        raise ValueError(kind)
    return transformers.AutoModelForCausalLM.from_config(config)


@pytest.fixture()
def tiny_neox(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir)


# -- target modules and peft configs -----------------------------------------------------------------

def test_default_target_modules_per_architecture(tiny_neox):
    assert hf_args.default_target_modules(tiny_neox) == ["query_key_value", "dense", "dense_h_to_4h",
                                                          "dense_4h_to_h"]
    assert hf_args.default_target_modules(_tiny("llama")) == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                               "up_proj", "down_proj"]
    assert hf_args.default_target_modules(_tiny("gpt2")) == ["c_attn", "c_proj", "c_fc"]
    assert hf_args.default_target_modules(_tiny("bloom")) == "all-linear"  # not in the table


def test_explicit_target_modules_are_checked(tiny_neox):
    config = hf_args.lora_config(MethodConfig(target_modules=" dense , query_key_value"), tiny_neox)
    assert set(config.target_modules) == {"dense", "query_key_value"}
    assert hf_args.lora_config(MethodConfig(target_modules="all-linear"), tiny_neox).target_modules == "all-linear"
    with pytest.raises(ConfigError) as info:
        hf_args.lora_config(MethodConfig(target_modules="q_proj,v_proj"), tiny_neox)
    assert info.value.field == "method.target_modules"
    assert "q_proj" in str(info.value) and "query_key_value" in str(info.value)  # names what exists


def test_peft_config_for_each_method(tiny_neox):
    from peft import LoraConfig, PrefixTuningConfig

    lora = hf_args.peft_config(MethodConfig(method="lora", lora_r=4, lora_alpha=8, lora_dropout=0.1), tiny_neox)
    assert isinstance(lora, LoraConfig)
    assert (lora.r, lora.lora_alpha, lora.lora_dropout, lora.task_type) == (4, 8, 0.1, "CAUSAL_LM")
    prefix = hf_args.peft_config(MethodConfig(method="prefix", prefix_virtual_tokens=7), tiny_neox)
    assert isinstance(prefix, PrefixTuningConfig) and prefix.num_virtual_tokens == 7
    assert hf_args.peft_config(MethodConfig(method="full"), tiny_neox) is None


def test_qlora_is_refused_without_cuda(tiny_neox, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as info:
        hf_args.peft_config(MethodConfig(method="qlora"), tiny_neox)
    assert info.value.field == "method.method" and "NVIDIA GPU" in str(info.value)


def test_qlora_names_bitsandbytes_when_missing(tiny_neox, monkeypatch):
    import importlib.util

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a))
    with pytest.raises(ConfigError) as info:
        hf_args.peft_config(MethodConfig(method="qlora"), tiny_neox)
    assert "bitsandbytes" in str(info.value)


def test_bits_and_bytes_config_is_nf4_double_quant(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = hf_args.bits_and_bytes_config()
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.float16


# -- apply_method ---------------------------------------------------------------------------------

def _trainable(model) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def test_apply_full_trains_everything(tiny_neox):
    for p in tiny_neox.parameters():
        p.requires_grad_(False)
    model = hf_args.apply_method(tiny_neox, MethodConfig(method="full"))
    assert model is tiny_neox
    assert len(_trainable(model)) == len(list(model.parameters()))


def test_apply_lora_trains_only_adapters_and_runs(tiny_neox):
    model = hf_args.apply_method(tiny_neox, MethodConfig(method="lora", lora_r=2))
    names = _trainable(model)
    assert names and all("lora_" in name for name in names)
    ids = torch.tensor([[1, 2, 3, 4]])
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)


def test_apply_prefix_tuning_runs(tiny_neox):
    model = hf_args.apply_method(tiny_neox, MethodConfig(method="prefix", prefix_virtual_tokens=5))
    names = _trainable(model)
    assert names and all("prompt_encoder" in name for name in names)
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.isfinite(model(input_ids=ids, labels=ids).loss)


# -- TrainingArguments ------------------------------------------------------------------------------

# Every TrainingConfig field is either mapped onto TrainingArguments here or used elsewhere on purpose;
# a new field that is in neither set fails test_every_training_field_is_accounted_for.
HANDLED_ELSEWHERE = {
    "max_length": "the data preparation (core.data)",
    "early_stopping_patience": "EarlyStoppingCallback in core.training",
    "early_stopping_threshold": "EarlyStoppingCallback in core.training",
    "max_eval_examples": "the eval dataset is sliced in core.training",
    "eval_time_share": "the eval dataset is cut to a time budget in core.training (core.estimate.eval_cap)",
    "device": "the device argument (pick_device)",
}


def _custom_run() -> RunConfig:
    cfg = RunConfig(name="my-run")
    cfg.training = TrainingConfig(
        learning_rate=3e-5, num_epochs=2.5, max_steps=-1, batch_size=3, gradient_accumulation=4, warmup_ratio=0.1,
        warmup_steps=0, scheduler="linear", optimizer="adafactor", weight_decay=0.01, max_grad_norm=0.5,
        max_length=128, eval_steps=5, save_steps=10, logging_steps=2, save_total_limit=0,
        load_best_model_at_end=True, metric_for_best="loss", early_stopping_patience=2, early_stopping_threshold=0.01,
        gradient_checkpointing=True, precision="fp32", seed=7, group_by_length=False, eval_before_training=True,
        max_eval_examples=10, report_to="none", device="cpu",
    )
    return cfg


def test_training_arguments_map_every_field(tmp_path):
    args = hf_args.training_arguments(_custom_run(), str(tmp_path / "out"), CPU)
    assert args.output_dir == str(tmp_path / "out")
    assert args.run_name == "my-run"
    assert args.learning_rate == 3e-5
    assert args.num_train_epochs == 2.5 and args.max_steps == -1
    assert args.per_device_train_batch_size == 3 and args.per_device_eval_batch_size == 3
    assert args.gradient_accumulation_steps == 4
    assert args.warmup_steps == pytest.approx(0.1)  # a float below 1 is the ratio in transformers 5
    assert args.lr_scheduler_type.value == "linear"
    assert args.optim.value == "adafactor"
    assert args.weight_decay == 0.01 and args.max_grad_norm == 0.5
    assert args.logging_strategy.value == "steps" and args.logging_steps == 2
    assert args.eval_strategy.value == "steps" and args.eval_steps == 5 and args.eval_on_start is True
    assert args.save_strategy.value == "steps" and args.save_steps == 10
    assert args.save_total_limit is None  # 0 = keep all
    assert args.load_best_model_at_end is True
    assert args.metric_for_best_model == "loss" and args.greater_is_better is False
    assert args.activation_checkpointing is True and args.gradient_checkpointing is True
    assert args.activation_checkpointing_kwargs == {"use_reentrant": False}
    assert args.fp16 is False and args.bf16 is False
    assert args.seed == 7
    assert args.train_sampling_strategy == "random"
    assert args.report_to == []
    assert args.dataloader_num_workers == 0 and args.remove_unused_columns is False
    assert args.use_cpu is True


def test_every_training_field_is_accounted_for():
    mapped = {"learning_rate", "num_epochs", "max_steps", "batch_size", "gradient_accumulation", "warmup_ratio",
              "warmup_steps", "scheduler", "optimizer", "weight_decay", "max_grad_norm", "eval_steps", "save_steps",
              "logging_steps", "save_total_limit", "load_best_model_at_end", "metric_for_best",
              "gradient_checkpointing", "precision", "seed", "group_by_length", "eval_before_training", "report_to"}
    fields = {f.name for f in dataclasses.fields(TrainingConfig)}
    assert fields == mapped | set(HANDLED_ELSEWHERE), fields ^ (mapped | set(HANDLED_ELSEWHERE))


def test_training_arguments_defaults_and_variants(tmp_path):
    cfg = RunConfig()
    args = hf_args.training_arguments(cfg, str(tmp_path), "cpu")
    assert args.optim.value == "adamw_torch_fused"
    assert args.lr_scheduler_type.value == "cosine"
    assert args.train_sampling_strategy == "group_by_length"
    assert args.save_total_limit == 3
    assert args.warmup_steps == pytest.approx(0.05)
    assert args.activation_checkpointing is False
    cfg.training.max_steps = 12
    cfg.training.warmup_steps = 3  # whole steps replace the ratio
    cfg.training.scheduler = "constant"
    args = hf_args.training_arguments(cfg, str(tmp_path), "cpu")
    assert args.max_steps == 12 and args.warmup_steps == 3
    assert args.lr_scheduler_type.value == "constant"


def test_no_eval_data_turns_evaluation_and_best_checkpoint_off(tmp_path):
    cfg = _custom_run()
    cfg.training.save_steps = 7  # not a multiple of eval_steps: fine without evaluation
    args = hf_args.training_arguments(cfg, str(tmp_path), CPU, eval_available=False)
    assert args.eval_strategy.value == "no"
    assert args.load_best_model_at_end is False and args.eval_on_start is False


def test_save_steps_must_be_a_multiple_of_eval_steps_for_best_checkpoint(tmp_path):
    cfg = _custom_run()
    cfg.training.save_steps = 7
    with pytest.raises(ConfigError) as info:
        hf_args.training_arguments(cfg, str(tmp_path), CPU)
    assert info.value.field == "training.save_steps" and "multiple" in str(info.value)
    cfg.training.load_best_model_at_end = False
    assert hf_args.training_arguments(cfg, str(tmp_path), CPU).save_steps == 7


def test_overrides_win(tmp_path):
    args = hf_args.training_arguments(_custom_run(), str(tmp_path), CPU, eval_strategy="no",
                                      load_best_model_at_end=False, disable_tqdm=True, save_steps=3)
    assert args.eval_strategy.value == "no" and args.load_best_model_at_end is False
    assert args.disable_tqdm is True and args.save_steps == 3


def test_precision_is_checked_against_the_device(tmp_path):
    cfg = _custom_run()
    cfg.training.precision = "bf16"
    with pytest.raises(ConfigError) as info:
        hf_args.training_arguments(cfg, str(tmp_path), CPU)
    assert info.value.field == "training.precision"


def test_gpu_precision_flags(tmp_path, monkeypatch):
    import transformers

    recorded = {}
    monkeypatch.setattr(transformers, "TrainingArguments", lambda **kwargs: recorded.update(kwargs) or kwargs)
    cfg = _custom_run()
    cfg.training.precision = "auto"
    hf_args.training_arguments(cfg, str(tmp_path), GPU)
    assert recorded["bf16"] is True and recorded["fp16"] is False and recorded["use_cpu"] is False
    cfg.training.precision = "fp16"
    hf_args.training_arguments(cfg, str(tmp_path), GPU)
    assert recorded["fp16"] is True and recorded["bf16"] is False


# -- generate ---------------------------------------------------------------------------------------

def test_generation_kwargs_greedy_has_no_sampling_knobs():
    tokenizer = SimpleNamespace(pad_token_id=5, eos_token_id=2)
    kwargs = hf_args.generation_kwargs(GenerationConfig(max_new_tokens=9, repetition_penalty=1.2), tokenizer)
    assert kwargs == {"max_new_tokens": 9, "do_sample": False, "repetition_penalty": 1.2, "pad_token_id": 5,
                      "eos_token_id": 2}


def test_generation_kwargs_sampling_and_pad_fallback():
    tokenizer = SimpleNamespace(pad_token_id=None, eos_token_id=2)
    gen = GenerationConfig(do_sample=True, temperature=0.3, top_p=0.8, top_k=0)
    kwargs = hf_args.generation_kwargs(gen, tokenizer)
    assert kwargs["pad_token_id"] == 2  # never generate without a pad token id
    assert (kwargs["temperature"], kwargs["top_p"], kwargs["top_k"], kwargs["do_sample"]) == (0.3, 0.8, 0, True)


def test_generation_kwargs_drive_a_real_generate(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    batch = tokenizer(["What is"], return_tensors="pt")
    out = model.generate(**batch, **hf_args.generation_kwargs(GenerationConfig(max_new_tokens=4), tokenizer))
    assert out.shape[1] <= batch["input_ids"].shape[1] + 4


@pytest.mark.parametrize("method, expected", [("lora", False), ("qlora", False), ("prefix", False), ("full", None)])
def test_ddp_does_not_search_for_unused_adapter_parameters(tmp_path, method, expected):
    cfg = RunConfig()
    cfg.method.method = method
    args = hf_args.training_arguments(cfg, str(tmp_path), CPU)
    assert args.ddp_find_unused_parameters is expected


def test_trainer_hands_find_unused_false_to_ddp_for_lora(tiny_neox, tmp_path):
    """The Trainer's own accelerator set-up for a peft model (not a PreTrainedModel) uses our False."""
    from transformers import Trainer

    model = hf_args.apply_method(tiny_neox, MethodConfig(method="lora"))
    cfg = RunConfig()
    args = hf_args.training_arguments(cfg, str(tmp_path), CPU, eval_available=False)
    trainer = Trainer(model=model, args=args)
    (handler,) = trainer._build_accelerator_args()["kwargs_handlers"]
    assert handler.find_unused_parameters is False
    args = hf_args.training_arguments(cfg, str(tmp_path), CPU, eval_available=False,
                                      ddp_find_unused_parameters=None)
    (handler,) = Trainer(model=model, args=args)._build_accelerator_args()["kwargs_handlers"]
    assert handler.find_unused_parameters is True  # what the Trainer would pick without the mapping
