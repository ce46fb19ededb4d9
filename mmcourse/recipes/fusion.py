"""Chapter 03's fusion recipe: training CLIP (batches of distinct captions) and the captioner
on its frozen image encoder, and the rebuilds of their shipped weights.

python -m mmcourse.train clip        # data/clip_shapes.pt (≈ 15 s)
python -m mmcourse.train captioner   # data/captioner_shapes.pt (reads data/clip_shapes.pt)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mmcourse import distributed
from mmcourse.checkpoints import Weights
from mmcourse.data import ShapesDataset, all_captions
from mmcourse.env import device as default_device
from mmcourse.env import one_thread, to_device
from mmcourse.fusion import CLIP, Captioner, caption_exact_match, encode_captions, retrieval_top1
from mmcourse.recipes import vit as vit_recipe
from mmcourse.trainer import TrainResult
from mmcourse.vit import ViT


def _captioner(config: dict) -> Captioner:
    return Captioner(ViT(**config.pop("vision")), **config)


WEIGHTS = {
    "clip": Weights("clip_shapes.pt", CLIP, command="python -m mmcourse.train clip"),
    "captioner": Weights(
        "captioner_shapes.pt",
        Captioner,
        command="python -m mmcourse.train captioner",
        build=_captioner,
    ),
}


def _distinct_caption_batches(
    data: ShapesDataset, batch: int, g: torch.Generator
) -> Callable[[], torch.Tensor]:
    """A sampler of image indices whose captions are all different: a contrastive batch then
    holds no false negatives (two images of the same caption). Drawn on the CPU by `g`."""
    caption_ids = torch.tensor([all_captions().index(c) for c in data.captions])
    groups = [torch.nonzero(caption_ids == k).flatten() for k in range(len(all_captions()))]
    groups = [gr for gr in groups if len(gr)]
    batch = min(batch, len(groups))

    def sample() -> torch.Tensor:
        chosen = torch.randperm(len(groups), generator=g)[:batch].tolist()
        picks = torch.randint(1 << 30, (batch,), generator=g).tolist()
        return torch.stack([groups[k][p % len(groups[k])] for k, p in zip(chosen, picks)])

    return sample


def train_clip(
    seed: int = 0,
    steps: int = 400,
    batch: int = 64,
    lr: float = 2e-3,
    n_images: int = 5_000,
    progress: bool = False,
    device: torch.device | str | None = None,
    **config: int,
) -> TrainResult:
    """Train CLIP on Shapes (seed 0) with batches of distinct captions, on `device` (default:
    the course's); the batches are drawn on the CPU (the same on every device) and sent over
    without waiting for the GPU. Under torchrun each rank draws its share of the batch, and the
    contrastive loss compares the images and captions of a rank's own rows."""
    batch = distributed.local_batch(batch)

    def batches(data: ShapesDataset, g: torch.Generator) -> Callable[[], torch.Tensor]:
        return _distinct_caption_batches(data, batch, g)

    return _fit_on_captions(lambda: CLIP(**config), batches, seed, steps, lr, n_images,
                            progress, "CLIP", device)  # fmt: skip


def train_captioner(
    vision: ViT,
    seed: int = 0,
    steps: int = 400,
    batch: int = 64,
    lr: float = 2e-3,
    n_images: int = 5_000,
    progress: bool = False,
    device: torch.device | str | None = None,
    **config: int,
) -> TrainResult:
    """Train projector and decoder on Shapes (seed 0) to caption through the frozen `vision`,
    on `device` (default: the course's; the captioner holds its own copy of `vision`). Under
    torchrun each rank draws its share of the batch."""
    batch = distributed.local_batch(batch)

    def batches(data: ShapesDataset, g: torch.Generator) -> Callable[[], torch.Tensor]:
        return lambda: torch.randint(len(data), (batch,), generator=g)

    return _fit_on_captions(lambda: Captioner(vision, **config), batches, seed, steps, lr,
                            n_images, progress, "captioner", device)  # fmt: skip


def _fit_on_captions(
    build: Callable[[], nn.Module],
    batches: Callable[[ShapesDataset, torch.Generator], Callable[[], torch.Tensor]],
    seed: int,
    steps: int,
    lr: float,
    n_images: int,
    progress: bool,
    desc: str,
    device: torch.device | str | None,
) -> TrainResult:
    """CLIP's and the captioner's run: Shapes images with their caption ids on the device, the
    model from `build()`, trained on `model.loss(images, ids)` of the index batches that
    `batches(data, generator)` draws (on the CPU, the same on every device; each rank its own
    under torchrun)."""
    dev = torch.device(device) if device is not None else default_device()
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(distributed.rank_seed(seed))
    data = ShapesDataset(n=n_images, seed=0)
    images, ids = data.images.to(dev), encode_captions(data.captions).to(dev)  # (n, L) ids
    model = build().to(dev)
    net = distributed.wrap(model, method="loss")  # DDP's forward is model.loss
    draw = batches(data, g)
    return vit_recipe.fit(
        model,
        lambda idx: net(images[idx], ids[idx]),
        lambda: to_device(draw(), dev),
        steps,
        lr,
        progress,
        desc,
        generators=[g],
    )


def rebuild_clip(seed: int = 0) -> str:
    """Train CLIP from `seed` on one thread, write data/clip_shapes.pt, return a one-line summary
    (the `python -m mmcourse.train clip` target)."""
    with one_thread():
        result = train_clip(seed=seed, device="cpu")
    if not distributed.is_main():
        return ""  # rank 0 writes the file and measures it
    model = result.model
    path = WEIGHTS["clip"].save(model)
    held_out = ShapesDataset(n=1_000, seed=1)
    top1 = retrieval_top1(model, held_out.images, held_out.captions)
    return (
        f"wrote {path.name} in {result.seconds:.0f} s; held-out image→caption top-1 "
        f"among the 90 captions {top1:.4f}"
    )


def rebuild_captioner(seed: int = 0) -> str:
    """Train the captioner from `seed` on one thread, on the frozen image encoder of
    data/clip_shapes.pt; write data/captioner_shapes.pt and return a one-line summary (the
    `python -m mmcourse.train captioner` target)."""
    with one_thread():
        clip = WEIGHTS["clip"].load(device="cpu")
        result = train_captioner(clip.image_encoder, seed=seed, device="cpu")
    if not distributed.is_main():
        return ""  # rank 0 writes the file and measures it
    model = result.model
    path = WEIGHTS["captioner"].save(model)
    held_out = ShapesDataset(n=1_000, seed=1)
    exact = caption_exact_match(model, held_out.images, held_out.captions)
    return f"wrote {path.name} in {result.seconds:.0f} s; held-out caption exact match {exact:.4f}"


REBUILDS = {"clip": rebuild_clip, "captioner": rebuild_captioner}
