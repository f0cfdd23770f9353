"""Typed run configuration: the single source of truth for defaults, help texts and validation.

Every field carries metadata that the GUI form, its tooltips, the CLI and the validator all read:
``help`` (plain language: what it does, a rule of thumb, what goes wrong if it is off), ``label``,
optional ``min``/``max``/``choices``, and ``advanced`` (folded away in the form).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.errors import StudioError
from core.paths import chmod_like_new


def opt(
    default: Any,
    help: str,
    *,
    label: str | None = None,
    min: float | None = None,
    max: float | None = None,
    choices: tuple[str, ...] | None = None,
    advanced: bool = False,
    multiline: bool = False,
) -> Any:
    """A dataclass field with the metadata the form, CLI and validator read."""
    metadata = {
        "help": help,
        "label": label,
        "min": min,
        "max": max,
        "choices": choices,
        "advanced": advanced,
        "multiline": multiline,
    }
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


class ConfigError(StudioError, ValueError):
    """A configuration value is wrong; ``field`` names it (e.g. ``training.learning_rate``)."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass(frozen=True)
class FieldProblem:
    field: str  # dotted path, e.g. "training.learning_rate"
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


SCHEMAS = ("auto", "question_answer", "alpaca", "prompt_completion", "input_output", "text", "messages", "preference",
           "kto")
TEMPLATES = ("classic", "alpaca", "chat", "plain", "custom")


@dataclass
class DataConfig:
    source: str = opt(
        "sample:trivia",
        "Where the training examples come from: a file (.jsonl, .json, .csv, .parquet), a folder saved "
        "with Hugging Face `datasets`, a Hub dataset id such as `tatsu-lab/alpaca`, or a bundled sample "
        "written `sample:<topic>` (e.g. `sample:trivia`, `sample:all`).",
        label="Dataset",
    )
    hub_split: str = opt(
        "train",
        "Which split to read from a Hub dataset or dataset folder (usually `train`).",
        label="Split to read",
        advanced=True,
    )
    schema: str = opt(
        "auto",
        "How the columns are understood. `auto` guesses from the column names (question/answer, "
        "instruction/input/output, prompt/completion, input/output, text, messages or conversations). "
        "Pick one by hand if the guess is wrong.",
        label="Format",
        choices=SCHEMAS,
    )
    column_map: dict = opt(
        {},
        "Which column plays which role, e.g. {question: prompt_text, answer: reply}. Empty means the "
        "detected mapping; a mapping always wins over detection. Roles: question, answer, instruction, input, "
        "output, prompt, completion, text, messages, system, chosen, rejected, label. A nested JSON key is "
        "written parent.child.",
        label="Column mapping",
        advanced=True,
    )
    preference: str = opt(
        "refuse",
        "What to do with preference data (DPO: prompt/chosen/rejected; KTO: prompt/completion/label). "
        "`refuse` stops with an explanation: such data is meant for DPO/KTO, and fine-tuning on it as it is "
        "would learn the rejected answers too. `chosen_only` trains on the chosen answers only (DPO) or only "
        "on the rows labelled true (KTO).",
        label="Preference data",
        choices=("refuse", "chosen_only"),
        advanced=True,
    )
    drop_rows: list = opt(
        [],
        "Row numbers of the file to leave out of this run (as the data page and `data check` show them: "
        "the line of a JSONL file, the spreadsheet row of a CSV). The file itself is never modified.",
        label="Rows to leave out",
        advanced=True,
    )
    text_chunk_chars: int = opt(
        1000,
        "Plain text files (.txt, .md) are cut into pieces of about this many characters, at paragraph "
        "breaks when possible (continued pre-training). About 4 characters make a token in English: keep it "
        "near 4 x the max length; the end of a longer piece is cut off by the max length.",
        label="Text piece size (characters)",
        min=50,
        max=10**7,
        advanced=True,
    )
    template: str = opt(
        "classic",
        "How each example is turned into the text the model sees. `classic` writes "
        "'### Question: … ### Answer: …' (the tutorials' format); `alpaca` is the Alpaca instruction "
        "format; `chat` uses the model's own chat template (best for chat models such as SmolLM2-Instruct); "
        "`plain` is prompt and answer separated by a newline; `custom` uses the template you write below.",
        label="Prompt template",
        choices=TEMPLATES,
    )
    custom_template: str = opt(
        "### Question:\n{question}\n### Answer:\n{answer}",
        "Your own template when the template is `custom`. Put fields in braces, e.g. {question}, {answer}, "
        "{instruction}, {input}, {output}. Everything from the answer field ({answer}, {output} or "
        "{completion}) onwards is what the model learns to produce.",
        label="Custom template",
        advanced=True,
        multiline=True,
    )
    clean_whitespace: bool = opt(
        True,
        "Collapse runs of spaces/newlines inside each field and strip the ends, as the tutorials do. "
        "Turn it off for code or poetry where whitespace matters.",
        label="Clean up whitespace",
    )
    train_on_answers_only: bool = opt(
        True,
        "Only the answer tokens count in the loss; the prompt is context. This is almost always what you "
        "want for question/answer data. Turn it off to also learn to reproduce the questions.",
        label="Train on answers only",
    )
    test_fraction: float = opt(
        0.1,
        "Share of examples held out to measure the eval loss (never trained on). 0.1 is a good default; "
        "below 0.05 the eval loss gets noisy on small datasets, 0 disables evaluation.",
        label="Held-out fraction",
        min=0.0,
        max=0.5,
    )
    split_seed: int = opt(
        42,
        "Seed of the train/held-out split. The same seed gives the same split every time.",
        label="Split seed",
        min=0,
        max=2**31 - 1,
        advanced=True,
    )
    max_examples: int = opt(
        0,
        "Use at most this many examples (0 = all). Handy for a quick first try on a big dataset.",
        label="Max examples",
        min=0,
        max=10**9,
        advanced=True,
    )
    skip_bad_rows: bool = opt(
        False,
        "Skip rows that cannot be used (malformed JSON, empty fields) instead of stopping with an error. "
        "The number of skipped rows is reported.",
        label="Skip bad rows",
    )
    overlong: str = opt(
        "truncate",
        "What to do with examples longer than the max length: `truncate` cuts them (the end of the answer "
        "is lost), `drop` leaves them out.",
        label="Too-long examples",
        choices=("truncate", "drop"),
        advanced=True,
    )


