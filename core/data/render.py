"""Rendering: a canonical record as text under a prompt template, split into segments that are trained
or context (the third stage of core.data).
"""

from __future__ import annotations

import io
import os
import string
from dataclasses import dataclass

from core.data.schema import ANSWER_ROLES
from core.errors import DataError


@dataclass
class Segment:
    text: str
    trained: bool


ALPACA_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                     "context. Write a response that appropriately completes the request.\n\n"
                     "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
ALPACA_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                   "the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")


def _pairs(record: dict) -> list[tuple[str, str]]:
    """(prompt, answer) turns of a record; a conversation gives one per assistant message."""
    if "messages" not in record:
        return [(record.get("question", ""), record.get("answer", ""))]
    pairs, pending = [], []
    for message in record["messages"]:
        if message["role"] == "assistant":
            pairs.append(("\n".join(pending), message["content"]))
            pending = []
        else:
            pending.append(message["content"])
    return pairs


def _chat_messages(record: dict) -> list[dict]:
    if "messages" in record:
        return [dict(m) for m in record["messages"]]
    return [{"role": "user", "content": record.get("question", "")},
            {"role": "assistant", "content": record.get("answer", "")}]


def _apply_chat(tokenizer, messages, add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _render_chat(record: dict, tokenizer, include_answer: bool) -> list[Segment]:
    if tokenizer is None:
        raise DataError("the chat template needs the model's tokenizer; pick a model, or use the classic, "
                        "alpaca or plain template", field="template")
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"the tokenizer of {getattr(tokenizer, 'name_or_path', 'this model')!r} has no chat "
                        "template; use the classic, alpaca or plain template instead", field="template")
    messages = _chat_messages(record)
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        return [Segment(_apply_chat(tokenizer, messages, True), False)]
    if not include_answer:
        return [Segment(_apply_chat(tokenizer, messages[:last], True), False)]
    # Render the conversation turn by turn; the text each assistant message adds is trained, the rest is
    # context. Templates are prefix-stable in practice; if one is not, fall back to the common prefix.
    segments: list[Segment] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _apply_chat(tokenizer, messages[:i], True)
        full = _apply_chat(tokenizer, messages[: i + 1], False)
        cut = len(done) if prompt.startswith(done) else len(os.path.commonprefix([prompt, done]))
        segments.append(Segment(prompt[cut:], False))
        cut = len(prompt) if full.startswith(prompt) else len(os.path.commonprefix([full, prompt]))
        reply = full[cut:]
        body = reply.rstrip()
        # The newline after an end-of-turn marker is context, so the trained part ends on the marker
        # (which often is the EOS token: then no second EOS gets appended).
        segments.append(Segment(body, True))
        segments.append(Segment(reply[len(body):], False))
        done = full
    final = _apply_chat(tokenizer, messages, False)
    if final.startswith(done) and len(final) > len(done):
        segments.append(Segment(final[len(done):], False))  # e.g. trailing user turn
    segments = [s for s in segments if s.text]
    if segments and not segments[-1].trained and not segments[-1].text.strip():
        segments.pop()  # the newline after the last turn: EOS should end the sequence, not follow it
    return segments


def template_fields(record: dict) -> dict[str, str]:
    """The fields a custom template may use for this record."""
    return {k: v for k, v in record.items() if isinstance(v, str)}


def _render_custom(record: dict, template: str, include_answer: bool) -> list[Segment]:
    fields = template_fields(record)
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise DataError(f"the custom template is malformed ({exc}); write fields as {{question}} and a "
                        "literal brace as {{{{ or }}}}", field="custom_template") from None
    names = [name for _, name, _, _ in parsed if name is not None]
    for name in names:
        if name not in fields:
            raise DataError(f"unknown field {{{name}}}; available: " + ", ".join("{" + f + "}" for f in fields),
                            field="custom_template")
    if not any(name in ANSWER_ROLES for name in names):
        raise DataError("the custom template has no answer field; add {answer}, {output} or {completion} "
                        "where the model's reply goes", field="custom_template")
    prompt, answer, in_answer = [], [], False
    for literal, name, spec, conversion in parsed:
        target = answer if in_answer else prompt
        target.append(literal)
        if name is None:
            continue
        if name in ANSWER_ROLES and not in_answer:
            in_answer, target = True, answer
        value = fields[name]
        if conversion:
            value = {"r": repr, "s": str, "a": ascii}[conversion](value)
        target.append(format(value, spec or ""))
    segments = [Segment("".join(prompt), False)]
    if include_answer:
        segments.append(Segment("".join(answer), True))
    return segments


def render_segments(record: dict, data_cfg, tokenizer=None, *, include_answer: bool = True) -> list[Segment]:
    """The text of one record as [Segment(text, trained)] under ``data_cfg.template``.

    With ``include_answer=False`` only the prompt (what generation starts from) is returned.
    """
    template = data_cfg.template
    if "text" in record and "messages" not in record and not record.get("question"):
        # Plain text is learned entirely: there is no prompt to leave out.
        return [Segment(record["text"], True)] if include_answer else [Segment("", False)]
    if template == "chat":
        return _render_chat(record, tokenizer, include_answer)
    if template == "custom":
        return _render_custom(record, data_cfg.custom_template, include_answer)
    segments: list[Segment] = []
    pairs = _pairs(record)
    for number, (question, answer) in enumerate(pairs):
        last = number == len(pairs) - 1
        separator = "\n\n" if number else ""
        if template == "classic":
            prompt = f"{separator}### Question:\n{question}\n### Answer:\n"
        elif template == "alpaca":
            instruction = record.get("instruction") if "instruction" in record and len(pairs) == 1 else question
            extra = record.get("input", "") if "instruction" in record and len(pairs) == 1 else ""
            fill = ALPACA_WITH_INPUT if extra.strip() else ALPACA_NO_INPUT
            prompt = separator + fill.format(instruction=instruction, input=extra)
        elif template == "plain":
            prompt = f"{separator}{question}\n"
        else:
            raise DataError(f"unknown template {template!r}; choose classic, alpaca, chat, plain or custom",
                            field="template")
        segments.append(Segment(prompt, False))
        if last and not include_answer:
            break
        segments.append(Segment(answer, True))
    return segments


def prompt_for(record_or_question, data_cfg, tokenizer=None) -> str:
    """The prompt text (no answer) to generate from, rendered with the data's template."""
    record = ({"question": record_or_question, "answer": ""} if isinstance(record_or_question, str)
              else record_or_question)
    return "".join(s.text for s in render_segments(record, data_cfg, tokenizer, include_answer=False))




TRAINED_OPEN, TRAINED_CLOSE = "⟦", "⟧"


def marked_text(segments: list[Segment], train_on_answers_only: bool = True) -> str:
    """The rendered text with the trained parts wrapped in ⟦ ⟧."""
    out = io.StringIO()
    for segment in segments:
        if segment.trained or not train_on_answers_only:
            out.write(f"{TRAINED_OPEN}{segment.text}{TRAINED_CLOSE}")
        else:
            out.write(segment.text)
    return out.getvalue()


