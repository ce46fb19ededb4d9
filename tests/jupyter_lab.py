"""Start a private JupyterLab server for a test: its own free port, a random token, a temporary
root folder, and Jupyter/IPython settings kept under the test's tmp_path (never the user's).
The command line and the course's lab settings are `make lab`'s own (mmcourse.lab): a learner's
lab unless `instructor=True`."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple

from mmcourse import lab as course_lab

START_TIMEOUT_S = 90


class Lab(NamedTuple):
    server: subprocess.Popen
    port: int
    token: str
    root: Path
    log: Path
    runtime: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def status(url: str, token: str) -> int | None:
    """The HTTP status of a GET, or None when nothing answers."""
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def start(
    tmp_path: Path,
    stdin: int | None = None,
    env: dict[str, str] | None = None,
    instructor: bool = False,
) -> Lab:
    """Start `jupyter lab` serving tmp_path/root; return once it answers /api/status."""
    port, token = free_port(), secrets.token_hex(16)
    root, home = tmp_path / "root", tmp_path / "home"
    for folder in (home, root):
        folder.mkdir(exist_ok=True)
    full_env = (
        os.environ
        | {
            "HOME": str(home),
            "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
            "JUPYTER_DATA_DIR": str(tmp_path / "data"),
            "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
            "IPYTHONDIR": str(tmp_path / "ipython"),
        }
        | (env or {})
    )
    config = course_lab.write_config(tmp_path / "lab-config", instructor)
    full_env = course_lab.environment(config, base=full_env)
    command = course_lab.command(None, [
        "--no-browser", "--ip", "127.0.0.1", f"--port={port}", f"--ServerApp.token={token}",
        "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root}",
    ])  # fmt: skip
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            command, env=full_env, cwd=root, stdin=stdin, stdout=out, stderr=subprocess.STDOUT
        )
    lab = Lab(server, port, token, root, log, tmp_path / "runtime")
    deadline = time.monotonic() + START_TIMEOUT_S
    code = None
    while code != 200 and time.monotonic() < deadline and server.poll() is None:
        time.sleep(0.5)
        code = status(lab.url("api/status"), token)
    if code != 200:
        kill(lab)
        raise AssertionError(f"no answer on /api/status (last: {code}):\n{log.read_text()}")
    return lab


def kill(lab: Lab) -> None:
    """Make sure the server is gone (a no-op after a clean stop)."""
    if lab.server.poll() is None:
        lab.server.kill()
        lab.server.wait()
