"""Argument checks that turn bad input into one clear sentence.

Every public function of mmcourse validates its tensors here first, so a wrong shape, dtype or
device is reported as `ValueError`/`TypeError` naming the argument, what was expected and what
came, instead of a traceback from deep inside torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def tensor(
    name: str,
    x: object,
    *,
    shape: Sequence[int | str | None] | None = None,
    floating: bool = False,
    dtype: torch.dtype | None = None,
    value_range: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Check that `x` is a tensor of the given layout and return it.

    `shape` lists the expected sizes; an int must match exactly, a str names a free dimension (it
    appears in the message, e.g. "N"), None accepts any size. `value_range` is inclusive and only
    checked for floating tensors, with a little slack for rounding.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if shape is not None:
        wanted = "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"
        if x.dim() != len(shape):
            raise ValueError(
                f"{name} must have {len(shape)} dimensions {wanted}, got shape {tuple(x.shape)}"
            )
        for i, (got, want) in enumerate(zip(x.shape, shape)):
            if isinstance(want, int) and got != want:
                raise ValueError(
                    f"{name} must have shape {wanted}, got {tuple(x.shape)} (dimension {i} is "
                    f"{got}, expected {want})"
                )
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {x.dtype}")
    if value_range is not None and x.is_floating_point() and x.numel() > 0:
        lo, hi = value_range
        slack = 1e-3 * (hi - lo)
        x_min, x_max = x.min().item(), x.max().item()
        if x_min < lo - slack or x_max > hi + slack:
            raise ValueError(
                f"{name} must hold values in [{lo:g}, {hi:g}], got values in "
                f"[{x_min:.3g}, {x_max:.3g}]"
            )
    return x


def positive_int(name: str, value: object) -> int:
    """Check that `value` is an int ≥ 1 (bool excluded) and return it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be ≥ 1, got {value}")
    return value
