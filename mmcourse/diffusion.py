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

Latent diffusion runs the same process on the chapter-02 tokenizer's continuous latents,
normalised to unit standard deviation. The shipped models, their training runs and their judge
evaluation live in `mmcourse.recipes.diffusion`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from mmcourse import _validate
from mmcourse.env import to_device
from mmcourse.unet import NULL

T = 1000  # diffusion steps of the shipped models

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
    alpha_bar = check_alpha_bar(alpha_bar)
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
    alpha_bar = check_alpha_bar(alpha_bar)
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
    alpha_bar = check_alpha_bar(alpha_bar)
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
    alpha_bar = check_alpha_bar(alpha_bar)
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
    alpha_bar = check_alpha_bar(alpha_bar)
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


def check_alpha_bar(alpha_bar: object) -> torch.Tensor:
    """A noise schedule ᾱ (T,): floating, non-empty, every value in (0, 1); or a clear error."""
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
    t = _validate.integer(name, t, low=None)
    low = -1 if allow_final else 0
    if not low <= t < T:
        raise ValueError(f"{name} must be in [{low}, {T}), got {t}")
    return t
