"""notebooks/ is generated from solutions/: in sync, nothing leaks, every exercise is a stub that
its checker rejects, every reference solution passes its checker, no other cell of a student
notebook stops at an unfinished exercise, and solutions store only outputs a reader can see.

Conventions (solutions/ is written to them): an exercise cell has nbgrader metadata
`solution: true, grade: false` and its solution between `### BEGIN SOLUTION` / `### END SOLUTION`;
the very next code cell is its check cell (`grade: true, locked: true, points > 0`) calling a
`check_<name>(...)` from `mmcourse.checks`; the first code cell of a notebook only imports (setup).
Exercises are run here without a kernel: setup, exercise and check cell exec'd in one namespace.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import NamedTuple

import nbformat
import pytest
from nbformat.notebooknode import NotebookNode
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from mmcourse import student

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = ROOT / "solutions"
NOTEBOOKS = ROOT / "notebooks"
LEAK_MARKERS = (
    "BEGIN SOLUTION",
    "END SOLUTION",
    "BEGIN HIDDEN TESTS",
    "END HIDDEN TESTS",
    "BEGIN MARK SCHEME",
    "END MARK SCHEME",
)


class Exercise(NamedTuple):
    setup: NotebookNode
    cell: NotebookNode
    check: NotebookNode


def _nbgrader(cell: NotebookNode) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def exercises(nb: NotebookNode) -> list[Exercise]:
    """Each exercise cell with the notebook's setup cell and the check cell that follows it.
    Fails if a notebook breaks the conventions in the module docstring."""
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    found = []
    for i, cell in enumerate(code):
        meta = _nbgrader(cell)
        if not (meta.get("solution") and not meta.get("grade")):
            continue
        name = meta.get("grade_id", f"code cell {i}")
        assert i > 0, f"{name}: the first code cell must be the setup cell, not an exercise"
        assert not _nbgrader(code[0]), f"{name}: the setup cell must not be an nbgrader cell"
        assert i + 1 < len(code), f"{name}: no check cell after the exercise"
        check = code[i + 1]
        check_meta = _nbgrader(check)
        assert check_meta.get("grade") and check_meta.get("locked"), (
            f"{name}: the cell after an exercise must be a locked grade cell (its check), "
            f"got nbgrader metadata {check_meta}"
        )
        assert check_meta.get("points", 0) > 0, f"{name}: its check cell gives no points"
        assert re.search(r"\bcheck_\w+\(", check.source), f"{name}: its check cell calls no checker"
        found.append(Exercise(code[0], cell, check))
    return found


def run_cells(*cells: NotebookNode, label: str) -> None:
    """exec the cells' sources, in order, in one fresh namespace (plain Python, no kernel)."""
    namespace: dict = {"__name__": "__main__"}
    for index, cell in enumerate(cells):
        exec(compile(cell.source, f"<{label} cell {index}>", "exec"), namespace)


def _grade_id(exercise: Exercise) -> str:
    return _nbgrader(exercise.cell)["grade_id"]


def _cases() -> list:
    """(notebook, grade_id) of every exercise in solutions/; a notebook that breaks the
    conventions gives one case that fails with the reason, instead of a collection error."""
    cases = []
    for path in sorted(SOLUTIONS.glob("*.ipynb")):
        try:
            grade_ids = [_grade_id(ex) for ex in exercises(student.read(path))]
        except (AssertionError, KeyError):  # KeyError: an exercise without a grade_id
            grade_ids = ["conventions"]
        cases += [pytest.param(path.name, g, id=f"{path.stem}:{g}") for g in grade_ids]
    return cases


def _find(path: Path, grade_id: str) -> Exercise:
    matches = [ex for ex in exercises(student.read(path)) if _grade_id(ex) == grade_id]
    assert len(matches) == 1, f"{path.name}: exercise {grade_id} found {len(matches)} times"
    return matches[0]


def _leaks(nb: NotebookNode) -> list[str]:
    found = []
    for index, cell in enumerate(nb.cells):
        found += [f"cell {index}: {m}" for m in LEAK_MARKERS if m in cell.source]
        if cell.cell_type == "code" and cell.outputs:
            found.append(f"cell {index}: outputs")
        if cell.cell_type == "code" and cell.execution_count is not None:
            found.append(f"cell {index}: execution count")
        if "execution" in cell.metadata:
            found.append(f"cell {index}: execution timing")
    if "widgets" in nb.metadata:
        found.append("saved widget state")
    return found


# --- the course's own notebooks ---------------------------------------------------------------


def test_notebooks_match_a_fresh_regeneration():
    out_of_date = student.stale(SOLUTIONS, NOTEBOOKS)
    assert not out_of_date, f"run `make student`; out of date: {[p.name for p in out_of_date]}"


