"""Every number and setting the GUI shows has words: a "?" (gui.widgets.help_button) backed by core.glossary."""

from __future__ import annotations

import pytest
from gui_guard import qt_guard, temp_settings  # noqa: F401  (autouse fixtures)

pytestmark = pytest.mark.gui


def _help_keys(widget) -> list[str]:
    from gui.widgets.help_button import HelpButton

    return [button.key for button in widget.findChildren(HelpButton)]


def test_help_button_shows_the_glossary_words_on_click(qtbot):
    from PySide6.QtWidgets import QToolTip

    from core.glossary import explain
    from gui.widgets.help_button import HelpButton

    button = HelpButton("metric.perplexity")
    qtbot.addWidget(button)
    button.show()
    assert button.text() == "?" and button.text_shown == f"Perplexity: {explain('metric.perplexity')}"
    button.click()
    assert "Lower is better." in QToolTip.text() and "&lt;" not in button.text_shown
    QToolTip.hideText()
    with pytest.raises(KeyError):
        HelpButton("metric.no-such-metric")


def test_model_page_explains_every_fact_and_module(qtbot, isolated_home, tiny_model_dir):
    from core.glossary import explain_module, has_entry
    from gui.pages.model_page import ModelPage
    from gui.state import StudioState

    page = ModelPage(StudioState())
    qtbot.addWidget(page)
    assert set(page.help_buttons) == set(page.info_labels)  # a "?" next to every fact
    keys = _help_keys(page)
    assert all(has_entry(key) for key in keys) and {f"fact.{k}" for k in page.info_labels} <= set(keys)
    with qtbot.waitSignal(page.state.modelChanged, timeout=60000):
        page.load_model(str(tiny_model_dir))
    qtbot.waitUntil(lambda: not page.is_busy, timeout=30000)
    top = page.tree.topLevelItem(0)
    assert top.toolTip(1) == explain_module(top.text(1)) != ""
    page.tree.setCurrentItem(top.child(0))
    assert explain_module(top.child(0).text(1)) in page.module_help.text()
    assert page.shutdown(10000)


def test_chat_settings_and_status_have_words(qtbot, isolated_home, tmp_path):
    from core.glossary import has_entry
    from gui.pages.chat_page import ChatPage
    from gui.state import StudioState

    page = ChatPage(StudioState(workspace=tmp_path))
    qtbot.addWidget(page)
    settings = set(_help_keys(page.settings_box))
    assert settings == {f"generation.{name}" for name in
                        ("max_new_tokens", "do_sample", "temperature", "top_p", "repetition_penalty", "seed")}
    assert all(has_entry(key) for key in _help_keys(page))
    for pane in page.panes.values():
        assert _help_keys(pane) == ["chat.ended_by"]  # what "finished" / "cut off" mean
    assert page.shutdown(5000)


def test_evaluate_metrics_have_direction_range_and_words(qtbot, isolated_home, tmp_path):
    from core.glossary import GLOSSARY, has_entry
    from gui.pages.evaluate_page import METRIC_ROWS, EvaluatePage
    from gui.state import StudioState

    page = EvaluatePage(StudioState(workspace=tmp_path))
    qtbot.addWidget(page)
    assert [key for key, _, _ in METRIC_ROWS] == list(page.metric_help)
    for row, (key, _label, lower_is_better) in enumerate(METRIC_ROWS):
        term = GLOSSARY[f"metric.{key}"]
        assert lower_is_better == (not term.higher_is_better)
        assert page.metrics_table.item(row, 3).text() == ("↓" if lower_is_better else "↑")
        assert f"Range: {term.range}." in page.metric_help[key].text_shown
    assert all(has_entry(key) for key in _help_keys(page))
    # The metrics table shows every row without scrolling.
    page.resize(1280, 800)
    page.show()
    qtbot.waitExposed(page)
    assert page.metrics_table.verticalScrollBar().maximum() == 0
    assert page.shutdown(5000)


def test_estimate_panel_explains_each_part(qtbot, isolated_home, tiny_model_dir):
    from test_estimate import tiny_config

    from core.estimate import architecture, estimate
    from gui.widgets.estimate_panel import EstimatePanel

    cfg = tiny_config(tiny_model_dir)
    est = estimate(cfg, model_info=architecture(cfg), measure_device=False)
    panel = EstimatePanel()
    qtbot.addWidget(panel)
    panel.show_estimate(est)
    keys = _help_keys(panel)
    assert {f"memory.{part.name}" for part in est.parts} <= set(keys)
    assert "estimate.time" in keys
