"""Background threads of the Chat, Evaluate and Runs pages.

Two kinds of workers, both QObjects moved to a QThread (never a QThread subclass, never terminate()):

- ``ChatWorker``: one per chat pane, or one for both (the page's default ``pair_answers``: a ``ChatPair``
  answers both panes from one model, in one mixed-adapter batch for LoRA runs). It keeps its own ``core.generation.ModelSession`` (loaded on the
  first request, reused while the run/checkpoint stays the same) and streams tokens of one request at a
  time. Every request carries a generation id; the page drops tokens whose id is not the current one,
  so a cancelled answer can never leak into the next one.
- ``TaskRunner``: runs one plain function ``fn(stop, progress) -> result`` (evaluation, resume, export)
  and reports progress / result / error as ``Signal(object)`` snapshots.

Only frozen dataclasses cross threads.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PySide6.QtCore import QObject, QThread, Signal, Slot

from core.cancel import StopToken
from gui.import_lock import heavy_imports_lock, import_heavy_libraries

logger = logging.getLogger(__name__)

# Loading is serialised under the GUI-wide import lock: transformers' lazy imports are not thread-safe
# (two threads importing it for the first time at once fail with "cannot import name AutoTokenizer"; the
# Train page preload, the device probe and page tasks import it too), and on a small machine two loads at
# once are no faster than one after the other.
_LOAD_LOCK = heavy_imports_lock

# Every QThread these helpers start, so tests (and shutdown code) can check none is left running.
_THREADS: weakref.WeakSet[QThread] = weakref.WeakSet()


def running_threads() -> list[QThread]:
    """Threads started by this module that are still running."""
    return [thread for thread in list(_THREADS) if thread.isRunning()]


# --------------------------------------------------------------------------------------------------
# chat
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatRequest:
    """One answer to generate in one pane."""

    generation_id: int
    side: str  # "base" | "tuned"
    source: str  # run folder, or a model name/path when no run is chosen
    checkpoint: str | None  # checkpoint folder, None = the run's final adapter
    use_adapter: bool
    messages: tuple  # ({"role": ..., "content": ...}, ...) the conversation so far, user turn last
    gen_cfg: Any  # core.config.GenerationConfig (a private copy)
    stop: StopToken = field(compare=False)
    # core.config.DataConfig whose template writes the prompt (None: the run's own). The Chat page sets
    # it for a plain base model, so its answer matches the base side of a run made from that config.
    prompt_format: Any = None
    continue_text: str = ""  # "Continue": the answer so far; the model goes on after it
    continue_ids: tuple = ()  # ... and its tokens (GenerationResult.token_ids), so nothing is re-tokenized


@dataclass(frozen=True)
class ChatPair:
    """Both panes' requests for one prompt, answered by one worker from one loaded model (same source and
    checkpoint, same generation settings and stop token)."""

    requests: tuple  # (ChatRequest, ChatRequest)


@dataclass(frozen=True)
class TokenChunk:
    generation_id: int
    side: str
    text: str


@dataclass(frozen=True)
class ChatStatus:
    generation_id: int
    side: str
    message: str


@dataclass(frozen=True)
class ChatAnswer:
    """The end of one answer: ``result`` (GenerationResult) or ``error`` (a message for the user)."""

    generation_id: int
    side: str
    text: str = ""
    result: Any = None
    error: str | None = None
    load_seconds: float = 0.0
    first_token_seconds: float | None = None  # from the request start (model loading included)


def _default_session_factory(source: str, checkpoint: str | None):
    from core.generation import ModelSession

    return ModelSession(source, checkpoint=checkpoint)


class SharedSessions:
    """A session factory that hands both panes the same ModelSession for the same run/checkpoint.

    One copy of the weights; ModelSession's lock then makes the two answers run one after the other
    (the second pane's first token waits for the first answer). Thread-safe: both workers may ask at
    once; the second waits for the first load instead of loading a copy.
    """

    def __init__(self, factory: Callable[[str, str | None], Any] | None = None):
        self._factory = factory or _default_session_factory
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._session: Any = None

    def __call__(self, source: str, checkpoint: str | None):
        with self._lock:
            if self._key != (source, checkpoint):
                self._session = None
                self._session = self._factory(source, checkpoint)
                self._key = (source, checkpoint)
            return self._session


class ChatWorker(QObject):
    """Streams answers for one pane; lives in its own QThread."""

    tokenArrived = Signal(object)  # TokenChunk
    statusChanged = Signal(object)  # ChatStatus
    answerFinished = Signal(object)  # ChatAnswer

    def __init__(self, session_factory: Callable[[str, str | None], Any] | None = None):
        super().__init__()
        self._factory = session_factory or _default_session_factory
        self._session: Any = None
        self._session_key: tuple[str, str | None] | None = None

    @Slot(object)
    def run_request(self, request) -> None:
        """Generate one answer, or both answers of a ChatPair (load or switch the model first when needed)."""
        if isinstance(request, ChatPair):
            self._run_pair(request)
        else:
            self._run_one(request)

    def _ensure_session(self, request: ChatRequest, sides: tuple[str, ...]) -> float:
        """Load the request's model unless it is the one already loaded; the seconds it took."""
        key = (request.source, request.checkpoint)
        if self._session is not None and self._session_key == key:
            return 0.0
        started = time.perf_counter()
        for side in sides:
            self.statusChanged.emit(ChatStatus(request.generation_id, side, "Loading the model…"))
        self._session = None  # free the previous model before loading the next one
        with _LOAD_LOCK:
            import_heavy_libraries()
            self._session = self._factory(request.source, request.checkpoint)
        self._session_key = key
        return time.perf_counter() - started

    def _check_finetuned(self, request: ChatRequest) -> None:
        if request.use_adapter and not getattr(self._session, "has_finetuned",
                                               getattr(self._session, "has_adapter", False)):
            from core.errors import ModelError

            raise ModelError(f"{request.source}: no fine-tuned weights to answer with")

    @staticmethod
    def _error_message(exc: Exception) -> str | None:
        from core.errors import Cancelled, StudioError

        if isinstance(exc, Cancelled):
            return None
        if isinstance(exc, StudioError):
            return str(exc)
        logger.exception("chat answer failed")
        return f"{type(exc).__name__}: {exc}"

    def _run_one(self, request: ChatRequest, load_seconds: float = 0.0) -> None:
        started = time.perf_counter() - load_seconds
        first_token: list[float] = []
        pieces: list[str] = []
        if request.stop.is_set:  # cancelled while queued: do not even load
            self.answerFinished.emit(ChatAnswer(request.generation_id, request.side, error=None,
                                                result=None, text=""))
            return
        try:
            load_seconds += self._ensure_session(request, (request.side,))
            self._check_finetuned(request)
            self.statusChanged.emit(ChatStatus(request.generation_id, request.side, "Generating…"))

            def on_token(text: str) -> None:
                if not first_token:
                    first_token.append(time.perf_counter() - started)
                pieces.append(text)
                self.tokenArrived.emit(TokenChunk(request.generation_id, request.side, text))

            extra = {"prompt_format": request.prompt_format} if request.prompt_format is not None else {}
            if request.continue_text:
                extra.update(continue_text=request.continue_text, continue_ids=list(request.continue_ids))
            result = self._session.generate(
                list(request.messages), request.gen_cfg, use_adapter=request.use_adapter,
                on_token=on_token, stop=request.stop, **extra,
            )
            text = getattr(result, "text", "".join(pieces))
            self.answerFinished.emit(ChatAnswer(request.generation_id, request.side, text=text, result=result,
                                                load_seconds=load_seconds,
                                                first_token_seconds=first_token[0] if first_token else None))
        except Exception as exc:  # shown in the pane; a broken request must not kill the thread
            self.answerFinished.emit(ChatAnswer(request.generation_id, request.side, text="".join(pieces),
                                                error=self._error_message(exc), load_seconds=load_seconds))

    def _run_pair(self, pair: ChatPair) -> None:
        """Both panes from one loaded model: one mixed-adapter batch streaming both answers at once when the
        model allows it (a LoRA run), else one answer after the other from the same model."""
        requests = pair.requests
        first = requests[0]
        sides = tuple(r.side for r in requests)
        started = time.perf_counter()
        if first.stop.is_set:
            for request in requests:
                self.answerFinished.emit(ChatAnswer(request.generation_id, request.side, text=""))
            return
        try:
            load_seconds = self._ensure_session(first, sides)
            for request in requests:
                self._check_finetuned(request)
        except Exception as exc:
            message = self._error_message(exc)
            for request in requests:
                self.answerFinished.emit(ChatAnswer(request.generation_id, request.side, error=message))
            return
        if not getattr(self._session, "can_pair", False) or not hasattr(self._session, "generate_pair"):
            for i, request in enumerate(requests):
                if i:
                    self.statusChanged.emit(ChatStatus(request.generation_id, request.side,
                                                       "Waiting for the other answer (one model, one at a time)…"))
            for request in requests:
                self._run_one(request, load_seconds if request is first else 0.0)
            return
        first_token: dict[str, float] = {}
        pieces: dict[str, list[str]] = {side: [] for side in sides}

        def on_token_for(side: str, generation_id: int):
            def on_token(text: str) -> None:
                first_token.setdefault(side, time.perf_counter() - started)
                pieces[side].append(text)
                self.tokenArrived.emit(TokenChunk(generation_id, side, text))
            return on_token

        for request in requests:
            self.statusChanged.emit(ChatStatus(request.generation_id, request.side, "Generating…"))
        try:
            extra = {"prompt_format": first.prompt_format} if first.prompt_format is not None else {}
            results = self._session.generate_pair(
                [list(r.messages) for r in requests], first.gen_cfg, use_adapter=[r.use_adapter for r in requests],
                on_tokens=[on_token_for(r.side, r.generation_id) for r in requests], stop=first.stop, **extra)
        except Exception as exc:
            message = self._error_message(exc)
            for request in requests:
                self.answerFinished.emit(ChatAnswer(request.generation_id, request.side,
                                                    text="".join(pieces[request.side]), error=message,
                                                    load_seconds=load_seconds))
            return
        for request, result in zip(requests, results, strict=True):
            self.answerFinished.emit(ChatAnswer(request.generation_id, request.side, text=result.text, result=result,
                                                load_seconds=load_seconds,
                                                first_token_seconds=first_token.get(request.side)))

    @Slot()
    def release(self) -> None:
        """Drop the loaded model (frees its memory)."""
        self._session = None
        self._session_key = None


class _Dispatcher(QObject):
    """Emits requests into a worker's thread (a queued signal is the thread-safe way in)."""

    request = Signal(object)
    release = Signal()


class ChatPaneThread:
    """A ChatWorker in its own QThread, plus the queued entry point to it."""

    def __init__(self, session_factory=None, name: str = "chat"):
        self.thread = QThread()
        self.thread.setObjectName(name)
        self.worker = ChatWorker(session_factory)
        self.worker.moveToThread(self.thread)
        self._dispatcher = _Dispatcher()
        self._dispatcher.request.connect(self.worker.run_request)
        self._dispatcher.release.connect(self.worker.release)
        _THREADS.add(self.thread)
        self.thread.start()

    def submit(self, request: ChatRequest) -> None:
        self._dispatcher.request.emit(request)

    def release_model(self) -> None:
        self._dispatcher.release.emit()

    def shutdown(self, timeout_ms: int) -> bool:
        """Quit the thread after the running request; True when it ended within ``timeout_ms``."""
        if not self.thread.isRunning():
            return True
        self.release_model()
        self.thread.quit()
        return self.thread.wait(max(0, int(timeout_ms)))


# --------------------------------------------------------------------------------------------------
# generic one-shot tasks (evaluate, resume, export)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskProgress:
    fraction: float | None
    message: str


@dataclass(frozen=True)
class TaskOutcome:
    """How a task ended: ``result`` when it worked, ``error`` (user message) when not."""

    name: str
    result: Any = None
    error: str | None = None
    cancelled: bool = False


class _TaskWorker(QObject):
    progressed = Signal(object)  # TaskProgress
    done = Signal(object)  # TaskOutcome

    def __init__(self, name: str, fn: Callable[[StopToken, Callable], Any], stop: StopToken):
        super().__init__()
        self._name = name
        self._fn = fn
        self._stop = stop
        self._last_emit = 0.0

    def _progress(self, fraction: float | None, message: str) -> None:
        # Throttle: generation-level progress can fire hundreds of times a second.
        now = time.monotonic()
        if fraction is not None and fraction < 1.0 and now - self._last_emit < 0.05:
            return
        self._last_emit = now
        self.progressed.emit(TaskProgress(fraction, message))

    @Slot()
    def run(self) -> None:
        from core.errors import Cancelled, StudioError

        try:
            result = self._fn(self._stop, self._progress)
            self.done.emit(TaskOutcome(self._name, result=result, cancelled=self._stop.is_set))
        except Cancelled:
            self.done.emit(TaskOutcome(self._name, cancelled=True))
        except StudioError as exc:
            self.done.emit(TaskOutcome(self._name, error=str(exc)))
        except Exception as exc:  # unexpected: the traceback goes to the log file, a message to the GUI
            logger.exception("task %s failed unexpectedly", self._name)
            self.done.emit(TaskOutcome(self._name, error=f"{type(exc).__name__}: {exc}"))
        finally:
            # Quit from inside: the GUI thread may be blocked in wait() during shutdown.
            self.thread().quit()


class TaskRunner(QObject):
    """Runs ``fn(stop, progress)`` in a fresh QThread; one task at a time per runner.

    Signals: ``progressed(TaskProgress)``, ``finished(TaskOutcome)`` (always emitted once per task,
    after the thread has ended, so the runner is idle again when listeners run).
    """

    progressed = Signal(object)
    finished = Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._thread: QThread | None = None
        self._worker: _TaskWorker | None = None
        self._stop: StopToken | None = None
        self._outcome: TaskOutcome | None = None
        self.name = ""

    @property
    def is_busy(self) -> bool:
        return self._thread is not None

    def start(self, name: str, fn: Callable[[StopToken, Callable], Any]) -> None:
        """Start ``fn`` in the background; raises RuntimeError when a task is already running."""
        if self._thread is not None:
            raise RuntimeError(f"'{self.name}' is still running")
        self.name = name
        self._stop = StopToken()
        self._outcome = None
        thread = QThread()
        thread.setObjectName(f"task-{name}")
        worker = _TaskWorker(name, fn, self._stop)
        worker.moveToThread(thread)
        thread.started.connect(worker.run)
        worker.progressed.connect(self.progressed)
        worker.done.connect(self._on_done)
        thread.finished.connect(self._on_thread_finished)
        self._thread, self._worker = thread, worker
        _THREADS.add(thread)
        thread.start()

    def cancel(self, reason: str = "cancelled by the user") -> None:
        """Ask the running task to stop at its next safe point."""
        if self._stop is not None:
            self._stop.request(reason)

    @Slot(object)
    def _on_done(self, outcome: TaskOutcome) -> None:
        self._outcome = outcome

    @Slot()
    def _on_thread_finished(self) -> None:
        outcome = self._outcome or TaskOutcome(self.name, error="the task ended without a result")
        self._thread = None
        self._worker = None
        self.finished.emit(outcome)

    def shutdown(self, timeout_ms: int) -> bool:
        """Cancel and wait for the task; True when no thread is left running."""
        thread = self._thread
        if thread is None:
            return True
        self.cancel("the window is closing")
        ok = thread.wait(max(0, int(timeout_ms)))
        if ok:
            # The queued done/finished signals may not have been delivered; clean up here.
            self._thread = None
            self._worker = None
        return ok
