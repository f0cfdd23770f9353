"""Smart search: N trials chosen by Optuna, each a real run; hopeless trials stopped early.

The library's search, not a home-made one: a TPE sampler proposes the settings of each trial, a median
pruner stops a trial whose held-out loss at an evaluation is worse than the median of the finished trials
at the same step. The study lives in SQLite in the workspace (``WORKSPACE/sweeps/<id>/study.db``) next to
the sweep record (``sweep.json``, kind ``search``): ``search(resume=...)`` continues it after a stop or a
crash, finishing the interrupted trial from its run's checkpoint first. Trials are ordinary run folders
with the sweep id in their status, so they show on every page and in the same leaderboard as a sweep.

    python main.py search --config run.yaml --param training.learning_rate=1e-5..1e-2:log \
        --param method.lora_r=4,8,16 --trials 8 --max-steps 40
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import runs
from core.cancel import StopToken
from core.config import ConfigError, RunConfig
from core.errors import StudioError, TrainingError

logger = logging.getLogger(__name__)

STUDY_FILE = "study.db"


@dataclass(frozen=True)
class SearchParam:
    """One searched setting: a range (``low``..``high``, optionally on a log scale) or a list of choices."""

    field: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial: Any) -> Any:
        if self.choices:
            return trial.suggest_categorical(self.field, list(self.choices))
        if self._integer:
            return trial.suggest_int(self.field, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.field, float(self.low), float(self.high), log=self.log)

    @property
    def _integer(self) -> bool:
        section, _, name = self.field.partition(".")
        return isinstance(getattr(getattr(RunConfig(), section), name), int)


def parse_param(text: str) -> SearchParam:
    """``training.learning_rate=1e-5..1e-2:log`` (a range), ``method.lora_r=4,8,16`` (choices)."""
    dotted, sep, spec = text.partition("=")
    dotted, spec = dotted.strip(), spec.strip()
    if not sep or not spec:
        raise ConfigError("--param", f"expected SECTION.FIELD=LOW..HIGH[:log] or SECTION.FIELD=A,B,C (got {text!r})")
    probe = RunConfig()
    section, _, name = dotted.partition(".")
    if ".." in spec:
        bounds, _, scale = spec.partition(":")
        low_text, _, high_text = bounds.partition("..")
        probe.set_value(dotted, low_text.strip())
        low = getattr(getattr(probe, section), name)
        probe.set_value(dotted, high_text.strip())
        high = getattr(getattr(probe, section), name)
        if not (isinstance(low, (int, float)) and low < high):
            raise ConfigError(dotted, f"the range must go from a lower to a higher number (got {bounds})")
        if scale.strip() not in ("", "log"):
            raise ConfigError(dotted, f"unknown scale {scale!r} (only :log)")
        if scale.strip() == "log" and low <= 0:
            raise ConfigError(dotted, "a log scale needs a range above 0")
        return SearchParam(dotted, low=low, high=high, log=scale.strip() == "log")
    choices = []
    for part in spec.split(","):
        if part.strip():
            probe.set_value(dotted, part.strip())
            choices.append(getattr(getattr(probe, section), name))
    if len(choices) < 2:
        raise ConfigError(dotted, "give at least two choices, or a range LOW..HIGH")
    return SearchParam(dotted, choices=tuple(choices))


def _optuna():
    try:
        import optuna
    except ImportError:
        raise StudioError("smart search needs Optuna: `pip install finetune-studio[search]` "
                          "(or `pip install optuna`)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _study(sweep: dict, seed: int):
    optuna = _optuna()
    storage = f"sqlite:///{Path(sweep['path']).parent / STUDY_FILE}"
    return optuna.create_study(
        study_name=sweep["id"], storage=storage, load_if_exists=True, direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=sweep.get("startup_trials", 2), n_warmup_steps=0))


def _pruning_callback(trial: Any, outcome: dict, already: set[int] = frozenset()):
    from transformers import TrainerCallback

    class PruneHopeless(TrainerCallback):
        """Reports every held-out loss (after step 0) to the trial; stops the run when Optuna prunes it."""

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            step = int(state.global_step)
            loss = (metrics or {}).get("eval_loss")
            if (step <= 0 or step in already or not isinstance(loss, (int, float)) or not math.isfinite(loss)):
                return control  # step 0 is the untouched model (the same for every trial)
            trial.report(float(loss), step)
            if trial.should_prune():
                outcome["pruned_at"] = step
                outcome["pruned_loss"] = float(loss)
                control.should_training_stop = True
            return control

    return PruneHopeless()


def create_search(base: RunConfig, params: Sequence[SearchParam], workspace: str | os.PathLike, *,
                  n_trials: int, max_steps: int | None = None, first_trials: Sequence[dict] = (),
                  startup_trials: int = 2) -> dict:
    """A new search record (sweep.json, kind ``search``) and its Optuna study; no run starts yet.

    ``first_trials``: settings to try first ({field: value}), before the sampler's own proposals."""
    from core.sweep import new_sweep_id, sweep_path, variant_config, write_sweep

    if not params:
        raise ConfigError("--param", "name at least one setting to search, e.g. training.learning_rate=1e-5..1e-2:log")
    if not 1 <= n_trials <= 200:
        raise ConfigError("--trials", f"between 1 and 200 trials (got {n_trials})")
    base = base.copy()
    base.validate()
    variant_config(base, {}, max_steps)  # the shortened base must be valid
    workspace = Path(workspace)
    sweep_id = new_sweep_id().replace("sweep-", "search-")
    sweep = {"id": sweep_id, "kind": "search", "created": time.time(), "state": "queued", "base": base.to_dict(),
             "varies": [{"field": p.field, "low": p.low, "high": p.high, "log": p.log, "choices": list(p.choices)}
                        for p in params],
             "max_steps": max_steps, "n_trials": int(n_trials), "startup_trials": int(startup_trials),
             "variants": [], "leaderboard": [], "path": str(sweep_path(workspace, sweep_id))}
    write_sweep(sweep)
    study = _study(sweep, base.training.seed)
    for values in first_trials:
        study.enqueue_trial(dict(values))
    return sweep


