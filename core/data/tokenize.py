"""Tokenizing: rendered segments into token ids and labels (the prompt masked), and the per-token view
of what is trained (the fourth stage of core.data).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.data.render import Segment

IGNORE_INDEX = -100



@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX (-100) where the token is not trained
    truncated: bool
    n_trained: int
    full_length: int = 0  # length before truncation

    @property
    def attention_mask(self) -> list[int]:
        return [1] * len(self.input_ids)


_ADDS_BOS: dict[int, tuple[Any, bool]] = {}


def _adds_bos(tokenizer) -> bool:
    cached = _ADDS_BOS.get(id(tokenizer))
    if cached is not None and cached[0] is tokenizer:
        return cached[1]
    bos = getattr(tokenizer, "bos_token_id", None)
    adds = False
    if bos is not None:
        with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
        adds = bool(with_special) and with_special[0] == bos and \
            tokenizer("a", add_special_tokens=False)["input_ids"][:1] != [bos]
    _ADDS_BOS[id(tokenizer)] = (tokenizer, adds)
    return adds


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


_CHARS_PER_TOKEN_BOUND = 32  # a prefix this many characters per needed token is sure to hold enough tokens


def _encode_bounded(tokenizer, text: str, budget: int) -> tuple[list[int], int | None]:
    """Token ids of ``text``; when it is far longer than the ``budget`` tokens still to fill, only a prefix
    is tokenized (a 10 MB row would take seconds) and the full length is estimated: (ids, estimate)."""
    limit = (max(budget, 0) + 64) * _CHARS_PER_TOKEN_BOUND
    if len(text) <= 4 * limit:
        return _encode(tokenizer, text), None
    prefix = _encode(tokenizer, text[:limit])
    # Only the last few tokens of the prefix can differ from the full text's (the cut splits a word).
    if len(prefix) < budget + 16:
        return _encode(tokenizer, text), None
    kept = prefix[: budget + 16]
    return kept, round(len(prefix) * len(text) / limit)


def tokenize_segments(segments: list[Segment], tokenizer, max_length: int,
                      train_on_answers_only: bool = True) -> TokenizedExample:
    """Token ids and labels of rendered segments: each segment tokenized on its own, EOS after the last
    trained segment, BOS first if the tokenizer normally adds one, cut to ``max_length``.

    ``full_length`` is the untruncated length (estimated for huge segments)."""
    pieces = []
    used = 1  # room for BOS
    extra = 0  # estimated tokens beyond those kept from huge segments
    for segment in segments:
        ids, estimate = _encode_bounded(tokenizer, segment.text, max_length - used)
        if estimate is not None:
            extra += estimate - len(ids)
        used += len(ids)
        pieces.append((ids, segment.trained or not train_on_answers_only))
    eos = getattr(tokenizer, "eos_token_id", None)
    trained_positions = [i for i, (_, trained) in enumerate(pieces) if trained]
    if eos is not None and trained_positions:
        ids, trained = pieces[trained_positions[-1]]
        if not ids or ids[-1] != eos:
            pieces[trained_positions[-1]] = (ids + [eos], trained)
    input_ids: list[int] = []
    labels: list[int] = []
    bos = getattr(tokenizer, "bos_token_id", None)
    first = next((ids for ids, _ in pieces if ids), [])
    if bos is not None and _adds_bos(tokenizer) and first[:1] != [bos]:
        input_ids.append(bos)
        labels.append(IGNORE_INDEX)
    for ids, trained in pieces:
        input_ids.extend(ids)
        labels.extend(ids if trained else [IGNORE_INDEX] * len(ids))
    full_length = len(input_ids) + extra
    truncated = full_length > max_length
    if truncated:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    n_trained = sum(1 for label in labels if label != IGNORE_INDEX)
    return TokenizedExample(input_ids, labels, truncated, n_trained, full_length)


def token_mask_view(segments: list[Segment], tokenizer, max_length: int,
                    train_on_answers_only: bool = True) -> list[tuple[str, bool]]:
    """(token text, trained) for each token the model sees, to show which ones it learns."""
    example = tokenize_segments(segments, tokenizer, max_length, train_on_answers_only)
    return [(tokenizer.decode([token_id]), label != IGNORE_INDEX)
            for token_id, label in zip(example.input_ids, example.labels, strict=True)]


