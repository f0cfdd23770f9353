"""Preferences: blind A/B votes from the chat saved as preference records, their win rate, and preference
tuning (DPO, with TRL's ``DPOTrainer``) on those votes or on any prompt/chosen/rejected file.

Votes live in ``<workspace>/preferences/votes.jsonl``, one JSON object per vote: the prompt, the two answers as
``chosen``/``rejected`` (empty for a tie or when both were bad), which model gave each, the generation settings,
and the vote itself. The file is a DPO dataset as it is: ``--method dpo --data <votes.jsonl>`` trains on it
(ties and both-bad votes are left out, with their row numbers).

DPO here is LoRA adapters trained with the DPO loss, from the base model or from an SFT run's adapter
(``method.start_from``; the reference model is then that SFT adapter, frozen). It writes the same run folder
as supervised runs (config, metrics.jsonl with ``{"kind": "preference"}`` lines for the reward margin and
accuracy, checkpoints, final/ adapter loadable by plain peft, status.json), and stops and resumes the same way.
torch / trl are imported inside functions.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.config import atomic_write_text
from core.errors import DataError, TrainingError
from core.jsonl import read_objects, to_jsonl

logger = logging.getLogger(__name__)

VOTES_FOLDER = "preferences"
VOTES_FILE = "votes.jsonl"
VOTES = ("a", "b", "tie", "both_bad")
VOTE_LABELS = {"a": "A better", "b": "B better", "tie": "Tie", "both_bad": "Both bad"}
TRL_MISSING = ("preference tuning (DPO) needs the trl package: `pip install finetune-studio[preference]` "
               "(or `pip install trl`)")


# --------------------------------------------------------------------------------------------- votes
@dataclass
class PreferenceRecord:
    """One blind A/B vote. ``a``/``b`` are the answers as shown; ``a_model``/``b_model`` say which model gave
    each ("fine-tuned" or "base", plus the run). ``chosen``/``rejected`` follow from the vote."""

    prompt: str
    a: str
    b: str
    a_model: str
    b_model: str
    vote: str  # one of VOTES
    models: dict = field(default_factory=dict)  # {"fine-tuned": "<run>/final", "base": "<model>"}
    settings: dict = field(default_factory=dict)  # generation settings of both answers
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    time: float = field(default_factory=time.time)
    note: str = ""

    @property
    def chosen(self) -> str | None:
        return {"a": self.a, "b": self.b}.get(self.vote)

    @property
    def rejected(self) -> str | None:
        return {"a": self.b, "b": self.a}.get(self.vote)

    @property
    def winner_model(self) -> str | None:
        """Which model won ("fine-tuned" / "base"), None for a tie or both bad."""
        return {"a": self.a_model, "b": self.b_model}.get(self.vote)

    def to_dict(self) -> dict:
        # chosen/rejected are written out so the file is a DPO dataset as it is.
        return {**dataclasses.asdict(self), "chosen": self.chosen, "rejected": self.rejected}

    @classmethod
    def from_dict(cls, raw: dict) -> PreferenceRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


def votes_path(workspace: str | os.PathLike | None = None) -> Path:
    """``<workspace>/preferences/votes.jsonl`` (the default workspace when None)."""
    from core.paths import default_workspace

    folder = Path(workspace) if workspace else default_workspace()
    return folder / VOTES_FOLDER / VOTES_FILE


class VoteStore:
    """The votes file: append a vote, read them all, edit or delete one, export. Every write is atomic
    (the whole file is rewritten through a temporary name; a few thousand votes are a few hundred KB)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def records(self) -> list[PreferenceRecord]:
        return [PreferenceRecord.from_dict(raw) for raw in read_objects(self.path, skip_invalid=True)]

    def _save(self, records: Sequence[PreferenceRecord]) -> None:
        atomic_write_text(self.path, to_jsonl(r.to_dict() for r in records))

    def add(self, record: PreferenceRecord) -> PreferenceRecord:
        if record.vote not in VOTES:
            raise ValueError(f"vote must be one of {', '.join(VOTES)} (got {record.vote!r})")
        self._save([*self.records(), record])
        return record

    def update(self, record_id: str, **changes: Any) -> PreferenceRecord:
        """Change a vote (``vote``, ``note``, or the answers' text) of the record with ``record_id``."""
        records = self.records()
        for index, record in enumerate(records):
            if record.id == record_id:
                if "vote" in changes and changes["vote"] not in VOTES:
                    raise ValueError(f"vote must be one of {', '.join(VOTES)}")
                records[index] = dataclasses.replace(record, **changes)
                self._save(records)
                return records[index]
        raise KeyError(record_id)

    def delete(self, record_id: str) -> None:
        records = self.records()
        kept = [r for r in records if r.id != record_id]
        if len(kept) == len(records):
            raise KeyError(record_id)
        self._save(kept)

    def export(self, path: str | os.PathLike, *, pairs_only: bool = True) -> int:
        """Write the votes as a DPO file (prompt/chosen/rejected + metadata); ``pairs_only`` leaves out ties
        and both-bad votes. Returns how many rows were written."""
        rows = [r.to_dict() for r in self.records() if not pairs_only or r.chosen is not None]
        atomic_write_text(Path(path), to_jsonl(rows))
        return len(rows)


