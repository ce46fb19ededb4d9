"""Video tokenizer (chapter 06): the shipped video tokenizer against chapter 02's image tokenizer
applied frame by frame, on the same held-out moving-shapes clips, on the course device
(`mmcourse.device()`; one thread on the CPU).

psnr_db / tokens: the video tokenizer, 8×32×32 clip → 2×8×8 tokens, mean per-clip PSNR.
per_frame_psnr_db / per_frame_tokens: data/tokenizer.pt on each of the 8 frames (8×8×8 tokens).
token_ratio = per_frame_tokens / tokens; attention_ratio = its square (full self-attention over
the clip's tokens); code_usage: fraction of the video codebook used on these clips;
*_ms_per_clip: encode + decode wall time per clip, batches of 100 (on a GPU after the
evaluations above have warmed both models up, the device synchronized around the clock).
"""

from __future__ import annotations

import torch
from _timing import timed

import mmcourse
from mmcourse import recipes
from mmcourse.env import compute_threads
from mmcourse.recipes import video as video_recipe

CLIPS = 500


def _ms_per_clip(fn, clips: torch.Tensor) -> float:
    _, seconds = timed(lambda: fn(clips))
    return 1000 * seconds / len(clips)


def run() -> dict[str, float | int]:
    dev = mmcourse.device()
    with compute_threads(dev):
        clips = video_recipe.held_out_clips(CLIPS)
        model = recipes.load("video", device=dev)
        image_tokenizer = recipes.load("tokenizer", device=dev)
        ours = video_recipe.evaluate(model, clips)
        base = video_recipe.per_frame_evaluate(image_tokenizer, clips)
        results: dict[str, float | int] = {
            "clips": CLIPS,
            "psnr_db": ours["psnr_db"],
            "tokens": ours["tokens"],
            "per_frame_psnr_db": base["psnr_db"],
            "per_frame_tokens": base["tokens"],
            "token_ratio": base["tokens"] / ours["tokens"],
            "attention_ratio": (base["tokens"] / ours["tokens"]) ** 2,
            "code_usage": ours["code_usage"],
        }
        results["video_ms_per_clip"] = _ms_per_clip(
            lambda x: video_recipe.evaluate(model, x, batch=100), clips[:200]
        )
        results["per_frame_ms_per_clip"] = _ms_per_clip(
            lambda x: video_recipe.per_frame_evaluate(image_tokenizer, x, batch=100), clips[:200]
        )
    return results
