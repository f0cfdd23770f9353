"""CLI: ``generate``, ``evaluate`` and ``export``.

    python main.py generate RUN_DIR_OR_MODEL --prompt "Who wrote Hamlet?" [--base] [--max-new-tokens N]
                            [--sample --temperature T] [--checkpoint N]
    python main.py evaluate RUN_DIR [--data SRC] [--n N] [--per-example] [--no-forgetting]
    python main.py export RUN_DIR (--merged | --adapter | --script | --gguf [--quant f16|q8_0]) --output PATH

Ctrl+C during generation or evaluation stops it cleanly.
"""

from __future__ import annotations

import sys

from core.cancel import StopToken, stop_on_ctrl_c
from core.commands.progress import ProgressBar
from core.consent import add_consent_arguments, models_loaded_by, record_cli_consent


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
    add_consent_arguments(p)
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
    p.add_argument("--no-forgetting", action="store_true",
                   help="skip the general-ability (forgetting) check on the bundled probe set")
    p.add_argument("--per-example", action="store_true",
                   help="also list training and held-out examples by loss (hardest, easiest, went up) with their "
                        "row numbers: a very high loss after training often means a wrong label")
    add_consent_arguments(p)
    p.set_defaults(func=run_evaluate)

    p = subparsers.add_parser("export", help="export a run's adapter, merged model or a training script",
                              description="Export a trained run for use outside the app.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    kind = p.add_mutually_exclusive_group(required=True)
    kind.add_argument("--adapter", action="store_true", help="the adapter + tokenizer + README (small)")
    kind.add_argument("--merged", action="store_true", help="the adapter merged into the base (plain transformers)")
    kind.add_argument("--script", action="store_true", help="a standalone Python script re-running the training")
    kind.add_argument("--gguf", action="store_true",
                      help="a .gguf file (adapter merged in) + an Ollama Modelfile, for llama.cpp / Ollama / LM Studio")
    p.add_argument("--output", required=True, metavar="PATH", help="a new folder (or the .py path for --script)")
    p.add_argument("--checkpoint", metavar="N", help="export checkpoint-N instead of final/")
    p.add_argument("--quant", choices=("f16", "q8_0"), default="f16",
                   help="GGUF weight type: f16 (default, exact) or q8_0 (half the size)")
    p.add_argument("--base-model", metavar="HUB_ID",
                   help="the base model to name in the export (default: the run's base; the bundled model is "
                        "named by its Hub id; give this when the run's base is a local folder)")
    add_consent_arguments(p)
    p.set_defaults(func=run_export)


def _ctrl_c_stops(stop: StopToken):
    """First Ctrl+C asks to stop at the next token / step; a second one aborts."""
    return stop_on_ctrl_c(stop, "stopping... (Ctrl+C again to abort)")


def _record_consent(args, source, checkpoint) -> None:
    """--trust-remote-code / --allow-pickle: recorded for the models this command loads (base + full weights)."""
    if getattr(args, "trust_remote_code", False) or getattr(args, "allow_pickle", False):
        record_cli_consent(args, *models_loaded_by(source, checkpoint))


def run_generate(args) -> int:
    from core.config import GenerationConfig
    from core.generation import ModelSession, stop_reason

    _record_consent(args, args.source, args.checkpoint)
    session = open_checked_session(ModelSession, args.source, args.checkpoint, args.device)
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
    hint = " (more with --max-new-tokens)" if result.stopped_by == "max_tokens" else ""
    print(f"[{result.n_tokens} tokens, {first}{result.tokens_per_second:.1f} tokens/s, stopped by "
          f"{result.stopped_by}: {stop_reason(result.stopped_by, gen.max_new_tokens)}{hint}]", file=sys.stderr)
    return 130 if result.stopped_by == "cancelled" else 0


def run_evaluate(args) -> int:
    from core.config import GenerationConfig
    from core.evaluation import data_config_for, evaluate_run
    from core.glossary import metric_legend
    from core.runs import load_run_config

    _record_consent(args, args.run_dir, args.checkpoint)
    cfg = load_run_config(args.run_dir)
    data_cfg = data_config_for(args.data, cfg) if args.data else None
    gen = GenerationConfig(**{**vars(cfg.generation), "do_sample": False})
    if args.max_new_tokens is not None:
        gen.max_new_tokens = args.max_new_tokens
    stop = StopToken()
    with _ctrl_c_stops(stop), ProgressBar("evaluating") as progress:
        report = evaluate_run(args.run_dir, data_cfg=data_cfg, n=args.n, gen_cfg=gen, progress=progress, stop=stop,
                              checkpoint=args.checkpoint, forgetting=not args.no_forgetting)
    per_example = None
    if args.per_example:
        from core.example_loss import rank_examples

        with _ctrl_c_stops(stop), ProgressBar("per-example loss") as progress:
            per_example = rank_examples(args.run_dir, checkpoint=args.checkpoint, progress=progress, stop=stop)
    print(f"evaluated on {report.split} ({report.n_loss_examples} examples for the loss, "
          f"{len(report.rows)} questions answered)")
    print(report.table())
    print()
    print("What the scores mean:")
    print(metric_legend())
    if report.forgetting is not None:
        from core.forgetting import format_forgetting

        print()
        print(format_forgetting(report.forgetting))
    if per_example is not None:
        print()
        print(per_example.table())
        print(f"per-example losses: {per_example.path}")
    print()
    print(f"report: {report.report_path}")
    return 0


def open_checked_session(session_class, source, checkpoint, device):
    """A ModelSession on ``source`` whose weight files were checked first: a damaged one (cut short by a kill
    or a full disk) is one line naming the file and the previous complete checkpoint, never a traceback."""
    from core.checkpoints import CheckpointError, check_checkpoint, damaged_hint
    from core.errors import StudioError
    from core.generation import resolve_source

    resolved = resolve_source(source, checkpoint)
    command = "python main.py generate"
    if resolved.weights_dir is not None:
        check_checkpoint(resolved.weights_dir, for_resume=False, run_dir=resolved.run_dir, command=command)
    try:
        return session_class(source, checkpoint=checkpoint, device=device)
    except StudioError:
        raise
    except Exception as exc:  # noqa: BLE001 - damage the header check cannot see (inside the data)
        if resolved.weights_dir is None:
            raise
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{resolved.weights_dir}: cannot be loaded ({reason}). "
                              + damaged_hint(resolved.run_dir, resolved.weights_dir, command),
                              resolved.weights_dir) from exc


