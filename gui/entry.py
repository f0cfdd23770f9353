"""The ``finetune-studio`` command: no arguments opens the app; sub-commands run headless.

It lives inside the ``gui`` package (not a top-level ``main`` module) so an installed wheel adds only
the project's own packages to site-packages; ``main.py`` in the repository is a thin wrapper around it.
"""

from __future__ import annotations

import sys

GUI_ARGUMENTS = ("--screenshot", "--page", "gui")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in GUI_ARGUMENTS:
        try:
            from gui.app import run_app
        except ModuleNotFoundError as exc:  # PySide6/pyqtgraph missing: the headless commands still work
            print(f"The app window is not available ({exc}); see `finetune-studio --help`.", file=sys.stderr)
            from core.cli import main as cli_main

            return cli_main(["--help"])
        return run_app(argv[1:] if argv and argv[0] == "gui" else argv)
    from core.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
