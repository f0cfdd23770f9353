"""Probe prompts: watch the model's answers change while it trains.

The user pins up to ``MAX_PROBES`` prompts. During training a TrainerCallback (``make_probe_callback``)
answers each of them greedily, in the training process, between steps: once at step 0 (the base model)
and then every ``every`` steps (default: at each checkpoint save). Each answer leaves through the sinks as
a ``core.metrics.ProbeResult``; the JSONL sink writes it into metrics.jsonl as a ``{"kind": "probe"}``
line, which ``core.runs.read_probes`` reads back.

Probing must never change the training result: the model goes to eval mode under ``torch.no_grad()``,
the Python / NumPy / torch random-number states are saved before and restored after, and the model goes
back to training mode. Prompts are built exactly as chat builds them (``core.data.render_segments`` +
``tokenize_segments`` with this run's template), and generation uses chat's keyword mapping (attention
mask, pad and EOS ids) and streamer (stop strings cut, stop token honoured within one token).

``word_diff`` marks the words of a new answer that differ from the previous one (the GUI highlights them).
This module imports torch/transformers only inside functions: the GUI imports it at start-up.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from core.config import ConfigError, atomic_write_text

MAX_PROBES = 5
PROBES_FILE = "probes.json"
DEFAULT_MAX_NEW_TOKENS = 24
_TOKEN_RE = re.compile(r"\s+|\S+")


# --------------------------------------------------------------------------------------------- settings
def normalize_probes(prompts: Sequence[str] | None) -> list[str]:
    """The probe prompts to use: stripped, empty ones dropped; ConfigError beyond ``MAX_PROBES``."""
    if prompts is None:
        return []
    if isinstance(prompts, str):
        raise ConfigError("probes", "expected a list of prompts, not one string")
    cleaned = [str(prompt).strip() for prompt in prompts if str(prompt).strip()]
    if len(cleaned) > MAX_PROBES:
        raise ConfigError("probes", f"at most {MAX_PROBES} probe prompts can be pinned (got {len(cleaned)}); "
                                    "remove some")
    return cleaned


def save_probe_settings(run_dir: str | os.PathLike, prompts: Sequence[str], every: int | None,
                        max_new_tokens: int) -> Path:
    """Write run_dir/probes.json so ``resume`` probes the same prompts the same way."""
    path = Path(run_dir) / PROBES_FILE
    atomic_write_text(path, json.dumps({"prompts": list(prompts), "every": every,
                                        "max_new_tokens": int(max_new_tokens)}, indent=2) + "\n")
    return path


def load_probe_settings(run_dir: str | os.PathLike) -> dict:
    """run_dir/probes.json as ``{"prompts", "every", "max_new_tokens"}`` (no prompts when missing or broken)."""
    path = Path(run_dir) / PROBES_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    prompts = data.get("prompts") if isinstance(data.get("prompts"), list) else []
    every = data.get("every")
    max_new = data.get("max_new_tokens")
    return {"prompts": [str(p) for p in prompts][:MAX_PROBES],
            "every": int(every) if isinstance(every, int) and every > 0 else None,
            "max_new_tokens": int(max_new) if isinstance(max_new, int) and max_new > 0 else DEFAULT_MAX_NEW_TOKENS}


# --------------------------------------------------------------------------------------------- diff
def word_diff(old: str | None, new: str) -> list[tuple[str, bool]]:
    """The pieces of ``new`` as ``(piece, changed)``: words are marked ``changed`` when they are not in
    ``old`` at that place (difflib over words); whitespace pieces are kept, never marked, so that
    ``"".join(piece for piece, _ in word_diff(old, new)) == new``. With no ``old`` nothing is marked."""
    pieces = _TOKEN_RE.findall(new or "")
    if old is None:
        return [(piece, False) for piece in pieces]
    word_positions = [i for i, piece in enumerate(pieces) if not piece.isspace()]
    new_words = [pieces[i] for i in word_positions]
    old_words = (old or "").split()
    changed = [True] * len(new_words)
    matcher = difflib.SequenceMatcher(a=old_words, b=new_words, autojunk=False)
    for block in matcher.get_matching_blocks():
        for j in range(block.b, block.b + block.size):
            changed[j] = False
    marks = [False] * len(pieces)
    for index, position in enumerate(word_positions):
        marks[position] = changed[index]
    return list(zip(pieces, marks, strict=True))


# --------------------------------------------------------------------------------------------- generation
@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore the Python, NumPy and torch (CPU and CUDA) random states on exit, so work done inside
    (probe generation) leaves the training's random sequence exactly where it was."""
    import random

    import numpy as np
    import torch

    python_state = random.getstate()
    numpy_state = np.random.get_state()
    torch_state = torch.random.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() \
        else None
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.random.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


