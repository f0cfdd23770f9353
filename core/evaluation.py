"""Score a fine-tuned model against its base: loss/perplexity, BLEU, ROUGE, exact match, a report.

``evaluate_run`` re-creates the run's held-out split (same data config, same split seed) or reads
any other dataset, measures the teacher-forced loss of base and fine-tuned model (masked like
training), generates answers for ``n`` questions with both, scores them, and writes
``run_dir/evaluation/``: ``comparison.jsonl``, ``comparison.csv``, ``metrics.json`` and a
self-contained ``report.html`` (inline CSS and SVG charts, every dataset text HTML-escaped).

torch and the metric libraries are imported inside functions (the GUI imports this module early).
"""

from __future__ import annotations

import csv
import html
import io
import json
import logging
import math
import re
import string
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.cancel import ProgressFn, StopToken
from core.config import DataConfig, GenerationConfig, RunConfig, atomic_write_text
from core.errors import DataError, ModelError
from core.jsonl import to_jsonl

logger = logging.getLogger(__name__)

SCORE_NAMES = ("bleu", "rouge1", "rouge2", "rougeL", "exact_match")
DEFAULT_N = 20
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation) | {"\u2019", "\u2018", "\u201c", "\u201d", "\u2013", "\u2014", "\u2026"}


