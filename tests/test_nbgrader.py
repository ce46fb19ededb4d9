"""An instructor's course through nbgrader itself, as a class would run it.

generate_assignment (from solutions/) → release_assignment → four students fetch it, work and
submit: one completes every exercise correctly, one gets Exercise 0.1 wrong (the classic
one-word-position bug), one answers Exercise 0.2 by calling the package's own `viz.image_grid`,
one hands it in untouched → collect → autograde → generate_feedback. Then: full marks, the wrong
exercise's points lost with the checker's message in the student's feedback, the delegated
exercise's points lost with the reference named in the feedback (the course's nbgrader_config.py
makes autograde a graded run, as the README says), and zero for the untouched notebook. The
released copy must be exactly `make student`'s notebook, with no solution and no hidden test in
it.

One notebook (the welcome chapter) stands for all: every chapter follows the same cell conventions,
which tests/test_notebooks.py checks. Slow (≈ 3 min on a 2-core CPU: autograde runs the notebook
four times).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENT = "ch00"
NOTEBOOK = "00_welcome.ipynb"
STUDENTS = ("solved", "wrong", "delegating", "untouched")
CONFIG = """\
c = get_config()
c.CourseDirectory.course_id = "mmcourse"
c.CourseDirectory.root = {course!r}
c.Exchange.root = {exchange!r}
c.CourseDirectory.db_assignments = [dict(name="{assignment}")]
c.CourseDirectory.db_students = [{students}]
"""
# The instructor's config, as the README's teaching section gives it: autograde is a graded run.
GRADED_CONFIG = """\
import os
os.environ["MMCOURSE_GRADED"] = "1"  # graded: an answer calling its exercise's reference fails
"""
# Exercise 0.1 as a student might get it wrong: a two-word position loses its second word.
WRONG_PARSE_CAPTION = """\
def parse_caption(caption: str) -> dict[str, str]:
    words = caption.split(" ")
    return {"color": words[1], "shape": words[2], "position": words[5]}
