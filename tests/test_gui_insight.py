"""Insight on the Train page: coach cards, checkpoint time-travel, run markers, probe strips, estimate panel,
"Run on" choice, and the multi-process metrics tailing (with a fake metrics file)."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("pytestqt")

from gui_guard import qt_guard, temp_settings  # noqa: E402,F401  (autouse fixtures)
from PySide6.QtGui import QColor  # noqa: E402

from core import runs  # noqa: E402
from core.config import RunConfig  # noqa: E402
from core.metrics import MetricPoint, ProbeResult  # noqa: E402
from gui.pages.train_page import TrainPage  # noqa: E402
from gui.state import StudioState  # noqa: E402
from gui.widgets.estimate_panel import EstimatePanel  # noqa: E402
from gui.widgets.probe_strip import CHANGED_BACKGROUND, ProbeEditor, ProbeStrip  # noqa: E402
from gui.workers import MetricsTail, TrainingWorker, record_to_event  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture()
def page(qtbot, tmp_path):
    cfg = RunConfig(name="insight")
    cfg.training.learning_rate = 2e-4
    state = StudioState(cfg, workspace=tmp_path / "runs")
    widget = TrainPage(state, preload_delay_ms=None)
    qtbot.addWidget(widget)
    widget.resize(1400, 900)
    yield widget
    assert widget.shutdown(30000)


def _fake_run(tmp_path, steps=(5, 10, 15), best_step=10, early=15):
    run_dir = tmp_path / "runs" / "fake"
    for step in steps:
        folder = run_dir / runs.CHECKPOINTS_DIR / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / runs.COMPLETE_MARKER).write_text("1\n")
    records = [MetricPoint("eval", 0, 20, eval_loss=3.0).to_dict()]
    for step in range(1, 16):
        records.append(MetricPoint("train", step, 20, loss=3.0 - step * 0.1, learning_rate=2e-4).to_dict())
        if step % 5 == 0:
            records.append(MetricPoint("eval", step, 20, eval_loss=2.8 - step * 0.01 if step != 15 else 2.9).to_dict())
    records.append(ProbeResult(0, 0, "Hi?", "hello there", 0.2).to_dict())
    records.append(ProbeResult(5, 0, "Hi?", "hello world", 0.4).to_dict())
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    RunConfig(name="fake").save(run_dir / "config.yaml")
    runs.write_status(run_dir, state="finished", global_step=15, best_step=best_step,
                      best_checkpoint=f"checkpoint-{best_step}", early_stopped_step=early)
    return run_dir


def test_coach_card_appears_once_and_its_button_patches_the_form(page):
    from core.coach import Coach

    page.coach = Coach(page.state.config)
    page._on_metric(MetricPoint("train", 1, 100, loss=2.0, learning_rate=2e-4))
    page._on_metric(MetricPoint("train", 2, 100, loss=math.nan, learning_rate=2e-4))
    page._on_metric(MetricPoint("train", 3, 100, loss=math.nan, learning_rate=2e-4))
    cards = page.coach_panel.cards
    assert cards, "a NaN loss must produce advice"
    rules = [card.advice.rule for card in cards]
    assert len(rules) == len(set(rules))  # each advice shown once
    card = next(c for c in cards if "training.learning_rate" in c.advice.suggestion)
    assert card.sentence.text() and card.button.text() == card.advice.action
    assert "step 2" in card.sentence.text() or "2" in card.advice.sentence
    new_lr = card.advice.suggestion["training.learning_rate"]
    assert new_lr < 2e-4
    card.button.click()
    assert page.state.config.training.learning_rate == pytest.approx(new_lr)
    assert page.form.editors["training.learning_rate"].read_value() == pytest.approx(new_lr)
    assert "applied" in card.applied_label.text()


def test_rising_loss_gives_divergence_advice(page):
    from core.coach import Coach

    page.coach = Coach(page.state.config)
    for step in range(1, 80):
        page._on_metric(MetricPoint("train", step, 200, loss=1.0 + step * 0.05, learning_rate=2e-4))
    assert page.coach_panel.cards
    assert any("learning_rate" in field for c in page.coach_panel.cards for field in c.advice.suggestion)


def test_checkpoint_click_offers_chat_with_the_checkpoint_at_or_before(page, tmp_path, qtbot):
    run_dir = _fake_run(tmp_path)
    page.show_run(run_dir)
    assert page.plots.checkpoint_steps == [5, 10, 15]
    assert page.checkpoint_for_step(12) == 10 and page.checkpoint_for_step(3) is None
    with qtbot.waitSignal(page.chatWithCheckpoint, timeout=1000) as caught:
        menu = page.offer_checkpoint_chat(12)
        action = menu.actions()[0]
        assert action.text() == "Chat with the model at checkpoint 10"
        action.trigger()
    menu.close()
    assert caught.args[0] == (run_dir, 10)
    assert page.offer_checkpoint_chat(2) is None
    # The plot maps a click position to the step: near x=10 on the loss curve -> step 10.
    page.plots.redraw()
    assert page.plots.step_near(10.2) == 10


def test_main_window_routes_checkpoint_to_chat_page(qtbot, tmp_path, monkeypatch):
    from gui.main_window import MainWindow

    window = MainWindow(StudioState(workspace=tmp_path / "runs"), autoload=False, restore=False)
    qtbot.addWidget(window)
    calls = []
    monkeypatch.setattr(type(window.pages["chat"]), "open_checkpoint",
                        lambda self, run_dir, step: calls.append((run_dir, step)))
    window.pages["train"].chatWithCheckpoint.emit((tmp_path / "run", 10))
    assert calls == [(tmp_path / "run", 10)] and window.current_page_key() == "chat"
    for page in window.pages.values():
        if hasattr(page, "shutdown"):
            page.shutdown(10000)


def test_finished_run_shows_best_star_and_early_stop_line(page, tmp_path):
    page.show_run(_fake_run(tmp_path))
    assert page.plots.best_step == 10 and page.plots.early_stopped_step == 15
    x, y = page.plots._best_item.getData()
    assert list(x) == [10.0] and y[0] == pytest.approx(2.7)
    assert page.plots._early_line.isVisible() and page.plots._early_line.value() == 15
    assert "stopped early at step 15" in page.plots._early_line.label.format
    assert len(page.probe_strips.strips) == 1
    assert page.probe_editor.cost_label.text() == "Cost: 0.30 s per round"


def test_probe_strip_highlights_changed_words_as_plain_text(qtbot):
    strip = ProbeStrip("Q?")
    qtbot.addWidget(strip)
    strip.add_answer(0, "the cat sat")
    strip.add_answer(5, "the dog sat <b>x</b>")
    document = strip.view.document()
    assert strip.view.toPlainText().splitlines()[1].endswith("the dog sat <b>x</b>")  # no HTML interpretation
    block = document.findBlockByNumber(1)
    highlighted = []
    iterator = block.begin()
    while not iterator.atEnd():
        fragment = iterator.fragment()
        if fragment.charFormat().background().color() == QColor(CHANGED_BACKGROUND):
            highlighted.append(fragment.text())
        iterator += 1
    assert "dog" in "".join(highlighted) and "cat" not in "".join(highlighted)
    assert "sat" not in "".join(highlighted)


def test_probe_editor_limits_and_switch(qtbot):
    editor = ProbeEditor()
    qtbot.addWidget(editor)
    for i in range(6):
        editor.add_prompt(f"prompt {i}")
    assert len(editor.prompts()) == 5 and not editor.add_button.isEnabled()
    editor.set_save_interval(25)
    assert editor.every() == 25
    editor.every_spin.setValue(7)
    editor.set_save_interval(50)  # the user's choice now wins
    assert editor.every() == 7
    editor.enabled_box.setChecked(False)
    assert editor.prompts() == []


def test_start_passes_probes_and_processes_to_the_controller(page, monkeypatch):
    calls = []
    monkeypatch.setattr(page.controller, "start", lambda cfg, ws, **kw: calls.append(kw))
    monkeypatch.setattr(page, "problems", lambda: [])  # the default config has no data: not what is tested
    page.probe_editor.add_prompt("What is 2 plus 2?")
    page.state.update("training", "save_steps", 9)
    assert page.probe_editor.every() == 9
    assert page.start()
    assert calls[-1] == {"probes": ["What is 2 plus 2?"], "probe_every": 9, "processes": 1}
    page._set_run_state("idle")
    page.processes_spin.setValue(2)
    assert page.start()
    assert calls[-1]["processes"] == 2 and calls[-1]["probes"] == []


def test_run_on_device_choice_sets_the_config(page):
    page.device_combo.setCurrentIndex(page.device_combo.findData("cpu"))
    assert page.state.config.training.device == "cpu"
    page.state.update("training", "device", "auto")
    assert page.device_combo.currentData() == "auto"


def test_estimate_panel_shows_parts_verdict_and_applies_fixes(page, qtbot):
    from core.estimate import Estimate, FitSuggestion, MemoryPart

    est = Estimate(parts=[MemoryPart("weights", 500 * 2**20), MemoryPart("gradients", 10 * 2**20),
                          MemoryPart("optimizer state", 20 * 2**20), MemoryPart("activations", 2**30)],
                   total_bytes=1600 * 2**20, available_bytes=2**30, fits=False, device="cpu", precision="fp32",
                   total_params=135_000_000, trainable_params=1_000_000, tokens_per_step=1024,
                   flops_per_step=1e12, device_flops=1e11, seconds_per_step=2.0, total_steps=100,
                   seconds_total=200.0)
    fix = FitSuggestion("Gradient checkpointing", {"training.gradient_checkpointing": True}, 800 * 2**20, "slower")
    page._on_estimate(page._estimate_generation, (est, [fix]))
    panel: EstimatePanel = page.estimate_panel
    assert "Doesn't fit" in panel.verdict.text()
    assert "3 min" in panel.time_label.text() and "100 steps" in panel.time_label.text()
    names = [panel.parts_grid.itemAtPosition(r, 0).widget().text() for r in range(4)]
    assert names == ["weights", "gradients", "optimizer state", "activations"]
    assert len(panel.suggestion_buttons) == 1
    panel.suggestion_buttons[0].click()
    assert page.state.config.training.gradient_checkpointing is True
    assert page.form.editors["training.gradient_checkpointing"].read_value() is True


def test_estimate_runs_in_a_worker_for_the_tiny_model(page, qtbot, tiny_model_dir):
    page.state.update("model", "name_or_path", str(tiny_model_dir))
    page.state.update("training", "device", "cpu")
    page.refresh_estimate()
    qtbot.waitUntil(lambda: page.estimate is not None, timeout=30000)
    assert page.estimate.total_bytes > 0
    assert "Fits" in page.estimate_panel.verdict.text() or "fit" in page.estimate_panel.verdict.text()


def test_metrics_tail_reads_only_complete_new_lines(tmp_path, qtbot):
    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(path)
    assert tail.read_new() == []
    with open(path, "w") as handle:
        handle.write(json.dumps(MetricPoint("train", 1, 4, loss=2.0).to_dict()) + "\n")
        handle.write('{"kind": "train", "step": 2, "lo')  # a line being written
    first = tail.read_new()
    assert [r["step"] for r in first] == [1]
    with open(path, "a") as handle:
        handle.write('ss": "nan"}\n')
        handle.write(json.dumps(ProbeResult(2, 0, "p", "a", 0.1).to_dict()) + "\n")
        handle.write(json.dumps({"kind": "status", "state": "finished", "message": "done"}) + "\n")
    records = tail.read_new()
    assert [r["kind"] for r in records] == ["train", "probe", "status"]
    point = record_to_event(records[0])
    assert isinstance(point, MetricPoint) and point.step == 2 and math.isnan(point.loss)
    worker = TrainingWorker.__new__(TrainingWorker)
    TrainingWorker.__init__(worker, None, None)
    got = {"metric": [], "probe": [], "status": []}
    worker.metric.connect(got["metric"].append)
    worker.probe.connect(got["probe"].append)
    worker.status.connect(got["status"].append)
    worker.emit_records(first + records)
    assert [p.step for p in got["metric"]] == [1, 2]
    assert got["probe"][0].answer == "a" and got["status"][0].state == "finished"


def test_two_process_run_from_the_page_feeds_the_plots(qtbot, tiny_model_dir, tmp_path, isolated_home):
    """processes=2: core.launch runs two accelerate ranks; the page gets the points by tailing metrics.jsonl."""
    cfg = RunConfig(name="two")
    cfg.model.name_or_path = str(tiny_model_dir)
    rows = [{"question": f"What is {i} plus {i}?", "answer": f"It is {2 * i}."} for i in range(24)]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    cfg.data.source = str(tmp_path / "qa.jsonl")
    cfg.data.test_fraction = 0.2
    cfg.method.lora_r, cfg.method.lora_alpha = 4, 8
    t = cfg.training
    t.max_steps, t.batch_size, t.max_length = 4, 2, 48
    t.eval_steps, t.save_steps, t.logging_steps = 2, 2, 1
    t.warmup_ratio, t.device, t.save_total_limit = 0.0, "cpu", 0
    page = TrainPage(StudioState(cfg, workspace=tmp_path / "runs"), preload_delay_ms=None)
    qtbot.addWidget(page)
    page.processes_spin.setValue(2)
    try:
        with qtbot.waitSignal(page.runEnded, timeout=120000) as ended:
            assert page.start()
        result = ended.args[0]
        assert getattr(result, "state", result) == "finished", page.log_view.toPlainText()[-3000:]
        qtbot.waitUntil(lambda: not page.is_busy, timeout=10000)
        counts = page.plots.point_counts()
        assert counts["train"] >= 2 and counts["eval"] >= 1
        assert page.current_run_dir == result.run_dir
        assert page.plots.checkpoint_steps  # markers from the run's checkpoints
        assert "Finished at step 4" in page.progress_bar.format()
    finally:
        assert page.shutdown(60000)