def run_export(args) -> int:
    from pathlib import Path

    from core.locks import RunLock
    from core.runs import is_run_dir

    # One process per run folder: an export does not read checkpoints a training is rotating away.
    lock = RunLock(args.run_dir, f"export {Path(args.run_dir).name}") if is_run_dir(args.run_dir) else None
    if lock is not None:
        lock.acquire()
    try:
        with ProgressBar("exporting") as progress:
            return _export(args, progress)
    finally:
        if lock is not None:
            lock.release()


def _export(args, progress) -> int:
    from core.export import base_model_reference, export_adapter, export_merged, export_script

    _record_consent(args, args.run_dir, None if args.script else args.checkpoint)
    if args.script:
        if args.checkpoint:
            print("note: --checkpoint does not apply to --script (it re-runs the whole training)", file=sys.stderr)
        path = export_script(args.run_dir, args.output, progress=progress)
        print(f"exported to {path}")
        return 0
    reference = base_model_reference(args.run_dir)
    if not reference.portable and not args.base_model:
        hint = f" (its config says it came from {reference.suggestion})" if reference.suggestion else ""
        print(f"warning: the base model is the local folder {reference.name_or_path}{hint}; the export records "
              "that path, which another machine does not have. Pass --base-model HUB_ID to name it instead.",
              file=sys.stderr)
    if args.gguf:
        from core.gguf_export import export_gguf

        result = export_gguf(args.run_dir, args.output, checkpoint=args.checkpoint, quant=args.quant,
                             base_model=args.base_model, progress=progress)
        print(f"exported to {result.folder}")
        print(f"  GGUF:      {result.gguf_path} ({result.gguf_path.stat().st_size / 2**20:.1f} MiB, {result.quant})")
        print(f"  Modelfile: {result.modelfile_path}")
        print(f"  Ollama:    cd {result.folder} && ollama create {result.ollama_name} -f Modelfile && "
              f"ollama run {result.ollama_name}")
        return 0
    if args.merged:
        path = export_merged(args.run_dir, args.output, checkpoint=args.checkpoint, base_model=args.base_model,
                             progress=progress)
    else:
        path = export_adapter(args.run_dir, args.output, checkpoint=args.checkpoint, base_model=args.base_model,
                              progress=progress)
    print(f"exported to {path}")
    return 0
