"""Forgetting check: did fine-tuning cost the model its general abilities?

A small general-ability probe set ships with the app (``resources/forgetting/probes.jsonl``: everyday
knowledge, simple arithmetic, short instructions and small talk, none of it about the user's data). Base and
fine-tuned model are scored on the reference answers (teacher-forced loss, written in the run's own template,
answer tokens only) and a few answers are generated side by side.

**General ability** is how likely the model finds the reference answers, per token (the geometric mean of
the token probabilities, ``exp(-loss)``). Its change is ``exp(base_loss - tuned_loss) - 1``: −3 % means the
reference answers became 3 % less likely per token. Thresholds (``FINE_DROP``, ``FORGETTING_DROP``):
a drop up to 10 % is normal for a fine-tune that changed the model's style; 10–25 % means it has started to
lose general skills; beyond 25 % it is forgetting. The result is written to ``run_dir/evaluation/forgetting.json``
so the run summary (core.outcome) and the HTML report can quote it.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.cancel import ProgressFn, StopToken
from core.config import GenerationConfig, atomic_write_text

logger = logging.getLogger(__name__)

FORGETTING_FILE = "forgetting.json"
FINE_DROP = -10.0  # percent: a drop of general ability up to this is fine
FORGETTING_DROP = -25.0  # percent: beyond this the model is forgetting
DEFAULT_ANSWERS = 6
THRESHOLD_TEXT = ("General ability is how likely the model finds the reference answers to 30 everyday questions "
                  "and instructions unrelated to your data (per token). A drop up to 10 % is normal when "
                  "fine-tuning changes the model's style; 10-25 % means it has started to lose general skills; "
                  "beyond 25 % it is forgetting them.")
ADVICE = ("To forget less: lower the learning rate, train fewer epochs or steps, use a smaller LoRA rank, or mix "
          "some general examples into your data.")


@dataclass
class ProbeItem:
    kind: str
    question: str
    answer: str


@dataclass
class ProbeScore:
    kind: str
    question: str
    reference: str
    base_loss: float
    tuned_loss: float
    base_answer: str | None = None
    tuned_answer: str | None = None


@dataclass
class ForgettingReport:
    """Base vs fine-tuned on the general-ability probes, and the verdict in words."""

    base_loss: float
    tuned_loss: float
    change_percent: float  # general ability, fine-tuned vs base (negative: it got worse)
    verdict: str  # "fine" | "some forgetting" | "forgetting"
    n_probes: int
    n_tokens: int
    items: list[ProbeScore] = field(default_factory=list)
    threshold: str = THRESHOLD_TEXT

    @property
    def headline(self) -> str:
        """E.g. "general ability: −3 % (fine)" or "general ability: −40 %: the model is forgetting"."""
        figure = f"{self.change_percent:+.0f} %".replace("-", "\u2212")
        if self.verdict == "fine":
            return f"general ability: {figure} (fine)"
        if self.verdict == "some forgetting":
            return f"general ability: {figure}: some forgetting"
        return f"general ability: {figure}: the model is forgetting"

    def _numbers(self) -> str:
        return (f"{self.headline[0].upper()}{self.headline[1:]} (loss on {self.n_probes} general probes "
                f"{self.base_loss:.3f} → {self.tuned_loss:.3f}).")

    def _advice(self) -> str:
        return " " + ADVICE if self.verdict != "fine" else ""

    def sentence(self) -> str:
        """The headline with the numbers behind it and what the threshold means."""
        return f"{self._numbers()} {self.threshold}{self._advice()}"

    def short_sentence(self) -> str:
        """The headline with its numbers and, when it is not fine, what to do (the threshold's meaning left out:
        the Evaluate page shows it as the tooltip)."""
        return self._numbers() + self._advice()

    def to_dict(self) -> dict:
        return {**asdict(self), "headline": self.headline}

    @classmethod
    def from_dict(cls, raw: dict) -> ForgettingReport:
        items = [ProbeScore(**item) for item in raw.get("items") or []]
        keys = {"base_loss", "tuned_loss", "change_percent", "verdict", "n_probes", "n_tokens", "threshold"}
        return cls(items=items, **{k: raw[k] for k in keys if k in raw})


def verdict_for(change_percent: float) -> str:
    """"fine" (drop up to 10 %), "some forgetting" (10-25 %) or "forgetting" (beyond 25 %)."""
    if not math.isfinite(change_percent) or change_percent < FORGETTING_DROP:
        return "forgetting"
    if change_percent < FINE_DROP:
        return "some forgetting"
    return "fine"


def ability_change_percent(base_loss: float, tuned_loss: float) -> float:
    """How much more (+) or less (−) likely the reference answers became per token, in percent."""
    return 100.0 * (math.exp(max(-50.0, min(50.0, base_loss - tuned_loss))) - 1.0)


def load_probes() -> list[ProbeItem]:
    """The bundled general-ability probes (package data)."""
    from importlib.resources import files

    text = files("resources").joinpath("forgetting", "probes.jsonl").read_text(encoding="utf-8")
    items = []
    for line in text.splitlines():
        if line.strip():
            raw = json.loads(line)
            items.append(ProbeItem(raw.get("kind", ""), raw["question"], raw["answer"]))
    return items


def check_forgetting(run_dir, *, session=None, checkpoint=None, n_answers: int = DEFAULT_ANSWERS,
                     gen_cfg: GenerationConfig | None = None, progress: ProgressFn | None = None,
                     stop: StopToken | None = None, write: bool = True) -> ForgettingReport:
    """Score base and fine-tuned model of ``run_dir`` on the general probes; answer the first ``n_answers``
    with both (greedy). Writes ``run_dir/evaluation/forgetting.json`` unless ``write`` is False."""
    from core.data import render_segments, tokenize_segments
    from core.example_loss import example_losses
    from core.generation import ModelSession
    from core.runs import load_run_config

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    if session is None:
        if progress is not None:
            progress(0.0, "loading the models")
        session = ModelSession(run_dir, checkpoint=checkpoint)
    probes = load_probes()
    examples, kept = [], []
    for probe in probes:
        record = {"question": probe.question, "answer": probe.answer}
        segments = render_segments(record, cfg.data, session.tokenizer)
        # Answers only, whatever the run trained on: the reference answer is what is scored.
        example = tokenize_segments(segments, session.tokenizer, cfg.training.max_length, True)
        if example.n_trained:
            examples.append({"input_ids": example.input_ids, "labels": example.labels})
            kept.append(probe)

    def part(start: float, width: float) -> ProgressFn | None:
        if progress is None:
            return None
        return lambda fraction, message: progress(start + width * (fraction or 0.0), "general probes: " + message)

    base = example_losses(session, examples, use_adapter=False, stop=stop, progress=part(0.0, 0.2))
    tuned = example_losses(session, examples, use_adapter=True, stop=stop, progress=part(0.2, 0.2))
    n_tokens = sum(count for _, count in base)
    # Token-weighted means, as the held-out loss is.
    base_loss = sum(loss * count for loss, count in base) / max(1, n_tokens)
    tuned_loss = sum(loss * count for loss, count in tuned) / max(1, n_tokens)
    items = [ProbeScore(p.kind, p.question, p.answer, b, t) for p, (b, _), (t, _) in zip(kept, base, tuned,
                                                                                          strict=True)]
    gen_cfg = gen_cfg or GenerationConfig(**{**asdict(cfg.generation), "do_sample": False, "max_new_tokens": 48})
    answered = items[:max(0, n_answers)]
    if answered:
        # Left-padded batches, base and fine-tuned rows together for a LoRA run (greedy answers identical to
        # one at a time).
        records = [{"question": item.question, "answer": ""} for item in answered]

        def answering(done: int, total: int) -> None:
            if progress is not None:
                progress(0.4 + 0.6 * done / max(1, total), f"general probes: answers {done} of {total}")

        base_answers, tuned_answers = session.generate_both(records, gen_cfg, stop=stop, progress=answering)
        if stop is not None:
            stop.raise_if_set()
        for item, base_answer, tuned_answer in zip(answered, base_answers, tuned_answers, strict=True):
            item.base_answer = base_answer.text.strip()
            item.tuned_answer = tuned_answer.text.strip()
    change = ability_change_percent(base_loss, tuned_loss)
    report = ForgettingReport(base_loss=base_loss, tuned_loss=tuned_loss, change_percent=change,
                              verdict=verdict_for(change), n_probes=len(items), n_tokens=n_tokens, items=items)
    if write:
        atomic_write_text(run_dir / "evaluation" / FORGETTING_FILE, json.dumps(report.to_dict(), indent=2) + "\n")
    if progress is not None:
        progress(1.0, report.headline)
    logger.info("forgetting check of %s: %s", run_dir, report.headline)
    return report


def load_forgetting(run_dir) -> ForgettingReport | None:
    """The last forgetting check of a run (None when it was never made or the file is damaged)."""
    path = Path(run_dir) / "evaluation" / FORGETTING_FILE
    try:
        return ForgettingReport.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def format_forgetting(report: ForgettingReport, n_answers: int = DEFAULT_ANSWERS) -> str:
    """The CLI's lines: the verdict with its threshold, then answers side by side."""
    lines = [report.sentence(), ""]
    answered = [item for item in report.items if item.base_answer is not None][:n_answers]
    for item in answered:
        lines.append(f"  Q: {item.question}")
        lines.append(f"     base:       {' '.join((item.base_answer or '').split())[:100]}")
        lines.append(f"     fine-tuned: {' '.join((item.tuned_answer or '').split())[:100]}")
    return "\n".join(lines)


def forgetting_html(report: ForgettingReport) -> str:
    """An HTML section for the evaluation report (every text escaped)."""
    import html

    e = html.escape
    css = {"fine": "better", "some forgetting": "muted", "forgetting": "worse"}[report.verdict]
    rows = "".join(
        f"<tr><td class=text>{e(i.question)}</td><td class=text>{e(i.reference)}</td>"
        f"<td class=text>{e(i.base_answer or '')}</td><td class=text>{e(i.tuned_answer or '')}</td>"
        f"<td class=num>{i.base_loss:.3f}</td><td class=num>{i.tuned_loss:.3f}</td></tr>"
        for i in report.items if i.base_answer is not None)
    return (f"<h2>General ability (forgetting check)</h2><p class='{css}'><b>{e(report.headline)}</b> — loss on "
            f"{report.n_probes} general probes {report.base_loss:.3f} → {report.tuned_loss:.3f}.</p>"
            f"<p class=muted>{e(report.threshold)}</p>"
            + (f"<table><tr><th>probe</th><th>reference</th><th>base answer</th><th>fine-tuned answer</th>"
               f"<th>loss base</th><th>loss tuned</th></tr>{rows}</table>" if rows else ""))
