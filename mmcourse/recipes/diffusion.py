"""Chapter 04's recipe: the training runs, the judge's measure and the shipped samples of the
diffusion models of `mmcourse.diffusion`.

Shipped files, all rebuilt by `python -m mmcourse.train diffusion` (15 min + 1.5 min):

    diffusion          data/diffusion_shapes.pt          pixel space, PIXEL_STEPS steps
    diffusion_latent   data/diffusion_latent_shapes.pt   the tokenizer's latents, LATENT_STEPS
    DDPM samples       data/diffusion_ddpm_samples.pt    the pixel model's DDPM 1000 samples of
                       every caption, so that a notebook scores DDPM without walking its 1000
                       steps on 90 images (alone: `python -m mmcourse.train ddpm_samples`)

A weight file keeps, beside the U-Net's arguments, the schedule and (for latents) the latent
scale: `load_generator(name)` returns the model with both.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn

from mmcourse import _validate, diffusion, distributed
from mmcourse.checkpoints import DATA_DIR, CheckpointError, Weights, digest
from mmcourse.data import ShapesDataset, all_captions, caption_to_labels
from mmcourse.env import device as default_device
from mmcourse.env import one_thread
from mmcourse.recipes import judge as judge_recipe
from mmcourse.recipes import tokenizer as tokenizer_recipe
from mmcourse.trainer import EMA, TrainResult, adamw_cosine, fit
from mmcourse.unet import UNet

PIXEL_STEPS = 6000  # training steps of the shipped models (batch 128)
LATENT_STEPS = 3000
DDPM_GUIDANCE = 3.0  # the guidance scale of the shipped DDPM samples
DDPM_SAMPLES_PATH = DATA_DIR / "diffusion_ddpm_samples.pt"
SAMPLES_COMMAND = "python -m mmcourse.train ddpm_samples"  # the DDPM samples alone, ≈ 1.5 min

_COMMAND = "python -m mmcourse.train diffusion"
_EXTRAS = ("schedule", "latent_scale")  # how to sample and decode, kept beside the UNet's config
WEIGHTS = {
    "diffusion": Weights("diffusion_shapes.pt", UNet, command=_COMMAND, extras=_EXTRAS),
    "diffusion_latent": Weights(
        "diffusion_latent_shapes.pt", UNet, command=_COMMAND, extras=_EXTRAS
    ),
}

# ------------------------------------------------------------------------------------- data


def shapes_data(n: int = 20_000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Shapes images in model space [−1, 1] (N, 3, 32, 32) and their labels (N, 3)."""
    data = ShapesDataset(n=n, seed=seed)
    return data.images * 2 - 1, data.labels


