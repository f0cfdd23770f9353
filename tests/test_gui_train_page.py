"""The Train page end to end on the tiny model: validation, Start, live points, Stop, Resume, GUI stalls."""

from __future__ import annotations

import gc
import json
import statistics
import time

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QElapsedTimer, QThread, QTimer  # noqa: E402

from core import runs  # noqa: E402
from core.config import RunConfig  # noqa: E402
from gui.pages.train_page import TrainPage, apply_preset, load_presets  # noqa: E402
from gui.state import StudioState  # noqa: E402
from gui.workers import running_threads  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture(autouse=True)
def no_thread_left_running(qapp):
    """Fail any test that leaves a QThread running (ours, or any other reachable QThread object)."""
    yield
    deadline = time.monotonic() + 30  # generous: a loaded machine is slow, a leak never ends
    while time.monotonic() < deadline and running_threads():
        qapp.processEvents()
        time.sleep(0.01)
    main = qapp.thread()
    others = [obj for obj in gc.get_objects()
              if issubclass(type(obj), QThread) and obj is not main and obj.isRunning()]
    leftovers = running_threads() + [t for t in others if t not in running_threads()]
    assert not leftovers, f"QThreads left running: {[t.objectName() for t in leftovers]}"


def _write_dataset(path, n=40):
    rows = [{"question": f"What is {i} plus {i}?", "answer": f"It is {2 * i}."} for i in range(n)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture()
def tiny_config(tiny_model_dir, tmp_path) -> RunConfig:
    cfg = RunConfig(name="tiny-gui")
    cfg.model.name_or_path = str(tiny_model_dir)
    cfg.data.source = str(_write_dataset(tmp_path / "qa.jsonl"))
    cfg.data.test_fraction = 0.2
    cfg.method.lora_r = 4
    cfg.method.lora_alpha = 8
    t = cfg.training
    t.max_steps, t.batch_size, t.max_length = 20, 4, 64
    t.eval_steps, t.save_steps, t.logging_steps = 5, 5, 1
    t.warmup_ratio, t.device, t.save_total_limit = 0.0, "cpu", 0
    return cfg


@pytest.fixture()
def page(qtbot, tiny_config, tmp_path):
    state = StudioState(tiny_config, workspace=tmp_path / "runs")
    widget = TrainPage(state, preload_delay_ms=None)
    qtbot.addWidget(widget)
    widget.resize(1400, 900)
    yield widget
    assert widget.shutdown(30000)


def test_form_is_generated_and_invalid_values_block_start(page):
    assert page.start_button.isEnabled()
    for editor in page.form.editors.values():
        assert editor.help and editor.help in editor.widget.toolTip()
    page.form.set_field_text("training.learning_rate", "3")
    assert not page.start_button.isEnabled()
    assert "Learning rate must be between" in page.blocked_label.text()
    assert "Learning rate must be between" in page.start_button.toolTip()
    assert "between" in page.form.problem_for("training.learning_rate")
    assert page.start() is False and not page.is_busy
    page.form.set_field_text("training.learning_rate", "2e-4")
    assert page.start_button.isEnabled() and page.blocked_label.text() == ""
    # A problem on another page (the data section) blocks Start too and says where it is.
    page.state.update("data", "test_fraction", 0.0)
    page.form.set_field_text("training.early_stopping_patience", 3)
    assert not page.start_button.isEnabled()
    assert "early stopping needs held-out data" in page.blocked_label.text()


def test_presets_and_config_files(page, tmp_path):
    titles = [preset.title for preset in load_presets()]
    assert titles == ["Quick look: a few steps", "Balanced", "Thorough"]
    for preset in load_presets():
        assert apply_preset(RunConfig(), preset).problems() == []
    model = page.state.config.model.name_or_path
    page.apply_preset("Quick look: a few steps")
    assert page.state.config.training.max_steps == 10
    assert page.state.config.model.name_or_path == model  # a preset is partial: the model is kept
    assert page.form.editors["training.max_steps"].widget.value() == 10
    path = tmp_path / "saved.yaml"
    assert page.save_config_file(path)
    page.form.set_field_text("training.max_steps", 77)
    assert page.load_config_file(path) and page.state.config.training.max_steps == 10
    (tmp_path / "bad.yaml").write_text("training:\n  learning_rate: [1\n", encoding="utf-8")
    assert not page.load_config_file(tmp_path / "bad.yaml")
    assert page.error_banner.isVisibleTo(page) and "bad.yaml" in page.error_text.text()


def test_preset_box_is_honest_and_undoable(page):
    from gui.pages.train_page import matching_preset

    page.state.set_config(RunConfig())
    # Defaults match no preset: the box says "Custom", not the first preset's title.
    assert page.preset_combo.currentText() == "Custom" and matching_preset(page.state.config, page._presets) is None
    before = page.state.config.copy()
    index = page.preset_combo.findText("Quick look: a few steps")
    page.preset_combo.activated.emit(index)  # choosing applies it
    assert page.state.config.training.max_steps == 10
    assert page.preset_combo.currentText() == "Quick look: a few steps"
    changed = page.preset_changes_label.text()
    assert "changed" in changed and "→ 10" in changed and page.undo_preset_button.isVisibleTo(page)
    # Editing any preset setting makes it "Custom" again.
    page.form.set_field_text("training.max_steps", 12)
    assert page.preset_combo.currentText() == "Custom"
    page.form.set_field_text("training.max_steps", 10)
    assert page.preset_combo.currentText() == "Quick look: a few steps"
    page.undo_preset()
    assert page.state.config.to_dict() == before.to_dict() and page.preset_combo.currentText() == "Custom"


def test_start_stop_resume_full_flow(page, qtbot):
    page.form.set_field_text("training.max_steps", 16)  # set a field through the form
    assert page.state.config.training.max_steps == 16
    stops = []

    def stop_early(point):
        if point.kind == "train" and not stops:
            stops.append(point.step)
            page.stop()

    page.controller.metricReceived.connect(stop_early)
    with qtbot.waitSignal(page.runEnded, timeout=60000) as ended:
        assert page.start()
        assert page.is_busy and not page.start_button.isEnabled() and page.stop_button.isEnabled()
    page.controller.metricReceived.disconnect(stop_early)
    result = ended.args[0]
    assert getattr(result, "state", result) == "stopped", page.log_view.toPlainText()
    qtbot.waitUntil(lambda: not page.is_busy, timeout=10000)
    run_dir = result.run_dir
    assert runs.read_status(run_dir)["state"] == "stopped"
    assert runs.latest_checkpoint(run_dir) is not None
    assert page.run_state == "stopped" and "Stopped" in page.state_chip.text()
    page.plots.redraw()
    counts = page.plots.point_counts()
    assert counts["eval"] >= 1 and counts["train"] >= 1
    assert page.plots.eval_loss.buffer.x("step")[0] == 0  # the step-0 evaluation is plotted
    assert page.resume_button.isEnabled() and page.resumable_run == run_dir
    assert "stopped" in page.log_view.toPlainText()

    with qtbot.waitSignal(page.runEnded, timeout=60000) as ended:
        assert page.resume()
    result = ended.args[0]
    assert getattr(result, "state", result) == "finished", page.log_view.toPlainText()
    assert result.global_step == 16
    qtbot.waitUntil(lambda: not page.is_busy, timeout=10000)
    assert runs.read_status(run_dir)["state"] == "finished"
    assert page.progress_bar.value() == page.progress_bar.maximum()
    assert not page.resume_button.isEnabled()
    page.plots.redraw()
    assert page.plots.train_loss.buffer.x("step")[-1] == 16
    assert page.start_button.isEnabled()


def test_event_loop_keeps_turning_and_plots_redraw_while_training(page, qtbot):
    """A 5 ms timer measures the gaps of the event loop during a whole real run on the tiny model,
    with the page on screen so the live plots repaint (the costly part under GIL contention)."""
    page.state.update("training", "max_steps", 30)
    page.show()
    qtbot.waitExposed(page)
    qtbot.wait(100)  # the first paint of the page is not part of the measurement
    gaps: list[float] = []
    clock = QElapsedTimer()
    probe = QTimer()
    probe.setInterval(5)

    def tick():
        gaps.append(clock.restart())

    probe.timeout.connect(tick)
    page.plots.redraw_count = 0
    clock.start()
    probe.start()
    try:
        with qtbot.waitSignal(page.runEnded, timeout=60000) as ended:
            page.start()
    finally:
        probe.stop()
    assert getattr(ended.args[0], "state", None) == "finished", page.log_view.toPlainText()
    gaps = sorted(gaps[1:])
    p99 = gaps[int(0.99 * (len(gaps) - 1))]
    print(f"\nevent-loop gaps during training: {len(gaps)} ticks, max {gaps[-1]} ms, p99 {p99} ms, "
          f"median {statistics.median(gaps)} ms")
    assert page.plots.redraw_count > 3  # the plots really were redrawn live during the run
    # The loop kept turning while training ran (the timer fired throughout). The stall figures (target max
    # < 100 ms, p99 < 30 ms) depend on what else the machine does, so they are measured by
    # `python -m bench gui` on an idle machine (bench/results), not asserted here.
    assert len(gaps) > 20


def test_training_errors_are_shown_and_the_page_keeps_working(page, qtbot, tmp_path):
    page.state.update("data", "source", str(tmp_path / "missing.jsonl"))
    with qtbot.waitSignal(page.runEnded, timeout=60000) as ended:
        page.start()
    assert isinstance(ended.args[0], Exception)
    qtbot.waitUntil(lambda: not page.is_busy, timeout=10000)
    assert page.run_state == "failed"
    assert page.error_banner.isVisibleTo(page) and "missing.jsonl" in page.error_text.text()
    assert page.start_button.isEnabled()


def test_elapsed_clock_ticks_in_every_phase_from_the_start(page, monkeypatch):
    """The elapsed clock runs from the moment the run is busy, not from the first training step: a fake
    clock moves 7 s while no point has arrived (loading, measuring the base model) and the label follows;
    an evaluation's k/n shows in the progress bar; the first point brings the run's own elapsed time. The
    repeating timer stops when the run is no longer busy."""
    import types

    import gui.pages.train_page as module
    from core.metrics import MetricPoint, StatusEvent
    from gui.workers import TrainingController

    now = [1000.0]
    monkeypatch.setattr(module, "time", types.SimpleNamespace(monotonic=lambda: now[0], strftime=time.strftime))
    monkeypatch.setattr(TrainingController, "is_busy", property(lambda self: True))
    page._on_busy_changed(True)
    assert page._stats_timer.isActive() and not page._stats_timer.isSingleShot()
    now[0] += 7.0
    page._show_stats()  # what the timer does every STATS_INTERVAL_MS
    assert page.stat_elapsed.value.text() == "0:07"
    page._on_status(StatusEvent("running", "measuring the base model: 8/16 held-out examples", fraction=0.5,
                                phase="measuring_base"))
    assert "8/16 held-out examples" in page.progress_bar.format() and page.progress_bar.value() == 500
    page._on_metric(MetricPoint(kind="train", step=1, total_steps=10, loss=2.0, elapsed_seconds=30.0))
    page._show_stats()
    now[0] += 2.0
    page._show_stats()
    assert page.stat_elapsed.value.text() == "0:32"
    monkeypatch.setattr(TrainingController, "is_busy", property(lambda self: False))
    page._on_busy_changed(False)
    assert not page._stats_timer.isActive()


def test_preset_description_promises_the_estimated_duration(page, tiny_model_dir):
    """The preset box's duration comes from the estimate of the settings shown (core.estimate.duration_text),
    not from a constant text; an estimate of older settings is not used."""
    from core.estimate import architecture, duration_text, estimate

    page.apply_preset("Quick look: a few steps")
    description = page.preset_description.text()
    assert "minute" not in description and "About" not in description  # no constant promise in the preset
    cfg = page.state.config
    est = estimate(cfg, model_info=architecture(cfg), measure_device=False,
                   dataset_stats={"count": 32, "mean": 20.0, "max": 40, "eval_count": 8, "eval_mean": 20.0})
    assert est.run_parts
    page._on_estimate(page._estimate_generation, (est, []))
    assert page.preset_description.text().endswith(duration_text(est))
    page._estimate_generation += 1  # the settings changed: a new estimate is on its way
    page._show_preset_description()
    assert duration_text(est) not in page.preset_description.text()
