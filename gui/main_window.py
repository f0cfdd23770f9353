"""The studio window: a sidebar of pages, a stack showing the current one, and a status bar.

Pages are listed in ``PAGES``; adding one is adding a ``PageSpec`` line. A page is a QWidget built as
``Page(state, parent=None)``; optional members the window uses: ``is_busy`` (property),
``shutdown(timeout_ms) -> bool`` (stop background work and wait), ``activate()`` (first time shown).
"""

from __future__ import annotations

import importlib
import os
import time
from dataclasses import dataclass

from PySide6.QtCore import QByteArray, QSettings, QSize, Qt, QTimer, QUrl, Signal, Slot
from PySide6.QtGui import QAction, QDesktopServices
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QMessageBox,
    QStackedWidget,
    QWidget,
)

from core.config import ConfigError, RunConfig
from gui import theme
from gui.state import StudioState
from gui.tasks import TaskGroup

ORGANIZATION = "FineTuneStudio"
APPLICATION = "FineTuneStudio"


@dataclass(frozen=True)
class PageSpec:
    key: str          # used by --page and QSettings
    title: str        # sidebar text
    icon: str         # resources/icons/<icon>.svg
    module: str
    class_name: str
    tooltip: str = ""
    # Constructor keywords used when the window does not autoload (tests, screenshots): pages must not
    # start background work on their own then, or a thread could outlive a quickly closed window.
    quiet_kwargs: tuple[tuple[str, object], ...] = ()


PAGES: list[PageSpec] = [
    PageSpec("data", "Data", "data", "gui.pages.data_page", "DataPage", "Load a dataset and see it as the model will"),
    PageSpec("model", "Model", "model", "gui.pages.model_page", "ModelPage", "Pick the base model and the method"),
    PageSpec("train", "Train", "train", "gui.pages.train_page", "TrainPage", "Set hyperparameters and watch training",
             quiet_kwargs=(("preload_delay_ms", None),)),
    PageSpec("chat", "Chat", "chat", "gui.pages.chat_page", "ChatPage", "Talk to the base and fine-tuned model"),
    PageSpec("evaluate", "Evaluate", "evaluate", "gui.pages.evaluate_page", "EvaluatePage", "Score base vs fine-tuned"),
    PageSpec("runs", "Runs", "runs", "gui.pages.runs_page", "RunsPage", "Reopen, compare and resume runs"),
]


def load_page_class(spec: PageSpec):
    """The page class, or None when its module does not exist yet (other import errors propagate)."""
    try:
        module = importlib.import_module(spec.module)
    except ModuleNotFoundError as exc:
        if exc.name != spec.module:
            raise
        return None
    return getattr(module, spec.class_name)


def studio_settings() -> QSettings:
    """The app's QSettings in the default format (tests point it at a temporary folder)."""
    return QSettings(QSettings.defaultFormat(), QSettings.Scope.UserScope, ORGANIZATION, APPLICATION)


def platform_device_text() -> str:
    """CPU model and core count from the OS alone (no torch): shown until core.devices answers."""
    from core.devices import cpu_model

    return f"CPU: {cpu_model()} · {os.cpu_count() or '?'} cores"


def _format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def probe_device_text(progress, stop) -> str:
    """Runs in a worker: the training device from core.devices (imports torch), else platform info."""
    try:
        from core import devices
    except ModuleNotFoundError as exc:
        if exc.name != "core.devices":
            raise
        return platform_device_text()
    info = devices.pick_device("auto")
    if getattr(info, "kind", "cpu") == "cpu":
        return platform_device_text()
    memory = getattr(info, "total_memory", None)
    suffix = f" · {_format_bytes(memory)}" if memory else ""
    return f"GPU: {info.name}{suffix}"


