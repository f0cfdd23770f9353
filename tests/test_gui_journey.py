"""A first-time user's whole journey in the real main window (sample data, tiny model): train from the Train
page, and without any refresh Chat, Evaluate and Runs list the run; the summary card says what changed on
held-out data; "Chat with it" / "Evaluate it" open those pages with the run selected; export says where it
wrote. A run started from the CLI in another process appears on the Runs page by itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from gui_guard import qt_guard, temp_settings  # noqa: F401  (autouse fixtures)

from core.config import RunConfig

pytestmark = pytest.mark.gui
ROOT = Path(__file__).resolve().parent.parent


def tiny_config(model_dir, max_steps=4) -> RunConfig:
    cfg = RunConfig(name="journey")
    cfg.model.name_or_path = str(model_dir)
    cfg.data.source = "sample:trivia"
    cfg.data.test_fraction = 0.1
    cfg.method.lora_r, cfg.method.lora_alpha = 4, 8
    t = cfg.training
    t.max_steps, t.batch_size, t.max_length = max_steps, 4, 64
    t.eval_steps, t.save_steps, t.logging_steps = 2, 2, 1
    t.warmup_ratio, t.device, t.save_total_limit = 0.0, "cpu", 0
    t.learning_rate = 1e-3
    return cfg


@pytest.fixture()
def window(qtbot, tiny_model_dir, tmp_path, isolated_home):
    from gui.main_window import MainWindow
    from gui.state import StudioState

    state = StudioState(tiny_config(tiny_model_dir), workspace=tmp_path / "runs")
    win = MainWindow(state, autoload=False, restore=False)
    qtbot.addWidget(win)
    win.resize(1280, 800)
    win.show()
    yield win
    assert win.shutdown(60000)


def combo_paths(combo) -> list[str]:
    return [combo.itemData(i) for i in range(combo.count()) if combo.itemData(i)]


def test_train_then_chat_evaluate_export_without_refreshing(window, qtbot, tmp_path):
    train, chat, evaluate, runs = (window.pages[key] for key in ("train", "chat", "evaluate", "runs"))
    assert combo_paths(chat.run_combo) == [] and evaluate.evaluate_blocker().startswith("No runs yet")
    window.show_page("train")
    with qtbot.waitSignal(train.runEnded, timeout=180000) as ended:
        assert train.start() is True
    result = ended.args[0]
    assert result.state == "finished", train.log_view.toPlainText()
    run_dir = str(result.run_dir)
    # No click on any refresh button: the shared workspace model brings the run to every page.
    qtbot.waitUntil(lambda: run_dir in combo_paths(chat.run_combo) and run_dir in combo_paths(evaluate.run_combo)
                    and any(str(p.path) == run_dir for p in runs._runs), timeout=10000)
    # The summary card reads the held-out loss before and after, in words.
    card = train.summary_card
    assert card.isVisible() and card.outcome is not None
    assert card.outcome.before_loss is not None and card.outcome.after_loss is not None
    assert "held-out loss" in card.headline.text() and "→" in card.headline.text()
    assert card.chat_button.isEnabled()

    card.chat_button.click()
    assert window.current_page_key() == "chat" and chat.run_combo.currentData() == run_dir
    window.show_page("train")
    card.evaluate_button.click()
    assert window.current_page_key() == "evaluate" and evaluate.run_combo.currentData() == run_dir
    assert evaluate.evaluate_button.isEnabled() and evaluate.evaluate_blocker() == ""
    window.show_page("train")
    card.export_button.click()
    assert window.current_page_key() == "runs" and [str(p) for p in runs.selected_paths()] == [run_dir]

    target = tmp_path / "exports" / "journey-adapter"
    runs.export_run(run_dir, "adapter", target)
    qtbot.waitUntil(lambda: not runs.is_busy, timeout=120000)
    assert runs.export_result_dialog is not None and runs.export_result_dialog.isVisible()
    assert str(target) in runs.export_result_text and "adapter_config.json" in runs.export_result_text
    assert (target / "adapter_config.json").is_file()
    runs.export_result_dialog.close()


def test_run_started_from_the_cli_appears_on_the_runs_page(window, qtbot, tiny_model_dir, tmp_path):
    runs, chat = window.pages["runs"], window.pages["chat"]
    window.show_page("runs")
    assert runs.table.rowCount() == 0
    config = tmp_path / "cli.yaml"
    tiny_config(tiny_model_dir, max_steps=2).save(config)
    process = subprocess.Popen([sys.executable, "main.py", "train", "--config", str(config), "--output",
                                str(tmp_path / "runs")], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        qtbot.waitUntil(lambda: runs.table.rowCount() == 1, timeout=120000)
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output
        # Its end (finished, with weights) reaches the pickers too, without a click.
        qtbot.waitUntil(lambda: len(combo_paths(chat.run_combo)) == 1 and
                        window.state.runs_model.runs[0].state == "finished", timeout=10000)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