@dataclass
class ModelConfig:
    name_or_path: str = opt(
        "bundled:SmolLM2-135M-Instruct",
        "The base model: `bundled:SmolLM2-135M-Instruct` (ships with the app, works offline), a local "
        "folder with a model, or a Hugging Face Hub id such as `EleutherAI/pythia-70m` (needs internet "
        "the first time).",
        label="Base model",
    )
    revision: str = opt(
        "",
        "A Hub branch, tag or commit to pin (empty = the default branch).",
        label="Revision",
        advanced=True,
    )
    trust_remote_code: bool = opt(
        False,
        "Some models need Python code from their repository to load. That code runs with your permissions: "
        "only allow it for repositories you trust. This setting only asks: the app asks you once per model on "
        "this computer (the CLI needs --trust-remote-code), and a run's config.yaml alone never allows it.",
        label="Allow the model's own code",
        advanced=True,
    )
    allow_pickle: bool = opt(
        False,
        "Allow loading weights stored as Python pickles (.bin) when no safetensors file exists. Pickles can "
        "run code when loaded: only allow for sources you trust. This setting only asks: the app asks you once "
        "per model on this computer (the CLI needs --allow-pickle), and a run's config.yaml alone never allows it.",
        label="Allow pickled weights",
        advanced=True,
    )


