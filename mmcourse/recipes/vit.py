"""Chapter 03's ViT recipe: the one-cycle AdamW training run (shared with chapter 03's fusion
models), the digits classifier's training with pixel shifts, and the rebuild of data/vit_digits.pt.

python -m mmcourse.train vit   # data/vit_digits.pt (≈ 15 s)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmcourse import distributed, trainer
from mmcourse.checkpoints import Weights
from mmcourse.data import DigitsDataset
from mmcourse.env import device as default_device
from mmcourse.env import one_thread, to_device
from mmcourse.trainer import TrainResult
from mmcourse.vit import ViT, accuracy

WEIGHTS = {"vit": Weights("vit_digits.pt", ViT, command="python -m mmcourse.train vit")}


def _shift(x: torch.Tensor, g: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Move each image by up to ±max_shift pixels (zero fill): x (B, C, S, S). The shifts are
    drawn by `g` on the CPU and the crops gathered on x's device, all images at once."""
    b, c, s, _ = x.shape
    padded = F.pad(x, [max_shift] * 4)  # (B, C, S + 2m, S + 2m)
    dy, dx = to_device(torch.randint(2 * max_shift + 1, (2, b), generator=g), x.device)
    span = torch.arange(s, device=x.device)
    rows = (dy[:, None] + span)[:, None, :, None].expand(b, c, s, padded.shape[-1])
    crop = padded.gather(2, rows)  # (B, C, S, S + 2m): rows dy … dy + S − 1 of each image
    cols = (dx[:, None] + span)[:, None, None, :].expand(b, c, s, s)
    return crop.gather(3, cols)  # (B, C, S, S)


def fit(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    sample: Callable[[], torch.Tensor],
    steps: int,
    lr: float,
    progress: bool = False,
    desc: str = "train",
    weight_decay: float = 0.01,
    generators: Sequence[torch.Generator] = (),
) -> TrainResult:
    """Train for `steps` steps of `loss_fn(sample())` with AdamW and a one-cycle schedule over the
    trainable parameters, in `trainer.fit`; `progress` shows a tqdm bar named `desc`. The losses
    stay on the model's device until the end. `generators`: those `loss_fn` and `sample` draw
    from (kept in a resumable training state)."""
    opt, sched = trainer.adamw_one_cycle(model, lr, steps, weight_decay=weight_decay)
    return trainer.fit(
        model,
        lambda step: loss_fn(sample()),
        steps=steps,
        optimizer=opt,
        schedule=sched,
        progress=progress,
        desc=desc,
        generators=generators,
    )


def train_vit_digits(
    seed: int = 0,
    epochs: int = 40,
    batch: int = 64,
    lr: float = 2e-3,
    progress: bool = False,
    desc: str = "ViT digits",
    device: torch.device | str | None = None,
    **config: int | str,
) -> TrainResult:
    """Train a ViT on the 1,437 training digits with ±1 pixel shifts, AdamW and a one-cycle
    schedule; `progress` shows a tqdm bar named `desc`. The model and the digits live on
    `device` (default: the course's); the batches and shifts are drawn on the CPU (the same
    draws on every device) and sent over without waiting for the GPU. Under torchrun each rank
    draws its share of the batch (see `mmcourse.distributed`); the steps stay the same."""
    dev = torch.device(device) if device is not None else default_device()
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(distributed.rank_seed(seed))
    train = DigitsDataset("train")
    images, labels = train.images.to(dev), train.labels.to(dev)
    model = ViT(**config).to(dev)
    net = distributed.wrap(model)  # DDP under torchrun, the model itself in one process
    steps = epochs * math.ceil(len(train) / batch)
    rows = distributed.local_batch(batch)

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        x = _shift(images[idx], g)  # (B, 1, 8, 8)
        return F.cross_entropy(net(x), labels[idx])

    def sample() -> torch.Tensor:
        return to_device(torch.randint(len(train), (rows,), generator=g), dev)

    return fit(model, loss_fn, sample, steps, lr, progress, desc, weight_decay=0.05, generators=[g])


def rebuild(seed: int = 0) -> str:
    """Train the digits ViT from `seed` on one thread, write data/vit_digits.pt, return a
    one-line summary (the `python -m mmcourse.train vit` target)."""
    with one_thread():
        result = train_vit_digits(seed=seed, device="cpu")
    if not distributed.is_main():
        return ""  # rank 0 writes the file and measures it
    model = result.model
    path = WEIGHTS["vit"].save(model)
    test = DigitsDataset("test")
    acc = accuracy(model, test.images, test.labels)
    return f"wrote {path.name} in {result.seconds:.0f} s; held-out digits accuracy {acc:.4f}"


REBUILDS = {"vit": rebuild}
