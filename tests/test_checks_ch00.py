"""Chapter 00 checkers: the reference passes; each known-wrong version fails with its message."""

from __future__ import annotations

import pytest
import torch
from checker_cases import case_id, stub

from mmcourse import data, viz
from mmcourse.checks import ExerciseFailed, ch00

# --- Exercise 0.1: parse_caption --------------------------------------------------------------


def _last_word_position(caption):
    words = caption.split()
    return {"color": words[1], "shape": words[2], "position": words[-1]}


def _tuple_return(caption):
    parsed = data.parse_caption(caption)
    return parsed["color"], parsed["shape"], parsed["position"]


def _colour_key(caption):
    parsed = data.parse_caption(caption)
    return {"colour": parsed["color"], "shape": parsed["shape"], "position": parsed["position"]}


def _accepts_unknown_colours(caption):
    words = caption.split(" ")
    if len(words) < 6 or words[3:5] != ["in", "the"]:
        raise ValueError(caption)
    return {"color": words[1], "shape": words[2], "position": " ".join(words[5:])}


def _key_error(caption):
    index = {"color": list(data.COLORS), "shape": list(data.SHAPES)}
    words = caption.split(" ")
    parsed = {"color": words[1], "shape": words[2], "position": " ".join(words[5:])}
    for attribute in index:
        _ = {w: i for i, w in enumerate(index[attribute])}[parsed[attribute]]  # KeyError
    return data.parse_caption(caption)


def _two_word_slice(caption):
    words = caption.split(" ")
    if len(words) < 6 or words[0] != "a" or words[3:5] != ["in", "the"]:
        raise ValueError(caption)
    two = " ".join(words[5:7])  # BUG: reads at most two position words, ignores the rest
    position = two if two in data.POSITIONS else words[5]
    parsed = {"color": words[1], "shape": words[2], "position": position}
    if parsed["color"] not in data.COLORS or parsed["shape"] not in data.SHAPES:
        raise ValueError(caption)
    if position not in data.POSITIONS:
        raise ValueError(caption)
    return parsed


