"""Images as sequences of patches: patchify / unpatchify, patch embedding, positional embeddings.

A ViT cuts an image (B, C, H, W) into non-overlapping P×P patches, row by row, and flattens each
patch with the channels last, `(p1 p2 c)`: pixel (i, j) of a patch contributes its C values at
offset (i·P + j)·C. That order is the convention of ViT/MAE code and of this course.

The patch embedding is a Linear layer on the flattened patches. It equals a Conv2d with
kernel = stride = P once the Linear weight (D, P·P·C) is reshaped to (D, P, P, C) and permuted to
Conv2d's (D, C, P, P); `linear_weight_to_conv` does that, `PatchEmbed.to_conv` builds the Conv2d.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange

from mmcourse import _validate


def _grid(name: str, height: int, width: int, patch_size: int) -> tuple[int, int]:
    """(H/P, W/P), or a ValueError when the image does not tile into P×P patches."""
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"{name} of size {height}×{width} does not divide into patches of "
            f"{patch_size}×{patch_size}; choose a patch_size that divides both"
        )
    return height // patch_size, width // patch_size


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """x (B, C, H, W) → patches (B, N, P·P·C) with N = (H/P)·(W/P), patches in row-major order
    and each patch flattened as (p1 p2 c): channels last."""
    x = _validate.tensor("x", x, shape=("B", "C", "H", "W"))
    _validate.positive_int("patch_size", patch_size)
    _grid("x", x.shape[2], x.shape[3], patch_size)
    return rearrange(x, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch_size, p2=patch_size)


def unpatchify(patches: torch.Tensor, patch_size: int, height: int, width: int) -> torch.Tensor:
    """The inverse of `patchify`: patches (B, N, P·P·C) → x (B, C, H, W)."""
    patches = _validate.tensor("patches", patches, shape=("B", "N", "P·P·C"))
    for name, value in (("patch_size", patch_size), ("height", height), ("width", width)):
        _validate.positive_int(name, value)
    h, w = _grid("the image", height, width, patch_size)
    if patches.shape[1] != h * w:
        raise ValueError(
            f"patches must hold (H/P)·(W/P) = {h}·{w} = {h * w} patches for a {height}×{width} "
            f"image, got {patches.shape[1]}"
        )
    if patches.shape[2] % (patch_size * patch_size):
        raise ValueError(
            f"patches must have P·P·C values per patch (a multiple of {patch_size**2}), "
            f"got {patches.shape[2]}"
        )
    return rearrange(
        patches, "b (h w) (p1 p2 c) -> b c (h p1) (w p2)", h=h, w=w, p1=patch_size, p2=patch_size
    )


def linear_weight_to_conv(weight: torch.Tensor, patch_size: int) -> torch.Tensor:
    """A patch embedding's Linear weight (D, P·P·C), inputs in (p1 p2 c) order → the Conv2d
    weight (D, C, P, P) that computes the same embedding with kernel = stride = P."""
    weight = _validate.tensor("weight", weight, shape=("D", "P·P·C"), floating=True)
    _validate.positive_int("patch_size", patch_size)
    if weight.shape[1] % (patch_size * patch_size):
        raise ValueError(
            f"weight must have P·P·C columns (a multiple of {patch_size**2}), got {weight.shape[1]}"
        )
    return rearrange(weight, "d (p1 p2 c) -> d c p1 p2", p1=patch_size, p2=patch_size)


class PatchEmbed(nn.Module):
    """Patch embedding: x (B, C, H, W) → tokens (B, N, D), one Linear on the flattened patches."""

    def __init__(self, patch_size: int, channels: int, dim: int):
        super().__init__()
        self.patch_size = _validate.positive_int("patch_size", patch_size)
        self.channels = _validate.positive_int("channels", channels)
        self.proj = nn.Linear(patch_size * patch_size * channels, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _validate.tensor("x", x, shape=("B", self.channels, "H", "W"), floating=True)
        return self.proj(patchify(x, self.patch_size))  # (B, N, D)

    def to_conv(self) -> nn.Conv2d:
        """The same embedding as a Conv2d(kernel=stride=P); its output (B, D, H/P, W/P)
        flattened to (B, N, D) equals `self(x)`."""
        p, dim = self.patch_size, self.proj.out_features
        conv = nn.Conv2d(self.channels, dim, kernel_size=p, stride=p)
        conv = conv.to(self.proj.weight)
        with torch.no_grad():
            conv.weight.copy_(linear_weight_to_conv(self.proj.weight, p))
            conv.bias.copy_(self.proj.bias)
        return conv


def sincos_2d(height: int, width: int, dim: int, base: float = 10_000.0) -> torch.Tensor:
    """Fixed 2-D sin-cos positional embedding of an H×W grid of patches → (H·W, dim), rows in
    patchify's (row-major) order.

    The first dim/2 channels encode the row y, the last dim/2 the column x, each as
    [sin(pos·ω_0..ω_{F−1}), cos(pos·ω_0..ω_{F−1})] with F = dim/4 and ω_k = base^(−k/F).
    """
    for name, value in (("height", height), ("width", width), ("dim", dim)):
        _validate.positive_int(name, value)
    if dim % 4:
        raise ValueError(
            f"dim must be a multiple of 4 (sin and cos for rows and columns), got {dim}"
        )
    if not isinstance(base, int | float) or isinstance(base, bool) or base <= 1:
        raise ValueError(f"base must be a number > 1, got {base!r}")
    f = dim // 4
    omega = base ** (-torch.arange(f, dtype=torch.float64) / f)  # (F,)  ω_k = base^(−k/F)
    y, x = torch.meshgrid(
        torch.arange(height, dtype=torch.float64),
        torch.arange(width, dtype=torch.float64),
        indexing="ij",
    )  # (H, W) each

    def encode(pos: torch.Tensor) -> torch.Tensor:  # (H·W,) → (H·W, 2F)
        angle = pos.flatten()[:, None] * omega  # (H·W, F)
        return torch.cat([angle.sin(), angle.cos()], dim=1)

    return torch.cat([encode(y), encode(x)], dim=1).float()  # (H·W, dim)


def attention_cost(image_size: int, patch_size: int) -> dict[str, int]:
    """Tokens and attention cost of one image: N = (S/P)² tokens, N² query-key pairs per head
    and layer (the part of a transformer that grows quadratically with resolution)."""
    _validate.positive_int("image_size", image_size)
    _validate.positive_int("patch_size", patch_size)
    side = image_size / patch_size
    if side != int(side):
        raise ValueError(f"image_size {image_size} is not divisible by patch_size {patch_size}")
    tokens = int(side) ** 2
    return {"patch_size": patch_size, "tokens": tokens, "pairs": tokens * tokens}


def cost_table(
    image_size: int, patch_sizes: list[int], channels: int = 3
) -> list[dict[str, int | float]]:
    """`attention_cost` for several patch sizes, with the values in one patch (P·P·C) and the
    attention cost relative to the first patch size."""
    rows = [attention_cost(image_size, p) for p in patch_sizes]
    for row in rows:
        row["values_per_patch"] = channels * row["patch_size"] ** 2
        row["relative_cost"] = row["pairs"] / rows[0]["pairs"]
    return rows


__all__ = [
    "PatchEmbed",
    "attention_cost",
    "cost_table",
    "linear_weight_to_conv",
    "patchify",
    "sincos_2d",
    "unpatchify",
]
