"""The judge: reads colour, shape and position back from a 32×32 image.

A generated image is faithful to its caption when the judge reads the caption's attributes from
it. The judge is a small CNN with one classification head per attribute, trained on Shapes with
blur, noise and colour jitter so that it also reads imperfect, generated images. Its training
recipe is mmcourse/recipes/judge.py; its weights ship in data/judge.pt
(`recipes.load("judge")`), rebuilt from the seed by `python -m mmcourse.train judge`.

Faithfulness per attribute = fraction of images whose attribute the judge reads as the caption
says; "all" = fraction with every attribute right.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from mmcourse import _validate
from mmcourse.data.shapes import (
    ATTRIBUTES,
    COLORS,
    POSITIONS,
    SHAPES,
    caption_to_labels,
)

_CLASSES = {"color": len(COLORS), "shape": len(SHAPES), "position": len(POSITIONS)}


class Judge(nn.Module):
    """CNN 32×32 → 4×4 features → one linear head per attribute."""

    def __init__(self, width: int = 32, hidden: int = 128):
        super().__init__()
        self.config = {"width": width, "hidden": hidden}
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1),
            nn.ReLU(),  # (B, w, 32, 32)
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
            nn.ReLU(),  # (B, 2w, 16, 16)
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1),
            nn.ReLU(),  # (B, 2w, 8, 8)
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1),
            nn.ReLU(),  # (B, 2w, 4, 4)
            nn.Flatten(),  # position must survive, so no global pooling
            nn.Linear(2 * w * 16, hidden),
            nn.ReLU(),
        )
        self.heads = nn.ModuleDict({a: nn.Linear(hidden, k) for a, k in _CLASSES.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (B, 3, 32, 32) in [0, 1] → logits per attribute, e.g. {"color": (B, 6), ...}."""
        h = self.features(x * 2 - 1)
        return {a: head(h) for a, head in self.heads.items()}

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The judge's penultimate features, what chapter 10 measures generators with: x (N, 3,
        32, 32) in [0, 1] → (N, hidden) float, on x's device. A network the course owns, so no
        download, but FIDs from it are not comparable with Inception-based ones."""
        x = _validate.tensor("x", x, shape=("N", 3, 32, 32), floating=True, value_range=(0, 1))
        param = next(self.parameters())
        was_training = self.training
        self.eval()
        h = torch.cat([self.features(chunk.to(param) * 2 - 1) for chunk in x.split(1024)])
        self.train(was_training)
        return h.to(x.device)  # (N, hidden)

    @torch.no_grad()
    def read(self, x: torch.Tensor) -> torch.Tensor:
        """The attributes the judge sees: x (N, 3, 32, 32) in [0, 1] → (N, 3) long labels
        (color, shape, position), on x's device."""
        x = _validate.tensor("x", x, shape=("N", 3, 32, 32), floating=True, value_range=(0, 1))
        param = next(self.parameters())
        was_training = self.training
        self.eval()
        logits = [self(chunk.to(param)) for chunk in x.split(1024)]
        self.train(was_training)
        preds = [torch.cat([lg[a] for lg in logits]).argmax(-1) for a in ATTRIBUTES]
        return torch.stack(preds, dim=1).to(x.device)

    def score(self, x: torch.Tensor, captions: Sequence[str] | torch.Tensor) -> dict[str, float]:
        """Faithfulness of images to captions: {"color", "shape", "position", "all"} in [0, 1].

        captions: one caption per image, or their (N, 3) labels."""
        if isinstance(captions, torch.Tensor):
            labels = _validate.tensor("captions", captions, shape=("N", 3)).cpu()
        else:
            labels = torch.stack([caption_to_labels(c) for c in captions]).reshape(-1, 3)
        if len(labels) != len(x):
            raise ValueError(
                f"need one caption per image: got {len(x)} images and {len(labels)} captions"
            )
        hits = self.read(x).cpu() == labels  # (N, 3)
        result = {a: hits[:, i].float().mean().item() for i, a in enumerate(ATTRIBUTES)}
        result["all"] = hits.all(dim=1).float().mean().item()
        return result
