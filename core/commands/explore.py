"""CLI: exploring hyperparameters: ``lr-find``, ``sweep``, ``search`` (Optuna).

    python main.py lr-find --config examples/quickstart.yaml
    python main.py sweep --config examples/quickstart.yaml --vary training.learning_rate=1e-4,3e-4,1e-3 --max-steps 20
    python main.py sweep --resume WORKSPACE/sweeps/SWEEP_ID
    python main.py search --config run.yaml --param training.learning_rate=1e-5..1e-2:log --trials 8 --max-steps 40

Ctrl+C stops the finder at the next step (weights are restored; nothing is written) or the sweep's current
run at the next step (a checkpoint is saved; ``sweep --resume`` continues).
"""

from __future__ import annotations

from pathlib import Path

from core.cancel import StopToken
from core.cancel import stop_on_ctrl_c as _stop_on_ctrl_c
from core.commands.train import _quiet_library_progress_bars, build_config
from core.consent import add_consent_arguments, record_cli_consent


def _add_config_arguments(p) -> None:
    p.add_argument("--config", metavar="FILE", help="a run configuration YAML (e.g. examples/quickstart.yaml)")
    p.add_argument("--output", metavar="DIR", help="workspace folder (default: the app's)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="any setting, e.g. --set training.batch_size=4 (repeatable)")
    add_consent_arguments(p)


def register(subparsers) -> None:
    """Add the lr-find, sweep and search sub-commands."""
    from core import lr_find

    p = subparsers.add_parser(
        "lr-find", help="find a learning rate (range test)",
        description="A short run on the configuration's model, method and data with the learning rate growing "
                    "exponentially; stops once the loss blows up, restores the weights, suggests a rate and says "
                    "why. Recorded in WORKSPACE/lr-finds/.")
    _add_config_arguments(p)
    p.add_argument("--start-lr", type=float, default=lr_find.DEFAULT_START_LR, help="first rate (default %(default)g)")
    p.add_argument("--end-lr", type=float, default=lr_find.DEFAULT_END_LR, help="last rate (default %(default)g)")
    p.add_argument("--steps", type=int, default=lr_find.DEFAULT_STEPS,
                   help="steps from the first to the last rate (default %(default)d)")
    p.add_argument("--max-seconds", type=float, help="end the test after this long (the curve so far is used)")
    p.set_defaults(func=run_lr_find)

    p = subparsers.add_parser(
        "sweep", help="train variants of one or two settings and rank them",
        description="Every combination of the --vary values becomes a real run (an ordinary run folder with a "
                    "shared sweep id), trained one after another; then a leaderboard ranks them by best held-out "
                    "loss. The record is WORKSPACE/sweeps/SWEEP_ID/sweep.json.")
    _add_config_arguments(p)
    p.add_argument("--vary", action="append", default=[], metavar="SECTION.FIELD=V1,V2,...",
                   help="a setting and its values, e.g. training.learning_rate=1e-4,3e-4,1e-3 (up to two --vary)")
    p.add_argument("--max-steps", type=int, help="steps per variant (default: the configuration's)")
    p.add_argument("--resume", metavar="SWEEP", help="continue a sweep (its folder or sweep.json)")
    p.add_argument("--probe", action="append", default=None, metavar="PROMPT",
                   help="a prompt every variant answers while training; the leaderboard shows the answers side "
                        "by side (repeatable, up to 5)")
    p.set_defaults(func=run_sweep_command)

    p = subparsers.add_parser(
        "search", help="let Optuna choose settings over several trials (each a real run)",
        description="N trials proposed by Optuna's TPE sampler; a median pruner stops trials whose held-out loss "
                    "is worse than the median of the finished ones at the same step. The study is stored in "
                    "WORKSPACE/sweeps/SEARCH_ID/study.db; --resume continues it after a stop or a crash.")
    _add_config_arguments(p)
    p.add_argument("--param", action="append", default=[], metavar="SECTION.FIELD=LOW..HIGH[:log] | A,B,C",
                   help="a setting to search: a range, e.g. training.learning_rate=1e-5..1e-2:log, or choices, "
                        "e.g. method.lora_r=4,8,16 (repeatable)")
    p.add_argument("--trials", type=int, default=8, help="number of trials (default %(default)d)")
    p.add_argument("--max-steps", type=int, help="steps per trial (default: the configuration's)")
    p.add_argument("--resume", metavar="SEARCH", help="continue a search (its folder or sweep.json)")
    p.set_defaults(func=run_search_command)


def _config(args):
    # build_config reads the shortcut flags of `train`; these commands only have --config and --set.
    for flag in ("model", "data", "method", "max_steps", "learning_rate", "epochs", "batch_size", "map", "name"):
        if not hasattr(args, flag):
            setattr(args, flag, None)
    cfg = build_config(args)
    for kind in record_cli_consent(args, cfg.model.name_or_path):
        setattr(cfg.model, kind, True)
    cfg.validate()
    return cfg


def run_sweep_command(args) -> int:
    from core.commands.progress import TrainingConsole
    from core.sweep import create_sweep, describe_leaderboard, parse_vary, read_sweep, run_sweep

    _quiet_library_progress_bars()
    if args.resume:
        sweep = read_sweep(args.resume)
    else:
        from core.config import ConfigError
        from core.paths import default_workspace

        if not args.vary:
            raise ConfigError("--vary", "name a setting and its values, e.g. --vary training.learning_rate=1e-4,3e-4")
        cfg = _config(args)
        varies = [parse_vary(text) for text in args.vary]
        workspace = Path(args.output) if args.output else default_workspace()
        sweep = create_sweep(cfg, varies, workspace, max_steps=args.max_steps, probes=args.probe)
    total = len(sweep["variants"])
    print(f"sweep {sweep['id']}: {total} variants ({sweep['path']})")

    def on_variant(variant, event) -> None:
        if event == "started":
            index = sweep["variants"].index(variant) + 1
            print(f"--- variant {index}/{total}: {variant['label']} ({variant['run_dir']})", flush=True)

    stop = StopToken()
    with _stop_on_ctrl_c(stop, "stopping this variant after this step, saving a checkpoint (sweep --resume "
                               "continues; Ctrl+C again to abort)"):
        sweep = run_sweep(sweep, stop=stop, sinks_for=lambda variant: [TrainingConsole()], on_variant=on_variant)
    print(describe_leaderboard(sweep["leaderboard"]))
    for row in sweep["leaderboard"]:
        for answer in row["probe_answers"]:
            print(f"  {row['label']} @ step {answer['step']}: {answer['prompt']!r} -> {answer['answer']!r}")
    print(f"sweep {sweep['state']}: {sweep['path']}")
    return 0 if sweep["state"] == "finished" else 130


def run_search_command(args) -> int:
    from core.commands.progress import TrainingConsole
    from core.search import create_search, parse_param, search
    from core.sweep import describe_leaderboard, read_sweep

    _quiet_library_progress_bars()
    if args.resume:
        record = read_sweep(args.resume)
    else:
        from core.paths import default_workspace

        cfg = _config(args)
        params = [parse_param(text) for text in args.param]
        workspace = Path(args.output) if args.output else default_workspace()
        record = create_search(cfg, params, workspace, n_trials=args.trials, max_steps=args.max_steps)
    print(f"search {record['id']}: {record['n_trials']} trials ({record['path']})")

    def on_trial(variant, event) -> None:
        print(f"--- {variant['label']}: {event} ({variant['run_dir']})", flush=True)

    stop = StopToken()
    with _stop_on_ctrl_c(stop, "stopping this trial after this step, saving a checkpoint (search --resume "
                               "continues; Ctrl+C again to abort)"):
        record = search(record, stop=stop, sinks_for=lambda variant: [TrainingConsole()], on_trial=on_trial)
    print(describe_leaderboard(record["leaderboard"]))
    if record.get("best_trial"):
        best = record["best_trial"]
        print(f"best: trial {best['number']} held-out loss {best['value']:.4f} with {best['params']}")
    print(f"search {record['state']}: {record['path']}")
    return 0 if record["state"] == "finished" else 130


def run_lr_find(args) -> int:
    from core.lr_find import LRFindProgress, describe, find_learning_rate

    cfg = _config(args)
    _quiet_library_progress_bars()
    last_line = {"text": ""}

    def progress(fraction, message) -> None:
        text = str(message)
        if isinstance(message, LRFindProgress):
            # one line every ~10 steps: the table at the end shows the curve
            if len(message.points) % 10 and len(message.points) != 1:
                return
        if text != last_line["text"]:
            last_line["text"] = text
            print(text, flush=True)

    stop = StopToken()
    with _stop_on_ctrl_c(stop, "stopping the finder after this step (Ctrl+C again to abort)"):
        result = find_learning_rate(cfg, workspace=Path(args.output) if args.output else None,
                                    start_lr=args.start_lr, end_lr=args.end_lr, num_steps=args.steps,
                                    max_seconds=args.max_seconds, stop=stop, progress=progress)
    for line in describe(result):
        print(line)
    return 0