# ----------------------------------------------------------------------------------------------
# Metrics on strings
# ----------------------------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, collapse whitespace (SQuAD style)."""
    text = "".join(ch for ch in str(text).lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised answers are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def _bleu_metric():
    from sacrebleu.metrics import BLEU

    # Effective order: answers are often shorter than 4 words, where plain BLEU is 0 even when
    # the answer is perfect. With it, identical strings score 100 whatever their length.
    return BLEU(effective_order=True)


def sentence_bleu(prediction: str, reference: str) -> float:
    """sacrebleu sentence BLEU (0-100) of one answer."""
    if not prediction.strip() and not reference.strip():
        return 100.0
    if not prediction.strip() or not reference.strip():
        return 0.0
    return float(_bleu_metric().sentence_score(prediction, [reference]).score)


def corpus_bleu(predictions: list[str], references: list[str]) -> float:
    """sacrebleu corpus BLEU (0-100) over all answers."""
    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    if not predictions:
        return 0.0
    return float(_bleu_metric().corpus_score(list(predictions), [list(references)]).score)


class _UnicodeTokenizer:
    """Words for ROUGE in any script (rouge-score's default drops every non-ASCII letter)."""

    def __init__(self) -> None:
        from nltk.stem import porter

        self._stemmer = porter.PorterStemmer()

    def tokenize(self, text: str) -> list[str]:
        words = re.findall(r"\w+", text.lower(), flags=re.UNICODE)
        # Stem English words like rouge-score's use_stemmer=True does (only longer ASCII words).
        return [self._stemmer.stem(w) if w.isascii() and len(w) > 3 else w for w in words]


_scorer = None


def rouge_scores(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F1 (0-1) of one answer."""
    global _scorer
    if _scorer is None:
        from rouge_score import rouge_scorer

        _scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=_UnicodeTokenizer())
    scores = _scorer.score(reference, prediction)  # rouge-score takes (target, prediction)
    return {name: float(score.fmeasure) for name, score in scores.items()}


def score_answer(prediction: str, reference: str) -> dict[str, float]:
    """Every per-row score: bleu (0-100), rouge1/rouge2/rougeL (0-1), exact_match (0/1)."""
    return {"bleu": sentence_bleu(prediction, reference), **rouge_scores(prediction, reference),
            "exact_match": exact_match(prediction, reference)}


def summarize_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU and mean ROUGE / exact match over all rows."""
    rows = [score_answer(p, r) for p, r in zip(predictions, references, strict=True)]
    count = max(len(rows), 1)
    summary = {"bleu": corpus_bleu(predictions, references)}
    for name in ("rouge1", "rouge2", "rougeL", "exact_match"):
        summary[name] = sum(row[name] for row in rows) / count
    return summary


# ----------------------------------------------------------------------------------------------
# Loss
# ----------------------------------------------------------------------------------------------


def teacher_forced_loss(session, examples, *, use_adapter: bool, batch_size: int = 8,
                        stop: StopToken | None = None, progress: ProgressFn | None = None) -> tuple[float, int]:
    """Mean loss per trained token (labels -100 are masked, as in training) and the token count.

    ``examples`` holds ``input_ids`` and ``labels`` (a datasets.Dataset or a list of dicts).
    Batches are padded to their own longest example.
    """
    import torch

    rows = [{"input_ids": list(e["input_ids"]), "labels": list(e["labels"])} for e in examples]
    pad_id = session.tokenizer.pad_token_id or 0
    total, count = 0.0, 0
    with session.model_for(use_adapter) as model:
        device = next(model.parameters()).device
        for start in range(0, len(rows), batch_size):
            if stop is not None:
                stop.raise_if_set()
            batch = rows[start:start + batch_size]
            width = max(len(r["input_ids"]) for r in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, row in enumerate(batch):
                n = len(row["input_ids"])
                ids[i, :n] = torch.tensor(row["input_ids"])
                labels[i, :n] = torch.tensor(row["labels"])
                mask[i, :n] = 1
            with torch.inference_mode():
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            # Token t predicts token t+1 (the shift the library's loss does); sum, then divide once
            # over the whole set so long and short batches weigh by their tokens.
            shifted = labels[:, 1:].to(device)
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), shifted.reshape(-1), ignore_index=-100, reduction="sum")
            total += float(loss)
            count += int((shifted != -100).sum())
            if progress:
                progress(min(1.0, (start + len(batch)) / len(rows)), "measuring loss")
    if count == 0:
        raise DataError("no trained (answer) tokens in the evaluation examples: are the answers empty or cut off "
                        "by the max length?")
    return total / count, count


def perplexity(loss: float) -> float:
    """exp(loss), capped to stay finite for a hopeless model."""
    return math.exp(min(loss, 50.0))


# ----------------------------------------------------------------------------------------------
# The evaluation
# ----------------------------------------------------------------------------------------------


@dataclass
class ComparisonRow:
    """One question answered by both models, with per-row scores and fine-tuned minus base."""

    index: int
    question: str
    reference: str
    base_answer: str
    tuned_answer: str
    base_scores: dict[str, float]
    tuned_scores: dict[str, float]
    delta: dict[str, float]

    def flat(self) -> dict:
        """One flat dict (the CSV columns)."""
        out = {"index": self.index, "question": self.question, "reference": self.reference,
               "base_answer": self.base_answer, "tuned_answer": self.tuned_answer}
        for name in SCORE_NAMES:
            out[f"base_{name}"] = round(self.base_scores[name], 4)
            out[f"tuned_{name}"] = round(self.tuned_scores[name], 4)
            out[f"delta_{name}"] = round(self.delta[name], 4)
        return out


@dataclass
class EvaluationReport:
    """Summary metrics of base and fine-tuned model, the comparison rows, and where files went."""

    run_dir: Path
    output_dir: Path
    data_source: str
    split: str  # "held-out" or "all rows of <source>"
    n_loss_examples: int
    n_loss_tokens: int
    base: dict[str, float]
    tuned: dict[str, float]
    rows: list[ComparisonRow] = field(default_factory=list)
    seconds: float = 0.0
    files: dict[str, Path] = field(default_factory=dict)
    forgetting: Any = None  # core.forgetting.ForgettingReport: general ability, base vs fine-tuned
    per_example: Any = None  # core.example_loss.ExampleLossReport when the examples were ranked by loss

    @property
    def report_path(self) -> Path:
        return self.output_dir / "report.html"

    def metrics_dict(self) -> dict:
        return {"run_dir": str(self.run_dir), "data_source": self.data_source, "split": self.split,
                "n_loss_examples": self.n_loss_examples, "n_loss_tokens": self.n_loss_tokens,
                "n_generated": len(self.rows), "seconds": round(self.seconds, 2),
                "base": self.base, "tuned": self.tuned,
                "delta": {k: self.tuned[k] - self.base[k] for k in self.base if k in self.tuned},
                **({"general_ability": {"change_percent": self.forgetting.change_percent,
                                        "verdict": self.forgetting.verdict, "headline": self.forgetting.headline,
                                        "base_loss": self.forgetting.base_loss,
                                        "tuned_loss": self.forgetting.tuned_loss}} if self.forgetting else {})}

    def table(self) -> str:
        """A plain-text table base vs fine-tuned (the CLI prints it), one number format per metric."""
        from core.glossary import GLOSSARY, format_metric

        lines = [f"{'metric':<14}{'base':>12}{'fine-tuned':>12}{'change':>12}  better"]
        for name in ("loss", "perplexity", *SCORE_NAMES):
            if name in self.base:
                b, t = self.base[name], self.tuned[name]
                better = "higher" if GLOSSARY[f"metric.{name}"].higher_is_better else "lower"
                lines.append(f"{GLOSSARY[f'metric.{name}'].label:<14}{format_metric(name, b):>12}"
                             f"{format_metric(name, t):>12}{format_metric(name, t - b, signed=True):>12}  {better}")
        return "\n".join(lines)


def _evaluation_data(cfg: RunConfig, data_cfg: DataConfig | None, tokenizer, stop, progress):
    """(tokenized examples, records, source description) of the held-out split or a whole dataset."""
    from core.data import prepare_dataset

    if data_cfg is None:
        if cfg.data.test_fraction <= 0:
            raise DataError("this run kept no held-out data (held-out fraction 0): choose a dataset to evaluate on",
                            source=cfg.data.source, field="data.test_fraction")
        prepared = prepare_dataset(cfg.data, tokenizer, cfg.training.max_length, stop=stop, progress=progress)
        if prepared.test is None or not prepared.test_records:
            raise DataError("the held-out split is empty", source=cfg.data.source)
        return prepared.test, prepared.test_records, cfg.data.source, "held-out"
    whole = DataConfig(**{**asdict(data_cfg), "test_fraction": 0.0})
    prepared = prepare_dataset(whole, tokenizer, cfg.training.max_length, stop=stop, progress=progress)
    return prepared.train, prepared.train_records, whole.source, f"all rows of {whole.source}"


def data_config_for(source: str, cfg: RunConfig) -> DataConfig:
    """The run's data settings (template, cleaning, masking) applied to another dataset ``source``."""
    return DataConfig(**{**asdict(cfg.data), "source": source, "schema": "auto", "column_map": {},
                         "max_examples": 0})


def evaluate_run(run_dir, *, data_cfg: DataConfig | None = None, n: int | None = None,
                 gen_cfg: GenerationConfig | None = None, progress: ProgressFn | None = None,
                 stop: StopToken | None = None, session=None, checkpoint=None,
                 max_loss_examples: int | None = None, forgetting: bool = True) -> EvaluationReport:
    """Compare base and fine-tuned model of ``run_dir``; write ``run_dir/evaluation/``.

    ``data_cfg`` None: the run's held-out split; else every row of that dataset. ``n``: how many
    questions both models answer (default 20). ``gen_cfg``: defaults to greedy decoding with the
    run's max new tokens (greedy keeps the comparison repeatable). ``session``: reuse a loaded
    ModelSession of this run (e.g. the chat page's). ``forgetting``: also run the general-ability check
    (core.forgetting) and put it in the report.
    """
    from core.generation import ModelSession
    from core.runs import load_run_config, read_metrics

    started = time.perf_counter()
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    last = [0.0]

    def report_progress(fraction: float | None, message: str) -> None:
        # Monotonic fractions: a progress bar must never step back.
        if fraction is not None:
            fraction = last[0] = max(last[0], min(1.0, round(fraction, 4)))
        if progress is not None:
            progress(fraction, message)

    logger.info("evaluating %s (checkpoint %s, %s questions, data %s)", run_dir, checkpoint or "final",
                n if n is not None else "default", data_cfg.source if data_cfg else "the run's held-out split")
    report_progress(0.0, "loading the models")
    if session is None:
        session = ModelSession(run_dir, checkpoint=checkpoint)
    if not session.has_finetuned:
        raise ModelError(f"{run_dir}: no fine-tuned weights to compare with the base model")
    if stop is not None:
        stop.raise_if_set()

    report_progress(0.02, "preparing the evaluation data")
    examples, records, source, split = _evaluation_data(cfg, data_cfg, session.tokenizer, stop, None)
    limit = max_loss_examples if max_loss_examples is not None else (cfg.training.max_eval_examples or len(records))
    examples = [examples[i] for i in range(min(limit, len(examples)))]
    n = DEFAULT_N if n is None else n
    questions = records[: max(0, min(n, len(records)))]
    if gen_cfg is None:
        gen_cfg = GenerationConfig(**{**asdict(cfg.generation), "do_sample": False})

    # Progress budget: 10% per loss pass, the rest shared by the 2 x n answers.
    def sub(start: float, width: float) -> ProgressFn:
        return lambda fraction, message: report_progress(start + width * (fraction or 0.0), message)

    base_loss, n_tokens = teacher_forced_loss(session, examples, use_adapter=False, stop=stop,
                                              progress=sub(0.05, 0.1))
    report_progress(0.15, "measuring the fine-tuned loss")
    tuned_loss, _ = teacher_forced_loss(session, examples, use_adapter=True, stop=stop, progress=sub(0.15, 0.1))

    rows: list[ComparisonRow] = []
    base_answers, tuned_answers, references = [], [], []
    # Answers in left-padded batches, base and fine-tuned rows together for a LoRA run (greedy answers
    # identical to one by one).
    total = len(questions)

    def answered(done: int, answers: int) -> None:
        report_progress(0.25 + 0.6 * done / max(answers, 1), f"answers: {done} of {answers}")

    report_progress(0.25, f"answering {total} questions")
    base_results, tuned_results = session.generate_both(questions, gen_cfg, stop=stop, progress=answered)
    if stop is not None:
        stop.raise_if_set()
    for i, (record, base, tuned) in enumerate(zip(questions, base_results, tuned_results, strict=True)):
        reference = str(record.get("answer", ""))
        base_answers.append(base.text.strip())
        tuned_answers.append(tuned.text.strip())
        references.append(reference)
        base_scores = score_answer(base_answers[-1], reference)
        tuned_scores = score_answer(tuned_answers[-1], reference)
        rows.append(ComparisonRow(
            index=i, question=str(record.get("question", "")), reference=reference,
            base_answer=base_answers[-1], tuned_answer=tuned_answers[-1], base_scores=base_scores,
            tuned_scores=tuned_scores, delta={k: tuned_scores[k] - base_scores[k] for k in SCORE_NAMES}))

    base_summary = {"loss": base_loss, "perplexity": perplexity(base_loss)}
    tuned_summary = {"loss": tuned_loss, "perplexity": perplexity(tuned_loss)}
    if rows:
        base_summary.update(summarize_scores(base_answers, references))
        tuned_summary.update(summarize_scores(tuned_answers, references))

    report = EvaluationReport(run_dir=run_dir, output_dir=run_dir / "evaluation", data_source=source, split=split,
                              n_loss_examples=len(examples), n_loss_tokens=n_tokens, base=base_summary,
                              tuned=tuned_summary, rows=rows, seconds=time.perf_counter() - started)
    if forgetting:
        from core.forgetting import check_forgetting

        report.forgetting = check_forgetting(run_dir, session=session, stop=stop, progress=sub(0.85, 0.13))
        report.seconds = time.perf_counter() - started
    report_progress(0.99, "writing the report")
    write_evaluation(report, cfg, read_metrics(run_dir))
    report_progress(1.0, f"report written to {report.report_path}")
    logger.info("evaluated %s in %.1f s: report %s", run_dir, time.perf_counter() - started, report.report_path)
    return report


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value):
    """A CSV cell a spreadsheet shows as text: a string that starts like a formula (= + - @, tab, carriage
    return) gets a leading ' (OWASP's advice against CSV injection); numbers are left as they are."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def write_evaluation(report: EvaluationReport, cfg: RunConfig, metrics: list[dict]) -> None:
    """Write comparison.jsonl / .csv, metrics.json and report.html into ``report.output_dir``."""
    out = report.output_dir
    out.mkdir(parents=True, exist_ok=True)
    jsonl = to_jsonl(asdict(row) for row in report.rows)
    buffer = io.StringIO()
    columns = list(ComparisonRow(0, "", "", "", "", *({k: 0.0 for k in SCORE_NAMES},) * 3).flat())
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    for row in report.rows:
        writer.writerow({key: spreadsheet_safe(value) for key, value in row.flat().items()})
    files = {"comparison.jsonl": jsonl, "comparison.csv": buffer.getvalue(),
             "metrics.json": json.dumps(report.metrics_dict(), indent=2) + "\n",
             "report.html": render_report_html(report, cfg, metrics)}
    for name, text in files.items():
        atomic_write_text(out / name, text)
        report.files[name] = out / name


# ----------------------------------------------------------------------------------------------
# The HTML report
# ----------------------------------------------------------------------------------------------

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%;font-size:.9em}th,td{border:1px solid #ddd;padding:4px 6px;
vertical-align:top;text-align:left}th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.text{white-space:pre-wrap;max-width:22em}.better{color:#1a7f37}.worse{color:#cf222e}.muted{color:#777}
.charts{display:flex;flex-wrap:wrap;gap:1em}.chart{border:1px solid #eee;padding:.5em}
"""

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    return f"{value:.2e}" if magnitude < 1e-3 or magnitude >= 1e5 else f"{value:.4g}"


