"""Recipes: what each chapter does with its models, kept apart from the models themselves.

`mmcourse/<idea>.py` holds a model and the math its chapter teaches; `mmcourse/recipes/<idea>.py`
holds the experiments run with it: data caches, training runs, evaluations, and the rebuild of
its shipped weights. Recipes import models and `mmcourse.trainer`; models never import recipes.

Every shipped weight file has one name, the same for loading and for rebuilding:

    from mmcourse import recipes
    judge = recipes.load("judge")            # data/judge.pt, eval mode, the course's device
    recipes.WEIGHTS["judge"].path            # where it lives
    python -m mmcourse.train judge           # how it is rebuilt from its seed
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mmcourse.checkpoints import Weights
from mmcourse.recipes import (
    ar,
    diffusion,
    evaluation,
    fusion,
    judge,
    retrieval,
    scaling,
    tokenizer,
    transfusion,
    unified,
    video,
    vit,
)

_CHAPTERS = (
    judge,
    tokenizer,
    vit,
    fusion,
    diffusion,
    ar,
    video,
    unified,
    transfusion,
    evaluation,
    scaling,
    retrieval,
)
WEIGHTS: dict[str, Weights] = {k: w for r in _CHAPTERS for k, w in r.WEIGHTS.items()}
REBUILDS: dict = {k: f for r in _CHAPTERS for k, f in r.REBUILDS.items()}

__all__ = [
    "WEIGHTS",
    "REBUILDS",
    "load",
    "ar",
    "diffusion",
    "evaluation",
    "fusion",
    "judge",
    "retrieval",
    "scaling",
    "tokenizer",
    "transfusion",
    "unified",
    "video",
    "vit",
]


def load(
    name: str, *, path: Path | str | None = None, device: torch.device | str | None = None
) -> nn.Module:
    """The shipped model `name` (one of `WEIGHTS`), in eval mode on `device` (default: the
    course's); `path` reads another file of the same model (a copy, an earlier checkpoint)."""
    if name not in WEIGHTS:
        raise ValueError(f"no shipped weights named {name!r}; the names are {sorted(WEIGHTS)}")
    return WEIGHTS[name].load(path, device)
