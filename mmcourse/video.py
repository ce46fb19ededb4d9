"""The video tokenizer (chapter 06): an 8×32×32 clip → 2×8×8 = 128 tokens.

    x (B, T, 3, H, W) ─ per frame: chapter 02's blocks, ×4 down ─▶ (B, C, T, H/4, W/4)
                      ─ two causal 3-D convs, stride 2 in time ─▶ z_e (B, D, T/4, H/4, W/4)
                      ─ VectorQuantizer ─▶ tokens (B, T/4, H/4, W/4), z_q
    z_q ─ two (repeat ×2 in time, causal 3-D conv) ─ per frame, ×4 up ─▶ x̂ (B, T, 3, H, W)

Chapter 02's tokenizer compresses space ×4 per side; consecutive frames of a clip are nearly the
same, so time compresses too: a 3-D convolution with stride 2 in time, twice, gives one latent
frame per 4 frames, and the clip costs 4× fewer tokens than tokenizing every frame.

The temporal convolutions are causal (MAGVIT-v2, Yu et al. 2024): time is padded with
kernel_t − stride_t zero frames on the left only, so latent frame j depends on frames
≤ 4j + 3 and never on later ones, and the decoder's frame t only on latents ≤ t // 4. (MAGVIT-v2
goes further and keeps the first frame alone, 1 + 4k frames → 1 + k latents; with the course's
8-frame clips and the 8 → 2 target we keep plain stride 4.)

`VideoVQVAE` is chapter 06's case of `mmcourse.autoencoder.VQAutoencoder` (chapter 01's
`VectorQuantizer`: EMA codebook, straight-through estimator, commitment loss β‖z_e − sg(e)‖²).
Its training (chapter 02's recipe), the held-out clips, the evaluations and the rebuild of
data/video_tokenizer.pt live in `mmcourse.recipes.video`; `recipes.load("video")` reads it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mmcourse import _validate
from mmcourse.autoencoder import VQAutoencoder
from mmcourse.tokenizer import ResBlock, group_norm, psnr

__all__ = [
    "CausalConv3d",
    "VideoDecoder",
    "VideoEncoder",
    "VideoVQVAE",
    "attention_cost",
    "causal_pad",
    "check_clips",
    "patchify_3d",
    "per_frame",
    "temporal_downsample",
    "temporal_upsample",
    "unpatchify_3d",
    "video_psnr",
    "video_tokens",
]

SPATIAL = 4  # 32×32 pixels → 8×8 tokens per latent frame
TEMPORAL = 4  # 8 frames → 2 latent frames


# ------------------------------------------------------------------------ token arithmetic


def video_tokens(
    frames: int, height: int, width: int, *, temporal_stride: int = 1, spatial_stride: int = 4
) -> int:
    """Tokens of a (frames, height, width) clip: (T / s_t) · (H / s) · (W / s).

    temporal_stride = 1 is per-frame tokenization. Every stride must divide its size: a clip
    whose frame count the temporal stride does not divide raises ValueError.
    """
    for name, value in (
        ("frames", frames),
        ("height", height),
        ("width", width),
        ("temporal_stride", temporal_stride),
        ("spatial_stride", spatial_stride),
    ):
        _validate.positive_int(name, value)
    _divisible("frames", frames, "temporal_stride", temporal_stride)
    _divisible("height", height, "spatial_stride", spatial_stride)
    _divisible("width", width, "spatial_stride", spatial_stride)
    return (frames // temporal_stride) * (height // spatial_stride) * (width // spatial_stride)


def attention_cost(tokens: int) -> int:
    """Pairs of tokens full self-attention compares: tokens², the cost of one attention layer
    up to the width (both QKᵀ and the weighted sum of values scale with it)."""
    return _validate.positive_int("tokens", tokens) ** 2


def _divisible(name: str, value: int, by_name: str, by: int) -> None:
    if value % by:
        lower, upper = value // by * by, -(-value // by) * by
        options = f"{lower} or {upper}" if lower else f"{upper}"
        raise ValueError(
            f"{name} = {value} is not divisible by {by_name} = {by}; trim or pad that axis to a "
            f"multiple of {by} ({options})"
        )


# --------------------------------------------------------------------------- 3-D patches


def patchify_3d(x: torch.Tensor, pt: int, p: int) -> torch.Tensor:
    """Clips x (B, T, C, H, W) → patches (B, N, pt·p·p·C), N = (T/pt)(H/p)(W/p).

    Patches run in (t, h, w) order; inside a patch the features are ordered (pt p1 p2 c):
    channels last, then columns, rows and frames, as a ViT patch with channels last.
    """
    x = check_clips(x, floating=False)
    pt, p = _validate.positive_int("pt", pt), _validate.positive_int("p", p)
    _, t, _, h, w = x.shape
    _divisible("frames", t, "pt", pt)
    _divisible("height", h, "p", p)
    _divisible("width", w, "p", p)
    return rearrange(x, "b (t pt) c (h p1) (w p2) -> b (t h w) (pt p1 p2 c)", pt=pt, p1=p, p2=p)


def unpatchify_3d(
    patches: torch.Tensor, pt: int, p: int, frames: int, height: int, width: int
) -> torch.Tensor:
    """The inverse of `patchify_3d`: patches (B, N, pt·p·p·C) → clips (B, T, C, H, W)."""
    patches = _validate.tensor("patches", patches, shape=("B", "N", "F"))
    pt, p = _validate.positive_int("pt", pt), _validate.positive_int("p", p)
    for name, size, by_name, by in (
        ("frames", frames, "pt", pt),
        ("height", height, "p", p),
        ("width", width, "p", p),
    ):
        _divisible(name, _validate.positive_int(name, size), by_name, by)
    t, h, w = frames // pt, height // p, width // p
    if patches.shape[1] != t * h * w or patches.shape[2] % (pt * p * p):
        raise ValueError(
            f"patches must have shape (B, {t * h * w}, pt·p·p·C) = (B, {t * h * w}, "
            f"{pt * p * p}·C) for a {frames}×{height}×{width} clip, got {tuple(patches.shape)}"
        )
    return rearrange(
        patches, "b (t h w) (pt p1 p2 c) -> b (t pt) c (h p1) (w p2)", t=t, h=h, pt=pt, p1=p, p2=p
    )


# --------------------------------------------------------------------- causal time convolution


def causal_pad(x: torch.Tensor, kernel_t: int, stride_t: int = 1) -> torch.Tensor:
    """Pad time on the left only: x (B, C, T, H, W) → (B, C, T + kernel_t − stride_t, H, W),
    with kernel_t − stride_t zero frames in front.

    A convolution of kernel kernel_t and stride stride_t over the padded clip gives T / stride_t
    outputs, and output j sees frames stride_t·j − (kernel_t − stride_t) … stride_t·j +
    stride_t − 1: never one after its own block of frames.
    """
    x = _validate.tensor("x", x, shape=("B", "C", "T", "H", "W"))
    kernel_t = _validate.positive_int("kernel_t", kernel_t)
    stride_t = _validate.positive_int("stride_t", stride_t)
    if stride_t > kernel_t:
        raise ValueError(
            f"stride_t must be ≤ kernel_t (a stride above the kernel skips frames), got "
            f"stride_t = {stride_t}, kernel_t = {kernel_t}"
        )
    return F.pad(x, (0, 0, 0, 0, kernel_t - stride_t, 0))  # (W: 0, 0), (H: 0, 0), (T: left, 0)


def temporal_downsample(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride_t: int
) -> torch.Tensor:
    """Causal 3-D convolution with stride stride_t in time, 1 in space (same spatial size):
    x (B, C, T, H, W), weight (C', C, k_t, k_h, k_w), k_h and k_w odd → (B, C', T / s_t, H, W).

    T must be divisible by stride_t (else ValueError); time is padded by `causal_pad`.
    """
    x = _validate.tensor("x", x, shape=("B", "C", "T", "H", "W"), floating=True)
    weight = _validate.tensor("weight", weight, shape=("C_out", x.shape[1], "k_t", "k_h", "k_w"))
    stride_t = _validate.positive_int("stride_t", stride_t)
    _divisible("frames", x.shape[2], "stride_t", stride_t)
    k_t, k_h, k_w = weight.shape[2:]
    if k_h % 2 == 0 or k_w % 2 == 0:
        raise ValueError(f"weight must have odd spatial sizes, got {k_h}×{k_w}")
    x = causal_pad(x, k_t, stride_t)  # (B, C, T + k_t − s_t, H, W)
    return F.conv3d(x, weight, bias, stride=(stride_t, 1, 1), padding=(0, k_h // 2, k_w // 2))


def temporal_upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Repeat every frame `factor` times in place: (B, C, t, H, W) → (B, C, t·factor, H, W),
    frames [a, b] → [a, a, b, b] (not the tiled [a, b, a, b], which would show frame b early)."""
    x = _validate.tensor("x", x, shape=("B", "C", "T", "H", "W"))
    return x.repeat_interleave(_validate.positive_int("factor", factor), dim=2)


