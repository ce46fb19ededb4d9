"""A unified vocabulary (chapter 07): the shipped tiny Chameleon in both directions, the
lossless token round trip, the mixing loader's ratios, and a small mixing-ratio sweep, on the
course device (`mmcourse.device()`; one thread on the CPU).

caption_to_image_judge: judge "all" (colour, shape and position right) on PER_CAPTION images for
each of the 90 captions, sampled after [BOS] caption [BOI] with only image ids allowed, at
temperature recipes.unified.TEMPERATURE; caption_to_image_{color,shape,position} per attribute.
image_to_caption_exact: fraction of 500 held-out Shapes (seed 1) whose greedy caption (text ids
and EOS only) equals the true caption word for word. eval_s: time of both evaluations (on a GPU
after an untimed warm-up on a few captions, the device synchronized around the clock).
round_trip_exact: fraction of ROUND_TRIPS random documents (text, image and video segments in
random order) whose ids → segments → ids come back identical; tokenizer_round_trip_exact: the
same for documents of real captions, Shapes images and moving-shapes clips through the shipped
tokenizers (items → ids → segments → ids).
ratio_max_gap: the largest |measured − configured| fraction over RATIO_BATCHES batches of the
course loader (batch 32); ratio_gap_sigmas: that gap in binomial standard errors.
sweep_s{S}_*: a SMALLER budget, not the shipped model: a 2-layer d=64 GPT trained SWEEP_STEPS
steps of batch 16 whose paired examples are a share S caption → image (the rest image → caption);
_judge and _exact as above on 90 captions (one image each) and 200 held-out images, and the
teacher-forced held-out cross-entropies of each direction on those 200 images: _image_loss (the
64 image ids after [BOS] caption [BOI]) and _caption_loss (the caption after [BOS] [BOI] image
[EOI]), which move long before the samples get good.
"""

from __future__ import annotations

import math

import torch
from _timing import timed, warm_up

import mmcourse
from mmcourse import recipes, unified, vocab
from mmcourse.data import MovingShapesDataset, ShapesDataset
from mmcourse.env import compute_threads
from mmcourse.recipes import unified as unified_recipe

PER_CAPTION = 2
ROUND_TRIPS = 200
RATIO_BATCHES = 200
SWEEP_STEPS = 400


def _random_document(g: torch.Generator, v: vocab.Vocabulary) -> list[vocab.Segment]:
    out = []
    for _ in range(int(torch.randint(1, 6, (1,), generator=g))):
        kind = ["text", "image", "video"][int(torch.randint(3, (1,), generator=g))]
        if kind == "text":
            n = int(torch.randint(1, 8, (1,), generator=g))
            out.append(vocab.Segment("text", torch.randint(v.text_size, (n,), generator=g)))
        elif kind == "image":
            codes = torch.randint(v.image_codes, vocab.IMAGE_GRID, generator=g)
            out.append(vocab.Segment("image", codes))
        else:
            codes = torch.randint(v.video_codes, vocab.VIDEO_GRID, generator=g)
            out.append(vocab.Segment("video", codes))
    return out


def run() -> dict[str, float | int]:
    dev = mmcourse.device()
    with compute_threads(dev):
        v = vocab.course_vocab()
        model = recipes.load("unified", device=dev)
        warm_up(
            lambda: unified_recipe.evaluate(model, per_caption=1, held=unified_recipe.held_out(8))
        )
        scores, eval_s = timed(
            lambda: unified_recipe.evaluate(model, per_caption=PER_CAPTION, n_captions=500)
        )
        results: dict[str, float | int] = {**scores, "eval_s": eval_s}

        g = torch.Generator().manual_seed(0)
        same = 0
        for _ in range(ROUND_TRIPS):
            ids = vocab.encode_interleaved(_random_document(g, v), v)
            back = vocab.encode_interleaved(vocab.decode_interleaved(ids, v), v)
            same += bool(torch.equal(back, ids))
        results["round_trip_exact"] = same / ROUND_TRIPS
        images, clips = ShapesDataset(n=20, seed=7), MovingShapesDataset(n=20, seed=7)
        tokenizers = {
            "tokenizer": recipes.load("tokenizer", device=dev),
            "video_tokenizer": recipes.load("video", device=dev),
        }
        same = 0
        for i in range(20):
            doc = [images.captions[i], images.images[i], clips.captions[i], clips.clips[i]]
            ids = unified.encode_document(doc, **tokenizers)
            back = vocab.encode_interleaved(vocab.decode_interleaved(ids, v), v)
            same += bool(torch.equal(back, ids))
        results["tokenizer_round_trip_exact"] = same / 20

        loader = unified_recipe.make_loader(batch_size=32)
        measured = vocab.measure_ratios(loader, RATIO_BATCHES)
        n = RATIO_BATCHES * 32
        gaps = {k: abs(measured[k] - r) for k, r in loader.ratios.items()}
        worst = max(gaps, key=gaps.get)
        r = loader.ratios[worst]
        results["ratio_max_gap"] = gaps[worst]
        results["ratio_gap_sigmas"] = gaps[worst] / math.sqrt(r * (1 - r) / n)

        for row in unified_recipe.ratio_sweep(steps=SWEEP_STEPS, progress=False, device=dev):
            s = f"sweep_s{row['caption_image_share']:g}"
            results[f"{s}_judge"] = row["caption_to_image_judge"]
            results[f"{s}_exact"] = row["image_to_caption_exact"]
            results[f"{s}_image_loss"] = row["image_loss"]
            results[f"{s}_caption_loss"] = row["caption_loss"]
    return results