def test_every_solution_has_a_student_twin_and_back():
    solutions = {p.name for p in SOLUTIONS.glob("*.ipynb")}
    notebooks = {p.name for p in NOTEBOOKS.glob("*.ipynb")}
    assert solutions == notebooks, (
        f"only in solutions/: {sorted(solutions - notebooks)}, "
        f"only in notebooks/: {sorted(notebooks - solutions)}"
    )


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_no_leaks_in_student_notebooks(path):
    leaks = _leaks(nbformat.read(path, as_version=4))
    assert not leaks, f"{path.name} leaks: {leaks}"


@pytest.mark.parametrize(("name", "grade_id"), _cases())
def test_checker_rejects_the_stub(name, grade_id, monkeypatch):
    from mmcourse.checks import ExerciseFailed

    exercise = _find(NOTEBOOKS / name, grade_id)
    assert "raise NotImplementedError" in exercise.cell.source
    monkeypatch.chdir(NOTEBOOKS)
    with pytest.raises(ExerciseFailed, match=r"(?i)not implemented"):
        run_cells(*exercise, label=f"notebooks/{name} {grade_id}")


@pytest.mark.parametrize(("name", "grade_id"), _cases())
def test_reference_solution_passes(name, grade_id, monkeypatch, capsys):
    exercise = _find(SOLUTIONS / name, grade_id)
    assert "### BEGIN SOLUTION" in exercise.cell.source
    assert "### END SOLUTION" in exercise.cell.source
    monkeypatch.chdir(SOLUTIONS)
    monkeypatch.setenv("MMCOURSE_GRADED", "1")  # graded: a solution must be its own work
    run_cells(*exercise, label=f"solutions/{name} {grade_id}")
    assert "✓" in capsys.readouterr().out, "a passing check prints one ✓ line"


def _exercise_names(nb: NotebookNode) -> dict[str, str]:
    """The names each exercise cell defines → "Exercise N.k" (from its grade_id exN_k_…)."""
    names = {}
    for exercise in exercises(nb):
        number = re.match(r"ex(\d+)_(\d+)_", _grade_id(exercise))
        label = f"Exercise {number[1]}.{number[2]}" if number else _grade_id(exercise)
        for node in ast.parse(exercise.cell.source).body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef):
                names[node.name] = label
    return names


def _guard(node: ast.AST, helper: str, names: dict[str, str]) -> str | None:
    """The exercise function `node` guards when it is `<…>.helper(name, …, "Exercise N.k")` with
    that function's own label, else None."""
    if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Name)):
        return None
    func, name, label = node.func, node.args[0].id, node.args[-1]
    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    right_label = isinstance(label, ast.Constant) and names.get(name) == label.value
    return name if called == helper and right_label else None


def _unguarded(node: ast.AST, names: dict[str, str], gated: frozenset = frozenset()) -> list:
    """Uses of exercise functions that would stop a cell while their exercise is a stub. A use
    is guarded as the learner of `learner_or_reference(name, reference, label)`, or inside
    `if finished(name, label):`."""
    if _guard(node, "learner_or_reference", names):
        return [use for arg in node.args[1:] for use in _unguarded(arg, names, gated)]
    if _guard(node, "finished", names):
        return []  # asking about the function does not call it
    if isinstance(node, ast.If):
        tests = node.test.values if isinstance(node.test, ast.BoolOp) else [node.test]
        opened = gated | {_guard(test, "finished", names) for test in tests}
        return [
            *_unguarded(node.test, names, gated),
            *(use for child in node.body for use in _unguarded(child, names, opened)),
            *(use for child in node.orelse for use in _unguarded(child, names, gated)),
        ]
    if isinstance(node, ast.Name) and node.id in names and node.id not in gated:
        return [f"{node.id} ({names[node.id]}) on line {node.lineno}"]
    return [use for child in ast.iter_child_nodes(node) for use in _unguarded(child, names, gated)]


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_other_cells_run_while_exercises_are_unfinished(path):
    """Read, not run: a demo cell that calls an exercise function directly ends in a bare
    NotImplementedError while the exercise is a stub; it must let the package's reference stand
    in (`checks.learner_or_reference`) or say what it needs (`if checks.finished(...)`)."""
    nb = nbformat.read(path, as_version=4)
    names = _exercise_names(nb)
    problems = []
    for index, cell in enumerate(nb.cells):
        exercise_or_check = _nbgrader(cell).get("solution") or _nbgrader(cell).get("grade")
        if cell.cell_type == "code" and not exercise_or_check:
            uses = _unguarded(ast.parse(cell.source), names)
            problems += [f"cell {index}: {use}" for use in uses]
    assert not problems, (
        f"{path.name}: demo cells use exercise functions unguarded (wrap them in "
        f"checks.learner_or_reference(name, reference, 'Exercise N.k') or test "
        f"checks.finished(name, 'Exercise N.k') first): {problems}"
    )


