"""Chapter 06's recipe: training the video tokenizer, the held-out clips, its evaluation
against chapter 02's tokenizer on every frame, and the rebuild of data/video_tokenizer.pt.

python -m mmcourse.train video   # data/video_tokenizer.pt (≈ 25 minutes on one thread)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mmcourse import _validate, distributed
from mmcourse.checkpoints import Weights
from mmcourse.data.moving import MovingShapesDataset
from mmcourse.env import device as default_device
from mmcourse.env import one_thread
from mmcourse.recipes import tokenizer as tokenizer_recipe
from mmcourse.trainer import TrainResult
from mmcourse.video import VideoVQVAE, check_clips, video_psnr
from mmcourse.vq import code_usage, perplexity

WEIGHTS = {
    "video": Weights("video_tokenizer.pt", VideoVQVAE, command="python -m mmcourse.train video")
}
TRAIN_STEPS = 3600  # the shipped checkpoint's run
HELD_OUT_SEED = 1  # MovingShapesDataset(seed=1) is the held-out set


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random symmetries of clips (B, T, 3, H, W) that keep them moving-shapes clips: mirror
    left/right, mirror up/down, swap the axes, play backwards (each with probability ½). The
    draws come from `g`, on its device (which is x's)."""
    b = len(x)
    flips = torch.rand(4, b, generator=g, device=g.device) < 0.5  # (4, B)
    x = torch.where(flips[0, :, None, None, None, None], x.flip(-1), x)
    x = torch.where(flips[1, :, None, None, None, None], x.flip(-2), x)
    x = torch.where(flips[2, :, None, None, None, None], x.transpose(-1, -2), x)
    return torch.where(flips[3, :, None, None, None, None], x.flip(1), x)


def train_video_tokenizer(
    seed: int = 0,
    steps: int = TRAIN_STEPS,
    *,
    batch: int = 16,
    lr: float = 2e-3,
    n_clips: int = 4_000,
    restart_every: int = 20,
    log: Callable[[str], None] | None = print,
    log_every: int = 250,
    progress: bool = False,
    device: torch.device | str | None = None,
    **model_kwargs: object,
) -> TrainResult:
    """Train a VideoVQVAE on `n_clips` moving-shapes clips drawn from `seed` (seed 1 is the
    held-out set, so train on another), with random mirrors, transposes and time reversal.

    Chapter 02's recipe: Adam with a cosine learning rate from `lr` to 0, the codebook started
    as k-means centres of the first batch's encoder outputs, codes unused for `restart_every`
    steps moved onto random encoder outputs (not in the last fifth of training). Same seed and
    arguments → same weights (on the same device and thread count). Everything happens on
    `device` (default: the course's), the batches drawn there by a generator of that device.
    Under torchrun each rank draws its share of the batch (see `mmcourse.distributed`).
    """
    steps = _validate.positive_int("steps", steps)
    batch = _validate.positive_int("batch", batch)
    restart_every = _validate.positive_int("restart_every", restart_every)
    if seed == HELD_OUT_SEED:
        raise ValueError(f"seed {HELD_OUT_SEED} draws the held-out clips; train on another seed")
    dev = torch.device(device) if device is not None else default_device()
    torch.manual_seed(seed)
    g = torch.Generator(device=dev).manual_seed(distributed.rank_seed(seed))
    batch = distributed.local_batch(batch)
    data = MovingShapesDataset(n=n_clips, seed=seed).clips.to(dev)  # (N, T, 3, H, W)
    model = VideoVQVAE(**model_kwargs).to(dev)

    def next_batch() -> torch.Tensor:
        return _augment(data[torch.randint(len(data), (batch,), generator=g, device=dev)], g)

    return tokenizer_recipe.fit_vqvae(
        model, next_batch, steps, lr, restart_every, g, log, log_every, progress
    )


def held_out_clips(n: int = 500) -> torch.Tensor:
    """The course's held-out clips (n, 8, 3, 32, 32): MovingShapesDataset(n, seed=1)."""
    return MovingShapesDataset(n=n, seed=HELD_OUT_SEED).clips


@torch.no_grad()
def evaluate(model: VideoVQVAE, clips: torch.Tensor, batch: int = 64) -> dict[str, float]:
    """Reconstruction of `clips` (N, T, 3, H, W) in [0, 1] through the video tokenizer:
    {"psnr_db": mean per-clip PSNR, "tokens": tokens per clip, "code_usage", "perplexity"}."""
    clips = check_clips(clips)
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    tokens, scores = [], []
    for x in clips.split(batch):
        x = x.to(param)
        t = model.encode(x)  # (b, t, h, w)
        scores.append(video_psnr(model.decode(t), x).cpu())
        tokens.append(t.cpu())
    model.train(was_training)
    tokens_all = torch.cat(tokens)
    return {
        "psnr_db": torch.cat(scores).mean().item(),
        "tokens": tokens_all[0].numel(),
        "code_usage": code_usage(tokens_all, model.num_codes),
        "perplexity": perplexity(tokens_all, model.num_codes),
    }


@torch.no_grad()
def per_frame_evaluate(image_tokenizer: nn.Module, clips: torch.Tensor, batch: int = 64) -> dict:
    """The baseline: chapter 02's image tokenizer on every frame of `clips` (N, T, 3, H, W).
    {"psnr_db": mean per-clip PSNR, "tokens": tokens per clip (T · h · w)}."""
    clips = check_clips(clips)
    param = next(image_tokenizer.parameters())
    scores, n_tokens = [], 0
    for x in clips.split(batch):
        frames = x.flatten(0, 1).to(param)  # (b·T, 3, H, W)
        tokens = image_tokenizer.encode(frames)  # (b·T, h, w)
        x_hat = image_tokenizer.decode(tokens).view_as(x.to(param))  # (b, T, 3, H, W)
        scores.append(video_psnr(x_hat, x.to(param)).cpu())
        n_tokens = tokens[0].numel() * x.shape[1]
    return {"psnr_db": torch.cat(scores).mean().item(), "tokens": n_tokens}


def rebuild(seed: int = 0, steps: int = TRAIN_STEPS) -> str:
    """Train the shipped video tokenizer from `seed` on one thread, write
    data/video_tokenizer.pt, return a one-line summary with the held-out PSNR (the
    `python -m mmcourse.train video` target)."""
    with one_thread():
        result = train_video_tokenizer(seed=seed, steps=steps, device="cpu")
        if not distributed.is_main():
            return ""  # rank 0 writes the file and measures it
        model = result.model
        path = WEIGHTS["video"].save(model)
        scores = evaluate(model, held_out_clips())
    return f"wrote {path.name} in {result.seconds:.0f} s; held-out " + ", ".join(
        f"{k} {v:.4f}" for k, v in scores.items()
    )


REBUILDS = {"video": rebuild}
