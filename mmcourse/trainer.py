"""One training loop for every model of the course (minGPT's Trainer, smaller).

The trainer knows nothing of the models. A recipe hands it `step_loss(step)`, which draws the
step's batch and returns its loss, and an optimizer with its schedule; `fit` does the rest:

    zero_grad → loss = step_loss(step) → backward → clip → optimizer.step → schedule.step
              → record the loss → callbacks(step, loss)

The recorded losses stay on the device and are read back once, at the end: reading one back
every step would make the CPU wait for the GPU. The trainer draws no random numbers: a recipe
that seeds its own draws gets the same run, bit for bit.

    opt, schedule = adamw_cosine(model, lr=2e-3, steps=300)
    run = fit(model, lambda step: loss_fn(model, next_batch()), steps=300, optimizer=opt,
              schedule=schedule, clip=1.0)
    run.model, run.losses, run.seconds

A callback such as `EMA` follows the run: `ema = EMA(model, 0.999)`, `fit(..., callbacks=[ema])`,
then sample from `ema.model`.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = ["EMA", "TrainResult", "adamw_cosine", "adamw_one_cycle", "fit"]

Loss = torch.Tensor | tuple[torch.Tensor, torch.Tensor] | Iterator[torch.Tensor]
StepLoss = Callable[[int], Loss]
Callback = Callable[[int, torch.Tensor], None]


class TrainResult(NamedTuple):
    """A trained model (in eval mode), what was recorded at every step, and the training time.

    `losses` holds one float per step, or one list per step where `step_loss` recorded several
    numbers; `history` holds a recipe's named per-step curves (a VQ-VAE's perplexity, its
    learning rate), None where it keeps none."""

    model: nn.Module
    losses: list[Any]
    seconds: float
    history: dict[str, list[float]] | None = None


def adamw_cosine(
    model: nn.Module,
    lr: float,
    steps: int,
    *,
    weight_decay: float = 0.05,
    betas: tuple[float, float] = (0.9, 0.95),
    final: float = 0.05,
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """The course's optimizer: AdamW with weight decay on matrices only (not on biases, norms'
    gains or other vectors; one group when weight_decay is 0), and its schedule — linear warm-up
    over the first 5 % of `steps`, then cosine decay from lr to final·lr:

        lr_i = lr · min((i + 1) / warmup, final + (1 − final)/2 · (1 + cos(π i / steps)))

    The defaults are the transformers' recipe (chapters 05, 07, 08); chapter 04's U-Net uses
    weight_decay=0, betas=(0.9, 0.999), final=0. Call `schedule.step()` after each `opt.step()`
    (`fit` does)."""
    if weight_decay:
        matrices = [p for p in model.parameters() if p.dim() >= 2]
        vectors = [p for p in model.parameters() if p.dim() < 2]
        groups: Any = [
            {"params": matrices, "weight_decay": weight_decay},
            {"params": vectors, "weight_decay": 0.0},
        ]
    else:
        groups = model.parameters()
    opt = torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=0.0)
    warmup, half = max(steps // 20, 1), (1 - final) / 2
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min((i + 1) / warmup, final + half * (1 + math.cos(math.pi * i / steps)))
    )
    return opt, schedule


def adamw_one_cycle(
    model: nn.Module, lr: float, steps: int, *, weight_decay: float = 0.01
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.OneCycleLR]:
    """AdamW over the trainable parameters with PyTorch's one-cycle schedule: lr rises from
    lr/25 to lr over the first 30 % of `steps` and anneals (cosine) to lr/(25·10⁴), while β₁
    moves the other way between 0.95 and 0.85. Chapter 03's ViT, CLIP and captioner, and the
    judge."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)


def _backward(loss: Loss) -> torch.Tensor:
    """Backpropagate one step's loss; return what to record. `loss` is a tensor, a pair (loss,
    recorded) or an iterator of micro-batch losses, each backpropagated as it comes (their
    gradients accumulate) and their sum recorded in float64."""
    if isinstance(loss, torch.Tensor):
        loss.backward()
        return loss.detach()
    if isinstance(loss, tuple):
        loss, recorded = loss
        loss.backward()
        return recorded.detach()
    total = None
    for part in loss:  # the generator resumes after each backward: one graph at a time
        part.backward()
        part = part.detach().double()
        total = part if total is None else total + part
    if total is None:
        raise ValueError("step_loss yielded no loss")
    return total


def fit(
    model: nn.Module,
    step_loss: StepLoss,
    *,
    steps: int,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
    clip: float | None = None,
    callbacks: Iterable[Callback] = (),
    progress: bool = True,
    desc: str = "train",
) -> TrainResult:
    """Train `model` for `steps` optimizer steps and return it in eval mode with its losses.

    `step_loss(step)` (step = 0 … steps − 1) draws the batch and returns the loss to minimise;
    or a pair (loss, recorded) to record another tensor of a fixed shape instead (e.g. the
    loss's parts); or yields several losses (micro-batches, each backpropagated as it comes).
    `clip` caps the gradients' global norm; `schedule` steps after the optimizer; each callback
    runs as `callback(step, recorded)` after the step (recorded stays on the device: read it
    back only when needed). `progress` shows a tqdm bar named `desc`."""
    callbacks = tuple(callbacks)
    losses = None  # (steps, *recorded shape) float64 on the device, allocated at step 0
    model.train()
    start = time.perf_counter()
    for step in tqdm(range(steps), desc=desc, unit="step", disable=not progress):
        optimizer.zero_grad(set_to_none=True)
        recorded = _backward(step_loss(step))
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        if schedule is not None:
            schedule.step()
        if losses is None:
            losses = recorded.new_zeros((steps, *recorded.shape), dtype=torch.float64)
        losses[step] = recorded  # float64 holds every float32 exactly
        for callback in callbacks:
            callback(step, losses[step])
    values = losses.tolist() if losses is not None else []  # the only read-back of the run
    return TrainResult(model.eval(), values, time.perf_counter() - start)


class EMA:
    """An exponential moving average of `model`'s weights, as a `fit` callback. After optimizer
    step `step` (0-based), θ_ema ← d θ_ema + (1 − d) θ with d = min(decay, (1 + step) /
    (10 + step)): a short memory at the start, so that the average does not drag the random
    initial weights along. `.model` is the average: a frozen copy in eval mode, what diffusion
    samples with."""

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        self.source = model
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, step: int, recorded: torch.Tensor | None = None) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for p_ema, p in zip(self.model.parameters(), self.source.parameters()):
            p_ema.lerp_(p, 1 - d)
