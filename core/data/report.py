"""Reports: the plain-text ``data inspect`` report.
"""

from __future__ import annotations

import time

from core.data.prepare import LengthStats
from core.data.render import TRAINED_CLOSE, TRAINED_OPEN, Segment, marked_text, render_segments
from core.data.schema import load_records
from core.data.tokenize import tokenize_segments


def _whitespace_length(segments: list[Segment]) -> int:
    return sum(len(s.text.split()) for s in segments) + 1  # +1 for the end-of-text token


def inspect_report(data_cfg, tokenizer=None, n_examples: int = 3, max_length: int = 256,
                   stats_limit: int = 20000) -> str:
    """Plain-text report for ``data inspect``: schema and why, rows, bad rows, examples with the trained
    part marked, and token-length statistics (whitespace words when no tokenizer is given)."""
    started = time.perf_counter()
    raw, guess, records, lines = load_records(data_cfg)
    out = [f"Dataset:   {raw.source} ({raw.kind})",
           f"Columns:   {', '.join(map(str, raw.columns))}",
           f"Format:    {guess.schema} — {guess.reason}",
           f"Rows:      {len(records)} usable, {len(raw.bad_rows)} bad"
           + (" (skipped)" if raw.bad_rows else "")]
    for bad in raw.bad_rows[:10]:
        out.append(f"  {raw.line_label} {bad.line}: {bad.message}")
    if len(raw.bad_rows) > 10:
        out.append(f"  … and {len(raw.bad_rows) - 10} more")
    out.append(f"Template:  {data_cfg.template}; trained on "
               + ("the answers only" if data_cfg.train_on_answers_only else "the whole text"))
    out.append(f"Legend:    the prompt is shown as-is; the part the model learns to produce is wrapped in "
               f"{TRAINED_OPEN} {TRAINED_CLOSE}" + ("" if tokenizer is None else " (plus the end-of-text token)"))
    for number, record in enumerate(records[:n_examples], start=1):
        segments = render_segments(record, data_cfg, tokenizer)
        out.append("")
        out.append(f"--- Example {number} ({raw.line_label} {lines[number - 1]}) ---")
        out.append(marked_text(segments, data_cfg.train_on_answers_only))
    measured = records[:stats_limit]
    if tokenizer is not None:
        lengths = [tokenize_segments(render_segments(r, data_cfg, tokenizer), tokenizer, max_length,
                                     data_cfg.train_on_answers_only).full_length for r in measured]
        unit = f"tokens ({getattr(tokenizer, 'name_or_path', 'tokenizer')})"
    else:
        lengths = [_whitespace_length(render_segments(r, data_cfg, None)) for r in measured]
        unit = "words (approximate: no tokenizer available, counted by whitespace)"
    stats = LengthStats.from_lengths(lengths, max_length)
    out.append("")
    out.append(f"Lengths in {unit}" + (f", first {stats_limit} examples" if len(records) > stats_limit else "") + ":")
    out.append(f"  min {stats.min}, mean {stats.mean:.1f}, median {stats.median:g}, 95% {stats.p95}, max {stats.max}")
    share = stats.n_over_max / stats.count if stats.count else 0.0
    out.append(f"  {stats.n_over_max} of {stats.count} examples ({share:.1%}) are longer than max length "
               f"{max_length} and would be " + ("dropped" if data_cfg.overlong == "drop" else "truncated"))
    out.append(f"({time.perf_counter() - started:.1f} s)")
    return "\n".join(out)
