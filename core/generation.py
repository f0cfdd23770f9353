"""Chat with a base model and its fine-tuned version: one loaded model, streamed tokens, cancellable.

``ModelSession`` loads the base model once. For a LoRA / prefix-tuning run the adapter is put on top
of it with peft and switched off (``PeftModel.disable_adapter()``) to answer as the base model, so
base and fine-tuned answers never need two copies of the weights. A full fine-tuning run changed
every weight, so there the session holds two models (the base and the fine-tuned one).

Thread-safety: one lock guards every use of the model (generate, loss), so two chat panes (or a pane
and an evaluation) can share one session; their requests simply run one after the other.

torch / transformers / peft are imported inside functions: the GUI imports this module at start-up.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.cancel import StopToken
from core.config import DataConfig, GenerationConfig, ModelConfig, RunConfig
from core.errors import ModelError

logger = logging.getLogger(__name__)

STOPPED_BY = ("eos", "max_tokens", "stop_string", "cancelled")


def stop_reason(stopped_by: str, max_new_tokens: int | None = None) -> str:
    """Why an answer ended, in words (``GenerationResult.stopped_by`` is a code)."""
    if stopped_by == "eos":
        return "finished: the model ended its answer (end-of-text token)"
    if stopped_by == "max_tokens":
        limit = f"the {max_new_tokens}-token limit" if max_new_tokens else "the max-new-tokens limit"
        return f"cut off at {limit}"
    if stopped_by == "stop_string":
        return "stopped at a stop string"
    if stopped_by == "cancelled":
        return "stopped before the end"
    return f"ended ({stopped_by})" if stopped_by else ""
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclass
class GenerationResult:
    """One answer: the text without the prompt, and how it was produced."""

    text: str
    n_tokens: int
    seconds: float
    first_token_seconds: float | None  # time to first token (None when no token came)
    stopped_by: str  # "eos" | "max_tokens" | "stop_string" | "cancelled"
    prompt: str = ""
    token_ids: list[int] = field(default_factory=list)  # the new tokens (what "continue" passes back)

    @property
    def tokens_per_second(self) -> float:
        """Decoding speed over the whole answer (0 when nothing was generated)."""
        return self.n_tokens / self.seconds if self.seconds > 0 and self.n_tokens else 0.0


# ----------------------------------------------------------------------------------------------
# Where the weights are
# ----------------------------------------------------------------------------------------------


def _is_adapter_dir(path: Path) -> bool:
    return (path / "adapter_config.json").is_file()


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def _has_tokenizer(path: Path) -> bool:
    return any((path / name).is_file() for name in _TOKENIZER_FILES)


def _checkpoint_dir(run_dir: Path, checkpoint: int | str | Path) -> Path:
    """``checkpoint`` is a step number (``run_dir/checkpoints/checkpoint-N``) or a folder."""
    if isinstance(checkpoint, int) or (isinstance(checkpoint, str) and checkpoint.isdigit()):
        path = run_dir / "checkpoints" / f"checkpoint-{int(checkpoint)}"
    else:
        path = Path(checkpoint)
        if not path.is_absolute() and not path.exists():
            path = run_dir / "checkpoints" / str(checkpoint)
    if not path.is_dir():
        available = sorted(p.name for p in (run_dir / "checkpoints").glob("checkpoint-*")) if run_dir else []
        raise ModelError(
            f"{path}: no such checkpoint"
            + (f" (available: {', '.join(available)})" if available else " (this run has no checkpoints)")
        )
    return path


@dataclass
class ResolvedSource:
    """What a session source points at: the run (if any), the base model and the trained weights."""

    run_dir: Path | None
    run_config: RunConfig | None
    base_model: ModelConfig
    weights_dir: Path | None  # adapter folder or full fine-tuned model folder; None = plain model
    weights_kind: str  # "adapter" | "full" | "none"


def resolve_source(source: str | Path, checkpoint: int | str | Path | None = None) -> ResolvedSource:
    """Understand ``source``: a run folder, a checkpoint/adapter folder, or a model name/path."""
    from core.runs import is_run_dir

    path = Path(source).expanduser()
    if path.is_dir() and is_run_dir(path):
        run_dir = path
        run_config = _load_run_config(run_dir)
        if checkpoint is not None:
            weights = _checkpoint_dir(run_dir, checkpoint)
        elif (run_dir / "final").is_dir():
            weights = run_dir / "final"
        else:
            latest = _latest_checkpoint(run_dir)
            if latest is None:
                raise ModelError(
                    f"{run_dir}: this run has no trained weights yet (no final/ folder and no complete "
                    "checkpoint). Train it first, or open the base model by name."
                )
            weights = latest
        kind = "adapter" if _is_adapter_dir(weights) else "full" if _is_model_dir(weights) else ""
        if not kind:
            raise ModelError(f"{weights}: holds neither an adapter (adapter_config.json) nor a model (config.json)")
        return ResolvedSource(run_dir, run_config, run_config.model, weights, kind)
    if checkpoint is not None:
        raise ModelError(f"{source}: a checkpoint can only be chosen for a run folder (one holding config.yaml)")
    # An export (adapter or merged model) is a model; its training config, when it has one, only gives
    # the prompt template the model learned.
    exported = _exported_run_config(path) if path.is_dir() else None
    if path.is_dir() and _is_adapter_dir(path):
        # A checkpoint or exported adapter: use its run when it sits in one, else the base it names.
        for parent in (path.parent, path.parent.parent):
            if is_run_dir(parent):
                run_config = _load_run_config(parent)
                return ResolvedSource(parent, run_config, run_config.model, path, "adapter")
        import json

        base = json.loads((path / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
        if not base:
            raise ModelError(f"{path / 'adapter_config.json'}: does not say which base model it belongs to")
        base_model = ModelConfig(name_or_path=str(base))
        if exported is not None and exported.model.name_or_path.startswith("bundled:"):
            # Trained on the bundled copy: that is the exact base, and it needs no download.
            base_model = ModelConfig(name_or_path=exported.model.name_or_path)
        return ResolvedSource(None, exported, base_model, path, "adapter")
    return ResolvedSource(None, exported, ModelConfig(name_or_path=str(source)), None, "none")


def _exported_run_config(path: Path) -> RunConfig | None:
    from core.runs import EXPORT_CONFIG_FILE

    for name in (EXPORT_CONFIG_FILE, "config.yaml"):  # config.yaml: exports written before the rename
        if (path / name).is_file():
            try:
                return RunConfig.load(path / name)
            except Exception:  # noqa: BLE001 - the template is a convenience; the weights load without it
                logger.warning("%s: unreadable, the model's own chat template is used", path / name, exc_info=True)
                return None
    return None


def _load_run_config(run_dir: Path) -> RunConfig:
    try:
        from core.runs import load_run_config
    except ImportError:  # runs module not there yet: read the file directly
        return RunConfig.load(run_dir / "config.yaml")
    return load_run_config(run_dir)


def _latest_checkpoint(run_dir: Path) -> Path | None:
    try:
        from core.runs import latest_checkpoint
    except ImportError:
        found = [p for p in (run_dir / "checkpoints").glob("checkpoint-*") if (p / "COMPLETE").exists()]
        return max(found, key=lambda p: int(p.name.rsplit("-", 1)[-1]), default=None)
    return latest_checkpoint(run_dir)


def resolve_device(device: str = "auto") -> str:
    """A torch device string for ``device`` ("auto" picks a GPU when there is one)."""
    try:
        from core.devices import pick_device
    except ImportError:
        pick_device = None
    if pick_device is not None:
        info = pick_device(device)
        return info.kind if info.index is None or info.kind == "cpu" else f"{info.kind}:{info.index}"
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_base_model(model_cfg: ModelConfig, device: str):
    """The base model through core.models (safety checks, bundled model) when available."""
    try:
        from core.models import load_model
    except ImportError:
        load_model = None
    if load_model is not None:
        model = load_model(model_cfg, device=device)
    else:
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(model_cfg.name_or_path, revision=model_cfg.revision or None)
        except OSError as exc:
            raise ModelError(f"{model_cfg.name_or_path}: cannot load the model ({exc})") from None
        model.to(device)
    model.eval()
    return model


def load_session_tokenizer(model_cfg: ModelConfig, weights_dir: Path | None):
    """The tokenizer saved with the trained weights, else the base model's; always with a pad token."""
    if weights_dir is not None and _has_tokenizer(weights_dir):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(weights_dir))
    else:
        try:
            from core.models import load_tokenizer
        except ImportError:
            load_tokenizer = None
        if load_tokenizer is not None:
            tokenizer = load_tokenizer(model_cfg)
        else:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(model_cfg.name_or_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# ----------------------------------------------------------------------------------------------
# Streaming and stopping
# ----------------------------------------------------------------------------------------------


class _TokenStreamer:
    """Receives token ids from ``generate`` and emits text pieces as soon as they are final.

    A piece is held back while it could still change: an incomplete UTF-8 character (decoded as
    U+FFFD) or text that may be the start of a stop string. When a stop string appears, the text is
    cut before it and ``stop_string_hit`` makes the stopping criterion end generation.
    """

    def __init__(self, tokenizer, stop_strings: Sequence[str], on_piece: Callable[[str], None],
                 prefix_ids: Sequence[int] = ()):
        self.tokenizer = tokenizer
        self.stop_strings = [s for s in stop_strings if s]
        self.on_piece = on_piece
        # prefix_ids: an answer being continued. Decoding it together with the new tokens keeps the
        # space (or character) at the join right; only what comes after it is emitted.
        self.ids: list[int] = list(prefix_ids)
        self._prefix = tokenizer.decode(self.ids, skip_special_tokens=True) if self.ids else ""
        self.emitted = self._prefix
        self.final_text: str | None = None  # set when a stop string cut the text
        self.stop_string_hit = False
        self.first_token_time: float | None = None
        self._seen_prompt = False

    def put(self, value) -> None:
        if value.dim() > 1:
            if value.shape[0] > 1:
                raise ValueError("streaming supports one sequence at a time")
            value = value[0]
        if not self._seen_prompt:  # generate() first pushes the prompt itself
            self._seen_prompt = True
            return
        if self.first_token_time is None:
            self.first_token_time = time.perf_counter()
        if self.stop_string_hit:
            return
        self.ids.extend(int(t) for t in value.tolist())
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        for stop in self.stop_strings:
            where = text.find(stop, len(self._prefix))
            if where != -1:
                self.stop_string_hit = True
                self.final_text = text[:where]
                self._emit_until(self.final_text, len(self.final_text))
                return
        safe = len(text)
        if text.endswith("\ufffd"):
            safe -= 1
        head, hold = text[:safe], 0
        for stop in self.stop_strings:  # hold back a possible beginning of a stop string
            for k in range(min(len(stop) - 1, len(head)), 0, -1):
                if head.endswith(stop[:k]):
                    hold = max(hold, k)
                    break
        self._emit_until(text, safe - hold)

    def _emit_until(self, text: str, end: int) -> None:
        # Decoding the whole answer each time keeps spaces and multi-byte characters right; emit only
        # what is new (byte-level BPE never rewrites earlier text, so the prefix is stable).
        if end > len(self.emitted) and text.startswith(self.emitted):
            piece = text[len(self.emitted):end]
            self.emitted += piece
            self.on_piece(piece)

    def end(self) -> None:
        if self.stop_string_hit:
            return
        # Emit everything left, including a held-back stop-string prefix or a cut multi-byte character.
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        self._emit_until(text, len(text))
        if not text.startswith(self.emitted):  # should not happen; keep text and stream consistent
            self.final_text = self.emitted

    @property
    def text(self) -> str:
        full = self.final_text if self.final_text is not None else self.emitted
        return full[len(self._prefix):]


class _RowStreamer:
    """Splits a batch's new tokens into one _TokenStreamer per row; a row's tokens after its EOS (padding)
    are not passed on."""

    def __init__(self, streamers: Sequence[_TokenStreamer], eos_ids: set[int]):
        self.streamers = list(streamers)
        self.eos_ids = eos_ids
        self.finished = [False] * len(self.streamers)

    def put(self, value) -> None:
        if value.dim() > 1:  # the prompt batch
            for row, streamer in enumerate(self.streamers):
                streamer.put(value[row:row + 1])
            return
        for row, streamer in enumerate(self.streamers):
            if self.finished[row]:
                continue
            token = value[row:row + 1]
            streamer.put(token)
            if int(token[0]) in self.eos_ids:
                self.finished[row] = True

    def end(self) -> None:
        for streamer in self.streamers:
            streamer.end()


def _stopping_criterion(streamer: _TokenStreamer, stop: StopToken | None):
    from transformers import StoppingCriteria

    class _StopCheck(StoppingCriteria):
        # Checked after every new token, so a cancel request ends generation within one token.
        def __call__(self, input_ids, scores, **kwargs):
            import torch

            done = streamer.stop_string_hit or (stop is not None and stop.is_set)
            return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

    return _StopCheck()


class _UnpaddedRepetitionPenalty:
    """The library's repetition penalty, row by row over the real tokens only (left padding skipped)."""

    def __init__(self, penalty: float, pads: Sequence[int]):
        self.penalty = penalty
        self.pads = list(pads)

    def __call__(self, input_ids, scores):
        import torch

        for row, pad in enumerate(self.pads):
            ids = input_ids[row, pad:]
            score = torch.gather(scores[row], 0, ids)
            score = torch.where(score < 0, score * self.penalty, score / self.penalty)
            scores[row] = scores[row].scatter(0, ids, score)
        return scores


def _generation_kwargs(gen_cfg: GenerationConfig, tokenizer, model) -> dict[str, Any]:
    """Library arguments for ``generate``; core.hf_args owns the mapping when it exists."""
    try:
        from core.hf_args import generation_kwargs
    except ImportError:
        generation_kwargs = None
    if generation_kwargs is not None:
        kwargs = dict(generation_kwargs(gen_cfg, tokenizer))
    else:
        kwargs = {"max_new_tokens": gen_cfg.max_new_tokens, "do_sample": gen_cfg.do_sample,
                  "repetition_penalty": gen_cfg.repetition_penalty}
        if gen_cfg.do_sample:
            kwargs.update(temperature=gen_cfg.temperature, top_p=gen_cfg.top_p, top_k=gen_cfg.top_k)
    # We handle stop strings ourselves (streamed text must never show them).
    kwargs.pop("stop_strings", None)
    kwargs.pop("tokenizer", None)
    kwargs.pop("seed", None)
    kwargs["max_new_tokens"] = gen_cfg.max_new_tokens
    # The classic bug: generate without pad_token_id / eos. Always pass both.
    eos_ids = set()
    for value in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None),
                  kwargs.get("eos_token_id")):
        if isinstance(value, int):
            eos_ids.add(value)
        elif isinstance(value, (list, tuple)):
            eos_ids.update(int(v) for v in value)
    if eos_ids:
        kwargs["eos_token_id"] = sorted(eos_ids)
    kwargs["pad_token_id"] = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids)
    return kwargs