@dataclass(frozen=True)
class WinRate:
    """The fine-tuned model's win rate over decided votes, with a 95 % Wilson interval."""

    wins: int
    losses: int
    ties: int
    both_bad: int
    rate: float | None
    low: float | None
    high: float | None

    @property
    def decided(self) -> int:
        return self.wins + self.losses

    def sentence(self) -> str:
        total = self.decided + self.ties + self.both_bad
        if self.rate is None:
            return f"{total} vote{'s' if total != 1 else ''}, none decided yet (ties and both-bad do not count)."
        verdict = ("the fine-tuned model is better" if self.low > 0.5 else
                   "the base model is better" if self.high < 0.5 else "no clear winner yet")
        return (f"Fine-tuned wins {self.rate:.0%} of {self.decided} decided votes (95 % interval "
                f"{self.low:.0%}-{self.high:.0%}): {verdict}. Ties {self.ties}, both bad {self.both_bad}.")


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95 % by default); (0, 1) without trials."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def win_rate(records: Sequence[PreferenceRecord], model: str = "fine-tuned") -> WinRate:
    """How often ``model`` won among votes that picked a side."""
    wins = sum(1 for r in records if r.winner_model == model)
    losses = sum(1 for r in records if r.winner_model is not None and r.winner_model != model)
    ties = sum(1 for r in records if r.vote == "tie")
    both_bad = sum(1 for r in records if r.vote == "both_bad")
    if wins + losses == 0:
        return WinRate(wins, losses, ties, both_bad, None, None, None)
    low, high = wilson_interval(wins, wins + losses)
    return WinRate(wins, losses, ties, both_bad, wins / (wins + losses), low, high)


# --------------------------------------------------------------------------------------------- pairs
@dataclass
class PreferencePair:
    prompt: Any  # a string or a list of {"role", "content"} messages
    chosen: str
    rejected: str
    row: int  # row / line number in the file


def _answer_text(value: Any, column: str) -> str:
    """A chosen/rejected value as text: a string, a message dict ({"from": "gpt", "value": ...} as in
    LLaMA-Factory, or {"role", "content"}), or a message list (its last assistant message)."""
    if isinstance(value, str) and value.lstrip().startswith(("[", "{")):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:  # text that merely starts with a bracket: keep it as the answer text
            logger.debug("answer in column %s is text, not JSON", column)
    if isinstance(value, list) and value:
        value = value[-1]
    if isinstance(value, dict):
        value = value.get("content", value.get("value"))
    if not isinstance(value, str) or not value.strip():
        raise DataError("empty or missing answer", field=column)
    return value


def _messages(value: Any) -> list[dict]:
    return [{"role": _role(m), "content": str(m.get("content", m.get("value", "")))} for m in value]


def _shared_prompt(chosen: Any, rejected: Any) -> list[dict] | None:
    """TRL's implicit-prompt shape: chosen and rejected are whole conversations that share the prompt
    messages and differ in the last answer. The shared messages before the answers, or None."""
    from core.data import is_message_list

    if not (is_message_list(chosen) and is_message_list(rejected)):
        return None
    a, b = _messages(chosen), _messages(rejected)
    shared = 0
    while shared < min(len(a), len(b)) - 1 and a[shared] == b[shared]:
        shared += 1
    prompt = a[:shared]
    return prompt if prompt and prompt[-1]["role"] != "assistant" else None


