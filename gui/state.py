"""The studio's shared state: the current RunConfig, the workspace, and change signals.

Pages read ``state.config`` and request changes through ``update``/``set_config``; every page
listening to ``configChanged`` re-renders. Payloads are plain Python objects (``Signal(object)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal

from core.config import SECTIONS, RunConfig


class StudioState(QObject):
    """Holds the current run configuration and what the pages have loaded.

    Signals:
      configChanged(object): the section name that changed ("data", "model", ...) or None for all.
      dataChanged(object): whatever the data page loaded (a summary object/dict) or None.
      modelChanged(object): the loaded model's info (core.models.ModelInfo) or None.
      statusMessage(str): a short message for the status bar.
    """

    configChanged = Signal(object)
    dataChanged = Signal(object)
    modelChanged = Signal(object)
    statusMessage = Signal(str)

    def __init__(self, config: RunConfig | None = None, workspace: str | Path | None = None, parent=None):
        super().__init__(parent)
        self._config = config if config is not None else RunConfig()
        self._workspace = Path(workspace) if workspace else None
        self._data: Any = None
        self._model: Any = None
        self._runs_model: Any = None

    # -- configuration ---------------------------------------------------------------------------
    @property
    def config(self) -> RunConfig:
        """The current configuration (treat as read-only; change it through ``update``)."""
        return self._config

    def update(self, section: str, field: str, value: Any) -> None:
        """Set ``section.field`` (coerced to the field's type) and emit configChanged(section).

        Raises core.config.ConfigError when the value cannot be converted. No signal is emitted when
        the value is unchanged, so two-way bound widgets do not loop.
        """
        if section not in SECTIONS:
            raise KeyError(f"unknown config section {section!r}")
        before = getattr(getattr(self._config, section), field, object())
        self._config.set_value(f"{section}.{field}", value)
        if getattr(getattr(self._config, section), field) != before:
            self.configChanged.emit(section)

    def set_config(self, cfg: RunConfig) -> None:
        """Replace the whole configuration (e.g. a preset or a reopened run) and emit configChanged(None)."""
        self._config = cfg.copy()
        self.configChanged.emit(None)

    # -- workspace -----------------------------------------------------------------------------
    @property
    def workspace(self) -> Path:
        """The folder holding the runs (core.paths.default_workspace() unless set)."""
        if self._workspace is None:
            from core.paths import default_workspace

            self._workspace = default_workspace()
        return self._workspace

    def set_workspace(self, path: str | Path) -> None:
        self._workspace = Path(path)
        if self._runs_model is not None:
            self._runs_model.set_workspace(self._workspace)
        self.configChanged.emit(None)

    @property
    def runs_model(self):
        """The live list of the workspace's runs shared by every page (gui.workspace_model.WorkspaceModel)."""
        if self._runs_model is None:
            from gui.workspace_model import WorkspaceModel

            self._runs_model = WorkspaceModel(self.workspace, parent=self)
        return self._runs_model

    def stop_watching(self) -> None:
        """Stop the runs model's timers (the window is closing)."""
        if self._runs_model is not None:
            self._runs_model.stop()

    # -- loaded things ---------------------------------------------------------------------------
    @property
    def data(self) -> Any:
        """What the data page last loaded (None until then)."""
        return self._data

    def set_data(self, value: Any) -> None:
        self._data = value
        self.dataChanged.emit(value)

    @property
    def model(self) -> Any:
        """The loaded model's info (None until the model page loaded one)."""
        return self._model

    def set_model(self, value: Any) -> None:
        self._model = value
        self.modelChanged.emit(value)

    def show_message(self, text: str) -> None:
        """Ask the window to show ``text`` in its status bar."""
        self.statusMessage.emit(text)
