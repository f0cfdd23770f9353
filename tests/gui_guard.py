"""Test helpers for GUI tests: a temporary QSettings location and a guard against leaked threads/timers.

Use from a test module::

    from gui_guard import qt_guard, temp_settings  # noqa: F401  (autouse fixtures)
"""

from __future__ import annotations

import time
import weakref

import pytest


@pytest.fixture(autouse=True)
def temp_settings(tmp_path):
    """Point QSettings (IniFormat, user scope) at a temporary folder so tests never touch real settings."""
    from PySide6.QtCore import QSettings

    previous = QSettings.defaultFormat()
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path / "settings"))
    yield tmp_path / "settings"
    QSettings.setDefaultFormat(previous)


def _is_ours(obj) -> bool:
    module = type(obj).__module__ or ""
    return module.startswith("gui.") or module == "gui"


@pytest.fixture(autouse=True)
def qt_guard(qtbot, monkeypatch):
    """Fail a test that leaves a QThread running, or an active QTimer owned by one of our widgets.

    Threads: every QThread started during the test is recorded (QThread.start is wrapped). Timers: every
    QTimer whose parent is an object defined in ``gui.*``, among the application's top-level widgets.
    """
    from PySide6.QtCore import QThread, QTimer
    from PySide6.QtWidgets import QApplication

    started: list[weakref.ref] = []
    original_start = QThread.start

    def recording_start(self, *args, **kwargs):
        started.append(weakref.ref(self))
        return original_start(self, *args, **kwargs)

    monkeypatch.setattr(QThread, "start", recording_start)
    yield
    # A worker that just finished needs a moment for its thread's event loop to quit.
    deadline = time.monotonic() + 30.0  # generous: a loaded machine is slow, a leak never ends
    running = []
    while True:
        running = []
        for ref in started:
            thread = ref()
            try:
                if thread is not None and thread.isRunning():
                    running.append(thread.objectName() or repr(thread))
            except RuntimeError:  # the C++ object is already deleted: not running
                pass
        if not running or time.monotonic() > deadline:
            break
        qtbot.wait(20)
    active_timers = []
    for widget in QApplication.topLevelWidgets():
        for timer in widget.findChildren(QTimer):
            parent = timer.parent()
            if timer.isActive() and parent is not None and _is_ours(parent):
                active_timers.append(f"{type(parent).__name__}.{timer.objectName() or 'timer'}")
    assert not running, f"QThreads left running after the test: {running}"
    assert not active_timers, f"active QTimers owned by our widgets after the test: {active_timers}"
