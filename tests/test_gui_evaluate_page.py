"""Evaluate page: a background evaluation fills the metrics and the filterable comparison table."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("pytestqt")
from test_gui_chat_page import thread_guard  # noqa: E402,F401  (fixture: fails tests leaving a QThread running)
from test_gui_runs_page import tiny_config  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir):
    """One finished LoRA run of the tiny model (4 steps) with a held-out split."""
    from core.training import train

    root = tmp_path_factory.mktemp("evaluate-page")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FINETUNE_STUDIO_HOME", str(root / "home"))
        result = train(tiny_config(tiny_model_dir, "evaluated", 5e-3), workspace=root / "runs")
    assert result.state == "finished"
    return result.run_dir


@pytest.fixture()
def evaluate_page(qtbot, finished_run, thread_guard, monkeypatch, tmp_path):
    from gui.pages.evaluate_page import EvaluatePage
    from gui.state import StudioState

    monkeypatch.setenv("FINETUNE_STUDIO_HOME", str(tmp_path / "home"))
    page = EvaluatePage(StudioState(workspace=finished_run.parent))
    qtbot.addWidget(page)
    yield page
    assert page.shutdown(30000)


def _metric_cells(page):
    return {page.metrics_table.verticalHeaderItem(r).text():
            [page.metrics_table.item(r, c).text() if page.metrics_table.item(r, c) else ""
             for c in range(3)] for r in range(page.metrics_table.rowCount())}


def test_evaluation_fills_tables_and_filters(qtbot, evaluate_page, finished_run, monkeypatch):
    page = evaluate_page
    page.select_run(finished_run)
    page.n_spin.setValue(3)
    page.tokens_spin.setValue(6)
    progress = []
    page._task.progressed.connect(lambda update: progress.append(update.fraction))
    with qtbot.waitSignal(page.evaluationFinished, timeout=60000) as blocker:
        page.evaluate_button.click()
        assert page.is_busy and page.cancel_button.isEnabled()
    report = blocker.args[0]
    assert not page.is_busy
    assert len(report.rows) == 3
    assert any(f is not None and f > 0 for f in progress)

    cells = _metric_cells(page)
    assert set(cells) == {"Loss", "Perplexity", "BLEU", "ROUGE-1", "ROUGE-2", "ROUGE-L", "Exact match"}
    assert cells["Loss"][0] == f"{report.base['loss']:.3f}" and cells["Loss"][1] == f"{report.tuned['loss']:.3f}"
    # One format per metric, value and signed change alike: loss 3 decimals, perplexity 1, BLEU 1 (0-100),
    # ROUGE 3 (0-1), exact match a percentage with 1 decimal.
    change = report.tuned["loss"] - report.base["loss"]
    assert cells["Loss"][2] == f"{change:+.3f}"
    assert cells["Perplexity"][2] == f"{report.tuned['perplexity'] - report.base['perplexity']:+.1f}"
    assert cells["BLEU"][0] == f"{report.base['bleu']:.1f}"
    assert cells["ROUGE-L"][2] == f"{report.tuned['rougeL'] - report.base['rougeL']:+.3f}".replace("-0.000", "+0.000")
    assert cells["Exact match"][0].endswith("%") and cells["Exact match"][2][0] in "+-"
    # Every metric is visible without scrolling, with its direction and a "?" that explains it.
    table = page.metrics_table
    assert table.verticalScrollBar().maximum() == 0
    assert table.height() >= sum(table.rowHeight(r) for r in range(table.rowCount()))
    assert table.item(0, 3).text() == "↓" and table.item(2, 3).text() == "↑"
    assert "Range: 0 to 100" in page.metric_help["bleu"].text_shown
    # Score columns use the chosen metric's format; headers stay short so the text columns get the room.
    page.score_combo.setCurrentIndex(page.score_combo.findData("bleu"))
    bleu = page.model.rows[0].base_scores["bleu"]
    assert page.model.data(page.model.index(0, 5)) == f"{bleu:.1f}"
    from PySide6.QtCore import Qt

    assert page.model.headerData(5, Qt.Orientation.Horizontal) == "Base"
    assert "BLEU" in page.score_help.text_shown
    page.score_combo.setCurrentIndex(page.score_combo.findData("rougeL"))
    assert page.proxy.rowCount() == 3
    assert page.report_button.isEnabled()

    # Filters: better + worse + unchanged add up to all rows, each row in the right group.
    counts = {}
    for mode in ("Got better", "Got worse", "Unchanged"):
        page.filter_combo.setCurrentText(mode)
        counts[mode] = page.proxy.rowCount()
        for r in range(page.proxy.rowCount()):
            delta = page.model.delta(page.model.rows[page.proxy.mapToSource(page.proxy.index(r, 0)).row()])
            assert (delta > 0) if mode == "Got better" else (delta < 0) if mode == "Got worse" else delta == 0
    assert sum(counts.values()) == 3
    page.filter_combo.setCurrentText("All questions")

    # Sorting by the change column uses the numbers, not the text.
    page.table.sortByColumn(7, page.table.horizontalHeader().sortIndicatorOrder().DescendingOrder)
    deltas = [page.proxy.data(page.proxy.index(r, 7), page.proxy.sortRole()) for r in range(3)]
    assert deltas == sorted(deltas, reverse=True)

    # The detail view shows the full texts as plain text.
    page.table.selectRow(0)
    assert "Reference answer" in page.detail.toPlainText()

    opened = []
    monkeypatch.setattr("gui.pages.evaluate_page.QDesktopServices.openUrl", lambda url: opened.append(url) or True)
    assert page.open_report()
    assert opened[0].toLocalFile().endswith("evaluation/report.html")

    # A fresh page shows the last evaluation from the run folder.
    from gui.pages.evaluate_page import EvaluatePage

    again = EvaluatePage(page.state)
    qtbot.addWidget(again)
    again.select_run(finished_run)
    assert again.model.rowCount() == 3
    assert _metric_cells(again)["Loss"] == cells["Loss"]
    metrics = json.loads((finished_run / "evaluation" / "metrics.json").read_text())
    assert metrics["n_generated"] == 3


def test_cancel_evaluation(qtbot, evaluate_page, finished_run):
    page = evaluate_page
    page.select_run(finished_run)
    page.n_spin.setValue(50)
    page.tokens_spin.setValue(64)
    with qtbot.waitSignal(page._task.finished, timeout=60000) as blocker:
        page.start()
        qtbot.waitUntil(lambda: page.progress.value() > 0 or page.progress.maximum() == 0, timeout=30000)
        page.cancel()
    assert blocker.args[0].cancelled
    assert page.progress.format() == "Cancelled"
    assert page.evaluate_button.isEnabled()
