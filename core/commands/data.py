"""`python main.py data inspect|check|export`: look at a dataset as the model will see it, check it for
duplicates, leakage and other problems before training, or write it out."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.config import SCHEMAS, TEMPLATES, ConfigError, DataConfig
from core.consent import add_consent_arguments, record_cli_consent
from core.errors import DataError


def register(subparsers) -> None:
    """Add the ``data`` command and its ``inspect`` / ``check`` / ``export`` sub-commands."""
    parser = subparsers.add_parser("data", help="inspect or export a dataset",
                                   description="Look at a dataset the way the model will see it.")
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: (parser.print_help(), 0)[1])

    inspect = actions.add_parser("inspect", help="show the detected format, examples and token lengths")
    _common(inspect)
    inspect.add_argument("--examples", type=int, default=3, help="how many rendered examples to show (default 3)")
    inspect.set_defaults(func=run_inspect)

    check = actions.add_parser(
        "check", help="find duplicates, leakage, empty answers, placeholders and extreme lengths",
        description="Check a dataset before training: exact and near-duplicate questions, held-out examples that "
                    "also occur in the training split, empty or one-character answers, one answer repeated across "
                    "many rows, template placeholders, extreme lengths. Each finding lists its rows; leave them out "
                    "of a run with --set 'data.drop_rows=[...]' (the file is never modified).")
    _common(check)
    check.add_argument("--near", type=float, default=0.8, metavar="SIMILARITY",
                       help="how similar two questions must be to count as near duplicates (0-1, default 0.8)")
    check.add_argument("--test-fraction", type=float, default=0.1,
                       help="held-out share, as in the run (default 0.1): the leakage check uses the same split")
    check.add_argument("--split-seed", type=int, default=42, help="seed of the held-out split, as in the run")
    check.set_defaults(func=run_check)

    export = actions.add_parser("export", help="write the rendered examples (text + prompt/answer) as JSONL")
    _common(export)
    export.add_argument("--output", "-o", required=True, metavar="FILE.jsonl", help="where to write")
    export.set_defaults(func=run_export)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="FILE_OR_NAME",
                        help="a .jsonl/.json/.csv/.parquet file, a dataset folder, a Hub id, or sample:<topic>")
    parser.add_argument("--template", choices=TEMPLATES, default="classic", help="prompt template (default classic)")
    parser.add_argument("--custom-template", help="the template text when --template custom")
    parser.add_argument("--schema", choices=SCHEMAS, default="auto", help="column format (default: detect)")
    add_map_argument(parser)
    parser.add_argument("--preference", choices=("refuse", "chosen_only"), default="refuse",
                        help="preference data (DPO chosen/rejected, KTO label): refuse it (default), or use the "
                             "chosen answers / the rows labelled true only")
    parser.add_argument("--drop-rows", metavar="ROWS", default="",
                        help="rows to leave out, e.g. 3,17,40-45 (row numbers as the reports show them)")
    parser.add_argument("--model", help="model whose tokenizer counts tokens (default: the bundled model; "
                                        "`data check` counts characters without --model)")
    parser.add_argument("--max-length", type=int, default=256, help="max length in tokens (default 256)")
    parser.add_argument("--split", default="train", help="split of a Hub dataset or dataset folder")
    parser.add_argument("--skip-bad-rows", action="store_true", help="skip unusable rows instead of stopping")
    parser.add_argument("--keep-whitespace", action="store_true", help="do not collapse whitespace")
    parser.add_argument("--all-tokens", action="store_true", help="train on the whole text, not only the answers")
    add_consent_arguments(parser)  # for --model's tokenizer


def add_map_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--map ROLE=COLUMN`` option shared by ``train`` and the ``data`` commands."""
    parser.add_argument("--map", action="append", default=[], metavar="ROLE=COLUMN",
                        help="which column plays a role, e.g. --map question=tip_question --map answer=tip_answer "
                             "(repeatable; a nested JSON key is written parent.child; a mapping always wins over "
                             "detection). Roles: question, answer, instruction, input, output, prompt, completion, "
                             "text, messages, system, chosen, rejected, label")


def column_map_from_args(items: list[str]) -> dict[str, str]:
    """{role: column} from ``--map ROLE=COLUMN`` items; ConfigError (naming data.column_map) for a bad one."""
    column_map = {}
    for item in items or []:
        role, sep, column = item.partition("=")
        if not sep or not role.strip() or not column.strip():
            raise ConfigError("data.column_map", f"--map expects ROLE=COLUMN, got {item!r}")
        column_map[role.strip()] = column.strip()
    return column_map


