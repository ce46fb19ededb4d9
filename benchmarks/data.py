"""Course data: how fast Shapes are drawn, and how faithfully the judge reads them.

judge_real is the lowest per-attribute accuracy on held-out images with their own captions
(the judge's floor); judge_shuffled is the same with the captions shuffled, which should sit
near chance (1/6 colour, 1/3 shape, 1/5 position).

Shapes are drawn on the CPU whatever the course device; the judge reads them on the course
device (`mmcourse.device()`), so on a GPU judge_images_per_s includes sending the images over.
"""

from __future__ import annotations

import time

import torch
from _timing import timed, warm_up

from mmcourse import recipes
from mmcourse.data import ShapesDataset

N = 2_000


def run() -> dict[str, float]:
    start = time.perf_counter()
    held_out = ShapesDataset(n=N, seed=1)
    draw_s = time.perf_counter() - start

    judge = recipes.load("judge")
    warm_up(lambda: judge.score(held_out.images[:64], held_out.captions[:64]))
    real, judge_s = timed(lambda: judge.score(held_out.images, held_out.captions))
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(0))
    shuffled = judge.score(held_out.images, [held_out.captions[i] for i in perm])

    attributes = ("color", "shape", "position")
    return {
        "images_per_s": round(N / draw_s),
        "judge_images_per_s": round(N / judge_s),
        "judge_real": round(min(real[a] for a in attributes), 4),
        "judge_real_all": round(real["all"], 4),
        "judge_shuffled": round(min(shuffled[a] for a in attributes), 4),
        "judge_shuffled_all": round(shuffled["all"], 4),
        **{f"judge_shuffled_{a}": round(shuffled[a], 4) for a in attributes},
    }
