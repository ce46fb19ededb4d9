"""Transfusion (chapter 08): the shipped model in both directions, beside chapter 07's
all-discrete model trained on an equal budget, on the course device (`mmcourse.device()`; one
thread on the CPU).

caption_to_image_judge: judge "all" (colour, shape and position right) on PER_CAPTION images of
each of the 90 captions, DDIM transfusion.DDIM_STEPS steps at guidance transfusion.GUIDANCE;
caption_to_image_{color,shape,position} per attribute; caption_to_image_judge_s{S}: "all" at the
other guidance scales in SCALES (s = 1: none), same seed. image_to_caption_exact: the fraction of
500 held-out Shapes (seed 1) whose greedy caption is word for word right.
ch07_caption_to_image_judge / ch07_image_to_caption_exact (and ch07_caption_to_image_{color,
shape,position}): chapter 07's shipped tiny Chameleon on the same captions and held-out images
(64 image ids sampled at τ = 1, no guidance — how it was trained and shipped).
Budget: both models have the same body (GPT d 128, 4 layers, 4 heads, MLP × 3) and were
trained the same number of steps (train_steps, ch07_train_steps); positions_per_step /
ch07_positions_per_step: mean real positions per training batch (Transfusion's batch vs chapter
07's mixed batch of 32), budget_ratio = their ratio (1 = equal).
batch32_caption_to_image_judge / batch32_image_to_caption_exact: the same model trained here
with chapter 07's 32 *sequences* per step instead of its positions (same steps and seed; a
third of the positions, batch32_positions_per_step), to show what the budget is made of.
mot_caption_to_image_judge / mot_image_to_caption_exact: the shipped recipe (same steps, batch,
seed) with modality-specific MLPs (`separate_mlp`, Mixture-of-Transformers style: each position
runs one MLP, so the compute is unchanged; params vs mot_params), trained here.
ms_per_image / ch07_ms_per_image: caption → image wall time per image for one batch of the 90
captions, decoding included, best of REPEATS; forwards_per_image: network calls per image
(DDIM steps × 2 for the caption and null contexts, each over the 16 patches) vs ch07's 64
(one id each, KV cache). At equal quality: ddim_steps_equal, the fewest DDIM steps in EQUAL_STEPS
(tried in order, stopping at the first) whose judge "all" (caption_to_image_judge_equal, same
captions and seed) reaches chapter 07's; ms_per_image_equal its time per image, and
speedup_at_equal_quality = ch07_ms_per_image / ms_per_image_equal.
On a GPU the timings come after the evaluations above (the models' warm-up), with the device
synchronized around the clock, and the batch32_* and mot_* scores are skipped (RETRAIN_SKIPPED
says why; mot_params is then counted on a model built, not trained).
"""

from __future__ import annotations

import torch
from _timing import best_seconds, on_gpu

import mmcourse
from mmcourse import recipes, transfusion, unified
from mmcourse.data import ShapesDataset, all_captions
from mmcourse.env import compute_threads
from mmcourse.recipes import transfusion as tf_recipe
from mmcourse.recipes import unified as unified_recipe

PER_CAPTION = 2
SCALES = (1.0, 2.0, 5.0)  # besides transfusion.GUIDANCE
REPEATS = 3
EQUAL_STEPS = (2, 3, 4, 5, 6, 8, 10, 15, 25)
RETRAIN_SKIPPED = (
    "skipped on a GPU: two 3,000-step retrainings, paced by the CPU's batch assembly, that "
    "score a recipe, not a device (see the CPU table)"
)