def parse_rows(text: str) -> list[int]:
    """Row numbers from ``3,17,40-45`` (ranges inclusive)."""
    rows: set[int] = set()
    for part in (text or "").replace(" ", "").split(","):
        if not part:
            continue
        first, dash, last = part.partition("-")
        try:
            low, high = int(first), int(last) if dash else int(first)
        except ValueError:
            raise ConfigError("data.drop_rows", f"--drop-rows expects row numbers like 3,17,40-45, got {part!r}") from None
        if low < 1 or high < low:
            raise ConfigError("data.drop_rows", f"--drop-rows: {part!r} is not a row number or range")
        rows.update(range(low, high + 1))
    return sorted(rows)


def data_config_from_args(args) -> DataConfig:
    """The DataConfig the command-line options describe."""
    cfg = DataConfig(source=args.source, hub_split=args.split, schema=args.schema,
                     column_map=column_map_from_args(args.map), template=args.template,
                     skip_bad_rows=args.skip_bad_rows, clean_whitespace=not args.keep_whitespace,
                     train_on_answers_only=not args.all_tokens, preference=args.preference,
                     drop_rows=parse_rows(args.drop_rows))
    if getattr(args, "test_fraction", None) is not None:
        cfg.test_fraction = args.test_fraction
    if getattr(args, "split_seed", None) is not None:
        cfg.split_seed = args.split_seed
    if args.custom_template is not None:
        cfg.custom_template = args.custom_template.replace("\\n", "\n")
    return cfg


def load_tokenizer_for(model: str | None, *, required: bool) -> tuple[object | None, str]:
    """(tokenizer or None, a note for the output). Without --model, the bundled model's tokenizer when
    core.models can provide it; a missing tokenizer is an error only when ``required``."""
    from core.config import ModelConfig

    try:
        from core.models import load_tokenizer
    except ImportError as exc:
        load_tokenizer = None
        reason = f"core.models is not available ({exc})"
    if load_tokenizer is None:
        if model and Path(model).is_dir():
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(model), ""
        if required or model:
            raise DataError(f"cannot load a tokenizer: {reason}")
        return None, f"note: {reason}; token counts are approximate (whitespace words)"
    model_cfg = ModelConfig() if not model else ModelConfig(name_or_path=model)
    try:
        return load_tokenizer(model_cfg), ""
    except Exception as exc:  # the bundled model may be missing/unconvertible: inspecting data still works
        if required or model:
            raise
        return None, (f"note: the bundled model's tokenizer could not be loaded ({exc}); "
                      "token counts are approximate (whitespace words)")


def run_inspect(args) -> int:
    cfg = data_config_from_args(args)
    record_cli_consent(args, args.model)
    tokenizer, note = load_tokenizer_for(args.model, required=cfg.template == "chat")
    from core.data import inspect_report

    if note:
        print(note)
    print(inspect_report(cfg, tokenizer, n_examples=args.examples, max_length=args.max_length))
    return 0


def run_check(args) -> int:
    """``data check``: the findings of core.data.run_checks, with row numbers and how to leave them out."""
    cfg = data_config_from_args(args)
    if not 0 < args.near <= 1:
        raise ConfigError("--near", f"expects a similarity between 0 and 1, got {args.near}")
    tokenizer = None
    if args.model or cfg.template == "chat":
        record_cli_consent(args, args.model)
        tokenizer, _ = load_tokenizer_for(args.model, required=True)
    from core.data import run_checks

    report = run_checks(cfg, tokenizer, args.max_length if tokenizer is not None else None, near_threshold=args.near)
    print(report.text())
    return 0


def run_export(args) -> int:
    from core.data import load_records, prompt_for, render_segments, save_jsonl

    cfg = data_config_from_args(args)
    record_cli_consent(args, args.model)
    output = Path(args.output).expanduser()
    source_path = Path(cfg.source).expanduser()
    if source_path.exists() and (output.resolve() == source_path.resolve()
                                 or (source_path.is_dir() and source_path.resolve() in output.resolve().parents)):
        raise DataError("the output would overwrite or go inside the input; choose another --output",
                        source=str(output))
    tokenizer = None
    if cfg.template == "chat" or args.model:
        tokenizer, _ = load_tokenizer_for(args.model, required=True)
    raw, guess, records, lines = load_records(cfg)
    rows = []
    for record, line in zip(records, lines, strict=True):
        segments = render_segments(record, cfg, tokenizer)
        rows.append({"text": "".join(s.text for s in segments), "prompt": prompt_for(record, cfg, tokenizer),
                     "answer": record["answer"], "source_line": line})
    save_jsonl(rows, output)
    print(f"wrote {len(rows)} examples ({guess.schema}, template {cfg.template}) to {output}"
          + (f"; skipped {len(raw.bad_rows)} bad rows" if raw.bad_rows else ""), file=sys.stderr)
    return 0