# --------------------------------------------------------------------------------- training


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
    same draws as always); the losses are read back once, at the end. Under torchrun each rank
    draws its share of the batch (see `mmcourse.distributed`)."""
    x0 = _validate.tensor("x0", x0, shape=("N", None, None, None), floating=True)
    labels = _validate.tensor("labels", labels, shape=(len(x0), 3), dtype=torch.long)
    steps, batch = _validate.positive_int("steps", steps), _validate.positive_int("batch", batch)
    dev = torch.device(device) if device is not None else default_device()
    torch.manual_seed(seed)
    g = torch.Generator(device=dev).manual_seed(distributed.rank_seed(seed))
    batch = distributed.local_batch(batch)
    model = UNet(**(config or {"in_channels": x0.shape[1]})).to(dev)  # built after seeding
    net = distributed.wrap(model)  # DDP under torchrun, the model itself in one process
    alpha_bar = (
        diffusion.linear_schedule() if alpha_bar is None else diffusion.check_alpha_bar(alpha_bar)
    )
    a_dev = alpha_bar.to(dev)  # ᾱ on the device, indexed by t there
    x0, labels = x0.to(dev), labels.to(dev)
    ema = EMA(model, ema_decay)  # what sampling uses
    opt, schedule = adamw_cosine(model, lr, steps, weight_decay=0.0, betas=(0.9, 0.999), final=0.0)

    def step_loss(step: int) -> torch.Tensor:
        idx = torch.randint(len(x0), (batch,), generator=g, device=dev)
        t = torch.randint(len(alpha_bar), (batch,), generator=g, device=dev)  # (B,) uniform
        x = x0[idx]  # (B, C, H, W)
        eps = torch.randn(x.shape, generator=g, device=dev)
        y = diffusion.drop_labels(labels[idx], p_uncond, g)
        a = a_dev[t].to(x.dtype)[:, None, None, None]  # ᾱ_t, as q_sample (unchecked: no sync)
        x_t = a.sqrt() * x + (1 - a).sqrt() * eps
        return (net(x_t, t, y) - eps).pow(2).mean()  # diffusion_loss

    run = fit(
        model,
        step_loss,
        steps=steps,
        optimizer=opt,
        schedule=schedule,
        callbacks=[ema],
        progress=progress,
        generators=[g],
    )
    return run._replace(model=ema.model)


# ------------------------------------------------------------------------------- evaluation


class Generator(NamedTuple):
    """A trained diffusion model with what sampling needs: its schedule and, for latents, the
    scale and the tokenizer that decodes them (None in pixel space)."""

    model: UNet
    alpha_bar: torch.Tensor
    latent_scale: float | None

    def images(self, x: torch.Tensor, tokenizer: nn.Module | None = None) -> torch.Tensor:
        """Samples in model space → images in [0, 1]."""
        if self.latent_scale is None:
            return diffusion.to_images(x)
        if tokenizer is None:
            raise ValueError("latent samples need the tokenizer to decode them")
        return diffusion.decode_latents(tokenizer, x, self.latent_scale)


def load_generator(
    name: str = "diffusion",
    *,
    path: Path | str | None = None,
    device: torch.device | str | None = None,
) -> Generator:
    """The shipped diffusion model `name` ("diffusion" in pixel space, "diffusion_latent" on
    latents; `path` for another file of it) with its schedule and latent scale, in eval mode
    on `device` (default: the course's)."""
    model, config = WEIGHTS[name].load_with_config(path, device)
    schedule, scale = config.get("schedule", "linear"), config.get("latent_scale")
    alpha_bar = diffusion.cosine_schedule() if schedule == "cosine" else diffusion.linear_schedule()
    return Generator(model, alpha_bar, scale)


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
            x = diffusion.ddpm_sample(
                gen.model, chunk, gen.alpha_bar, guidance=guidance, shape=shape, generator=g
            )
        else:
            x = diffusion.ddim_sample(
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
    one-line summary with the judge's scores of the stored 8-bit images (rank 0 alone under
    torchrun)."""
    if not distributed.is_main():
        return ""
    with one_thread():
        gen = load_generator("diffusion", device="cpu")
        judge = judge_recipe.WEIGHTS["judge"].load(device="cpu")
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
             "weights": digest(gen.model), "command": _COMMAND},
            DDPM_SAMPLES_PATH,
        )  # fmt: skip
        scores = judge.score(load_ddpm_samples(gen, DDPM_SAMPLES_PATH).images, labels)
    return (
        f"wrote {DDPM_SAMPLES_PATH.name} in {took:.0f} s; judge faithfulness "
        f"(DDPM {diffusion.T}, guidance {DDPM_GUIDANCE:g}, {len(labels)} samples) "
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
        raise CheckpointError(
            f"{path.name} could not be read ({type(err).__name__}); {rebuild_it}"
        ) from None
    if weights != digest(gen.model):
        raise CheckpointError(
            f"{path.name} was sampled from other weights than this model's; {rebuild_it}"
        )
    return DDPMSamples(images.float() / 255, labels, guidance, seed)


def _rebuild_pixel(seed: int) -> str:
    with one_thread():
        x0, labels = shapes_data(seed=seed)
        result = train_diffusion(x0, labels, steps=PIXEL_STEPS, batch=128, seed=seed, device="cpu")
        if not distributed.is_main():
            return ""  # rank 0 writes the file and measures it
        config = result.model.config | {"schedule": "linear"}
        path = WEIGHTS["diffusion"].save(result.model, config=config)
        labels = caption_labels(2)
        scores, _ = faithfulness(
            load_generator("diffusion", device="cpu"),
            judge_recipe.WEIGHTS["judge"].load(device="cpu"),
            labels,
        )
    return (
        f"wrote {path.name} in {result.seconds:.0f} s; judge faithfulness (DDIM 50, guidance 3, "
        f"{len(labels)} samples) " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
    )


def _rebuild_latent(seed: int) -> str:
    with one_thread():
        tokenizer = tokenizer_recipe.WEIGHTS["tokenizer"].load(device="cpu")
        images, labels = shapes_data(seed=seed)
        z = diffusion.encode_latents(tokenizer, (images + 1) / 2)  # (N, D, 8, 8)
        scale = diffusion.latent_scale(z)
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
        if not distributed.is_main():
            return ""  # rank 0 writes the file and measures it
        config = result.model.config | {"schedule": "linear", "latent_scale": scale}
        path = WEIGHTS["diffusion_latent"].save(result.model, config=config)
        labels = caption_labels(2)
        gen = load_generator("diffusion_latent", device="cpu")
        scores, _ = faithfulness(
            gen, judge_recipe.WEIGHTS["judge"].load(device="cpu"), labels, tokenizer=tokenizer
        )
    return (
        f"wrote {path.name} in {result.seconds:.0f} s (latent scale {scale:.4f}); judge "
        f"faithfulness (DDIM 50, guidance 3, {len(labels)} samples) "
        + ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
    )


REBUILDS = {"diffusion": rebuild, "ddpm_samples": rebuild_ddpm_samples}