@dataclass
class MethodConfig:
    method: str = opt(
        "lora",
        "`lora` trains small adapter matrices (fast, little memory, the usual choice); `full` updates every "
        "weight (most capacity, ~4x the memory of the weights for Adam); `prefix` learns virtual prompt "
        "tokens (smallest, weakest); `qlora` is LoRA on a 4-bit base model (needs an NVIDIA GPU); `dpo` "
        "(preference tuning) trains LoRA adapters on pairs of a preferred and a rejected answer (prompt/chosen/"
        "rejected data, e.g. your blind A/B votes from Chat), from the base model or an SFT run's adapter.",
        label="Method",
        choices=("lora", "full", "prefix", "qlora", "dpo"),
    )
    dpo_beta: float = opt(
        0.1,
        "DPO: how far the model may move away from where it started (the reference). Low (0.05) lets it follow "
        "the preferences more boldly; high (0.5) keeps it close to the reference. 0.1 is the usual value.",
        label="DPO beta",
        min=0.001,
        max=10.0,
        advanced=True,
    )
    start_from: str = opt(
        "",
        "DPO: a finished SFT (LoRA) run folder whose adapter is trained further on the preferences (it is also "
        "the reference the model is kept close to). Empty: start from the base model with new LoRA adapters.",
        label="Start from (SFT run)",
        advanced=True,
    )
    lora_r: int = opt(
        16,
        "LoRA rank: how big the small add-on matrices are that LoRA trains next to each frozen weight matrix "
        "(more rank, more numbers it can learn). 4-8 is enough for style or format, 16-64+ to teach facts. "
        "Too high costs memory and can overfit small datasets.",
        label="LoRA rank",
        min=1,
        max=1024,
    )
    lora_alpha: int = opt(
        32,
        "LoRA scaling; the update is multiplied by alpha/rank. Rule of thumb: alpha = 2 x rank.",
        label="LoRA alpha",
        min=1,
        max=4096,
        advanced=True,
    )
    lora_dropout: float = opt(
        0.05,
        "Dropout on the adapter input, against overfitting. 0.05-0.1 is typical; 0 for tiny runs.",
        label="LoRA dropout",
        min=0.0,
        max=0.9,
        advanced=True,
    )
    target_modules: str = opt(
        "auto",
        "Which layers get adapters, comma separated (e.g. `q_proj,v_proj`), `all-linear`, or `auto` for a "
        "sensible default for the model's architecture (all attention and MLP projections).",
        label="LoRA target modules",
        advanced=True,
    )
    prefix_virtual_tokens: int = opt(
        20,
        "Prefix tuning: how many learned virtual tokens are prepended. 10-30 is typical.",
        label="Virtual tokens",
        min=1,
        max=512,
        advanced=True,
    )


