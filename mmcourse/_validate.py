"""Argument checks that turn bad input into one clear sentence.

Every public function of mmcourse validates its tensors here first, so a wrong shape, dtype or
device is reported as `ValueError`/`TypeError` naming the argument, what was expected and what
came, instead of a traceback from deep inside torch.
"""

from __future__ import annotations

import math
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


def z_and_codebook(
    z: object, codebook: object, *, same_dtype: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The vector-quantization pair: z (N, D) and codebook (K, D), floating, K ≥ 1 codes of the
    same D ≥ 1, on one device and (unless same_dtype=False) of one dtype."""
    codebook = tensor("codebook", codebook, shape=("K", "D"), floating=True)
    z = tensor("z", z, shape=("N", "D"), floating=True)
    if codebook.shape[0] == 0 or codebook.shape[1] == 0:
        raise ValueError(
            f"codebook must hold at least one code of D ≥ 1, got shape {tuple(codebook.shape)}"
        )
    if z.shape[1] != codebook.shape[1]:
        raise ValueError(
            f"z must have D = {codebook.shape[1]} columns like codebook "
            f"{tuple(codebook.shape)}, got shape {tuple(z.shape)}"
        )
    if same_dtype and z.dtype != codebook.dtype:
        raise TypeError(f"z must have codebook's dtype {codebook.dtype}, got {z.dtype}")
    if z.device != codebook.device:
        raise ValueError(f"z must be on codebook's device {codebook.device}, got {z.device}")
    return z, codebook


def positive_int(name: str, value: object) -> int:
    """Check that `value` is an int ≥ 1 (bool excluded) and return it."""
    return integer(name, value, low=1)


def number(
    name: str,
    value: object,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    open_lo: bool = False,
    open_hi: bool = False,
) -> float:
    """Check that `value` is a real number (int or float, bool excluded) in [low, high], either
    end open on request, and return it as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    open_lo, open_hi = open_lo or math.isinf(low), open_hi or math.isinf(high)
    above = value > low if open_lo else value >= low
    below = value < high if open_hi else value <= high
    if not (above and below):
        interval = f"{'(' if open_lo else '['}{low:g}, {high:g}{')' if open_hi else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return float(value)


def integer(name: str, value: object, low: int | None = 0) -> int:
    """Check that `value` is an int ≥ low (bool excluded; low=None: any int) and return it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be ≥ {low}, got {value}")
    return value
