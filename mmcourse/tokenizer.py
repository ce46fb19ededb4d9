"""The image tokenizer: a VQ-VAE that turns a 32×32 image into 8×8 = 64 tokens (chapter 02).

    x (B, 3, 32, 32) ─ Encoder ─▶ z_e (B, D, 8, 8) ─ VectorQuantizer ─▶ tokens (B, 8, 8)
                                                   z_q (B, D, 8, 8) ─ Decoder ─▶ x̂ (B, 3, 32, 32)

The encoder downsamples ×4 with strided convolutions and residual blocks; every vector of z_e is
replaced by its nearest codebook entry (`mmcourse.vq`); the decoder upsamples back. Training
minimises (van den Oord et al. 2017)

    L = ‖x − x̂‖² + β‖z_e − sg(e)‖²

with an EMA codebook (so no codebook loss). `VQVAE` is chapter 02's case of
`mmcourse.autoencoder.VQAutoencoder`; its blocks (`group_norm`, `ResBlock`) and `psnr` serve
chapter 06's video tokenizer too, and `group_norm` the diffusion U-Net.

Training (k-means codebook start, dead-code restarts, recoloured images and random blobs), the
evaluation and the rebuild of data/tokenizer.pt live in `mmcourse.recipes.tokenizer`; later
chapters load the shipped tokenizer with `recipes.load("tokenizer")`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mmcourse import _validate
from mmcourse.autoencoder import VQAutoencoder

__all__ = [
    "DOWNSAMPLE",
    "Decoder",
    "Encoder",
    "ResBlock",
    "VQVAE",
    "compression_ratio",
    "group_norm",
    "psnr",
]

DOWNSAMPLE = 4  # 32×32 pixels → 8×8 tokens


# ---------------------------------------------------------------------------- building blocks


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm over `channels` in `groups` groups; groups must divide channels."""
    _validate.positive_int("channels", channels)
    _validate.positive_int("groups", groups)
    if channels % groups:
        raise ValueError(
            f"groups must divide channels: GroupNorm cannot split {channels} channels into "
            f"{groups} groups (try groups={math.gcd(channels, groups)})"
        )
    return nn.GroupNorm(groups, channels)


class ResBlock(nn.Module):
    """x + F(x) with F = conv3×3 ∘ SiLU ∘ GroupNorm, twice. Keeps the shape (B, C, H, W).

    The skip path lets the gradient reach early layers unchanged, so a deep stack trains as
    easily as a shallow one (He et al. 2016); normalising before each convolution
    ("pre-activation") keeps that path an exact identity.
    """

    def __init__(self, channels: int, groups: int = 8):
        super().__init__()
        self.block = nn.Sequential(
            group_norm(channels, groups),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            group_norm(channels, groups),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)  # (B, C, H, W)


class Encoder(nn.Module):
    """x (B, 3, H, W) in [0, 1] → z_e (B, code_dim, H/4, W/4)."""

    def __init__(self, channels: int = 32, code_dim: int = 16, groups: int = 8):
        super().__init__()
        c = channels
        self.net = nn.Sequential(
            nn.Conv2d(3, c, 3, padding=1),  # (B, C, H, W)
            nn.Conv2d(c, c, 4, stride=2, padding=1),  # (B, C, H/2, W/2)
            ResBlock(c, groups),
            nn.Conv2d(c, c, 4, stride=2, padding=1),  # (B, C, H/4, W/4)
            ResBlock(c, groups),
            ResBlock(c, groups),
            group_norm(c, groups),
            nn.SiLU(),
            nn.Conv2d(c, code_dim, 1),  # (B, D, H/4, W/4)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2 - 1)  # centre the pixels around 0


class Decoder(nn.Module):
    """z_q (B, code_dim, h, w) → x̂ (B, 3, 4h, 4w), unbounded (clamp to [0, 1] to show it)."""

    def __init__(self, channels: int = 32, code_dim: int = 16, groups: int = 8):
        super().__init__()
        c = channels
        self.net = nn.Sequential(
            nn.Conv2d(code_dim, c, 3, padding=1),  # (B, C, h, w)
            ResBlock(c, groups),
            ResBlock(c, groups),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(c, c, 3, padding=1),  # (B, C, 2h, 2w)
            ResBlock(c, groups),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(c, c, 3, padding=1),  # (B, C, 4h, 4w)
            group_norm(c, groups),
            nn.SiLU(),
            nn.Conv2d(c, 3, 3, padding=1),  # (B, 3, 4h, 4w)
        )

    def forward(self, z_q: torch.Tensor) -> torch.Tensor:
        return self.net(z_q)


# ----------------------------------------------------------------------------------- the VQ-VAE


class VQVAE(VQAutoencoder):
    """Encoder → VectorQuantizer (K = num_codes codes of dimension code_dim) → Decoder:
    images (B, 3, H, W) ↔ tokens (B, H/4, W/4).

    `encode` maps images to tokens, `decode` tokens to images; `forward` runs both with the
    straight-through estimator and returns the losses for training (`VQAutoencoder`).
    """

    encoder_class = Encoder
    decoder_class = Decoder
    grid = ("h", "w")

    def __init__(
        self,
        channels: int = 32,
        num_codes: int = 512,
        code_dim: int = 16,
        groups: int = 8,
        beta: float = 0.25,
        ema: bool = True,
    ):
        super().__init__(channels, num_codes, code_dim, groups, beta, ema)
        self.config["ema"] = ema  # the image tokenizer may also learn its codebook by gradient

    def _check(self, x: object) -> torch.Tensor:
        return _check_images(x)


def _check_images(x: object) -> torch.Tensor:
    x = _validate.tensor("x", x, shape=("B", 3, "H", "W"), floating=True, value_range=(0, 1))
    if x.shape[-2] % DOWNSAMPLE or x.shape[-1] % DOWNSAMPLE:
        raise ValueError(
            f"x must have height and width divisible by {DOWNSAMPLE} (the encoder halves them "
            f"twice), got shape {tuple(x.shape)}"
        )
    return x


# --------------------------------------------------------------------------------------- metrics


def psnr(x: torch.Tensor, y: torch.Tensor, max_value: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio of each image, in dB: x, y (B, C, H, W) → (B,).

        PSNR = 10 · log10(max_value² / MSE),   MSE = mean over C, H, W of (x − y)²

    Computed per image, then averaged by the caller: the mean of logs, not the log of the mean
    MSE. +6 dB halves the RMS error; an MSE of 0 is floored at 1e-10 (100 dB at max_value 1).
    """
    x = _validate.tensor("x", x, shape=("B", "C", "H", "W"), floating=True)
    y = _validate.tensor("y", y, shape=("B", "C", "H", "W"), floating=True)
    if x.shape != y.shape:
        raise ValueError(
            f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    mse = (x - y).pow(2).flatten(1).mean(dim=1)  # (B,)
    return 10 * torch.log10(max_value**2 / mse.clamp_min(1e-10))  # (B,)


def compression_ratio(
    image_shape: tuple[int, int, int], grid: tuple[int, int], num_codes: int
) -> float:
    """Bits in / bits out: a (C, H, W) image of 8-bit pixels against h·w tokens of log2(K) bits.

    32×32 RGB → 8×8 tokens of K = 512: 24,576 bits / 576 bits ≈ 42.7.
    """
    c, h, w = image_shape
    bits_in = c * h * w * 8
    bits_out = grid[0] * grid[1] * math.log2(num_codes)
    return bits_in / bits_out
