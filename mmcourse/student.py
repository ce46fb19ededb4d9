"""Student notebooks from the solutions, with nbgrader's own preprocessors.

`solutions/` is the source of truth; `notebooks/` is generated from it and never edited by hand:

    python -m mmcourse.student            # rewrite notebooks/ from solutions/
    python -m mmcourse.student --check    # exit 1, listing what is out of date, writing nothing
    python -m mmcourse.student --execute solutions/NN_x.ipynb   # fresh outputs, then rewrite

The chain is `nbgrader generate_assignment`'s without its gradebook and header steps: solution
regions become `raise NotImplementedError()` stubs, hidden tests and mark schemes go, outputs are
cleared, graded cells are locked and checksummed so that `nbgrader autograde` accepts the result.
The same input always gives a byte-identical file.

`--execute` runs solution notebooks top to bottom in a fresh kernel (on the CPU unless
MMCOURSE_DEVICE says otherwise) and stores their outputs as a reader without a kernel can see
them: an `interact` keeps the figure it drew, while views that only a live kernel can draw
(tqdm's bars, which would show 0 %, and other widgets) and the saved widget state are dropped.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import nbformat
from nbformat.notebooknode import NotebookNode
from nbgrader.preprocessors import (
    CheckCellMetadata,
    ClearHiddenTests,
    ClearMarkScheme,
    ClearOutput,
    ClearSolutions,
    ComputeChecksums,
    LockCells,
)

SOLUTIONS = Path("solutions")
NOTEBOOKS = Path("notebooks")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"

# generate_assignment's order; ComputeChecksums runs again after ClearHiddenTests, as nbgrader does.
_CHAIN = (
    LockCells,
    ClearSolutions,
    ClearOutput,
    CheckCellMetadata,
    ComputeChecksums,
    ClearHiddenTests,
    ClearMarkScheme,
    ComputeChecksums,
    CheckCellMetadata,
)


def student_version(nb: NotebookNode) -> NotebookNode:
    """The student version of a solution notebook (the input is left unchanged)."""
    nb = copy.deepcopy(nb)
    resources: dict = {}
    for preprocessor in _CHAIN:
        nb, resources = preprocessor().preprocess(nb, resources)
    nb.metadata.pop("widgets", None)  # saved widget state is output too
    for cell in nb.cells:
        cell.metadata.pop("execution", None)  # when the instructor's run ran each cell
    return nb


def static_outputs(nb: NotebookNode) -> NotebookNode:
    """The notebook with its stored outputs as a reader without a kernel sees them (the input is
    left unchanged): each widget view becomes the outputs its Output widgets captured (the figure
    of an `interact`), or nothing (a tqdm bar, a slider); the saved widget state goes."""
    nb = copy.deepcopy(nb)
    state = nb.metadata.pop("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [shown for out in cell.outputs for shown in _shown(out, state)]
    return nb


def _shown(output: NotebookNode, state: dict) -> list[NotebookNode]:
    view = output.get("data", {}).get(WIDGET_VIEW)
    return [output] if view is None else _captured(view["model_id"], state)


def _captured(model_id: str, state: dict) -> list[NotebookNode]:
    """The outputs held by the Output widgets in a widget and its children, in order."""
    model = state.get(model_id, {})
    fields = model.get("state", {})
    if model.get("model_name") == "OutputModel":
        return [nbformat.from_dict(out) for out in fields.get("outputs", [])]
    children = [child.removeprefix("IPY_MODEL_") for child in fields.get("children", [])]
    return [out for child in children for out in _captured(child, state)]


def execute(path: Path, timeout: int = 600) -> None:
    """Run a solution notebook top to bottom in a fresh kernel started in its folder (the CPU
    unless MMCOURSE_DEVICE is set) and write it back with its new outputs, as `static_outputs`
    keeps them."""
    from nbclient import NotebookClient

    path = Path(path)
    nb = read(path)
    env = os.environ | {"MMCOURSE_DEVICE": os.environ.get("MMCOURSE_DEVICE", "cpu")}
    client = NotebookClient(nb, timeout=timeout, resources={"metadata": {"path": str(path.parent)}})
    client.execute(env=env)
    path.write_text(render(static_outputs(nb)), encoding="utf-8", newline="\n")


def read(path: Path) -> NotebookNode:
    """Read a notebook without nbformat's validation, which fills missing cell ids at random;
    missing ids get stable ones instead, so that regeneration is deterministic."""
    nb = nbformat.reader.reads(Path(path).read_text(encoding="utf-8"))
    if (nb.nbformat, nb.get("nbformat_minor", 0)) >= (4, 5):
        for index, cell in enumerate(nb.cells):
            cell.setdefault("id", f"cell-{index}")
    return nb


def render(nb: NotebookNode) -> str:
    """The exact text nbformat.write would put in the file."""
    text = nbformat.writes(nb)
    return text if text.endswith("\n") else text + "\n"


def _expected(src_dir: Path, dst_dir: Path) -> dict[Path, str]:
    return {
        dst_dir / src.name: render(student_version(read(src)))
        for src in sorted(Path(src_dir).glob("*.ipynb"))
    }


def stale(src_dir: Path = SOLUTIONS, dst_dir: Path = NOTEBOOKS) -> list[Path]:
    """Student notebooks that are missing, differ from a fresh regeneration, or have no solution."""
    expected = _expected(src_dir, dst_dir)
    out = [
        path
        for path, text in expected.items()
        if not path.exists() or path.read_text(encoding="utf-8") != text
    ]
    out += [path for path in sorted(Path(dst_dir).glob("*.ipynb")) if path not in expected]
    return sorted(out)


def regenerate(src_dir: Path = SOLUTIONS, dst_dir: Path = NOTEBOOKS) -> list[Path]:
    """Write the student version of every `src_dir/*.ipynb` into `dst_dir` and delete student
    notebooks whose solution is gone. Returns the paths written or deleted; files already up to
    date are not touched."""
    dst_dir = Path(dst_dir)
    expected = _expected(src_dir, dst_dir)
    changed = []
    for path in sorted(dst_dir.glob("*.ipynb")):
        if path not in expected:
            path.unlink()
            changed.append(path)
    dst_dir.mkdir(parents=True, exist_ok=True)
    for path, text in expected.items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8", newline="\n")
            changed.append(path)
    return sorted(changed)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mmcourse.student", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--check", action="store_true", help="list differences, write nothing")
    parser.add_argument(
        "--execute",
        nargs="+",
        type=Path,
        default=[],
        metavar="NOTEBOOK",
        help="run these solution notebooks and store their outputs first",
    )
    parser.add_argument("--src", type=Path, default=SOLUTIONS, help="default: %(default)s")
    parser.add_argument("--dst", type=Path, default=NOTEBOOKS, help="default: %(default)s")
    args = parser.parse_args(argv)
    if not args.src.is_dir():
        parser.error(f"no such directory: {args.src}")
    for path in args.execute:
        print(f"executing {path}")
        execute(path)
    if args.check:
        out_of_date = stale(args.src, args.dst)
        for path in out_of_date:
            print(f"out of date: {path}")
        if out_of_date:
            print("run `make student` to regenerate them")
            return 1
        print(f"{args.dst}/ is up to date with {args.src}/")
        return 0
    changed = regenerate(args.src, args.dst)
    for path in changed:
        print(f"{'wrote' if path.exists() else 'deleted'} {path}")
    if not changed:
        print(f"{args.dst}/ was already up to date with {args.src}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
