"""The judge: reads colour, shape and position back from a 32×32 image.

A generated image is faithful to its caption when the judge reads the caption's attributes from
it. The judge is a small CNN with one classification head per attribute, trained on Shapes with
blur, noise and colour jitter so that it also reads imperfect, generated images. Its weights
ship in data/judge.pt, rebuilt from the seed by `python -m mmcourse.train judge`.

Faithfulness per attribute = fraction of images whose attribute the judge reads as the caption
says; "all" = fraction with every attribute right.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmcourse import _validate, checkpoints
from mmcourse.data.shapes import (
    ATTRIBUTES,
    COLORS,
    POSITIONS,
    SHAPES,
    ShapesDataset,
    caption_to_labels,
)
from mmcourse.env import device as default_device
from mmcourse.trainer import adamw_one_cycle, fit

PATH = checkpoints.DATA_DIR / "judge.pt"
COMMAND = "python -m mmcourse.train judge"
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


def load_judge(path: Path = PATH, device: torch.device | str | None = None) -> Judge:
    """The trained judge from data/judge.pt, in eval mode on `device` (default: the course's)."""
    ckpt = checkpoints.load(Path(path), command=COMMAND)
    judge = checkpoints.restore(ckpt, Judge, path=path, command=COMMAND)
    return judge.to(device or default_device())


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Imperfections a generator makes: blur, colour shifts, noise. x (B, 3, H, W) in [0, 1]."""
    b = len(x)
    # Gaussian blur with a random σ ∈ [0.01, 1] per image, as a separable 5-tap filter.
    sigma = 0.01 + torch.rand(b, 1, generator=g)  # (B, 1)
    taps = torch.arange(-2, 3, dtype=torch.float32)  # (5,)
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum(-1, keepdim=True)  # (B, 5)
    xb = x.reshape(1, b * 3, *x.shape[2:])  # images as channels of one batch: grouped conv
    k = kernel.repeat_interleave(3, dim=0)[:, None]  # (3B, 1, 5)
    xb = F.conv2d(F.pad(xb, (2, 2, 0, 0), mode="replicate"), k[:, :, None, :], groups=3 * b)
    xb = F.conv2d(F.pad(xb, (0, 0, 2, 2), mode="replicate"), k[:, :, :, None], groups=3 * b)
    x = xb.view_as(x)
    gain = 1 + 0.15 * (torch.rand(b, 3, 1, 1, generator=g) * 2 - 1)  # ±15 % per channel
    noise = torch.randn(x.shape, generator=g) * 0.08 * torch.rand(b, 1, 1, 1, generator=g)
    return (x * gain + noise).clamp(0, 1)


def train_judge(
    seed: int = 0, steps: int = 1500, batch: int = 128, log: Callable[[str], None] = print
) -> Judge:
    """Train the judge on its own Shapes images (seed 100 + seed), augmented on the fly."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    data = ShapesDataset(n=20_000, seed=100 + seed)
    judge = Judge()
    opt, sched = adamw_one_cycle(judge, 2e-3, steps, weight_decay=1e-4)

    def step_loss(step: int) -> torch.Tensor:
        idx = torch.randint(len(data), (batch,), generator=g)
        x, y = _augment(data.images[idx], g), data.labels[idx]  # (B, 3, 32, 32), (B, 3)
        logits = judge(x)
        return sum(F.cross_entropy(logits[a], y[:, i]) for i, a in enumerate(ATTRIBUTES))

    def report(step: int, loss: torch.Tensor) -> None:
        if step % 250 == 0 or step == steps - 1:
            log(f"step {step:5d}  loss {loss.item():.4f}")

    run = fit(
        judge,
        step_loss,
        steps=steps,
        optimizer=opt,
        schedule=sched,
        callbacks=[report],
        progress=False,
    )
    return run.model
