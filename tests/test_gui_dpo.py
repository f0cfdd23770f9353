"""Preference tuning (DPO) in the GUI: the Train page's reward plots, live from the training worker and from a
reopened run's metrics.jsonl; the Data page's chosen-vs-rejected preview with its "Train with DPO" button."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from gui_guard import qt_guard, temp_settings  # noqa: E402, F401  (autouse fixtures)
from layout_check import clipped_texts  # noqa: E402

from core import runs  # noqa: E402
from core.config import RunConfig  # noqa: E402

pytestmark = pytest.mark.gui

QUESTIONS = ["What is the capital of France?", "Who wrote Hamlet?", "Which planet is red?"]
GOOD = ["Paris", "William Shakespeare", "Mars"]
BAD = ["I do not know", "Nobody", "No idea"]


def _pairs_file(path, n=20):
    rows = [{"prompt": f"{QUESTIONS[i % 3]} ({i})", "chosen": GOOD[i % 3], "rejected": BAD[i % 3]} for i in range(n)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture()
def dpo_config(tiny_model_dir, tmp_path) -> RunConfig:
    cfg = RunConfig(name="dpo-gui")
    cfg.model.name_or_path = str(tiny_model_dir)
    cfg.data.source = str(_pairs_file(tmp_path / "pairs.jsonl"))
    cfg.data.test_fraction = 0.2
    cfg.method.method = "dpo"
    cfg.method.lora_r, cfg.method.lora_alpha = 4, 8
    t = cfg.training
    t.max_steps, t.batch_size, t.max_length = 4, 4, 64
    t.eval_steps, t.save_steps, t.logging_steps = 2, 2, 1
    t.learning_rate, t.warmup_ratio, t.device, t.save_total_limit = 5e-3, 0.0, "cpu", 0
    return cfg


def _curve(plots, split, name):
    x, y = plots.preference_curves[(split, name)].item.getData()
    return ([] if x is None else list(x)), ([] if y is None else list(y))


def _preference_lines(run_dir, split):
    return [r for r in runs.read_metrics(run_dir) if r.get("kind") == "preference" and r.get("split") == split]


def test_dpo_run_plots_rewards_live_and_when_reopened(qtbot, dpo_config, tmp_path, isolated_home):
    from gui.pages.train_page import TrainPage
    from gui.state import StudioState

    state = StudioState(dpo_config, workspace=tmp_path / "runs")
    page = TrainPage(state, preload_delay_ms=None)
    qtbot.addWidget(page)
    page.resize(1280, 800)
    page.show()
    qtbot.waitExposed(page)
    assert not page.plots.preference_shown  # nothing run yet: no reward plots

    live = []  # what the worker's signal carried, in order
    page.controller.preferenceReceived.connect(live.append)
    with qtbot.waitSignal(page.runEnded, timeout=120000) as ended:
        assert page.start()
        assert page.plots.preference_shown  # a DPO run shows its reward plots from the start
    result = ended.args[0]
    assert getattr(result, "state", result) == "finished", page.log_view.toPlainText()
    qtbot.waitUntil(lambda: not page.is_busy, timeout=10000)
    page.controller.preferenceReceived.disconnect(live.append)
    page.plots.redraw()

    train_lines, eval_lines = _preference_lines(result.run_dir, "train"), _preference_lines(result.run_dir, "eval")
    assert [r["step"] for r in train_lines] == [1, 2, 3, 4]
    assert [r["step"] for r in eval_lines] == [0, 2, 4]  # the base model first, then every 2 steps
    # Every preference line of metrics.jsonl reached the page live, through the worker's signal.
    assert [(p.split, p.step, p.reward_margin) for p in live] == \
        [(r["split"], r["step"], r["reward_margin"]) for r in runs.read_metrics(result.run_dir)
         if r.get("kind") == "preference"]
    counts = page.plots.preference_counts()
    assert counts["reward_margin"] == counts["chosen_reward"] == counts["rejected_reward"] == 4
    assert counts["reward_accuracy"] == 4 and counts["eval_reward_margin"] == 3 and counts["eval_reward_accuracy"] == 3
    x, y = _curve(page.plots, "train", "reward_margin")
    assert x == [r["step"] for r in train_lines]
    assert np.allclose(y, [r["reward_margin"] for r in train_lines])
    _, chosen = _curve(page.plots, "train", "chosen_reward")
    _, rejected = _curve(page.plots, "train", "rejected_reward")
    assert np.allclose(np.array(chosen) - np.array(rejected), y, atol=1e-5)  # margin = chosen - rejected
    _, accuracy = _curve(page.plots, "train", "reward_accuracy")
    assert all(0.0 <= a <= 1.0 for a in accuracy)
    assert "held-out reward accuracy" in page.log_view.toPlainText()
    # exp(DPO loss) is no perplexity: the summary card quotes none for a DPO run.
    assert page.summary_card.details.text() and "erplexity" not in page.summary_card.details.text()
    page.plots.flush()
    page.grab().save("/tmp/dpo-train-live.png")
    assert not clipped_texts(page), clipped_texts(page)

    # Reopened (Runs page -> open calls show_run): the same curves come back from metrics.jsonl.
    page.show_run(result.run_dir)
    page.plots.redraw()
    assert page.plots.preference_shown
    assert page.plots.preference_counts() == counts
    assert _curve(page.plots, "train", "reward_margin") == (x, y)
    page.grab().save("/tmp/dpo-train-reopened.png")

    # A supervised run reopened afterwards hides them again.
    sft = tmp_path / "runs" / "as-sft"
    shutil.copytree(result.run_dir, sft)
    cfg = runs.load_run_config(sft)
    cfg.method.method = "lora"
    cfg.save(sft / runs.CONFIG_FILE)
    kept = [line for line in (sft / runs.METRICS_FILE).read_text(encoding="utf-8").splitlines()
            if json.loads(line).get("kind") != "preference"]
    (sft / runs.METRICS_FILE).write_text("\n".join(kept) + "\n", encoding="utf-8")
    page.show_run(sft)
    assert not page.plots.preference_shown and page.plots.preference_counts()["reward_margin"] == 0
    assert page.plots.point_counts()["train"] == 4
    assert page.shutdown(30000)


def test_launched_runs_and_callback_sinks_deliver_preference_points(qtbot, tmp_path):
    """The other two ways preference lines reach the plots: a multi-process run's tailed metrics.jsonl
    (TrainingWorker.emit_records) and the CallbackSink that core.preference's log callback calls."""
    from core.cancel import StopToken
    from core.metrics import CallbackSink, JsonlSink, MetricPoint, PreferencePoint
    from gui.widgets.plots import TrainingPlots
    from gui.workers import MetricsTail, TrainingJob, TrainingWorker

    record = {"kind": "preference", "split": "train", "step": 3, "loss": 0.6, "reward_margin": 0.25,
              "reward_accuracy": 0.75, "chosen_reward": 0.1, "rejected_reward": -0.15, "time": 1.0}
    got = []
    sink = CallbackSink(on_preference=got.append)
    sink.on_record(record)
    sink.on_record({"kind": "coach", "step": 3})  # other free-form records are not preference points
    assert got == [PreferencePoint("train", 3, 0.6, 0.25, 0.75, 0.1, -0.15, time=1.0)]

    worker = TrainingWorker(TrainingJob("launch"), StopToken())
    plots = TrainingPlots()
    qtbot.addWidget(plots)
    worker.preference.connect(plots.add_point)
    worker.metric.connect(plots.add_point)
    metrics = tmp_path / "metrics.jsonl"
    jsonl = JsonlSink(metrics)
    jsonl.on_metric(MetricPoint("train", 3, loss=0.6))
    jsonl.on_record({**record, "reward_margin": float("nan")})  # written as "nan": that value is not drawn
    jsonl.on_record({**record, "step": 4, "split": "eval"})
    worker.emit_records(MetricsTail(metrics).read_new())
    plots.redraw()
    assert plots.point_counts()["train"] == 1
    counts = plots.preference_counts()
    assert counts["reward_margin"] == 0 and counts["reward_accuracy"] == 1  # the NaN margin is not drawn
    assert counts["eval_reward_margin"] == 1 and counts["eval_chosen_reward"] == 1
    assert plots.preference_shown


