"""Per-example loss: which training and held-out examples the model finds hardest, easiest, or harder than
before training, each with its row number in the user's file.

A very high loss after training, on an example the model was trained on, often means a wrong or inconsistent
label (an answer that belongs to another question, a typo in a number): the model could not learn it because it
contradicts the rest of the data. ``rank_examples`` measures base and fine-tuned loss per example and writes
``run_dir/evaluation/per_example.jsonl``. torch is imported inside functions.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.cancel import ProgressFn, StopToken
from core.config import atomic_write_text
from core.jsonl import read_objects, to_jsonl

logger = logging.getLogger(__name__)

PER_EXAMPLE_FILE = "per_example.jsonl"
DEFAULT_LIMIT = 400  # examples per split; a CPU measures a few hundred short examples in about a minute
HIGH_LOSS_HINT = ("A very high loss after training, on an example the model was trained on, often means a wrong "
                  "or inconsistent label: an answer that belongs to another question, a wrong number, a typo. "
                  "Open the row in your file and check it; leave it out with data.drop_rows if it is wrong.")


def example_losses(session, examples, *, use_adapter: bool, batch_size: int = 8, stop: StopToken | None = None,
                   progress: ProgressFn | None = None) -> list[tuple[float, int]]:
    """(mean loss per trained token, trained tokens) of each example, masked as in training.

    ``examples`` hold ``input_ids`` and ``labels`` (-100 = not trained). An example without trained tokens
    gets (nan, 0)."""
    import torch

    rows = [(list(e["input_ids"]), list(e["labels"])) for e in examples]
    pad_id = session.tokenizer.pad_token_id or 0
    out: list[tuple[float, int]] = []
    with session.model_for(use_adapter) as model:
        device = next(model.parameters()).device
        for start in range(0, len(rows), batch_size):
            if stop is not None:
                stop.raise_if_set()
            batch = rows[start:start + batch_size]
            width = max(len(ids) for ids, _ in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, (row_ids, row_labels) in enumerate(batch):
                ids[i, :len(row_ids)] = torch.tensor(row_ids)
                labels[i, :len(row_labels)] = torch.tensor(row_labels)
                mask[i, :len(row_ids)] = 1
            with torch.inference_mode():
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            shifted = labels[:, 1:].to(device)
            per_token = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), shifted.reshape(-1), ignore_index=-100,
                reduction="none").reshape(shifted.shape)
            counts = (shifted != -100).sum(dim=1)
            sums = per_token.sum(dim=1)
            for total, count in zip(sums.tolist(), counts.tolist(), strict=True):
                out.append((total / count if count else math.nan, int(count)))
            if progress is not None:
                progress(min(1.0, (start + len(batch)) / len(rows)), "measuring the loss of each example")
    return out


@dataclass
class ExampleLoss:
    """One example: where it is in the user's file, its text, and its loss before and after training."""

    split: str  # "train" | "held-out"
    row: int  # row / line number in the user's file (as the data page shows it)
    question: str
    answer: str
    base_loss: float
    tuned_loss: float
    n_tokens: int

    @property
    def change(self) -> float:
        return self.tuned_loss - self.base_loss


@dataclass
class ExampleLossReport:
    run_dir: Path
    source: str
    row_label: str  # "line" or "row"
    examples: list[ExampleLoss] = field(default_factory=list)
    path: Path | None = None

    def _of(self, split: str | None) -> list[ExampleLoss]:
        return [e for e in self.examples if (split is None or e.split == split) and math.isfinite(e.tuned_loss)]

    def hardest(self, n: int = 10, split: str | None = None) -> list[ExampleLoss]:
        """Highest loss after training first."""
        return sorted(self._of(split), key=lambda e: -e.tuned_loss)[:n]

    def easiest(self, n: int = 10, split: str | None = None) -> list[ExampleLoss]:
        return sorted(self._of(split), key=lambda e: e.tuned_loss)[:n]

    def went_up(self, n: int = 10, split: str | None = None) -> list[ExampleLoss]:
        """Examples whose loss rose with training, the biggest rise first."""
        rose = [e for e in self._of(split) if math.isfinite(e.base_loss) and e.change > 0]
        return sorted(rose, key=lambda e: -e.change)[:n]

    def rank_of_row(self, row: int, split: str | None = None) -> int | None:
        """1-based place of file row ``row`` in the hardest-first order (None if not measured)."""
        for place, example in enumerate(self.hardest(len(self.examples), split), start=1):
            if example.row == row:
                return place
        return None

    def table(self, n: int = 10) -> str:
        """The CLI's text: hardest, easiest and went-up lists with row numbers, then the hint."""
        label = self.row_label

        def lines(title: str, items: list[ExampleLoss]) -> list[str]:
            out = [title]
            if not items:
                return out + ["  (none)"]
            for e in items:
                question = " ".join(e.question.split())[:60]
                out.append(f"  {label} {e.row:>5} ({e.split:<8}) loss {e.base_loss:6.3f} → {e.tuned_loss:6.3f} "
                           f"({e.change:+.3f})  {question}")
            return out

        text = lines(f"Hardest after training (highest loss, {len(self._of(None))} examples measured):",
                     self.hardest(n))
        text += lines("Easiest after training:", self.easiest(n))
        text += lines("Loss went up with training:", self.went_up(n))
        text.append(HIGH_LOSS_HINT)
        return "\n".join(text)


