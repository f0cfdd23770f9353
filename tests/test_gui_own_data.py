"""A newcomer's own data through the real main window: a CSV whose headers match no known name and that
has bad rows is mapped with the pickers, its own text is rendered, and Train finishes on it. A failed load
leaves nothing of the previous dataset on the page."""

from __future__ import annotations

import csv

import pytest
from gui_guard import qt_guard, temp_settings  # noqa: F401  (autouse fixtures)

from core.config import RunConfig

pytestmark = pytest.mark.gui


def write_tips_csv(path, n=40, bad=(7, 19, 33)):
    """``tip_question`` / ``tip_answer`` rows; the rows in ``bad`` have an empty answer."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tip_question", "tip_answer"])
        for i in range(n):
            writer.writerow([f"How do I water plant {i}?", "" if i in bad else f"Water plant {i} twice a week."])
    return path


@pytest.fixture()
def window(qtbot, tiny_model_dir, tmp_path, isolated_home):
    from gui.main_window import MainWindow
    from gui.state import StudioState

    cfg = RunConfig(name="own-data")
    cfg.model.name_or_path = str(tiny_model_dir)
    cfg.method.lora_r, cfg.method.lora_alpha = 4, 8
    t = cfg.training
    t.max_steps, t.batch_size, t.max_length = 2, 4, 64
    t.eval_steps, t.save_steps, t.logging_steps = 2, 2, 1
    t.warmup_ratio, t.device, t.save_total_limit = 0.0, "cpu", 0
    state = StudioState(cfg, workspace=tmp_path / "runs")
    win = MainWindow(state, autoload=False, restore=False)
    qtbot.addWidget(win)
    win.resize(1280, 800)
    yield win
    assert win.shutdown(60000)


def wait_idle(qtbot, page, timeout=60000):
    qtbot.waitUntil(lambda: not page.is_busy, timeout=timeout)


def choose(combo, data) -> None:
    index = combo.findData(data)
    assert index >= 0, f"{data!r} is not offered: {[combo.itemData(i) for i in range(combo.count())]}"
    combo.setCurrentIndex(index)


def test_custom_header_csv_is_mapped_in_the_pickers_and_trains(window, qtbot, tmp_path):
    data_page, train_page = window.pages["data"], window.pages["train"]
    source = write_tips_csv(tmp_path / "tips.csv")
    window.show_page("data")
    data_page.load_source(str(source))
    wait_idle(qtbot, data_page)
    # Detection cannot tell the roles: the error says so and the rows of this file are shown.
    assert "cannot tell" in data_page.last_error
    assert data_page.table_model.total_rows >= 37
    assert data_page.state.data["usable"] is False
    # Train refuses before creating any run folder, with a way to the Data page.
    assert train_page.start() is False
    assert train_page.go_to_data_button.isVisible() or not train_page.isVisible()
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())

    choose(data_page.schema_combo, "question_answer")
    wait_idle(qtbot, data_page)
    # Still not mapped, but the pickers list this file's own columns.
    assert set(data_page.role_combos) == {"question", "answer"}
    offered = [data_page.role_combos["question"].itemData(i) for i in range(data_page.role_combos["question"].count())]
    assert "tip_question" in offered and "tip_answer" in offered
    choose(data_page.role_combos["question"], "tip_question")
    choose(data_page.role_combos["answer"], "tip_answer")
    qtbot.waitUntil(lambda: data_page.analysis is not None and not data_page.is_busy, timeout=60000)
    assert data_page.last_error == ""
    assert window.state.config.data.column_map == {"question": "tip_question", "answer": "tip_answer"}
    assert "How do I water plant 0?" in data_page.token_view.toPlainText()
    assert "Water plant 0 twice a week." in data_page.token_view.toPlainText()
    # One honest count line: 40 rows, 3 bad, 37 usable.
    counts = data_page.count_label.text()
    assert "40 rows" in counts and "3 bad" in counts and "37 usable" in counts, counts
    assert data_page.example_spin.maximum() == 37
    data_page.skip_bad.setChecked(True)

    window.show_page("train")
    with qtbot.waitSignal(train_page.runEnded, timeout=180000) as ended:
        assert train_page.start() is True
    result = ended.args[0]
    assert getattr(result, "state", None) == "finished", train_page.log_view.toPlainText()
    saved = RunConfig.load(result.run_dir / "config.yaml")
    assert saved.data.column_map == {"question": "tip_question", "answer": "tip_answer"}


def test_failed_load_leaves_nothing_of_the_previous_dataset(window, qtbot, tmp_path):
    data_page = window.pages["data"]
    data_page.load_source("sample:trivia")
    wait_idle(qtbot, data_page)
    assert data_page.analysis is not None and data_page.histogram.lengths.size > 0
    assert "Longest examples" in data_page.longest_title.text() and data_page.longest_list.count() > 0

    broken = tmp_path / "broken.csv"
    broken.write_text("only_one_column\n\n", encoding="utf-8")
    data_page.load_source(str(broken))
    wait_idle(qtbot, data_page)
    assert data_page.last_error
    assert data_page.analysis is None
    assert data_page.histogram.lengths.size == 0
    assert data_page.longest_list.count() == 0 and data_page.bad_list.count() == 0
    assert "fit" not in data_page.truncation_label.text()
    text = data_page.token_view.toPlainText()
    assert "trivia" not in text.lower() and "?" not in text.split(":")[0]
    # The table shows this file (or nothing), never the sample's rows.
    assert data_page.table_model.columnCount() <= 1
    assert "usable" not in data_page.count_label.text() or "not usable" in data_page.count_label.text()


def test_histogram_clips_outliers_and_lists_a_clicked_bar(window, qtbot, tmp_path):
    import json

    data_page = window.pages["data"]
    rows = [{"question": f"Q{i}?", "answer": "short answer"} for i in range(60)]
    rows.append({"question": "Long one?", "answer": "word " * 1500})
    path = tmp_path / "outlier.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    data_page.load_source(str(path))
    wait_idle(qtbot, data_page)
    histogram = data_page.histogram
    assert histogram.clip_at is not None and histogram.clip_at < histogram.lengths.max()
    overflow = histogram.bar_at(histogram.edges[-1] + 1)
    assert overflow is not None and len(overflow["indices"]) == 1
    with qtbot.waitSignal(histogram.barClicked, timeout=5000, raising=False):
        histogram.barClicked.emit(overflow)
    assert data_page.longest_list.count() == 1
    assert "line 61" in data_page.longest_list.item(0).text()
    # The longest list names the outlier first, by its line in the file, as cut at max length.
    data_page._fill_longest(data_page.analysis)
    assert data_page.longest_list.item(0).text().startswith("line 61:")
    assert "cut at" in data_page.longest_list.item(0).text()


def test_check_panel_finds_planted_problems_and_drops_rows(window, qtbot, tmp_path):
    import json

    data_page = window.pages["data"]
    rows = [{"question": f"How many legs does animal {i} have?", "answer": f"Animal {i} has {i % 5} legs."}
            for i in range(40)]
    rows[10] = dict(rows[3])                                          # exact duplicate of line 4
    rows[20] = {"question": "Hello {{name}}, what is your job?", "answer": "I am a placeholder."}
    rows[30] = {"question": "Empty answer?", "answer": "x"}
    path = tmp_path / "planted.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    data_page.load_source(str(path))
    wait_idle(qtbot, data_page)
    data_page.run_checks()
    qtbot.waitUntil(lambda: data_page.check_report is not None and not data_page.is_busy, timeout=60000)
    kinds = {finding.kind for finding in data_page.check_report.findings}
    assert {"duplicate_question", "placeholder", "short_answer"} <= kinds, kinds
    texts = [data_page.findings_list.item(i).text() for i in range(data_page.findings_list.count())]
    assert any("11" in text and "4" in text for text in texts)  # the duplicate names both lines
    duplicate = next(i for i, f in enumerate(data_page.check_report.findings) if f.kind == "duplicate_question")
    data_page.findings_list.setCurrentRow(duplicate)
    assert data_page.drop_button.isEnabled()
    data_page.drop_button.click()
    assert set(window.state.config.data.drop_rows) == set(data_page.check_report.findings[duplicate].drop)


def test_preference_file_is_refused_with_the_chosen_only_option(window, qtbot, tmp_path):
    import json

    data_page = window.pages["data"]
    rows = [{"prompt": f"Say hi {i}", "chosen": f"Hi {i}!", "rejected": "No."} for i in range(12)]
    path = tmp_path / "dpo.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    data_page.load_source(str(path))
    wait_idle(qtbot, data_page)
    assert "preference data" in data_page.last_error
    assert data_page.chosen_only_button.isVisibleTo(data_page)
    data_page.chosen_only_button.click()
    qtbot.waitUntil(lambda: data_page.analysis is not None and not data_page.is_busy, timeout=60000)
    assert window.state.config.data.preference == "chosen_only" and data_page.last_error == ""
    assert "Hi 0!" in data_page.token_view.toPlainText()
