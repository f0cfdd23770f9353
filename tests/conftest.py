from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random GPT-NeoX + trained BPE tokenizer (with a chat template), built once per session."""
    from tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture()
def isolated_home(tmp_path, monkeypatch) -> Path:
    """Point the app's cache/data/workspace folders at a temporary directory."""
    monkeypatch.setenv("FINETUNE_STUDIO_HOME", str(tmp_path / "studio-home"))
    return tmp_path / "studio-home"


@pytest.fixture(autouse=True)
def _garbage_collection_as_the_app_does(request):
    """GUI tests run with the app's garbage-collection rule (gui/gc_guard.py: collect only while no model runs in
    another thread); after the test, with its threads ended, one full collection and automatic collection back."""
    if "qtbot" not in request.fixturenames:
        yield
        return
    request.getfixturevalue("qapp")
    from gui import gc_guard

    gc_guard.install()
    try:
        yield
    finally:
        gc_guard.uninstall()
        import gc

        gc.collect()
