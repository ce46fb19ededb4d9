"""An instructor's round trip through nbgrader itself: generate_assignment on a solution notebook
gives our student notebook, and autograde gives full marks to the solutions and none to the stubs.

One notebook (the welcome chapter) stands for all: every chapter follows the same cell conventions,
which tests/test_notebooks.py checks. Slow-ish (≈ 40 s: autograde runs the notebook twice).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "00_welcome.ipynb"
CONFIG = """\
c = get_config()
c.CourseDirectory.course_id = "mmcourse"
c.CourseDirectory.db_assignments = [dict(name="ch00")]
c.CourseDirectory.db_students = [dict(id="solved"), dict(id="untouched")]
"""


def _nbgrader(course: Path, *args: str) -> None:
    bin_dir = str(Path(sys.executable).parent)  # nbgrader calls `alembic` from the same env
    env = os.environ | {"PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    env |= {"MMCOURSE_DEVICE": "cpu", "JUPYTER_DATA_DIR": str(course / ".jupyter")}
    done = subprocess.run(
        [sys.executable, "-m", "nbgrader", *args, "--force"],
        cwd=course, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, f"nbgrader {args[0]} failed:\n{done.stdout}\n{done.stderr}"


def _sources(path: Path) -> list[str]:
    return [cell.source for cell in nbformat.read(path, as_version=4).cells]


def test_generate_assignment_and_autograde(tmp_path):
    course = tmp_path / "course"
    (course / "source" / "ch00").mkdir(parents=True)
    (course / "nbgrader_config.py").write_text(CONFIG, encoding="utf-8")
    shutil.copy(ROOT / "solutions" / NOTEBOOK, course / "source" / "ch00")

    _nbgrader(course, "generate_assignment", "ch00")
    released = course / "release" / "ch00" / NOTEBOOK
    assert _sources(released) == _sources(ROOT / "notebooks" / NOTEBOOK), (
        "nbgrader generate_assignment and `make student` disagree on the student notebook"
    )

    for student, path in [("solved", "solutions"), ("untouched", "notebooks")]:
        (course / "submitted" / student / "ch00").mkdir(parents=True)
        shutil.copy(ROOT / path / NOTEBOOK, course / "submitted" / student / "ch00")
    _nbgrader(course, "autograde", "ch00")

    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        solved = gradebook.find_submission("ch00", "solved")
        untouched = gradebook.find_submission("ch00", "untouched")
        assert solved.max_score > 0
        assert solved.score == solved.max_score, "the solutions must get full marks"
        assert untouched.score == 0, "the untouched stubs must get no marks"
