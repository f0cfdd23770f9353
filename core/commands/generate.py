"""CLI: ``generate``, ``evaluate`` and ``export``.

    python main.py generate RUN_DIR_OR_MODEL --prompt "Who wrote Hamlet?" [--base] [--max-new-tokens N]
                            [--sample --temperature T] [--checkpoint N]
    python main.py evaluate RUN_DIR [--data SRC] [--n N]
    python main.py export RUN_DIR (--merged | --adapter | --script) --output PATH

Ctrl+C during generation or evaluation stops it cleanly.
"""

from __future__ import annotations

import sys

from core.cancel import StopToken, stop_on_ctrl_c


def register(subparsers) -> None:
    """Add the generate, evaluate and export sub-commands."""
    p = subparsers.add_parser("generate", help="answer a prompt with a run's model or any model (streamed)",
                              description="Stream an answer to stdout. For a run folder the prompt is written in "
                                          "the run's template and the fine-tuned model answers (--base: the base "
                                          "model); for a model name/path the prompt is used as it is.")
    p.add_argument("source", metavar="RUN_DIR_OR_MODEL")
    p.add_argument("--prompt", required=True, help="the question (or raw text for a plain model)")
    p.add_argument("--base", action="store_true", help="answer with the base model instead of the fine-tuned one")
    p.add_argument("--checkpoint", metavar="N", help="use checkpoint-N of the run instead of final/")
    p.add_argument("--max-new-tokens", type=int, metavar="N")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, metavar="T")
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop string (repeatable)")
    p.add_argument("--raw", action="store_true", help="send the prompt as it is, without the run's template")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run_generate)

    p = subparsers.add_parser("evaluate", help="score a run against its base model and write a report",
                              description="Loss, perplexity, BLEU, ROUGE and exact match of the base and the "
                                          "fine-tuned model on the run's held-out data (or --data), plus "
                                          "run_dir/evaluation/report.html.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--data", metavar="SRC", help="evaluate on this dataset instead of the held-out split")
    p.add_argument("--n", type=int, default=20, help="how many questions both models answer (default 20)")
    p.add_argument("--checkpoint", metavar="N", help="evaluate checkpoint-N instead of final/")
    p.add_argument("--max-new-tokens", type=int, metavar="N")
    p.set_defaults(func=run_evaluate)

    p = subparsers.add_parser("export", help="export a run's adapter, merged model or a training script",
                              description="Export a trained run for use outside the app.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    kind = p.add_mutually_exclusive_group(required=True)
    kind.add_argument("--adapter", action="store_true", help="the adapter + tokenizer + README (small)")
    kind.add_argument("--merged", action="store_true", help="the adapter merged into the base (plain transformers)")
    kind.add_argument("--script", action="store_true", help="a standalone Python script re-running the training")
    p.add_argument("--output", required=True, metavar="PATH", help="a new folder (or the .py path for --script)")
    p.add_argument("--checkpoint", metavar="N", help="export checkpoint-N instead of final/")
    p.set_defaults(func=run_export)


def _ctrl_c_stops(stop: StopToken):
    """First Ctrl+C asks to stop at the next token / step; a second one aborts."""
    return stop_on_ctrl_c(stop, "stopping... (Ctrl+C again to abort)")


def _progress(fraction, message) -> None:
    percent = f"{fraction * 100:5.1f}% " if fraction is not None else ""
    print(f"{percent}{message}", file=sys.stderr)


def run_generate(args) -> int:
    from core.config import GenerationConfig
    from core.generation import ModelSession

    session = ModelSession(args.source, checkpoint=args.checkpoint, device=args.device)
    base = session.run_config.generation if session.run_config else GenerationConfig()
    gen = GenerationConfig(**vars(base))
    if args.max_new_tokens is not None:
        gen.max_new_tokens = args.max_new_tokens
    if args.sample:
        gen.do_sample = True
    if args.temperature is not None:
        gen.temperature = args.temperature
    if args.top_p is not None:
        gen.top_p = args.top_p
    if args.seed is not None:
        gen.seed = args.seed
    if args.stop:
        gen.stop_strings = list(args.stop)
    if args.base and not session.has_finetuned:
        print("note: this is a plain model; --base changes nothing", file=sys.stderr)

    def on_token(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    stop = StopToken()
    with _ctrl_c_stops(stop):
        result = session.generate(args.prompt, gen, use_adapter=not args.base, on_token=on_token, stop=stop,
                                  raw=args.raw)
    sys.stdout.write("\n")
    first = f"{result.first_token_seconds:.2f} s to first token, " if result.first_token_seconds is not None else ""
    print(f"[{result.n_tokens} tokens, {first}{result.tokens_per_second:.1f} tokens/s, stopped by "
          f"{result.stopped_by}]", file=sys.stderr)
    return 130 if result.stopped_by == "cancelled" else 0


def run_evaluate(args) -> int:
    from core.config import GenerationConfig
    from core.evaluation import data_config_for, evaluate_run
    from core.runs import load_run_config

    cfg = load_run_config(args.run_dir)
    data_cfg = data_config_for(args.data, cfg) if args.data else None
    gen = GenerationConfig(**{**vars(cfg.generation), "do_sample": False})
    if args.max_new_tokens is not None:
        gen.max_new_tokens = args.max_new_tokens
    stop = StopToken()
    with _ctrl_c_stops(stop):
        report = evaluate_run(args.run_dir, data_cfg=data_cfg, n=args.n, gen_cfg=gen, progress=_progress, stop=stop,
                              checkpoint=args.checkpoint)
    print(f"evaluated on {report.split} ({report.n_loss_examples} examples for the loss, "
          f"{len(report.rows)} questions answered)")
    print(report.table())
    print(f"report: {report.report_path}")
    return 0


def run_export(args) -> int:
    from core.export import export_adapter, export_merged, export_script

    if args.script:
        if args.checkpoint:
            print("note: --checkpoint does not apply to --script (it re-runs the whole training)", file=sys.stderr)
        path = export_script(args.run_dir, args.output, progress=_progress)
    elif args.merged:
        path = export_merged(args.run_dir, args.output, checkpoint=args.checkpoint, progress=_progress)
    else:
        path = export_adapter(args.run_dir, args.output, checkpoint=args.checkpoint, progress=_progress)
    print(f"exported to {path}")
    return 0
