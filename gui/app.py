"""Start the studio: ``run_app(argv)`` opens the window; ``--screenshot FILE [--page NAME]`` renders it and exits.

Start-up stays light: only Qt, pyqtgraph and the Qt-free parts of ``core`` are imported here, so the
window paints before torch/transformers load (they load later in worker threads).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

_LAUNCHED_AT = time.perf_counter()
logger = logging.getLogger(__name__)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="finetune-studio", description="FineTune Studio window")
    parser.add_argument("--screenshot", metavar="FILE", help="render the window to a PNG and exit")
    parser.add_argument("--page", metavar="NAME", help="page to show first (data, model, train, ...)")
    parser.add_argument("--theme", choices=("light", "dark"), help="force a theme instead of the system one")
    parser.add_argument("--size", default="1280x800", help="window size for --screenshot (WxH)")
    parser.add_argument("--wait", type=float, default=120.0,
                        help="with --screenshot: seconds to wait for pages to finish loading")
    parser.add_argument("--no-autoload", action="store_true", help="do not load the last dataset/model on start")
    parser.add_argument("--startup-report", metavar="FILE",
                        help="write launch-to-first-paint time and whether torch was imported by then (JSON)")
    return parser.parse_args(argv)


def _pages_busy(window) -> bool:
    if window.tasks.is_busy:
        return True
    for page in window.pages.values():
        if getattr(page, "is_busy", False):
            return True
    return False


def _log_uncaught_exceptions() -> None:
    """Exceptions escaping a Qt slot (PySide6 hands them to sys.excepthook) or a thread reach the log file
    with their traceback, then the previous hook as before. Installed once per process."""
    if getattr(sys.excepthook, "_studio_logs", False):
        return
    previous_hook, previous_thread_hook = sys.excepthook, threading.excepthook

    def hook(kind, value, traceback) -> None:
        logger.critical("uncaught exception", exc_info=(kind, value, traceback))
        previous_hook(kind, value, traceback)

    def thread_hook(info) -> None:
        logger.critical("uncaught exception in thread %s", getattr(info.thread, "name", "?"),
                        exc_info=(info.exc_type, info.exc_value, info.exc_traceback))
        previous_thread_hook(info)

    hook._studio_logs = True  # type: ignore[attr-defined]
    sys.excepthook = hook
    threading.excepthook = thread_hook


def run_app(argv: list[str] | None = None) -> int:
    """Open the studio window (blocking until it closes); returns the exit status."""
    from core.logs import setup_logging

    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    setup_logging("app" + (" (screenshot)" if args.screenshot else ""))
    _log_uncaught_exceptions()
    from core.environment import prepare_environment

    prepare_environment()  # no telemetry, no tokenizer threads: before any page imports transformers
    if args.screenshot and "QT_QPA_PLATFORM" not in os.environ and not os.environ.get("DISPLAY") \
            and not os.environ.get("WAYLAND_DISPLAY") and sys.platform.startswith("linux"):
        os.environ["QT_QPA_PLATFORM"] = "offscreen"

    from PySide6.QtCore import QCoreApplication, QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    from gui import theme
    from gui.main_window import APPLICATION, ORGANIZATION, MainWindow

    QCoreApplication.setOrganizationName(ORGANIZATION)
    QCoreApplication.setApplicationName(APPLICATION)
    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "finetune-studio"])
    from gui import gc_guard

    gc_guard.install(app)  # cyclic garbage collection only while no model runs in another thread
    app.setWindowIcon(theme.app_icon())
    theme.apply_theme(app, args.theme)
    if not args.theme:
        theme.follow_system_theme(app)

    # A screenshot is quiet: no page starts unrequested background work (e.g. the train page's preload).
    window = MainWindow(autoload=not args.no_autoload, quiet=bool(args.screenshot))
    if args.page:
        try:
            window.show_page(args.page)
        except KeyError as exc:
            print(f"error: {exc.args[0]}", file=sys.stderr)
            return 2

    report: dict = {}

    def on_first_paint(at: float) -> None:
        report["seconds_to_first_paint"] = round(at - _LAUNCHED_AT, 3)
        report["torch_imported_at_first_paint"] = "torch" in sys.modules
        report["transformers_imported_at_first_paint"] = "transformers" in sys.modules
        if args.startup_report:
            Path(args.startup_report).write_text(json.dumps(report, indent=2), encoding="utf-8")

    window.firstPainted.connect(on_first_paint)

    if args.screenshot:
        try:
            width, height = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            print(f"error: --size must look like 1280x800, got {args.size!r}", file=sys.stderr)
            return 2
        window.resize(width, height)
        window.show()
        # Let the window paint, the pages start loading, then wait until they are idle.
        deadline = time.monotonic() + args.wait
        loop = QEventLoop()
        while time.monotonic() < deadline:
            QTimer.singleShot(100, loop.quit)
            loop.exec()
            if "seconds_to_first_paint" in report and not _pages_busy(window):
                break
        for _ in range(5):
            app.processEvents()
        out = Path(args.screenshot)
        out.parent.mkdir(parents=True, exist_ok=True)
        ok = window.grab().save(str(out))
        window._closing_confirmed = True  # a screenshot never trains; do not ask
        window.close()
        if not ok:
            print(f"error: could not write {out}", file=sys.stderr)
            return 1
        print(f"saved {out}")
        return 0

    window.show()
    code = int(app.exec())
    logger.info("app closed (exit status %d)", code)
    return code


if __name__ == "__main__":
    sys.exit(run_app())
