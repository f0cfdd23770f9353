"""The GUI's "Open log folder" (Help menu) shows the folder of the app's log file."""

from __future__ import annotations

import pytest
from gui_guard import qt_guard, temp_settings  # noqa: F401  (autouse fixtures)

pytestmark = pytest.mark.gui


def test_help_menu_opens_the_log_folder(qtbot, isolated_home, monkeypatch):
    from PySide6.QtGui import QDesktopServices

    from core.logs import log_dir
    from gui.main_window import MainWindow

    opened = []
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url.toLocalFile()) or True)
    window = MainWindow(autoload=False, restore=False)
    qtbot.addWidget(window)
    menus = {action.text().replace("&", ""): action.menu() for action in window.menuBar().actions()}
    actions = {action.text().replace("&", ""): action for action in menus["Help"].actions()}
    actions["Open log folder"].trigger()
    assert opened == [str(log_dir())] and log_dir().is_dir()
    window._closing_confirmed = True
    window.close()
