"""Video tokenizer (chapter 06): the shipped video tokenizer against chapter 02's image tokenizer
applied frame by frame, on the same held-out moving-shapes clips, one thread.

psnr_db / tokens: the video tokenizer, 8×32×32 clip → 2×8×8 tokens, mean per-clip PSNR.
per_frame_psnr_db / per_frame_tokens: data/tokenizer.pt on each of the 8 frames (8×8×8 tokens).
token_ratio = per_frame_tokens / tokens; attention_ratio = its square (full self-attention over
the clip's tokens); code_usage: fraction of the video codebook used on these clips;
*_ms_per_clip: encode + decode wall time per clip, batches of 100.
"""

from __future__ import annotations

import time

import torch

from mmcourse import video
from mmcourse.env import one_thread
from mmcourse.tokenizer import load_tokenizer

CLIPS = 500


def _ms_per_clip(fn, clips: torch.Tensor) -> float:
    start = time.perf_counter()
    fn(clips)
    return 1000 * (time.perf_counter() - start) / len(clips)


def run() -> dict[str, float | int]:
    with one_thread():
        clips = video.held_out_clips(CLIPS)
        model, image_tokenizer = (
            video.load_video_tokenizer(device="cpu"),
            load_tokenizer(device="cpu"),
        )
        ours = video.evaluate(model, clips)
        base = video.per_frame_evaluate(image_tokenizer, clips)
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
            lambda x: video.evaluate(model, x, batch=100), clips[:200]
        )
        results["per_frame_ms_per_clip"] = _ms_per_clip(
            lambda x: video.per_frame_evaluate(image_tokenizer, x, batch=100), clips[:200]
        )
    return results
