"""The image tokenizer (chapter 02): how well the shipped data/tokenizer.pt reconstructs, how many
of its codes it uses, how much it compresses, and how long its training takes on this machine.

psnr_db, code_usage, perplexity: on 2,000 held-out Shapes images (seed 1; training used seed 0).
digits_psnr_db: on the 360 held-out real digits, which the tokenizer never saw: each 8×8 gray
digit is upsampled bilinearly to 32×32 and repeated over the 3 colour channels.
compression_ratio: bits in (32·32·3 pixels of 8 bits) / bits out (64 tokens of log2 K bits).
train_ms_per_step: TIMED_STEPS steps of the shipped recipe, timed in blocks of BLOCK steps; the
median block, so that a burst of other work on the machine does not count.
train_s: that per-step time extrapolated to the checkpoint's full run of TRAIN_STEPS steps
(rebuilding it, `python -m mmcourse.train tokenizer`, also draws 20,000 images first).
Everything runs on the course device (`mmcourse.device()`), with torch's own thread count (the
training's pace on this machine as a learner meets it). Each timestamp follows the training
log's read-back of that step's losses, which waits for a GPU, so the blocks time finished work.
"""

from __future__ import annotations

import time

import torch

from mmcourse import recipes, tokenizer
from mmcourse.data import DigitsDataset, ShapesDataset
from mmcourse.recipes import tokenizer as tokenizer_recipe

N_HELD_OUT = 2_000
TIMED_STEPS, BLOCK = 100, 10
TRAIN_STEPS = tokenizer_recipe.TRAIN_STEPS


def run() -> dict[str, float | int]:
    model = recipes.load("tokenizer")
    shapes = tokenizer_recipe.evaluate(model, ShapesDataset(n=N_HELD_OUT, seed=1).images)
    digits = DigitsDataset("test", size=32).images.repeat(1, 3, 1, 1)  # (360, 3, 32, 32)
    tokens = model.encode(digits[:1].to(next(model.parameters())))  # (1, 8, 8)

    ms_per_step = _ms_per_step(model.config)

    return {
        "psnr_db": shapes["psnr_db"],
        "code_usage": shapes["code_usage"],
        "perplexity": shapes["perplexity"],
        "digits_psnr_db": tokenizer_recipe.evaluate(model, digits)["psnr_db"],
        "num_codes": model.num_codes,
        "tokens_per_image": tokens[0].numel(),
        "compression_ratio": tokenizer.compression_ratio(
            (3, 32, 32), tokens.shape[1:], model.num_codes
        ),
        "train_ms_per_step": ms_per_step,
        "train_s": ms_per_step * TRAIN_STEPS / 1000,
    }


def _ms_per_step(config: dict) -> float:
    """Median milliseconds per training step over blocks of BLOCK steps (timestamps taken by the
    training log, which runs every BLOCK steps after the step's update)."""
    stamps = []
    tokenizer_recipe.train_tokenizer(
        steps=TIMED_STEPS + 1,
        n_images=1_000,
        log=lambda _: stamps.append(time.perf_counter()),
        log_every=BLOCK,
        **config,
    )
    blocks = torch.tensor(stamps, dtype=torch.float64).diff()  # (TIMED_STEPS / BLOCK,) seconds
    return 1000 * blocks.median().item() / BLOCK