def _left_padded(prompts: Sequence[tuple[str, Sequence[int]]], pad_id: int, device):
    """(input_ids, attention_mask, pads, width) of prompts left-padded to the longest."""
    import torch

    width = max(len(ids) for _, ids in prompts)
    pads = [width - len(ids) for _, ids in prompts]
    input_ids = torch.tensor([[pad_id] * pad + list(ids) for pad, (_, ids) in zip(pads, prompts, strict=True)],
                             dtype=torch.long, device=device)
    attention_mask = torch.tensor([[0] * pad + [1] * (width - pad) for pad in pads], dtype=torch.long, device=device)
    return input_ids, attention_mask, pads, width


def _row_answer(output, row: int, width: int, eos_ids: set[int]) -> tuple[list[int], str]:
    """A batch row's new tokens up to and with its EOS (after it a row holds only padding), and why it ended."""
    new_ids = [int(t) for t in output[row, width:].tolist()]
    for k, token in enumerate(new_ids):
        if token in eos_ids:
            return new_ids[:k + 1], "eos"
    return new_ids, "max_tokens"


# Settings of a model's own generation_config that change greedy answers; a model using any of them answers
# through ``generate`` (which applies them), not the hand-written loop below.
_GREEDY_CHANGERS = ("no_repeat_ngram_size", "bad_words_ids", "suppress_tokens", "begin_suppress_tokens",
                    "forced_bos_token_id", "forced_eos_token_id", "min_length", "min_new_tokens", "sequence_bias",
                    "encoder_no_repeat_ngram_size", "exponential_decay_length_penalty")


