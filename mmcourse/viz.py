"""Pictures: image grids and figures drawn with matplotlib.

Images are tensors (N, C, H, W) in [0, 1]; there is no torchvision in the course.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch

from mmcourse import _validate


def image_grid(
    x: torch.Tensor, ncols: int = 8, pad: int = 2, pad_value: float = 1.0
) -> torch.Tensor:
    """Tile images into one image, row by row.

    x (N, C, H, W) → (C, rows·(H + pad) + pad, ncols·(W + pad) + pad) with rows = ⌈N / ncols⌉.
    Image i lands in row i // ncols, column i % ncols; every image is framed by `pad` pixels of
    `pad_value`, and slots after the last image are filled with `pad_value` too.
    """
    x = _validate.tensor("x", x, shape=("N", "C", "H", "W"))
    _validate.positive_int("ncols", ncols)
    _validate.integer("pad", pad, low=0)
    n, c, h, w = x.shape
    rows = -(-n // ncols)  # ceil division
    # Pad the batch to a full rectangle of slots, and every image with its frame.
    slots = x.new_full((rows * ncols, c, h + pad, w + pad), pad_value)
    slots[:n, :, pad:, pad:] = x  # each slot: frame on top and left
    grid = slots.view(rows, ncols, c, h + pad, w + pad)  # (rows, cols, C, h', w')
    grid = grid.permute(2, 0, 3, 1, 4)  # (C, rows, h', cols, w'): channels first, rows outer
    grid = grid.reshape(c, rows * (h + pad), ncols * (w + pad))
    # Close the frame on the bottom and right edges.
    out = x.new_full((c, rows * (h + pad) + pad, ncols * (w + pad) + pad), pad_value)
    out[:, : rows * (h + pad), : ncols * (w + pad)] = grid
    return out


def show_images(
    x: torch.Tensor,
    ncols: int = 8,
    titles: Sequence[str] | None = None,
    title: str | None = None,
    scale: float = 1.2,
) -> plt.Figure:
    """Draw images (N, C, H, W) in [0, 1]: as one grid, or one small axis each when `titles`
    are given (one per image)."""
    x = _validate.tensor("x", x, shape=("N", "C", "H", "W"), floating=True)
    x = x.detach().float().cpu().clamp(0, 1)
    cmap = "gray" if x.shape[1] == 1 else None
    if titles is None:
        ncols = min(ncols, len(x))
        grid = image_grid(x, ncols=ncols).permute(1, 2, 0)  # (H, W, C) for matplotlib
        fig, ax = plt.subplots(figsize=(scale * ncols, scale * -(-len(x) // ncols)))
        ax.imshow(grid.squeeze(-1), cmap=cmap, vmin=0, vmax=1)
        ax.axis("off")
    else:
        if len(titles) != len(x):
            raise ValueError(f"titles must have one entry per image ({len(x)}), got {len(titles)}")
        rows = -(-len(x) // ncols)
        fig, axes = plt.subplots(rows, ncols, figsize=(scale * 1.6 * ncols, scale * 1.6 * rows))
        for i, ax in enumerate(axes.flat if hasattr(axes, "flat") else [axes]):
            ax.axis("off")
            if i < len(x):
                ax.imshow(x[i].permute(1, 2, 0).squeeze(-1), cmap=cmap, vmin=0, vmax=1)
                ax.set_title(titles[i], fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
