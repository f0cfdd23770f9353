"""Chat page: both panes stream at once, Stop drops stale tokens, export, open_checkpoint."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytest.importorskip("pytestqt")
pytestmark = pytest.mark.gui


def make_adapter_run(workspace: Path, model_dir: Path, name: str = "tiny-run", steps=(2, 4),
                     losses=(3.0, 2.5, 2.2, 2.0), lr=2e-4, seed: int = 1) -> Path:
    """A run folder as core.training writes it: config, metrics, status, checkpoints and a LoRA final/.

    The LoRA B matrices are randomised so the fine-tuned side answers differently from the base.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.config import RunConfig
    from core.runs import create_run_dir, write_status

    cfg = RunConfig(name=name)
    cfg.model.name_or_path = str(model_dir)
    cfg.training.learning_rate = lr
    cfg.training.max_steps = max(steps)
    run_dir = create_run_dir(workspace, name)
    cfg.save(run_dir / "config.yaml")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["query_key_value"],
                                                  task_type="CAUSAL_LM"))
    with torch.no_grad():
        for param_name, param in peft_model.named_parameters():
            if "lora_B" in param_name:
                param.normal_(0, 0.5)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    for step in steps:
        folder = run_dir / "checkpoints" / f"checkpoint-{step}"
        peft_model.save_pretrained(folder)
        (folder / "COMPLETE").write_text("ok")
    peft_model.save_pretrained(run_dir / "final")
    tokenizer.save_pretrained(run_dir / "final")
    with open(run_dir / "metrics.jsonl", "w", encoding="utf-8") as handle:
        for step, loss in enumerate(losses, 1):
            handle.write(json.dumps({"kind": "train", "step": step, "loss": loss, "learning_rate": lr * step / 4,
                                     "time": time.time()}) + "\n")
            if step % 2 == 0:
                handle.write(json.dumps({"kind": "eval", "step": step, "eval_loss": loss + 0.3}) + "\n")
    write_status(run_dir, state="finished", pid=None, global_step=max(steps), total_steps=max(steps),
                 best_eval_loss=min(losses) + 0.3, started=time.time() - 30, ended=time.time())
    return run_dir


@pytest.fixture()
def thread_guard(monkeypatch):
    """Fail a test that leaves a QThread running (every QThread.start is recorded)."""
    from PySide6.QtCore import QThread

    started: list = []
    original = QThread.start

    def recording_start(self, *args):
        started.append(self)
        return original(self, *args)

    monkeypatch.setattr(QThread, "start", recording_start)
    yield started
    left = [t for t in started if t.isRunning()]
    for thread in left:  # do not poison later tests: stop them, then fail
        thread.quit()
        thread.wait(10000)
    assert not left, f"threads left running: {[t.objectName() for t in left]}"


@pytest.fixture()
def workspace(tmp_path, isolated_home):
    folder = tmp_path / "runs"
    folder.mkdir()
    return folder


@pytest.fixture()
def chat_page(qtbot, workspace, tiny_model_dir, thread_guard):
    from gui.pages.chat_page import ChatPage
    from gui.state import StudioState

    make_adapter_run(workspace, tiny_model_dir)
    state = StudioState(workspace=workspace)
    state.config.model.name_or_path = str(tiny_model_dir)
    page = ChatPage(state)
    qtbot.addWidget(page)
    page.max_tokens_spin.setValue(24)
    yield page
    assert page.shutdown(20000)


def _wait_idle(qtbot, page, timeout=30000):
    qtbot.waitUntil(lambda: not page.is_busy, timeout=timeout)


def _stream_both(qtbot, page):
    order: list[str] = []  # which side each streamed piece belonged to, in arrival order
    page._thread_for("base").worker.tokenArrived.connect(lambda chunk: order.append(chunk.side))
    if page._thread_for("tuned") is not page._thread_for("base"):
        page._thread_for("tuned").worker.tokenArrived.connect(lambda chunk: order.append(chunk.side))
    page.send("What is the capital of France?")
    assert page._pending == {"base", "tuned"}
    _wait_idle(qtbot, page)
    turn = page._turns[-1]
    assert turn.answers["base"] and turn.answers["tuned"]
    assert turn.answers["base"] != turn.answers["tuned"]  # the adapter is really applied
    assert turn.answers["base"] in page.panes["base"].text() and turn.answers["tuned"] in page.panes["tuned"].text()
    assert order.count("base") > 1 and order.count("tuned") > 1  # streamed piece by piece
    assert set(page.timings) == {"base", "tuned"}
    assert all(t["first_token_seconds"] > 0 for t in page.timings.values())
    return order, turn.answers


def test_both_panes_stream_at_the_same_time_from_one_model(qtbot, chat_page):
    from core.generation import ModelSession

    loads = []
    chat_page._thread_for("base").worker._factory = lambda source, checkpoint: loads.append(source) or ModelSession(
        source, checkpoint=checkpoint, device="cpu")
    assert chat_page._thread_for("base") is chat_page._thread_for("tuned")  # one worker, one model
    order, _ = _stream_both(qtbot, chat_page)
    assert len(loads) == 1
    # One mixed-adapter generate: the two answers' pieces interleave instead of one after the other.
    assert order.index("tuned") < len(order) - 1 - order[::-1].index("base")
    assert order.index("base") < len(order) - 1 - order[::-1].index("tuned")