@dataclass
class TrainingConfig:
    learning_rate: float = opt(
        2e-4,
        "How big each update step is. 2e-4 is a good LoRA starting point; full fine-tuning wants ~1e-5 to "
        "5e-5. Too high: the loss jumps around or explodes; too low: it barely moves.",
        label="Learning rate",
        min=1e-8,
        max=1.0,
    )
    num_epochs: float = opt(
        1.0,
        "How many times to go over the training data. 1-3 is typical; more on a small dataset memorises it "
        "(watch the eval loss turn up). Ignored when max steps is set.",
        label="Epochs",
        min=0.01,
        max=1000.0,
    )
    max_steps: int = opt(
        -1,
        "Stop after this many steps (a step = one update of the model, after batch size x gradient "
        "accumulation examples); overrides epochs. -1 means no step limit: train for the number of epochs. "
        "Use a small number (e.g. 10) for a quick look.",
        label="Max steps",
        min=-1,
        max=10**8,
    )
    batch_size: int = opt(
        8,
        "Examples per step on each device. Larger is faster per example but needs more memory. If you run "
        "out of memory, halve it and double gradient accumulation.",
        label="Batch size",
        min=1,
        max=4096,
    )
    gradient_accumulation: int = opt(
        1,
        "Read this many batches before updating the model once, adding up the corrections (gradients) "
        "each batch suggests. Each update then learns from batch size x this many examples while memory "
        "holds only one batch: a way to get a big batch on a small machine.",
        label="Gradient accumulation",
        min=1,
        max=1024,
    )
    warmup_ratio: float = opt(
        0.05,
        "Share of the steps over which the learning rate ramps up from 0. 0.03-0.1 avoids a rough start.",
        label="Warm-up (share of steps)",
        min=0.0,
        max=0.5,
        advanced=True,
    )
    warmup_steps: int = opt(
        0,
        "Warm-up in steps; when above 0 it replaces the warm-up share.",
        label="Warm-up steps",
        min=0,
        max=10**7,
        advanced=True,
    )
    scheduler: str = opt(
        "cosine",
        "How the learning rate changes after warm-up: `cosine` eases down to 0 (a good default), `linear` "
        "falls in a straight line, `constant` stays put.",
        label="Schedule",
        choices=("cosine", "linear", "constant"),
        advanced=True,
    )
    optimizer: str = opt(
        "adamw",
        "`adamw` is the standard. `adafactor` uses less memory (no per-weight momentum) and is slower to "
        "converge.",
        label="Optimizer",
        choices=("adamw", "adafactor"),
        advanced=True,
    )
    weight_decay: float = opt(
        0.0,
        "Pulls weights towards zero, a mild guard against overfitting. 0-0.1; LoRA rarely needs it.",
        label="Weight decay",
        min=0.0,
        max=1.0,
        advanced=True,
    )
    max_grad_norm: float = opt(
        1.0,
        "Clips the gradient when its size exceeds this, which stops single bad batches from wrecking "
        "the model. 1.0 is standard; 0 disables clipping.",
        label="Gradient clipping",
        min=0.0,
        max=1000.0,
        advanced=True,
    )
    max_length: int = opt(
        256,
        "Longest example in tokens. Longer examples are cut or dropped (see the data page for how many). "
        "Memory and time grow with it; pick the smallest value that fits most examples.",
        label="Max length (tokens)",
        min=8,
        max=131072,
    )
    eval_steps: int = opt(
        20,
        "Measure the held-out loss every this many steps. More often gives a finer curve but costs time.",
        label="Evaluate every (steps)",
        min=1,
        max=10**7,
    )
    save_steps: int = opt(
        20,
        "Save a checkpoint every this many steps; a stopped or crashed run resumes from the latest one.",
        label="Save every (steps)",
        min=1,
        max=10**7,
        advanced=True,
    )
    logging_steps: int = opt(
        1,
        "Report the training loss every this many steps (the points of the loss curve).",
        label="Log every (steps)",
        min=1,
        max=10**6,
        advanced=True,
    )
    save_total_limit: int = opt(
        3,
        "Keep at most this many checkpoints on disk (the best one is always kept). 0 keeps all.",
        label="Checkpoints to keep",
        min=0,
        max=1000,
        advanced=True,
    )
    load_best_model_at_end: bool = opt(
        True,
        "At the end, the final model is the checkpoint with the best eval loss, not simply the last one.",
        label="Keep the best checkpoint",
        advanced=True,
    )
    metric_for_best: str = opt(
        "eval_loss",
        "Which metric decides the best checkpoint (lower eval loss is better).",
        label="Best-checkpoint metric",
        choices=("eval_loss", "loss"),
        advanced=True,
    )
    early_stopping_patience: int = opt(
        0,
        "Stop when the eval loss has not improved for this many evaluations (0 = off). 3 is typical; it "
        "saves time and catches overfitting.",
        label="Early stopping patience",
        min=0,
        max=1000,
    )
    early_stopping_threshold: float = opt(
        0.0,
        "The smallest drop in eval loss that counts as an improvement for early stopping.",
        label="Minimum improvement",
        min=0.0,
        max=10.0,
        advanced=True,
    )
    gradient_checkpointing: bool = opt(
        False,
        "Recompute activations in the backward pass instead of storing them: ~30% slower, much less memory "
        "for long sequences or big batches.",
        label="Gradient checkpointing",
        advanced=True,
    )
    precision: str = opt(
        "auto",
        "How many bits each number uses while training: fp32 = 32-bit (exact; what CPUs use), bf16/fp16 = "
        "16-bit (half the activation memory, much faster on GPUs that support them; bf16 is the more robust "
        "of the two). `auto` picks bf16 on GPUs that support it, fp16 on other GPUs and fp32 on CPU. bf16 also "
        "works on CPUs with native bf16 instructions (Intel AMX, AVX-512 BF16); a LoRA run then keeps the "
        "frozen model weights in bf16 (half their memory). The 16-bit formats are refused where the device "
        "lacks them.",
        label="Precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        advanced=True,
    )
    seed: int = opt(
        42,
        "Random seed for initialisation, shuffling and dropout; the same seed and settings give the same run.",
        label="Seed",
        min=0,
        max=2**31 - 1,
        advanced=True,
    )
    group_by_length: bool = opt(
        True,
        "Put examples of similar length in the same batch so little compute is wasted on padding. The "
        "loss is unchanged; only the order of batches changes.",
        label="Group by length",
        advanced=True,
    )
    eval_before_training: bool = opt(
        True,
        "Measure the eval loss of the untouched base model first, so the curve starts at step 0.",
        label="Evaluate before training",
        advanced=True,
    )
    max_eval_examples: int = opt(
        200,
        "Evaluate on at most this many held-out examples (0 = all); keeps evaluations quick.",
        label="Max eval examples",
        min=0,
        max=10**9,
        advanced=True,
    )
    eval_time_share: float = opt(
        0.15,
        "On a CPU, all held-out evaluations of a run together (the step-0 one included) may take at most about "
        "this share of its estimated training time: the held-out examples are cut to a number that fits (at "
        "least 8, the same examples every time), so a short run spends its time training. The cap and the "
        "examples used are shown when the run starts and kept in status.json. 0 = no time cap (only Max eval "
        "examples applies); GPU runs are never capped.",
        label="Evaluation time share (CPU)",
        min=0.0,
        max=1.0,
        advanced=True,
    )
    report_to: str = opt(
        "none",
        "Also log the loss, learning rate and eval loss to TensorBoard and/or MLflow (install them with "
        "`pip install finetune-studio[tracking]`). TensorBoard writes into the run's tensorboard/ folder "
        "(`tensorboard --logdir RUN/tensorboard`); MLflow into $MLFLOW_TRACKING_URI, else the workspace's "
        "mlflow.db (`mlflow ui --backend-store-uri sqlite:///WORKSPACE/mlflow.db`). The run's tracking.json "
        "says where.",
        label="Also report to",
        choices=("none", "tensorboard", "mlflow", "tensorboard+mlflow"),
        advanced=True,
    )
    device: str = opt(
        "auto",
        "Where to train: `auto` (a GPU if there is one, else the CPU), `cpu`, `cuda`, `cuda:1`, `mps`.",
        label="Device",
        advanced=True,
    )


