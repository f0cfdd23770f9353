"""The Data page: samples and files load in workers, mapping and template re-render, errors stay on the page."""

from __future__ import annotations

import json

import pytest
from gui_guard import qt_guard, temp_settings  # noqa: F401  (autouse fixtures)

pytestmark = pytest.mark.gui


@pytest.fixture()
def page(qtbot, tiny_model_dir, isolated_home):
    from gui.pages.data_page import DataPage
    from gui.state import StudioState

    state = StudioState()
    state.update("model", "name_or_path", str(tiny_model_dir))
    widget = DataPage(state)
    qtbot.addWidget(widget)
    yield widget
    assert widget.shutdown(10000)


def wait_idle(qtbot, page, timeout=30000):
    qtbot.waitUntil(lambda: not page.is_busy, timeout=timeout)


def test_sample_loads_with_schema_tokens_and_histogram(page, qtbot):
    page.load_source("sample:trivia")
    wait_idle(qtbot, page)
    assert page.last_error == ""
    assert page.analysis.schema == "question_answer"
    assert page.table_model.rowCount() > 0 and page.table_model.columnCount() == 2
    assert page.token_view.trained_tokens > 0 and page.token_view.masked_tokens > 0
    assert len(page.histogram.lengths) == page.analysis.n_rows
    assert page.state.config.data.source == "sample:trivia"


def test_jsonl_file_mapping_change_rerenders(page, qtbot, tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"ask": f"What is {i} plus {i}?", "reply": f"It is {2 * i}.", "note": "x" * (i % 5)} for i in range(300)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    page.load_source(str(path))
    wait_idle(qtbot, page)
    # "ask"/"reply" are not role names, so detection fails until the user maps them.
    assert "cannot tell" in page.last_error
    page.schema_combo.setCurrentIndex(page.schema_combo.findData("question_answer"))
    wait_idle(qtbot, page)
    page.state.update("data", "column_map", {"question": "ask", "answer": "reply"})
    qtbot.waitUntil(lambda: page.analysis is not None and not page.is_busy, timeout=30000)
    assert page.analysis.column_map == {"question": "ask", "answer": "reply"}
    assert page.table_model.total_rows == 300
    text_before = page.token_view.toPlainText()
    assert "What is 0 plus 0?" in text_before
    combo = page.role_combos["answer"]
    combo.setCurrentIndex(combo.findData("note"))  # map the answer to another column
    qtbot.waitUntil(lambda: page.analysis.column_map.get("answer") == "note" and not page.is_busy, timeout=30000)
    assert page.state.config.data.column_map["answer"] == "note"
    assert page.token_view.toPlainText() != text_before


def test_bad_file_shows_error_and_page_keeps_working(page, qtbot, tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"question": "a", "answer": "b"}\n{not json\n{"question": "c", "answer": "d"}\n', encoding="utf-8")
    page.load_source(str(path))
    wait_idle(qtbot, page)
    assert page.analysis is not None and [b.line for b in page.analysis.bad_rows] == [2]
    assert page.bad_list.count() == 1 and "line 2" in page.bad_list.item(0).text()
    page.skip_bad.setChecked(True)
    assert page.state.config.data.skip_bad_rows is True
    page.load_source(str(tmp_path / "missing.jsonl"))
    wait_idle(qtbot, page)
    assert "not found" in page.last_error and page.error_label.isVisibleTo(page)
    page.load_source("sample:trivia")
    wait_idle(qtbot, page)
    assert page.last_error == ""


def test_histogram_counts_truncated_examples(page, qtbot, tmp_path):
    path = tmp_path / "lengths.jsonl"
    rows = [{"question": "q", "answer": "word " * n} for n in (5, 10, 200, 400)]
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    page.max_length_spin.setValue(64)
    page.load_source(str(path))
    wait_idle(qtbot, page)
    assert page.histogram.n_over == 2
    assert "2 of 4 examples" in page.truncation_label.text()
    page.max_length_spin.setValue(4096)
    assert page.histogram.n_over == 0 and "All 4 examples fit" in page.truncation_label.text()
    assert page.state.config.training.max_length == 4096
    wait_idle(qtbot, page)


def test_lazy_table_fetches_in_chunks(qtbot):
    from gui.widgets.lazy_table import CHUNK, LazyTableModel, RowSource

    model = LazyTableModel()
    model.set_source(RowSource([{"a": i} for i in range(CHUNK * 3 + 5)]))
    assert model.rowCount() == CHUNK and model.canFetchMore()
    model.fetchMore()
    assert model.rowCount() == 2 * CHUNK
    assert model.data(model.index(5, 0)) == "5"