@pytest.mark.parametrize("path", sorted(SOLUTIONS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_solutions_store_no_widget_views(path):
    """Widget views render as `interactive(children=(…` text or a tqdm bar at 0 % without a
    live kernel: solutions keep what `student.static_outputs` keeps."""
    nb = nbformat.read(path, as_version=4)
    views = [
        index
        for index, cell in enumerate(nb.cells)
        if cell.cell_type == "code"
        for out in cell.outputs
        if student.WIDGET_VIEW in out.get("data", {})
    ]
    assert not views and "widgets" not in nb.metadata, (
        f"{path.name} stores widget views (cells {views}) or widget state: run "
        f"`python -m mmcourse.student --execute solutions/{path.name}`"
    )


# --- the generator itself, on a small notebook -------------------------------------------------

SETUP = """\
import math

def check_double(candidate):
    try:
        got = candidate(3)
    except NotImplementedError:
        raise AssertionError("Exercise 0.1 (double): not implemented yet") from None
    assert got == 6, f"Exercise 0.1 (double): expected 6, got {got!r}"
    print("✓ Exercise 0.1 passed (1 checks)")
"""
SOLUTION = '''\
def double(x):
    """Twice x."""
    ### BEGIN SOLUTION
    return 2 * x
    ### END SOLUTION
'''
CHECK = """\
check_double(double)
### BEGIN HIDDEN TESTS
assert double(-1) == -2
### END HIDDEN TESTS
"""


def _meta(**fields) -> dict:
    nbgrader = {"grade": False, "solution": False, "locked": False, "schema_version": 3}
    return {"nbgrader": nbgrader | fields}


def _solution_notebook() -> NotebookNode:
    kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb = new_notebook(metadata={"kernelspec": kernelspec})
    nb.cells = [
        new_markdown_cell("# A tiny chapter"),
        new_code_cell(SETUP, execution_count=1),
        new_code_cell(SOLUTION, metadata=_meta(solution=True, grade_id="ex-double")),
        new_code_cell(CHECK, metadata=_meta(grade=True, locked=True, points=1, grade_id="chk")),
        new_code_cell(
            "print(math.pi)",
            execution_count=4,
            outputs=[new_output("stream", name="stdout", text="3.14159\n")],
            metadata={"execution": {"shell.execute_reply": "2026-11-29T08:37:50Z"}},
        ),
    ]
    return nb


@pytest.fixture
def course(tmp_path) -> tuple[Path, Path]:
    src, dst = tmp_path / "solutions", tmp_path / "notebooks"
    src.mkdir()
    nbformat.write(_solution_notebook(), src / "00_tiny.ipynb")
    return src, dst


def test_generator_writes_a_stub_and_clears_everything(course):
    src, dst = course
    assert student.regenerate(src, dst) == [dst / "00_tiny.ipynb"]
    nb = nbformat.read(dst / "00_tiny.ipynb", as_version=4)
    assert _leaks(nb) == []
    exercise = nb.cells[2]
    assert "# YOUR CODE HERE\n    raise NotImplementedError()" in exercise.source
    assert '"""Twice x."""' in exercise.source
    assert nb.cells[3].source.strip() == "check_double(double)"
    assert nb.cells[3].metadata["editable"] is False
    assert nb.cells[3].metadata["deletable"] is False
    assert nb.cells[2].metadata["deletable"] is False
    assert all("checksum" in cell.metadata["nbgrader"] for cell in nb.cells[2:4])
    assert nb.cells[0].source == "# A tiny chapter"
    source = nbformat.read(src / "00_tiny.ipynb", as_version=4)
    assert [cell.id for cell in nb.cells] == [cell.id for cell in source.cells]


def test_generator_is_deterministic_and_idempotent(course):
    src, dst = course
    student.regenerate(src, dst)
    first = (dst / "00_tiny.ipynb").read_bytes()
    (dst / "00_tiny.ipynb").unlink()
    student.regenerate(src, dst)
    assert (dst / "00_tiny.ipynb").read_bytes() == first
    assert student.regenerate(src, dst) == []
    assert student.stale(src, dst) == []


def test_missing_cell_ids_get_stable_ones(tmp_path):
    raw = json.loads(nbformat.writes(_solution_notebook()))
    for cell in raw["cells"]:
        del cell["id"]
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.ipynb").write_text(json.dumps(raw), encoding="utf-8")
    one, two = tmp_path / "one", tmp_path / "two"
    student.regenerate(tmp_path / "src", one)
    student.regenerate(tmp_path / "src", two)
    assert (one / "a.ipynb").read_bytes() == (two / "a.ipynb").read_bytes()


def test_check_reports_edits_missing_and_orphans(course, capsys):
    src, dst = course
    assert student.main(["--src", str(src), "--dst", str(dst), "--check"]) == 1
    assert student.main(["--src", str(src), "--dst", str(dst)]) == 0
    assert student.main(["--src", str(src), "--dst", str(dst), "--check"]) == 0
    edited = dst / "00_tiny.ipynb"
    edited.write_text(edited.read_text(encoding="utf-8").replace("tiny", "edited"), "utf-8")
    orphan = dst / "99_orphan.ipynb"
    orphan.write_text(edited.read_text(encoding="utf-8"), encoding="utf-8")
    assert student.stale(src, dst) == [edited, orphan]
    capsys.readouterr()
    assert student.main(["--src", str(src), "--dst", str(dst), "--check"]) == 1
    out = capsys.readouterr().out
    assert "00_tiny.ipynb" in out and "99_orphan.ipynb" in out
    assert "edited" in edited.read_text(encoding="utf-8"), "--check must not write"
    assert student.regenerate(src, dst) == [edited, orphan]
    assert not orphan.exists()
    assert student.stale(src, dst) == []


def test_solution_notebook_is_left_unchanged(course):
    src, _ = course
    nb = nbformat.read(src / "00_tiny.ipynb", as_version=4)
    before = nbformat.writes(nb)
    student.student_version(nb)
    assert nbformat.writes(nb) == before


def test_exercise_runner_on_the_small_notebook(course):
    src, dst = course
    student.regenerate(src, dst)
    (stub,) = exercises(nbformat.read(dst / "00_tiny.ipynb", as_version=4))
    with pytest.raises(AssertionError, match="not implemented"):
        run_cells(*stub, label="stub")
    (reference,) = exercises(nbformat.read(src / "00_tiny.ipynb", as_version=4))
    run_cells(*reference, label="reference")


def _widget_notebook() -> NotebookNode:
    """A cell that ran `interact` (a slider, and an Output widget holding its figure) and a
    cell with a tqdm bar beside its printed result, as a kernel leaves them."""

    def view(model_id: str, text: str) -> NotebookNode:
        data = {student.WIDGET_VIEW: {"model_id": model_id, "version_major": 2}, "text/plain": text}
        return new_output("display_data", data=data)

    figure = new_output("display_data", data={"image/png": "iVBOR", "text/plain": "<Figure>"})
    state = {
        "box": {"model_name": "VBoxModel", "state": {"children": ["IPY_MODEL_s", "IPY_MODEL_o"]}},
        "s": {"model_name": "IntSliderModel", "state": {"value": 250}},
        "o": {"model_name": "OutputModel", "state": {"outputs": [figure]}},
        "bar": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_p"]}},
        "p": {"model_name": "FloatProgressModel", "state": {"value": 300}},
    }
    printed = new_output("stream", name="stdout", text="300 steps in 14 s\n")
    nb = new_notebook(metadata={"widgets": {student.WIDGET_STATE: {"state": state}}})
    nb.cells = [
        new_code_cell("interact(show_t, t=...)", outputs=[view("box", "interactive(children=…")]),
        new_code_cell("train()", outputs=[view("bar", "train:   0%|"), printed, figure]),
    ]
    return nb


def test_static_outputs_render_interact_and_drop_other_widgets():
    nb = _widget_notebook()
    before = nbformat.writes(nb)
    shown = student.static_outputs(nb)
    interact, train = shown.cells
    assert [out.data["text/plain"] for out in interact.outputs] == ["<Figure>"]
    assert [out.output_type for out in train.outputs] == ["stream", "display_data"]
    assert "widgets" not in shown.metadata
    assert nbformat.writes(nb) == before, "the input notebook is left unchanged"


def test_execute_stores_fresh_outputs(course):
    src, _ = course
    student.execute(src / "00_tiny.ipynb")
    nb = nbformat.read(src / "00_tiny.ipynb", as_version=4)
    assert nb.cells[3].outputs[0].text == "✓ Exercise 0.1 passed (1 checks)\n"
    assert nb.cells[4].outputs[0].text == "3.141592653589793\n"  # was "3.14159"


def test_exercise_without_a_check_cell_is_reported(course):
    src, _ = course
    nb = nbformat.read(src / "00_tiny.ipynb", as_version=4)
    del nb.cells[3]
    with pytest.raises(AssertionError, match="ex-double: the cell after an exercise"):
        exercises(nb)
