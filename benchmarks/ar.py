"""Autoregressive generation (chapter 05): KV cache vs recomputation, guidance scales, and the
shipped AR model vs chapter 04's DDIM, side by side on the course device (`mmcourse.device()`;
one thread on the CPU).

Samples: every one of the 90 captions PER_CAPTION times (360), no top-k or top-p.
faithfulness_s{S}: judge "all" (colour, shape and position right) at guidance S (s = 1: none),
temperature 1 (the model's own distribution), on the samples of TEST_SEED; diversity_s{S}: mean
pairwise RMS pixel distance between images of the same caption. best_scale: the scale with the
highest faithfulness on *other* samples (VALIDATION_SEED), so that choosing it does not flatter
the reported number; faithfulness_best: TEST_SEED faithfulness at that scale;
cfg_gain_points = 100 × (faithfulness_best − faithfulness_s1).
The same keys with a prefix, for other models and samplers:
hot_*: the final model at temperature HOT (a looser sampler, where guidance has more to fix);
early_*: the early checkpoint of the same training run (data/ar_shapes_early.pt, after
early_steps of its ar_recipe.TRAIN_STEPS steps), a conditional model that has not sharpened yet;
early_plausible_*: the same with the plausibility constraint α = PLAUSIBILITY at every scale
(s = 1 included, where it is plain truncation of the conditional model);
noisy_*: data/ar_shapes_noisy.pt, the shipped recipe trained on pairs of which
ar_recipe.CAPTION_NOISE (caption_noise) carry another image's caption; noisy_plausible_*: that model
with the plausibility constraint α = PLAUSIBILITY at every scale.
kv_identical: the KV cache and recomputing the whole prefix give the same 64 tokens for the same
seed, for every image; kv_speedup = recompute_s / kv_s for KV_IMAGES images (one guided batch of
2 × KV_IMAGES rows, best of 2 runs each); kv1_speedup the same for a single image (best of 5).
forwards_batched_cfg / forwards_separate_cfg: network calls per batch of images with the cond and
uncond rows in one batch vs two separate passes (counted with a forward hook).
ar_ms_per_image / ddim_ms_per_image: wall time per image, AR (KV cache, batched CFG, best scale)
vs DDIM with the fewest steps in DDIM_STEPS whose faithfulness reaches the AR's (ddim_steps_equal;
tried in order, stopping at the first),
chapter 04's pixel model at guidance 3; ar_ms_per_step / ddim_ms_per_step: one network call of
the guided batch (360 rows).
On a GPU each model runs once untimed before its first timing, and the clock is read with the
device synchronized. The sampler's random numbers come from the CPU, so both devices draw the
same uniforms (the tokens can still differ where float rounding moves a logit across a draw).
"""

from __future__ import annotations

from functools import partial

import torch
from _timing import timed, warm_up

import mmcourse
from mmcourse import ar, recipes, sampling
from mmcourse.data import all_captions
from mmcourse.env import compute_threads
from mmcourse.recipes import ar as ar_recipe
from mmcourse.recipes import diffusion as diffusion_recipe

PER_CAPTION = 4
SCALES = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)
HOT = 1.6
PLAUSIBILITY = 0.1
TEST_SEED, VALIDATION_SEED = 0, 1
KV_IMAGES = 8
DDIM_STEPS = (10, 20, 50)
DDIM_GUIDANCE = 3.0


def _count_forwards(model, fn) -> int:
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        fn()
    finally:
        handle.remove()
    return len(calls)


def _kv(model, tokenizer, captions: list[str], reps: int) -> tuple[bool, float]:
    """(identical tokens?, recompute time / cache time) for one guided batch, best of reps."""
    times = {}
    ids = {}
    for use_cache in (True, False):
        best = float("inf")
        sample = partial(
            ar.generate_images, model, tokenizer, captions, scale=3.0, use_cache=use_cache
        )
        warm_up(sample)
        for _ in range(reps):
            (_, tokens), seconds = timed(sample)
            best = min(best, seconds)
        times[use_cache], ids[use_cache] = best, tokens
    return bool(torch.equal(ids[True], ids[False])), times[False] / times[True]


@torch.no_grad()
def _separate_cfg(model, prompts: torch.Tensor) -> None:
    """Guidance with two passes per step (cond, then uncond): what batching saves."""
    b = len(prompts) // 2
    caches = [model.new_cache(), model.new_cache()]
    cond = model(prompts[:b], cache=caches[0])[:, -1]
    uncond = model(prompts[b:], cache=caches[1])[:, -1]
    for _ in range(ar.IMAGE_LEN - 1):
        token = sampling.cfg_logits(cond, uncond, 3.0).argmax(-1, keepdim=True)
        cond = model(token, cache=caches[0])[:, -1]
        uncond = model(token, cache=caches[1])[:, -1]


def _prompts(captions: list[str], dev: torch.device) -> torch.Tensor:
    """The guided batch's prompts (2B, CAPTION_LEN + 1) for `captions`, on `dev`."""
    return ar.guidance_prompts(ar.encode_captions(captions).to(dev))


@torch.no_grad()
def _ar_ms_per_step(model, n: int) -> float:
    """One cached forward of the guided batch (2n rows, one new position each), best of 5."""
    dev = next(model.parameters()).device
    prompts = _prompts(all_captions()[:1] * n, dev)
    token = torch.full((2 * n, 1), ar.IMAGE_OFFSET, device=dev)

    def step_seconds() -> float:
        cache = model.new_cache()
        model(prompts, cache=cache)  # the prefill, untimed
        return timed(partial(model, token, cache=cache), dev)[1]

    warm_up(step_seconds, dev)
    return 1000 * min(step_seconds() for _ in range(5))


