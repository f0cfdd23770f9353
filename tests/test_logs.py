"""Logs a user can send: the rotating log file, the CLI's "details: <log>" on failure, the GUI's "Open log
folder", the CLI progress bars, and no silent broad ``except`` left in core/ or gui/."""

from __future__ import annotations

import ast
import io
import logging
import logging.handlers
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def fresh_logging():
    """Remove the studio's file handler after the test, so later tests do not write into this test's home."""
    yield
    from core import logs

    handler = logs._installed_handler()
    if handler is not None:
        logging.getLogger().removeHandler(handler)
        handler.close()


def test_log_file_is_in_the_app_data_folder_and_rotates(isolated_home, fresh_logging):
    from core.logs import log_file_path, setup_logging

    path = setup_logging("test")
    assert path == log_file_path() == isolated_home / "logs" / "finetune-studio.log"
    assert "test started: FineTune Studio" in path.read_text(encoding="utf-8")
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.handlers.RotatingFileHandler)
                and Path(h.baseFilename) == path]
    assert len(handlers) == 1 and handlers[0].maxBytes == 1_000_000 and handlers[0].backupCount == 3
    assert setup_logging("again") == path  # idempotent: still one handler
    assert sum(isinstance(h, logging.handlers.RotatingFileHandler) for h in logging.getLogger().handlers) == 1
    logging.getLogger("core.something").debug("a debug record from core")
    logging.getLogger("some.library").info("library chatter below WARNING stays out")
    text = path.read_text(encoding="utf-8")
    assert "a debug record from core" in text and "library chatter" not in text


def test_cli_failure_is_logged_with_traceback_and_prints_the_log_path(isolated_home, tmp_path, capsys,
                                                                      fresh_logging):
    from core.cli import main
    from core.logs import log_file_path

    code = main(["resume", str(tmp_path / "no-such-run")])
    assert code == 2
    err = capsys.readouterr().err
    log = log_file_path()
    assert err.strip().splitlines()[-1].endswith(f"(details: {log})")
    assert err.startswith("error: ") and "not a run folder" in err
    text = log.read_text(encoding="utf-8")
    assert "`resume` failed" in text and "not a run folder" in text
    assert "Traceback (most recent call last)" in text


def test_unexpected_cli_error_is_one_line_plus_the_log(isolated_home, capsys, monkeypatch, fresh_logging):
    from core.cli import main
    from core.commands import train as train_commands
    from core.logs import log_file_path

    def broken(args):
        raise RuntimeError("something nobody expected")

    monkeypatch.setattr(train_commands, "run_list", broken)
    assert main(["runs"]) == 1
    err = capsys.readouterr().err
    assert err == f"error: RuntimeError: something nobody expected (details: {log_file_path()})\n"
    text = log_file_path().read_text(encoding="utf-8")
    assert "`runs` failed unexpectedly" in text and 'raise RuntimeError("something nobody expected")' in text


def test_progress_bar_on_a_terminal_and_plain_lines_elsewhere():
    from core.commands.progress import ProgressBar

    stream = io.StringIO()
    with ProgressBar("exporting", stream=stream, terminal=True) as bar:
        bar(0.5, "converting weights")
        bar(1.0, "done")
    drawn = stream.getvalue()
    assert "exporting:  50%" in drawn and "exporting: 100%" in drawn and "done" in drawn

    stream = io.StringIO()
    with ProgressBar("tokenizing", stream=stream, terminal=False) as bar:
        for done in range(0, 101, 10):
            bar(done / 100, f"tokenizing: {done}/100 examples")
    lines = stream.getvalue().splitlines()
    # One line per stage, plus the last one: a log file is not flooded and has no carriage returns.
    assert lines == ["  0.0% tokenizing: 0/100 examples", "100.0% tokenizing: 100/100 examples"]


def _silent_handlers(source: str):
    """(line, exception type, has a comment) of except blocks that only `pass`."""
    tree = ast.parse(source)
    lines = source.splitlines()
    for node in ast.walk(tree):
        if isinstance(node, ast.ExceptHandler) and all(isinstance(b, ast.Pass) for b in node.body):
            kind = ast.unparse(node.type) if node.type else ""
            span = lines[node.lineno - 1:node.body[-1].end_lineno]
            yield node.lineno, kind, any("#" in line for line in span)


def test_no_silent_broad_excepts_in_core_and_gui():
    broad = {"", "Exception", "BaseException"}
    offenders = []
    for folder in ("core", "gui"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for line, kind, commented in _silent_handlers(path.read_text(encoding="utf-8")):
                names = {name.strip() for name in kind.strip("()").split(",")}
                if names & broad:
                    offenders.append(f"{path.relative_to(ROOT)}:{line}: except {kind or '(bare)'}: pass")
                elif not commented:
                    offenders.append(f"{path.relative_to(ROOT)}:{line}: except {kind}: pass without a comment "
                                     "saying why it is safe")
    assert not offenders, "silent excepts (log them, and say why going on is safe):\n" + "\n".join(offenders)



def test_training_console_draws_tokenizing_as_a_bar_on_a_terminal():
    from core.commands.progress import TrainingConsole
    from core.metrics import StatusEvent

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    console = TrainingConsole(stream=stream)
    for done in (10, 30, 50):
        console.on_status(StatusEvent("running", f"tokenizing: {done}/50 examples", fraction=done / 50))
    console.on_status(StatusEvent("running", "loading the model"))
    drawn = stream.getvalue()
    assert "tokenizing: 100%" in drawn and "50/50 examples" in drawn
    assert drawn.rstrip().endswith("running: loading the model")
