"""The JupyterLab server that `make lab` starts answers on localhost and stops cleanly."""

from __future__ import annotations

import os
import pty
import signal
import time
from pathlib import Path

import jupyter_lab
import pytest

STOP_TIMEOUT_S = 10


def _stop(lab: jupyter_lab.Lab, how: str) -> None:
    if how == "SIGTERM":  # what a process manager sends
        lab.server.send_signal(signal.SIGTERM)
    else:  # Ctrl-C twice in the terminal that ran `make lab` (one Ctrl-C asks for confirmation)
        lab.server.send_signal(signal.SIGINT)
        time.sleep(0.5)
        lab.server.send_signal(signal.SIGINT)


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C Ctrl-C"])
def test_jupyter_lab_serves_and_stops(tmp_path: Path, how: str):
    terminal, stdin = pty.openpty()  # the server asks before stopping on Ctrl-C only in a terminal
    try:
        lab = jupyter_lab.start(tmp_path, stdin=stdin)
    finally:
        os.close(stdin)
    try:
        assert jupyter_lab.status(lab.url("lab"), lab.token) == 200, lab.log.read_text()
        _stop(lab, how)
        code = lab.server.wait(timeout=STOP_TIMEOUT_S)
    finally:
        jupyter_lab.kill(lab)
        os.close(terminal)
    assert code == 0, f"exit code {code}:\n{lab.log.read_text()}"
    assert not list(lab.runtime.glob("jpserver-*")), "server files left behind"
    assert not list(lab.root.iterdir()), "the server wrote into the folder it served"
    assert jupyter_lab.status(lab.url("api/status"), lab.token) is None, "still answering"
