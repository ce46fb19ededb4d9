"""`make check NB=…` / `python -m mmcourse.grade`: nbval on one learner notebook, then one line
per exercise in plain words; exit 0 exactly when everything passes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from answers import WRONG_PARSE_CAPTION, with_answer

from mmcourse import grade

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "00_welcome.ipynb"
SOLUTION = re.compile(r"^\s*### (BEGIN|END) SOLUTION\s*$\n?", re.MULTILINE)


def _grade(path: Path) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "mmcourse.grade", str(path)],
        capture_output=True, text=True, timeout=600, cwd=path.parent,
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr


def test_exercise_names_and_messages():
    assert grade.exercise_name("check_ex1_12") == "Exercise 1.12"
    assert grade.exercise_name("my_check") == "my_check"
    # nbval's tracebacks are coloured; the message is what follows `ExerciseFailed: `.
    traceback = (
        "Traceback\n\x1b[31mExerciseFailed\x1b[0m: Exercise 0.1 (x) failed check 2\n  hint: h"
    )
    assert grade.failure_message(traceback) == "Exercise 0.1 (x) failed check 2\n  hint: h"
    assert grade.failure_message("Traceback ...\nValueError: bad") == "ValueError: bad"
    lines = grade.summary(
        [grade.Result("Exercise 0.1", True, ""),
         grade.Result("Exercise 0.2", False, "Exercise 0.2 (grid) failed check 1\n  got: 3"),
         grade.Result("Exercise 0.3", False, "Exercise 0.3 (y) is not implemented yet")],
        ["cell 9: NameError"],
    )  # fmt: skip
    assert lines[0] == "✓ Exercise 0.1 passes"
    assert lines[1] == "✗ Exercise 0.2 fails: Exercise 0.2 (grid) failed check 1"
    assert lines[2] == "      got: 3"
    assert lines[3] == "· Exercise 0.3 is not attempted yet"
    assert lines[4].startswith("1 other cell(s) failed, the first: cell 9: NameError")
    assert lines[-1] == "1 of 3 exercises pass"


def test_usage_errors():
    assert grade.main([]) == 2
    assert grade.main(["missing.ipynb"]) == 2


def test_solved_notebook_passes(tmp_path):
    code, out = _grade(ROOT / "solutions" / NOTEBOOK)
    assert code == 0, out
    assert "✓ Exercise 0.1 passes" in out and "✓ Exercise 0.2 passes" in out, out
    assert "2 of 2 exercises pass" in out, out


def test_wrong_and_unfinished_exercises_are_named(tmp_path):
    """Exercise 0.1 answered wrongly, Exercise 0.2 left as the stub."""
    path = with_answer(
        ROOT / "notebooks" / NOTEBOOK,
        "ex0_1_parse_caption",
        WRONG_PARSE_CAPTION,
        tmp_path / NOTEBOOK,
    )
    code, out = _grade(path)
    assert code == 1, out
    assert "✗ Exercise 0.1 fails: Exercise 0.1 (read a caption) failed check" in out, out
    assert "expected" in out, out
    assert "· Exercise 0.2 is not attempted yet" in out, out
    assert "0 of 2 exercises pass" in out, out


def test_a_delegating_answer_fails_naming_the_reference(tmp_path):
    """A graded run: Exercise 0.1 answered with the package's own parse_caption (under another
    name) fails, naming it; Exercise 0.2, solved, still passes."""
    path = with_answer(
        ROOT / "solutions" / NOTEBOOK,
        "ex0_1_parse_caption",
        "from mmcourse.data import shapes as s\nparse_caption = s.parse_caption\n",
        tmp_path / NOTEBOOK,
    )
    code, out = _grade(path)
    assert code == 1, out
    assert (
        "✗ Exercise 0.1 fails: Exercise 0.1 (read a caption) delegates to "
        "mmcourse.data.shapes.parse_caption, the package's reference" in out
    ), out
    assert "✓ Exercise 0.2 passes" in out and "1 of 2 exercises pass" in out, out


def test_cell_errors_name_their_line():
    syntax = (
        "\x1b[36m  Cell \x1b[39m\x1b[32mIn[7]\x1b[39m, line 3\n    return {\n           ^\n"
        "\x1b[31mSyntaxError\x1b[39m: '{' was never closed\n"
    )
    assert grade.cell_error(syntax) == "SyntaxError at line 3: '{' was never closed"
    assert grade.cell_error("Traceback\nValueError: bad") == "ValueError: bad"
    assert grade.answer_exercise("ex1_2_vq_losses") == "Exercise 1.2"
    assert grade.answer_exercise("check_ex1_2") is None


def test_an_answer_that_does_not_run_is_named_as_the_cause(tmp_path):
    """Exercise 0.2's answer cell has a SyntaxError: its check cell's NameError is not the news."""
    path = with_answer(
        ROOT / "notebooks" / NOTEBOOK,
        "ex0_2_image_grid",
        "def image_grid(x, ncols=8, pad=2, pad_value=1.0):\n    return (x\n",
        tmp_path / NOTEBOOK,
    )
    code, out = _grade(path)
    assert code == 1, out
    assert "✗ Exercise 0.2 fails: its answer cell did not run: SyntaxError at line 2" in out, out
    line = next(x for x in out.splitlines() if x.startswith("✗ Exercise 0.2"))
    assert "NameError" not in line, out
    assert "a cell after Exercise 0.2 (cell" in out, out  # later cells using image_grid
    assert "· Exercise 0.1 is not attempted yet" in out, out
