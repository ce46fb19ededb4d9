"""The JupyterLab server that `make lab` starts answers on localhost and stops cleanly."""

from __future__ import annotations

import os
import pty
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

START_TIMEOUT_S = 90
STOP_TIMEOUT_S = 10


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _status(url: str, token: str) -> int | None:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def _stop(server: subprocess.Popen, how: str) -> None:
    if how == "SIGTERM":  # what a process manager sends
        server.send_signal(signal.SIGTERM)
    else:  # Ctrl-C twice in the terminal that ran `make lab` (one Ctrl-C asks for confirmation)
        server.send_signal(signal.SIGINT)
        time.sleep(0.5)
        server.send_signal(signal.SIGINT)


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C Ctrl-C"])
def test_jupyter_lab_serves_and_stops(tmp_path: Path, how: str):
    port, token = _free_port(), secrets.token_hex(16)
    home = tmp_path / "home"
    root = tmp_path / "root"
    for folder in (home, root):
        folder.mkdir()
    env = os.environ | {
        "HOME": str(home),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_DATA_DIR": str(tmp_path / "data"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "IPYTHONDIR": str(tmp_path / "ipython"),
    }
    command = [
        sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
        "--ip", "127.0.0.1", f"--port={port}", f"--ServerApp.token={token}",
        "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root}",
    ]  # fmt: skip
    log = tmp_path / "server.log"
    terminal, stdin = pty.openpty()  # the server asks before stopping on Ctrl-C only in a terminal
    with log.open("wb") as out:
        server = subprocess.Popen(
            command, env=env, cwd=root, stdin=stdin, stdout=out, stderr=subprocess.STDOUT
        )
    os.close(stdin)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        status = None
        while status != 200 and time.monotonic() < deadline and server.poll() is None:
            time.sleep(0.5)
            status = _status(f"http://127.0.0.1:{port}/api/status", token)
        assert status == 200, f"no answer on /api/status (last: {status}):\n{log.read_text()}"
        assert _status(f"http://127.0.0.1:{port}/lab", token) == 200, log.read_text()

        _stop(server, how)
        code = server.wait(timeout=STOP_TIMEOUT_S)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        os.close(terminal)
    assert code == 0, f"exit code {code}:\n{log.read_text()}"
    assert not list((tmp_path / "runtime").glob("jpserver-*")), "server files left behind"
    assert not list(root.iterdir()), "the server wrote into the folder it served"
    assert _status(f"http://127.0.0.1:{port}/api/status", token) is None, "still answering"
