"""One lock for the first import of torch / transformers / peft from any GUI worker thread.

transformers resolves its names lazily (``from transformers import AutoTokenizer`` imports submodules on
first use) and that is not thread-safe: two threads importing it for the first time at once fail with
"cannot import name AutoTokenizer" (reproduced here with a thread importing peft while another imports
AutoTokenizer). Every worker that may touch torch/transformers calls ``import_heavy_libraries()`` first;
it imports them one thread at a time and is a no-op once done.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import threading
from collections.abc import Iterator

# Re-entrant: a thread holding it (e.g. the Train page preload) may call import_heavy_libraries() again.
heavy_imports_lock = threading.RLock()

HEAVY_LIBRARIES = ("torch", "transformers", "peft")
# transformers' lazy names that core modules use: resolved under the lock so no later first use races.
_TRANSFORMERS_NAMES = ("AutoConfig", "AutoTokenizer", "AutoModel", "AutoModelForCausalLM",
                       "PreTrainedModel", "PreTrainedTokenizerBase")

_imported = False  # set only after every import above completed (sys.modules alone shows half-imported ones)


@contextlib.contextmanager
def no_gc_during_import() -> Iterator[None]:
    """Pause the garbage collector meanwhile, then freeze the survivors.

    The imports create ~a million objects; each full collection triggered on the importing thread walks
    them all while holding the GIL (measured: GUI stalls of 100-370 ms). Frozen objects are skipped later.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def heavy_libraries_imported() -> bool:
    """True once ``import_heavy_libraries`` has completed in this process."""
    return _imported


def import_heavy_libraries() -> None:
    """Import torch, transformers (and its common lazy names) and peft under ``heavy_imports_lock``.

    Call it on a worker thread before touching core modules that use them; a no-op after the first time.
    A library that is not installed is skipped: the core function that needs it reports a clear error.
    """
    global _imported
    if _imported:
        return
    with heavy_imports_lock:
        if _imported:
            return
        with no_gc_during_import():
            for name in HEAVY_LIBRARIES:
                try:
                    module = importlib.import_module(name)
                except ImportError:
                    continue
                if name == "transformers":
                    for attr in _TRANSFORMERS_NAMES:
                        try:
                            getattr(module, attr)
                        except (AttributeError, ImportError):  # a name this transformers lacks: nothing to warm
                            pass
        _imported = True