@dataclass
class GenerationConfig:
    max_new_tokens: int = opt(
        256,
        "The longest answer, in tokens (a token is about 3/4 of an English word; 256 is a long paragraph). "
        "An answer that reaches it is cut off mid-sentence; Chat then offers Continue. Shorter limits come "
        "back faster.",
        label="Max new tokens",
        min=1,
        max=8192,
    )
    do_sample: bool = opt(
        False,
        "Off (greedy): always take the single most likely next token, so the same question gets the same "
        "answer (best for comparing models). On (sampling): draw the next token at random, weighted by how "
        "likely the model finds it, for more varied answers.",
        label="Sample",
    )
    temperature: float = opt(
        0.7,
        "With sampling: how adventurous the choice of the next token is. Low (0.2) sticks to the likeliest "
        "words, high (1.0+) is more creative and more random; 0.2-0.8 is typical.",
        label="Temperature",
        min=0.01,
        max=5.0,
    )
    top_p: float = opt(
        0.9,
        "With sampling (nucleus sampling): choose only among the likeliest next tokens whose chances add up "
        "to this share, e.g. 0.9 = the top 90%; the long tail of unlikely tokens is never picked. Lower is "
        "safer and plainer.",
        label="Top-p",
        min=0.01,
        max=1.0,
    )
    top_k: int = opt(
        50,
        "With sampling: choose only among the k likeliest next tokens (0 = no limit).",
        label="Top-k",
        min=0,
        max=100000,
        advanced=True,
    )
    repetition_penalty: float = opt(
        1.1,
        "Makes tokens already used less likely, so answers do not loop. 1 = off; 1.1-1.3 is typical; too "
        "high and the model avoids words it needs.",
        label="Repetition penalty",
        min=0.5,
        max=3.0,
    )
    seed: int = opt(
        0,
        "Seed for sampling, so a sampled answer can be reproduced.",
        label="Seed",
        min=0,
        max=2**31 - 1,
        advanced=True,
    )
    stop_strings: list = opt(
        [],
        "Stop the answer when one of these strings appears (e.g. `###`).",
        label="Stop strings",
        advanced=True,
    )


SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "method": MethodConfig,
    "training": TrainingConfig,
    "generation": GenerationConfig,
}


@dataclass
class RunConfig:
    """Everything needed to reproduce a run."""

    name: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict | None) -> RunConfig:
        """Build from a plain dict; unknown keys and wrong types raise ConfigError naming the field."""
        raw = dict(raw or {})
        unknown = set(raw) - set(SECTIONS) - {"name"}
        if unknown:
            key = sorted(unknown)[0]
            raise ConfigError(key, f"unknown section (expected one of: name, {', '.join(SECTIONS)})")
        sections = {}
        for section, section_cls in SECTIONS.items():
            values = raw.get(section) or {}
            if not isinstance(values, dict):
                raise ConfigError(section, "must be a mapping of settings")
            sections[section] = _section_from_dict(section, section_cls, values)
        name = raw.get("name", "") or ""
        return cls(name=str(name), **sections)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    @classmethod
    def from_yaml(cls, text: str, source: str = "<config>") -> RunConfig:
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            line = getattr(getattr(exc, "problem_mark", None), "line", None)
            where = f"{source}, line {line + 1}" if line is not None else source
            raise ConfigError("yaml", f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
        if raw is not None and not isinstance(raw, dict):
            raise ConfigError("yaml", f"{source}: the top level must be a mapping of sections")
        return cls.from_dict(raw)

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(Path(path), self.to_yaml())

    @classmethod
    def load(cls, path: str | os.PathLike) -> RunConfig:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError("config", f"{path}: file not found") from None
        except UnicodeDecodeError:
            raise ConfigError("config", f"{path}: not a UTF-8 text file") from None
        return cls.from_yaml(text, source=str(path))

    def copy(self) -> RunConfig:
        return RunConfig.from_dict(self.to_dict())

    # -- validation ----------------------------------------------------------------------------
    def problems(self) -> list[FieldProblem]:
        """Every invalid value, each naming its field and the allowed range."""
        found: list[FieldProblem] = []
        for section in SECTIONS:
            found.extend(validate_section(section, getattr(self, section)))
        t, m, d = self.training, self.method, self.data
        if d.template == "custom" and not d.custom_template.strip():
            found.append(FieldProblem("data.custom_template", "the custom template is empty"))
        if t.load_best_model_at_end and d.test_fraction > 0 and t.save_steps % t.eval_steps != 0:
            # The Trainer can only keep the best checkpoint if every save coincides with an evaluation.
            found.append(
                FieldProblem(
                    "training.save_steps",
                    f"with 'Keep the best checkpoint' on, save every ({t.save_steps}) must be a multiple of "
                    f"evaluate every ({t.eval_steps})",
                )
            )
        if t.early_stopping_patience > 0 and d.test_fraction == 0:
            found.append(
                FieldProblem(
                    "training.early_stopping_patience",
                    "early stopping needs held-out data: set the held-out fraction above 0 or patience to 0",
                )
            )
        if m.method == "prefix" and t.gradient_checkpointing:
            found.append(
                FieldProblem("training.gradient_checkpointing", "is not supported with prefix tuning: turn it off")
            )
        return found

    def validate(self) -> None:
        """Raise ConfigError for the first problem (see ``problems`` for all of them)."""
        found = self.problems()
        if found:
            raise ConfigError(found[0].field, found[0].message)

    def set_value(self, dotted: str, value: Any) -> None:
        """Set ``section.field`` from a string or a typed value (used by the CLI ``--set``)."""
        section, _, name = dotted.partition(".")
        if section not in SECTIONS or not name:
            raise ConfigError(dotted, "expected section.field, e.g. training.learning_rate")
        target = getattr(self, section)
        fields = {f.name: f for f in dataclasses.fields(target)}
        if name not in fields:
            raise ConfigError(dotted, f"unknown setting (known: {', '.join(fields)})")
        setattr(target, name, coerce_value(dotted, fields[name], value))


def field_meta(section: str, name: str) -> dict:
    """Metadata (help, label, min, max, choices, advanced) of ``section.name``."""
    for f in dataclasses.fields(SECTIONS[section]):
        if f.name == name:
            return dict(f.metadata)
    raise KeyError(f"{section}.{name}")


def iter_fields(section: str):
    """(dataclasses.Field, metadata) for every field of a section, in declaration order."""
    for f in dataclasses.fields(SECTIONS[section]):
        yield f, dict(f.metadata)


def _field_type(f: dataclasses.Field) -> type:
    kind = f.type if isinstance(f.type, type) else {"str": str, "int": int, "float": float, "bool": bool,
                                                     "dict": dict, "list": list}[str(f.type)]
    return kind


def coerce_value(dotted: str, f: dataclasses.Field, value: Any) -> Any:
    """Convert ``value`` (possibly a string from the CLI or a form) to the field's type."""
    kind = _field_type(f)
    if isinstance(value, str) and kind is not str:
        text = value.strip()
        if kind is bool:
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ConfigError(dotted, f"expected true or false, got {value!r}")
        if kind in (dict, list):
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError:
                raise ConfigError(dotted, f"could not read {value!r} as a {kind.__name__}") from None
        else:
            try:
                return kind(float(text)) if kind is int and ("e" in text.lower() or "." in text) else kind(text)
            except ValueError:
                raise ConfigError(dotted, f"expected a {'whole number' if kind is int else 'number'}, "
                                          f"got {value!r}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind is list and value is None:
        return []
    if kind is dict and value is None:
        return {}
    if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
        raise ConfigError(dotted, f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def _section_from_dict(section: str, section_cls: type, values: dict):
    fields = {f.name: f for f in dataclasses.fields(section_cls)}
    unknown = set(values) - set(fields)
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(f"{section}.{key}", f"unknown setting (known: {', '.join(fields)})")
    kwargs = {name: coerce_value(f"{section}.{name}", fields[name], value) for name, value in values.items()}
    return section_cls(**kwargs)


def validate_section(section: str, obj: Any) -> list[FieldProblem]:
    """Range/choice/type problems of one section."""
    found = []
    for f in dataclasses.fields(obj):
        meta = f.metadata
        value = getattr(obj, f.name)
        dotted = f"{section}.{f.name}"
        label = meta.get("label") or f.name
        try:
            coerce_value(dotted, f, value)
        except ConfigError as exc:
            found.append(FieldProblem(dotted, exc.message))
            continue
        if meta.get("choices") and value not in meta["choices"]:
            found.append(FieldProblem(dotted, f"{label} must be one of {', '.join(meta['choices'])} (got {value!r})"))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            low, high = meta.get("min"), meta.get("max")
            if value != value:  # NaN
                found.append(FieldProblem(dotted, f"{label} is not a number"))
            elif (low is not None and value < low) or (high is not None and value > high):
                found.append(FieldProblem(dotted, f"{label} must be between {low:g} and {high:g} (got {value:g})"))
    return found


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``.

    The file ends with the user's usual permissions (0644 under umask 022), not mkstemp's private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        chmod_like_new(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:  # the temporary file never got created or was already renamed: nothing to clean
            pass
        raise
