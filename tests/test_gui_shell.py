"""The studio window: pages, navigation, settings, closing, the screenshot CLI and start-up without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from gui_guard import qt_guard, temp_settings  # noqa: F401  (autouse fixtures)

pytestmark = pytest.mark.gui
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def window(qtbot, isolated_home):
    from gui.main_window import MainWindow

    win = MainWindow(autoload=False)
    qtbot.addWidget(win)
    yield win
    win._closing_confirmed = True
    win.close()


def test_window_has_pages_and_navigation_switches(window, qtbot):
    assert window.page_keys[:2] == ["data", "model"]
    assert window.sidebar.count() == len(window.page_keys)
    window.show()
    window.show_page("model")
    assert window.stack.currentWidget() is window.pages["model"]
    window.sidebar.setCurrentRow(0)
    assert window.current_page_key() == "data"
    assert window.stack.currentWidget() is window.pages["data"]
    with pytest.raises(KeyError):
        window.show_page("nope")
    assert "cores" in window.device_label.text() or "GPU" in window.device_label.text()
    assert window.ram_label.text().startswith("RAM ")


def test_missing_page_module_is_skipped(monkeypatch):
    from gui import main_window

    spec = main_window.PageSpec("ghost", "Ghost", "data", "gui.pages.ghost_page_does_not_exist", "GhostPage")
    assert main_window.load_page_class(spec) is None


def test_settings_persist_config_and_page(qtbot, isolated_home):
    from gui.main_window import MainWindow

    first = MainWindow(autoload=False)
    qtbot.addWidget(first)
    first.state.update("data", "source", "sample:food")
    first.state.update("training", "learning_rate", 5e-5)
    first.show_page("model")
    first.close()
    second = MainWindow(autoload=False)
    qtbot.addWidget(second)
    assert second.state.config.data.source == "sample:food"
    assert second.state.config.training.learning_rate == 5e-5
    assert second.current_page_key() == "model"
    second.close()


def test_close_while_training_asks_and_shuts_down(window, qtbot, monkeypatch):
    class BusyPage:
        is_busy = True
        stopped_with = None

        def shutdown(self, timeout_ms):
            BusyPage.stopped_with = timeout_ms
            BusyPage.is_busy = False
            return True

    asked = []
    window.pages["train"] = BusyPage()
    monkeypatch.setattr(window, "confirm_close", lambda busy: asked.append(busy) or False)
    window.show()
    window.close()
    assert asked == [["train"]] and window.isVisible()  # refused: still open, training untouched
    assert BusyPage.stopped_with is None
    monkeypatch.setattr(window, "confirm_close", lambda busy: asked.append(busy) or True)
    window.close()
    assert not window.isVisible() and BusyPage.stopped_with is not None
    del window.pages["train"]


def test_screenshot_cli_writes_png_without_torch_before_first_paint(tmp_path):
    out = tmp_path / "shot.png"
    report = tmp_path / "startup.json"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", FINETUNE_STUDIO_HOME=str(tmp_path / "home"),
               XDG_CONFIG_HOME=str(tmp_path / "config"))
    proc = subprocess.run(
        [sys.executable, "main.py", "--screenshot", str(out), "--page", "model", "--no-autoload",
         "--startup-report", str(report)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    facts = json.loads(report.read_text())
    assert facts["torch_imported_at_first_paint"] is False
    assert facts["seconds_to_first_paint"] > 0  # the figure itself is measured in bench/