def _params(sweep: dict) -> list[SearchParam]:
    return [SearchParam(v["field"], low=v.get("low"), high=v.get("high"), log=bool(v.get("log")),
                        choices=tuple(v.get("choices") or ())) for v in sweep["varies"]]


def search(sweep: dict | str | os.PathLike, *, stop: StopToken | None = None,
           sinks_for: Callable[[dict], Sequence[Any]] | None = None,
           on_trial: Callable[[dict, str], None] | None = None) -> dict:
    """Run (or continue) a search until it has ``n_trials`` trials or a stop is requested.

    A trial interrupted earlier (its run stopped or killed with the study's trial still open) continues
    from its run's checkpoint first. Each trial: Optuna proposes values (TPE), a run folder is queued and
    trained, every held-out loss is reported, and the median pruner may stop it early (the run then ends
    at that step, its status says "pruned"). Returns the updated record, leaderboard included."""
    from core.queue import enqueue
    from core.sweep import read_sweep, update_leaderboard, variant_config, variant_label, write_sweep

    optuna = _optuna()
    if not isinstance(sweep, dict):
        sweep = read_sweep(sweep)
    base = RunConfig.from_dict(sweep["base"])
    study = _study(sweep, base.training.seed)
    workspace = Path(sweep["path"]).parent.parent.parent
    params = _params(sweep)
    sweep["state"] = "running"
    write_sweep(sweep)
    TrialState = optuna.trial.TrialState

    def by_number(number: int) -> dict | None:
        return next((v for v in sweep["variants"] if v.get("trial") == number), None)

    def run_trial(trial: Any, variant: dict, already: set[int] = frozenset()) -> None:
        outcome: dict = {}
        run_dir = Path(variant["run_dir"])
        state = runs.read_status(run_dir).get("state")
        sinks = list(sinks_for(variant)) if sinks_for is not None else []
        callbacks = [_pruning_callback(trial, outcome, already)]
        if on_trial is not None:
            on_trial(variant, "started")
        from core import training
        from core.queue import claimed

        try:
            with claimed(run_dir) as mine:
                if not mine:  # the Runs page's queue trains it: the trial stays open, a later search() continues
                    variant["outcome"] = "elsewhere"
                    return
                if state in ("stopped", "interrupted") and runs.latest_checkpoint(run_dir) is not None:
                    result = training.resume(run_dir, sinks=sinks, stop=stop, extra_callbacks=callbacks)
                else:
                    result = training.train(runs.load_run_config(run_dir), run_dir=run_dir, sinks=sinks, stop=stop,
                                            extra_callbacks=callbacks)
        except (TrainingError, StudioError) as exc:
            logger.warning("search %s: trial %d failed: %s", sweep["id"], trial.number, exc)
            runs.write_status(run_dir, queue_pending=False)
            study.tell(trial, state=TrialState.FAIL)
            variant["outcome"] = "failed"
            return
        if result.state == "stopped":
            runs.write_status(run_dir, queue_pending=True)
            variant["outcome"] = "stopped"  # the trial stays open in the study: the next search() continues it
            return
        runs.write_status(run_dir, queue_pending=False)
        if "pruned_at" in outcome:
            message = (f"pruned at step {outcome['pruned_at']} (median pruner): held-out loss "
                       f"{outcome['pruned_loss']:.4f} was worse than the median of the finished trials there")
            runs.write_status(run_dir, message=message, pruned_at_step=outcome["pruned_at"])
            study.tell(trial, state=TrialState.PRUNED)
            variant["outcome"] = "pruned"
        else:
            best = result.best_eval_loss
            if best is None or not math.isfinite(best):
                study.tell(trial, state=TrialState.FAIL)
                variant["outcome"] = "no held-out loss"
            else:
                study.tell(trial, best)
                variant["outcome"] = "complete"
        if on_trial is not None:
            on_trial(variant, variant["outcome"])

    # 1. trials left open by a stop or a crash: continue their runs
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if stop is not None and stop.is_set:
            break
        variant = by_number(frozen.number)
        if variant is None or not Path(variant["run_dir"]).is_dir():
            study.tell(frozen.number, state=TrialState.FAIL)  # no run was created for it
            continue
        # steps reported before the interruption are not reported again (Optuna refuses repeats)
        run_trial(optuna.trial.Trial(study, frozen._trial_id), variant, set(frozen.intermediate_values))
        update_leaderboard(sweep)
    # 2. new trials until there are n_trials
    while not (stop is not None and stop.is_set):
        trials = study.get_trials(deepcopy=False)
        if len(trials) >= sweep["n_trials"] and not any(t.state == TrialState.RUNNING for t in trials):
            break
        if len(trials) >= sweep["n_trials"]:
            break
        trial = study.ask()
        values = {param.field: param.suggest(trial) for param in params}
        try:
            cfg = variant_config(base, values, sweep.get("max_steps"))
        except ConfigError as exc:
            logger.warning("search %s: trial %d proposed invalid settings: %s", sweep["id"], trial.number, exc)
            study.tell(trial, state=TrialState.FAIL)
            continue
        label = f"trial {trial.number}: {variant_label(values)}"
        cfg.name = f"{sweep['id']}-t{trial.number}"
        run_dir = enqueue(cfg, workspace, sweep_id=sweep["id"], sweep_variant=label, trial=trial.number)
        variant = {"label": label, "values": values, "run_dir": str(run_dir), "trial": trial.number}
        sweep["variants"].append(variant)
        write_sweep(sweep)
        run_trial(trial, variant)
        update_leaderboard(sweep)
    trials = study.get_trials(deepcopy=False)
    open_trials = any(t.state == TrialState.RUNNING for t in trials)
    sweep["state"] = "finished" if len(trials) >= sweep["n_trials"] and not open_trials else "stopped"
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        sweep["best_trial"] = {"number": study.best_trial.number, "value": study.best_value,
                               "params": study.best_params}
    sweep["trial_states"] = {str(t.number): t.state.name.lower() for t in trials}
    update_leaderboard(sweep)
    return sweep
