"""Headless command line: ``finetune-studio <command> ...`` (``python main.py`` in a checkout). No Qt here."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from core.commands import COMMAND_MODULES
from core.errors import Cancelled, StudioError


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


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except Cancelled as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return 130
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
