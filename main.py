"""FineTune Studio entry point: no arguments opens the app; sub-commands run headless."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("--screenshot", "--page", "gui"):
        try:
            from gui.app import run_app
        except ModuleNotFoundError as exc:  # the GUI package is not installed/built yet
            print(f"The app window is not available ({exc}); see `python main.py --help`.", file=sys.stderr)
            from core.cli import main as cli_main

            return cli_main(["--help"])
        return run_app(argv[1:] if argv and argv[0] == "gui" else argv)
    from core.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
