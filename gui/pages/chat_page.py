"""Chat page: one prompt, two panes (base | fine-tuned) streaming their answers at the same time.

Each pane has its own ``ChatWorker`` on its own QThread (see ``gui.chat_workers``), so both answers
stream concurrently. Every Send gets a new generation id; tokens carrying another id are dropped, so
after Stop (or a new question) nothing from the old answer can appear. Model text is inserted as
plain text only.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QFont, QGuiApplication, QKeySequence, QShortcut, QTextCharFormat, QTextCursor
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QSplitter,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from core.cancel import StopToken
from core.config import GenerationConfig, field_meta
from core.generation import stop_reason
from gui import plain
from gui.chat_workers import ChatAnswer, ChatPair, ChatPaneThread, ChatRequest, ChatStatus, SharedSessions, TokenChunk
from gui.consent_prompt import confirm_run_consents
from gui.widgets.help_button import HelpButton
from gui.widgets.page_heading import compact_page_layout
from gui.widgets.run_picker import FINAL as _FINAL
from gui.widgets.run_picker import add_run_item, fill_checkpoints, first_enabled_run

logger = logging.getLogger(__name__)

SIDES = ("base", "tuned")
_SIDE_TITLES = {"base": "Base model", "tuned": "Fine-tuned"}


@dataclass
class _Turn:
    user: str
    answers: dict = field(default_factory=lambda: {"base": "", "tuned": ""})
    notes: dict = field(default_factory=dict)  # side -> "stopped" / error text


class _Pane(QFrame):
    """One side: title, transcript (plain text), and a one-line status."""

    def __init__(self, side: str, parent=None):
        super().__init__(parent)
        self.side = side
        self.setObjectName(f"chatPane_{side}")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.setSpacing(4)
        self.title = QLabel(_SIDE_TITLES[side])
        font = self.title.font()
        font.setBold(True)
        font.setPointSizeF(font.pointSizeF() * 1.1)
        self.title.setFont(font)
        self.subtitle = QLabel("")
        self.subtitle.setStyleSheet("color: palette(mid);")
        self.subtitle.setTextFormat(Qt.TextFormat.PlainText)
        self.subtitle.setWordWrap(True)
        self.transcript = QPlainTextEdit()
        self.transcript.setReadOnly(True)
        self.transcript.setObjectName(f"transcript_{side}")
        self.transcript.setPlaceholderText("Answers appear here, token by token.")
        self.status = QLabel("Idle")
        self.status.setTextFormat(Qt.TextFormat.PlainText)
        self.status.setStyleSheet("color: palette(mid);")
        self.status.setWordWrap(True)
        # Shown when an answer was cut off by the max-new-tokens limit: say so, offer to go on.
        self.limit_bar = QFrame()
        self.limit_bar.setObjectName(f"limitBar_{side}")
        self.limit_bar.setFrameShape(QFrame.Shape.StyledPanel)
        bar = QVBoxLayout(self.limit_bar)
        bar.setContentsMargins(6, 4, 6, 4)
        bar.setSpacing(4)
        self.limit_label = QLabel("")
        self.limit_label.setTextFormat(Qt.TextFormat.PlainText)
        self.limit_label.setWordWrap(True)
        bar.addWidget(self.limit_label)
        limit_buttons = QHBoxLayout()
        self.continue_button = QPushButton("Continue")
        self.continue_button.setObjectName(f"continue_{side}")
        self.continue_button.setToolTip("Generate more tokens that carry on this same answer")
        self.raise_limit_button = QPushButton("Raise the limit")
        self.raise_limit_button.setObjectName(f"raiseLimit_{side}")
        self.raise_limit_button.setToolTip("Double 'Max new tokens' for the next answers")
        limit_buttons.addWidget(self.continue_button)
        limit_buttons.addWidget(self.raise_limit_button)
        limit_buttons.addStretch(1)
        bar.addLayout(limit_buttons)
        self.limit_bar.setVisible(False)
        layout.addWidget(self.title)
        layout.addWidget(self.subtitle)
        layout.addWidget(self.transcript, 1)
        layout.addWidget(self.limit_bar)
        status_row = QHBoxLayout()
        status_row.addWidget(self.status, 1)
        status_row.addWidget(HelpButton("chat.ended_by"), 0, Qt.AlignmentFlag.AlignTop)
        layout.addLayout(status_row)
        self._speaker_format = QTextCharFormat()
        self._speaker_format.setFontWeight(QFont.Weight.Bold)
        self._text_format = QTextCharFormat()

    def text(self) -> str:
        return self.transcript.toPlainText()

    def clear(self) -> None:
        self.transcript.clear()

    def _insert(self, text: str, fmt: QTextCharFormat) -> None:
        cursor = self.transcript.textCursor()
        cursor.movePosition(QTextCursor.MoveOperation.End)
        cursor.insertText(text, fmt)  # plain text: never interpreted as HTML
        self.transcript.setTextCursor(cursor)
        self.transcript.ensureCursorVisible()

    def add_speaker(self, speaker: str) -> None:
        prefix = "" if self.transcript.document().isEmpty() else "\n\n"
        self._insert(f"{prefix}{speaker}\n", self._speaker_format)

    def add_text(self, text: str) -> None:
        self._insert(text, self._text_format)


class ChatPage(QWidget):
    """Base vs fine-tuned chat. ``open_checkpoint(run_dir, step)`` selects what the right side runs."""

    busyChanged = Signal(bool)

    def __init__(self, state, parent=None, *, session_factory=None, share_model: bool = False,
                 pair_answers: bool = True):
        super().__init__(parent)
        self.state = state
        # pair_answers (default): one worker and one loaded model for both panes; a LoRA run answers both in
        # one mixed-adapter batch, so both stream at once with half the memory of a model per pane.
        # Otherwise one worker per pane: share_model gives them one ModelSession (half the memory, answers one
        # after the other); without it each pane loads its own copy.
        self.pair_answers = pair_answers
        self._shared = SharedSessions(session_factory) if share_model else None
        self._session_factory = session_factory
        self._threads: dict[str, ChatPaneThread] = {}
        self._generation_id = 0
        self._active_id: int | None = None
        self._pending: set[str] = set()
        self._stop: StopToken | None = None
        self._turns: list[_Turn] = []
        self._request_started = 0.0
        self.timings: dict[str, dict] = {}  # side -> last answer's timing (shown and used by tests)
        self._last_requests: dict[str, ChatRequest] = {}  # side -> the request of the latest answer
        self._continuing: dict[str, str] = {}  # side -> the answer so far, while "Continue" extends it
        self._answer_ids: dict[str, list[int]] = {}  # side -> the tokens of the last answer (for Continue)
        self.ab_random = random.Random()  # which model is A in blind mode (tests seed it)
        self._ab_sides: tuple[str, str] | None = None  # (side shown as A, side shown as B) of the current prompt
        self._build()
        self._user_chose_base = False  # the user picked "(none: base model only)": keep it on refreshes
        self.refresh_runs()
        state.configChanged.connect(self._on_config_changed)
        # Runs started, finished or deleted anywhere (this window, the CLI) appear here without a click.
        state.runs_model.runsChanged.connect(self._on_runs_changed)

    # ---------------------------------------------------------------------------------- layout
    def _build(self) -> None:
        outer = compact_page_layout(self, "Chat",
                                    "Ask once, compare the base model with your fine-tuned run side by side.")

        picker = QHBoxLayout()
        picker.addWidget(QLabel("Fine-tuned run:"))
        self.run_combo = QComboBox()
        self.run_combo.setObjectName("chatRunCombo")
        self.run_combo.setMinimumWidth(260)
        self.run_combo.setToolTip("The training run whose adapter (or model) answers in the right-hand pane.")
        self.run_combo.currentIndexChanged.connect(self._on_run_changed)
        picker.addWidget(self.run_combo, 2)
        picker.addWidget(QLabel("Checkpoint:"))
        self.checkpoint_combo = QComboBox()
        self.checkpoint_combo.setObjectName("chatCheckpointCombo")
        self.checkpoint_combo.setToolTip("`final` is the model saved at the end of training (the best checkpoint "
                                         "when 'keep the best checkpoint' was on); pick a step to chat with an "
                                         "earlier state.")
        self.checkpoint_combo.currentIndexChanged.connect(self._update_subtitles)
        picker.addWidget(self.checkpoint_combo, 1)
        refresh = QToolButton()
        refresh.setText("⟳")
        refresh.setToolTip("Look for new runs and checkpoints in the workspace")
        refresh.clicked.connect(self.refresh_runs)
        picker.addWidget(refresh)
        self.settings_toggle = QToolButton()
        self.settings_toggle.setText("Generation settings")
        self.settings_toggle.setCheckable(True)
        self.settings_toggle.setChecked(True)
        self.settings_toggle.setToolTip("Show or hide the settings shared by both sides")
        picker.addWidget(self.settings_toggle)
        self.blind_toggle = QToolButton()
        self.blind_toggle.setObjectName("chatBlindToggle")
        self.blind_toggle.setText("Blind A/B")
        self.blind_toggle.setCheckable(True)
        self.blind_toggle.setToolTip("Show the two answers as A and B in random order, vote for the better one, and "
                                     "see which model it was afterwards. Votes are saved as preference data (DPO).")
        self.blind_toggle.toggled.connect(self._on_blind_toggled)
        picker.addWidget(self.blind_toggle)
        outer.addLayout(picker)

        body = QHBoxLayout()
        splitter = QSplitter(Qt.Orientation.Horizontal)
        self.panes = {side: _Pane(side) for side in SIDES}
        for side in SIDES:
            splitter.addWidget(self.panes[side])
            self.panes[side].continue_button.clicked.connect(partial(self.continue_answer, side))
            self.panes[side].raise_limit_button.clicked.connect(self.raise_limit)
        splitter.setChildrenCollapsible(False)
        body.addWidget(splitter, 1)
        self.settings_box = self._build_settings()
        self.settings_toggle.toggled.connect(self.settings_box.setVisible)
        body.addWidget(self.settings_box)
        outer.addLayout(body, 1)
        from gui.widgets.ab_vote import ABVoteBar

        self.ab_bar = ABVoteBar()
        self.ab_bar.voted.connect(self.vote)
        self.ab_bar.reviewRequested.connect(self.review_votes)
        self.ab_bar.setVisible(False)
        outer.addWidget(self.ab_bar)

        prompt_row = QHBoxLayout()
        self.prompt = QPlainTextEdit()
        self.prompt.setObjectName("chatPrompt")
        self.prompt.setPlaceholderText("Type a question for both models…  (Ctrl+Enter to send)")
        self.prompt.setMaximumHeight(90)
        self.prompt.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        prompt_row.addWidget(self.prompt, 1)
        buttons = QVBoxLayout()
        self.send_button = QPushButton("Send")
        self.send_button.setDefault(True)
        self.send_button.setToolTip("Send the prompt to both models (Ctrl+Enter)")
        self.send_button.clicked.connect(self.send)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.setToolTip("Stop both answers now (Esc)")
        self.stop_button.clicked.connect(self.stop)
        buttons.addWidget(self.send_button)
        buttons.addWidget(self.stop_button)
        prompt_row.addLayout(buttons)
        outer.addLayout(prompt_row)

        actions = QHBoxLayout()
        self.new_button = QPushButton("New conversation")
        self.new_button.setToolTip("Forget the previous turns (the models see only the new question)")
        self.new_button.clicked.connect(self.new_conversation)
        self.copy_button = QPushButton("Copy")
        self.copy_button.setToolTip("Copy the conversation as Markdown")
        self.copy_button.clicked.connect(self.copy_conversation)
        self.export_button = QPushButton("Export…")
        self.export_button.setToolTip("Save the conversation as JSON or Markdown")
        self.export_button.clicked.connect(self._export_dialog)
        self.turns_label = QLabel("")
        self.turns_label.setStyleSheet("color: palette(mid);")
        actions.addWidget(self.new_button)
        actions.addWidget(self.copy_button)
        actions.addWidget(self.export_button)
        actions.addStretch(1)
        actions.addWidget(self.turns_label)
        outer.addLayout(actions)

        QShortcut(QKeySequence("Ctrl+Return"), self, activated=self.send)
        QShortcut(QKeySequence("Ctrl+Enter"), self, activated=self.send)
        QShortcut(QKeySequence(Qt.Key.Key_Escape), self, activated=self.stop)
        self._update_turns_label()

    def _build_settings(self) -> QGroupBox:
        box = QGroupBox("Generation (both sides)")
        box.setObjectName("chatSettings")
        box.setMaximumWidth(290)
        form = QFormLayout(box)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)  # never cut a label: wrap the field
        gen = self.state.config.generation

        def meta(name: str) -> dict:
            return field_meta("generation", name)

        def spin(name: str, value, decimals: int | None = None, step: float = 1.0):
            m = meta(name)
            widget = QDoubleSpinBox() if decimals is not None else QSpinBox()
            if decimals is not None:
                widget.setDecimals(decimals)
                widget.setSingleStep(step)
            widget.setRange(m["min"], m["max"] if m["max"] is not None else 10**9)
            widget.setValue(value)
            widget.setToolTip(m["help"])
            label = QLabel(m["label"] or name)
            label.setToolTip(m["help"])
            form.addRow(label, with_help(widget, name))
            return widget

        def with_help(widget, name: str) -> QHBoxLayout:
            row = QHBoxLayout()
            row.setSpacing(4)
            row.addWidget(widget, 1)
            row.addWidget(HelpButton(f"generation.{name}"))  # the setting's help, in plain words
            return row

        self.max_tokens_spin = spin("max_new_tokens", gen.max_new_tokens)
        m = meta("do_sample")
        self.sample_check = QCheckBox("Sample (off = greedy)")
        self.sample_check.setChecked(gen.do_sample)
        self.sample_check.setToolTip(m["help"])
        form.addRow(with_help(self.sample_check, "do_sample"))
        self.temperature_spin = spin("temperature", gen.temperature, 2, 0.05)
        self.top_p_spin = spin("top_p", gen.top_p, 2, 0.05)
        self.repetition_spin = spin("repetition_penalty", gen.repetition_penalty, 2, 0.05)
        self.seed_spin = spin("seed", gen.seed)
        self.sample_check.toggled.connect(self._sync_sampling_widgets)
        self._sync_sampling_widgets(gen.do_sample)
        note = QLabel("Greedy decoding is repeatable: the fairest way to compare the two sides.")
        note.setWordWrap(True)
        note.setStyleSheet("color: palette(mid);")
        form.addRow(note)
        return box

    @Slot(bool)
    def _sync_sampling_widgets(self, sampling: bool) -> None:
        for widget in (self.temperature_spin, self.top_p_spin, self.seed_spin):
            widget.setEnabled(sampling)

    def generation_config(self) -> GenerationConfig:
        """The settings of the form, on top of the current run config's generation section."""
        gen = GenerationConfig(**{k: v for k, v in vars(self.state.config.generation).items()})
        gen.max_new_tokens = self.max_tokens_spin.value()
        gen.do_sample = self.sample_check.isChecked()
        gen.temperature = round(self.temperature_spin.value(), 4)
        gen.top_p = round(self.top_p_spin.value(), 4)
        gen.repetition_penalty = round(self.repetition_spin.value(), 4)
        gen.seed = self.seed_spin.value()
        gen.stop_strings = list(gen.stop_strings)
        return gen

    # ---------------------------------------------------------------------------------- runs
    @Slot()
    def refresh_runs(self) -> None:
        """Refill the run and checkpoint lists from the workspace, keeping the selection."""
        current = self.run_combo.currentData()
        current_ckpt = self.checkpoint_combo.currentData()
        self.run_combo.blockSignals(True)
        self.run_combo.clear()
        self.run_combo.addItem("(none: base model only)", None)
        runs = self.state.runs_model.runs
        for run in runs:
            add_run_item(self.run_combo, run, f"{run.name}  ·  {run.method}  ·  {run.state}")
        index = self.run_combo.findData(current) if current else -1
        if index >= 0 and index == first_enabled_run(self.run_combo, index):
            pass  # keep the user's choice
        elif len(runs) > 0 and not self._user_chose_base:
            index = first_enabled_run(self.run_combo, 1)  # newest run with weights: most likely wanted
        else:
            index = 0
        self.run_combo.setCurrentIndex(max(index, 0))
        self.run_combo.blockSignals(False)
        self._fill_checkpoints(current_ckpt)

    def _fill_checkpoints(self, keep=None) -> None:
        self.checkpoint_combo.blockSignals(True)
        fill_checkpoints(self.checkpoint_combo, self.run_combo.currentData())
        index = self.checkpoint_combo.findData(keep) if keep else -1
        self.checkpoint_combo.setCurrentIndex(max(index, 0))
        self.checkpoint_combo.setEnabled(self.checkpoint_combo.count() > 0)
        self.checkpoint_combo.blockSignals(False)
        self._update_subtitles()

    @Slot(int)
    def _on_run_changed(self, _index: int) -> None:
        self._user_chose_base = self.run_combo.currentData() is None and self.run_combo.count() > 1
        self._fill_checkpoints()

    @Slot(object)
    def _on_runs_changed(self, _runs) -> None:
        if not self.is_busy:
            self.refresh_runs()

    @Slot(object)
    def _on_config_changed(self, section) -> None:
        if section is None:  # a whole new config or a new workspace
            self.refresh_runs()
        else:  # e.g. the template: the base pane names the prompt format it uses
            self._update_subtitles()

    def open_checkpoint(self, run_dir, checkpoint_step: int | None) -> None:
        """Select ``run_dir`` and its checkpoint ``checkpoint_step`` (None = final) on the fine-tuned side."""
        run_dir = str(Path(run_dir))
        if self.run_combo.findData(run_dir) < 0:
            self.refresh_runs()
        index = self.run_combo.findData(run_dir)
        if index < 0:  # a run outside the workspace: add it anyway
            self.run_combo.addItem(Path(run_dir).name, run_dir)
            index = self.run_combo.count() - 1
        self.run_combo.setCurrentIndex(index)
        self._fill_checkpoints()
        if checkpoint_step is None:
            target = _FINAL
        else:
            target = str(Path(run_dir) / "checkpoints" / f"checkpoint-{int(checkpoint_step)}")
        found = self.checkpoint_combo.findData(target)
        if found < 0 and checkpoint_step is not None:
            raise ValueError(f"{run_dir}: no complete checkpoint at step {checkpoint_step}")
        self.checkpoint_combo.setCurrentIndex(max(found, 0))
        self._update_subtitles()

    def _run_sources(self) -> dict[str, tuple[str, str | None, bool] | None]:
        """side -> (source, checkpoint, use_adapter), or None when that side has nothing to run."""
        run_dir = self.run_combo.currentData()
        if not run_dir:
            return {"base": (self.state.config.model.name_or_path, None, False), "tuned": None}
        checkpoint = self.checkpoint_combo.currentData()
        checkpoint = None if checkpoint in (None, _FINAL) else checkpoint
        # Both sides load the run; the base side answers with the adapter switched off (a full
        # fine-tune's session keeps the original model for it), so it is the run's own base model.
        return {"base": (run_dir, checkpoint, False), "tuned": (run_dir, checkpoint, True)}

    @Slot()
    def _update_subtitles(self, *_args) -> None:
        sources = self._run_sources()
        base = sources["base"]
        run_dir = self.run_combo.currentData()
        if run_dir:
            base_model, template = "the run's base model", "the run's"
            try:
                from core.runs import load_run_config

                run_config = load_run_config(run_dir)
                base_model, template = run_config.model.name_or_path, f"'{run_config.data.template}'"
            except Exception:  # unreadable config: safe, the subtitle stays generic and the worker reports it
                logger.debug("%s: config.yaml unreadable for the chat subtitle", run_dir, exc_info=True)
            self.panes["base"].subtitle.setText(f"{base_model} (without the fine-tuning) · prompt in the run's "
                                                f"{template} template, as the fine-tuned side")
            self.panes["tuned"].subtitle.setText(f"{Path(run_dir).name} · {self.checkpoint_combo.currentText()}")
        else:
            template = self.state.config.data.template
            self.panes["base"].subtitle.setText(
                f"{base[0]} · prompt in the '{template}' template of the current settings (as a run of them)"
                if base else "")
            self.panes["tuned"].subtitle.setText("Choose a fine-tuned run above to compare.")

    # ---------------------------------------------------------------------------------- chat
    @property
    def is_busy(self) -> bool:
        """True while an answer is being generated."""
        return bool(self._pending)

    def _thread_for(self, side: str) -> ChatPaneThread:
        if self.pair_answers:
            side = "pair"
        if side not in self._threads:
            pane_thread = ChatPaneThread(self._shared or self._session_factory, name=f"chat-{side}")
            pane_thread.worker.tokenArrived.connect(self._on_token)
            pane_thread.worker.statusChanged.connect(self._on_status)
            pane_thread.worker.answerFinished.connect(self._on_answer)
            self._threads[side] = pane_thread
        return self._threads[side]

    def _messages(self, side: str) -> tuple:
        messages = []
        for turn in self._turns[:-1]:
            messages.append({"role": "user", "content": turn.user})
            messages.append({"role": "assistant", "content": turn.answers.get(side, "")})
        messages.append({"role": "user", "content": self._turns[-1].user})
        return tuple(messages)

    @Slot()
    def send(self, text: str | None = None) -> int | None:
        """Send the prompt (or ``text``) to both sides; returns the new generation id."""
        if isinstance(text, bool) or text is None:  # clicked(bool) passes a flag
            text = self.prompt.toPlainText()
        text = text.strip()
        if not text:
            return None
        if self.is_busy:
            self.stop()
        run_dir = self.run_combo.currentData()
        if run_dir and not confirm_run_consents(self, run_dir):
            return None
        sources = self._run_sources()
        if self.blind_mode and not self._start_blind_prompt(sources):
            return None
        gen_cfg = self.generation_config()
        self._generation_id += 1
        self._active_id = self._generation_id
        self._stop = StopToken()
        self._turns.append(_Turn(user=text))
        self._request_started = time.perf_counter()
        self.timings = {}
        self._continuing = {}
        self._answer_ids = {}
        self.prompt.clear()
        # No run chosen: write the prompt in the current config's template, the format a run made from it
        # learns and whose base side answers with it; so the base answer is the same with or without a run.
        plain_format = None if self.run_combo.currentData() else self.state.config.data
        requests: list[ChatRequest] = []
        for side in SIDES:
            pane = self.panes[side]
            pane.limit_bar.setVisible(False)
            pane.add_speaker("You")
            pane.add_text(text)
            source = sources[side]
            if source is None:
                pane.add_speaker(self._speaker_name(side))
                pane.add_text("(no fine-tuned run chosen)")
                self._turns[-1].notes[side] = "no run"
                continue
            pane.add_speaker(self._speaker_name(side))
            pane.status.setText("Waiting…")
            request = ChatRequest(
                generation_id=self._generation_id,
                side=side,
                source=source[0],
                checkpoint=source[1],
                use_adapter=source[2],
                messages=self._messages(side),
                gen_cfg=gen_cfg,
                stop=self._stop,
                prompt_format=dataclasses.replace(plain_format) if plain_format is not None else None,
            )
            self._last_requests[side] = request
            self._pending.add(side)
            requests.append(request)
        same_model = len({(r.source, r.checkpoint) for r in requests}) == 1
        if self.pair_answers and len(requests) == 2 and same_model:
            self._thread_for("pair").submit(ChatPair(tuple(requests)))
        else:
            for request in requests:
                self._thread_for(request.side).submit(request)
        self._set_busy_ui()
        self._update_turns_label()
        return self._generation_id

    @Slot()
    def stop(self) -> None:
        """Stop both answers now; anything they still stream is dropped."""
        if not self._pending:
            return
        if self._stop is not None:
            self._stop.request("stopped by the user")
        self._continuing = {}
        for side in list(self._pending):
            self._turns[-1].notes[side] = "stopped"
            self.panes[side].add_text("  [stopped]")
            self.panes[side].status.setText("Stopped")
        self._pending.clear()
        self._active_id = None  # every later chunk of this generation id is stale
        self._set_busy_ui()

    def continue_answer(self, side: str, *_args) -> int | None:
        """Generate up to 'Max new tokens' more tokens of ``side``'s last answer (cut off by the limit)."""
        request = self._last_requests.get(side)
        if self.is_busy or request is None or not self._turns or not self._turns[-1].answers.get(side):
            return None
        answer = self._turns[-1].answers[side]
        self._generation_id += 1
        self._active_id = self._generation_id
        self._stop = StopToken()
        self._request_started = time.perf_counter()
        self.timings = {}
        self._continuing = {side: answer}
        request = dataclasses.replace(request, generation_id=self._generation_id, stop=self._stop,
                                      gen_cfg=self.generation_config(), continue_text=answer,
                                      continue_ids=tuple(self._answer_ids.get(side, ())))
        self._last_requests[side] = request
        pane = self.panes[side]
        pane.limit_bar.setVisible(False)
        pane.status.setText("Continuing…")
        self._pending.add(side)
        self._thread_for(side).submit(request)
        self._set_busy_ui()
        return self._generation_id

    @Slot()
    def raise_limit(self) -> None:
        """Double 'Max new tokens' (up to its maximum) for the next answers."""
        self.max_tokens_spin.setValue(min(self.max_tokens_spin.maximum(), self.max_tokens_spin.value() * 2))
        self.state.show_message(f"Max new tokens is now {self.max_tokens_spin.value()}")
        for pane in self.panes.values():
            pane.raise_limit_button.setText(f"Raise the limit to {self.max_tokens_spin.value() * 2}")

    @Slot()
    def new_conversation(self) -> None:
        """Forget all turns (stops a running answer first)."""
        self.stop()
        self._turns.clear()
        for pane in self.panes.values():
            pane.clear()
            pane.status.setText("Idle")
            pane.limit_bar.setVisible(False)
        self._update_turns_label()

    @Slot(object)
    def _on_token(self, chunk: TokenChunk) -> None:
        if chunk.generation_id != self._active_id or chunk.side not in self._pending:
            return  # stale: from a stopped or replaced request
        self._turns[-1].answers[chunk.side] += chunk.text
        self.panes[chunk.side].add_text(chunk.text)
        timing = self.timings.setdefault(chunk.side, {})
        if "first_token_seconds" not in timing:
            timing["first_token_seconds"] = time.perf_counter() - self._request_started
            self.panes[chunk.side].status.setText(
                f"Generating…  first token after {timing['first_token_seconds']:.2f} s")

    @Slot(object)
    def _on_status(self, status: ChatStatus) -> None:
        if status.generation_id == self._active_id and status.side in self._pending:
            self.panes[status.side].status.setText(status.message)

    @Slot(object)
    def _on_answer(self, answer: ChatAnswer) -> None:
        if answer.generation_id != self._active_id or answer.side not in self._pending:
            return
        side = answer.side
        self._pending.discard(side)
        pane = self.panes[side]
        turn = self._turns[-1]
        if answer.error:
            turn.notes[side] = answer.error
            pane.add_text(f"\n[error] {answer.error}")
            pane.status.setText("Failed: see the message above")
        else:
            # The streamed text is what the user saw; the result's text is authoritative (decoding
            # of the whole sequence can differ from the concatenated pieces at the edges).
            if side in self._continuing:  # the new part goes after the answer it continues
                streamed = turn.answers[side][len(self._continuing[side]):]
                if answer.text and not streamed:
                    pane.add_text(answer.text)
                turn.answers[side] = self._continuing.pop(side) + (answer.text or streamed)
                self._answer_ids[side] = self._answer_ids.get(side, []) + list(getattr(answer.result, "token_ids", []))
            else:
                if answer.text and answer.text != turn.answers[side] and not turn.answers[side]:
                    pane.add_text(answer.text)
                turn.answers[side] = answer.text or turn.answers[side]
                self._answer_ids[side] = list(getattr(answer.result, "token_ids", []))
            result = answer.result
            timing = self.timings.setdefault(side, {})
            timing["total_seconds"] = time.perf_counter() - self._request_started
            timing["load_seconds"] = answer.load_seconds
            timing["worker_first_token_seconds"] = answer.first_token_seconds
            n_tokens = getattr(result, "n_tokens", 0) or 0
            seconds = getattr(result, "seconds", 0.0) or 0.0
            speed = f" · {n_tokens / seconds:.1f} tok/s" if seconds > 0 else ""
            first = timing.get("first_token_seconds")
            first_text = f"first token {first:.2f} s · " if first is not None else ""
            stopped = getattr(result, "stopped_by", "")
            limit = getattr(self._last_requests.get(side), "gen_cfg", None)
            limit = getattr(limit, "max_new_tokens", self.max_tokens_spin.value())
            pane.status.setText(f"{first_text}{n_tokens} tokens{speed} · {stop_reason(stopped, limit)}".strip())
            if stopped == "max_tokens":
                pane.limit_label.setText(
                    f"Cut off: this answer used all {limit} new tokens allowed (Max new tokens) and may stop "
                    "mid-sentence. Continue it, or raise the limit for the next answers.")
                pane.raise_limit_button.setText(f"Raise the limit to {min(self.max_tokens_spin.maximum(), limit * 2)}")
                pane.limit_bar.setVisible(True)
        if not self._pending:
            self._active_id = None
            self._set_busy_ui()
            if self.blind_mode and self._ab_sides is not None:
                self.ab_bar.set_ready(all(self._turns[-1].answers.get(s) for s in SIDES))

    def _set_busy_ui(self) -> None:
        busy = self.is_busy
        self.stop_button.setEnabled(busy)
        self.send_button.setEnabled(True)
        self.run_combo.setEnabled(not busy)
        self.checkpoint_combo.setEnabled(not busy and self.checkpoint_combo.count() > 0)
        for pane in self.panes.values():
            pane.continue_button.setEnabled(not busy)
        self.busyChanged.emit(busy)

    # ---------------------------------------------------------------------------------- blind A/B
    @property
    def blind_mode(self) -> bool:
        return self.blind_toggle.isChecked()

    def votes_store(self):
        from core.preference import VoteStore, votes_path

        return VoteStore(votes_path(getattr(self.state, "workspace", None)))

    @Slot(bool)
    def _on_blind_toggled(self, on: bool) -> None:
        self.new_conversation()
        self._ab_sides = None
        self.ab_bar.setVisible(on)
        self.ab_bar.set_ready(False)
        self.ab_bar.reveal.setText("")
        self._restore_panes()
        if on:
            for pane, letter in zip(self._pane_order, "AB", strict=True):
                pane.title.setText(f"Answer {letter}")
                pane.subtitle.setText("hidden until you vote")
            self._show_win_rate()
        else:
            self._update_subtitles()

    def _speaker_name(self, side: str) -> str:
        # Blind mode names the answers only A and B in the transcript too.
        if self.blind_mode and self._ab_sides is not None:
            return f"Answer {'AB'[self._ab_sides.index(side)]}"
        return _SIDE_TITLES[side]

    def _restore_panes(self) -> None:
        # Panes back to base left, fine-tuned right, with their own titles.
        self.panes = dict(zip(SIDES, self._pane_order, strict=True))
        for side in SIDES:
            self.panes[side].title.setText(_SIDE_TITLES[side])

    @property
    def _pane_order(self) -> list:
        # The two pane widgets left to right (A, B in blind mode), whatever side they show.
        if not hasattr(self, "_panes_left_right"):
            self._panes_left_right = [self.panes[side] for side in SIDES]
        return self._panes_left_right

    def _start_blind_prompt(self, sources) -> bool:
        # A fresh single-turn comparison with the models in random order; False without a fine-tuned run.
        if sources.get("tuned") is None:
            self.state.show_message("Blind A/B compares a fine-tuned run with its base: choose a run first")
            return False
        self.new_conversation()
        order = list(SIDES)
        self.ab_random.shuffle(order)
        self._ab_sides = (order[0], order[1])
        left, right = self._pane_order
        self.panes = {order[0]: left, order[1]: right}
        for pane, letter in ((left, "A"), (right, "B")):
            pane.title.setText(f"Answer {letter}")
            pane.subtitle.setText("hidden until you vote")
        self.ab_bar.set_ready(False)
        self.ab_bar.reveal.setText("")
        return True

    @Slot(str)
    def vote(self, vote: str):
        """Record the vote on the current A/B answers as a preference record and reveal the models."""
        from core.preference import PreferenceRecord

        if not self.blind_mode or self._ab_sides is None or self.is_busy or not self._turns:
            return None
        turn = self._turns[-1]
        a_side, b_side = self._ab_sides
        names = {"base": "base", "tuned": "fine-tuned"}
        sources = self._run_sources()
        run_dir = self.run_combo.currentData()
        checkpoint = self.checkpoint_combo.currentText()
        record = PreferenceRecord(
            prompt=turn.user, a=turn.answers[a_side], b=turn.answers[b_side], a_model=names[a_side],
            b_model=names[b_side], vote=vote,
            models={"run": str(run_dir), "checkpoint": checkpoint, "fine-tuned": f"{run_dir} ({checkpoint})",
                    "base": str(sources["base"][0]) if sources.get("base") else ""},
            settings=dataclasses.asdict(self.generation_config()))
        store = self.votes_store()
        store.add(record)
        self._ab_sides = None
        self.ab_bar.set_ready(False)
        left, right = self._pane_order
        left.title.setText(f"Answer A: {_SIDE_TITLES[a_side]}")
        right.title.setText(f"Answer B: {_SIDE_TITLES[b_side]}")
        left.subtitle.setText("revealed")
        right.subtitle.setText("revealed")
        self.ab_bar.reveal.setText(f"You voted {vote.replace('_', ' ')}: A was the {names[a_side]} model, B the "
                                   f"{names[b_side]} model. Saved to {store.path}.")
        self._show_win_rate()
        return record

    def _show_win_rate(self) -> None:
        from core.preference import win_rate

        run_dir = str(self.run_combo.currentData())
        records = [r for r in self.votes_store().records() if r.models.get("run") == run_dir]
        self.ab_bar.rate.setText(f"This run: {win_rate(records).sentence()}")

    @Slot()
    def review_votes(self) -> None:
        from gui.widgets.ab_vote import VoteReviewDialog

        dialog = VoteReviewDialog(self.votes_store(), self)
        dialog.exec()
        self._show_win_rate()

    def _update_turns_label(self) -> None:
        n = len(self._turns)
        self.turns_label.setText("New conversation" if n == 0 else f"{n} turn{'s' if n != 1 else ''} in this "
                                                                    "conversation (the models see them all)")

    # ---------------------------------------------------------------------------------- export
    def conversation(self) -> dict:
        """The conversation as a JSON-ready dict (run, checkpoint, settings, turns)."""
        sources = self._run_sources()
        return {
            "run": self.run_combo.currentData(),
            "checkpoint": self.checkpoint_combo.currentText() if self.run_combo.currentData() else None,
            "base_model": sources["base"][0] if sources["base"] else None,
            "generation": vars(self.generation_config()),
            "turns": [{"user": t.user, "base": t.answers["base"], "fine_tuned": t.answers["tuned"],
                       **({"notes": dict(t.notes)} if t.notes else {})} for t in self._turns],
        }

    def conversation_markdown(self) -> str:
        """The conversation as Markdown (one section per turn, both answers)."""
        data = self.conversation()
        lines = ["# Chat: base vs fine-tuned", ""]
        if data["run"]:
            lines.append(f"- Fine-tuned run: `{data['run']}` ({data['checkpoint']})")
        lines.append(f"- Base model: `{data['base_model']}`")
        gen = data["generation"]
        lines.append(f"- Settings: max {gen['max_new_tokens']} new tokens, "
                     + (f"sampling (temperature {gen['temperature']}, top-p {gen['top_p']}, seed {gen['seed']})"
                        if gen["do_sample"] else "greedy")
                     + f", repetition penalty {gen['repetition_penalty']}")
        for number, turn in enumerate(data["turns"], 1):
            lines += ["", f"## Turn {number}", "", "**You:**", "", turn["user"], "",
                      "**Base model:**", "", turn["base"] or "_(no answer)_", "",
                      "**Fine-tuned:**", "", turn["fine_tuned"] or "_(no answer)_"]
        return "\n".join(lines) + "\n"

    @Slot()
    def copy_conversation(self) -> None:
        QGuiApplication.clipboard().setText(self.conversation_markdown())
        self.state.show_message("Conversation copied as Markdown")

    def export_conversation(self, path) -> Path:
        """Write the conversation to ``path``: JSON for ``.json``, Markdown otherwise."""
        from core.config import atomic_write_text

        path = Path(path)
        if path.suffix.lower() == ".json":
            text = json.dumps(self.conversation(), indent=2, ensure_ascii=False) + "\n"
        else:
            text = self.conversation_markdown()
        atomic_write_text(path, text)
        return path

    @Slot()
    def _export_dialog(self) -> None:
        if not self._turns:
            plain.information(self, "Export", "There is no conversation to export yet.")
            return
        path, _ = QFileDialog.getSaveFileName(self, "Export conversation", str(Path.home() / "conversation.md"),
                                              "Markdown (*.md);;JSON (*.json)")
        if path:
            try:
                self.export_conversation(path)
            except OSError as exc:
                plain.warning(self, "Export", f"Could not write {path}: {exc}")
            else:
                self.state.show_message(f"Conversation saved to {path}")

    # ---------------------------------------------------------------------------------- lifecycle
    def shutdown(self, timeout_ms: int = 5000) -> bool:
        """Stop the answers and end both worker threads; True when they ended in time."""
        self.stop()
        deadline = time.monotonic() + timeout_ms / 1000
        ok = True
        for pane_thread in self._threads.values():
            remaining = max(0, int((deadline - time.monotonic()) * 1000))
            ok = pane_thread.shutdown(remaining) and ok
        if ok:
            self._threads.clear()
        return ok
