"""The one place that maps our configuration onto library objects (peft configs, TrainingArguments, generate).

Everything else in ``core`` calls these functions instead of building library arguments itself, so a
library upgrade (transformers 5 renamed and removed several arguments) is fixed here only.
"""

from __future__ import annotations

from typing import Any

from core.config import ConfigError, GenerationConfig, MethodConfig, RunConfig

# LoRA targets per architecture: every attention and MLP projection (QLoRA paper: all linear layers
# matter more than the rank). Names must exist in the model; unknown architectures use all-linear.
_LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TARGET_MODULES: dict[str, list[str]] = {
    **{name: _LLAMA_LIKE for name in ("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe",
                                      "gemma", "gemma2", "gemma3_text", "olmo", "olmo2", "smollm3", "granite")},
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _linear_names(model) -> set[str]:
    """Last name parts of the layers LoRA can wrap (Linear, GPT-2's Conv1D), the output head excluded."""
    import torch

    names = set()
    for full_name, module in _base(model).named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D":
            leaf = full_name.rsplit(".", 1)[-1]
            if leaf not in ("lm_head", "embed_out"):
                names.add(leaf)
    return names


def default_target_modules(model) -> list[str] | str:
    """LoRA target layer names for ``model``'s architecture, or ``"all-linear"`` when it is not known."""
    model_type = getattr(_base(model).config, "model_type", "")
    wanted = TARGET_MODULES.get(model_type)
    if wanted:
        present = _linear_names(model)
        chosen = [name for name in wanted if name in present]
        if chosen:
            return chosen
    return "all-linear"


def _target_modules(method_cfg: MethodConfig, model) -> list[str] | str:
    text = (method_cfg.target_modules or "auto").strip()
    if text == "auto":
        return default_target_modules(model)
    if text == "all-linear":
        return "all-linear"
    names = [part.strip() for part in text.split(",") if part.strip()]
    present = _linear_names(model)
    missing = [name for name in names if name not in present]
    if missing or not names:
        raise ConfigError(
            "method.target_modules",
            f"no layer named {', '.join(missing) or '(empty)'} in this model; its layers are: "
            f"{', '.join(sorted(present))} (or use auto / all-linear)",
        )
    return names


def lora_config(method_cfg: MethodConfig, model):
    """The peft ``LoraConfig`` for ``method_cfg`` (also the adapter part of QLoRA)."""
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=method_cfg.lora_r,
        lora_alpha=method_cfg.lora_alpha,
        lora_dropout=method_cfg.lora_dropout,
        target_modules=_target_modules(method_cfg, model),
        bias="none",
    )