def svg_line_chart(series: dict[str, list[tuple[float, float]]], *, title: str, width: int = 500,
                   height: int = 260) -> str:
    """An inline SVG line chart (no dependency): one polyline per named series, axes with 5 ticks."""
    points = [p for values in series.values() for p in values if math.isfinite(p[1])]
    escape = html.escape
    if not points:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">'
                f'<text x="10" y="20">{escape(title)}: no data</text></svg>')
    left, right, top, bottom = 70, 15, 30, 40
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - abs(y0) * 0.1 - 1e-9, y1 + abs(y1) * 0.1 + 1e-9
    plot_w, plot_h = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * plot_h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{escape(title)}" font-size="11" font-family="sans-serif">',
             f'<text x="{left}" y="18" font-size="13" font-weight="bold">{escape(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>']
    for k in range(5):
        fy = y0 + (y1 - y0) * k / 4
        fx = x0 + (x1 - x0) * k / 4
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{sy(fy):.1f}" y2="{sy(fy):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 5}" y="{sy(fy) + 4:.1f}" text-anchor="end">{_fmt(fy)}</text>')
        parts.append(f'<text x="{sx(fx):.1f}" y="{top + plot_h + 15}" text-anchor="middle">{_fmt(round(fx, 2))}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.0f}" y="{height - 5}" text-anchor="middle">step</text>')
    for index, (name, values) in enumerate(series.items()):
        color = _COLORS[index % len(_COLORS)]
        good = [(x, y) for x, y in values if math.isfinite(y)]
        if not good:
            continue
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in good)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{coords}"/>')
        if len(good) == 1:
            parts.append(f'<circle cx="{sx(good[0][0]):.1f}" cy="{sy(good[0][1]):.1f}" r="3" fill="{color}"/>')
        parts.append(f'<text x="{left + plot_w - 5}" y="{top + 14 + 14 * index}" text-anchor="end" '
                     f'fill="{color}">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _curves(metrics: list[dict]) -> tuple[dict, dict]:
    def series(kind: str, key: str) -> list[tuple[float, float]]:
        out = []
        for m in metrics:
            value = m.get(key)
            if m.get("kind", "train") == kind and isinstance(value, (int, float)) and m.get("step") is not None:
                out.append((float(m["step"]), float(value)))
        return out

    loss = {"training loss": series("train", "loss"), "eval loss": series("eval", "eval_loss")}
    lr = {"learning rate": series("train", "learning_rate")}
    return {k: v for k, v in loss.items() if v}, lr


def _forgetting_section(report: EvaluationReport) -> str:
    if report.forgetting is None:
        return ""
    from core.forgetting import forgetting_html

    return forgetting_html(report.forgetting)


def render_report_html(report: EvaluationReport, cfg: RunConfig, metrics: list[dict]) -> str:
    """The self-contained report: settings, curves, summary table, comparison table (all text escaped)."""
    e = html.escape
    loss_series, lr_series = _curves(metrics)
    summary_rows = []
    for name in ("loss", "perplexity", *SCORE_NAMES):
        if name not in report.base:
            continue
        b, t = report.base[name], report.tuned[name]
        lower_is_better = name in ("loss", "perplexity")
        better = (t < b) if lower_is_better else (t > b)
        css = "better" if better else "worse" if t != b else "muted"
        summary_rows.append(f"<tr><td>{e(name)}</td><td class=num>{_fmt(b)}</td><td class=num>{_fmt(t)}</td>"
                            f"<td class='num {css}'>{t - b:+.4g}</td></tr>")
    comparison = []
    for row in report.rows:
        cells = [f"<td class=num>{row.index + 1}</td>"] + [
            f"<td class=text>{e(text)}</td>"
            for text in (row.question, row.reference, row.base_answer, row.tuned_answer)]
        for name in ("bleu", "rougeL", "exact_match"):
            d = row.delta[name]
            css = "better" if d > 0 else "worse" if d < 0 else "muted"
            cells.append(f"<td class=num>{_fmt(row.base_scores[name])}</td><td class=num>{_fmt(row.tuned_scores[name])}"
                         f"</td><td class='num {css}'>{d:+.3g}</td>")
        comparison.append("<tr>" + "".join(cells) + "</tr>")
    settings = [("run", cfg.name or report.run_dir.name), ("base model", cfg.model.name_or_path),
                ("method", cfg.method.method), ("data", report.data_source), ("evaluated on", report.split),
                ("examples for the loss", f"{report.n_loss_examples} ({report.n_loss_tokens} answer tokens)"),
                ("questions answered", str(len(report.rows))), ("time", f"{report.seconds:.1f} s")]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Evaluation: {e(cfg.name or report.run_dir.name)}</title>
<style>{_CSS}</style></head><body>
<h1>Evaluation of {e(cfg.name or report.run_dir.name)}</h1>
<table>{''.join(f'<tr><th>{e(k)}</th><td>{e(v)}</td></tr>' for k, v in settings)}</table>
<h2>Training curves</h2>
<div class=charts><div class=chart>{svg_line_chart(loss_series, title='Loss')}</div>
<div class=chart>{svg_line_chart(lr_series, title='Learning rate')}</div></div>
<h2>Summary</h2>
<p class=muted>Loss and perplexity: teacher-forced on the answer tokens (lower is better). BLEU: corpus BLEU, 0-100.
ROUGE and exact match: mean over the answered questions, 0-1 (higher is better).</p>
<table><tr><th>metric</th><th>base</th><th>fine-tuned</th><th>change</th></tr>{''.join(summary_rows)}</table>
<h2>Answers</h2>
<table><tr><th>#</th><th>question</th><th>reference</th><th>base answer</th><th>fine-tuned answer</th>
<th>BLEU base</th><th>BLEU tuned</th><th>&Delta;</th><th>ROUGE-L base</th><th>ROUGE-L tuned</th><th>&Delta;</th>
<th>EM base</th><th>EM tuned</th><th>&Delta;</th></tr>
{''.join(comparison)}</table>
{_forgetting_section(report)}
</body></html>
"""