class CausalConv3d(nn.Module):
    """A 3-D convolution of kernel (k_t, k, k), stride (stride_t, 1, 1), causal in time and
    'same' in space: (B, C, T, H, W) → (B, C', T / stride_t, H, W)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int = 3, stride_t: int = 1
    ) -> None:
        super().__init__()
        self.stride_t = _validate.positive_int("stride_t", stride_t)
        self.conv = nn.Conv3d(in_channels, out_channels, kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return temporal_downsample(x, self.conv.weight, self.conv.bias, self.stride_t)


# -------------------------------------------------------------------------------- the model


def per_frame(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2-D network to every frame: (B, C, T, H, W) → (B, C', T, H', W')."""
    b = x.shape[0]
    y = net(rearrange(x, "b c t h w -> (b t) c h w"))
    return rearrange(y, "(b t) c h w -> b c t h w", b=b)


class VideoEncoder(nn.Module):
    """x (B, T, 3, H, W) in [0, 1] → z_e (B, D, T/4, H/4, W/4).

    Per frame, chapter 02's design (strided convs and ResBlocks, ×4 down in space); then two
    causal 3-D convs of stride 2 in time, each followed by a per-frame ResBlock.
    """

    def __init__(self, channels: int, code_dim: int, groups: int) -> None:
        super().__init__()
        c = channels
        self.spatial = nn.Sequential(
            nn.Conv2d(3, c, 3, padding=1),  # (BT, C, H, W)
            nn.Conv2d(c, c, 4, stride=2, padding=1),  # (BT, C, H/2, W/2)
            ResBlock(c, groups),
            nn.Conv2d(c, c, 4, stride=2, padding=1),  # (BT, C, H/4, W/4)
            ResBlock(c, groups),
        )
        self.down = nn.ModuleList(CausalConv3d(c, c, 3, stride_t=2) for _ in range(2))
        self.mix = nn.ModuleList(ResBlock(c, groups) for _ in range(2))
        self.out = nn.Sequential(group_norm(c, groups), nn.SiLU(), nn.Conv2d(c, code_dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = per_frame(self.spatial, rearrange(x * 2 - 1, "b t c h w -> b c t h w"))
        for down, mix in zip(self.down, self.mix):
            h = per_frame(mix, down(h))  # (B, C, T/2, h, w), then (B, C, T/4, h, w)
        return per_frame(self.out, h)  # (B, D, T/4, h, w)


class VideoDecoder(nn.Module):
    """z_q (B, D, t, h, w) → x̂ (B, 4t, 3, 4h, 4w), unbounded: the encoder mirrored, each ×2 in
    time a frame repeat followed by a causal 3-D conv (so frame i sees latents ≤ i // 4)."""

    def __init__(self, channels: int, code_dim: int, groups: int) -> None:
        super().__init__()
        c = channels
        self.inp = nn.Sequential(nn.Conv2d(code_dim, c, 3, padding=1), ResBlock(c, groups))
        self.up = nn.ModuleList(CausalConv3d(c, c, 3) for _ in range(2))
        self.mix = nn.ModuleList(ResBlock(c, groups) for _ in range(2))
        self.spatial = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(c, c, 3, padding=1),  # (BT, C, 2h, 2w)
            ResBlock(c, groups),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(c, c, 3, padding=1),  # (BT, C, 4h, 4w)
            group_norm(c, groups),
            nn.SiLU(),
            nn.Conv2d(c, 3, 3, padding=1),  # (BT, 3, 4h, 4w)
        )

    def forward(self, z_q: torch.Tensor) -> torch.Tensor:
        h = per_frame(self.inp, z_q)  # (B, C, t, h, w)
        for up, mix in zip(self.up, self.mix):
            h = per_frame(mix, up(temporal_upsample(h, 2)))  # (B, C, 2t, h, w), then 4t
        return rearrange(per_frame(self.spatial, h), "b c t h w -> b t c h w")


class VideoVQVAE(VQAutoencoder):
    """VideoEncoder → VectorQuantizer (K = num_codes codes of dimension code_dim) → VideoDecoder:
    clips (B, T, 3, H, W) ↔ tokens (B, T/4, H/4, W/4), with an EMA codebook.

    `encode` maps clips to tokens, `decode` tokens back to clips; `forward` runs both through
    the straight-through estimator and returns the losses (`VQAutoencoder`).
    """

    encoder_class = VideoEncoder
    decoder_class = VideoDecoder
    grid = ("t", "h", "w")
    temporal_stride = TEMPORAL
    spatial_stride = SPATIAL

    def __init__(
        self,
        channels: int = 32,
        num_codes: int = 1024,
        code_dim: int = 16,
        groups: int = 8,
        beta: float = 0.25,
    ) -> None:
        super().__init__(channels, num_codes, code_dim, groups, beta)

    def _check(self, x: object) -> torch.Tensor:
        return check_clips(x)


def check_clips(x: object, *, floating: bool = True) -> torch.Tensor:
    """x as the video tokenizer takes it, or a clear error: clips (B, T, 3, H, W) in [0, 1], T,
    H and W multiples of 4 (not `floating`: any (B, T, C, H, W) tensor)."""
    if not floating:
        return _validate.tensor("x", x, shape=("B", "T", "C", "H", "W"))
    x = _validate.tensor("x", x, shape=("B", "T", 3, "H", "W"), floating=True, value_range=(0, 1))
    _divisible("frames", x.shape[1], "the temporal stride", TEMPORAL)
    _divisible("height", x.shape[3], "the spatial stride", SPATIAL)
    _divisible("width", x.shape[4], "the spatial stride", SPATIAL)
    return x


# --------------------------------------------------------------------------------------- metrics


def video_psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR of each clip in dB over all its frames: x, y (B, T, C, H, W) in [0, 1] → (B,)."""
    x = _validate.tensor("x", x, shape=("B", "T", "C", "H", "W"), floating=True)
    y = _validate.tensor("y", y, shape=("B", "T", "C", "H", "W"), floating=True)
    return psnr(x.flatten(1, 2), y.flatten(1, 2))  # frames × channels as one image's channels
