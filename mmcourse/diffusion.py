"""Diffusion (chapter 04): DDPM, DDIM and classifier-free guidance, on pixels and on latents.

Forward process (fixed, no learning): over T steps add Gaussian noise with variances β_1 … β_T.
With α_t = 1 − β_t and ᾱ_t = ∏_{s ≤ t} α_s it has a closed form for any t:

    q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I)   ⇒   x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε,  ε ~ N(0, I)

Reverse process (learned): a network ε_θ(x_t, t, c) predicts the noise; training minimises
‖ε − ε_θ(x_t, t, c)‖² at random t (Ho et al. 2020). Sampling walks back from x_T ~ N(0, I):

- DDPM: ancestral steps t → t − 1 through the posterior q(x_{t−1} | x_t, x̂_0), T network calls.
- DDIM (Song et al. 2021): jumps along a strided subset of the timesteps; η = 0 is deterministic.
- Classifier-free guidance (Ho & Salimans 2022): ε̂ = ε_u + s (ε_c − ε_u), one network trained
  with captions dropped now and then, both predictions from one batched forward pass.

Index convention: timesteps are 0 … T − 1 (the paper's 1 … T shifted by one), `alpha_bar[t]` is
ᾱ_t and ᾱ_{−1} = 1 (no noise), so the step from t = 0 lands on x_0.

Shipped weights: data/diffusion_shapes.pt (pixels) and data/diffusion_latent_shapes.pt (the
chapter-02 tokenizer's latents), rebuilt by `python -m mmcourse.train diffusion`, which also
writes data/diffusion_ddpm_samples.pt: the pixel model's DDPM 1000 samples of every caption, so
that a notebook can score DDPM's faithfulness without walking its 1000 steps on 90 images.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from mmcourse import _validate, checkpoints
from mmcourse.data import ShapesDataset, all_captions, caption_to_labels
from mmcourse.env import device as default_device
from mmcourse.env import to_device
from mmcourse.trainer import EMA, TrainResult, adamw_cosine, fit
from mmcourse.unet import NULL, UNet

PATH = checkpoints.DATA_DIR / "diffusion_shapes.pt"
LATENT_PATH = checkpoints.DATA_DIR / "diffusion_latent_shapes.pt"
DDPM_SAMPLES_PATH = checkpoints.DATA_DIR / "diffusion_ddpm_samples.pt"
DDPM_GUIDANCE = 3.0  # the guidance scale of the shipped DDPM samples
COMMAND = "python -m mmcourse.train diffusion"
SAMPLES_COMMAND = "python -m mmcourse.train ddpm_samples"  # the DDPM samples alone, ≈ 1.5 min
T = 1000  # diffusion steps of the shipped models
PIXEL_STEPS = 6000  # training steps of the shipped models (batch 128)
LATENT_STEPS = 3000

# ------------------------------------------------------------------------------- noise schedules


def linear_schedule(T: int = T, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """β_t rising linearly from beta_start to beta_end (DDPM) → ᾱ (T,) float64."""
    T = _validate.positive_int("T", T)
    betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)  # (T,)
    return torch.cumprod(1 - betas, dim=0)  # ᾱ_t = ∏_{s ≤ t} (1 − β_s)


def cosine_schedule(T: int = T, s: float = 0.008) -> torch.Tensor:
    """ᾱ_t = f(t) / f(0), f(t) = cos²(((t/T + s) / (1 + s)) · π/2) (Nichol & Dhariwal 2021) → (T,)
    float64, with β_t = 1 − ᾱ_t/ᾱ_{t−1} clipped to 0.999 so the last step stays finite."""
    T = _validate.positive_int("T", T)
    steps = torch.arange(T + 1, dtype=torch.float64) / T  # t/T for t = 0 … T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)  # (T,)
    return torch.cumprod(1 - betas, dim=0)


def snr(alpha_bar: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio of x_t: ᾱ_t / (1 − ᾱ_t), one value per timestep."""
    alpha_bar = _check_alpha_bar(alpha_bar)
    return alpha_bar / (1 - alpha_bar)


# --------------------------------------------------------------------------- forward process


