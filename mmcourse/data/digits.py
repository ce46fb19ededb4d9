"""Real handwritten digits: scikit-learn's bundled `load_digits` (1,797 images of 8×8, no download).

Pixel values 0–16 are scaled to [0, 1]. A fixed seeded permutation splits them into 1,437 training
and 360 test images, so every chapter sees the same held-out digits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import Dataset

from mmcourse import _validate

TEST_SIZE = 360
_SPLIT_SEED = 0


class DigitsDataset(Dataset):
    """Item i is (x (1, size, size) float in [0, 1], label long in 0–9).

    split: "train" (1,437 images) or "test" (360). size: 8 (the originals) or larger, upsampled
    bilinearly, e.g. 32 to feed a model built for 32×32 Shapes.
    """

    def __init__(self, split: str = "train", size: int = 8):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        _validate.positive_int("size", size)
        bunch = load_digits()
        images = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0  # (1797, 1, 8, 8)
        labels = torch.tensor(bunch.target, dtype=torch.long)
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(_SPLIT_SEED))
        keep = order[:TEST_SIZE] if split == "test" else order[TEST_SIZE:]
        images = images[keep]
        if size != 8:
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        self.images = images.clamp(0, 1)  # (N, 1, size, size)
        self.labels = labels[keep]  # (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]