def _prompt_value(row: dict, column: str | None, answers: tuple[Any, Any] = (None, None)) -> Any:
    from core.data import column_value, is_message_list

    if column is None:
        # LLaMA-Factory's conversation-shaped DPO: the prompt is the "conversations" (or "messages") list.
        for name in ("conversations", "messages", "conversation"):
            if is_message_list(row.get(name)):
                return _messages(row[name])
        shared = _shared_prompt(*answers)
        if shared is not None:
            return shared
        raise DataError("no prompt column (prompt, question, instruction), no conversations list, and the chosen "
                        "and rejected conversations share no prompt", field="prompt")
    value = column_value(row, column)
    if is_message_list(value):
        return [{"role": _role(m), "content": str(m.get("content", m.get("value", "")))} for m in value]
    if not isinstance(value, str) or not value.strip():
        raise DataError("empty or missing prompt", field=column)
    return value


def _role(message: dict) -> str:
    role = str(message.get("role", message.get("from", "user"))).lower()
    return {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant"}.get(role, role)


def load_preference_pairs(data_cfg, *, stop=None) -> tuple[list[PreferencePair], list[tuple[int, str]], str]:
    """(pairs, left-out rows with the reason, row label) of a preference file: prompt/chosen/rejected
    columns (any of their aliases), LLaMA-Factory's conversations + chosen/rejected messages, or the app's
    votes file (ties and both-bad votes are left out)."""
    from core.data import load_raw, resolve_schema

    raw = load_raw(data_cfg.source, hub_split=data_cfg.hub_split, skip_bad_rows=True, stop=stop)
    from core.data import preference_kind

    if (data_cfg.schema or "auto") == "auto" and preference_kind(raw.columns, raw.rows) == "dpo":
        # chosen + rejected columns decide it, even where other columns (the votes' "a"/"b") look like Q/A.
        data_cfg = dataclasses.replace(data_cfg, schema="preference")
    guess = resolve_schema(raw.columns, raw.rows, data_cfg, allow_preference=True)
    if guess.schema != "preference":
        raise DataError(f"DPO needs preference data: each row a prompt with a chosen and a rejected answer "
                        f"(columns prompt/chosen/rejected); this file looks like {guess.schema} data. Train it with "
                        "LoRA instead, or vote on answers in Chat's blind A/B mode to make preference data",
                        source=raw.source, field="schema")
    pairs: list[PreferencePair] = []
    skipped: list[tuple[int, str]] = [(b.line, b.message) for b in raw.bad_rows]
    drop = {int(n) for n in (getattr(data_cfg, "drop_rows", None) or [])}
    for index, row in enumerate(raw.rows):
        line = raw.line_of(index)
        if line in drop:
            skipped.append((line, "dropped (data.drop_rows)"))
            continue
        if row.get("vote") in ("tie", "both_bad"):
            skipped.append((line, f"a {row['vote'].replace('_', '-')} vote has no chosen answer"))
            continue
        try:
            chosen = _answer_text(row.get(guess.column_map["chosen"]), guess.column_map["chosen"])
            rejected = _answer_text(row.get(guess.column_map["rejected"]), guess.column_map["rejected"])
            prompt = _prompt_value(row, guess.column_map.get("prompt"),
                                   (row.get(guess.column_map["chosen"]), row.get(guess.column_map["rejected"])))
        except DataError as exc:
            skipped.append((line, f"field '{exc.field}': {exc.message}" if exc.field else exc.message))
            continue
        pairs.append(PreferencePair(prompt, chosen, rejected, line))
    if data_cfg.max_examples and data_cfg.max_examples > 0:
        pairs = pairs[: data_cfg.max_examples]
    if not pairs:
        first = f" (first: {raw.where(skipped[0][0])}: {skipped[0][1]})" if skipped else ""
        raise DataError(f"no usable preference pairs{first}", source=raw.source)
    return pairs, skipped, raw.line_label


def render_pair(pair: PreferencePair, data_cfg, tokenizer) -> dict:
    """prompt / chosen / rejected as text in the run's template: the prompt exactly as generation writes it,
    each answer as the template continues it (TRL appends the end-of-text token)."""
    from core.data import render_segments

    if isinstance(pair.prompt, list):
        messages = [m for m in pair.prompt if m["role"] != "assistant" or m is not pair.prompt[-1]]

        def record(answer: str) -> dict:
            return {"messages": messages + [{"role": "assistant", "content": answer}]}
    else:
        def record(answer: str) -> dict:
            return {"question": pair.prompt, "answer": answer}

    prompt = "".join(s.text for s in render_segments(record(""), data_cfg, tokenizer, include_answer=False))

    def continuation(answer: str) -> str:
        full = "".join(s.text for s in render_segments(record(answer), data_cfg, tokenizer))
        text = full[len(prompt):] if full.startswith(prompt) else answer
        eos = tokenizer.eos_token or ""
        # Our templates may close the answer with an end-of-turn marker; TRL adds the EOS token itself.
        return text[: -len(eos)] if eos and text.endswith(eos) else text

    return {"prompt": prompt, "chosen": continuation(pair.chosen), "rejected": continuation(pair.rejected)}


@dataclass(frozen=True)
class PairTokens:
    """One pair as DPO trains on it: the prompt's tokens (context, not in the loss) and each answer's tokens
    (in the loss), as ``(token text, trained)`` lists; ``*_cut`` counts the answer tokens ``max_length``
    cuts off (TRL keeps the start of prompt + answer)."""

    row: int
    prompt: list[tuple[str, bool]]
    chosen: list[tuple[str, bool]]
    rejected: list[tuple[str, bool]]
    chosen_cut: int = 0
    rejected_cut: int = 0


def _token_texts(tokenizer, text: str, ids: list[int], offsets: list[tuple[int, int]] | None) -> list[str]:
    """The text of each token, so that they join back into ``text`` (special tokens by their name)."""
    if offsets is None or len(offsets) != len(ids):
        return [tokenizer.decode([token]) for token in ids]
    texts, end = [], 0
    for token, (start, stop) in zip(ids, offsets, strict=True):
        if stop <= start or stop <= end:  # a special token (no span in the text), or a byte inside a character
            texts.append(tokenizer.convert_ids_to_tokens(token) if stop <= start else "")
            continue
        texts.append(text[end:stop])
        end = stop
    return texts


def pair_tokens(pair: PreferencePair, data_cfg, tokenizer, max_length: int) -> PairTokens:
    """What DPO trains on ``pair``, tokenized the way TRL's DPOTrainer does it: the rendered prompt, and
    prompt + answer + end-of-text; the answer's tokens start where the two token lists part, and prompt + answer
    is cut to ``max_length`` from the end."""
    text = render_pair(pair, data_cfg, tokenizer)
    eos = tokenizer.eos_token or ""

    def encode(value: str) -> tuple[list[int], list[str]]:
        try:
            encoded = tokenizer(text=value, return_offsets_mapping=True)
            offsets = [tuple(o) for o in encoded["offset_mapping"]]
        except (NotImplementedError, TypeError, ValueError):  # a slow tokenizer has no offsets: decode tokens
            encoded, offsets = tokenizer(text=value), None
        ids = list(encoded["input_ids"])
        return ids, _token_texts(tokenizer, value, ids, offsets)

    prompt_ids, prompt_texts = encode(text["prompt"])
    full = {}
    for side in ("chosen", "rejected"):
        answer = text[side] if not eos or text[side].endswith(eos) else text[side] + eos
        full[side] = encode(text["prompt"] + answer)
    shared = min(_common_prefix(prompt_ids, ids) for ids, _ in full.values())
    prompt_view = [(t, False) for t in prompt_texts[:shared]][:max_length]
    answers, cut = {}, {}
    room = max(0, max_length - shared)
    for side, (_ids, texts) in full.items():
        tokens = [(t, True) for t in texts[shared:]]
        answers[side], cut[side] = tokens[:room], max(0, len(tokens) - room)
    return PairTokens(pair.row, prompt_view, answers["chosen"], answers["rejected"], cut["chosen"], cut["rejected"])


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


# --------------------------------------------------------------------------------------------- DPO
def check_trl() -> None:
    import importlib.util

    if importlib.util.find_spec("trl") is None:
        from core.config import ConfigError

        raise ConfigError("method.method", TRL_MISSING)


def _start_adapter(start_from: str) -> Path | None:
    """The adapter folder an SFT run (its final/) or an adapter folder names; None for the base model."""
    if not start_from.strip():
        return None
    path = Path(start_from).expanduser()
    for candidate in (path / "final", path):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    raise TrainingError(f"{start_from}: no LoRA adapter to start from (expected a run folder with final/"
                        "adapter_config.json, or an adapter folder); leave 'Start from' empty to start from the base")


def _dpo_log_callback(sinks, eval_pairs: int = 0):
    """Sends the DPO numbers of each log (loss, reward margin, chosen/rejected rewards, reward accuracy) to the
    sinks as ``{"kind": "preference"}`` records: metrics.jsonl keeps them, the CLI prints them. Held-out
    records (``"split": "eval"``) also say over how many pairs (``"pairs"``), for the run summary's words."""
    from transformers import TrainerCallback

    names = {"rewards/margins": "reward_margin", "rewards/accuracies": "reward_accuracy",
             "rewards/chosen": "chosen_reward", "rewards/rejected": "rejected_reward",
             "logps/chosen": "chosen_logp", "logps/rejected": "rejected_logp"}

    class PreferenceLog(TrainerCallback):
        def __init__(self) -> None:
            self.history: list[dict] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = dict(logs or {})
            evaluation = any(k.startswith("eval_rewards/") for k in logs)
            prefix = "eval_" if evaluation else ""
            values = {ours: float(logs[prefix + theirs]) for theirs, ours in names.items() if prefix + theirs in logs}
            if not values:
                return control
            record = {"kind": "preference", "split": "eval" if evaluation else "train", "step": int(state.global_step),
                      "loss": logs.get(prefix + "loss"), **values, "time": time.time()}
            if evaluation and eval_pairs:
                record["pairs"] = eval_pairs
            self.history.append(record)
            for sink in sinks:
                on_record = getattr(sink, "on_record", None)
                if callable(on_record):
                    on_record(record)
            return control

    return PreferenceLog()


def _studio_dpo_trainer(dpo_trainer_class):
    """TRL's DPOTrainer with the studio Trainer's checkpoint handling (core.training.trainer_class): its
    ``_save_checkpoint`` writes the COMPLETE marker resume looks for (without it a stopped DPO run had no
    resumable checkpoint), and its loading is strict. DPOTrainer comes first in the method order, so its
    loss, evaluation and logging are TRL's own; the studio's supervised-loss fast path is never reached."""
    from core.training import trainer_class

    return type("StudioDPOTrainer", (dpo_trainer_class, trainer_class()), {})


def dpo_train_steps(cfg, run_dir: Path, sinks, stop, extra_callbacks, resume_from: Path | None,
                    prior_elapsed: float, probes=None):
    """The DPO recipe, the same shape as core.training's: device -> pairs -> model (+ SFT adapter) ->
    DPOConfig -> DPOTrainer with the studio callback -> train -> save final/. Called by core.training when
    ``method.method == "dpo"``; returns a core.training.RunResult."""
    check_trl()
    from core.environment import prepare_environment

    # TRL pings Hugging Face each time a trainer starts unless telemetry is off: set it before TRL loads.
    prepare_environment()
    import datasets
    import transformers
    from transformers import PrinterCallback, ProgressCallback
    from trl import DPOConfig, DPOTrainer

    from core import runs
    from core.devices import pick_device
    from core.hf_args import apply_method, training_arguments
    from core.metrics import StatusEvent
    from core.models import load_model, load_tokenizer
    from core.training import (
        RunResult,
        _device_string,
        _emit_status,
        _is_main_process,
        _make_callback,
        _planned_steps,
        _write_status,
        environment_info,
    )

    main = _is_main_process()
    device = pick_device(cfg.training.device)
    if main:
        atomic_write_text(run_dir / runs.ENVIRONMENT_FILE, json.dumps(environment_info(device), indent=2) + "\n")

    def progress(message: str, phase: str = "loading") -> None:
        _emit_status(sinks, StatusEvent("running", message, phase=phase))

    progress("loading the tokenizer")
    tokenizer = load_tokenizer(cfg.model)
    progress("reading the preference pairs", "tokenizing")
    pairs, skipped, label = load_preference_pairs(cfg.data, stop=stop)
    if skipped:
        progress(f"{len(skipped)} row{'s' if len(skipped) != 1 else ''} left out (first: {label} {skipped[0][0]}: "
                 f"{skipped[0][1]})", "tokenizing")
    from core.data import split_indices

    train_idx, test_idx = split_indices(len(pairs), cfg.data.test_fraction, cfg.data.split_seed)
    rendered = [render_pair(p, cfg.data, tokenizer) for p in pairs]
    train_dataset = datasets.Dataset.from_list([rendered[i] for i in train_idx])
    eval_dataset = datasets.Dataset.from_list([rendered[i] for i in test_idx]) if test_idx else None
    if eval_dataset is not None and cfg.training.max_eval_examples > 0:
        eval_dataset = eval_dataset.select(range(min(cfg.training.max_eval_examples, len(eval_dataset))))
    logger.info("run %s: DPO on %d training and %d held-out pairs", run_dir.name, len(train_dataset),
                len(eval_dataset) if eval_dataset is not None else 0)
    if stop is not None:
        stop.raise_if_set()

    progress("loading the model")
    transformers.set_seed(cfg.training.seed)
    model = load_model(cfg.model, device=_device_string(device))
    start = _start_adapter(cfg.method.start_from)
    if start is not None:
        from peft import PeftModel

        # The SFT adapter goes on training; TRL keeps a frozen copy of it as the reference model.
        from core import model_use

        with model_use.loading():
            model = PeftModel.from_pretrained(model, str(start), is_trainable=True)
    else:
        lora = dataclasses.replace(cfg.method, method="lora")
        model = apply_method(model, lora, gradient_checkpointing=cfg.training.gradient_checkpointing)

    args = training_arguments(cfg, str(run_dir / runs.CHECKPOINTS_DIR), device,
                              eval_available=eval_dataset is not None, disable_tqdm=True,
                              logging_nan_inf_filter=False, eval_on_start=False, remove_unused_columns=False)
    known = {f.name for f in dataclasses.fields(DPOConfig) if f.init}
    values = {k: getattr(args, k) for k in known if hasattr(args, k) and k not in ("gradient_checkpointing",)}
    values.update(beta=cfg.method.dpo_beta, max_length=cfg.training.max_length, precompute_ref_log_probs=False,
                  dataset_num_proc=None, logging_steps=cfg.training.logging_steps,
                  gradient_checkpointing=cfg.training.gradient_checkpointing, bf16=bool(args.bf16),
                  fp16=bool(args.fp16), train_sampling_strategy="random")  # pairs have no input_ids to group by
    dpo_args = DPOConfig(**values)

    studio_callback = _make_callback(sinks, stop, run_dir, device, prior_elapsed)
    studio_callback.total_steps = _planned_steps(dpo_args, len(train_dataset))
    studio_callback.eval_examples = len(eval_dataset) if eval_dataset is not None else 0
    preference_log = _dpo_log_callback(sinks, len(eval_dataset) if eval_dataset is not None else 0)
    trainer = _studio_dpo_trainer(DPOTrainer)(
        model=model, args=dpo_args, train_dataset=train_dataset, eval_dataset=eval_dataset, processing_class=tokenizer,
        callbacks=[studio_callback, preference_log, *extra_callbacks])
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    # The studio's checkpoint handling, as for supervised runs: COMPLETE marker, config copy, rotation that
    # keeps the best checkpoint, disk-space check, strict adapter loading on resume.
    trainer.studio_take_over_rotation(run_dir)
    trainer.studio_notice = lambda message: _emit_status(sinks, StatusEvent("running", message, phase="saving"))
    if resume_from is None and eval_dataset is not None and cfg.training.eval_before_training:
        studio_callback.eval_started(trainer.state)
        trainer.evaluate()
    if stop is not None:
        stop.raise_if_set()
    transformers.set_seed(cfg.training.seed)
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    state = trainer.state
    step = int(state.global_step)
    best_eval = studio_callback.best_eval_loss
    if studio_callback.stopped_by_user:
        last = runs.latest_checkpoint(run_dir)
        message = f"stopped at step {step}" + (f"; resume from {last.name}" if last else "")
        _write_status(run_dir, state="stopped", message=message, global_step=step, ended=time.time(),
                      train_seconds=studio_callback.elapsed())
        _emit_status(sinks, StatusEvent("stopped", message, step=step))
        return RunResult(run_dir, "stopped", step, None, None, best_eval, message)

    progress("saving the final adapter", "saving")
    final_dir = run_dir / runs.FINAL_DIR
    partial = run_dir / (runs.FINAL_DIR + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    # Only the trained adapter: the frozen "ref" copy TRL adds for an SFT start is not part of the result.
    unwrapped.save_pretrained(str(partial), selected_adapters=["default"])
    tokenizer.save_pretrained(str(partial))
    shutil.rmtree(final_dir, ignore_errors=True)
    os.replace(partial, final_dir)
    last = preference_log.history[-1] if preference_log.history else {}
    accuracy = last.get("reward_accuracy")
    message = (f"finished at step {step}" + (f"; reward accuracy {accuracy:.2f}, margin "
                                             f"{last.get('reward_margin', 0.0):+.3f}" if accuracy is not None else ""))
    _write_status(run_dir, state="finished", message=message, global_step=step, ended=time.time(),
                  best_eval_loss=best_eval, train_seconds=studio_callback.elapsed(), final_dir=runs.FINAL_DIR)
    _emit_status(sinks, StatusEvent("finished", message, step=step, fraction=1.0))
    return RunResult(run_dir, "finished", step, final_dir, None, best_eval, message)


def reward_accuracy(run_dir, pairs: Sequence[PreferencePair] | None = None, *, beta: float | None = None,
                    checkpoint=None) -> dict:
    """Reward accuracy and mean log-prob margin of a finished DPO run on ``pairs`` (default: its training
    pairs): for each pair, log p(chosen) - log p(rejected) under the fine-tuned and the reference model; the
    implicit reward of an answer is beta x (its fine-tuned minus reference log-prob). Accuracy is the share
    of pairs whose chosen answer gets the higher reward. ``rows`` has each pair's numbers, in ``pairs`` order
    (so the margins of two runs can be compared pair by pair)."""
    import torch

    from core.generation import ModelSession
    from core.runs import load_run_config

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    beta = cfg.method.dpo_beta if beta is None else beta
    session = ModelSession(run_dir, checkpoint=checkpoint)
    if pairs is None:
        pairs, _, _ = load_preference_pairs(cfg.data)
    tokenizer = session.tokenizer

    def logp(model, prompt: str, answer: str) -> float:
        prompt_ids = tokenizer(prompt)["input_ids"]
        full_ids = tokenizer(prompt + answer + (tokenizer.eos_token or ""))["input_ids"]
        cut = 0
        while cut < min(len(prompt_ids), len(full_ids)) and prompt_ids[cut] == full_ids[cut]:
            cut += 1
        ids = torch.tensor([full_ids], device=next(model.parameters()).device)
        with torch.inference_mode():
            logits = model(input_ids=ids).logits.float()[0, :-1]
        logprobs = torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None])[:, 0]
        return float(logprobs[max(0, cut - 1):].sum())

    rows = []
    for pair in pairs:
        text = render_pair(pair, cfg.data, tokenizer)
        scores = {}
        for use_adapter in (True, False):
            with session.model_for(use_adapter) as model:
                scores[use_adapter] = (logp(model, text["prompt"], text["chosen"]),
                                       logp(model, text["prompt"], text["rejected"]))
        chosen_reward = beta * (scores[True][0] - scores[False][0])
        rejected_reward = beta * (scores[True][1] - scores[False][1])
        rows.append({"margin_tuned": scores[True][0] - scores[True][1],
                     "margin_reference": scores[False][0] - scores[False][1],
                     "reward_margin": chosen_reward - rejected_reward, "correct": chosen_reward > rejected_reward})
    n = max(1, len(rows))
    return {"pairs": len(rows), "reward_accuracy": sum(r["correct"] for r in rows) / n,
            "reward_margin": sum(r["reward_margin"] for r in rows) / n,
            "logp_margin_tuned": sum(r["margin_tuned"] for r in rows) / n,
            "logp_margin_reference": sum(r["margin_reference"] for r in rows) / n, "rows": rows}