def run() -> dict[str, float | int | str]:
    dev = mmcourse.device()
    retrain = not on_gpu(dev)
    with compute_threads(dev):
        results: dict[str, float | int | str] = {}
        model, scale = tf_recipe.load_with_scale(device=dev)
        ch07 = recipes.load("unified", device=dev)
        judge, tokenizer = recipes.load("judge", device=dev), recipes.load("tokenizer", device=dev)
        decode = {"tokenizer": tokenizer, "scale": scale}
        held = tf_recipe.held_out(500)
        results |= tf_recipe.evaluate(model, per_caption=PER_CAPTION, held=held, scale=scale)
        captions = all_captions() * PER_CAPTION
        for s in SCALES:
            images, _ = transfusion.generate_images(model, captions, guidance=s, **decode)
            results[f"caption_to_image_judge_s{s:g}"] = judge.score(images, captions)["all"]
        ch07_scores = unified_recipe.evaluate(ch07, per_caption=PER_CAPTION, n_captions=500)
        results |= {f"ch07_{k}": v for k, v in ch07_scores.items()}

        results["train_steps"] = tf_recipe.TRAIN_STEPS
        results["ch07_train_steps"] = unified_recipe.TRAIN_STEPS
        results["positions_per_step"] = tf_recipe.positions_per_step(tf_recipe.BATCH_SIZE)
        results["ch07_positions_per_step"] = unified_recipe.positions_per_step()
        results["budget_ratio"] = results["positions_per_step"] / results["ch07_positions_per_step"]

        if retrain:
            latents, _ = tf_recipe.course_latents()
            train_captions = ShapesDataset(n=20_000, seed=0).captions
        for prefix, batch, separate in (
            ("batch32", 32, False),
            ("mot", tf_recipe.BATCH_SIZE, True),
        ):
            if not retrain:
                results[f"{prefix}_caption_to_image_judge"] = RETRAIN_SKIPPED
                results[f"{prefix}_image_to_caption_exact"] = RETRAIN_SKIPPED
                continue
            run = tf_recipe.train_transfusion(
                latents, train_captions, steps=tf_recipe.TRAIN_STEPS, batch_size=batch,
                separate_mlp=separate, progress=False, device=dev,
            )  # fmt: skip
            scores = tf_recipe.evaluate(run.model, per_caption=PER_CAPTION, held=held)
            results[f"{prefix}_caption_to_image_judge"] = scores["caption_to_image_judge"]
            results[f"{prefix}_image_to_caption_exact"] = scores["image_to_caption_exact"]
        results["batch32_positions_per_step"] = tf_recipe.positions_per_step(32)
        results["params"] = sum(p.numel() for p in model.parameters())
        mot = run.model if retrain else _untrained_mot(model.patch_dim)
        results["mot_params"] = sum(p.numel() for p in mot.parameters())

        once = all_captions()
        tf_s = best_seconds(
            lambda: transfusion.generate_images(model, once, **decode), REPEATS, dev=dev
        )
        ch07_s = best_seconds(
            lambda: unified.generate_images(ch07, once, tokenizer=tokenizer), REPEATS, dev=dev
        )
        results["ms_per_image"] = 1000 * tf_s / len(once)
        results["ch07_ms_per_image"] = 1000 * ch07_s / len(once)
        for steps in EQUAL_STEPS:  # the fewest DDIM steps as faithful as chapter 07's model
            images, _ = transfusion.generate_images(model, captions, steps=steps, **decode)
            judged = judge.score(images, captions)["all"]
            if judged >= results["ch07_caption_to_image_judge"]:
                break
        few_s = best_seconds(
            lambda: transfusion.generate_images(model, once, steps=steps, **decode),
            REPEATS,
            dev=dev,
        )
        results["ddim_steps_equal"] = steps
        results["caption_to_image_judge_equal"] = judged
        results["ms_per_image_equal"] = 1000 * few_s / len(once)
        results["speedup_at_equal_quality"] = ch07_s / few_s
        results["forwards_per_image"] = 2 * transfusion.DDIM_STEPS
        results["ch07_forwards_per_image"] = 64
    return results


def _untrained_mot(patch_dim: int) -> transfusion.Transfusion:
    """The MoT model's shape without its training: built on the meta device (no memory, no
    random numbers drawn), for counting its parameters."""
    with torch.device("meta"):
        return transfusion.Transfusion(
            tf_recipe.default_config(), patch_dim=patch_dim, separate_mlp=True
        )