def probe_prompt_ids(prompt: str, data_cfg: Any, tokenizer: Any) -> list[int]:
    """Token ids of ``prompt`` written in the run's template, tokenized exactly as training (and chat)
    tokenize prompts: segment by segment, nothing trained, so no EOS is appended."""
    from core.data import Segment, render_segments, tokenize_segments

    segments = render_segments({"question": prompt, "answer": ""}, data_cfg, tokenizer, include_answer=False)
    example = tokenize_segments([Segment(s.text, False) for s in segments], tokenizer, 10**9)
    return list(example.input_ids)


PROBE_BATCH = 8  # prompts per generate call during training (pinned probes are few)


def generate_probe_answer(model: Any, tokenizer: Any, data_cfg: Any, gen_cfg: Any, prompt: str, *,
                          max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, stop: Any = None) -> tuple[str, int]:
    """A short greedy answer to ``prompt`` from ``model`` (a plain or peft model, as it is being trained):
    ``(text, n_new_tokens)``. The caller puts the model in eval mode and guards the random state."""
    import dataclasses

    import torch
    from transformers import StoppingCriteriaList

    from core.generation import _generation_kwargs, _stopping_criterion, _TokenStreamer

    ids = probe_prompt_ids(prompt, data_cfg, tokenizer)
    if not ids:
        return "", 0
    greedy = dataclasses.replace(gen_cfg, do_sample=False, max_new_tokens=int(max_new_tokens))
    kwargs = _generation_kwargs(greedy, tokenizer, model)
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)
    attention_mask = torch.ones_like(input_ids)  # one unpadded sequence: every token is real
    streamer = _TokenStreamer(tokenizer, greedy.stop_strings or [], lambda piece: None)
    from core import model_use

    with torch.no_grad(), model_use.running():
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, streamer=streamer,
                                stopping_criteria=StoppingCriteriaList([_stopping_criterion(streamer, stop)]),
                                use_cache=True,  # training may have switched the cache off (checkpointing)
                                **kwargs)
    return streamer.text, int(output.shape[1] - input_ids.shape[1])


def generate_probe_answers(model: Any, tokenizer: Any, data_cfg: Any, gen_cfg: Any, prompts: Sequence[str], *,
                           max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                           stop: Any = None) -> list[tuple[str, int, float]]:
    """Short greedy answers to ``prompts`` in one left-padded ``generate`` call: ``(text, n_new_tokens,
    seconds)`` each, the same answers ``generate_probe_answer`` gives one at a time. The caller puts the
    model in eval mode and guards the random state."""
    import dataclasses

    from core.generation import answer_batch

    started = time.perf_counter()
    built = [(prompt, probe_prompt_ids(prompt, data_cfg, tokenizer)) for prompt in prompts]
    greedy = dataclasses.replace(gen_cfg, do_sample=False, max_new_tokens=int(max_new_tokens))
    real = [pair for pair in built if pair[1]]
    # use_cache: training may have switched the cache off (gradient checkpointing).
    answers = iter(answer_batch(model, tokenizer, real, greedy, stop=stop, use_cache=True) if real else [])
    seconds = (time.perf_counter() - started) / max(1, len(prompts))
    out = []
    for _, ids in built:
        if not ids:
            out.append(("", 0, seconds))
        else:
            answer = next(answers)
            out.append((answer.text, answer.n_tokens, seconds))
    return out