def _decodes_by_hand(model) -> bool:
    """True when ``model`` can answer through ``_answer_batch_by_hand``: a decoder-only model whose forward
    takes a KV cache (not prefix tuning, which brings its own), with no greedy-changing generation setting."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    peft_config = getattr(model, "peft_config", None)
    if peft_config:
        active = getattr(model, "active_adapter", "default")
        active = active[0] if isinstance(active, (list, tuple)) and active else active
        if getattr(peft_config.get(active), "is_prompt_learning", False):
            return False
    generation_config = getattr(model, "generation_config", None)
    for name in _GREEDY_CHANGERS:
        value = getattr(generation_config, name, None)
        if value not in (None, 0, [], ()):
            return False
    penalty = getattr(generation_config, "repetition_penalty", None)
    return penalty in (None, 1.0)


def _forward_parameters(model) -> set[str]:
    """The names the (base) model's ``forward`` takes."""
    import inspect

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return set(inspect.signature(inner.forward).parameters)
    except (TypeError, ValueError):
        return set()


def answer_batch(model, tokenizer, prompts: Sequence[tuple[str, Sequence[int]]], gen_cfg: GenerationConfig, *,
                 stop: StopToken | None = None, adapter_names: Sequence[str] | None = None,
                 on_done: Callable[[int], None] | None = None, **generate_kwargs) -> list[GenerationResult]:
    """Greedy answers to ``prompts`` ((text, token ids) pairs), all rows decoded together.

    Each answer is the one ``generate`` gives for that prompt alone (tested token for token). Rows are
    left-padded; attention mask and position ids skip the padding and the repetition penalty counts only
    real tokens. A row leaves the batch as soon as it ends (EOS, a stop string, its token limit): the
    remaining rows run on a smaller batch, so a few long answers no longer keep every finished row in
    the computation (``_answer_batch_by_hand``). ``adapter_names`` (one per prompt, peft LoRA: "__base__"
    or an adapter) answers base and fine-tuned rows in one batch. Models the loop cannot drive (prefix
    tuning, encoder-decoder, greedy-changing generation settings) answer through one ``generate`` call.
    ``stop`` ends within one token (``stopped_by="cancelled"``). ``seconds`` is the call's time shared equally.
    ``on_done(k)``: k rows have ended so far (progress within a batch; the generate() path reports at its end).
    """
    if _decodes_by_hand(model):
        return _answer_batch_by_hand(model, tokenizer, prompts, gen_cfg, stop=stop, adapter_names=adapter_names,
                                     use_cache=generate_kwargs.pop("use_cache", True), on_done=on_done)
    if adapter_names is not None:
        generate_kwargs["adapter_names"] = list(adapter_names)
    results = _answer_batch_generate(model, tokenizer, prompts, gen_cfg, stop=stop, **generate_kwargs)
    if on_done is not None:
        on_done(len(results))
    return results


