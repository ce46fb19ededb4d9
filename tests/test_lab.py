"""The JupyterLab server that `make lab` starts: it answers on localhost and stops cleanly, runs
as root, and shows a learner no instructor tools and no news pop-up."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import time
import urllib.request
from pathlib import Path

import jupyter_lab
import pytest

from mmcourse import lab as course_lab

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


def _page_config(lab: jupyter_lab.Lab) -> dict:
    """The settings JupyterLab hands its front end, read from the /lab page."""
    request = urllib.request.Request(
        lab.url("lab"), headers={"Authorization": f"token {lab.token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        page = response.read().decode()
    found = re.search(r'<script id="jupyter-config-data" type="application/json">(.*?)</script>',
                      page, re.S)  # fmt: skip
    assert found, "no jupyter-config-data on the /lab page"
    return json.loads(found[1])


@pytest.mark.parametrize("instructor", [False, True], ids=["learner", "instructor"])
def test_learner_lab_hides_the_instructor_tools_and_the_news(tmp_path: Path, instructor: bool):
    lab = jupyter_lab.start(tmp_path, instructor=instructor)
    try:
        disabled = set(_page_config(lab)["disabledExtensions"])
        formgrader = jupyter_lab.status(lab.url("formgrader"), lab.token)
        validate = jupyter_lab.status(lab.url("assignments/validate"), lab.token)
    finally:
        jupyter_lab.kill(lab)
    assert course_lab.NEWS_PLUGIN in disabled, "the news pop-up must be off in every mode"
    hidden = set(course_lab.NBGRADER_INSTRUCTOR_PLUGINS)
    if instructor:
        assert not hidden & disabled, f"instructor mode hides {sorted(hidden & disabled)}"
        assert formgrader == 200, f"formgrader answered {formgrader}"
    else:
        assert hidden <= disabled, f"a learner still sees {sorted(hidden - disabled)}"
        assert formgrader == 404, f"formgrader answered {formgrader} in a learner's lab"
    assert "@jupyter/nbgrader:validate-assignment" not in disabled
    assert validate != 404, "nbgrader's Validate has no server endpoint"


def test_lab_command_allows_root_only_as_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert "--allow-root" in course_lab.command("x.ipynb")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "--allow-root" not in course_lab.command("x.ipynb")


def test_make_lab_runs_the_course_lab():
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    recipe = makefile.split("\nlab:", 1)[1].split("\n\n", 1)[0]
    assert "-m mmcourse.lab" in recipe, recipe
