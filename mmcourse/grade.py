"""Grade one learner notebook with nbval and say, in plain words, which exercises pass.

    python -m mmcourse.grade notebooks/01_vector_quantization.ipynb
    make check NB=notebooks/01_vector_quantization.ipynb          # the same

It runs `pytest --nbval-lax` on the notebook (every cell, top to bottom, in a fresh kernel: what a
grader runs) with this module as a pytest plugin. The plugin reads each nbgrader check cell's
result and ends with one line per exercise:

    ✓ Exercise 1.1 passes
    ✗ Exercise 1.2 fails: Exercise 1.2 (VQ losses) failed check 3, "...": expected ... got ...
    ✗ Exercise 1.3 fails: its answer cell did not run: SyntaxError at line 4: ...
    · Exercise 1.4 is not attempted yet

An answer cell that does not run (a SyntaxError, an IndentationError, a failing import) is named
as the cause of its exercise's failure, rather than the NameError its check cell then raises.
Other cells that fail are named by the exercise they follow.

Exit status 0 exactly when every cell ran and every exercise passes.

A graded run: it sets MMCOURSE_GRADED=1 for the notebook's kernel, so an answer that calls its
exercise's own reference in the package (`mmcourse.vq.squared_distances` for Exercise 1.1)
fails, naming it; in self-study the same answer passes with a note (see `mmcourse.checks`).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

GRADED = "MMCOURSE_GRADED"  # mmcourse.checks._core.GRADED, named here without importing torch

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_CHECK_ID = re.compile(r"check_ex(\d+)_(\d+)")
_ANSWER_ID = re.compile(r"ex(\d+)_(\d+)(_.*)?")  # the answer cell of an exercise: ex1_2_vq_losses
_ERROR_LINE = re.compile(r"(?:Cell In\[\d*\]|File \"<[^>]*>\"), line (\d+)")


class Result(NamedTuple):
    exercise: str  # "Exercise 1.2"
    passed: bool
    message: str  # the checker's message when it failed, "" when it passed


def exercise_name(grade_id: str) -> str:
    """'check_ex1_2' → 'Exercise 1.2' (other ids are shown as they are)."""
    match = _CHECK_ID.fullmatch(grade_id)
    return f"Exercise {match[1]}.{match[2]}" if match else grade_id


def answer_exercise(grade_id: str) -> str | None:
    """'ex1_2_vq_losses' → 'Exercise 1.2'; None for ids of other cells."""
    match = _ANSWER_ID.fullmatch(grade_id)
    return f"Exercise {match[1]}.{match[2]}" if match else None


def cell_error(traceback: str) -> str:
    """The error that stopped a cell, with its line in the cell when the traceback gives one:
    'SyntaxError at line 4: invalid syntax'."""
    text = _ANSI.sub("", traceback).strip()
    last = text.splitlines()[-1].strip() if text else "the cell failed"
    lines = _ERROR_LINE.findall(text)
    name, sep, rest = last.partition(": ")
    if lines and sep and name.isidentifier():
        return f"{name} at line {lines[-1]}: {rest}"
    return last


def failure_message(traceback: str) -> str:
    """The checker's message from a cell's traceback: the text after `ExerciseFailed: `, or
    else the last line (the error that stopped the cell)."""
    text = _ANSI.sub("", traceback).strip()
    if "ExerciseFailed: " in text:
        return text.rsplit("ExerciseFailed: ", 1)[1].strip()
    return text.splitlines()[-1].strip() if text else "the cell failed"


def summary(results: list[Result], other_failures: list[str]) -> list[str]:
    """The plain-words report: one line per exercise, then the other cells that failed."""
    lines = []
    for result in results:
        if result.passed:
            lines.append(f"✓ {result.exercise} passes")
        elif "not implemented yet" in result.message:
            lines.append(f"· {result.exercise} is not attempted yet")
        else:
            first, *rest = result.message.splitlines()
            lines.append(f"✗ {result.exercise} fails: {first}")
            lines += [f"      {line.strip()}" for line in rest]
    if not results:
        lines.append("no exercise check cells found (is this a course notebook?)")
    if other_failures:
        lines.append(
            f"{len(other_failures)} other cell(s) failed, the first: {other_failures[0]} "
            "(a cell can fail because an exercise above it is unfinished or its answer cell did "
            "not run)"
        )
    passed = sum(r.passed for r in results)
    lines.append(f"{passed} of {len(results)} exercises pass")
    return lines


class _Collector:
    """The pytest plugin: records each notebook cell's outcome as nbval reports it."""

    def __init__(self) -> None:
        self.results: list[Result] = []
        self.other_failures: list[str] = []
        self.broken_answers: dict[str, str] = {}  # exercise → the error its answer cell raised
        self.last_exercise: str | None = None  # the exercise whose cells came last

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        cell = getattr(item, "cell", None)
        if cell is None or report.when != "call":
            return
        grading = cell.get("metadata", {}).get("nbgrader", {})
        failure = getattr(call.excinfo, "value", None)
        traceback = getattr(failure, "inner_traceback", "") or str(failure or "")
        message = failure_message(traceback)
        grade_id = grading.get("grade_id", "")
        answer = answer_exercise(grade_id) if grading.get("solution") else None
        if grading.get("grade") and grade_id:
            name = exercise_name(grade_id)
            if not report.passed and name in self.broken_answers:
                message = f"its answer cell did not run: {self.broken_answers[name]}"
            self.results.append(Result(name, report.passed, "" if report.passed else message))
            self.last_exercise = name
        elif answer is not None:
            self.last_exercise = answer
            if report.failed:
                self.broken_answers[answer] = cell_error(traceback)
        elif report.failed:
            where = (
                f"after {self.last_exercise}" if self.last_exercise else "before the first exercise"
            )
            self.other_failures.append(
                f"a cell {where} (cell {item.cell_num}): {cell_error(traceback).rstrip(': ')}"
            )

    def pytest_terminal_summary(self, terminalreporter):
        terminalreporter.section("exercises")
        for line in summary(self.results, self.other_failures):
            terminalreporter.write_line(line)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].endswith(".ipynb"):
        print("usage: python -m mmcourse.grade notebooks/NN_topic.ipynb", file=sys.stderr)
        return 2
    notebook = Path(args[0])
    if not notebook.is_file():
        print(f"no notebook at {notebook}", file=sys.stderr)
        return 2
    os.environ.setdefault("MMCOURSE_DEVICE", "cpu")
    os.environ[GRADED] = "1"  # the kernel inherits it: answers must be the learner's own
    collector = _Collector()
    code = pytest.main(
        ["-q", "--no-header", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
         "--nbval-cell-timeout=600", "--tb=no", "-rN", str(notebook)],
        plugins=[collector],
    )  # fmt: skip
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
