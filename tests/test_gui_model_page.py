"""The Model page: loading the tiny model fills the facts and the tree; the method changes trainable counts."""

from __future__ import annotations

import pytest
from gui_guard import qt_guard, temp_settings  # noqa: F401  (autouse fixtures)

pytestmark = pytest.mark.gui


@pytest.fixture()
def page(qtbot, isolated_home):
    from gui.pages.model_page import ModelPage
    from gui.state import StudioState

    widget = ModelPage(StudioState())
    qtbot.addWidget(widget)
    yield widget
    assert widget.shutdown(10000)


def test_loads_tiny_model_and_method_updates_trainable(page, qtbot, tiny_model_dir):
    with qtbot.waitSignal(page.state.modelChanged, timeout=60000):
        page.load_model(str(tiny_model_dir))
    qtbot.waitUntil(lambda: not page.is_busy, timeout=10000)
    assert page.last_error == ""
    info = page.info
    assert info.total_params > 0 and 0 < info.trainable_params < info.total_params
    assert page.tree.topLevelItemCount() == 1 and page.tree.topLevelItem(0).childCount() > 0
    assert page.info_labels["shape"].text() == "2 × 64"
    with qtbot.waitSignal(page.state.modelChanged, timeout=30000):
        page.method_combo.setCurrentIndex(page.method_combo.findData("full"))
    qtbot.waitUntil(lambda: not page.is_busy, timeout=10000)
    assert page.state.config.method.method == "full"
    assert page.info.trainable_params == page.info.total_params


def test_qlora_disabled_without_cuda(page):
    index = page.method_combo.findData("qlora")
    item = page.method_combo.model().item(index)
    assert not item.isEnabled() and "NVIDIA" in item.toolTip()


def test_missing_folder_shows_error(page, qtbot, tmp_path):
    page.load_model(str(tmp_path / "no-such-model"))
    qtbot.waitUntil(lambda: not page.is_busy, timeout=30000)
    assert "does not exist" in page.last_error or "not" in page.last_error
    assert page.error_label.isVisibleTo(page)