def _tokenized(records: list[dict], data_cfg, tokenizer, max_length: int) -> list[tuple[int, dict]]:
    from core.data import render_segments, tokenize_segments

    out = []
    for index, record in enumerate(records):
        example = tokenize_segments(render_segments(record, data_cfg, tokenizer), tokenizer, max_length,
                                    data_cfg.train_on_answers_only)
        if example.n_trained:
            out.append((index, {"input_ids": example.input_ids, "labels": example.labels}))
    return out


def rank_examples(run_dir, *, session=None, checkpoint=None, limit: int = DEFAULT_LIMIT,
                  progress: ProgressFn | None = None, stop: StopToken | None = None) -> ExampleLossReport:
    """Base and fine-tuned loss of the run's training and held-out examples (at most ``limit`` of each, in
    file order), with their row numbers; written to ``run_dir/evaluation/per_example.jsonl``."""
    from core.data import load_records, training_split
    from core.generation import ModelSession
    from core.runs import load_run_config

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    if progress is not None:
        progress(0.0, "loading the models")
    if session is None:
        session = ModelSession(run_dir, checkpoint=checkpoint)
    raw, _guess, records, lines = load_records(cfg.data, stop=stop)
    train_idx, test_idx, _ = training_split(len(records), cfg.data)
    chosen: list[tuple[str, int]] = [("train", i) for i in train_idx[:limit]] + \
        [("held-out", i) for i in test_idx[:limit]]
    tokenized = _tokenized([records[i] for _, i in chosen], cfg.data, session.tokenizer, cfg.training.max_length)
    examples = [example for _, example in tokenized]

    def part(start: float) -> ProgressFn:
        return lambda fraction, message: progress(start + 0.5 * (fraction or 0.0), message) if progress else None

    base = example_losses(session, examples, use_adapter=False, stop=stop,
                          progress=part(0.0) if progress else None)
    tuned = example_losses(session, examples, use_adapter=True, stop=stop, progress=part(0.5) if progress else None)
    report = ExampleLossReport(run_dir, cfg.data.source, raw.line_label)
    for (position, _), (b, count), (t, _) in zip(tokenized, base, tuned, strict=True):
        split, index = chosen[position]
        record = records[index]
        report.examples.append(ExampleLoss(split, lines[index], str(record.get("question", "")),
                                           str(record.get("answer", "")), b, t, count))
    out = run_dir / "evaluation" / PER_EXAMPLE_FILE
    atomic_write_text(out, to_jsonl({**asdict(e), "change": e.change} for e in report.examples))
    report.path = out
    if progress is not None:
        progress(1.0, f"per-example losses written to {out}")
    logger.info("per-example loss of %s: %d examples -> %s", run_dir, len(report.examples), out)
    return report


def load_example_losses(run_dir) -> ExampleLossReport | None:
    """The last ``rank_examples`` result of a run (None when it was never measured)."""
    from core.runs import load_run_config

    run_dir = Path(run_dir)
    path = run_dir / "evaluation" / PER_EXAMPLE_FILE
    rows = read_objects(path, skip_invalid=True)
    if not rows:
        return None
    try:
        cfg = load_run_config(run_dir)
        source = cfg.data.source
    except Exception:  # noqa: BLE001 - a damaged config.yaml still lets the losses be shown
        source = ""
    fields = {f for f in ExampleLoss.__dataclass_fields__}
    examples = [ExampleLoss(**{k: v for k, v in row.items() if k in fields}) for row in rows]
    label = "row" if source.lower().endswith((".csv", ".tsv", ".parquet", ".xlsx")) else "line"
    return ExampleLossReport(run_dir, source, label, examples, path)
