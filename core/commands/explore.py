"""CLI: exploring hyperparameters: ``lr-find``, ``sweep``.

    python main.py lr-find --config examples/quickstart.yaml
    python main.py sweep --config examples/quickstart.yaml --vary training.learning_rate=1e-4,3e-4,1e-3 --max-steps 20
    python main.py sweep --resume WORKSPACE/sweeps/SWEEP_ID

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
    """Add the lr-find and sweep sub-commands."""
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