def test_parse_caption_reference_passes(capsys):
    ch00.check_parse_caption(data.parse_caption)
    assert capsys.readouterr().out.startswith("✓ Exercise 0.1 passed (")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_last_word_position, r"parses 'a red circle in the top left'(.|\n)*'position': 'left'"),
        (_tuple_return, r"expected: \{'color'(.|\n)*got:      \('red', 'circle', 'top left'\)"),
        (_colour_key, r"got:      \{'colour': 'red'"),
        (_accepts_unknown_colours, r"raises ValueError for an unknown colour(.|\n)*no error"),
        (_key_error, r"unknown colour(.|\n)*got:      KeyError: 'pink'(.|\n)*not KeyError"),
        (_two_word_slice, r"a word after the position(.|\n)*no error"),
        (stub, r"Exercise 0\.1 \(read a caption\): not implemented yet"),
    ],
    ids=case_id,
)
def test_parse_caption_rejects(wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        ch00.check_parse_caption(wrong)


# --- Exercise 0.2: image_grid ------------------------------------------------------------------


def _column_major(x, ncols=8, pad=2, pad_value=1.0):
    n, c, h, w = x.shape
    rows = -(-n // ncols)
    grid = x.new_full((c, rows * (h + pad) + pad, ncols * (w + pad) + pad), pad_value)
    for i in range(n):
        col, row = divmod(i, rows)  # BUG: fills column by column
        top, left = pad + row * (h + pad), pad + col * (w + pad)
        grid[:, top : top + h, left : left + w] = x[i]
    return grid


def _reshape_only(x, ncols=8, pad=2, pad_value=1.0):
    n, c, h, w = x.shape
    rows = -(-n // ncols)
    slots = x.new_full((rows * ncols, c, h + pad, w + pad), pad_value)
    slots[:n, :, pad:, pad:] = x
    tiled = slots.reshape(c, rows * (h + pad), ncols * (w + pad))  # BUG: no permute
    grid = x.new_full((c, rows * (h + pad) + pad, ncols * (w + pad) + pad), pad_value)
    grid[:, : rows * (h + pad), : ncols * (w + pad)] = tiled
    return grid


def _no_closing_frame(x, ncols=8, pad=2, pad_value=1.0):
    return viz.image_grid(x, ncols, pad, pad_value)[:, : -pad or None, : -pad or None]


def _pads_with_zero(x, ncols=8, pad=2, pad_value=1.0):
    return viz.image_grid(x, ncols, pad, 0.0)


def _float32(x, ncols=8, pad=2, pad_value=1.0):
    return viz.image_grid(x.float(), ncols, pad, pad_value)


def _full_rows_only(x, ncols=8, pad=2, pad_value=1.0):
    n, c, h, w = x.shape
    rows = x.view(n // ncols, ncols, c, h, w)  # BUG: crashes unless ncols divides N
    return viz.image_grid(rows.flatten(0, 1), ncols, pad, pad_value)


def _modifies_input(x, ncols=8, pad=2, pad_value=1.0):
    grid = viz.image_grid(x, ncols, pad, pad_value)
    x.clamp_(0.25, 0.75)
    return grid


def _default_four_columns(x, ncols=4, pad=2, pad_value=1.0):
    return viz.image_grid(x, ncols, pad, pad_value)  # BUG: the documented default is 8


def _default_black_frame(x, ncols=8, pad=2, pad_value=0.0):
    return viz.image_grid(x, ncols, pad, pad_value)  # BUG: the documented default is 1.0


def _no_input_check(x, ncols=8, pad=2, pad_value=1.0):
    if x.dim() == 3:
        x = x[:, None]  # silently treats channels as images
    return viz.image_grid(x, ncols, pad, pad_value)


def test_image_grid_reference_passes(capsys):
    ch00.check_image_grid(viz.image_grid)
    assert capsys.readouterr().out.startswith("✓ Exercise 0.2 passed (")


def _loop_image_grid(x, ncols=8, pad=2, pad_value=1.0):
    """A learner's own image grid, one image at a time."""
    if x.dim() != 4:
        raise ValueError("x must be (N, C, H, W)")
    n, c, h, w = x.shape
    rows = -(-n // ncols)
    grid = x.new_full((c, rows * (h + pad) + pad, ncols * (w + pad) + pad), pad_value)
    for i in range(n):
        top, left = pad + (i // ncols) * (h + pad), pad + (i % ncols) * (w + pad)
        grid[:, top : top + h, left : left + w] = x[i]
    return grid


def test_image_grid_loop_solution_passes(capsys):
    ch00.check_image_grid(_loop_image_grid)
    assert "✓ Exercise 0.2 passed" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (
            _column_major,
            r"failed check 1, \"5 images(.|\n)*values differ(.|\n)*looks like: the images placed "
            r"column by column",
        ),
        (_reshape_only, r"failed check 1, (.|\n)*values differ"),
        (_no_closing_frame, r"expected: shape \(1, 7, 13\)\n  got:      shape \(1, 6, 12\)"),
        (
            _pads_with_zero,
            r"pad_value=1\.0\"(.|\n)*looks like: the frame in 0 where pad_value = 1 belongs",
        ),
        (_float32, r"keeps dtype float64(.|\n)*dtype torch\.float32(.|\n)*x\.new_full"),
        (_full_rows_only, r"it raised RuntimeError"),
        (_modifies_input, r"leaves its input x unchanged(.|\n)*x\.clone\(\)"),
        (_default_four_columns, r"documented defaults ncols=8(.|\n)*shape \(3, 10, 34\)"),
        (
            _default_black_frame,
            r"documented defaults(.|\n)*values differ(.|\n)*looks like: the frame in 0 where",
        ),
        (_no_input_check, r"3-D input(.|\n)*no error"),
        (stub, r"Exercise 0\.2 \(an image grid\): not implemented yet"),
    ],
    ids=case_id,
)
def test_image_grid_rejects(wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        ch00.check_image_grid(wrong)


def test_checks_run_on_the_chosen_device(device, capsys):
    ch00.check_image_grid(viz.image_grid, device=device)
    assert "✓" in capsys.readouterr().out
    seen = []
    ch00.check_image_grid(
        lambda x, **kw: seen.append(x.device) or viz.image_grid(x, **kw), device=device
    )
    assert set(seen) == {torch.device(device)}
