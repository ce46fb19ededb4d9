"""Checkers of chapter 00 (welcome): the caption parser and the image grid."""

from __future__ import annotations

import torch

from mmcourse import viz
from mmcourse.checks._contract import call
from mmcourse.checks._core import Check, exercise, seeded
from mmcourse.data import shapes

_GRAMMAR = "captions read 'a <color> <shape> in the <position>'"


@exercise("0.1", "read a caption", references=(shapes.parse_caption,))
def check_parse_caption(check: Check) -> None:
    """Exercise 0.1: parse_caption(caption) -> {"color", "shape", "position"}."""
    for caption in ("a red circle in the top left", "a cyan triangle in the center"):
        check.equal(
            check.call(caption),
            shapes.parse_caption(caption),
            f"parses {caption!r}",
            hint="return a dict with exactly the keys 'color', 'shape' and 'position'; a "
            "common cause is a position cut to one word: positions can be two words ('top "
            "left') or one ('center')",
        )
    wrong = [c for c in shapes.all_captions() if check.call(c) != shapes.parse_caption(c)]
    check.that(
        not wrong,
        "parses every one of the 90 captions of the grammar",
        expected="all 90 parsed like the reference",
        got=f"{len(wrong)} differ, e.g. {wrong[0]!r} → {check.call(wrong[0])!r}" if wrong else "",
        hint="compare your output with the reference for that caption",
    )
    for bad, why in [
        ("a pink circle in the center", "an unknown colour"),
        ("a red hexagon in the center", "an unknown shape"),
        ("a red circle in the middle left", "an unknown position"),
        ("a red circle", "a caption cut short"),
        ("the red circle in the top left", "a wrong first word"),
        ("a red circle on the top left", "'on' instead of 'in'"),
        ("a red circle in the top left corner", "a word after the position"),
        ("a red circle in the", "no position at all"),
    ]:
        check.raises(
            ValueError,
            f"raises ValueError for {why}: {bad!r}",
            bad,
            hint=f"{_GRAMMAR}; check every word against data.COLORS, data.SHAPES and "
            "data.POSITIONS and raise ValueError (not KeyError or IndexError) otherwise",
        )


def _grid_mistakes(x: torch.Tensor, ncols: int, pad: int, pad_value: float) -> dict:
    """What the classic mistakes of Exercise 0.2 give: the grid filled column by column, and
    the frame in 0 whatever pad_value says."""
    n = len(x)
    rows = -(-n // ncols)
    slot = torch.arange(rows * ncols, device=x.device)  # slots row by row
    image = (slot % ncols) * rows + slot // ncols  # the image a column-by-column fill puts there
    empty = x.new_full((1, *x.shape[1:]), pad_value)  # image n: an empty slot
    by_columns = torch.cat([x, empty])[image.clamp(max=n)]
    mistakes = {
        "the images placed column by column: image i goes to row i // ncols and column "
        "i % ncols (row by row)": viz.image_grid(by_columns, ncols, pad, pad_value)
    }
    if pad and pad_value != 0:
        mistakes[f"the frame in 0 where pad_value = {pad_value:g} belongs"] = viz.image_grid(
            x, ncols, pad, 0.0
        )
    return mistakes


@exercise("0.2", "an image grid", references=(viz.image_grid,))
def check_image_grid(check: Check) -> None:
    """Exercise 0.2: image_grid(x, ncols, pad, pad_value) -> (C, H', W')."""
    g = seeded(0)
    dev = check.device
    # A targeted case first: image i is filled with the value i, so a misplaced image is obvious.
    marked = torch.arange(1.0, 6.0).view(5, 1, 1, 1).expand(5, 1, 2, 3).to(dev)  # (5, 1, 2, 3)
    expected = viz.image_grid(marked, ncols=3, pad=1, pad_value=0.0)
    got = call(check, marked.clone(), ncols=3, pad=1, pad_value=0.0)
    check.close(
        got,
        expected,
        "5 images of 1×2×3, ncols=3, pad=1: image i in row i // ncols, column i % ncols",
        hint="image i goes to row i // ncols and column i % ncols "
        "(row by row), framed by `pad` pixels on every side; empty slots are pad_value",
        alternatives=_grid_mistakes(marked, 3, 1, 0.0),
    )
    cases = [  # (N, C, H, W, ncols, pad, pad_value)
        (8, 3, 4, 4, 4, 2, 1.0),
        (7, 3, 5, 3, 3, 2, 0.5),  # H ≠ W, N not a multiple of ncols
        (2, 1, 3, 3, 5, 1, 0.0),  # fewer images than columns
        (6, 3, 4, 4, 2, 0, 1.0),  # no frame at all
    ]
    for n, c, h, w, ncols, pad, pad_value in cases:
        x = torch.rand(n, c, h, w, generator=g).to(dev)
        expected = viz.image_grid(x, ncols=ncols, pad=pad, pad_value=pad_value)
        got = call(check, x, ncols=ncols, pad=pad, pad_value=pad_value)
        check.close(
            got,
            expected,
            f"matches the reference for x of shape {(n, c, h, w)}, ncols={ncols}, "
            f"pad={pad}, pad_value={pad_value}",
            hint="output shape (C, rows·(H + pad) + pad, ncols·(W + pad) + pad) with "
            "rows = ceil(N / ncols); the frame is on all four sides",
            alternatives=_grid_mistakes(x, ncols, pad, pad_value),
        )
    x = torch.rand(10, 3, 2, 2, generator=g).to(dev)
    expected = viz.image_grid(x)
    check.close(
        call(check, x),
        expected,
        "uses the documented defaults ncols=8, pad=2, pad_value=1.0 for 10 images",
        hint="keep the signature image_grid(x, ncols=8, pad=2, pad_value=1.0)",
        alternatives=_grid_mistakes(x, 8, 2, 1.0),
    )
    x = torch.rand(4, 3, 3, 3, generator=g, dtype=torch.float64).to(dev)
    expected = viz.image_grid(x, ncols=2, pad=1)
    dtype_hint = "build the grid with x.new_full(...) so it has x's dtype and device"
    check.close(
        call(check, x, ncols=2, pad=1, pad_value=1.0),
        expected,
        "keeps dtype float64 and the device",
        hint=dtype_hint,
        dtype_hint=dtype_hint,
    )
    check.raises(
        (ValueError, TypeError),
        "raises a clear error for a 3-D input (C, H, W)",
        torch.rand(3, 4, 4, generator=g).to(dev),
        hint="check x.dim() == 4 first and raise ValueError naming the expected shape",
    )
