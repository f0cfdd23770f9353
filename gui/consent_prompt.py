"""Ask the person before a model's own code runs or pickled weights load, and record the answer (core.consent).

The question names the model and the risk. A yes is kept per model on this machine, so it is asked once; a no
is not recorded (the load stops, and the next attempt asks again). A run's config.yaml never answers for the user.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox, QWidget

from core import consent
from core.consent import ConsentRequired

TITLES = {"trust_remote_code": "Run the model's own code?", "allow_pickle": "Load pickled weights?"}


def consent_question(model: str, kind: str) -> str:
    """The prompt's text: which model, what it needs, what can go wrong."""
    return (f"The model\n\n    {model}\n\nneeds to {consent.ACTIONS[kind]}.\n\n{consent.RISKS[kind]}\n\n"
            "Allow it only if you trust where this model comes from. Your answer is remembered for this model on "
            "this computer; a run's settings file cannot give this permission.")


def ask_consent(parent: QWidget | None, model: str, kind: str) -> bool:
    """Show the question; on Yes record the consent and return True."""
    box = QMessageBox(QMessageBox.Icon.Warning, TITLES[kind], consent_question(model, kind),
                      QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, parent)
    box.setTextFormat(Qt.TextFormat.PlainText)  # the model name comes from a file or the user: never rich text
    box.setDefaultButton(QMessageBox.StandardButton.No)
    box.button(QMessageBox.StandardButton.Yes).setText("Allow for this model")
    box.button(QMessageBox.StandardButton.No).setText("Don't allow")
    if box.exec() != QMessageBox.StandardButton.Yes:
        return False
    consent.grant(model, kind)
    return True


def confirm_consents(parent: QWidget | None, model_cfg) -> bool:
    """Before loading ``model_cfg``: ask about each permission its settings request and the user has not given.
    False when the user refused one (do not load)."""
    return all(ask_consent(parent, model_cfg.name_or_path, kind) for kind in consent.requested(model_cfg))


def offer_consent(parent: QWidget | None, exc: object) -> bool:
    """After a load stopped with ConsentRequired (found before any of the model's code ran): ask; True when the
    user allowed it, so the caller may try again."""
    return isinstance(exc, ConsentRequired) and ask_consent(parent, exc.model, exc.kind)


def confirm_run_consents(parent: QWidget | None, run_dir) -> bool:
    """Before loading a run's model (Chat, Evaluate): ``confirm_consents`` for the model its settings name; a run's
    config.yaml only asks, never grants. True when an unreadable config (it fails later with its own message)."""
    from core.errors import StudioError
    from core.runs import load_run_config

    try:
        model_cfg = load_run_config(run_dir).model
    except StudioError:
        return True
    return confirm_consents(parent, model_cfg)
