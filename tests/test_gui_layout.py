"""Every page fits at 1280×800 and 1024×768 with real content: no label, button or group title is cut.

Real content: a finished tiny run in the workspace (Train shows it with its summary card, Chat and Evaluate
list it, Runs shows it), the sample data analysed on the Data page. The check compares the pixels each text
needs (font metrics) with the room its widget has (tests/layout_check.py)."""

from __future__ import annotations

import pytest
from gui_guard import qt_guard, temp_settings  # noqa: F401  (autouse fixtures)
from layout_check import clipped_texts

from core.config import RunConfig

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory):
    from core.training import train

    cfg = RunConfig(name="layout")
    cfg.model.name_or_path = str(tiny_model_dir)
    cfg.data.source = "sample:trivia"
    cfg.data.test_fraction = 0.1
    cfg.method.lora_r, cfg.method.lora_alpha = 4, 8
    t = cfg.training
    t.max_steps, t.batch_size, t.max_length = 4, 4, 64
    t.eval_steps, t.save_steps, t.logging_steps = 2, 2, 1
    t.warmup_ratio, t.device, t.save_total_limit = 0.0, "cpu", 0
    workspace = tmp_path_factory.mktemp("layout-runs")
    result = train(cfg, workspace=workspace)
    assert result.state == "finished"
    return cfg, workspace, result.run_dir


@pytest.mark.parametrize("size", [(1280, 800), (1024, 768)], ids=["1280x800", "1024x768"])
def test_every_page_fits(qtbot, finished_run, size, isolated_home):
    from gui.main_window import MainWindow
    from gui.state import StudioState

    cfg, workspace, run_dir = finished_run
    state = StudioState(cfg.copy(), workspace=workspace)
    window = MainWindow(state, autoload=False, restore=False)
    qtbot.addWidget(window)
    window.resize(*size)
    window.show()
    qtbot.waitExposed(window)
    try:
        data = window.pages["data"]
        data.load_source("sample:trivia")
        qtbot.waitUntil(lambda: not data.is_busy and data.analysis is not None, timeout=60000)
        window.pages["train"].show_run(run_dir)
        problems = {}
        for key in window.page_keys:
            window.show_page(key)
            qtbot.wait(50)
            found = clipped_texts(window)
            if found:
                problems[key] = found
        assert not window.pages["train"].summary_card.isHidden()  # the card was part of the checked page
        assert not problems, "\n".join(f"{key}: {p}" for key, found in problems.items() for p in found)
    finally:
        assert window.shutdown(60000)


def test_the_check_sees_a_cut_label_and_button(qtbot):
    from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QWidget

    root = QWidget()
    qtbot.addWidget(root)
    row = QHBoxLayout(root)
    label = QLabel("A label far too long for forty pixels")
    label.setFixedWidth(40)
    button = QPushButton("A button far too long")
    button.setFixedWidth(40)
    fits = QLabel("ok")
    row.addWidget(label)
    row.addWidget(button)
    row.addWidget(fits)
    root.show()
    qtbot.waitExposed(root)
    problems = clipped_texts(root)
    assert len(problems) == 2 and "far too long for" in problems[0] and "A button" in problems[1]