def _answer_batch_by_hand(model, tokenizer, prompts: Sequence[tuple[str, Sequence[int]]], gen_cfg: GenerationConfig,
                          *, stop: StopToken | None = None, adapter_names: Sequence[str] | None = None,
                          use_cache: bool = True, on_done: Callable[[int], None] | None = None
                          ) -> list[GenerationResult]:
    """Greedy decoding with a KV cache, rows dropped from the batch (and from the cache) as they end."""
    import torch

    from core import model_use

    started = time.perf_counter()
    kwargs = _generation_kwargs(gen_cfg, tokenizer, model)
    penalty = float(kwargs.get("repetition_penalty") or 1.0)
    eos_ids = set(kwargs.get("eos_token_id") or [])
    max_new = int(kwargs["max_new_tokens"])
    stop_strings = [text for text in (gen_cfg.stop_strings or []) if text]
    device = next(model.parameters()).device
    input_ids, attention_mask, pads, width = _left_padded(prompts, kwargs["pad_token_id"], device)
    n = len(prompts)
    new_ids: list[list[int]] = [[] for _ in range(n)]
    stopped_by = ["max_tokens"] * n
    alive = list(range(n))  # the prompt index of each row still in the batch
    names = list(adapter_names) if adapter_names is not None else None
    if names is not None and len(names) != n:
        raise ValueError("adapter_names needs one name per prompt")
    # The model derives the same position ids from the mask inside generate(): padding gets 1, then 0, 1, ...
    position_ids = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
    seen = None
    if penalty != 1.0:
        vocabulary = int(getattr(model.config, "vocab_size", 0) or 0) or len(tokenizer)
        seen = torch.zeros((n, vocabulary), dtype=torch.bool, device=device)  # tokens each row has so far
        for row, pad in enumerate(pads):
            seen[row, input_ids[row, pad:]] = True
    parameters = _forward_parameters(model)
    extra: dict[str, Any] = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
    # transformers 5.24 renamed the forward's past_key_values to cache (the old name warns until 5.40).
    cache_name = "cache" if "cache" in parameters else "past_key_values"
    step_ids, mask, positions, cache = input_ids, attention_mask, position_ids, None
    with torch.inference_mode(), model_use.running():
        for _ in range(max_new):
            if stop is not None and stop.is_set:
                break
            if names is not None:
                extra["adapter_names"] = names
            extra[cache_name] = cache
            out = model(input_ids=step_ids, attention_mask=mask, position_ids=positions, use_cache=use_cache, **extra)
            cache = getattr(out, cache_name, None)
            scores = out.logits[:, -1, :].float()
            if seen is not None:
                penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
                scores = torch.where(seen[:, :scores.shape[-1]], penalised, scores)
            tokens = scores.argmax(-1)
            keep = []
            for row, token in enumerate(tokens.tolist()):
                index = alive[row]
                new_ids[index].append(token)
                if token in eos_ids:
                    stopped_by[index] = "eos"
                elif len(new_ids[index]) >= max_new:
                    stopped_by[index] = "max_tokens"
                elif stop_strings and any(text in tokenizer.decode(new_ids[index], skip_special_tokens=True)
                                          for text in stop_strings):
                    stopped_by[index] = "stop_string"
                else:
                    keep.append(row)
            if on_done is not None and len(keep) < len(alive):
                on_done(n - len(keep))
            if not keep:
                break
            if seen is not None:
                seen[torch.arange(len(alive), device=device), tokens] = True
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
            positions = positions[:, -1:] + 1
            step_ids = tokens[:, None]
            if cache is None:  # no cache (switched off, or a model in training mode): the whole sequence again
                step_ids = input_ids = torch.cat([input_ids, tokens[:, None]], dim=-1)
                positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
            if len(keep) < len(alive):
                rows = torch.tensor(keep, dtype=torch.long, device=device)
                if cache is not None:
                    cache.reorder_cache(rows)
                mask, positions, step_ids = mask[rows], positions[rows], step_ids[rows]
                if cache is None:
                    input_ids = input_ids[rows]
                if seen is not None:
                    seen = seen[rows]
                if names is not None:
                    names = [names[row] for row in keep]
                alive = [alive[row] for row in keep]
    cancelled = stop is not None and stop.is_set
    seconds = (time.perf_counter() - started) / max(n, 1)
    results = []
    for index, (prompt, _) in enumerate(prompts):
        ids = new_ids[index]
        text = tokenizer.decode(ids, skip_special_tokens=True)
        reason = stopped_by[index]
        for stop_string in stop_strings:
            where = text.find(stop_string)
            if where != -1:
                text, reason = text[:where], "stop_string"
        if cancelled and reason == "max_tokens":
            reason = "cancelled"
        results.append(GenerationResult(text=text, n_tokens=len(ids), seconds=seconds, first_token_seconds=None,
                                        stopped_by=reason, prompt=prompt, token_ids=ids))
    return results


