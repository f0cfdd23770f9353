"""The end of a run in plain words: what changed on held-out data, whether it matters, what to do next.

Read from a run folder (metrics.jsonl + status.json), so the Train page's summary card, the CLI's last
lines and a reopened run all say the same thing.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

# Relative change of the held-out loss that counts as "clear" / "small" (below: no real change). A loss
# that moves less than 1 % between two evaluations of a small held-out set is within its noise.
CLEAR_CHANGE = 0.05
SMALL_CHANGE = 0.01
# DPO runs are judged on held-out pairs: the share whose chosen answer gets the higher reward. 0.5 is chance;
# at or above CLEAR_ACCURACY (with a positive margin) the model clearly took on the preferences.
CLEAR_ACCURACY = 0.7


@dataclass
class RunOutcome:
    """What a run achieved, with the numbers behind each sentence."""

    state: str
    global_step: int
    before_loss: float | None          # held-out loss of the untouched model (step 0)
    after_loss: float | None           # held-out loss at the last evaluation
    best_loss: float | None
    best_step: int | None
    verdict: str                       # "clear improvement" | "small improvement" | "no real change" | "worse" | ""
    headline: str                      # one plain sentence
    change_percent: float | None = None
    notes: list[str] = field(default_factory=list)       # what else is worth knowing (noisy train loss, ...)
    next_steps: list[str] = field(default_factory=list)
    preference: bool = False  # a DPO run: its losses are the DPO loss of pairs, not a language-model loss
    # DPO runs: the last logged reward accuracy and margin, on held-out pairs (``reward_split="eval"``) or,
    # when none were kept, on training batches; ``reward_pairs`` is how many held-out pairs (None: unknown).
    reward_accuracy: float | None = None
    reward_margin: float | None = None
    reward_pairs: int | None = None
    reward_split: str | None = None

    @property
    def perplexity_before(self) -> float | None:
        # exp(DPO loss) is no perplexity: a DPO run has none to report.
        return None if self.preference else _perplexity(self.before_loss)

    @property
    def perplexity_after(self) -> float | None:
        return None if self.preference else _perplexity(self.after_loss)


def _perplexity(loss: float | None) -> float | None:
    if loss is None or not math.isfinite(loss) or loss > 50:
        return None
    return math.exp(loss)


def _finite(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def summarize_outcome(run_dir: str | os.PathLike) -> RunOutcome:
    """The outcome of the run in ``run_dir`` (works for finished, stopped and failed runs)."""
    from core.runs import read_metrics, read_status

    run_dir = Path(run_dir)
    status = read_status(run_dir)
    records = read_metrics(run_dir)
    evals = [(int(r.get("step") or 0), _finite(r.get("eval_loss"))) for r in records if r.get("kind") == "eval"]
    evals = [(step, loss) for step, loss in evals if loss is not None]
    trains = [(int(r.get("step") or 0), _finite(r.get("loss"))) for r in records if r.get("kind") == "train"]
    trains = [(step, loss) for step, loss in trains if loss is not None]
    state = str(status.get("state") or "unknown")
    step = int(_finite(status.get("global_step")) or (trains[-1][0] if trains else 0))
    before = next((loss for s, loss in evals if s == 0), None)
    after = evals[-1][1] if evals and evals[-1][0] > 0 else None
    best_step, best = (None, None)
    trained_evals = [(s, loss) for s, loss in evals if s > 0]
    if trained_evals:
        best_step, best = min(trained_evals, key=lambda item: item[1])
    outcome = RunOutcome(state=state, global_step=step, before_loss=before, after_loss=after, best_loss=best,
                         best_step=best_step, verdict="", headline="",
                         preference=any(r.get("kind") == "preference" for r in records))
    if state == "failed":
        outcome.headline = f"The run failed at step {step}: {status.get('message') or 'see the log'}."
        outcome.next_steps.append("Read the message, fix the setting or the data it names, and start again.")
        return outcome
    if state == "diverged":
        outcome.verdict = "worse"
        outcome.headline = (f"Training stopped at step {step} because the loss ran away (diverged): "
                            f"{status.get('message') or 'the loss rose far above where it started'}.")
        outcome.next_steps.append("Start a new run with a lower learning rate (e.g. a tenth) or gradient clipping "
                                  "on; the learning-rate finder suggests a safe value.")
        return outcome
    reference = best if best is not None else after
    if outcome.preference and _judge_preferences(outcome, records, before, after):
        pass  # a DPO run is judged on its held-out rewards; its DPO loss is only a note
    elif before is not None and reference is not None:
        change = (reference - before) / before if before > 0 else 0.0
        outcome.change_percent = 100 * change
        if change <= -CLEAR_CHANGE:
            outcome.verdict = "clear improvement"
        elif change <= -SMALL_CHANGE:
            outcome.verdict = "small improvement"
        elif change < SMALL_CHANGE:
            outcome.verdict = "no real change"
        else:
            outcome.verdict = "worse"
        when = f" (best at step {best_step})" if best_step is not None else ""
        outcome.headline = {
            "clear improvement": f"The model got clearly better on questions it never saw: held-out loss "
                                 f"{before:.3f} → {reference:.3f}{when}, {outcome.change_percent:+.1f} %.",
            "small improvement": f"The model got a little better on questions it never saw: held-out loss "
                                 f"{before:.3f} → {reference:.3f}{when}, {outcome.change_percent:+.1f} %.",
            "no real change": f"No real change on questions it never saw: held-out loss {before:.3f} → "
                              f"{reference:.3f} ({outcome.change_percent:+.1f} %, within the noise).",
            "worse": f"The model got worse on questions it never saw: held-out loss {before:.3f} → "
                     f"{reference:.3f} ({outcome.change_percent:+.1f} %).",
        }[outcome.verdict]
    elif reference is not None:
        outcome.headline = f"Held-out loss at the end: {reference:.3f} (the untouched model was not measured)."
    else:
        outcome.headline = (f"The run {state} at step {step}; no held-out evaluation was made, so there is no "
                            "number to say whether it learned (set a held-out fraction and eval steps).")
    # Train loss going up while the held-out loss goes down: tiny, noisy batches; trust the held-out number.
    if len(trains) >= 4 and outcome.verdict in ("clear improvement", "small improvement"):
        first = sum(loss for _, loss in trains[: max(1, len(trains) // 4)]) / max(1, len(trains) // 4)
        last = sum(loss for _, loss in trains[-max(1, len(trains) // 4):]) / max(1, len(trains) // 4)
        if last > first * 1.1:
            outcome.notes.append("The training-loss curve rose while the held-out loss fell: with small batches each "
                                 "step sees a few examples, so the training loss jumps with how hard those happen "
                                 "to be. The held-out loss is measured on the same examples every time: trust it.")
    # The forgetting check (core.forgetting), once Evaluate or `evaluate` has made it.
    from core.forgetting import load_forgetting

    forgetting = load_forgetting(run_dir)
    if forgetting is not None:
        outcome.notes.append(forgetting.sentence())
    if outcome.preference and outcome.verdict in ("worse", "no real change"):
        outcome.next_steps.append("Give it more pairs (vote on a few dozen more answers in Chat's blind A/B mode) or "
                                  "train more steps; check that the chosen answers really are the better ones.")
    elif outcome.verdict == "worse":
        outcome.next_steps.append("Lower the learning rate (e.g. halve it) or train fewer steps, then compare again.")
    elif outcome.verdict == "no real change":
        outcome.next_steps.append("Train longer (more steps or epochs) or raise the learning rate a little.")
    if state in ("finished", "stopped") and outcome.verdict != "worse":
        outcome.next_steps.append("Chat with it to read its answers next to the base model's.")
        outcome.next_steps.append("Vote on its answers in Chat's blind A/B mode to see whether you prefer them."
                                  if outcome.preference else "Evaluate it for BLEU/ROUGE on the held-out questions.")
        outcome.next_steps.append("Export it to use it elsewhere (adapter, merged model, GGUF for llama.cpp/Ollama).")
    if state == "stopped":
        outcome.next_steps.insert(0, "Resume continues from the last checkpoint.")
    return outcome


def _times(count: int) -> str:
    return "once" if count == 1 else "twice" if count == 2 else f"{count} times"


def _judge_preferences(outcome: RunOutcome, records: list[dict], before: float | None,
                       after: float | None) -> bool:
    """Verdict and headline of a DPO run from its held-out reward accuracy and margin (the ``{"kind":
    "preference", "split": "eval"}`` lines of metrics.jsonl), or from its training batches when no pairs were
    held out. False when the run logged no rewards after step 0 (the caller falls back to the loss)."""
    lines = [r for r in records if r.get("kind") == "preference" and int(r.get("step") or 0) > 0
             and _finite(r.get("reward_accuracy")) is not None and _finite(r.get("reward_margin")) is not None]
    held_out = [r for r in lines if r.get("split") == "eval"]
    chosen = held_out or [r for r in lines if r.get("split") != "eval"]
    if not chosen:
        return False
    last = chosen[-1]
    accuracy, margin = float(last["reward_accuracy"]), float(last["reward_margin"])
    pairs = int(_finite(last.get("pairs")) or 0) or None
    outcome.reward_accuracy, outcome.reward_margin = accuracy, margin
    outcome.reward_pairs, outcome.reward_split = (pairs if held_out else None), ("eval" if held_out else "train")
    numbers = f"reward accuracy {accuracy:.2f}, margin {margin:+.2f}"
    if held_out and pairs:
        wins = round(accuracy * pairs)
        where = f"On {pairs} held-out pair{'s' if pairs != 1 else ''}"
        share = f"your chosen answer {_times(wins)} out of {pairs} ({numbers})"
    elif held_out:
        where, share = "On the held-out pairs", f"your chosen answer in {accuracy:.0%} of them ({numbers})"
    else:
        where, share = "On its training pairs", f"your chosen answer in {accuracy:.0%} of them ({numbers})"
    if accuracy >= CLEAR_ACCURACY and margin > 0:
        outcome.verdict = "clear improvement"
        outcome.headline = f"{where} it now prefers {share}: it learned your preferences."
    elif accuracy > 0.5:
        # Most pairs went the right way; a mean margin at or below 0 means a few went far the wrong way.
        outcome.verdict = "small improvement"
        outcome.headline = f"{where} it now prefers {share}: it leans towards your preferences."
    elif accuracy < 0.5:
        outcome.verdict = "worse"
        outcome.headline = f"{where} it prefers only {share}: it did not take on your preferences."
    else:
        outcome.verdict = "no real change"
        outcome.headline = f"{where} it prefers {share}: no better than a coin toss."
    if not held_out:
        outcome.verdict = ""  # training pairs only: no evidence about answers it never saw
        outcome.headline += (" No pairs were held out, so this says nothing about questions it never saw "
                             "(set a held-out fraction).")
    if before is not None and after is not None:
        outcome.notes.append(f"Held-out DPO loss {before:.3f} → {after:.3f} (it starts at ln 2 = 0.693, where the "
                             "model has no preference of its own yet; lower is better).")
    outcome.notes.append("Reward accuracy: the share of pairs where training made the chosen answer gain more "
                         "probability than the rejected one, compared with where the model started (0.5 is chance). "
                         "Margin: by how much on average (beta × the difference in log-probability gained).")
    return True


def format_outcome(outcome: RunOutcome) -> str:
    """The outcome as a few lines of text (CLI)."""
    lines = [outcome.headline]
    if outcome.perplexity_before is not None and outcome.perplexity_after is not None:
        lines.append(f"  perplexity {outcome.perplexity_before:.1f} → {outcome.perplexity_after:.1f} "
                     "(how many words the model hesitates between, on average; lower is better)")
    lines += [f"  note: {note}" for note in outcome.notes]
    lines += [f"  next: {step}" for step in outcome.next_steps]
    return "\n".join(lines)