def q_sample(
    x0: torch.Tensor, t: torch.Tensor, alpha_bar: torch.Tensor, eps: torch.Tensor
) -> torch.Tensor:
    """Sample q(x_t | x_0) in closed form: x0 (B, ...) (images (B, C, H, W), patch sequences
    (B, L, P), any trailing shape), t (B,) long in [0, T), alpha_bar (T,), eps like x0 →
    x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, like x0 (dtype and device kept)."""
    x0 = _check_batch("x0", x0)
    eps = _check_like("eps", eps, x0, "x0")
    alpha_bar = _check_alpha_bar(alpha_bar)
    t = _check_t_batch(t, len(x0), len(alpha_bar))
    a = alpha_bar.to(x0.device)[t].to(x0.dtype)  # ᾱ_t (B,)
    a = a.view(-1, *[1] * (x0.dim() - 1))  # (B, 1, ..., 1): broadcasts over x0's trailing dims
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


def diffusion_loss(
    model: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    t: torch.Tensor,
    labels: torch.Tensor,
    alpha_bar: torch.Tensor,
    eps: torch.Tensor,
) -> torch.Tensor:
    """The simple DDPM loss E‖ε − ε_θ(x_t, t, c)‖² for given t and ε: x0 (B, C, H, W), t (B,),
    labels (B, 3) (NULL rows are unconditional), eps like x0 → scalar mean over all values."""
    x_t = q_sample(x0, t, alpha_bar, eps)  # (B, C, H, W)
    return (model(x_t, t, labels) - eps).pow(2).mean()


