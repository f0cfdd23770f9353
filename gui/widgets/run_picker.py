"""Helpers for the run / checkpoint pickers of the Chat and Evaluate pages."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QComboBox

FINAL = "final"  # checkpoint combo data for the model saved at the end of training (run_dir/final)


def workspace_runs(workspace) -> list:
    """The runs of ``workspace`` (core.runs.list_runs); none when the folder cannot be read."""
    from core.runs import list_runs

    try:
        return list_runs(workspace)
    except OSError:
        return []


def add_run_item(combo: QComboBox, run, label: str) -> None:
    """Add ``run`` (a core.runs.RunSummary) to ``combo``; a run without weights is listed but greyed out,
    with the reason as its tooltip (it cannot be chatted with, evaluated or exported yet)."""
    from PySide6.QtCore import Qt

    has_weights = getattr(run, "has_weights", True)
    combo.addItem(label if has_weights else f"{label}  ·  no weights yet", str(run.path))
    index = combo.count() - 1
    if not has_weights:
        item = combo.model().item(index) if hasattr(combo.model(), "item") else None
        if item is not None:
            item.setEnabled(False)
        combo.setItemData(index, f"{run.name}: {getattr(run, 'weights_note', '') or 'no trained weights yet'}",
                          Qt.ItemDataRole.ToolTipRole)


def first_enabled_run(combo: QComboBox, start: int = 0) -> int:
    """The first selectable item from ``start`` (runs without weights are disabled), or -1."""
    model = combo.model()
    for index in range(start, combo.count()):
        item = model.item(index) if hasattr(model, "item") else None
        if item is None or item.isEnabled():
            return index
    return -1


def fill_checkpoints(combo: QComboBox, run_dir: str | None) -> None:
    """Refill ``combo`` with ``run_dir``'s checkpoints: ``final`` (when saved) first, then steps, newest first."""
    from core.runs import list_checkpoints

    combo.clear()
    if run_dir:
        if (Path(run_dir) / FINAL).is_dir():
            combo.addItem("final", FINAL)
        for step, path in reversed(list_checkpoints(run_dir)):
            combo.addItem(f"step {step}", str(path))
