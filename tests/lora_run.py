"""A finished LoRA run folder built by hand (no training needed): config, metrics, final adapter, status."""

from __future__ import annotations

import json
from pathlib import Path

QA = [
    {"question": "What is the capital of France?", "answer": "Paris"},
    {"question": "Who wrote Hamlet?", "answer": "William Shakespeare"},
    {"question": "What colour is the sky?", "answer": "Blue"},
    {"question": "How many legs has a dog?", "answer": "Four"},
    {"question": "What is two plus two?", "answer": "Four"},
    {"question": "Which planet is red?", "answer": "Mars"},
    {"question": "What do bees make?", "answer": "Honey"},
    {"question": "What is frozen water?", "answer": "Ice"},
    {"question": "Where do penguins live?", "answer": "Antarctica"},
    {"question": "What is the opposite of hot?", "answer": "Cold"},
]


def make_lora_run(folder: Path, tiny_model_dir: Path, *, seed: int = 1, with_checkpoint: bool = True) -> Path:
    """Write ``folder`` as a finished LoRA run on the tiny model; the adapter changes the outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.config import RunConfig

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data_file = folder.parent / f"{folder.name}-data.jsonl"
    data_file.write_text("".join(json.dumps(row) + "\n" for row in QA), encoding="utf-8")

    cfg = RunConfig(name=folder.name)
    cfg.model.name_or_path = str(tiny_model_dir)
    cfg.data.source = str(data_file)
    cfg.data.test_fraction = 0.3
    cfg.method.lora_r = 4
    cfg.method.lora_alpha = 8
    cfg.method.lora_dropout = 0.0
    cfg.training.max_length = 64
    cfg.training.batch_size = 2
    cfg.training.max_steps = 2
    cfg.training.eval_steps = 1
    cfg.training.save_steps = 1
    cfg.training.warmup_ratio = 0.0
    cfg.training.eval_before_training = False
    cfg.generation.max_new_tokens = 8
    cfg.generation.repetition_penalty = 1.0
    cfg.save(folder / "config.yaml")

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["query_key_value", "dense_h_to_4h"],
                      task_type="CAUSAL_LM")
    model = get_peft_model(base, lora)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # B starts at zero (a no-op adapter): make it change the outputs
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    model.save_pretrained(folder / "final")
    tokenizer.save_pretrained(folder / "final")
    if with_checkpoint:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.mul_(0.5)
        model.save_pretrained(folder / "checkpoints" / "checkpoint-1")
        (folder / "checkpoints" / "checkpoint-1" / "COMPLETE").write_text("", encoding="utf-8")

    metrics = []
    for step in range(1, 11):
        metrics.append({"kind": "train", "step": step, "total_steps": 10, "loss": 3.0 - 0.2 * step,
                        "learning_rate": 2e-4 * (1 - step / 10), "time": 1000.0 + step})
        if step % 5 == 0:
            metrics.append({"kind": "eval", "step": step, "total_steps": 10, "eval_loss": 3.1 - 0.15 * step,
                            "time": 1000.0 + step})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics), encoding="utf-8")
    (folder / "status.json").write_text(json.dumps({"state": "finished", "message": "done", "global_step": 10,
                                                    "total_steps": 10}), encoding="utf-8")
    return folder