def test_a_model_per_pane_gives_the_same_answers(qtbot, workspace, tiny_model_dir, thread_guard):
    from gui.pages.chat_page import ChatPage
    from gui.state import StudioState

    make_adapter_run(workspace, tiny_model_dir)
    state = StudioState(workspace=workspace)
    state.config.model.name_or_path = str(tiny_model_dir)
    answers = {}
    for pair in (True, False):
        page = ChatPage(state, pair_answers=pair)
        qtbot.addWidget(page)
        page.max_tokens_spin.setValue(24)
        if not pair:
            assert page._thread_for("base") is not page._thread_for("tuned")
        answers[pair] = _stream_both(qtbot, page)[1]
        assert page.shutdown(20000)
    assert answers[True] == answers[False]  # greedy: batching both panes changes nothing


def test_stop_drops_stale_tokens(qtbot, chat_page):
    page = chat_page
    page.max_tokens_spin.setValue(400)
    first_id = page.send("Who wrote Hamlet?")
    qtbot.waitUntil(lambda: all(page._turns[-1].answers[s] for s in ("base", "tuned")), timeout=30000)
    page.stop()
    assert not page.is_busy
    stale = []
    page._thread_for("base").worker.tokenArrived.connect(
        lambda chunk: stale.append(chunk) if chunk.generation_id == first_id else None)
    page.new_conversation()
    page.max_tokens_spin.setValue(8)
    second_id = page.send("What is the capital of France?")
    assert second_id == first_id + 1
    _wait_idle(qtbot, page)
    qtbot.wait(200)  # let any late chunk of the first request arrive (it must be dropped)
    for side in ("base", "tuned"):
        text = page.panes[side].text()
        assert "Hamlet" not in text and "[stopped]" not in text
        assert text.count("You\n") == 1
        assert page._turns[-1].answers[side] in text
    assert len(page._turns) == 1


def test_multi_turn_export_and_open_checkpoint(qtbot, chat_page, tmp_path):
    page = chat_page
    run_dir = page.run_combo.currentData()
    page.open_checkpoint(run_dir, 2)
    assert page.checkpoint_combo.currentText() == "step 2"
    page.max_tokens_spin.setValue(6)
    page.send("Hello")
    _wait_idle(qtbot, page)
    page.send("And again")
    _wait_idle(qtbot, page)
    messages = page._messages("tuned")
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == page._turns[0].answers["tuned"]
    data = json.loads(page.export_conversation(tmp_path / "chat.json").read_text())
    assert [t["user"] for t in data["turns"]] == ["Hello", "And again"]
    assert data["checkpoint"] == "step 2"
    markdown = page.export_conversation(tmp_path / "chat.md").read_text()
    assert "## Turn 2" in markdown and "**Fine-tuned:**" in markdown
    with pytest.raises(ValueError):
        page.open_checkpoint(run_dir, 999)


def test_model_text_is_plain_text(qtbot, chat_page):
    page = chat_page
    pane = page.panes["base"]
    pane.add_text("<b>not bold</b> &amp;")
    assert "<b>not bold</b> &amp;" in pane.text()


def test_base_answer_is_the_same_with_or_without_a_run(qtbot, chat_page):
    """The base side of a run and the plain base model get the same prompt, so greedy answers match.

    They used to differ: with a run, the prompt was written in the run's template (classic:
    "### Question: …"); without one, in the tokenizer's chat template.
    """
    page = chat_page
    assert page.run_combo.currentData() is not None
    page.sample_check.setChecked(False)
    page.send("What is the capital of France?")
    _wait_idle(qtbot, page)
    with_run = page._turns[-1].answers["base"]
    assert with_run
    page.new_conversation()
    page.run_combo.setCurrentIndex(0)  # (none: base model only)
    assert page.run_combo.currentData() is None
    assert "'classic' template" in page.panes["base"].subtitle.text()
    page.send("What is the capital of France?")
    _wait_idle(qtbot, page)
    assert page._turns[-1].answers["base"] == with_run
    assert page._turns[-1].notes.get("tuned") == "no run"


def test_answer_cut_by_the_limit_says_so_and_continues(qtbot, chat_page):
    from core.config import GenerationConfig
    from core.generation import ModelSession

    page = chat_page
    page.max_tokens_spin.setValue(4)
    page.send("Who wrote Hamlet?")
    _wait_idle(qtbot, page)
    pane = page.panes["tuned"]
    first = page._turns[-1].answers["tuned"]
    assert page.timings["tuned"] and "cut off at the 4-token limit" in pane.status.text()
    assert not pane.limit_bar.isHidden() and "all 4 new tokens" in pane.limit_label.text()
    assert pane.continue_button.isEnabled()
    pane.continue_button.click()
    assert page.is_busy
    _wait_idle(qtbot, page)
    continued = page._turns[-1].answers["tuned"]
    assert continued.startswith(first) and len(continued) > len(first)
    assert len(page._turns) == 1 and pane.text().endswith(continued)
    # The continuation is what one longer greedy answer would have said.
    session = ModelSession(page.run_combo.currentData(), device="cpu")
    longer = session.generate([{"role": "user", "content": "Who wrote Hamlet?"}],
                              GenerationConfig(**{**vars(page.generation_config()), "max_new_tokens": 8}))
    assert continued == longer.text
    page.raise_limit()
    assert page.max_tokens_spin.value() == 8
