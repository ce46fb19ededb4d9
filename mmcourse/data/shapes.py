"""Shapes: 32×32 RGB images of one coloured shape, each with a caption from a tiny grammar.

    caption := "a {color} {shape} in the {position}"      e.g. "a red circle in the top left"

6 colours × 3 shapes × 5 positions = 90 captions. Every image also carries its labels
(color, shape, position) as indices into COLORS, SHAPES and POSITIONS, so a generated image's
faithfulness to its caption can be measured (see `mmcourse.judge`).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from mmcourse import _validate
from mmcourse.data._draw import SIZE, draw

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.15, 0.15),
    "green": (0.15, 0.75, 0.20),
    "blue": (0.20, 0.40, 1.00),
    "yellow": (0.95, 0.85, 0.10),
    "purple": (0.65, 0.25, 0.90),
    "cyan": (0.10, 0.85, 0.90),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Region centres as (x, y) in pixels, y pointing down.
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (8.0, 8.0),
    "top right": (24.0, 8.0),
    "bottom left": (8.0, 24.0),
    "bottom right": (24.0, 24.0),
    "center": (16.0, 16.0),
}
ATTRIBUTES: tuple[str, ...] = ("color", "shape", "position")  # column order of the labels
RADIUS = (4.0, 6.0)  # size jitter: shape half-extent in pixels, uniform in this range
JITTER = 1.5  # position jitter: ± pixels around the region centre

_VOCAB: dict[str, list[str]] = {
    "color": list(COLORS),
    "shape": list(SHAPES),
    "position": list(POSITIONS),
}


def make_caption(color: str, shape: str, position: str) -> str:
    """The caption of one image: make_caption("red", "circle", "top left") →
    "a red circle in the top left"."""
    parse_caption(f"a {color} {shape} in the {position}")  # validates each word
    return f"a {color} {shape} in the {position}"


def parse_caption(caption: str) -> dict[str, str]:
    """Read the attributes back from a caption of the grammar.

    "a red circle in the top left" → {"color": "red", "shape": "circle", "position": "top left"}.
    Raises ValueError for anything outside the grammar, naming what was expected.
    """
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a str, got {type(caption).__name__}")
    words = caption.split(" ")
    if len(words) < 6 or words[0] != "a" or words[3:5] != ["in", "the"]:
        raise ValueError(
            f"caption must read 'a <color> <shape> in the <position>', got {caption!r}"
        )
    parsed = {"color": words[1], "shape": words[2], "position": " ".join(words[5:])}
    for attribute, word in parsed.items():
        if word not in _VOCAB[attribute]:
            raise ValueError(
                f"unknown {attribute} {word!r} in caption {caption!r}; "
                f"expected one of {_VOCAB[attribute]}"
            )
    return parsed


def caption_to_labels(caption: str) -> torch.Tensor:
    """Caption → (3,) long tensor of indices (color, shape, position)."""
    parsed = parse_caption(caption)
    return torch.tensor([_VOCAB[a].index(parsed[a]) for a in ATTRIBUTES])


def _check_labels(labels: object, shape: tuple) -> torch.Tensor:
    """Labels must be long indices (…, 3) within each attribute's vocabulary."""
    labels = _validate.tensor("labels", labels, shape=shape, dtype=torch.long)
    for i, attribute in enumerate(ATTRIBUTES):
        column, k = labels[..., i], len(_VOCAB[attribute])
        bad = column[(column < 0) | (column >= k)]
        if len(bad):
            raise ValueError(f"{attribute} index must be in [0, {k}), got {bad[0].item()}")
    return labels


def labels_to_caption(labels: torch.Tensor) -> str:
    """(3,) indices (color, shape, position) → caption."""
    labels = _check_labels(labels, shape=(3,))
    return make_caption(*(_VOCAB[a][i] for a, i in zip(ATTRIBUTES, labels.tolist())))


def all_captions() -> list[str]:
    """Every caption of the grammar, in label order (colour slowest, position fastest)."""
    return [make_caption(c, s, p) for c in COLORS for s in SHAPES for p in POSITIONS]


def render(labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw images for given labels (N, 3), with seeded size and position jitter.

    Returns (N, 3, 32, 32) float32 in [0, 1].
    """
    labels = _check_labels(labels, shape=("N", 3))
    n = len(labels)
    palette = torch.tensor(list(COLORS.values()))  # (6, 3)
    centres = torch.tensor(list(POSITIONS.values()))  # (5, 2)
    jitter = (torch.rand(n, 2, generator=generator) * 2 - 1) * JITTER
    radius = RADIUS[0] + torch.rand(n, generator=generator) * (RADIUS[1] - RADIUS[0])
    return draw(labels[:, 1], palette[labels[:, 0]], centres[labels[:, 2]] + jitter, radius)


def sample_labels(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, 3) uniformly random attribute indices (color, shape, position)."""
    sizes = [len(_VOCAB[a]) for a in ATTRIBUTES]
    return torch.stack([torch.randint(k, (n,), generator=generator) for k in sizes], dim=1)


def _label_index(labels: torch.Tensor) -> torch.Tensor:
    """(N, 3) labels → (N,) index into all_captions()."""
    n_shapes, n_positions = len(SHAPES), len(POSITIONS)
    return (labels[:, 0] * n_shapes + labels[:, 1]) * n_positions + labels[:, 2]


class ShapesDataset(Dataset):
    """Seeded Shapes images: item i is (x (3, 32, 32) float in [0, 1], labels (3,) long).

    The same (n, seed) always gives the same images. Convention in the course: seed 0 for
    training, seed 1 for held-out evaluation. Captions are in `.captions`, all images at once in
    `.images` (N, 3, 32, 32) and all labels in `.labels` (N, 3).
    """

    size = SIZE

    def __init__(self, n: int = 10_000, seed: int = 0):
        _validate.positive_int("n", n)
        g = torch.Generator().manual_seed(seed)
        self.labels = sample_labels(n, g)  # (N, 3)
        self.images = render(self.labels, g)  # (N, 3, 32, 32)
        table = all_captions()  # label order: index = (c · 3 + s) · 5 + p
        self.captions = [table[i] for i in _label_index(self.labels).tolist()]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]
