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

Under torchrun (see `mmcourse.distributed`) the loop is the same on every rank: `step_loss`
calls the DDP/FSDP2 wrapper, whose backward averages the gradients, so every rank takes the
same step. Only rank 0 shows the progress bar. A rank that dies or hangs makes the others
raise an error naming the step and the timeout instead of waiting forever.

Resuming: `fit(..., resume=Resume("run.pt", every=100), generators=[g])` writes the training
state (model, optimizer, schedule, step, losses so far, the batch generators' states of every
rank, the state of callbacks such as EMA) every 100 steps and at the end; the same call finds
the file and carries on from its step, drawing the batches it would have drawn. (Callbacks
without `state_dict`, such as a VQ-VAE's dead-code counts, start afresh.)
`with resuming("runs/"):` gives every `fit` inside it such a file, one per call, in order.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from tqdm.auto import tqdm

from mmcourse import distributed

__all__ = [
    "EMA",
    "Resume",
    "TrainResult",
    "adamw_cosine",
    "adamw_one_cycle",
    "fit",
    "resuming",
]

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
    warmup: int | None = None,
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """The course's optimizer: AdamW with weight decay on matrices only (not on biases, norms'
    gains or other vectors; one group when weight_decay is 0), and its schedule — linear warm-up
    over the first `warmup` steps (default: 5 % of `steps`), then cosine decay from lr to final·lr:

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
    warmup = max(steps // 20, 1) if warmup is None else max(warmup, 1)
    half = (1 - final) / 2
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


class Resume(NamedTuple):
    """Where `fit` keeps its training state (one file), and every how many steps it writes it."""

    path: Path | str
    every: int = 100


_RESUMING: contextvars.ContextVar[tuple[Path, int, list[int]] | None] = contextvars.ContextVar(
    "resuming", default=None
)


@contextlib.contextmanager
def resuming(directory: Path | str, every: int = 100) -> Iterator[None]:
    """Inside the block, every `fit` not given its own `resume` keeps its state in
    directory/fit-<k>.pt (k = 0, 1, … in call order), written every `every` steps: stop a
    command, run it again, and it carries on where its state was written. A finished fit's file
    holds its end, so the second run passes over it at once (`python -m mmcourse.train NAME
    --resume DIR`)."""
    token = _RESUMING.set((Path(directory), every, [0]))
    try:
        yield
    finally:
        _RESUMING.reset(token)


def _resume_of(resume: Resume | None) -> Resume | None:
    active = _RESUMING.get()
    if resume is not None or active is None:
        return resume
    directory, every, calls = active
    calls[0] += 1
    return Resume(directory / f"fit-{calls[0] - 1}.pt", every)


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
    generators: Sequence[torch.Generator] = (),
    resume: Resume | None = None,
) -> TrainResult:
    """Train `model` for `steps` optimizer steps and return it in eval mode with its losses.

    `step_loss(step)` (step = 0 … steps − 1) draws the batch and returns the loss to minimise;
    or a pair (loss, recorded) to record another tensor of a fixed shape instead (e.g. the
    loss's parts); or yields several losses (micro-batches, each backpropagated as it comes).
    `clip` caps the gradients' global norm; `schedule` steps after the optimizer; each callback
    runs as `callback(step, recorded)` after the step (recorded stays on the device: read it
    back only when needed). `progress` shows a tqdm bar named `desc` (on rank 0).
    `resume` keeps the training state in a file and carries on from it (see the module's
    docstring), with the states of `generators`, the generators `step_loss` draws from."""
    callbacks = tuple(callbacks)
    resume = _resume_of(resume)
    losses = None  # (steps, *recorded shape) float64 on the device, allocated at step 0
    first = 0
    if resume is not None and Path(resume.path).is_file():
        first, losses = _load_state(resume.path, model, optimizer, schedule, callbacks, generators)
    model.train()
    start = time.perf_counter()
    shown = progress and distributed.is_main()
    for step in tqdm(range(first, steps), desc=desc, unit="step", initial=first, total=steps,
                     disable=not shown):  # fmt: skip
        try:
            recorded = _step(model, step_loss, step, optimizer, schedule, clip)
        except RuntimeError as err:
            lost = distributed.lost_contact(err, step)
            if lost is None:
                raise
            raise lost from err
        if losses is None:
            losses = recorded.new_zeros((steps, *recorded.shape), dtype=torch.float64)
        losses[step] = recorded  # float64 holds every float32 exactly
        for callback in callbacks:
            callback(step, losses[step])
        if resume is not None and ((step + 1) % resume.every == 0 or step == steps - 1):
            _save_state(
                resume.path, model, optimizer, schedule, callbacks, generators, step, losses
            )
    values = losses.tolist() if losses is not None else []  # the only read-back of the run
    return TrainResult(model.eval(), values, time.perf_counter() - start)


def _step(
    model: nn.Module,
    step_loss: StepLoss,
    step: int,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler | None,
    clip: float | None,
) -> torch.Tensor:
    """zero_grad → loss → backward → clip → optimizer step → schedule step; what to record."""
    optimizer.zero_grad(set_to_none=True)
    recorded = _backward(step_loss(step))
    if clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    if schedule is not None:
        schedule.step()
    return recorded


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def _save_state(
    path: Path | str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler | None,
    callbacks: tuple[Callback, ...],
    generators: Sequence[torch.Generator],
    step: int,
    losses: torch.Tensor,
) -> None:
    """Write the state after `step` to `path` (rank 0, through a temporary file, so that a kill
    while writing leaves the previous state). The model and optimizer go in full (gathered from
    FSDP2's shards), the losses and the generators' states of every rank."""
    state = {
        "model": get_model_state_dict(model, options=_FULL),
        "optimizer": get_optimizer_state_dict(model, optimizer, options=_FULL),
        "schedule": schedule.state_dict() if schedule is not None else None,
        "callbacks": [c.state_dict() for c in callbacks if hasattr(c, "state_dict")],
        "generators": distributed.per_rank([g.get_state() for g in generators]),
        "step": step + 1,
        "losses": distributed.per_rank(losses.cpu()),  # each rank recorded its own rows
    }
    if distributed.is_main():
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
    distributed.barrier()


def _load_state(
    path: Path | str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler | None,
    callbacks: tuple[Callback, ...],
    generators: Sequence[torch.Generator],
) -> tuple[int, torch.Tensor]:
    """Restore what `_save_state` wrote (every rank reads the file); (next step, losses)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved_by, rank = len(state["generators"]), distributed.rank()
    if saved_by != distributed.world_size():
        raise ValueError(
            f"{path} holds the state of {saved_by} ranks; resume it on as many, "
            f"got {distributed.world_size()}"
        )
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, state["model"], options=options)
    set_optimizer_state_dict(model, optimizer, state["optimizer"], options=options)
    if schedule is not None:
        schedule.load_state_dict(state["schedule"])
    stateful = [c for c in callbacks if hasattr(c, "load_state_dict")]
    for callback, saved in zip(stateful, state["callbacks"], strict=True):
        callback.load_state_dict(saved)
    for g, saved in zip(generators, state["generators"][rank], strict=True):
        g.set_state(saved)
    device = distributed.full_tensor(next(model.parameters())).device
    return state["step"], state["losses"][rank].to(device)


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
            p_ema.lerp_(distributed.full_tensor(p), 1 - d)  # FSDP2: the gathered weight

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The average's weights (kept in a resumable training state)."""
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