# --------------------------------------------------------------------------------------------- callback
def make_probe_callback(prompts: Sequence[str], *, data_cfg: Any, gen_cfg: Any, tokenizer: Any,
                        emit: Callable[[Any], None], status: Callable[[str, int], None] | None = None,
                        stop: Any = None, every: int | None = None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                        on_pause: Callable[[float], None] | None = None, enabled: bool = True):
    """A TrainerCallback answering ``prompts`` at step 0 (fresh runs), every ``every`` steps (None: at each
    checkpoint save) and handing each ``ProbeResult`` to ``emit``. ``status(message, step)`` gets one line
    per round with its cost; ``on_pause(seconds)`` lets the metrics callback keep probe time out of the
    step timing. ``enabled=False`` (ranks other than 0) makes it do nothing. A set ``stop`` skips rounds
    and cuts a running answer within one token."""
    from transformers import TrainerCallback

    from core.metrics import ProbeResult

    prompts = list(prompts)

    class ProbeCallback(TrainerCallback):
        def __init__(self) -> None:
            self.total_seconds = 0.0
            self.rounds = 0
            self.last_probed_step: int | None = None
            self.round_seconds: list[float] = []

        def run_round(self, model: Any, step: int) -> None:
            if not prompts or model is None or step == self.last_probed_step:
                return
            if stop is not None and stop.is_set:
                return  # the user wants the run to end: no extra work
            self.last_probed_step = step
            started = time.perf_counter()
            was_training = model.training
            answered = 0
            model.eval()
            try:
                with preserved_rng():
                    # All prompts in left-padded batches (greedy answers identical to one at a time);
                    # each answer's seconds is its batch's time shared equally.
                    for start in range(0, len(prompts), PROBE_BATCH):
                        if stop is not None and stop.is_set:
                            break
                        batch = list(enumerate(prompts))[start:start + PROBE_BATCH]
                        answers = generate_probe_answers(model, tokenizer, data_cfg, gen_cfg, [p for _, p in batch],
                                                         max_new_tokens=max_new_tokens, stop=stop)
                        for (index, prompt), (text, n_tokens, seconds) in zip(batch, answers, strict=True):
                            if stop is not None and stop.is_set:
                                break  # the user stopped the run (maybe while reading an answer): no more
                            self.total_seconds += seconds
                            answered += 1
                            emit(ProbeResult(step=step, prompt_index=index, prompt=prompt, answer=text,
                                             seconds=seconds, n_tokens=n_tokens, total_seconds=self.total_seconds))
            finally:
                if was_training:
                    model.train()
                spent = time.perf_counter() - started
                self.rounds += 1
                self.round_seconds.append(spent)
                if on_pause is not None:
                    on_pause(spent)
            if status is not None:
                status(f"probes at step {step}: {answered} answer{'s' if answered != 1 else ''} in {spent:.2f} s "
                       f"(probes so far: {self.total_seconds:.2f} s in {self.rounds} "
                       f"round{'s' if self.rounds != 1 else ''})", step)

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if enabled and state.is_world_process_zero and int(state.global_step) == 0:
                self.run_round(model, 0)  # the strip starts at the base model

        def on_step_end(self, args, state, control, model=None, **kwargs):
            step = int(state.global_step)
            if enabled and every and state.is_world_process_zero and step % every == 0:
                self.run_round(model, step)

        def on_save(self, args, state, control, model=None, **kwargs):
            if enabled and not every and state.is_world_process_zero:
                self.run_round(model, int(state.global_step))

    return ProbeCallback()
