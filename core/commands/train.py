"""CLI: ``train``, ``resume`` and ``runs``.

    python main.py train --config examples/quickstart.yaml
    python main.py train --model bundled:SmolLM2-135M-Instruct --data sample:trivia --method lora --max-steps 60
    python main.py train --config run.yaml --probe "What is the capital of France?" --probe-every 20
    python main.py resume RUN_DIR [--checkpoint N]
    python main.py runs [--workspace DIR]

Ctrl+C during training asks the run to stop at the next step (a checkpoint is saved, the run can be
resumed); a second Ctrl+C aborts at once.
"""

from __future__ import annotations

import time
from pathlib import Path

from core.cancel import StopToken
from core.cancel import stop_on_ctrl_c as _stop_on_ctrl_c
from core.commands.data import add_map_argument, column_map_from_args
from core.config import RunConfig
from core.consent import add_consent_arguments, record_cli_consent

# (flag, dotted config field) for the shortcut flags of `train`
_FLAG_FIELDS = (
    ("model", "model.name_or_path"),
    ("data", "data.source"),
    ("method", "method.method"),
    ("max_steps", "training.max_steps"),
    ("learning_rate", "training.learning_rate"),
    ("epochs", "training.num_epochs"),
    ("batch_size", "training.batch_size"),
    ("start_from", "method.start_from"),
    ("beta", "method.dpo_beta"),
)