def drop_labels(labels: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Conditioning dropout: each row of labels (B, 3) becomes NULL with probability p, so the
    network also learns the unconditional ε_θ(x_t, t, ∅) that guidance needs."""
    labels = _validate.tensor("labels", labels, shape=("B", 3), dtype=torch.long)
    drop = torch.rand(len(labels), generator=generator, device=generator.device) < p  # (B,)
    return torch.where(drop.to(labels.device)[:, None], NULL, labels)


# --------------------------------------------------------------------------- reverse process


def ddpm_step(
    x: torch.Tensor, eps: torch.Tensor, t: int, alpha_bar: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """One ancestral step x_t → x_{t−1} ~ q(x_{t−1} | x_t, x̂_0), x̂_0 from the predicted ε.

    x (B, ...) is x_t (any trailing shape), eps the predicted noise like x, t an int in [0, T),
    noise ~ N(0, I) like x; no noise is added at t = 0, where the step returns x̂_0 itself."""
    x = _check_batch("x", x)
    eps, noise = _check_like("eps", eps, x), _check_like("noise", noise, x)
    alpha_bar = _check_alpha_bar(alpha_bar)
    t = _check_t_int("t", t, len(alpha_bar))
    a_t = alpha_bar[t].item()  # ᾱ_t
    a_prev = alpha_bar[t - 1].item() if t > 0 else 1.0  # ᾱ_{t−1}, with ᾱ_{−1} = 1
    beta = 1 - a_t / a_prev  # β_t = 1 − α_t
    x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)  # x̂_0 = (x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t
    # μ̃_t = (√ᾱ_{t−1} β_t / (1−ᾱ_t)) x̂_0 + (√α_t (1−ᾱ_{t−1}) / (1−ᾱ_t)) x_t
    mean = (math.sqrt(a_prev) * beta / (1 - a_t)) * x0
    mean = mean + (math.sqrt(1 - beta) * (1 - a_prev) / (1 - a_t)) * x
    var = (1 - a_prev) / (1 - a_t) * beta  # β̃_t = (1−ᾱ_{t−1}) / (1−ᾱ_t) β_t, zero at t = 0
    return mean + math.sqrt(var) * noise


def ddim_timesteps(T: int, steps: int) -> list[tuple[int, int]]:
    """The strided DDIM schedule as (t, t_next) pairs: `steps` timesteps spread evenly from T − 1
    down to 0, each step going to the next scheduled timestep and the last from 0 to −1, which
    stands for x_0 (ᾱ_{−1} = 1)."""
    T, steps = _validate.positive_int("T", T), _validate.positive_int("steps", steps)
    if steps > T:
        raise ValueError(f"steps must be ≤ T = {T}, got {steps}")
    ts = torch.linspace(T - 1, 0, steps, dtype=torch.float64).round().long().tolist()
    return list(zip(ts, [*ts[1:], -1]))


def ddim_step(
    x: torch.Tensor,
    eps: torch.Tensor,
    t: int,
    t_next: int,
    alpha_bar: torch.Tensor,
    eta: float,
    noise: torch.Tensor,
) -> torch.Tensor:
    """One DDIM step x_t → x_{t_next} (t_next < t; −1 means x_0):

        x̂_0 = (x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t
        σ = η √((1−ᾱ_next)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_next)
        x_next = √ᾱ_next x̂_0 + √(1 − ᾱ_next − σ²) ε̂ + σ · noise

    x (B, ...) has any trailing shape. η = 0 is deterministic; η = 1 matches DDPM's variance when
    the steps are single."""
    x = _check_batch("x", x)
    eps, noise = _check_like("eps", eps, x), _check_like("noise", noise, x)
    alpha_bar = _check_alpha_bar(alpha_bar)
    t = _check_t_int("t", t, len(alpha_bar))
    t_next = _check_t_int("t_next", t_next, len(alpha_bar), allow_final=True)
    if t_next >= t:
        raise ValueError(f"t_next must be below t = {t}, got {t_next}")
    eta = _validate.number("eta", eta, 0.0, 1.0)
    a_t = alpha_bar[t].item()
    a_next = alpha_bar[t_next].item() if t_next >= 0 else 1.0  # ᾱ_{−1} = 1: land on x_0
    x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)  # x̂_0
    sigma = eta * math.sqrt((1 - a_next) / (1 - a_t) * (1 - a_t / a_next))
    direction = math.sqrt(max(1 - a_next - sigma**2, 0.0)) * eps  # points back to x_t
    return math.sqrt(a_next) * x0 + direction + sigma * noise


def cfg_combine(
    eps_cond: torch.Tensor, eps_uncond: torch.Tensor, scale: float | torch.Tensor
) -> torch.Tensor:
    """Classifier-free guidance: ε̂ = ε_u + s (ε_c − ε_u). s = 0 is unconditional, s = 1 plain
    conditional, s > 1 pushes past the conditional prediction, away from the unconditional."""
    eps_cond = _validate.tensor("eps_cond", eps_cond, floating=True)
    eps_uncond = _check_like("eps_uncond", eps_uncond, eps_cond, "eps_cond")
    return eps_uncond + scale * (eps_cond - eps_uncond)


def guided_eps(
    model: nn.Module, x: torch.Tensor, t: int, labels: torch.Tensor, scale: float
) -> torch.Tensor:
    """ε̂ with guidance `scale` at timestep t for x (B, C, H, W) and labels (B, 3): the
    conditional and unconditional rows go through the network as one batch of 2B (at scale 1
    only the conditional half is needed)."""
    b = len(x)
    t_batch = torch.full((b,), t, dtype=torch.long, device=x.device)
    if scale == 1:
        return model(x, t_batch, labels)
    eps = model(
        torch.cat([x, x]), torch.cat([t_batch, t_batch]), torch.cat([labels, _null(labels)])
    )
    eps_cond, eps_uncond = eps.chunk(2)  # (B, C, H, W) each
    return cfg_combine(eps_cond, eps_uncond, scale)


@torch.no_grad()
def ddpm_sample(
    model: nn.Module,
    labels: torch.Tensor,
    alpha_bar: torch.Tensor,
    *,
    guidance: float = 1.0,
    shape: tuple[int, int, int] = (3, 32, 32),
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Ancestral sampling with all T steps: labels (B, 3) → x_0 (B, *shape) in model space."""
    x, labels, alpha_bar, generator = _start(model, labels, alpha_bar, shape, generator)
    for t in tqdm(range(len(alpha_bar) - 1, -1, -1), desc="DDPM", disable=not progress):
        eps = guided_eps(model, x, t, labels, guidance)
        x = ddpm_step(x, eps, t, alpha_bar, _randn_like(x, generator))
    return x


@torch.no_grad()
def ddim_sample(
    model: nn.Module,
    labels: torch.Tensor,
    alpha_bar: torch.Tensor,
    *,
    steps: int = 50,
    eta: float = 0.0,
    guidance: float = 1.0,
    shape: tuple[int, int, int] = (3, 32, 32),
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """DDIM sampling over `steps` strided timesteps: labels (B, 3) → x_0 (B, *shape)."""
    x, labels, alpha_bar, generator = _start(model, labels, alpha_bar, shape, generator)
    for t, t_next in tqdm(ddim_timesteps(len(alpha_bar), steps), desc="DDIM", disable=not progress):
        eps = guided_eps(model, x, t, labels, guidance)
        x = ddim_step(x, eps, t, t_next, alpha_bar, eta, _randn_like(x, generator))
    return x


def to_images(x: torch.Tensor) -> torch.Tensor:
    """Model space [−1, 1] → images in [0, 1] (clamped)."""
    return ((x + 1) / 2).clamp(0, 1)


# ------------------------------------------------------------------------------------ training


def train_diffusion(
    x0: torch.Tensor,
    labels: torch.Tensor,
    *,
    config: dict | None = None,
    steps: int = 1000,
    batch: int = 128,
    lr: float = 2e-3,
    p_uncond: float = 0.1,
    ema_decay: float = 0.999,
    alpha_bar: torch.Tensor | None = None,
    seed: int = 0,
    progress: bool = True,
    device: torch.device | str | None = None,
) -> TrainResult:
    """Train an ε-prediction U-Net (`config`: UNet keyword arguments) on data x0 (N, C, H, W) in
    model space with labels (N, 3):
    random t and ε per example, captions dropped with probability p_uncond, AdamW with warm-up
    and cosine decay, and an EMA of the weights (what sampling uses).

    Everything happens on `device` (default: the course's): the data moves there once, and t, ε
    and the dropped captions are drawn there by a generator of that device (on the CPU, the
    same draws as always); the losses are read back once, at the end."""
    x0 = _validate.tensor("x0", x0, shape=("N", None, None, None), floating=True)
    labels = _validate.tensor("labels", labels, shape=(len(x0), 3), dtype=torch.long)
    steps, batch = _validate.positive_int("steps", steps), _validate.positive_int("batch", batch)
    dev = torch.device(device) if device is not None else default_device()
    torch.manual_seed(seed)
    g = torch.Generator(device=dev).manual_seed(seed)
    model = UNet(**(config or {"in_channels": x0.shape[1]})).to(dev)  # built after seeding
    alpha_bar = linear_schedule() if alpha_bar is None else _check_alpha_bar(alpha_bar)
    a_dev = alpha_bar.to(dev)  # ᾱ on the device, indexed by t there
    x0, labels = x0.to(dev), labels.to(dev)
    ema = EMA(model, ema_decay)  # what sampling uses
    opt, schedule = adamw_cosine(model, lr, steps, weight_decay=0.0, betas=(0.9, 0.999), final=0.0)

    def step_loss(step: int) -> torch.Tensor:
        idx = torch.randint(len(x0), (batch,), generator=g, device=dev)
        t = torch.randint(len(alpha_bar), (batch,), generator=g, device=dev)  # (B,) uniform
        x = x0[idx]  # (B, C, H, W)
        eps = torch.randn(x.shape, generator=g, device=dev)
        y = drop_labels(labels[idx], p_uncond, g)
        a = a_dev[t].to(x.dtype)[:, None, None, None]  # ᾱ_t, as q_sample (unchecked: no sync)
        x_t = a.sqrt() * x + (1 - a).sqrt() * eps
        return (model(x_t, t, y) - eps).pow(2).mean()  # diffusion_loss

    run = fit(
        model,
        step_loss,
        steps=steps,
        optimizer=opt,
        schedule=schedule,
        callbacks=[ema],
        progress=progress,
    )
    return run._replace(model=ema.model)


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, step: int, decay: float) -> None:
    """θ_ema ← d θ_ema + (1 − d) θ after optimizer step `step` (0-based), with
    d = min(decay, (1 + step) / (10 + step)): a short memory at the start, so the average does
    not drag the random initial weights along."""
    d = min(decay, (1 + step) / (10 + step))
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p, 1 - d)


def shapes_data(n: int = 20_000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Shapes images in model space [−1, 1] (N, 3, 32, 32) and their labels (N, 3)."""
    data = ShapesDataset(n=n, seed=seed)
    return data.images * 2 - 1, data.labels


# ------------------------------------------------------------------------- latent diffusion


@torch.no_grad()
def encode_latents(tokenizer: nn.Module, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Images (N, 3, 32, 32) in [0, 1] → the tokenizer encoder's continuous z_e (N, D, 8, 8),
    before quantization."""
    images = _validate.tensor("images", images, shape=("N", 3, 32, 32), floating=True)
    param = next(tokenizer.parameters())
    return torch.cat([tokenizer.encoder(chunk.to(param)) for chunk in images.split(batch)])


def latent_scale(z: torch.Tensor) -> float:
    """The factor that gives latents unit standard deviation: 1 / std(z), as Stable Diffusion's
    0.18215, so that the noise schedule's signal-to-noise ratios mean the same as on pixels."""
    z = _validate.tensor("z", z, floating=True)
    return 1.0 / z.float().std().item()


@torch.no_grad()
def decode_latents(tokenizer: nn.Module, z: torch.Tensor, scale: float) -> torch.Tensor:
    """Scaled latents z (N, D, 8, 8) → images (N, 3, 32, 32) in [0, 1] with the tokenizer's
    decoder (z / scale undoes the normalisation)."""
    z = _validate.tensor("z", z, shape=("N", None, None, None), floating=True)
    return tokenizer.decoder(z / scale).clamp(0, 1)


# ---------------------------------------------------------------- shipped weights and rebuild


class Generator(NamedTuple):
    """A trained diffusion model with what sampling needs: its schedule and, for latents, the
    scale and the tokenizer that decodes them (None in pixel space)."""

    model: UNet
    alpha_bar: torch.Tensor
    latent_scale: float | None

    def images(self, x: torch.Tensor, tokenizer: nn.Module | None = None) -> torch.Tensor:
        """Samples in model space → images in [0, 1]."""
        if self.latent_scale is None:
            return to_images(x)
        if tokenizer is None:
            raise ValueError("latent samples need the tokenizer to decode them")
        return decode_latents(tokenizer, x, self.latent_scale)


def load_diffusion(path: Path | str = PATH, device: torch.device | str | None = None) -> Generator:
    """A shipped diffusion model (data/diffusion_shapes.pt by default; LATENT_PATH for the
    latent one) in eval mode on `device` (default: the course's)."""
    path = Path(path)
    ckpt = checkpoints.load(path, command=COMMAND)
    config = dict(ckpt["config"])
    schedule, scale = config.pop("schedule", "linear"), config.pop("latent_scale", None)
    model = checkpoints.restore({**ckpt, "config": config}, UNet, path=path, command=COMMAND)
    alpha_bar = cosine_schedule() if schedule == "cosine" else linear_schedule()
    return Generator(model.to(device or default_device()), alpha_bar, scale)


def caption_labels(per_caption: int) -> torch.Tensor:
    """Labels (90 · per_caption, 3): every caption of the grammar, in all_captions() order,
    repeated `per_caption` times (what the judge measures faithfulness on)."""
    grid = torch.stack([caption_to_labels(c) for c in all_captions()])  # (90, 3)
    return grid.repeat(per_caption, 1)


@torch.no_grad()
def faithfulness(
    gen: Generator,
    judge: nn.Module,
    labels: torch.Tensor,
    *,
    steps: int | None = 50,
    guidance: float = 3.0,
    eta: float = 0.0,
    seed: int = 0,
    tokenizer: nn.Module | None = None,
    batch: int = 256,
) -> tuple[dict[str, float], torch.Tensor]:
    """Sample one image per row of labels (N, 3) (DDIM with `steps`, or DDPM when steps is
    None) and score it with the judge → (scores {"color", "shape", "position", "all"}, images)."""
    param = next(gen.model.parameters())
    g = torch.Generator().manual_seed(seed)
    c = gen.model.in_channels
    shape = (c, 32, 32) if gen.latent_scale is None else (c, 8, 8)
    images = []
    for chunk in labels.split(batch):
        chunk = chunk.to(param.device)
        if steps is None:
            x = ddpm_sample(
                gen.model, chunk, gen.alpha_bar, guidance=guidance, shape=shape, generator=g
            )
        else:
            x = ddim_sample(
                gen.model, chunk, gen.alpha_bar, steps=steps, eta=eta, guidance=guidance,
                shape=shape, generator=g,
            )  # fmt: skip
        images.append(gen.images(x, tokenizer).cpu())
    images = torch.cat(images)
    return judge.score(images, labels.cpu()), images


class DDPMSamples(NamedTuple):
    """The pixel model's DDPM samples of every caption, shipped so that chapter 04 scores DDPM
    without walking its 1000 steps on 90 images in the notebook (`rebuild_ddpm_samples`)."""

    images: torch.Tensor  # (N, 3, 32, 32) in [0, 1], kept as 8-bit values like an image file
    labels: torch.Tensor  # (N, 3): every caption once, in all_captions() order
    guidance: float
    seed: int


def rebuild(seed: int = 0) -> str:
    """Train the pixel-space and the latent model from `seed` on one thread, write
    data/diffusion_shapes.pt and data/diffusion_latent_shapes.pt, then the pixel model's DDPM
    samples data/diffusion_ddpm_samples.pt; return a summary with held-out judge scores (the
    `python -m mmcourse.train diffusion` target)."""
    return "\n".join([_rebuild_pixel(seed), _rebuild_latent(seed), rebuild_ddpm_samples(seed)])


def rebuild_ddpm_samples(seed: int = 0) -> str:
    """Sample every caption once from the shipped pixel model with DDPM (all T steps, guidance
    DDPM_GUIDANCE, every noise drawn by a CPU generator seeded `seed`, one thread), write
    data/diffusion_ddpm_samples.pt with the digest of the weights they came from, and return a
    one-line summary with the judge's scores of the stored 8-bit images."""
    from mmcourse import recipes
    from mmcourse.env import one_thread

    with one_thread():
        gen, judge = load_diffusion(PATH, "cpu"), recipes.load("judge", device="cpu")
        labels = caption_labels(1)  # (90, 3)
        start = time.perf_counter()
        _, images = faithfulness(
            gen, judge, labels, steps=None, guidance=DDPM_GUIDANCE, seed=seed
        )  # (N, 3, 32, 32) in [0, 1]
        took = time.perf_counter() - start
        pixels = (images * 255).round().to(torch.uint8)
        DDPM_SAMPLES_PATH.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"images": pixels, "labels": labels, "guidance": DDPM_GUIDANCE, "seed": seed,
             "weights": _digest(gen.model), "command": COMMAND},
            DDPM_SAMPLES_PATH,
        )  # fmt: skip
        scores = judge.score(load_ddpm_samples(gen, DDPM_SAMPLES_PATH).images, labels)
    return (
        f"wrote {DDPM_SAMPLES_PATH.name} in {took:.0f} s; judge faithfulness (DDPM {T}, guidance "
        f"{DDPM_GUIDANCE:g}, {len(labels)} samples) "
        + ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
    )