"""
# Exercise 0.2 answered by the package itself: it passes in self-study, with a note.
DELEGATING_IMAGE_GRID = """\
from mmcourse import viz as v
image_grid = lambda x, ncols=8, pad=2, pad_value=1.0: v.image_grid(x, ncols, pad, pad_value)
"""
SOLUTION = re.compile(r"^\s*### (BEGIN|END) SOLUTION\s*$\n?", re.MULTILINE)
LEAKS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")


def _nbgrader(cwd: Path, *args: str) -> None:
    bin_dir = str(Path(sys.executable).parent)  # nbgrader calls `alembic` from the same env
    env = os.environ | {"PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    env |= {"MMCOURSE_DEVICE": "cpu"}
    env |= {"JUPYTER_DATA_DIR": str(cwd / ".jupyter"), "JUPYTER_CONFIG_DIR": str(cwd / ".config")}
    done = subprocess.run(
        [sys.executable, "-m", "nbgrader", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, f"nbgrader {args[0]} failed:\n{done.stdout}\n{done.stderr}"


def _grade_id(cell) -> str | None:
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")


def _work(notebook: Path, student: str) -> None:
    """What each student does to the fetched notebook before submitting it."""
    if student == "untouched":
        return
    solutions = nbformat.read(ROOT / "solutions" / NOTEBOOK, as_version=4)
    answers = {_grade_id(c): SOLUTION.sub("", c.source) for c in solutions.cells if _grade_id(c)}
    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if cell.get("metadata", {}).get("nbgrader", {}).get("solution"):
            cell.source = answers[_grade_id(cell)]
            if student == "wrong" and _grade_id(cell) == "ex0_1_parse_caption":
                cell.source = WRONG_PARSE_CAPTION
            if student == "delegating" and _grade_id(cell) == "ex0_2_image_grid":
                cell.source = DELEGATING_IMAGE_GRID
    nbformat.write(nb, notebook)


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> dict:
    """Run the whole class once; the tests below read what came out."""
    tmp = tmp_path_factory.mktemp("class")
    course, exchange = tmp / "course", tmp / "exchange"
    (course / "source" / ASSIGNMENT).mkdir(parents=True)
    exchange.mkdir()
    exchange.chmod(0o777)  # nbgrader wants a world-writable exchange, as on a shared server
    students = ", ".join(f'dict(id="{s}")' for s in STUDENTS)
    config = CONFIG.format(course=str(course), exchange=str(exchange), assignment=ASSIGNMENT,
                           students=students)  # fmt: skip
    (course / "nbgrader_config.py").write_text(config + GRADED_CONFIG, encoding="utf-8")
    shutil.copy(ROOT / "solutions" / NOTEBOOK, course / "source" / ASSIGNMENT)

    _nbgrader(course, "generate_assignment", ASSIGNMENT, "--force")
    _nbgrader(course, "release_assignment", ASSIGNMENT, "--force")
    for student in STUDENTS:
        home = tmp / student
        home.mkdir()
        (home / "nbgrader_config.py").write_text(config, encoding="utf-8")
        _nbgrader(home, "fetch_assignment", ASSIGNMENT, "--course", "mmcourse")
        _work(home / ASSIGNMENT / NOTEBOOK, student)
        # On a shared server the exchange names a submission after its Unix user; here all four
        # students are one user, so each says who it is.
        _nbgrader(home, "submit", ASSIGNMENT, "--course", "mmcourse", "--student", student)
    _nbgrader(course, "collect", ASSIGNMENT)
    _nbgrader(course, "autograde", ASSIGNMENT, "--force")
    _nbgrader(course, "generate_feedback", ASSIGNMENT, "--force")

    from nbgrader.api import Gradebook

    scores = {}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        for student in STUDENTS:
            submission = gradebook.find_submission(ASSIGNMENT, student)
            notebook = submission.notebooks[0]
            scores[student] = {
                "score": submission.score,
                "max": submission.max_score,
                "cells": {g.name: (g.score, g.max_score) for g in notebook.grades},
            }
    return {
        "scores": scores,
        "released": course / "release" / ASSIGNMENT / NOTEBOOK,
        "feedback": {
            s: course / "feedback" / s / ASSIGNMENT / NOTEBOOK.replace(".ipynb", ".html")
            for s in STUDENTS
        },  # fmt: skip
    }


def test_released_notebook_is_the_student_notebook_without_solutions(graded):
    released = nbformat.read(graded["released"], as_version=4)
    ours = nbformat.read(ROOT / "notebooks" / NOTEBOOK, as_version=4)
    assert [c.source for c in released.cells] == [c.source for c in ours.cells], (
        "nbgrader release_assignment and `make student` disagree on the student notebook"
    )
    text = graded["released"].read_text(encoding="utf-8")
    assert not [m for m in LEAKS if m in text], "a solution or hidden test leaked into the release"


def test_correct_submission_gets_full_marks(graded):
    solved = graded["scores"]["solved"]
    assert solved["max"] > 0
    assert solved["score"] == solved["max"], solved["cells"]


def test_wrong_exercise_loses_exactly_its_points_with_the_checker_message(graded):
    wrong = graded["scores"]["wrong"]
    lost = {name: s for name, s in wrong["cells"].items() if s[0] != s[1]}
    assert list(lost) == ["check_ex0_1"], f"expected only Exercise 0.1's check to fail: {lost}"
    assert wrong["score"] == wrong["max"] - lost["check_ex0_1"][1]
    feedback = graded["feedback"]["wrong"].read_text(encoding="utf-8")
    assert "Exercise 0.1 (read a caption) failed" in feedback, "no checker message in feedback"
    assert "top left" in feedback, "the feedback should show what was expected"


def test_delegating_exercise_loses_exactly_its_points_naming_the_reference(graded):
    delegating = graded["scores"]["delegating"]
    lost = {name: s for name, s in delegating["cells"].items() if s[0] != s[1]}
    assert list(lost) == ["check_ex0_2"], f"expected only Exercise 0.2's check to fail: {lost}"
    assert delegating["score"] == delegating["max"] - lost["check_ex0_2"][1]
    feedback = graded["feedback"]["delegating"].read_text(encoding="utf-8")
    assert "Exercise 0.2 (an image grid) delegates to mmcourse.viz.image_grid" in feedback
    assert "graded answers must compute it themselves" in feedback


def test_untouched_submission_gets_zero(graded):
    assert graded["scores"]["untouched"]["score"] == 0