def _answer_batch_generate(model, tokenizer, prompts: Sequence[tuple[str, Sequence[int]]], gen_cfg: GenerationConfig,
                           *, stop: StopToken | None = None, **generate_kwargs) -> list[GenerationResult]:
    """Greedy answers to ``prompts`` ((text, token ids) pairs) in one left-padded ``generate`` call.

    Each answer is the one ``generate`` gives for that prompt alone: attention mask and pad id are
    passed (the model derives position ids from the mask) and the repetition penalty skips the
    padding. Stop strings cut the text as streaming does; ``stop`` ends the call within one token
    (``stopped_by="cancelled"``). ``seconds`` is the call's time shared equally.
    """
    import torch
    from transformers import LogitsProcessorList, StoppingCriteriaList

    started = time.perf_counter()
    kwargs = _generation_kwargs(gen_cfg, tokenizer, model)
    penalty = float(kwargs.get("repetition_penalty") or 1.0)
    kwargs["repetition_penalty"] = 1.0
    kwargs["do_sample"] = False
    for name in ("temperature", "top_p", "top_k"):
        kwargs.pop(name, None)
    kwargs.update(generate_kwargs)
    input_ids, attention_mask, pads, width = _left_padded(prompts, kwargs["pad_token_id"],
                                                          next(model.parameters()).device)
    processors = LogitsProcessorList([_UnpaddedRepetitionPenalty(penalty, pads)] if penalty != 1.0 else [])

    class _Cancel:
        def __call__(self, ids, scores, **unused):
            done = stop is not None and stop.is_set
            return torch.full((ids.shape[0],), done, dtype=torch.bool, device=ids.device)

    from core import model_use

    with torch.inference_mode(), model_use.running():
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, logits_processor=processors,
                                stopping_criteria=StoppingCriteriaList([_Cancel()]), **kwargs)
    seconds = (time.perf_counter() - started) / len(prompts)
    eos_ids = set(kwargs.get("eos_token_id") or [])
    results = []
    for row, (prompt, _) in enumerate(prompts):
        new_ids, stopped_by = _row_answer(output, row, width, eos_ids)
        text = tokenizer.decode(new_ids, skip_special_tokens=True)
        for stop_string in gen_cfg.stop_strings or []:
            where = text.find(stop_string) if stop_string else -1
            if where != -1:
                text, stopped_by = text[:where], "stop_string"
        if stop is not None and stop.is_set:
            stopped_by = "cancelled"
        results.append(GenerationResult(text=text, n_tokens=len(new_ids), seconds=seconds, first_token_seconds=None,
                                        stopped_by=stopped_by, prompt=prompt, token_ids=new_ids))
    return results


# ----------------------------------------------------------------------------------------------
# The session
# ----------------------------------------------------------------------------------------------


