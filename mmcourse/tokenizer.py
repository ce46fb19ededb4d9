"""The image tokenizer: a VQ-VAE that turns a 32×32 image into 8×8 = 64 tokens (chapter 02).

    x (B, 3, 32, 32) ─ Encoder ─▶ z_e (B, D, 8, 8) ─ VectorQuantizer ─▶ tokens (B, 8, 8)
                                                   z_q (B, D, 8, 8) ─ Decoder ─▶ x̂ (B, 3, 32, 32)

The encoder downsamples ×4 with strided convolutions and residual blocks; every vector of z_e is
replaced by its nearest codebook entry (`mmcourse.vq`); the decoder upsamples back. Training
minimises (van den Oord et al. 2017)

    L = ‖x − x̂‖² + β‖z_e − sg(e)‖²

with an EMA codebook (so no codebook loss), a k-means initialisation of the codebook on the first
batch's encoder outputs, and restarts of dead codes while training, which keep most codes in use.
Part of each batch is recoloured or replaced by random smooth blobs, so the vocabulary also covers
images unlike Shapes (it then reconstructs real digits too).

The trained tokenizer ships in data/tokenizer.pt (0.8 MB), rebuilt from its seed by
`python -m mmcourse.train tokenizer` (2–3 minutes on an idle 2-core CPU, several times longer
when other jobs share it); later chapters load it with `load_tokenizer()`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mmcourse import _validate, checkpoints
from mmcourse.autoencoder import VQAutoencoder
from mmcourse.data import ShapesDataset
from mmcourse.env import device as default_device
from mmcourse.trainer import TrainResult, fit
from mmcourse.vq import code_usage, perplexity

__all__ = [
    "COMMAND",
    "PATH",
    "Decoder",
    "Encoder",
    "ResBlock",
    "TrainResult",
    "VQVAE",
    "compression_ratio",
    "evaluate",
    "group_norm",
    "load_tokenizer",
    "psnr",
    "train_tokenizer",
]

PATH = checkpoints.DATA_DIR / "tokenizer.pt"
COMMAND = "python -m mmcourse.train tokenizer"
DOWNSAMPLE = 4  # 32×32 pixels → 8×8 tokens
TRAIN_STEPS = 2000  # the shipped checkpoint's run


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


@torch.no_grad()
def evaluate(model: VQVAE, images: torch.Tensor, batch: int = 256) -> dict[str, float]:
    """Reconstruction and codebook health on `images` (N, 3, H, W) in [0, 1]:
    {"psnr_db": mean per-image PSNR, "code_usage": fraction of codes used, "perplexity"}."""
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    tokens, scores = [], []
    for x in images.split(batch):
        x = x.to(param)
        t = model.encode(x)  # (b, h, w)
        scores.append(psnr(model.decode(t), x).cpu())
        tokens.append(t.cpu())
    model.train(was_training)
    tokens_all = torch.cat(tokens)
    return {
        "psnr_db": torch.cat(scores).mean().item(),
        "code_usage": code_usage(tokens_all, model.num_codes),
        "perplexity": perplexity(tokens_all, model.num_codes),
    }


# -------------------------------------------------------------------------------------- training


def train_tokenizer(
    seed: int = 0,
    steps: int = TRAIN_STEPS,
    *,
    batch: int = 64,
    lr: float = 2e-3,
    n_images: int = 20_000,
    restart_every: int = 20,
    recolor: float = 0.3,
    blobs: float = 0.25,
    log: Callable[[str], None] | None = print,
    log_every: int = 500,
    progress: bool = False,
    device: torch.device | str | None = None,
    **model_kwargs: object,
) -> TrainResult:
    """Train a VQVAE on `n_images` Shapes images drawn from `seed` (seed 1 is the course's
    held-out set, so train on another), widened by `_augment`: a `recolor` fraction of each batch
    repainted in random colours, a `blobs` fraction replaced by random smooth blobs (so that real
    images such as digits are not all out of vocabulary).

    Adam with a cosine learning rate from `lr` to 0; the codebook starts as k-means centres of
    the first batch's encoder outputs; every `restart_every` steps, codes no vector chose during
    those steps move onto random encoder outputs (not in the last fifth of training, so the
    codebook settles). Same seed and arguments → same weights (on the same device and threads).
    The defaults are the shipped checkpoint's recipe: 2,000 steps, 2–3 minutes on a 2-core CPU.
    Everything happens on `device` (default: the course's): the images live there and the batches
    are drawn there by a generator of that device (on the CPU, the same draws as always).
    """
    steps = _validate.positive_int("steps", steps)
    batch = _validate.positive_int("batch", batch)
    restart_every = _validate.positive_int("restart_every", restart_every)
    recolor, blobs = _fraction("recolor", recolor), _fraction("blobs", blobs)
    dev = torch.device(device) if device is not None else default_device()
    torch.manual_seed(seed)
    g = torch.Generator(device=dev).manual_seed(seed)
    data = ShapesDataset(n=n_images, seed=seed).images.to(dev)  # (N, 3, 32, 32)
    model = VQVAE(**model_kwargs).to(dev)

    def next_batch() -> torch.Tensor:
        x = data[torch.randint(len(data), (batch,), generator=g, device=dev)]  # (B, 3, 32, 32)
        return _augment(x, recolor, blobs, g)

    return fit_vqvae(model, next_batch, steps, lr, restart_every, g, log, log_every, progress)


def _fraction(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a fraction in [0, 1], got {value!r}")
    return float(value)


def _augment(x: torch.Tensor, recolor: float, blobs: float, g: torch.Generator) -> torch.Tensor:
    """Widen what the tokenizer sees beyond the six colours and three shapes of Shapes.

    x (B, 3, H, W) on a black background. A `recolor` fraction of the images gets its shape
    repainted in a random colour: a pixel is α·colour with α its coverage, so α is the channel
    maximum rescaled to reach 1, and the new pixel is α·c with c uniform in [0, 1]³. A `blobs`
    fraction is replaced by random smooth blobs (`_blobs`), white or coloured. The draws come
    from `g`, on its device (which is x's).
    """
    b, dev = len(x), g.device
    alpha = x.amax(dim=1, keepdim=True)  # (B, 1, H, W)
    alpha = alpha / alpha.amax(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    colour = torch.rand(b, 3, 1, 1, generator=g, device=dev)  # (B, 3, 1, 1)
    x = torch.where(torch.rand(b, 1, 1, 1, generator=g, device=dev) < recolor, alpha * colour, x)
    field = _blobs(b, x.shape[-2:], g)  # (B, 1, H, W)
    colour = torch.rand(b, 3, 1, 1, generator=g, device=dev)
    white = torch.rand(b, 1, 1, 1, generator=g, device=dev) < 0.5
    colour = torch.where(white, torch.ones_like(colour), colour)
    return torch.where(torch.rand(b, 1, 1, 1, generator=g, device=dev) < blobs, field * colour, x)


def _blobs(n: int, size: torch.Size, g: torch.Generator) -> torch.Tensor:
    """n random smooth intensity fields (n, 1, H, W) in [0, 1]: values drawn on the token grid
    (H/4 × W/4), about half of them zero, upsampled bilinearly."""
    h, w = size[0] // DOWNSAMPLE, size[1] // DOWNSAMPLE
    coarse = (torch.rand(n, 1, h, w, generator=g, device=g.device) * 2 - 1).clamp_min(0) * 2
    fine = F.interpolate(coarse, size=tuple(size), mode="bilinear", align_corners=False)
    return fine.clamp(0, 1)


def load_tokenizer(
    path: Path | str | None = None, device: torch.device | str | None = None
) -> VQVAE:
    """The trained tokenizer from data/tokenizer.pt, in eval mode on `device` (default: the
    course's). A missing or corrupt file raises an error naming the command that rebuilds it."""
    path = Path(path) if path is not None else PATH
    ckpt = checkpoints.load(path, command=COMMAND)
    model = checkpoints.restore(ckpt, VQVAE, path=path, command=COMMAND)
    return model.to(device or default_device())


def fit_vqvae(
    model: nn.Module,
    next_batch: Callable[[], torch.Tensor],
    steps: int,
    lr: float,
    restart_every: int,
    generator: torch.Generator,
    log: Callable[[str], None] | None,
    log_every: int,
    progress: bool,
) -> TrainResult:
    """Chapter 02's recipe for a VQ-VAE (this chapter's images, chapter 06's clips): Adam with a
    cosine learning rate from `lr` to 0; the codebook starts as k-means centres of the first
    batch's encoder outputs; every `restart_every` steps, codes no vector chose move onto random
    encoder outputs (not in the last fifth, so the codebook settles). `model._losses(x)` (the
    forward pass without input checks) must give `loss, recon_loss, vq_loss, perplexity,
    tokens`; `next_batch()` draws a batch on the model's device. Returns the model (eval mode),
    its loss per step and the history of the other numbers and the learning rate, per step. The
    numbers stay on the device until the end (and for `log`, every `log_every` steps): reading
    one back each step would stall a GPU."""
    g = generator
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    counts = torch.zeros(model.num_codes, device=next(model.parameters()).device)  # uses per code
    lrs: list[float] = []
    current: dict[str, torch.Tensor] = {}  # the step's batch, which the restart after it reads

    def step_loss(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = next_batch()
        if step == 0:
            with torch.no_grad():
                z_e = model.encoder(x)  # (B, D, 8, 8) or (B, D, T, 8, 8)
            model.quantizer.init_codebook(z_e, generator=g)
        out = model._losses(x)
        tokens = out.tokens.flatten()
        counts.index_add_(0, tokens, torch.ones_like(tokens, dtype=counts.dtype))  # no sync
        current["x"] = x
        return out.loss, torch.stack([out.loss, out.recon_loss, out.vq_loss, out.perplexity])

    def restart(step: int, _: torch.Tensor) -> None:
        if (step + 1) % restart_every == 0:
            if step < 0.8 * steps:
                with torch.no_grad():
                    z_e = model.encoder(current["x"])
                model.quantizer.restart_dead_codes(z_e, counts, generator=g)
            counts.zero_()
        lrs.append(sched.get_last_lr()[0])

    def report(step: int, numbers: torch.Tensor) -> None:
        if log is not None and (step % log_every == 0 or step == steps - 1):
            _, recon, vq_loss, perp = numbers.tolist()
            log(f"step {step:5d}  recon {recon:.5f}  vq {vq_loss:.5f}  perplexity {perp:.1f}")

    run = fit(
        model,
        step_loss,
        steps=steps,
        optimizer=opt,
        schedule=sched,
        callbacks=[restart, report],
        progress=progress,
        desc="training",
    )
    loss, recon, vq_loss, perp = (list(column) for column in zip(*run.losses))
    history = {"recon_loss": recon, "vq_loss": vq_loss, "perplexity": perp, "lr": lrs}
    return run._replace(losses=loss, history=history)
