"""Headless command line: ``finetune-studio <command> ...`` (``python main.py`` in a checkout). No Qt here."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from core.commands import COMMAND_MODULES
from core.errors import Cancelled, StudioError

logger = logging.getLogger(__name__)

def _program_name() -> str:
    """How the user started us, for usage lines: the installed command or the checkout's main.py."""
    started_as = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "python main.py" if started_as == "main.py" else "finetune-studio"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_program_name(),
        description="FineTune Studio: fine-tune causal language models. Run without arguments for the app.",
    )
    parser.add_argument("--screenshot", metavar="FILE", help="render the main window to a PNG and exit")
    parser.add_argument("--page", metavar="NAME", help="page to show (with --screenshot)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.register(subparsers)
    return parser


def _details(log_path) -> str:
    """The end of an error line: where the full story (traceback included) is."""
    return f" (details: {log_path})" if log_path else ""


def main(argv: list[str] | None = None) -> int:
    from core.environment import prepare_environment
    from core.logs import setup_logging

    prepare_environment()  # before any command imports transformers / TRL (no telemetry, no tokenizer threads)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    command = " ".join(str(part) for part in (args.command, getattr(args, f"{args.command}_command", None)) if part)
    log_path = setup_logging(f"command `{command}`")
    try:
        code = int(args.func(args) or 0)
    except Cancelled as exc:
        logger.info("`%s` stopped: %s", command, exc)
        print(f"stopped: {exc}", file=sys.stderr)
        return 130
    except StudioError as exc:
        # A message the user can act on; the traceback goes to the log only.
        logger.error("`%s` failed: %s", command, exc, exc_info=True)
        print(f"error: {exc}{_details(log_path)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        logger.info("`%s` interrupted (Ctrl+C)", command)
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # A bug or an unexpected failure: one line here, the traceback in the log file to send with a report.
        logger.exception("`%s` failed unexpectedly", command)
        print(f"error: {type(exc).__name__}: {exc}{_details(log_path)}", file=sys.stderr)
        return 1
    if code not in (0, 130):
        logger.warning("`%s` ended with exit status %d", command, code)
        if log_path:
            print(f"details: {log_path}", file=sys.stderr)
    else:
        logger.info("`%s` ended with exit status %d", command, code)
    return code