class MainWindow(QMainWindow):
    """Sidebar + pages + status bar. ``autoload``: pages may start loading their defaults when shown."""

    firstPainted = Signal(float)  # time.perf_counter() of the first paint

    def __init__(self, state: StudioState | None = None, *, autoload: bool = False, restore: bool = True,
                 quiet: bool | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.state = state or StudioState(parent=self)
        self.autoload = autoload
        self._first_paint_at: float | None = None
        self._closing_confirmed = False
        self.tasks = TaskGroup(self)
        self.setWindowTitle("FineTune Studio")
        self.setWindowIcon(theme.app_icon())
        self.resize(1280, 800)
        self.setMinimumSize(960, 600)

        central = QWidget(self)
        layout = QHBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        self.sidebar = QListWidget(central)
        self.sidebar.setObjectName("Sidebar")
        self.sidebar.setIconSize(QSize(22, 22))
        self.sidebar.setFixedWidth(170)
        self.sidebar.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.stack = QStackedWidget(central)
        layout.addWidget(self.sidebar)
        layout.addWidget(self.stack, 1)
        self.setCentralWidget(central)

        self.pages: dict[str, QWidget] = {}
        self._keys: list[str] = []
        for spec in PAGES:
            page_class = load_page_class(spec)
            if page_class is None:
                continue  # the page's module is not written yet
            kwargs = dict(spec.quiet_kwargs) if (not autoload if quiet is None else quiet) else {}
            try:
                page = page_class(self.state, parent=self.stack, **kwargs)
            except TypeError:
                if not kwargs:
                    raise
                page = page_class(self.state, parent=self.stack)  # an older page without those options
            page.setObjectName(f"page-{spec.key}")
            self.pages[spec.key] = page
            self._keys.append(spec.key)
            self.stack.addWidget(page)
            item = QListWidgetItem(theme.icon(spec.icon), spec.title)
            item.setToolTip(spec.tooltip)
            item.setSizeHint(QSize(150, 42))
            self.sidebar.addItem(item)
        self.sidebar.currentRowChanged.connect(self._on_row_changed)
        train_page = self.pages.get("train")
        if train_page is not None and hasattr(train_page, "chatWithCheckpoint"):
            train_page.chatWithCheckpoint.connect(self.open_checkpoint_in_chat)
        if train_page is not None and hasattr(train_page, "navigateRequested"):
            train_page.navigateRequested.connect(self.show_page)
        if train_page is not None and hasattr(train_page, "nextStepRequested"):
            train_page.nextStepRequested.connect(self.open_next_step)
        runs_page = self.pages.get("runs")
        if runs_page is not None and hasattr(runs_page, "runOpened"):
            runs_page.runOpened.connect(self.open_run)
            runs_page.navigateRequested.connect(self.show_page)

        self.device_label = QLabel(platform_device_text())
        self.ram_label = QLabel()
        self.message_label = QLabel()
        self.statusBar().addWidget(self.message_label, 1)
        self.statusBar().addPermanentWidget(self.device_label)
        self.statusBar().addPermanentWidget(self.ram_label)
        self.state.statusMessage.connect(self.show_message)
        self._ram_timer = QTimer(self)
        self._ram_timer.setInterval(5000)
        self._ram_timer.timeout.connect(self.update_ram)
        self.update_ram()
        self._build_menus()

        if restore:
            self.restore_settings()
        if self.sidebar.currentRow() < 0 and self._keys:
            self.sidebar.setCurrentRow(0)

    # -- navigation --------------------------------------------------------------------------
    @property
    def page_keys(self) -> list[str]:
        return list(self._keys)

    def current_page_key(self) -> str | None:
        row = self.sidebar.currentRow()
        return self._keys[row] if 0 <= row < len(self._keys) else None

    def show_page(self, key: str) -> None:
        """Switch to the page named ``key`` (e.g. "data"); KeyError when there is no such page."""
        if key not in self._keys:
            raise KeyError(f"no page {key!r} (pages: {', '.join(self._keys)})")
        self.sidebar.setCurrentRow(self._keys.index(key))

    @Slot(object)
    def open_run(self, run_dir: object) -> None:
        """A run chosen on the Runs page: its settings and curves come back into the Train page."""
        train = self.pages.get("train")
        if train is None:
            return
        from core.errors import StudioError
        from core.runs import load_run_config

        try:
            self.state.set_config(load_run_config(run_dir))
        except StudioError as exc:
            self.show_message(f"Could not read the run's settings: {exc}")
        self.show_page("train")
        train.show_run(run_dir)

    @Slot(object)
    def open_next_step(self, request: object) -> None:
        """("chat" | "evaluate" | "export", run_dir) from a finished run: open that page with the run selected."""
        action, run_dir = request  # type: ignore[misc]
        self.state.runs_model.refresh()  # the run just ended: make sure every picker lists it
        if action == "chat" and "chat" in self.pages:
            self.show_page("chat")
            self.pages["chat"].open_checkpoint(run_dir, None)
        elif action == "evaluate" and "evaluate" in self.pages:
            self.show_page("evaluate")
            self.pages["evaluate"].select_run(run_dir)
        elif action == "export" and "runs" in self.pages:
            self.show_page("runs")
            runs = self.pages["runs"]
            runs.refresh()
            runs.select_runs([run_dir])
            runs.export_button.setFocus()
            self.show_message(f"{run_dir.name} is selected: choose what to export from the Export button.")

    @Slot(object)
    def open_checkpoint_in_chat(self, request: object) -> None:
        """(run_dir, step) from the Train page: show that checkpoint on the Chat page's fine-tuned side."""
        run_dir, step = request  # type: ignore[misc]
        chat = self.pages.get("chat")
        if chat is None:
            return
        self.show_page("chat")
        chat.open_checkpoint(run_dir, step)

    @Slot(int)
    def _on_row_changed(self, row: int) -> None:
        if 0 <= row < len(self._keys):
            page = self.pages[self._keys[row]]
            self.stack.setCurrentWidget(page)
            if self.autoload and self.isVisible():
                self._activate(page)

    def _activate(self, page: QWidget) -> None:
        if getattr(page, "_studio_activated", False):
            return
        page._studio_activated = True  # type: ignore[attr-defined]
        activate = getattr(page, "activate", None)
        if callable(activate):
            activate()

    # -- menus -----------------------------------------------------------------------------------
    def _build_menus(self) -> None:
        help_menu = self.menuBar().addMenu("&Help")
        self.open_log_folder_action = QAction("Open &log folder", self)
        self.open_log_folder_action.setStatusTip("The app's log files: attach the newest one to a bug report")
        self.open_log_folder_action.triggered.connect(self.open_log_folder)
        help_menu.addAction(self.open_log_folder_action)

    @Slot()
    def open_log_folder(self) -> bool:
        """Show the folder of the log file in the system's file manager; False when it cannot be opened."""
        from core.logs import log_dir

        folder = log_dir()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self.show_message(f"Cannot create the log folder {folder}: {exc}")
            return False
        if not QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder))):
            self.show_message(f"The log folder is {folder}")
            return False
        return True

    # -- status bar --------------------------------------------------------------------------
    @Slot(str)
    def show_message(self, text: str) -> None:
        self.message_label.setText(text)

    @Slot()
    def update_ram(self) -> None:
        try:
            import psutil

            vm = psutil.virtual_memory()
            used = vm.total - vm.available
            self.ram_label.setText(f"RAM {_format_bytes(used)} / {_format_bytes(vm.total)}")
            rss = psutil.Process().memory_info().rss
            self.ram_label.setToolTip(f"This app uses {_format_bytes(rss)}")
        except Exception:  # noqa: BLE001 - the RAM readout is informative only
            self.ram_label.setText("")

    def probe_device(self) -> None:
        """Ask core.devices (in a worker: it imports torch) which device training will use."""
        # heavy_imports: torch is imported under the GUI-wide import lock, never alongside another first import.
        task = self.tasks.run(probe_device_text, name="device-probe", heavy_imports=True)
        task.succeeded.connect(self.device_label.setText)
        task.failed.connect(lambda exc: self.device_label.setToolTip(f"Device check failed: {exc}"))
        task.start()

    # -- events ----------------------------------------------------------------------------------
    def paintEvent(self, event) -> None:
        super().paintEvent(event)
        if self._first_paint_at is None:
            self._first_paint_at = time.perf_counter()
            self.firstPainted.emit(self._first_paint_at)
            # Heavy work (device probe, page autoload) starts only once the window is on screen.
            QTimer.singleShot(0, self._after_first_paint)

    @Slot()
    def _after_first_paint(self) -> None:
        if self.autoload:
            self.probe_device()
            page = self.stack.currentWidget()
            if page is not None:
                self._activate(page)

    def showEvent(self, event) -> None:
        super().showEvent(event)
        self._ram_timer.start()

    def hideEvent(self, event) -> None:
        self._ram_timer.stop()
        super().hideEvent(event)

    def busy_pages(self) -> list[str]:
        """Keys of pages doing long work the user would lose (training, resuming, evaluating, exporting)."""
        return [key for key, page in self.pages.items()
                if getattr(page, "is_busy", False) and getattr(page, "closing_loses_work", True)]

    def confirm_close(self, busy: list[str]) -> bool:
        """Ask before closing while training runs (tests replace this)."""
        answer = QMessageBox.question(
            self,
            "Training is running",
            "Training is still running. Stop it and close FineTune Studio?\n\n"
            "The run stops at the next step and keeps a checkpoint you can resume from.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes

    def shutdown(self, timeout_ms: int = 60000) -> bool:
        """Stop every page's background work and wait for the threads; True when all stopped."""
        self._ram_timer.stop()
        self.state.stop_watching()
        self._closing_confirmed = True  # everything is being stopped: closing afterwards needs no question
        ok = True
        for page in self.pages.values():
            stop = getattr(page, "shutdown", None)
            if callable(stop):
                ok = bool(stop(timeout_ms)) and ok
        return self.tasks.shutdown(timeout_ms) and ok

    def closeEvent(self, event) -> None:
        busy = self.busy_pages()
        if busy and not self._closing_confirmed and not self.confirm_close(busy):
            event.ignore()
            return
        self._closing_confirmed = True
        self.save_settings()
        self.shutdown()
        super().closeEvent(event)

    # -- settings --------------------------------------------------------------------------------
    def save_settings(self) -> None:
        settings = studio_settings()
        settings.setValue("window/geometry", self.saveGeometry())
        for key, splitter in self._splitters():
            settings.setValue(f"splitters/{key}", splitter.saveState())
        settings.setValue("window/page", self.current_page_key() or "")
        settings.setValue("config/yaml", self.state.config.to_yaml())
        settings.setValue("last/dataset", self.state.config.data.source)
        settings.setValue("last/model", self.state.config.model.name_or_path)
        settings.sync()

    def _splitters(self):
        """(stable key, QSplitter) for every splitter of every page, to remember where the user put them."""
        from PySide6.QtWidgets import QSplitter

        for page_key, page in self.pages.items():
            if not isinstance(page, QWidget):
                continue
            for index, splitter in enumerate(page.findChildren(QSplitter)):
                yield f"{page_key}/{index}", splitter

    def restore_settings(self) -> None:
        settings = studio_settings()
        geometry = settings.value("window/geometry")
        if isinstance(geometry, QByteArray) and not geometry.isEmpty():
            self.restoreGeometry(geometry)
            if self.width() < 1024 or self.height() < 700:  # a too-small saved size clips labels: use the default
                self.resize(max(self.width(), 1280), max(self.height(), 800))
        for key, splitter in self._splitters():
            state = settings.value(f"splitters/{key}")
            if isinstance(state, QByteArray) and not state.isEmpty():
                splitter.restoreState(state)
        text = settings.value("config/yaml")
        if isinstance(text, str) and text.strip():
            try:
                self.state.set_config(RunConfig.from_yaml(text, source="saved settings"))
            except ConfigError as exc:
                # Settings written by another version: start from defaults rather than refuse to open.
                self.show_message(f"Saved settings ignored ({exc})")
        page = settings.value("window/page")
        if isinstance(page, str) and page in self._keys:
            self.show_page(page)