# ------------------------------------------------------------------------------------------- Data page
@pytest.fixture()
def window(qtbot, tiny_model_dir, tmp_path, isolated_home):
    from gui.main_window import MainWindow
    from gui.state import StudioState

    cfg = RunConfig(name="pairs")
    cfg.model.name_or_path = str(tiny_model_dir)
    cfg.training.max_length = 64
    state = StudioState(cfg, workspace=tmp_path / "runs")
    win = MainWindow(state, autoload=False, restore=False)
    qtbot.addWidget(win)
    win.resize(1280, 800)
    win.show()
    qtbot.waitExposed(win)
    yield win
    assert win.shutdown(60000)


def _wait_analysed(qtbot, page, timeout=60000):
    qtbot.waitUntil(lambda: not page.is_busy and page.analysis is not None, timeout=timeout)


def test_data_page_shows_pairs_side_by_side_and_sets_dpo(window, qtbot, tmp_path):
    data_page, train_page = window.pages["data"], window.pages["train"]
    path = tmp_path / "prefs.jsonl"
    lines = [json.dumps({"prompt": "What is the capital of France?", "chosen": "Paris.", "rejected": "Lyon."}),
             json.dumps({"prompt": "Who wrote Hamlet?", "chosen": "Shakespeare.", "rejected": ""}),  # no rejected
             "{not json",
             json.dumps({"prompt": "Hi", "a": "Hello", "b": "Hey", "vote": "tie", "chosen": None, "rejected": None})]
    lines += [json.dumps({"prompt": f"What is {i} plus {i}?", "chosen": f"It is {2 * i}.", "rejected": "No idea."})
              for i in range(8)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    window.show_page("data")
    data_page.load_source(str(path))
    _wait_analysed(qtbot, data_page)

    # Method LoRA: supervised training refuses preference data, and the page says what to do instead.
    assert "this is preference data" in data_page.last_error
    assert data_page.dpo_button.isVisible() and data_page.chosen_only_button.isVisible()
    assert data_page.pair_view.isVisible() and not data_page.token_view.isVisible()
    assert data_page.state.data["usable"] is False
    # 9 pairs; rows 2 (empty rejected), 3 (not JSON) and 4 (a tie) left out, with their line numbers.
    assert "9 preference pairs" in data_page.count_label.text()
    assert "3 rows left out" in data_page.count_label.text()
    bad = [data_page.bad_list.item(i).text() for i in range(data_page.bad_list.count())]
    assert [b.split(":")[0] for b in bad] == ["line 2", "line 3", "line 4"], bad
    assert "rejected" in bad[0] and "tie" in bad[2]
    assert data_page.example_count.text() == "of 9 pairs"
    view = data_page.pair_view
    assert "What is the capital of France?" in view.prompt_view.toPlainText()
    assert view.prompt_view.trained_tokens == 0 and view.prompt_view.masked_tokens > 0  # context only
    assert view.chosen_view.toPlainText() == "Paris.<|endoftext|>"
    assert view.rejected_view.toPlainText() == "Lyon.<|endoftext|>"
    assert view.chosen_view.masked_tokens == 0 and view.chosen_view.trained_tokens > 0  # the answers are trained
    assert view.chosen_counts.text() == f"{view.chosen_view.trained_tokens} trained tokens"
    window.grab().save("/tmp/dpo-data-refusal.png")  # the window at 1280x800
    assert not clipped_texts(window), clipped_texts(window)

    # "Train with DPO on these pairs": the shared config's method becomes dpo, the Train page's form shows it,
    # and the page reads the file as pairs without the refusal.
    data_page.dpo_button.click()
    assert data_page.state.config.method.method == "dpo"
    assert train_page.form.editors["method.method"].read_value() == "dpo"
    qtbot.waitUntil(lambda: not data_page.is_busy and data_page.last_error == "", timeout=60000)
    assert data_page.analysis.is_pairs and not data_page.analysis.refusal
    assert not data_page.dpo_button.isVisible() and not data_page.chosen_only_button.isVisible()
    assert data_page.state.data["usable"] is True and data_page.state.data["n_pairs"] == 9
    assert train_page.data_problem() == ""
    data_page.example_spin.setValue(3)  # the third pair: line 6
    assert "What is 1 plus 1?" in view.prompt_view.toPlainText()
    assert view.chosen_view.toPlainText() == "It is 2.<|endoftext|>"
    assert view.rejected_view.toPlainText() == "No idea.<|endoftext|>"
    assert data_page.token_counts.text().startswith("line 6: ")
    window.grab().save("/tmp/dpo-data-pairs.png")
    assert not clipped_texts(window), clipped_texts(window)


def test_conversation_shaped_pairs_and_non_pairs_under_dpo(window, qtbot, tmp_path):
    data_page = window.pages["data"]
    data_page.state.update("method", "method", "dpo")
    window.show_page("data")
    # LLaMA-Factory's dpo_en_demo shape: the prompt is a conversation, the answers are message objects.
    factory = tmp_path / "dpo_en_demo.json"
    factory.write_text(json.dumps([
        {"conversations": [{"from": "human", "value": "Name a red fruit."}],
         "chosen": {"from": "gpt", "value": "A strawberry."}, "rejected": {"from": "gpt", "value": "A banana."}},
        {"conversations": [{"from": "human", "value": "Name a green vegetable."}],
         "chosen": {"from": "gpt", "value": "Spinach."}, "rejected": {"from": "gpt", "value": "A carrot."}},
    ]), encoding="utf-8")
    data_page.load_source(str(factory))
    _wait_analysed(qtbot, data_page)
    assert data_page.last_error == "" and data_page.analysis.is_pairs
    view = data_page.pair_view
    assert "Name a red fruit." in view.prompt_view.toPlainText()
    assert view.chosen_view.toPlainText().startswith("A strawberry.")
    assert view.rejected_view.toPlainText().startswith("A banana.")
    assert data_page.role_combos["prompt"].currentData() == "conversations"
    assert "2 preference pairs" in data_page.count_label.text()

    # TRL's implicit-prompt shape: chosen and rejected are whole conversations sharing the user turn.
    data_page.load_source(str(runs_corpus("dpo_conversational.jsonl")))
    _wait_analysed(qtbot, data_page)
    assert data_page.last_error == "" and data_page.analysis.is_pairs
    assert "Give me a synonym for happy." in view.prompt_view.toPlainText()
    assert view.chosen_view.toPlainText().startswith("Joyful.")
    assert view.rejected_view.toPlainText().startswith("Sad.")
    # The method is DPO but the file holds no pairs: DPO's refusal, and its examples as supervised data.
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": "q?", "answer": "a."}) + "\n", encoding="utf-8")
    data_page.load_source(str(qa))
    _wait_analysed(qtbot, data_page)
    assert "DPO needs preference data" in data_page.last_error
    assert not data_page.analysis.is_pairs and data_page.token_view.isVisible()
    assert data_page.state.data["usable"] is False


def runs_corpus(name):
    from pathlib import Path

    return Path(__file__).parent / "data_corpus" / name
