"""Moving shapes: clips of 8 frames of 32×32, one coloured shape gliding in a straight line.

    caption := "a {color} {shape} moving {direction}"     e.g. "a blue square moving right"

The shape moves SPEED pixels per frame and never leaves the frame; labels are
(color, shape, direction) indices into COLORS, SHAPES and DIRECTIONS.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from mmcourse import _validate
from mmcourse.data._draw import SIZE, draw
from mmcourse.data.shapes import COLORS, RADIUS, SHAPES

FRAMES = 8
SPEED = 2.0  # pixels per frame
# Unit steps as (dx, dy), y pointing down.
DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
}


def make_motion_caption(color: str, shape: str, direction: str) -> str:
    """make_motion_caption("blue", "square", "right") → "a blue square moving right"."""
    for attribute, word, vocab in (
        ("color", color, list(COLORS)),
        ("shape", shape, list(SHAPES)),
        ("direction", direction, list(DIRECTIONS)),
    ):
        if word not in vocab:
            raise ValueError(f"unknown {attribute} {word!r}; expected one of {vocab}")
    return f"a {color} {shape} moving {direction}"


class MovingShapesDataset(Dataset):
    """Seeded clips: item i is (x (8, 3, 32, 32) float in [0, 1], labels (3,) long).

    Labels are (color, shape, direction); captions in `.captions`, all clips in `.clips`
    (N, T, 3, 32, 32). The same (n, seed) always gives the same clips.
    """

    size = SIZE
    frames = FRAMES

    def __init__(self, n: int = 2_000, seed: int = 0):
        _validate.positive_int("n", n)
        g = torch.Generator().manual_seed(seed)
        color = torch.randint(len(COLORS), (n,), generator=g)
        shape = torch.randint(len(SHAPES), (n,), generator=g)
        direction = torch.randint(len(DIRECTIONS), (n,), generator=g)
        radius = RADIUS[0] + torch.rand(n, generator=g) * (RADIUS[1] - RADIUS[0])
        step = torch.tensor(list(DIRECTIONS.values()))[direction] * SPEED  # (N, 2)
        travel = SPEED * (FRAMES - 1)
        # Start anywhere that keeps the whole path inside the frame with a 1-pixel margin:
        # along the motion the free span is shorter by `travel`, and a backwards move starts late.
        lo = radius[:, None] + 1  # (N, 1)
        span = SIZE - 2 * lo - travel * step.abs() / SPEED  # (N, 2)
        start = lo + torch.rand(n, 2, generator=g) * span + travel * (step < 0)
        t = torch.arange(FRAMES, dtype=torch.float32)
        centres = start[:, None, :] + t[None, :, None] * step[:, None, :]  # (N, T, 2)

        def per_frame(v: torch.Tensor) -> torch.Tensor:
            return v.repeat_interleave(FRAMES, dim=0)

        palette = torch.tensor(list(COLORS.values()))
        frames = draw(
            per_frame(shape), per_frame(palette[color]), centres.reshape(-1, 2), per_frame(radius)
        )
        self.clips = frames.view(n, FRAMES, 3, SIZE, SIZE)  # (N, T, 3, H, W)
        self.labels = torch.stack([color, shape, direction], dim=1)  # (N, 3)
        names = (list(COLORS), list(SHAPES), list(DIRECTIONS))
        self.captions = [
            make_motion_caption(*(vocab[i] for vocab, i in zip(names, y)))
            for y in self.labels.tolist()
        ]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.clips[i], self.labels[i]
