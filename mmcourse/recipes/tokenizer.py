"""Chapter 02's recipe: training the image tokenizer, its evaluation, the rebuild of
data/tokenizer.pt.

python -m mmcourse.train tokenizer   # data/tokenizer.pt (2–3 minutes on an idle 2-core CPU)

`fit_vqvae` is the VQ-VAE training run chapter 06's video tokenizer reuses.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mmcourse import _validate, distributed
from mmcourse.checkpoints import Weights
from mmcourse.data import ShapesDataset
from mmcourse.env import device as default_device
from mmcourse.tokenizer import DOWNSAMPLE, VQVAE, psnr
from mmcourse.trainer import TrainResult, fit
from mmcourse.vq import code_usage, perplexity

WEIGHTS = {
    "tokenizer": Weights("tokenizer.pt", VQVAE, command="python -m mmcourse.train tokenizer")
}
TRAIN_STEPS = 2000  # the shipped checkpoint's run


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
    Under torchrun each rank draws its share of the batch (see `mmcourse.distributed`).
    """
    steps = _validate.positive_int("steps", steps)
    batch = _validate.positive_int("batch", batch)
    restart_every = _validate.positive_int("restart_every", restart_every)
    recolor = _validate.number("recolor", recolor, 0, 1)
    blobs = _validate.number("blobs", blobs, 0, 1)
    dev = torch.device(device) if device is not None else default_device()
    torch.manual_seed(seed)
    g = torch.Generator(device=dev).manual_seed(distributed.rank_seed(seed))
    batch = distributed.local_batch(batch)
    data = ShapesDataset(n=n_images, seed=seed).images.to(dev)  # (N, 3, 32, 32)
    model = VQVAE(**model_kwargs).to(dev)

    def next_batch() -> torch.Tensor:
        x = data[torch.randint(len(data), (batch,), generator=g, device=dev)]  # (B, 3, 32, 32)
        return _augment(x, recolor, blobs, g)

    return fit_vqvae(model, next_batch, steps, lr, restart_every, g, log, log_every, progress)


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
    one back each step would stall a GPU.

    Under torchrun the loss goes through DDP (`model._losses` as its forward). The EMA codebook
    is a buffer, not a weight: DDP sends rank 0's buffers to every rank before each forward, so
    the codebook, its k-means start and its restarts follow rank 0's batches."""
    g = generator
    net = distributed.wrap(model, method="_losses")  # DDP under torchrun, else model._losses
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
        out = net(x)
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
        if (
            log is not None
            and distributed.is_main()
            and (step % log_every == 0 or step == steps - 1)
        ):
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
        generators=[g],
    )
    loss, recon, vq_loss, perp = (list(column) for column in zip(*run.losses))
    history = {"recon_loss": recon, "vq_loss": vq_loss, "perplexity": perp, "lr": lrs}
    return run._replace(losses=loss, history=history)


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


def rebuild(seed: int = 0) -> str:
    """Train the tokenizer from `seed` on the CPU, write data/tokenizer.pt, return a one-line
    summary with the held-out scores (the `python -m mmcourse.train tokenizer` target)."""
    start = time.perf_counter()
    model = train_tokenizer(seed=seed, device="cpu").model
    if not distributed.is_main():
        return ""  # rank 0 writes the file and measures it
    path = WEIGHTS["tokenizer"].save(model)
    took = time.perf_counter() - start
    scores = evaluate(model, ShapesDataset(n=2_000, seed=1).images)
    return f"wrote {path.name} in {took:.0f} s; held-out " + ", ".join(
        f"{k} {v:.4f}" for k, v in scores.items()
    )


REBUILDS = {"tokenizer": rebuild}
