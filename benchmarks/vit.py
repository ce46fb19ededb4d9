"""ViT patches and fusion (chapter 03): the shipped models on held-out data, and the patch
embedding as Linear vs Conv2d.

digits_acc: data/vit_digits.pt on the 360 held-out digits.
retrieval_top1: data/clip_shapes.pt, image → caption among all 90 captions of the grammar, on
1,000 held-out Shapes images (seed 1).
caption_exact: data/captioner_shapes.pt, greedy captions equal word for word, same images.
patch_embed_max_error: largest |Linear(patchify(x)) − Conv2d(x)| with permuted weights in float64
(the bar: ≤ 1e-6), and patch_embed_max_error_fp32 in float32 (rounding of 768-term sums), at
ViT-B/16 sizes (32 images of 3×224×224, P = 16, D = 768).
conv_speedup: Linear-form time / Conv2d-form time on those sizes (> 1: the Conv2d is faster),
best of REPEAT runs each, measured side by side.

Everything runs on the course device (`mmcourse.device()`): on the CPU on one thread, on a GPU
with both forms in IEEE float32 (TF32 off for cuDNN's convolutions as for the matmul, so that
the fp32 error is float32's and the two timings do the same arithmetic).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from _timing import best_seconds, on_gpu

import mmcourse
from mmcourse import fusion, patches, recipes, vit
from mmcourse.data import DigitsDataset, ShapesDataset
from mmcourse.env import compute_threads

REPEAT = 5
BATCH, SIZE, PATCH, DIM = 32, 224, 16, 768


@contextmanager
def _ieee_fp32(dev: torch.device) -> Iterator[None]:
    """On a GPU, float32 matmuls and convolutions without TF32 for the block (cuDNN allows
    TF32 by default, cuBLAS not); on the CPU, nothing to change. Only flags that are on are
    touched, and they are restored afterwards."""
    backends = [torch.backends.cudnn, torch.backends.cuda.matmul] if on_gpu(dev) else []
    switched = [b for b in backends if b.allow_tf32]
    for backend in switched:
        backend.allow_tf32 = False
    try:
        yield
    finally:
        for backend in switched:
            backend.allow_tf32 = True


@torch.no_grad()
def _patch_embedding(dev: torch.device, batch: int = BATCH) -> dict[str, float]:
    torch.manual_seed(0)
    embed = patches.PatchEmbed(PATCH, 3, DIM)
    conv = embed.to_conv()
    x = torch.rand(batch, 3, SIZE, SIZE)  # drawn on the CPU: the same input on every device
    x64, embed64 = x.double(), patches.PatchEmbed(PATCH, 3, DIM).double()
    embed64.load_state_dict(embed.state_dict())
    embed, conv, embed64 = embed.to(dev), conv.to(dev), embed64.to(dev)
    x, x64 = x.to(dev), x64.to(dev)
    with _ieee_fp32(dev):
        error = (embed(x) - conv(x).flatten(2).transpose(1, 2)).abs().max().item()
        error64 = (embed64(x64) - embed64.to_conv()(x64).flatten(2).transpose(1, 2)).abs().max()
        linear_s = best_seconds(lambda: embed(x), REPEAT, warmup=True, dev=dev)
        conv_s = best_seconds(
            lambda: conv(x).flatten(2).transpose(1, 2), REPEAT, warmup=True, dev=dev
        )
    return {
        "patch_embed_max_error": error64.item(),
        "patch_embed_max_error_fp32": error,
        "linear_ms": 1000 * linear_s,
        "conv_ms": 1000 * conv_s,
        "conv_speedup": linear_s / conv_s,
    }


def run() -> dict[str, float | int]:
    dev = mmcourse.device()
    with compute_threads(dev):
        digits = DigitsDataset("test")
        shapes = ShapesDataset(n=1_000, seed=1)
        results = {
            "digits_acc": vit.accuracy(
                recipes.load("vit", device=dev), digits.images, digits.labels
            ),
            "retrieval_top1": fusion.retrieval_top1(
                recipes.load("clip", device=dev), shapes.images, shapes.captions
            ),
            "retrieval_candidates": 90,
            "caption_exact": fusion.caption_exact_match(
                recipes.load("captioner", device=dev), shapes.images, shapes.captions
            ),
        }
        results |= _patch_embedding(dev)
    return results
