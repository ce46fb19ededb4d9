"""Anti-aliased drawing of one filled shape per image, vectorised over a batch.

Each pixel is split into SUPERSAMPLE × SUPERSAMPLE sub-pixels; the fraction of sub-pixels inside
the shape is the pixel's coverage α, and the colour is  bg · (1 − α) + colour · α.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SIZE = 32  # images are SIZE × SIZE
SUPERSAMPLE = 4
BACKGROUND = (0.0, 0.0, 0.0)
_CHUNK = 512  # images drawn at once: bounds memory to CHUNK × (4·SIZE)² floats per temporary


def _inside(kind: int, dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Which sub-pixels lie inside a shape of one kind (index into SHAPES)?
    dx, dy (B, S, S) offsets from the centre; r (B, 1, 1) half-extent in pixels."""
    if kind == 0:  # circle
        return dx**2 + dy**2 <= r**2
    if kind == 1:  # square, 0.85 r half-side so its area is close to the circle's
        return torch.maximum(dx.abs(), dy.abs()) <= 0.85 * r
    # Upward triangle: apex at (0, -1.1 r), base from (-1.15 r, 0.9 r) to (1.15 r, 0.9 r);
    # the half-width grows linearly from 0 at the apex to 1.15 r at the base.
    half_width = 1.15 * (dy + 1.1 * r) / 2.0
    return (dy <= 0.9 * r) & (dx.abs() <= half_width)


def draw(
    shape: torch.Tensor, color: torch.Tensor, center: torch.Tensor, radius: torch.Tensor
) -> torch.Tensor:
    """Draw one shape per image.

    shape (B,) long index into SHAPES; color (B, 3) in [0, 1]; center (B, 2) as (x, y) in pixels,
    y pointing down; radius (B,) in pixels.  Returns (B, 3, SIZE, SIZE) float32, 8-bit levels.
    """
    s = SIZE * SUPERSAMPLE
    coords = (torch.arange(s, dtype=torch.float32) + 0.5) / SUPERSAMPLE  # sub-pixel centres
    alpha = torch.zeros(len(shape), 1, SIZE, SIZE)
    for kind in shape.unique().tolist():  # one pass per kind: each image tests only its own shape
        idx = (shape == kind).nonzero().squeeze(1)
        for chunk in idx.split(_CHUNK):
            dx = coords[None, None, :] - center[chunk, 0, None, None]  # (B, 1, S)
            dy = coords[None, :, None] - center[chunk, 1, None, None]  # (B, S, 1)
            inside = _inside(kind, dx, dy, radius[chunk, None, None])  # (B, S, S)
            alpha[chunk] = F.avg_pool2d(inside[:, None].float(), SUPERSAMPLE)  # coverage
    bg = torch.tensor(BACKGROUND).view(1, 3, 1, 1)
    x = bg * (1 - alpha) + color[:, :, None, None] * alpha  # (B, 3, SIZE, SIZE)
    return torch.round(x * 255) / 255  # like real 8-bit images