def load_ddpm_samples(gen: Generator, path: Path | str = DDPM_SAMPLES_PATH) -> DDPMSamples:
    """The shipped DDPM samples of `gen`, the pixel model they were drawn from. A missing or
    unreadable file, or one drawn from other weights, raises an error naming the command that
    rebuilds it."""
    path, rebuild_it = Path(path), f"rebuild it with: {SAMPLES_COMMAND}"
    if not path.is_file():
        raise FileNotFoundError(f"{path.name} not found in {path.parent}; {rebuild_it}")
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        images, labels, weights = stored["images"], stored["labels"], stored["weights"]
        guidance, seed = float(stored["guidance"]), int(stored["seed"])
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise checkpoints.CheckpointError(
            f"{path.name} could not be read ({type(err).__name__}); {rebuild_it}"
        ) from None
    if weights != _digest(gen.model):
        raise checkpoints.CheckpointError(
            f"{path.name} was sampled from other weights than this model's; {rebuild_it}"
        )
    return DDPMSamples(images.float() / 255, labels, guidance, seed)


def _digest(model: nn.Module) -> str:
    """sha256 of a model's weights, names and values: which model a file of samples came from."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _rebuild_pixel(seed: int) -> str:
    from mmcourse import recipes
    from mmcourse.env import one_thread

    with one_thread():
        x0, labels = shapes_data(seed=seed)
        result = train_diffusion(x0, labels, steps=PIXEL_STEPS, batch=128, seed=seed, device="cpu")
        config = result.model.config | {"schedule": "linear"}
        checkpoints.save(PATH, result.model.state_dict(), config=config, command=COMMAND)
        labels = caption_labels(2)
        scores, _ = faithfulness(
            load_diffusion(PATH, "cpu"), recipes.load("judge", device="cpu"), labels
        )
    return (
        f"wrote {PATH.name} in {result.seconds:.0f} s; judge faithfulness (DDIM 50, guidance 3, "
        f"{len(labels)} samples) " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
    )


def _rebuild_latent(seed: int) -> str:
    from mmcourse import recipes
    from mmcourse.env import one_thread
    from mmcourse.tokenizer import load_tokenizer

    with one_thread():
        tokenizer = load_tokenizer(device="cpu")
        images, labels = shapes_data(seed=seed)
        z = encode_latents(tokenizer, (images + 1) / 2)  # (N, D, 8, 8)
        scale = latent_scale(z)
        config = {"in_channels": z.shape[1], "channels": (48, 96), "patch": 1}
        result = train_diffusion(
            z * scale,
            labels,
            config=config,
            steps=LATENT_STEPS,
            batch=128,
            seed=seed,
            device="cpu",
        )
        config = result.model.config | {"schedule": "linear", "latent_scale": scale}
        checkpoints.save(LATENT_PATH, result.model.state_dict(), config=config, command=COMMAND)
        labels = caption_labels(2)
        gen = load_diffusion(LATENT_PATH, "cpu")
        scores, _ = faithfulness(
            gen, recipes.load("judge", device="cpu"), labels, tokenizer=tokenizer
        )
    return (
        f"wrote {LATENT_PATH.name} in {result.seconds:.0f} s (latent scale {scale:.4f}); judge "
        f"faithfulness (DDIM 50, guidance 3, {len(labels)} samples) "
        + ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
    )


# ------------------------------------------------------------------------------------- helpers


def _null(labels: torch.Tensor) -> torch.Tensor:
    return torch.full_like(labels, NULL)


def _start(
    model: nn.Module,
    labels: torch.Tensor,
    alpha_bar: torch.Tensor,
    shape: tuple[int, int, int],
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Generator]:
    """x_T ~ N(0, I) (B, *shape) on the model's device, and the checked inputs."""
    labels = _validate.tensor("labels", labels, shape=("B", 3), dtype=torch.long)
    alpha_bar = _check_alpha_bar(alpha_bar)
    if len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(f"shape must be (C, H, W) of positive ints, got {shape!r}")
    param = next(model.parameters())
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    x_T = torch.randn((len(labels), *shape), generator=generator, device=generator.device)
    x = to_device(x_T, param.device).to(param.dtype)
    return x, labels.to(param.device), alpha_bar, generator


