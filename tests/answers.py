"""Learner notebooks with an exercise answered: a copy of a course notebook with one answer cell
(found by its nbgrader grade_id) replaced, for the tests that grade or open it."""

from __future__ import annotations

from pathlib import Path

import nbformat

# Exercise 0.1 answered wrongly: a two-word position ("top left") comes back as one word.
WRONG_PARSE_CAPTION = (
    "def parse_caption(caption):\n"
    "    w = caption.split(' ')\n"
    "    return {'color': w[1], 'shape': w[2], 'position': w[5]}\n"
)


def with_answer(notebook: Path, grade_id: str, source: str, out: Path) -> Path:
    """Write `notebook` to `out` with the answer cell `grade_id` holding `source`; return `out`."""
    nb = nbformat.read(notebook, as_version=4)
    cells = [
        c for c in nb.cells if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") == grade_id
    ]
    assert len(cells) == 1, f"{notebook.name} has {len(cells)} cells with grade_id {grade_id}"
    cells[0].source = source
    nbformat.write(nb, out)
    return out
