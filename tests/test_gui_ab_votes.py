"""Blind A/B in Chat: 20 scripted votes through the page are saved as preference records with a win rate."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")
pytestmark = pytest.mark.gui

from test_gui_chat_page import chat_page, make_adapter_run, thread_guard, workspace  # noqa: E402, F401


def test_twenty_blind_votes_are_saved_with_a_win_rate(qtbot, chat_page, tmp_path):  # noqa: F811
    from core.preference import VoteStore, win_rate

    page = chat_page
    page.max_tokens_spin.setValue(6)
    page.ab_random.seed(7)
    page.blind_toggle.setChecked(True)
    assert page.ab_bar.isVisible() or not page.isVisible()
    assert [p.title.text() for p in page._pane_order] == ["Answer A", "Answer B"]
    a_sides = []
    for i in range(20):
        page.send(f"Question {i}: what is the capital of France?")
        qtbot.waitUntil(lambda: not page.is_busy, timeout=60000)
        assert page.ab_bar.buttons["a"].isEnabled()
        a_side = page._ab_sides[0]
        a_sides.append(a_side)
        # Hidden: the panes say A and B, not which model.
        assert page._pane_order[0].title.text() == "Answer A"
        assert "Fine-tuned" not in page._pane_order[0].text() + page._pane_order[1].text()
        assert "Base model" not in page._pane_order[0].text() + page._pane_order[1].text()
        # The scripted voter prefers the fine-tuned answer, except every fifth prompt (a tie).
        vote = "tie" if i % 5 == 4 else ("a" if a_side == "tuned" else "b")
        page.ab_bar.buttons[vote].click()
        assert "Fine-tuned" in page._pane_order[0].title.text() + page._pane_order[1].title.text()  # revealed
        assert not page.ab_bar.buttons["a"].isEnabled()  # one vote per prompt
        assert "decided votes" in page.ab_bar.rate.text()
    assert {"base", "tuned"} == set(a_sides)  # random order: each model was A sometimes
    store = page.votes_store()
    assert store.path == page.state.workspace / "preferences" / "votes.jsonl"
    records = VoteStore(store.path).records()
    assert len(records) == 20
    first = records[0]
    assert first.prompt.startswith("Question 0") and first.a and first.b
    assert first.models["run"] and first.models["base"] and first.settings["max_new_tokens"] == 6
    decided = [r for r in records if r.vote != "tie"]
    assert all(r.winner_model == "fine-tuned" and r.chosen for r in decided)
    rate = win_rate(records)
    assert (rate.wins, rate.losses, rate.ties) == (16, 0, 4)
    assert rate.low > 0.75 and rate.high == 1.0
    assert "Fine-tuned wins 100% of 16 decided votes" in page.ab_bar.rate.text()

    # Review: change a vote and export the pairs.
    from gui.widgets.ab_vote import VoteReviewDialog

    dialog = VoteReviewDialog(store, page)
    qtbot.addWidget(dialog)
    assert dialog.table.rowCount() == 20
    combo = dialog.table.cellWidget(0, 3)
    combo.setCurrentIndex(3)  # both bad
    assert VoteStore(store.path).records()[0].vote == "both_bad"
    assert dialog.export(tmp_path / "pairs.jsonl") == 15
    page.blind_toggle.setChecked(False)
    assert page.panes["base"].title.text() == "Base model"
