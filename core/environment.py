"""The process environment the machine-learning libraries read, set in one place before they need it.

- ``TOKENIZERS_PARALLELISM=false``: the fast tokenizers' thread pool must not meet a fork (DataLoader
  workers, ``accelerate`` ranks), which deadlocks or warns.
- ``HF_HUB_DISABLE_TELEMETRY=1``: the app does not phone home. TRL sends a usage ping each time a trainer
  starts (``trl.trainer.base_trainer._send_telemetry``), and ``transformers`` adds usage details to the
  user agent of Hub downloads, unless this is set. Both go through ``huggingface_hub``, which reads the
  variable once, when it is first imported; :func:`prepare_environment` also tells an already-imported
  ``huggingface_hub`` (a library may have imported it first).

Both are defaults: a value the user set in the environment wins (``HF_HUB_DISABLE_TELEMETRY=0`` turns the
libraries' telemetry back on).
"""

from __future__ import annotations

import os
import sys

DEFAULTS = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_TELEMETRY": "1"}
_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's own reading of a true flag


def telemetry_disabled() -> bool:
    """True when the environment turns the Hugging Face libraries' telemetry off."""
    return any(os.environ.get(name, "").upper() in _TRUE for name in ("HF_HUB_DISABLE_TELEMETRY", "DISABLE_TELEMETRY"))


def prepare_environment() -> None:
    """Set the app's environment defaults (see the module docstring); safe to call any number of times."""
    for name, value in DEFAULTS.items():
        os.environ.setdefault(name, value)
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None and telemetry_disabled():
        # Imported before we set the variable: its flag was read already, so set it as the import would have.
        constants.HF_HUB_DISABLE_TELEMETRY = True
