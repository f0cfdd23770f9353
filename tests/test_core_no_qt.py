"""core must never import Qt: import every core module with PySide6/pyqtgraph blocked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import importlib, pkgutil, sys

class BlockQt:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("PySide6", "shiboken6", "pyqtgraph", "gui"):
            raise ImportError(f"core imported {name}: core must stay Qt-free")
        return None

sys.meta_path.insert(0, BlockQt())
import core
names = ["core"] + [f"core.{m.name}" for m in pkgutil.iter_modules(core.__path__)]
import core.commands
names += [f"core.commands.{m.name}" for m in pkgutil.iter_modules(core.commands.__path__)]
for name in names:
    importlib.import_module(name)
print(len(names))
"""


def test_every_core_module_imports_without_qt():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.strip().splitlines()[-1]) >= 5


def test_the_blocker_really_blocks():
    proc = subprocess.run([sys.executable, "-c", SCRIPT.replace("import core\n", "import core\nimport gui.state\n", 1)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Qt-free" in proc.stderr