def register(subparsers) -> None:
    """Add the train, resume and runs sub-commands."""
    p = subparsers.add_parser("train", help="fine-tune a model (headless)",
                              description="Fine-tune a model. Settings come from --config, then the flags, "
                                          "then --set (later ones win).")
    p.add_argument("--config", metavar="FILE", help="a run configuration YAML (e.g. examples/quickstart.yaml)")
    p.add_argument("--model", help="base model: bundled:SmolLM2-135M-Instruct, a folder, or a Hub id")
    p.add_argument("--data", help="dataset: a file, a folder, a Hub id, or sample:<topic>")
    add_map_argument(p)
    p.add_argument("--method", choices=("lora", "full", "prefix", "qlora", "dpo"),
                   help="dpo: preference tuning (LoRA + DPO) on prompt/chosen/rejected data, e.g. Chat's A/B votes")
    p.add_argument("--start-from", metavar="RUN_DIR",
                   help="dpo: train this SFT run's adapter further (default: the base model with new adapters)")
    p.add_argument("--beta", type=float, help="dpo: how close the model stays to its reference (default 0.1)")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--epochs", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--output", metavar="DIR", help="workspace folder holding the runs (default: the app's)")
    p.add_argument("--name", help="run name (the folder name)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="any setting, e.g. --set training.eval_steps=10 (repeatable)")
    p.add_argument("--probe", action="append", default=None, metavar="PROMPT",
                   help="a prompt answered greedily at step 0 and while training, to watch the model change "
                        "(repeatable, up to 5; answers go to the console and metrics.jsonl)")
    p.add_argument("--probe-every", type=int, metavar="N",
                   help="answer the probes every N steps (default: at each checkpoint save)")
    p.add_argument("--probe-tokens", type=int, metavar="N",
                   help="new tokens per probe answer (default: 24)")
    add_consent_arguments(p)
    p.set_defaults(func=run_train)

    p = subparsers.add_parser("resume", help="continue a stopped or interrupted run",
                              description="Continue a run from its latest (or the chosen) complete checkpoint.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--checkpoint", type=int, metavar="N", help="resume from checkpoint-N instead of the latest")
    add_consent_arguments(p)
    p.set_defaults(func=run_resume)

    p = subparsers.add_parser("runs", help="list training runs", description="List the runs of a workspace.")
    p.add_argument("--workspace", metavar="DIR", help="workspace folder (default: the app's)")
    p.set_defaults(func=run_list)


def build_config(args) -> RunConfig:
    """The RunConfig from --config, the shortcut flags and --set, in that order."""
    from core.config import ConfigError

    cfg = RunConfig.load(args.config) if args.config else RunConfig()
    for flag, dotted in _FLAG_FIELDS:
        value = getattr(args, flag, None)
        if value is not None:
            cfg.set_value(dotted, value)
    if getattr(args, "map", None):
        # --map adds to (and overrides) the column mapping of --config, role by role
        cfg.data.column_map = {**(cfg.data.column_map or {}), **column_map_from_args(args.map)}
    if getattr(args, "name", None):
        cfg.name = args.name
    for item in getattr(args, "set", None) or []:
        dotted, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(dotted or item, "--set expects SECTION.FIELD=VALUE, e.g. training.eval_steps=10")
        cfg.set_value(dotted.strip(), value)
    return cfg


def stop_on_ctrl_c(stop: StopToken, console=None):
    """First Ctrl+C: request a stop at the next step (a checkpoint is saved once training has started;
    before that there is nothing to save, and the notice says so). Second: abort."""

    def notice() -> str:
        if getattr(console, "phase", "training") in ("training", "evaluating", "saving"):
            return "stopping after this step and saving a checkpoint (Ctrl+C again to abort)"
        return "stopping before training starts: nothing is trained yet, so no checkpoint (Ctrl+C again to abort)"

    return _stop_on_ctrl_c(stop, notice)


def _report(result) -> int:
    from core.tracking import describe, read_tracking

    print(f"run folder: {result.run_dir}")
    print(f"{result.state}: {result.message}")
    if result.final_dir is not None:
        print(f"final model: {result.final_dir}")
    for line in describe(read_tracking(result.run_dir)):
        print(line)
    from core.outcome import format_outcome, summarize_outcome

    try:  # the end of the run in plain words: held-out loss before -> after, what it means, what next
        print(format_outcome(summarize_outcome(result.run_dir)))
    except (OSError, ValueError) as exc:  # a summary is a courtesy: never fail a finished run over it
        print(f"(no summary: {exc})")
    return 0 if result.state == "finished" else 130


def _quiet_library_progress_bars() -> None:
    """The console sink is the progress display; the libraries' own tqdm bars would garble it."""
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()


def run_train(args) -> int:
    from core.commands.progress import TrainingConsole
    from core.training import train

    cfg = build_config(args)
    for kind in record_cli_consent(args, cfg.model.name_or_path):
        setattr(cfg.model, kind, True)  # the run records what it needed; the consent itself stays on this machine
    cfg.validate()
    _quiet_library_progress_bars()
    probe_kwargs = {}
    if getattr(args, "probe", None):
        probe_kwargs["probes"] = args.probe
    elif getattr(args, "probe_every", None) is not None or getattr(args, "probe_tokens", None) is not None:
        from core.config import ConfigError

        raise ConfigError("--probe-every" if args.probe_every is not None else "--probe-tokens",
                          "needs at least one --probe PROMPT")
    if getattr(args, "probe_every", None) is not None:
        probe_kwargs["probe_every"] = args.probe_every
    if getattr(args, "probe_tokens", None) is not None:
        probe_kwargs["probe_max_new_tokens"] = args.probe_tokens
    stop = StopToken()
    console = _ErrorsOnce(TrainingConsole())
    with stop_on_ctrl_c(stop, console):
        check_data_before_the_run(cfg, console, stop)
        result = train(cfg, workspace=Path(args.output) if args.output else None, sinks=[console],
                       stop=stop, **probe_kwargs)
    return _report(result)


def check_data_before_the_run(cfg: RunConfig, console, stop: StopToken) -> None:
    """Refuse unusable data with one message before a run folder exists: reading and mapping first
    (core.data.require_trainable: no model needed), then tokenizing with the model's tokenizer
    (core.data.prepare_dataset, whose result the run then loads from the cache instead of redoing it)."""
    from core.data import prepare_dataset, require_trainable
    from core.metrics import StatusEvent
    from core.models import load_tokenizer

    def progress(fraction: float | None, message: str) -> None:
        console.on_status(StatusEvent("running", message, fraction=fraction, phase="tokenizing"))

    console.on_status(StatusEvent("running", "checking the data", phase="loading"))
    if cfg.method.method == "dpo":
        from core.preference import check_trl, load_preference_pairs

        check_trl()
        load_preference_pairs(cfg.data, stop=stop)  # preference pairs; TRL tokenizes them in the run
        return
    require_trainable(cfg.data, stop=stop)
    tokenizer = load_tokenizer(cfg.model)
    prepare_dataset(cfg.data, tokenizer, cfg.training.max_length, stop=stop, progress=progress)


class _ErrorsOnce:
    """The console without its "failed: ..." (or "diverged: ...") line: the CLI prints the error itself, once
    (core.cli). It also remembers the run's phase, for the Ctrl+C notice."""

    def __init__(self, console):
        self._console = console
        self.phase: str | None = None

    def on_status(self, event) -> None:
        if event.phase:
            self.phase = event.phase
        if event.state not in ("failed", "diverged"):
            self._console.on_status(event)

    def __getattr__(self, name):
        return getattr(self._console, name)


def run_resume(args) -> int:
    from core.commands.progress import TrainingConsole
    from core.runs import load_run_config
    from core.training import resume

    if getattr(args, "trust_remote_code", False) or getattr(args, "allow_pickle", False):
        record_cli_consent(args, load_run_config(args.run_dir).model.name_or_path)
    _quiet_library_progress_bars()
    stop = StopToken()
    console = _ErrorsOnce(TrainingConsole())
    with stop_on_ctrl_c(stop, console):
        result = resume(Path(args.run_dir), checkpoint=args.checkpoint, sinks=[console], stop=stop)
    return _report(result)


def format_runs_table(summaries) -> str:
    """The `runs` table: name, status, steps, best eval loss, method, date."""
    header = ("NAME", "STATUS", "STEPS", "BEST EVAL", "METHOD", "DATE")
    rows = [header]
    for run in summaries:
        steps = f"{run.global_step}/{run.total_steps}" if run.total_steps else str(run.global_step)
        best = f"{run.best_eval_loss:.4f}" if run.best_eval_loss is not None else "-"
        date = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.created)) if run.created else "-"
        rows.append((run.path.name, run.state, steps, best, run.method, date))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows)


def run_list(args) -> int:
    from core.paths import default_workspace
    from core.runs import list_runs

    workspace = Path(args.workspace) if args.workspace else default_workspace()
    summaries = list_runs(workspace)
    if not summaries:
        print(f"no runs in {workspace}")
        return 0
    print(format_runs_table(summaries))
    return 0
