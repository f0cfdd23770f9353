"""The GUI asks before a model's own code runs (naming the model and the risk) and remembers a yes."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")
from gui_guard import qt_guard, temp_settings  # noqa: E402,F401  (autouse fixtures)
from test_consent import make_remote_code_model  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture()
def answers(monkeypatch):
    """Replace the modal QMessageBox.exec: pops the next scripted answer and keeps the questions shown."""
    from PySide6.QtWidgets import QMessageBox

    script = {"answers": [], "asked": []}

    def fake_exec(box):
        script["asked"].append((box.windowTitle(), box.text()))
        return script["answers"].pop(0)

    monkeypatch.setattr(QMessageBox, "exec", fake_exec)
    return script


@pytest.fixture()
def remote_code_model(tiny_model_dir, tmp_path):
    return make_remote_code_model(tiny_model_dir, tmp_path)


@pytest.fixture()
def page(qtbot, isolated_home):
    from gui.pages.model_page import ModelPage
    from gui.state import StudioState

    page = ModelPage(StudioState())
    qtbot.addWidget(page)
    yield page
    assert page.shutdown(30000)


def test_model_page_asks_before_remote_code_and_remembers_yes(page, qtbot, answers, remote_code_model):
    from PySide6.QtWidgets import QMessageBox

    from core import consent

    answers["answers"] = [QMessageBox.StandardButton.No]
    page.load_model(str(remote_code_model))
    qtbot.waitUntil(lambda: not page.is_busy and bool(answers["asked"]), timeout=60000)
    title, text = answers["asked"][0]
    assert title == "Run the model's own code?"
    assert str(remote_code_model) in text and "your permissions" in text
    assert "--trust-remote-code" in page.last_error  # refused: nothing loaded, the reason shown
    assert not consent.granted(str(remote_code_model), "trust_remote_code")

    answers["answers"] = [QMessageBox.StandardButton.Yes]
    with qtbot.waitSignal(page.state.modelChanged, timeout=60000):
        page.load_model(str(remote_code_model))
    qtbot.waitUntil(lambda: not page.is_busy, timeout=30000)
    assert len(answers["asked"]) == 2 and consent.granted(str(remote_code_model), "trust_remote_code")
    assert type(page.loaded.model).__name__ == "SecretLM"

    page.load_model(str(remote_code_model))  # remembered: not asked again
    qtbot.waitUntil(lambda: not page.is_busy, timeout=60000)
    assert len(answers["asked"]) == 2 and page.last_error == ""


def test_confirm_consents_asks_when_the_settings_request_remote_code(qtbot, isolated_home, answers, remote_code_model):
    from PySide6.QtWidgets import QMessageBox

    from core.config import ModelConfig
    from gui.consent_prompt import confirm_consents

    cfg = ModelConfig(name_or_path=str(remote_code_model), trust_remote_code=True)
    answers["answers"] = [QMessageBox.StandardButton.No]
    assert confirm_consents(None, cfg) is False
    answers["answers"] = [QMessageBox.StandardButton.Yes]
    assert confirm_consents(None, cfg) is True
    assert confirm_consents(None, cfg) is True  # no question the second time
    assert len(answers["asked"]) == 2


def test_evaluate_and_chat_ask_before_loading_a_run_that_wants_remote_code(qtbot, answers, isolated_home, tmp_path,
                                                                            remote_code_model):
    from PySide6.QtWidgets import QMessageBox

    from core.config import RunConfig
    from gui.pages.chat_page import ChatPage
    from gui.pages.evaluate_page import EvaluatePage
    from gui.state import StudioState

    workspace = tmp_path / "runs"
    run = workspace / "remote-run"
    run.mkdir(parents=True)
    cfg = RunConfig(name="remote-run")
    cfg.model.name_or_path = str(remote_code_model)
    cfg.model.trust_remote_code = True  # the file asks; only the person can allow
    cfg.save(run / "config.yaml")
    (run / "status.json").write_text('{"state": "finished", "global_step": 1}', encoding="utf-8")
    state = StudioState(workspace=workspace)
    evaluate = EvaluatePage(state)
    chat = ChatPage(state)
    qtbot.addWidget(evaluate)
    qtbot.addWidget(chat)
    evaluate.run_combo.addItem("remote-run", str(run))
    evaluate.run_combo.setCurrentIndex(evaluate.run_combo.count() - 1)
    answers["answers"] = [QMessageBox.StandardButton.No]
    evaluate.start()
    assert not evaluate.is_busy and len(answers["asked"]) == 1
    assert str(remote_code_model) in answers["asked"][0][1]
    chat.run_combo.addItem("remote-run", str(run))
    chat.run_combo.setCurrentIndex(chat.run_combo.count() - 1)
    answers["answers"] = [QMessageBox.StandardButton.No]
    assert chat.send("Hello?") is None and not chat.is_busy and len(answers["asked"]) == 2
    evaluate.shutdown(10000)
    chat.shutdown(10000)