def _cuda_with_bitsandbytes() -> str | None:
    """None when 4-bit loading can work here, else the reason it cannot."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        return "it needs an NVIDIA GPU (CUDA) and this machine has none; use lora instead"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "it needs the bitsandbytes package (`pip install bitsandbytes`); or use lora instead"
    return None


def peft_config(method_cfg: MethodConfig, model):
    """The peft config for the method: LoraConfig (lora, qlora), PrefixTuningConfig (prefix), None (full)."""
    method = method_cfg.method
    if method == "full":
        return None
    if method == "lora":
        return lora_config(method_cfg, model)
    if method == "qlora":
        reason = _cuda_with_bitsandbytes()
        if reason:
            raise ConfigError("method.method", f"QLoRA loads the base model in 4 bits: {reason}")
        return lora_config(method_cfg, model)
    if method == "prefix":
        from peft import PrefixTuningConfig, TaskType

        return PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=method_cfg.prefix_virtual_tokens)
    raise ConfigError("method.method", f"unknown method '{method}' (expected lora, full, prefix or qlora)")


def bits_and_bytes_config():
    """4-bit NF4 quantization with double quantization (the QLoRA recipe); computes in bf16 where supported."""
    import torch
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float16
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)


def apply_method(model, method_cfg: MethodConfig, *, gradient_checkpointing: bool = False):
    """Make ``model`` trainable by the method: full (every weight), lora/prefix (peft adapters), qlora.

    For qlora the model must have been loaded in 4 bits (``load_model(..., quantize_4bit=True)``).
    """
    if method_cfg.method == "full":
        for param in model.parameters():
            param.requires_grad_(True)
        return model
    from core import model_use

    with model_use.loading():  # peft builds the adapter layers: not while another thread runs a model
        return _apply_peft(model, method_cfg, gradient_checkpointing)


def _apply_peft(model, method_cfg, gradient_checkpointing):
    from peft import get_peft_model

    config = peft_config(method_cfg, model)
    if method_cfg.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False} if gradient_checkpointing else None,
        )
    return get_peft_model(model, config)


def training_arguments(run_cfg: RunConfig, output_dir: str, device, *, eval_available: bool = True,
                       **overrides: Any):
    """``transformers.TrainingArguments`` for every TrainingConfig field; ``overrides`` win (engine needs).

    ``device``: a DeviceInfo or a spec string. ``eval_available``: False when there is no held-out
    data (evaluation and best-checkpoint selection are then off). Early stopping is the caller's
    EarlyStoppingCallback; max_length and max_eval_examples shape the data, not the arguments.
    """
    from transformers import TrainingArguments

    from core.devices import DeviceInfo, pick_device, resolve_precision
    from core.tracking import reporting_targets

    info = device if isinstance(device, DeviceInfo) else pick_device(str(device))
    t = run_cfg.training
    precision = resolve_precision(t.precision, info)
    if t.warmup_steps > 0:
        warmup: float = int(t.warmup_steps)
    else:
        # transformers 5 took warmup_ratio out: a float below 1 in warmup_steps is the ratio.
        warmup = float(t.warmup_ratio) if t.warmup_ratio < 1 else 0.0
    evaluate = eval_available
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        run_name=run_cfg.name or None,
        learning_rate=t.learning_rate,
        num_train_epochs=t.num_epochs,
        max_steps=t.max_steps if t.max_steps > 0 else -1,  # > 0 overrides the epochs
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation,
        warmup_steps=warmup,
        lr_scheduler_type=t.scheduler,
        # The fused AdamW kernel (transformers' own default on recent torch) makes the optimizer step
        # ~10x cheaper for full fine-tuning on CPU (bench: 0.54 s -> 0.046 s per step for SmolLM2).
        optim={"adamw": "adamw_torch_fused", "adafactor": "adafactor"}[t.optimizer],
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=t.eval_steps,
        eval_on_start=bool(evaluate and t.eval_before_training),
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit if t.save_total_limit > 0 else None,
        load_best_model_at_end=bool(evaluate and t.load_best_model_at_end),
        metric_for_best_model=t.metric_for_best,
        greater_is_better=False,  # both metrics are losses
        # transformers 5.2x renamed gradient_checkpointing to activation_checkpointing (the old name warns).
        activation_checkpointing=t.gradient_checkpointing,
        # Non-reentrant checkpointing works with frozen inputs (LoRA) without enable_input_require_grads.
        activation_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        seed=t.seed,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        # TensorBoard / MLflow via the Trainer's own callbacks; core.tracking says where their logs go.
        report_to=reporting_targets(t.report_to) or "none",
        # Forking from the GUI process is unsafe; batches are small enough for the main process.
        dataloader_num_workers=0,
        # Our collator picks its columns; the Trainer's signature inspection is unreliable with peft.
        remove_unused_columns=False,
        use_cpu=info.kind == "cpu",
        # Multi-process (DDP) runs: every adapter weight (LoRA, prefix) takes part in every forward, so
        # DDP's search for unused parameters is wasted work (and warns each step). The Trainer would switch
        # it on for a peft model, which is not a PreTrainedModel. Full fine-tuning keeps the Trainer's choice.
        ddp_find_unused_parameters=False if run_cfg.method.method in ("lora", "qlora", "prefix") else None,
    )
    # transformers 5 always saves safetensors (save_safetensors was removed): nothing to map.
    kwargs.update(overrides)
    best = kwargs.get("load_best_model_at_end") and kwargs.get("eval_strategy") not in ("no", None)
    if best and kwargs["save_steps"] % kwargs["eval_steps"] != 0:
        raise ConfigError(
            "training.save_steps",
            f"with 'Keep the best checkpoint' on, checkpoints must be saved at evaluations: save every "
            f"({kwargs['save_steps']}) must be a multiple of evaluate every ({kwargs['eval_steps']})",
        )
    if not best:
        kwargs["load_best_model_at_end"] = False
    try:
        return TrainingArguments(**kwargs)
    except ValueError as exc:
        raise ConfigError("training", f"the training settings were refused by transformers: {exc}") from None


def generation_kwargs(gen_cfg: GenerationConfig, tokenizer) -> dict:
    """Keyword arguments for ``model.generate``: always a pad token id; sampling knobs only when sampling."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kwargs: dict[str, Any] = {
        "max_new_tokens": gen_cfg.max_new_tokens,
        "do_sample": gen_cfg.do_sample,
        "repetition_penalty": gen_cfg.repetition_penalty,
        "pad_token_id": pad,
    }
    if tokenizer.eos_token_id is not None:
        kwargs["eos_token_id"] = tokenizer.eos_token_id
    if gen_cfg.do_sample:
        kwargs["temperature"] = gen_cfg.temperature
        kwargs["top_p"] = gen_cfg.top_p
        kwargs["top_k"] = gen_cfg.top_k  # 0 = no limit (transformers skips top-k at 0)
    return kwargs
