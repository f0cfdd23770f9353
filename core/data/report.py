"""Reports: the plain-text ``data inspect`` report."""

from __future__ import annotations

import time

from core.data.prepare import measure_lengths, summarize_records
from core.data.render import TRAINED_CLOSE, TRAINED_OPEN, marked_text, render_segments
from core.data.schema import stream_records


def _row_list(rows: list[int], limit: int = 20) -> str:
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (f" … and {len(rows) - limit} more" if len(rows) > limit else "")


def inspect_report(data_cfg, tokenizer=None, n_examples: int = 3, max_length: int = 256,
                   stats_limit: int = 20000) -> str:
    """Plain-text report for ``data inspect``: schema and why, one count line (rows in the file, bad,
    usable, train / held-out), bad and left-out rows, examples with the trained part marked, and length
    statistics with the longest and the truncated rows (whitespace words when no tokenizer is given)."""
    started = time.perf_counter()
    raw, guess, stream = stream_records(data_cfg)
    records: list[dict] = []  # only the first ones: examples and length statistics (a big file is not held)
    lines: list[int] = []
    for line, record in stream:
        lines.append(line)
        if len(records) < max(stats_limit, n_examples):
            records.append(record)
    summary = summarize_records(raw, guess, lines, data_cfg)
    label = raw.line_label
    out = [f"Dataset:   {raw.source} ({raw.kind})",
           f"Columns:   {', '.join(map(str, raw.columns))}",
           f"Format:    {guess.schema} — {guess.reason}",
           f"Rows:      {summary.line()}"]
    for bad in raw.bad_rows[:10]:
        out.append(f"  bad {raw.where(bad.line)}: {bad.message}")
    if len(raw.bad_rows) > 10:
        out.append(f"  … and {len(raw.bad_rows) - 10} more bad rows: {_row_list([b.line for b in raw.bad_rows[10:]])}")
    for left in raw.excluded[:10]:
        out.append(f"  left out {raw.where(left.line)}: {left.message}")
    if len(raw.excluded) > 10:
        out.append(f"  … and {len(raw.excluded) - 10} more left out")
    out.append(f"Template:  {data_cfg.template}; trained on "
               + ("the answers only" if data_cfg.train_on_answers_only else "the whole text"))
    out.append(f"Legend:    the prompt is shown as-is; the part the model learns to produce is wrapped in "
               f"{TRAINED_OPEN} {TRAINED_CLOSE}" + ("" if tokenizer is None else " (plus the end-of-text token)"))
    for number, record in enumerate(records[:n_examples], start=1):
        segments = render_segments(record, data_cfg, tokenizer)
        out.append("")
        out.append(f"--- Example {number} of {len(lines)} ({raw.where(lines[number - 1])}) ---")
        out.append(marked_text(segments, data_cfg.train_on_answers_only))
    measured = records[:stats_limit]
    stats = measure_lengths(measured, lines, data_cfg, tokenizer, max_length)
    unit = (f"tokens ({getattr(tokenizer, 'name_or_path', 'tokenizer')})" if tokenizer is not None
            else "words (approximate: no tokenizer available, counted by whitespace)")
    out.append("")
    out.append(f"Lengths in {unit}" + (f", first {stats_limit} examples" if len(lines) > stats_limit else "") + ":")
    out.append(f"  min {stats.min}, mean {stats.mean:.1f}, median {stats.median:g}, 95% {stats.p95}, "
               f"99% {stats.p99}, max {stats.max}")
    share = stats.n_over_max / stats.count if stats.count else 0.0
    fate = "dropped" if data_cfg.overlong == "drop" else "truncated"
    out.append(f"  {stats.n_over_max} of {stats.count} examples ({share:.1%}) are longer than max length "
               f"{max_length} and would be {fate}" + (f": {label}{'s' if stats.n_over_max > 1 else ''} "
                                                      f"{_row_list(stats.truncated_rows())}" if stats.n_over_max else ""))
    longest = stats.longest(5)
    if longest:
        out.append("  longest: " + ", ".join(f"{label} {row} ({length:,})" for row, length in longest))
    out.append(f"({time.perf_counter() - started:.1f} s)")
    return "\n".join(out)
