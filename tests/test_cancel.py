"""Ctrl+C on the CLI: the first one asks for a cooperative stop, the second aborts, the handler is restored."""

from __future__ import annotations

import os
import signal

import pytest

from core.cancel import StopToken, stop_on_ctrl_c
from core.errors import Cancelled


def test_first_ctrl_c_requests_a_stop_second_aborts_and_handler_is_restored(capsys):
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with stop_on_ctrl_c(StopToken(), "saving a checkpoint") as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.is_set and stop.reason == "stopped with Ctrl+C"
            with pytest.raises(Cancelled):
                stop.raise_if_set()
            os.kill(os.getpid(), signal.SIGINT)
    assert "saving a checkpoint" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is before
