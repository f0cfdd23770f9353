"""The generated hyperparameter form: built from core.config metadata, inline validation, presets."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QLineEdit, QSpinBox  # noqa: E402

from core.config import RunConfig, iter_fields  # noqa: E402
from gui.widgets.config_form import ConfigForm, format_float  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture()
def form(qtbot):
    widget = ConfigForm(("method", "training", "generation"))
    qtbot.addWidget(widget)
    widget.set_config(RunConfig())
    return widget


def test_every_field_has_an_editor_with_its_help_as_tooltip(form):
    for section in ("method", "training", "generation"):
        for f, meta in iter_fields(section):
            editor = form.editors[f"{section}.{f.name}"]
            assert meta["help"] in editor.widget.toolTip()
            assert meta["help"] in editor.help_button.toolTip()
            assert editor.label.text() == (meta["label"] or f.name)
            assert editor.help_button.text() == "?"


def test_widgets_follow_the_field_types(form):
    assert isinstance(form.editors["method.method"].widget, QComboBox)
    assert isinstance(form.editors["method.lora_r"].widget, QSpinBox)
    assert isinstance(form.editors["training.learning_rate"].widget, QLineEdit)
    assert form.editors["training.learning_rate"].widget.text() == "2e-4"
    assert isinstance(form.editors["training.num_epochs"].widget, QDoubleSpinBox)
    assert isinstance(form.editors["training.gradient_checkpointing"].widget, QCheckBox)
    combo = form.editors["training.scheduler"].widget
    assert [combo.itemText(i) for i in range(combo.count())] == ["cosine", "linear", "constant"]


def test_advanced_fields_are_folded_and_basic_ones_visible(form, qtbot):
    form.show()
    qtbot.waitExposed(form)
    assert form.editors["training.learning_rate"].widget.isVisible()
    assert not form.editors["training.weight_decay"].widget.isVisible()
    form.advanced_sections["training"].toggle.click()
    assert form.editors["training.weight_decay"].widget.isVisible()


def test_edits_are_typed_and_unreadable_text_is_marked(form, qtbot):
    with qtbot.waitSignal(form.valueEdited, timeout=1000) as blocker:
        form.set_field_text("training.learning_rate", "5e-5")
    assert blocker.args == ["training.learning_rate", 5e-5]
    with qtbot.assertNotEmitted(form.valueEdited):
        form.set_field_text("training.learning_rate", "fast please")
    assert form.parse_errors()[0].field == "training.learning_rate"
    assert "expected a number" in form.problem_for("training.learning_rate")
    assert form.editors["training.learning_rate"].widget.property("invalid") is True
    form.set_field_text("training.learning_rate", "1e-4")
    assert form.parse_errors() == []
    assert form.problem_for("training.learning_rate") == ""


def test_problems_from_the_validator_are_shown_under_the_field_and_unfold_advanced(form):
    cfg = RunConfig()
    cfg.training.weight_decay = 3.0  # advanced, max 1.0
    form.set_config(cfg)
    form.set_problems(cfg.problems())
    assert "between 0 and 1" in form.problem_for("training.weight_decay")
    assert form.advanced_sections["training"].expanded
    form.set_problems([])
    assert form.problem_for("training.weight_decay") == ""


def test_irrelevant_fields_are_greyed_out(form):
    cfg = RunConfig()
    cfg.method.method = "full"
    cfg.training.max_steps = 30
    form.set_config(cfg)
    assert not form.editors["method.lora_r"].widget.isEnabled()
    assert not form.editors["training.num_epochs"].widget.isEnabled()
    cfg.method.method = "lora"
    form.set_config(cfg)
    assert form.editors["method.lora_r"].widget.isEnabled()


def test_help_button_fills_the_help_panel(form):
    form.editors["method.lora_r"].help_button.click()
    assert form.help_panel.text().startswith("LoRA rank:")


def test_format_float_round_trips():
    for value in (2e-4, 0.05, 1.0, 1e-8, 123.5):
        assert float(format_float(value)) == value
    assert format_float(2e-4) == "2e-4"