class ModelSession:
    """A loaded model for chatting: base and fine-tuned answers from one copy of the base weights.

    ``source`` is a run folder (its ``final/`` weights, or ``checkpoint``: a step number or
    folder under ``checkpoints/``), an adapter/checkpoint folder, or a plain model name/path (then
    there is no fine-tuned model and ``use_adapter`` is ignored). LoRA / prefix runs: the adapter
    is toggled with peft's ``disable_adapter()``. Full fine-tuning runs need two models in memory
    (base and fine-tuned), because every weight changed.

    Thread-safe: one lock serialises generation and loss computation (see module docstring).
    """

    def __init__(self, source: str | Path, *, checkpoint: int | str | Path | None = None, device: str = "auto",
                 progress=None):
        self.source = source
        self.resolved = resolve_source(source, checkpoint)
        self.run_config: RunConfig | None = self.resolved.run_config
        self.run_dir = self.resolved.run_dir
        self.weights_dir = self.resolved.weights_dir
        self.device = resolve_device(device)
        self._lock = threading.RLock()
        if progress:
            progress(None, f"loading {self.resolved.base_model.name_or_path}")
        self.tokenizer = load_session_tokenizer(self.resolved.base_model, self.weights_dir)
        self.base_model = load_base_model(self.resolved.base_model, self.device)
        self.model = self.base_model  # what answers "fine-tuned"
        self.has_adapter = False
        self.is_full_finetune = False
        if self.resolved.weights_kind == "adapter":
            from peft import PeftModel

            if progress:
                progress(None, f"loading adapter {self.weights_dir}")
            try:
                from core import model_use

                with model_use.loading():
                    self.model = PeftModel.from_pretrained(self.base_model, str(self.weights_dir),
                                                           is_trainable=False)
            except (OSError, ValueError, KeyError) as exc:
                raise ModelError(f"{self.weights_dir}: cannot load the adapter onto "
                                 f"{self.resolved.base_model.name_or_path} ({exc})") from None
            self.model.eval()
            self.has_adapter = True
        elif self.resolved.weights_kind == "full":
            if progress:
                progress(None, f"loading fine-tuned model {self.weights_dir}")
            self.model = load_base_model(ModelConfig(name_or_path=str(self.weights_dir)), self.device)
            self.is_full_finetune = True

    @property
    def has_finetuned(self) -> bool:
        """True when the session can answer as a fine-tuned model (adapter or full fine-tune)."""
        return self.has_adapter or self.is_full_finetune

    @contextlib.contextmanager
    def model_for(self, use_adapter: bool = True):
        """Hold the lock and yield the model answering as fine-tuned (True) or base (False)."""
        from core import model_use

        with self._lock, model_use.running():
            if self.has_adapter and not use_adapter:
                with self.model.disable_adapter():
                    yield self.model
            elif self.is_full_finetune:
                yield self.model if use_adapter else self.base_model
            else:
                yield self.model

    # -- prompts ----------------------------------------------------------------------------------
    def build_prompt(self, prompt_or_messages: str | dict | Sequence[dict], *, raw: bool = False,
                     prompt_format: DataConfig | None = None) -> tuple[str, list[int]]:
        """(prompt text, its token ids), tokenized exactly as training tokenized prompts.

        For a run, a question string, a record dict or a list of ``{"role", "content"}`` messages
        (multi-turn) is written in the run's template (which is the model's chat template when the
        run used ``chat``): the fine-tuned model learned that format. ``prompt_format`` (a data
        config) writes it in that config's template instead: a plain model then answers exactly as
        a run's base side does (the Chat page passes the current config when no run is chosen). For
        a plain model without it (or with ``raw=True``) a string is used as it is and messages go
        through the tokenizer's chat template.
        """
        data_cfg = prompt_format if prompt_format is not None else (
            self.run_config.data if self.run_config is not None else None)
        if isinstance(prompt_or_messages, (list, tuple)):
            messages = _check_messages(prompt_or_messages)
            if data_cfg is not None:
                # A closing empty assistant turn makes the template end with "answer here".
                record = {"messages": messages + [{"role": "assistant", "content": ""}]}
                return self._run_prompt(record, data_cfg)
            if getattr(self.tokenizer, "chat_template", None):
                text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                return text, self._encode(text, special=False)
            text = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages) + "Assistant:"
            return text, self._encode(text, special=True)
        if data_cfg is not None and not raw:
            return self._run_prompt(prompt_or_messages, data_cfg)
        if isinstance(prompt_or_messages, dict):
            prompt_or_messages = str(prompt_or_messages.get("question", ""))
        return str(prompt_or_messages), self._encode(str(prompt_or_messages), special=True)

    def _encode(self, text: str, *, special: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def _run_prompt(self, record_or_question, data_cfg: DataConfig) -> tuple[str, list[int]]:
        from core.data import Segment, render_segments, tokenize_segments

        record = ({"question": record_or_question, "answer": ""} if isinstance(record_or_question, str)
                  else record_or_question)
        segments = render_segments(record, data_cfg, self.tokenizer, include_answer=False)
        # Same tokenization as training (segment by segment, BOS rule), nothing marked as trained so
        # no EOS is appended.
        example = tokenize_segments([Segment(s.text, False) for s in segments], self.tokenizer, 10**9)
        return "".join(s.text for s in segments), list(example.input_ids)

    # -- generation -------------------------------------------------------------------------------
    def generate(self, prompt_or_messages, gen_cfg: GenerationConfig | None = None, *, use_adapter: bool = True,
                 on_token: Callable[[str], None] | None = None, stop: StopToken | None = None,
                 raw: bool = False, prompt_format: DataConfig | None = None,
                 continue_text: str = "", continue_ids: Sequence[int] | None = None) -> GenerationResult:
        """Answer a question / message list; ``on_token(piece)`` is called for each new piece of text.

        Stops on EOS, a stop string (not included in the text), ``max_new_tokens`` or ``stop``
        (``stopped_by="cancelled"``, returns after at most one more token). The prompt is not part
        of ``text``; the pieces passed to ``on_token`` join to exactly ``text``. ``prompt_format``: see
        ``build_prompt``. ``continue_text``: an earlier answer to this prompt that hit the token limit;
        the model goes on after it and ``text`` holds only the new part (``max_new_tokens`` more).
        ``continue_ids``: that answer's ``token_ids`` (exact; the text is re-tokenized when missing).
        """
        import torch

        gen_cfg = gen_cfg or (self.run_config.generation if self.run_config else GenerationConfig())
        started = time.perf_counter()
        prompt, prompt_ids = self.build_prompt(prompt_or_messages, raw=raw, prompt_format=prompt_format)
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        # The answer's own tokens, not its re-tokenized text: the continuation then is exactly what a
        # longer answer would have said.
        answer_ids = ([int(t) for t in continue_ids] if continue_ids
                      else self._encode(continue_text, special=False) if continue_text else [])
        with self.model_for(use_adapter) as model:
            device = next(model.parameters()).device
            input_ids = torch.tensor([prompt_ids + answer_ids], dtype=torch.long, device=device)
            attention_mask = torch.ones_like(input_ids)  # one unpadded sequence: every token is real
            streamer = _TokenStreamer(self.tokenizer, gen_cfg.stop_strings or [], on_token or (lambda piece: None),
                                      prefix_ids=answer_ids)
            kwargs = _generation_kwargs(gen_cfg, self.tokenizer, model)
            if gen_cfg.do_sample:
                torch.manual_seed(gen_cfg.seed)  # under the lock: a sampled answer is reproducible
            from transformers import StoppingCriteriaList

            with torch.inference_mode():
                output = model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([_stopping_criterion(streamer, stop)]),
                    **kwargs,
                )
        seconds = time.perf_counter() - started
        new_ids = [int(t) for t in output[0, input_ids.shape[1]:].tolist()]
        eos_ids = set(kwargs.get("eos_token_id") or [])
        if stop is not None and stop.is_set:
            stopped_by = "cancelled"
        elif streamer.stop_string_hit:
            stopped_by = "stop_string"
        elif new_ids and new_ids[-1] in eos_ids:
            stopped_by = "eos"
        else:
            stopped_by = "max_tokens"
        n_tokens = len(new_ids)  # one sequence: generate() adds no padding after EOS
        first = streamer.first_token_time - started if streamer.first_token_time is not None else None
        return GenerationResult(text=streamer.text, n_tokens=n_tokens, seconds=seconds,
                                first_token_seconds=first, stopped_by=stopped_by, prompt=prompt, token_ids=new_ids)

    def generate_batch(self, prompts: Sequence, gen_cfg: GenerationConfig | None = None, *,
                       use_adapter: bool = True, batch_size: int | None = None, stop: StopToken | None = None,
                       prompt_format: DataConfig | None = None,
                       progress: Callable[[int, int], None] | None = None) -> list[GenerationResult]:
        """Greedy answers to many prompts, several per ``generate`` call; results in ``prompts`` order.

        Prompts are sorted by length and left-padded in batches (attention mask and pad id passed;
        the model derives position ids from the mask), so each answer is the one ``generate`` would
        give alone. The repetition penalty is applied by our own processor that skips the padding
        (the library's would also penalise the pad token, which is often EOS). Sampling falls back to
        one prompt at a time (a batch would draw different random numbers). ``progress(done, total)``.
        """
        gen_cfg = gen_cfg or (self.run_config.generation if self.run_config else GenerationConfig())
        built = [self.build_prompt(p, prompt_format=prompt_format) for p in prompts]
        total = len(built)
        if gen_cfg.do_sample or total <= 1:
            results = []
            for i, prompt in enumerate(prompts):
                if stop is not None:
                    stop.raise_if_set()
                results.append(self.generate(prompt, gen_cfg, use_adapter=use_adapter, stop=stop,
                                             prompt_format=prompt_format))
                if progress:
                    progress(i + 1, total)
            return results
        return self._answer_sorted(built, gen_cfg, sides=(use_adapter,), batch_size=batch_size, stop=stop,
                                   progress=progress)[0]

    def _answer_sorted(self, built: Sequence[tuple[str, list[int]]], gen_cfg: GenerationConfig, *,
                       sides: tuple[bool, ...], batch_size: int | None, stop: StopToken | None,
                       progress: Callable[[int, int], None] | None) -> list[list[GenerationResult]]:
        """Greedy answers to the built prompts in batches sorted by length, one list per side in prompts order.

        ``sides``: ``(use_adapter,)`` answers through ``model_for(use_adapter)``; ``(False, True)`` puts each
        prompt's base and fine-tuned rows in the same batch (peft ``adapter_names``, needs ``can_pair``).
        ``progress(done, total)`` counts answers, also within a batch as rows end."""
        from core import model_use

        if any(not ids for _, ids in built):
            raise ValueError("the prompt is empty")
        if batch_size is None:
            # Prompts per batch. Finished rows leave, so a big batch costs little more per step than a small one:
            # on 2 CPU cores 26 questions (base and fine-tuned) in one batch took 12.1 s, in two 16.1 s.
            batch_size = 32 if self.device == "cpu" else 64
        total, per = len(built), len(sides)
        order = sorted(range(total), key=lambda i: len(built[i][1]))
        out: list[list[GenerationResult | None]] = [[None] * total for _ in sides]
        for start in range(0, total, batch_size):
            if stop is not None:
                stop.raise_if_set()
            chunk = order[start:start + batch_size]
            rows = [built[i] for i in chunk for _ in sides]
            ended = (lambda k, before=per * start: progress(before + k, per * total)) if progress else None
            if per == 1:
                with self.model_for(sides[0]) as model:
                    answers = answer_batch(model, self.tokenizer, rows, gen_cfg, stop=stop, on_done=ended)
            else:
                names = ["default" if side else "__base__" for side in sides] * len(chunk)
                with self._lock, model_use.running():
                    answers = answer_batch(self.model, self.tokenizer, rows, gen_cfg, stop=stop,
                                           adapter_names=names, on_done=ended)
            for k, i in enumerate(chunk):
                for side in range(per):
                    out[side][i] = answers[per * k + side]
            if progress:
                progress(per * min(start + batch_size, total), per * total)
        return [[r for r in side if r is not None] for side in out]

    def generate_both(self, prompts: Sequence, gen_cfg: GenerationConfig | None = None, *,
                      batch_size: int | None = None, stop: StopToken | None = None,
                      prompt_format: DataConfig | None = None,
                      progress: Callable[[int, int], None] | None = None
                      ) -> tuple[list[GenerationResult], list[GenerationResult]]:
        """(base answers, fine-tuned answers) to every prompt, greedy, in ``prompts`` order.

        A LoRA run answers both sides in one mixed-adapter batch (each prompt twice, as base and as fine-tuned,
        ``adapter_names``): one decoding pass instead of two, each answer identical to ``generate`` alone.
        Other runs (full fine-tuning, prefix tuning) and sampling answer side after side (``generate_batch``).
        ``progress(done, total)`` counts answers (``total`` = 2 x prompts)."""
        gen_cfg = gen_cfg or (self.run_config.generation if self.run_config else GenerationConfig())
        total = len(prompts)

        def side_progress(offset: int):
            if progress is None:
                return None
            return lambda done, _count: progress(offset + done, 2 * total)

        if not self.can_pair or gen_cfg.do_sample or total == 0:
            base = self.generate_batch(prompts, gen_cfg, use_adapter=False, batch_size=batch_size, stop=stop,
                                       prompt_format=prompt_format, progress=side_progress(0))
            tuned = self.generate_batch(prompts, gen_cfg, use_adapter=True, batch_size=batch_size, stop=stop,
                                        prompt_format=prompt_format, progress=side_progress(total))
            return base, tuned
        built = [self.build_prompt(p, prompt_format=prompt_format) for p in prompts]
        base, tuned = self._answer_sorted(built, gen_cfg, sides=(False, True), batch_size=batch_size, stop=stop,
                                          progress=progress)
        return base, tuned

    @property
    def can_pair(self) -> bool:
        """True when base and fine-tuned answers can come from one ``generate`` call (a LoRA adapter: peft's
        mixed-adapter batches, ``adapter_names=["__base__", "default"]``)."""
        if not self.has_adapter:
            return False
        config = getattr(self.model, "peft_config", {}).get("default")
        return str(getattr(config, "peft_type", "")).upper().endswith("LORA")

    def generate_pair(self, prompts: Sequence, gen_cfg: GenerationConfig | None = None, *,
                      use_adapter: Sequence[bool], on_tokens: Sequence[Callable[[str], None] | None] = (),
                      stop: StopToken | None = None,
                      prompt_format: DataConfig | None = None) -> list[GenerationResult]:
        """Answer several prompts at once from one model, each row as base or fine-tuned (``use_adapter``):
        one left-padded ``generate`` with peft's mixed-adapter batch, every row streamed to its own
        ``on_tokens[row]``. This is how the Chat page answers both panes from one copy of the weights with
        both answers streaming at the same time. Greedy rows equal ``generate`` alone (the padding is masked
        and the repetition penalty skips it); sampled rows draw from one seeded generator for the batch.
        A row ends at its EOS or stop string; ``stop`` ends all within one token. Needs ``can_pair``."""
        import torch
        from transformers import StoppingCriteriaList

        if not self.can_pair:
            raise ValueError("answers in one batch need a LoRA adapter (peft mixed-adapter batches)")
        gen_cfg = gen_cfg or (self.run_config.generation if self.run_config else GenerationConfig())
        started = time.perf_counter()
        built = [self.build_prompt(p, prompt_format=prompt_format) for p in prompts]
        if any(not ids for _, ids in built):
            raise ValueError("the prompt is empty")
        flags = [bool(flag) for flag in use_adapter]
        if len(flags) != len(built):
            raise ValueError("use_adapter needs one flag per prompt")
        callbacks = list(on_tokens) + [None] * (len(built) - len(on_tokens))
        streamers = [_TokenStreamer(self.tokenizer, gen_cfg.stop_strings or [], cb or (lambda piece: None))
                     for cb in callbacks]
        from core import model_use

        with self._lock, model_use.running():
            model = self.model
            kwargs = _generation_kwargs(gen_cfg, self.tokenizer, model)
            eos_ids = set(kwargs.get("eos_token_id") or [])
            penalty = float(kwargs.get("repetition_penalty") or 1.0)
            kwargs["repetition_penalty"] = 1.0
            input_ids, attention_mask, pads, width = _left_padded(built, kwargs["pad_token_id"],
                                                                  next(model.parameters()).device)
            from transformers import LogitsProcessorList

            processors = LogitsProcessorList([_UnpaddedRepetitionPenalty(penalty, pads)] if penalty != 1.0 else [])
            rows = _RowStreamer(streamers, eos_ids)

            class _RowsStop:
                # Per row: its stop string was seen; every row: the user stopped.
                def __call__(self, ids, scores, **unused):
                    cancelled = stop is not None and stop.is_set
                    return torch.tensor([cancelled or s.stop_string_hit for s in streamers], dtype=torch.bool,
                                        device=ids.device)

            if gen_cfg.do_sample:
                torch.manual_seed(gen_cfg.seed)
            with torch.inference_mode():
                output = model.generate(input_ids=input_ids, attention_mask=attention_mask, streamer=rows,
                                        logits_processor=processors,
                                        stopping_criteria=StoppingCriteriaList([_RowsStop()]),
                                        adapter_names=["default" if flag else "__base__" for flag in flags],
                                        **kwargs)
        seconds = time.perf_counter() - started
        results = []
        for row, (prompt, _) in enumerate(built):
            new_ids, stopped_by = _row_answer(output, row, width, eos_ids)
            if streamers[row].stop_string_hit:
                stopped_by = "stop_string"
            if stop is not None and stop.is_set:
                stopped_by = "cancelled"
            first = streamers[row].first_token_time
            results.append(GenerationResult(text=streamers[row].text, n_tokens=len(new_ids), seconds=seconds,
                                            first_token_seconds=first - started if first is not None else None,
                                            stopped_by=stopped_by, prompt=prompt, token_ids=new_ids))
        return results

    def stream(self, prompt_or_messages, gen_cfg: GenerationConfig | None = None, *, use_adapter: bool = True,
               stop: StopToken | None = None, raw: bool = False) -> GenerationStream:
        """Iterate over text pieces as they are produced; ``.result`` holds the GenerationResult after.

        Generation runs in a background thread; leaving the loop early (``close()`` or breaking out)
        cancels it.
        """
        return GenerationStream(self, prompt_or_messages, gen_cfg, use_adapter=use_adapter, stop=stop, raw=raw)


