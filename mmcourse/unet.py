"""A small conditional U-Net that predicts the noise ε in x_t (chapter 04, diffusion).

    eps = UNet()(x_t, t, labels)      x_t (B, C, H, W), t (B,) long, labels (B, 3) long

- **Time**: t → sinusoidal features → MLP → an embedding added inside every residual block, so
  one network denoises at every noise level.
- **Caption**: the caption's three attributes (colour, shape, position) → three learned
  embeddings, summed into the same vector. A label of NULL (−1) selects each attribute's extra
  "no caption" embedding: training drops captions now and then, so the same network is both
  conditional and unconditional, which classifier-free guidance needs.
- **Where**: two coordinate channels (x, y ∈ [−1, 1]) join the input, so a convolution knows
  where in the image it is and can put a shape "in the top left".
- **Copy**: a linear skip from input to output, starting as the identity. At high noise the
  answer is ε̂ ≈ x_t almost exactly, and sampling divides its error by √ᾱ_t (≈ 0.006 at t = T − 1).

4×4 pixels folded into channels (32×32 → an 8×8 grid), then a down path 8 → 4 with skip
connections to the up path, GroupNorm + SiLU residual blocks, no attention: small enough to
train on a laptop CPU in minutes.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmcourse import _validate
from mmcourse.data import COLORS, POSITIONS, SHAPES
from mmcourse.tokenizer import group_norm  # a clear error when groups do not divide channels

NULL = -1  # the label value meaning "no caption" (for classifier-free guidance)
NUM_CLASSES = (len(COLORS), len(SHAPES), len(POSITIONS))  # (6, 3, 5)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """t (B,) → (B, dim) sinusoidal features [cos(t·ω_i), sin(t·ω_i)], ω_i = max_period^(−i/half),
    as the Transformer's positions."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)  # (D/2,)
    angles = t.float()[:, None] * freqs[None]  # (B, D/2)
    return torch.cat([angles.cos(), angles.sin()], dim=-1)  # (B, D)


class ResBlock(nn.Module):
    """x (B, C_in, H, W), emb (B, E) → (B, C_out, H, W): two 3×3 convolutions, the embedding
    added between them as a per-channel shift."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int = 8):
        super().__init__()
        self.norm1 = group_norm(c_in, groups)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = group_norm(c_out, groups)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        h = h + self.emb(emb)[:, :, None, None]  # time + caption, broadcast over H, W
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class UNet(nn.Module):
    """ε-prediction network: x_t (B, in_channels, H, W), t (B,), labels (B, 3) → ε̂ like x_t.

    The network works on patch × patch pixels folded into channels (as DiT's patches), so a
    32×32 image costs what a 16×16 one would; `channels[i]` is the width at resolution
    H / (patch · 2^i); H and W must be multiples of patch · 2^(len(channels) − 1)."""

    def __init__(
        self,
        in_channels: int = 3,
        channels: tuple[int, ...] = (48, 96),
        patch: int = 4,
        emb_dim: int = 128,
        groups: int = 8,
    ):
        super().__init__()
        self.config = {
            "in_channels": in_channels, "channels": list(channels), "patch": patch,
            "emb_dim": emb_dim, "groups": groups,
        }  # fmt: skip
        self.in_channels, self.patch = in_channels, patch
        c_pixels = in_channels * patch**2  # channels after folding patch × patch pixels
        self.time_mlp = nn.Sequential(
            nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        # one extra row per attribute: index k (= number of classes) is NULL, "no caption"
        self.label_emb = nn.ModuleList(nn.Embedding(k + 1, emb_dim) for k in NUM_CLASSES)
        self.conv_in = nn.Conv2d(c_pixels + 2, channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for i, c in enumerate(channels):
            c_prev = channels[max(i - 1, 0)]
            self.down.append(ResBlock(c_prev, c, emb_dim, groups))
            if i < len(channels) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid = ResBlock(channels[-1], channels[-1], emb_dim, groups)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(len(channels))):
            c_out = channels[max(i - 1, 0)]
            self.up.append(ResBlock(channels[i] * 2, c_out, emb_dim, groups))
            if i > 0:
                self.upsample.append(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.norm_out = group_norm(channels[0], groups)
        self.conv_out = nn.Conv2d(channels[0], c_pixels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # start by predicting ε̂ = x_t (the skip below)
        nn.init.zeros_(self.conv_out.bias)
        # A linear skip from input to output, starting as the identity: at high noise
        # x_t ≈ ε, and copying 48 folded values through the narrow network would be lossy.
        self.skip = nn.Conv2d(c_pixels, c_pixels, 1)
        with torch.no_grad():
            self.skip.weight.copy_(torch.eye(c_pixels)[:, :, None, None])
            self.skip.bias.zero_()

    def embed(self, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """t (B,), labels (B, 3) with NULL = −1 allowed → (B, E) time + caption embedding."""
        emb = self.time_mlp(timestep_embedding(t, self.config["emb_dim"]))  # (B, E)
        for i, (table, k) in enumerate(zip(self.label_emb, NUM_CLASSES)):
            column = labels[:, i]
            emb = emb + table(torch.where(column == NULL, k, column))  # NULL → row k
        return emb

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = _validate.tensor("x", x, shape=("B", self.in_channels, "H", "W"), floating=True)
        t = _validate.tensor("t", t, shape=(len(x),), dtype=torch.long)
        labels = _validate.tensor("labels", labels, shape=(len(x), 3), dtype=torch.long)
        factor = self.patch * 2 ** (len(self.down) - 1)
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"x's height and width must be multiples of {factor}, got {x.shape}")
        emb = self.embed(t, labels)  # (B, E)
        x = F.pixel_unshuffle(x, self.patch)  # (B, C·p², H/p, W/p): p×p pixels → channels
        h = self.conv_in(torch.cat([x, _coordinates(x)], dim=1))  # (B, C0, H/p, W/p)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, emb)  # (B, C_i, H/(p·2^i), W/(p·2^i))
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)  # halve the resolution
        h = self.mid(h, emb)
        for i, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        h = self.conv_out(F.silu(self.norm_out(h))) + self.skip(x)  # (B, C·p², H/p, W/p)
        return F.pixel_shuffle(h, self.patch)  # (B, C, H, W)


def _coordinates(x: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W): the x and y coordinate of every pixel, each in [−1, 1]."""
    b, _, h, w = x.shape
    ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"))  # (2, H, W)
    return grid.expand(b, -1, -1, -1)
