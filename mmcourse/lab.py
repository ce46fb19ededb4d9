"""Open the course in JupyterLab, set up for a learner (what `make lab` runs).

    python -m mmcourse.lab                       # learner: notebooks/00_welcome.ipynb
    python -m mmcourse.lab --instructor          # with nbgrader's instructor tools
    python -m mmcourse.lab notebooks/05_autoregressive.ipynb -- --port=8890

A learner's lab hides what only an instructor uses: nbgrader's Formgrader, Create Assignment,
Course List and Assignment List (the Nbgrader menu, sidebars, palette entries and their server
endpoints). nbgrader's Validate button stays. JupyterLab's news pop-up ("Would you like to
receive official Jupyter news?") is off in both modes: the course runs offline. As root (a
container), the server is started with --allow-root, which Jupyter otherwise demands.

The settings live in a folder of their own under the temporary directory, added to Jupyter's
search path for this server only (JUPYTER_CONFIG_PATH): nothing is written to the learner's own
Jupyter configuration. The process then becomes `jupyter lab` itself (exec), so Ctrl-C, signals
and the exit status are JupyterLab's own.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

WELCOME = "notebooks/00_welcome.ipynb"

# Plugins of nbgrader's JupyterLab extension that belong to the instructor (and to its
# exchange-based assignment distribution, which the course does not use). Its "Nbgrader" menu
# holds nothing else.
NBGRADER_INSTRUCTOR_PLUGINS = [
    "@jupyter/nbgrader:menu",
    "@jupyter/nbgrader:formgrader",
    "@jupyter/nbgrader:create-assignment",
    "@jupyter/nbgrader:course-list",
    "@jupyter/nbgrader:assignment-list",
]
NBGRADER_INSTRUCTOR_SERVER = [
    "nbgrader.server_extensions.formgrader",
    "nbgrader.server_extensions.course_list",
    "nbgrader.server_extensions.assignment_list",
]
# Fetches Jupyter's news and asks, in a pop-up, whether to keep doing so.
NEWS_PLUGIN = "@jupyterlab/apputils-extension:announcements"


def page_config(instructor: bool) -> dict:
    """JupyterLab's page_config: the front-end plugins to leave out."""
    disabled = [NEWS_PLUGIN] + ([] if instructor else NBGRADER_INSTRUCTOR_PLUGINS)
    return {"disabledExtensions": {name: True for name in disabled}}


def server_config(instructor: bool) -> dict:
    """jupyter_server_config: the server extensions to leave out."""
    off = [] if instructor else NBGRADER_INSTRUCTOR_SERVER
    return {"ServerApp": {"jpserver_extensions": {name: False for name in off}}}


def write_config(folder: Path, instructor: bool) -> Path:
    """Write the lab's settings into `folder` (a Jupyter config directory); return it."""
    (folder / "labconfig").mkdir(parents=True, exist_ok=True)
    (folder / "labconfig" / "page_config.json").write_text(json.dumps(page_config(instructor)))
    (folder / "jupyter_server_config.json").write_text(json.dumps(server_config(instructor)))
    return folder


def environment(config: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) with `config` first on Jupyter's search
    path, ahead of the packages' own settings (nbgrader enables every extension there)."""
    env = dict(os.environ if base is None else base)
    rest = env.get("JUPYTER_CONFIG_PATH")
    env["JUPYTER_CONFIG_PATH"] = os.pathsep.join([str(config)] + ([rest] if rest else []))
    return env


def command(notebook: str | None, extra: list[str] | None = None) -> list[str]:
    """The `jupyter lab` command line; --allow-root when running as root."""
    line = [sys.executable, "-m", "jupyter", "lab"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        line.append("--allow-root")  # containers run as root; Jupyter refuses without it
    return line + ([notebook] if notebook else []) + list(extra or [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mmcourse.lab", description=__doc__.split("\n")[0]
    )
    parser.add_argument("notebook", nargs="?", default=WELCOME, help=f"default: {WELCOME}")
    parser.add_argument(
        "--instructor", action="store_true", help="keep nbgrader's instructor tools"
    )
    parser.add_argument("jupyter_args", nargs=argparse.REMAINDER, help="after --: for jupyter lab")
    args = parser.parse_args(argv)
    extra = args.jupyter_args[1:] if args.jupyter_args[:1] == ["--"] else args.jupyter_args
    mode = "instructor" if args.instructor else "learner"
    user = os.getuid() if hasattr(os, "getuid") else 0
    config = write_config(
        Path(tempfile.gettempdir()) / f"mmcourse-lab-{user}" / mode, args.instructor
    )
    line = command(args.notebook, extra)
    os.execve(line[0], line, environment(config))  # does not return
    return 0


if __name__ == "__main__":
    sys.exit(main())