def _check_messages(messages) -> list[dict]:
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"message {i + 1}: expected a dict with 'role' and 'content'")
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]


class GenerationStream(Iterator[str]):
    """An iterator of streamed text pieces backed by a generation thread."""

    _DONE = object()

    def __init__(self, session: ModelSession, prompt_or_messages, gen_cfg, *, use_adapter, stop, raw):
        self._queue: queue.Queue = queue.Queue()
        self._user_stop = stop
        self._stop = StopToken()
        self.result: GenerationResult | None = None
        self.error: BaseException | None = None

        if stop is not None:  # forward the caller's token: checking both would need a wrapper
            self._forward = threading.Thread(target=self._watch_user_stop, daemon=True)
        else:
            self._forward = None

        def run() -> None:
            try:
                self.result = session.generate(prompt_or_messages, gen_cfg, use_adapter=use_adapter,
                                               on_token=self._queue.put, stop=self._stop, raw=raw)
            except BaseException as exc:  # re-raised in the consumer's thread
                self.error = exc
            finally:
                self._queue.put(self._DONE)

        self._thread = threading.Thread(target=run, name="generation", daemon=True)
        self._thread.start()
        if self._forward is not None:
            self._forward.start()

    def _watch_user_stop(self) -> None:
        while self._thread.is_alive():
            if self._user_stop.is_set:
                self._stop.request(self._user_stop.reason)
                return
            time.sleep(0.01)

    def __next__(self) -> str:
        item = self._queue.get()
        if item is self._DONE:
            self._thread.join()
            if self.error is not None:
                error, self.error = self.error, None
                raise error
            self._queue.put(self._DONE)  # further next() calls keep raising StopIteration
            raise StopIteration
        return item

    def close(self) -> None:
        """Cancel the generation and wait for the thread to finish."""
        self._stop.request("stream closed")
        self._thread.join()

    def __del__(self):
        if getattr(self, "_thread", None) is not None and self._thread.is_alive():
            self._stop.request("stream dropped")