@torch.no_grad()
def _ddim_ms_per_step(gen, n: int) -> float:
    """One network call of the guided batch (2n rows), best of 3 after a warm-up."""
    dev = next(gen.model.parameters()).device
    x = torch.randn(2 * n, 3, 32, 32, device=dev)  # timing input: its values do not matter
    t = torch.full((2 * n,), 500, device=dev)
    labels = torch.zeros(2 * n, 3, dtype=torch.long, device=dev)
    gen.model(x, t, labels)
    best = float("inf")
    for _ in range(3):
        _, seconds = timed(partial(gen.model, x, t, labels), dev)
        best = min(best, seconds)
    return 1000 * best


def run() -> dict[str, float | int | bool]:
    dev = mmcourse.device()
    with compute_threads(dev):
        model, tokenizer = recipes.load("ar", device=dev), recipes.load("tokenizer", device=dev)
        early = recipes.load("ar_early", device=dev)
        judge = recipes.load("judge", device=dev)
        results: dict[str, float | int | bool] = {"samples": PER_CAPTION * 90}
        results["early_steps"] = ar_recipe.EARLY_STEPS
        captions = all_captions()[:: 90 // KV_IMAGES][:KV_IMAGES]
        results["kv_identical"], results["kv_speedup"] = _kv(model, tokenizer, captions, 2)
        identical_1, results["kv1_speedup"] = _kv(model, tokenizer, captions[:1], 5)
        results["kv_identical"] = results["kv_identical"] and identical_1
        prompts = _prompts(captions, dev)
        results["forwards_batched_cfg"] = _count_forwards(
            model,
            lambda: sampling.generate(
                model, prompts[:KV_IMAGES], ar.IMAGE_LEN, uncond_prompt=prompts[KV_IMAGES:],
                scale=3.0,
            ),
        )  # fmt: skip
        results["forwards_separate_cfg"] = _count_forwards(
            model, lambda: _separate_cfg(model, prompts)
        )
        noisy = recipes.load("ar_noisy", device=dev)
        results["caption_noise"] = ar_recipe.CAPTION_NOISE
        timings = {}
        warm_up(lambda: ar_recipe.faithfulness(model, tokenizer, judge, per_caption=1))
        for prefix, net, temperature, plausibility in (
            ("", model, 1.0, None),
            ("hot_", model, HOT, None),
            ("early_", early, 1.0, None),
            ("early_plausible_", early, 1.0, PLAUSIBILITY),
            ("noisy_", noisy, 1.0, None),
            ("noisy_plausible_", noisy, 1.0, PLAUSIBILITY),
        ):
            validation = {}
            for scale in SCALES:
                kwargs = {"per_caption": PER_CAPTION, "scale": scale, "temperature": temperature,
                          "plausibility": plausibility}  # fmt: skip
                scores, timings[prefix, scale] = timed(
                    partial(ar_recipe.faithfulness, net, tokenizer, judge, seed=TEST_SEED, **kwargs)
                )
                results[f"{prefix}faithfulness_s{scale:g}"] = scores["all"]
                results[f"{prefix}diversity_s{scale:g}"] = scores["diversity"]
                validation[scale] = ar_recipe.faithfulness(
                    net, tokenizer, judge, seed=VALIDATION_SEED, **kwargs
                )["all"]
            best = max(SCALES, key=lambda s: validation[s])  # chosen on the validation samples
            results[f"{prefix}best_scale"] = best
            results[f"{prefix}faithfulness_best"] = results[f"{prefix}faithfulness_s{best:g}"]
            gain = results[f"{prefix}faithfulness_best"] - results[f"{prefix}faithfulness_s1"]
            results[f"{prefix}cfg_gain_points"] = 100 * gain
        best = results["best_scale"]
        results["ar_ms_per_image"] = 1000 * timings["", best] / results["samples"]
        gen = diffusion_recipe.load_generator(device=dev)
        labels = diffusion_recipe.caption_labels(PER_CAPTION)
        warm_up(lambda: diffusion_recipe.faithfulness(gen, judge, labels[:8], steps=2))
        for steps in DDIM_STEPS:
            (scores, _), seconds = timed(
                partial(
                    diffusion_recipe.faithfulness,
                    gen,
                    judge,
                    labels,
                    steps=steps,
                    guidance=DDIM_GUIDANCE,
                )
            )
            results[f"ddim{steps}_faithfulness"] = scores["all"]
            results[f"ddim{steps}_ms_per_image"] = 1000 * seconds / len(labels)
            if scores["all"] >= results["faithfulness_best"]:
                results["ddim_steps_equal"] = steps
                break
        steps = results.setdefault("ddim_steps_equal", DDIM_STEPS[-1])
        results["ddim_ms_per_image"] = results[f"ddim{steps}_ms_per_image"]
        results["ar_vs_ddim_speedup"] = results["ddim_ms_per_image"] / results["ar_ms_per_image"]
        results["ar_ms_per_step"] = _ar_ms_per_step(model, results["samples"])
        results["ddim_ms_per_step"] = _ddim_ms_per_step(gen, results["samples"])
    return results
