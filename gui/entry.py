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
        return _exit_now(run_app(argv[1:] if argv and argv[0] == "gui" else argv))
    from core.cli import main as cli_main

    return cli_main(argv)


def _exit_now(status: int) -> int:
    """End the process once the window has closed, skipping the interpreter's final teardown.

    Why: with PySide6 6.12 on Python 3.11 (where True/False are reference-counted), the last garbage
    collection at interpreter exit can abort with "bool_dealloc: deallocating True or False" (a reference
    count bug in a C extension, seen here depending only on which modules happen to be imported). Everything
    the app writes is written and closed by now; only logging and stdio still hold buffers, flushed first.
    """
    import logging
    import os

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken pipe: nothing more can be said through it
    os._exit(status)


if __name__ == "__main__":
    sys.exit(main())