def _randn_like(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Noise drawn by `generator` on its device (by default the CPU, so that every device
    samples the same images), moved to x's device without making the CPU wait for the GPU."""
    noise = torch.randn(x.shape, generator=generator, device=generator.device)
    return to_device(noise, x.device).to(x.dtype)


def _check_batch(name: str, x: object) -> torch.Tensor:
    x = _validate.tensor(name, x, floating=True)
    if x.dim() == 0:
        raise ValueError(f"{name} must have a batch dimension (B, ...), got a scalar tensor")
    return x


def _check_like(name: str, y: object, x: torch.Tensor, x_name: str = "x") -> torch.Tensor:
    y = _validate.tensor(name, y, floating=True)
    if y.shape != x.shape:
        raise ValueError(
            f"{name} must have the shape of {x_name} {tuple(x.shape)}, got {tuple(y.shape)}"
        )
    return y


def _check_alpha_bar(alpha_bar: object) -> torch.Tensor:
    alpha_bar = _validate.tensor("alpha_bar", alpha_bar, shape=("T",), floating=True)
    if len(alpha_bar) == 0 or not bool(((alpha_bar > 0) & (alpha_bar < 1)).all()):
        raise ValueError("alpha_bar must be a non-empty (T,) tensor with values in (0, 1)")
    return alpha_bar


def _check_t_batch(t: object, b: int, T: int) -> torch.Tensor:
    t = _validate.tensor("t", t, shape=(b,), dtype=torch.long)
    if b and not bool(((t >= 0) & (t < T)).all()):
        raise ValueError(f"t must hold timesteps in [0, {T}), got values in [{t.min()}, {t.max()}]")
    return t


def _check_t_int(name: str, t: object, T: int, allow_final: bool = False) -> int:
    if isinstance(t, torch.Tensor) and t.dim() == 0 and not t.is_floating_point():
        t = int(t)
    if isinstance(t, bool) or not isinstance(t, int):
        raise TypeError(f"{name} must be an int timestep, got {type(t).__name__}")
    low = -1 if allow_final else 0
    if not low <= t < T:
        raise ValueError(f"{name} must be in [{low}, {T}), got {t}")
    return t
