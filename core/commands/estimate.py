"""CLI: ``estimate`` (pre-flight memory and time) and ``launch`` (multi-process training).

    python main.py estimate --config run.yaml [--probe] [--steps 3]
    python main.py launch --processes 2 --config run.yaml [--accelerate-config FILE] [--output DIR]
"""

from __future__ import annotations

from core.cancel import StopToken, stop_on_ctrl_c
from core.config import RunConfig
from core.consent import add_consent_arguments, record_cli_consent


def register(subparsers) -> None:
    """Add the estimate and launch sub-commands."""
    p = subparsers.add_parser("estimate", help="predict a run's memory and time (optionally probe a few steps)",
                              description="Predict memory (weights, gradients, optimizer, activations, logits) "
                                          "and time of a run before starting it; --probe runs a few real steps "
                                          "to measure both.")
    p.add_argument("--config", metavar="FILE", help="a run configuration YAML (default: the defaults)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a setting, e.g. --set training.batch_size=4 (repeatable)")
    p.add_argument("--probe", action="store_true", help="also run a few real training steps and measure")
    p.add_argument("--steps", type=int, default=3, help="steps of the probe (default 3)")
    add_consent_arguments(p)
    p.add_argument("--processes", type=int, default=1, help="data-parallel processes (divides the steps)")
    p.add_argument("--no-data", action="store_true",
                   help="do not read the dataset (faster; assumes every batch is max length long)")
    p.set_defaults(func=run_estimate)

    p = subparsers.add_parser("launch", help="train with several processes (data parallel) via accelerate",
                              description="Run `train` in N processes with `accelerate launch`. Ctrl+C stops "
                                          "every process; the run saves a checkpoint first.")
    p.add_argument("--config", metavar="FILE", required=True, help="a run configuration YAML")
    p.add_argument("--processes", type=int, default=2, help="number of processes (default 2)")
    p.add_argument("--accelerate-config", metavar="FILE", help="an accelerate config file (accelerate config)")
    p.add_argument("--output", metavar="DIR", help="workspace folder holding the runs (default: the app's)")
    p.add_argument("--launcher", choices=("accelerate", "torchrun"), default="accelerate")
    add_consent_arguments(p)
    p.set_defaults(func=run_launch)


def _load(args) -> RunConfig:
    cfg = RunConfig.load(args.config) if args.config else RunConfig()
    for item in getattr(args, "set", []) or []:
        key, _, value = item.partition("=")
        cfg.set_value(key.strip(), value)
    record_cli_consent(args, cfg.model.name_or_path)
    cfg.validate()
    return cfg


def run_estimate(args) -> int:
    from core.estimate import dataset_stats_for, estimate, make_it_fit, probe

    cfg = _load(args)
    stats = None if args.no_data else dataset_stats_for(cfg)
    result = estimate(cfg, processes=args.processes, dataset_stats=stats)
    if args.probe:
        result = probe(cfg, steps=args.steps, base=result)
    print(result.table())
    if result.fits is False:
        print("\nTo make it fit:")
        for suggestion in make_it_fit(cfg, result):
            patch = " ".join(f"--set {key}={value}" for key, value in suggestion.patch.items())
            print(f"  {suggestion.title}: ~{suggestion.predicted_bytes / 1024**3:.2f} GiB ({suggestion.explanation})"
                  f"\n      {patch}")
    return 0


def run_launch(args) -> int:
    from core.launch import launch_distributed

    if getattr(args, "trust_remote_code", False) or getattr(args, "allow_pickle", False):
        record_cli_consent(args, RunConfig.load(args.config).model.name_or_path)  # the ranks read the store
    notice = "stopping all processes (a checkpoint is saved; Ctrl+C again to abort)"
    with stop_on_ctrl_c(StopToken(), notice) as stop:
        result = launch_distributed(args.config, processes=args.processes,
                                    accelerate_config=args.accelerate_config, workspace=args.output,
                                    stop=stop, on_line=lambda line: print(line, flush=True),
                                    launcher=args.launcher)
    print(f"{result.state}: {result.message}" + (f" ({result.run_dir})" if result.run_dir else ""))
    return 0 if result.state in ("finished", "stopped") else 1
