"""Diffusion (chapter 04): the shipped models judged on every caption, guidance scales, and DDPM
vs DDIM measured side by side on the same labels, on the course device (`mmcourse.device()`;
one thread on the CPU).

Samples: every one of the 90 captions PER_CAPTION times (180), one seed; DDIM η = 0.
faithfulness_s{S}: judge "all" (colour, shape and position right) with DDIM 50 at guidance S.
faithfulness_best / best_guidance: the best of those scales (chosen on these same samples).
ddpm1000_* and ddim{50,20}_*: at the best scale; every sampler run in full (no extrapolation),
`*_s` its wall time for all samples, `ddim50_speedup` = ddpm1000_s / ddim50_s,
`ddim50_drop_points` = 100 × (ddpm1000 − ddim50 faithfulness), > 0 when DDIM is worse.
latent_*: the latent model (tokenizer latents 16×8×8), DDIM 50 at the same scale, decode
included in its time; `*_ms_per_step` = network time per step for the whole batch.
On a GPU every timed run comes after an untimed warm-up of the same model, and the clock is read
with the device synchronized. The starting noise is drawn on the CPU, so both devices sample
from the same x_T.
"""

from __future__ import annotations

from functools import partial

import torch
from _timing import best_seconds, timed, warm_up

import mmcourse
from mmcourse import recipes
from mmcourse.env import compute_threads
from mmcourse.recipes import diffusion as diffusion_recipe

PER_CAPTION = 2
SCALES = (1.0, 2.0, 3.0, 5.0)


def run() -> dict[str, float | int]:
    dev = mmcourse.device()
    with compute_threads(dev):
        gen, judge = diffusion_recipe.load_generator(device=dev), recipes.load("judge", device=dev)
        labels = diffusion_recipe.caption_labels(PER_CAPTION)
        results: dict[str, float | int] = {"samples": len(labels)}
        for scale in SCALES:
            scores, _ = diffusion_recipe.faithfulness(gen, judge, labels, steps=50, guidance=scale)
            results[f"faithfulness_s{scale:g}"] = scores["all"]
        best = max(SCALES, key=lambda s: results[f"faithfulness_s{s:g}"])
        results["best_guidance"] = best
        results["faithfulness_best"] = results[f"faithfulness_s{best:g}"]
        # (on a GPU the guidance sweep above was the pixel model's warm-up)
        for name, steps in [("ddpm1000", None), ("ddim50", 50), ("ddim20", 20)]:
            sample = partial(
                diffusion_recipe.faithfulness, gen, judge, labels, steps=steps, guidance=best
            )
            (scores, _), seconds = timed(sample)
            results[f"{name}_faithfulness"] = scores["all"]
            results[f"{name}_s"] = seconds
            for attribute in ("color", "shape", "position"):
                results[f"{name}_{attribute}"] = scores[attribute]
        results["ddim50_speedup"] = results["ddpm1000_s"] / results["ddim50_s"]
        results["ddim20_speedup"] = results["ddpm1000_s"] / results["ddim20_s"]
        for name in ("ddim50", "ddim20"):
            drop = results["ddpm1000_faithfulness"] - results[f"{name}_faithfulness"]
            results[f"{name}_drop_points"] = 100 * drop
        latent = diffusion_recipe.load_generator("diffusion_latent", device=dev)
        tokenizer = recipes.load("tokenizer", device=dev)
        warm_up(
            lambda: diffusion_recipe.faithfulness(
                latent, judge, labels[:8], steps=2, guidance=best, tokenizer=tokenizer
            )
        )
        (scores, _), seconds = timed(
            lambda: diffusion_recipe.faithfulness(
                latent, judge, labels, steps=50, guidance=best, tokenizer=tokenizer
            )
        )
        results["latent_faithfulness"] = scores["all"]
        results["latent_ddim50_s"] = seconds
        results["pixel_ms_per_step"] = _ms_per_step(gen, len(labels), (3, 32, 32))
        results["latent_ms_per_step"] = _ms_per_step(latent, len(labels), (16, 8, 8))
        results["latent_scale"] = latent.latent_scale
    return results


@torch.no_grad()
def _ms_per_step(gen: diffusion_recipe.Generator, n: int, shape: tuple[int, ...]) -> float:
    """One guided network call (2n rows: conditional and unconditional), best of 5."""
    param = next(gen.model.parameters())
    x = torch.randn(2 * n, *shape).to(param)
    t = torch.full((2 * n,), 500, device=param.device)
    labels = torch.zeros(2 * n, 3, dtype=torch.long, device=param.device)
    return 1000 * best_seconds(lambda: gen.model(x, t, labels), 5, warmup=True, dev=param.device)
