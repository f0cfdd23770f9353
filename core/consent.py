"""Consent to run a model's own code or to load pickled weights: given by the person, per model, on this machine.

A run's ``config.yaml`` may say ``model.trust_remote_code: true`` or ``model.allow_pickle: true``. That records
what the run asked for; it never grants it, because a run folder received from someone else must not be able
to run code on this machine by saying so. Only this store (``consent.json`` in the app's data folder) grants
it. The CLI records consent with ``--trust-remote-code`` / ``--allow-pickle``; the GUI asks with a prompt
naming the model and the risk (``gui.consent_prompt``) and records the answer here.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from core.config import atomic_write_text
from core.errors import ModelError
from core.paths import studio_home

CONSENT_FILE = "consent.json"
KINDS = ("trust_remote_code", "allow_pickle")
FLAGS = {"trust_remote_code": "--trust-remote-code", "allow_pickle": "--allow-pickle"}
ACTIONS = {"trust_remote_code": "run its own Python code", "allow_pickle": "load weights stored as Python pickles"}
RISKS = {
    "trust_remote_code": "The model's repository ships Python code that runs when the model loads. That code runs "
                         "with your permissions: it can read, change or send any of your files.",
    "allow_pickle": "Pickled weights (.bin/.pt files) can run arbitrary code while they are loaded, with your "
                    "permissions. Safetensors files cannot.",
}

_LOCK = threading.Lock()


class ConsentRequired(ModelError):
    """Loading ``model`` needs ``kind`` (trust_remote_code | allow_pickle), which the user has not allowed."""

    def __init__(self, model: str, kind: str, detail: str):
        self.model = model
        self.kind = kind
        self.detail = detail
        super().__init__(
            f"{detail} {RISKS[kind]} If you trust the source, allow it for this model on this machine: the app "
            f"asks when you load it; on the command line add {FLAGS[kind]}. (A run's config.yaml saying "
            f"model.{kind}: true is not enough.)"
        )


def consent_path() -> Path:
    """Where the consents are kept: ``consent.json`` in the app's data folder."""
    return studio_home() / CONSENT_FILE


def model_key(name_or_path: str) -> str:
    """The name consent is recorded under: an existing folder's absolute path, else the name (Hub id, bundled)."""
    name = (name_or_path or "").strip()
    path = Path(name).expanduser()
    if name and not name.startswith("bundled:") and path.exists():
        return str(path.resolve())
    return name


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown consent {kind!r} (expected one of {', '.join(KINDS)})")


def _read() -> dict:
    path = consent_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"models": {}}
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: cannot read the saved consents ({exc}); fix or delete the file") from None
    if not isinstance(data, dict) or not isinstance(data.get("models", {}), dict):
        raise ModelError(f"{path}: the saved consents are not in the expected form; fix or delete the file")
    data.setdefault("models", {})
    return data


def granted(name_or_path: str, kind: str) -> bool:
    """Whether the user allowed ``kind`` for this model on this machine. An unreadable store grants nothing."""
    _check_kind(kind)
    try:
        data = _read()
    except ModelError:
        return False
    entry = data["models"].get(model_key(name_or_path))
    return isinstance(entry, dict) and bool(entry.get(kind))


def allowed(model_cfg, kind: str) -> bool:
    """Whether loading ``model_cfg``'s model may use ``kind``: only the consent store decides, never the config."""
    return granted(model_cfg.name_or_path, kind)


def grant(name_or_path: str, kind: str) -> None:
    """Record that the user allows ``kind`` for this model (kept until ``revoke``)."""
    _set(name_or_path, kind, time.strftime("%Y-%m-%dT%H:%M:%S%z"))


def revoke(name_or_path: str, kind: str) -> None:
    """Forget the user's consent to ``kind`` for this model."""
    _set(name_or_path, kind, None)


def _set(name_or_path: str, kind: str, when: str | None) -> None:
    _check_kind(kind)
    key = model_key(name_or_path)
    if not key:
        raise ValueError("no model named")
    with _LOCK:
        data = _read()
        entry = data["models"].setdefault(key, {})
        if when is None:
            entry.pop(kind, None)
            if not entry:
                data["models"].pop(key)
        else:
            entry[kind] = when
        atomic_write_text(consent_path(), json.dumps(data, indent=2, sort_keys=True) + "\n")


def requested(model_cfg) -> list[str]:
    """The kinds ``model_cfg`` asks for (its config flags) that the user has not allowed yet: what to ask about
    before loading. The flags only trigger the question; they grant nothing."""
    return [kind for kind in KINDS if getattr(model_cfg, kind, False) and not allowed(model_cfg, kind)]


# -- the command line -----------------------------------------------------------------------------

def add_consent_arguments(parser) -> None:
    """--trust-remote-code / --allow-pickle on a command that loads a model."""
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow the base model's own Python code to run; recorded for that model on this "
                             "machine (a run's config.yaml alone never allows it)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow the base model's pickled (.bin) weights; recorded for that model on this machine")


def record_cli_consent(args, *names: str | None) -> list[str]:
    """Record the consents given on the command line (--trust-remote-code / --allow-pickle) for each model in
    ``names``; returns the kinds recorded."""
    recorded = []
    for kind in KINDS:
        if getattr(args, kind, False):
            for name in names:
                if name:
                    grant(name, kind)
            recorded.append(kind)
    return recorded


def models_loaded_by(source, checkpoint=None) -> list[str]:
    """The models a command on ``source`` (a run folder, an adapter/export folder or a model) loads: the base
    model, plus a full fine-tune's own weights folder (its code, if any, came with the folder)."""
    from core.generation import resolve_source

    resolved = resolve_source(source, checkpoint)
    names = [resolved.base_model.name_or_path]
    if resolved.weights_kind == "full" and resolved.weights_dir is not None:
        names.append(str(resolved.weights_dir))
    return names
