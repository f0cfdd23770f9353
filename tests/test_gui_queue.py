"""pytest-qt: the queue on the Runs page: waiting runs listed in order, reordered and removed there; the
list survives a restart of the page (it is the workspace); a queue left running when the app closed
continues by itself when the Runs page is created again (tiny model)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("pytestqt")

from gui_guard import qt_guard, temp_settings  # noqa: E402,F401  (autouse fixtures)

from core import queue  # noqa: E402
from core.config import RunConfig  # noqa: E402
from core.runs import read_status  # noqa: E402
from gui.state import StudioState  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture()
def tiny_cfg(tiny_model_dir, tmp_path, isolated_home) -> RunConfig:
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} plus {i}?", "answer": f"It is {2 * i}."}) + "\n"
                            for i in range(16)), encoding="utf-8")
    cfg = RunConfig(name="tiny")
    cfg.model.name_or_path = str(tiny_model_dir)
    cfg.data.source = str(data)
    cfg.data.test_fraction = 0.25
    t = cfg.training
    t.max_steps, t.batch_size, t.max_length = 2, 4, 64
    t.eval_steps = t.save_steps = 2
    t.warmup_ratio, t.max_eval_examples, t.device = 0.0, 0, "cpu"
    return cfg


def _names(panel) -> list[str]:
    return [panel.table.item(row, 1).text() for row in range(panel.table.rowCount())]


def test_queue_is_listed_edited_and_survives_a_restart_of_the_page(qtbot, tiny_cfg, tmp_path):
    from gui.pages.runs_page import RunsPage

    workspace = tmp_path / "ws"
    names = []
    for index in range(3):
        tiny_cfg.name = f"waiting-{index}"
        names.append(queue.enqueue(tiny_cfg, workspace).name)
    state = StudioState(tiny_cfg, workspace=workspace)
    page = RunsPage(state)
    qtbot.addWidget(page)
    panel = page.queue_panel
    assert not panel.isHidden() and _names(panel) == names
    assert panel.title.text() == "Queue (3 waiting)"
    panel.select(workspace / names[2])
    panel.move_selected(-1)
    assert _names(panel) == [names[0], names[2], names[1]]
    panel.select(workspace / names[0])
    panel.remove_selected()
    assert _names(panel) == [names[2], names[1]]
    assert not (workspace / names[0]).exists()
    page.shutdown()
    state.stop_watching()

    # "restart": a new state and page over the same workspace
    state2 = StudioState(tiny_cfg, workspace=workspace)
    page2 = RunsPage(state2)
    qtbot.addWidget(page2)
    assert _names(page2.queue_panel) == [names[2], names[1]]
    assert not page2.queue_panel.is_busy  # the queue was never started: it waits for Run
    page2.shutdown()
    state2.stop_watching()


def test_a_running_queue_continues_after_the_app_restarts(qtbot, tiny_cfg, tmp_path):
    from gui.pages.runs_page import RunsPage

    workspace = tmp_path / "ws"
    tiny_cfg.name = "next-in-line"
    run_dir = queue.enqueue(tiny_cfg, workspace)
    queue.set_active(workspace, True)  # as the app left it when it closed during the queue
    state = StudioState(tiny_cfg, workspace=workspace)
    page = RunsPage(state)
    qtbot.addWidget(page)
    with qtbot.waitSignal(page.queue_panel.queueFinished, timeout=300_000) as finished:
        pass
    assert finished.args[0] == [(run_dir, "finished")]
    assert read_status(run_dir)["state"] == "finished"
    assert queue.queued_runs(workspace) == [] and not queue.is_active(workspace)
    qtbot.waitUntil(page.queue_panel.isHidden, timeout=30_000)  # once the worker's thread has ended
    page.shutdown()
    state.stop_watching()


def test_train_page_queues_a_run_that_trains_when_nothing_else_does(qtbot, tiny_cfg, tmp_path):
    from gui.pages.runs_page import RunsPage
    from gui.pages.train_page import TrainPage

    tiny_cfg.name = "queued-from-train"
    state = StudioState(tiny_cfg, workspace=tmp_path / "ws")
    runs_page = RunsPage(state)
    train_page = TrainPage(state, preload_delay_ms=None)
    qtbot.addWidget(runs_page)
    qtbot.addWidget(train_page)
    with qtbot.waitSignal(runs_page.queue_panel.queueFinished, timeout=300_000) as finished:
        run_dir = train_page.queue_settings()
        assert run_dir is not None and read_status(run_dir)["state"] == "queued"
    assert finished.args[0] == [(run_dir, "finished")]
    runs_page.shutdown()
    train_page.shutdown()
    state.stop_watching()
