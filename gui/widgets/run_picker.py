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


def fill_checkpoints(combo: QComboBox, run_dir: str | None) -> None:
    """Refill ``combo`` with ``run_dir``'s checkpoints: ``final`` (when saved) first, then steps, newest first."""
    from core.runs import list_checkpoints

    combo.clear()
    if run_dir:
        if (Path(run_dir) / FINAL).is_dir():
            combo.addItem("final", FINAL)
        for step, path in reversed(list_checkpoints(run_dir)):
            combo.addItem(f"step {step}", str(path))
