"""pytest-qt: the learning-rate finder dialog and the Compare-settings dialog on the tiny model, from the
Train page's buttons: curves drawn, suggestion used, three variants raced, leaderboard, winner to the form."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("pytestqt")

from gui_guard import qt_guard, temp_settings  # noqa: E402,F401  (autouse fixtures)

from core.config import RunConfig  # noqa: E402
from gui.state import StudioState  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture()
def tiny_state(tiny_model_dir, tmp_path, isolated_home) -> StudioState:
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} plus {i}?", "answer": f"It is {2 * i}."}) + "\n"
                            for i in range(32)), encoding="utf-8")
    cfg = RunConfig(name="tiny-gui")
    cfg.model.name_or_path = str(tiny_model_dir)
    cfg.data.source = str(data)
    cfg.data.test_fraction = 0.25
    t = cfg.training
    t.max_steps, t.batch_size, t.max_length = 30, 4, 64
    t.eval_steps = t.save_steps = 2
    t.warmup_ratio, t.device, t.max_eval_examples, t.learning_rate = 0.0, "cpu", 0, 1e-3
    return StudioState(cfg, workspace=tmp_path / "ws")


def test_lr_finder_dialog_plots_and_uses_its_suggestion(qtbot, tiny_state, tmp_path):
    from gui.pages.train_page import TrainPage

    page = TrainPage(tiny_state, preload_delay_ms=None)
    qtbot.addWidget(page)
    dialog = page.open_lr_finder(autostart=False)
    dialog.steps_spin.setValue(30)
    with qtbot.waitSignal(dialog.finderFinished, timeout=300_000) as finished:
        dialog.start()
    result = finished.args[0]
    assert not isinstance(result, Exception), result
    xs, ys = dialog.raw_curve.getData()
    assert len(xs) == len([p for p in result.points if p.loss == p.loss])
    assert list(xs) == sorted(xs) and xs[-1] > xs[0] * 100  # the rate grew
    if result.suggestion is None:
        assert not dialog.use_button.isEnabled() and dialog.reason_label.text()
        pytest.skip(f"the tiny model's curve gave no suggestion: {result.reason}")
    assert dialog.suggestion_line.isVisible() and "Why:" in dialog.reason_label.text()
    dialog.grab().save(str(tmp_path / "lr-find.png"))
    with qtbot.waitSignal(dialog.learningRateChosen, timeout=5000) as chosen:
        dialog.use_button.click()
    assert tiny_state.config.training.learning_rate == pytest.approx(chosen.args[0])
    assert page.form.isEnabled()


def test_compare_dialog_races_three_rates_and_trains_the_winner(qtbot, tiny_state, tmp_path):
    from core.runs import list_runs
    from gui.pages.train_page import TrainPage

    page = TrainPage(tiny_state, preload_delay_ms=None)
    qtbot.addWidget(page)
    page.probe_editor.enabled_box.setChecked(True)
    assert page.probe_editor.add_prompt("What is 2 plus 2?")
    dialog = page.open_compare()
    dialog.set_variation(0, "training.learning_rate", "1e-4, 1e-3, 1e-2")
    dialog.steps_spin.setValue(4)
    with qtbot.waitSignal(dialog.sweepFinished, timeout=600_000) as finished:
        assert dialog.start()
        # the variants are runs at once, queued, on every page
        assert len(list_runs(tiny_state.workspace)) == 3
        assert dialog.stop_button.isEnabled() and not dialog.start_button.isEnabled()
    sweep = finished.args[0]
    assert isinstance(sweep, dict) and sweep["state"] == "finished", sweep
    assert {run.state for run in list_runs(tiny_state.workspace)} == {"finished"}
    # one curve per variant, labelled with its value
    assert dialog.table.rowCount() == 3
    labels = {dialog.table.item(row, 1).text() for row in range(3)}
    assert labels == {"lr 1e-4", "lr 1e-3", "lr 1e-2"}
    for curves in dialog._curves.values():
        xs, _ys = curves["eval"].getData()
        assert xs is not None and len(xs) >= 2
    legend = [dialog.legend_row.itemAt(i).widget().text() for i in range(dialog.legend_row.count())
              if dialog.legend_row.itemAt(i).widget() is not None]
    assert legend == ["■ lr 1e-4", "■ lr 1e-3", "■ lr 1e-2"]
    assert dialog.table.item(0, 0).text() == "1"
    # the Train page's probe, answered by each variant, side by side (plain text)
    assert dialog.probe_table.isVisibleTo(dialog) and dialog.probe_table.columnCount() == 4
    assert dialog.probe_table.item(0, 0).text() == "What is 2 plus 2?"
    dialog.grab().save(str(tmp_path / "compare.png"))
    winner = sweep["leaderboard"][0]
    qtbot.waitUntil(lambda: not dialog.is_busy, timeout=30_000)  # the worker's thread has ended
    assert dialog.winner_button.isEnabled() and dialog.start_button.isEnabled()
    with qtbot.waitSignal(dialog.winnerChosen, timeout=5000):
        dialog.winner_button.click()
    cfg = tiny_state.config
    assert cfg.training.learning_rate == winner["values"]["training.learning_rate"]
    assert cfg.training.max_steps == 30  # the form's own length, longer than the comparison's 4 steps
