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


def _encode_with_text(tokenizer, text: str) -> tuple[list[int], list[str] | None]:
    """Token ids of ``text`` and the piece of ``text`` each token stands for, from the tokenizer's
    offset mapping (fast tokenizers): every character is shown once, on the first token that covers
    it, so a character split over several byte tokens (é, 😀, 日) is not garbled. None without offsets."""
    if not text:
        return [], []
    try:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, TypeError, ValueError):
        return _encode(tokenizer, text), None  # a slow (Python) tokenizer has no offsets
    ids = list(encoded["input_ids"])
    offsets = encoded.get("offset_mapping")
    if offsets is None or len(offsets) != len(ids):
        return ids, None
    texts, shown = [], 0
    for _, end in offsets:
        # Text between tokens (a skipped space) goes with the next token, so nothing is lost.
        if end > shown:
            texts.append(text[shown:end])
            shown = end
        else:
            texts.append("")
    if texts and shown < len(text):
        texts[-1] += text[shown:]
    return ids, texts


def _texts_by_decoding(tokenizer, ids: list[int]) -> list[str]:
    """Token texts without offsets: decode incrementally and hold back a token that ends inside a
    multi-byte character (decoded as U+FFFD) until the next one completes it."""
    texts: list[str] = []
    prefix = read = 0
    for i in range(len(ids)):
        before = tokenizer.decode(ids[prefix:read])
        after = tokenizer.decode(ids[prefix:i + 1])
        if after.endswith("\ufffd") and i + 1 < len(ids):
            texts.append("")
            continue
        texts.append(after[len(before):] if after.startswith(before) else after)
        prefix, read = read, i + 1
    return texts


_CHARS_PER_TOKEN_BOUND = 32  # a prefix this many characters per needed token is sure to hold enough tokens


def _encode_bounded(tokenizer, text: str, budget: int, *, with_text: bool = False
                    ) -> tuple[list[int], int | None, list[str] | None]:
    """Token ids of ``text``; when it is far longer than the ``budget`` tokens still to fill, only a prefix
    is tokenized (a 10 MB row would take seconds) and the full length is estimated: (ids, estimate, texts);
    ``texts`` (each token's piece of text) only ``with_text``."""
    encode = (lambda t: _encode_with_text(tokenizer, t)) if with_text else (lambda t: (_encode(tokenizer, t), None))
    limit = (max(budget, 0) + 64) * _CHARS_PER_TOKEN_BOUND
    if len(text) <= 4 * limit:
        ids, texts = encode(text)
        return ids, None, texts
    prefix, texts = encode(text[:limit])
    # Only the last few tokens of the prefix can differ from the full text's (the cut splits a word).
    if len(prefix) < budget + 16:
        ids, texts = encode(text)
        return ids, None, texts
    kept = prefix[: budget + 16]
    return kept, round(len(prefix) * len(text) / limit), None if texts is None else texts[: budget + 16]


def _assemble(segments: list[Segment], tokenizer, max_length: int, train_on_answers_only: bool,
              with_text: bool) -> tuple[TokenizedExample, list[str] | None]:
    pieces = []
    used = 1  # room for BOS
    extra = 0  # estimated tokens beyond those kept from huge segments
    for segment in segments:
        ids, estimate, texts = _encode_bounded(tokenizer, segment.text, max_length - used, with_text=with_text)
        if estimate is not None:
            extra += estimate - len(ids)
        used += len(ids)
        if with_text and texts is None:
            texts = _texts_by_decoding(tokenizer, ids)
        pieces.append((ids, segment.trained or not train_on_answers_only, texts))
    eos = getattr(tokenizer, "eos_token_id", None)
    trained_positions = [i for i, (_, trained, _) in enumerate(pieces) if trained]
    if eos is not None and trained_positions:
        ids, trained, texts = pieces[trained_positions[-1]]
        if not ids or ids[-1] != eos:
            pieces[trained_positions[-1]] = (ids + [eos], trained,
                                             None if texts is None else texts + [_special_text(tokenizer, eos)])
    input_ids: list[int] = []
    labels: list[int] = []
    token_texts: list[str] = []
    bos = getattr(tokenizer, "bos_token_id", None)
    first = next((ids for ids, _, _ in pieces if ids), [])
    if bos is not None and _adds_bos(tokenizer) and first[:1] != [bos]:
        input_ids.append(bos)
        labels.append(IGNORE_INDEX)
        token_texts.append(_special_text(tokenizer, bos) if with_text else "")
    for ids, trained, texts in pieces:
        input_ids.extend(ids)
        labels.extend(ids if trained else [IGNORE_INDEX] * len(ids))
        if with_text:
            token_texts.extend(texts or [])
    full_length = len(input_ids) + extra
    truncated = full_length > max_length
    if truncated:
        input_ids, labels, token_texts = input_ids[:max_length], labels[:max_length], token_texts[:max_length]
    n_trained = sum(1 for label in labels if label != IGNORE_INDEX)
    return TokenizedExample(input_ids, labels, truncated, n_trained, full_length), token_texts if with_text else None


def _special_text(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id])


def tokenize_segments(segments: list[Segment], tokenizer, max_length: int,
                      train_on_answers_only: bool = True) -> TokenizedExample:
    """Token ids and labels of rendered segments: each segment tokenized on its own, EOS after the last
    trained segment, BOS first if the tokenizer normally adds one, cut to ``max_length``.

    ``full_length`` is the untruncated length (estimated for huge segments)."""
    return _assemble(segments, tokenizer, max_length, train_on_answers_only, with_text=False)[0]


def token_mask_view(segments: list[Segment], tokenizer, max_length: int,
                    train_on_answers_only: bool = True) -> list[tuple[str, bool]]:
    """(token text, trained) for each token the model sees, to show which ones it learns. The texts come
    from the tokenizer's offset mapping, so they join back into the rendered text exactly, multi-byte
    characters included (a byte token inside a character shows as "")."""
    example, texts = _assemble(segments, tokenizer, max_length, train_on_answers_only, with_text=True)
    assert texts is not None and len(texts) == len(example.input_ids)
    return [(text, label != IGNORE_INDEX) for text, label in zip(texts, example.labels, strict=True)]
