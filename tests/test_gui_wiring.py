"""Pages talk to each other through the main window: open a run from the Runs page, close while busy."""

from __future__ import annotations

import pytest
from gui_guard import qt_guard, temp_settings  # noqa: F401  (autouse fixtures)

pytestmark = pytest.mark.gui


@pytest.fixture()
def finished_run(tmp_path, tiny_model_dir):
    from core.config import RunConfig
    from core.training import train

    cfg = RunConfig(name="wired-run")
    cfg.model.name_or_path = str(tiny_model_dir)
    cfg.data.source = "sample:trivia"
    cfg.data.max_examples = 24
    cfg.data.template = "classic"
    cfg.training.max_steps = 4
    cfg.training.batch_size = 4
    cfg.training.learning_rate = 3e-3
    cfg.training.eval_steps = 2
    cfg.training.save_steps = 2
    cfg.training.max_length = 64
    result = train(cfg, workspace=tmp_path / "runs")
    assert result.state == "finished"
    return result.run_dir


def test_opening_a_run_brings_its_settings_and_curves_to_the_train_page(qtbot, isolated_home, finished_run):
    from gui.main_window import MainWindow

    win = MainWindow(autoload=False)
    qtbot.addWidget(win)
    assert win.state.config.name != "wired-run"
    win.pages["runs"].runOpened.emit(finished_run)
    assert win.current_page_key() == "train"
    assert win.state.config.name == "wired-run"
    assert win.state.config.training.learning_rate == pytest.approx(3e-3)
    train_page = win.pages["train"]
    assert train_page.current_run_dir == finished_run
    assert "finished at step 4 / 4" in train_page.progress_bar.format()
    win._closing_confirmed = True
    win.close()


def test_busy_pages_counts_every_page_with_background_work(qtbot, isolated_home, monkeypatch):
    from gui.main_window import MainWindow

    win = MainWindow(autoload=False)
    qtbot.addWidget(win)
    assert win.busy_pages() == []
    evaluate_page = win.pages["evaluate"]
    monkeypatch.setattr(type(evaluate_page), "is_busy", property(lambda self: True))
    assert win.busy_pages() == ["evaluate"]
    monkeypatch.undo()
    win._closing_confirmed = True
    win.close()
