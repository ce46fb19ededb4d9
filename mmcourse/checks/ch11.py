"""Checker of chapter 11 (training on several processes): averaging gradients by hand.

The checker starts a real process group from the calling process: 2 gloo ranks, then 3, forked
(a function defined in a notebook cannot be pickled for the spawn start method; a forked rank
inherits it). Each rank builds the same tiny model (Linear, ReLU, Linear, plus a parameter the
forward never uses, whose gradient stays None, and a frozen one), computes the loss of its own
rows and its gradients, runs the candidate, and writes what it finds to a file: the candidate's
gradients and weights, and the gradients DistributedDataParallel computes for a copy of the same
model on the same rows (the reference: "checked against DDP"). A rank leaves with os._exit (a
gloo process group's interpreter teardown can hang); a rank that raises or hangs ends the check
with one line, after a short timeout. Everything runs on the CPU, whatever the course device:
gloo is the CPU backend, and a forked process cannot use a GPU its parent has initialised.

A wrong result is named when it is a known mistake: each rank's own gradient (nothing written
back: all_reduce on a copy, on p.data, or some parameters left out), the sum not divided, the
mean divided twice, the elementwise maximum or minimum (op=MAX, MIN), a hard-coded 2 (world 3).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mmcourse import distributed
from mmcourse.checks._core import Check, _Failure, _NotImplemented, _one_line, describe, exercise

WORLDS = (2, 3)  # a hard-coded 2 is right on 2 ranks only
ROWS = 4  # each rank's rows
TIMEOUT = 6  # seconds a collective waits for a silent rank
DEADLINE = 40  # seconds all ranks of one world may take in all
_ATOL, _RTOL = 1e-7, 1e-5  # the sum over 3 ranks may be added in another order than DDP's

_AVERAGE = (
    "for every parameter p with p.grad not None: dist.all_reduce(p.grad) (in place: every "
    "rank's p.grad becomes Σ_r g_r), then p.grad /= dist.get_world_size()"
)
_CRASH = (
    "two common causes: a parameter whose .grad is None (the forward never used it, or it is "
    "frozen) must be skipped, `if p.grad is not None`; and dist.all_reduce changes its tensor in "
    "place and returns None, so don't use its result"
)
_HANG = (
    "a collective waits until every rank has called it: every rank must call dist.all_reduce "
    "for the same parameters, in the same order (no `if dist.get_rank() == 0:` around it)"
)


class _Tiny(nn.Module):
    """Linear → ReLU → Linear, a frozen per-output scale, and a parameter never used."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 3)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 3), requires_grad=False)  # frozen
        self.unused = nn.Parameter(torch.zeros(3))  # no forward path: its grad stays None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x))) * self.scale  # (B, 3)


def _model() -> _Tiny:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return _Tiny()


def _rows(world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch (world · ROWS rows); rank r's rows are chunk r."""
    g = torch.Generator().manual_seed(world)
    return torch.randn(world * ROWS, 4, generator=g), torch.randn(world * ROWS, 3, generator=g)


def _loss(net: Callable[..., torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (net(x) - y).pow(2).mean()


def _own_gradients(world: int) -> list[dict[str, torch.Tensor]]:
    """Each rank's own gradients, before any averaging: [{name: g_r}] for r = 0 … world − 1."""
    x, y = _rows(world)
    own = []
    for xr, yr in zip(x.chunk(world), y.chunk(world)):
        model = _model()
        _loss(model, xr, yr).backward()
        own.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    return own


# ----------------------------------------------------------------------------- one rank


def _rank(r: int, world: int, port: int, out: Path, check: Check) -> None:
    """Rank r: DDP's gradients of its rows, then the candidate's, written to out/rank{r}.pt (or
    its error to out/rank{r}.err); then it leaves at once."""
    os.environ |= {"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(world),
                   "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": str(port)}  # fmt: skip
    try:
        torch.set_num_threads(1)  # the parent's thread pool does not survive a fork
        # gloo alone, never a GPU: CUDA cannot start again in a process forked from one using it
        dist.init_process_group("gloo", timeout=timedelta(seconds=TIMEOUT))
        x, y = (v.chunk(world)[r] for v in _rows(world))
        reference = _model()
        ddp = DistributedDataParallel(reference, find_unused_parameters=True)
        _loss(ddp, x, y).backward()
        model = _model()
        _loss(model, x, y).backward()
        try:
            result = check._run(model)
        except NotImplementedError:
            (out / f"rank{r}.stub").touch()
            return
        except Exception as error:
            _write(out / f"rank{r}.err", _where(error))
            return
        found = {
            "ddp": {n: p.grad for n, p in reference.named_parameters()},
            "grads": {n: p.grad for n, p in model.named_parameters()},
            "weights": {n: p.detach() for n, p in model.named_parameters()},
            "returned": None if result is None else describe(result),
            "delegated": list(check.delegated),
        }
        torch.save(found, out / f"rank{r}.pt")
    except BaseException as error:  # the checker's own part failed: say so, never hang
        _write(out / f"rank{r}.err", _where(error))
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _write(path: Path, text: str) -> None:
    """Write, then rename into place: the parent polls for rank*.err and must never read half
    a file."""
    part = path.with_name(path.name + ".part")
    part.write_text(text)
    os.replace(part, path)


def _where(error: BaseException) -> str:
    """The error in one line, with the line of the learner's code that raised it."""
    line = ""
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        if not frame.filename.startswith((_TORCH, _PACKAGE)):
            line = f" (in {frame.name}, at `{(frame.line or '').strip()}`)"
            break
    return _one_line(error) + line


_TORCH = os.path.dirname(os.path.abspath(torch.__file__))
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------ the ranks


def _run_ranks(check: Check, world: int) -> list[dict[str, Any]]:
    """Fork `world` ranks that each run the candidate; their results, in rank order. A rank
    that raised, died or hung fails the check in one line."""
    what = f"runs on {world} ranks, each after backward on its own rows"
    check.count += 1
    if "fork" not in multiprocessing.get_all_start_methods():
        raise _Failure(
            what,
            "a system that can fork a process (Linux, macOS): the check forks its ranks from "
            "this one, as a function defined in a notebook cannot be sent to a new process",
            "no 'fork' start method (Windows)",
            "run the course in WSL (Windows Subsystem for Linux), or on Linux or macOS",
        )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        args = (world, _free_port(), out, check)
        context = torch.multiprocessing.start_processes(
            _rank, args=args, nprocs=world, join=False, start_method="fork"
        )
        start = time.perf_counter()
        try:
            while not _finished(context, out) and time.perf_counter() - start < DEADLINE:
                pass
            hung = [r for r, p in enumerate(context.processes) if p.is_alive()]
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
                process.join()
        if any((out / f"rank{r}.stub").exists() for r in range(world)):
            raise _NotImplemented()
        errors = {r: (out / f"rank{r}.err").read_text() for r in range(world)
                  if (out / f"rank{r}.err").exists()}  # fmt: skip
        if errors:
            r, error = _cause(errors)
            got = f"rank {r} raised {error}"
            raise _Failure(what, "no error", got, _HANG if _lost_contact(error) else _CRASH)
        for r in range(world):
            if not (out / f"rank{r}.pt").exists():
                process = context.processes[r]
                got = (
                    f"rank {r} still waiting after {DEADLINE} s"
                    if r in hung
                    else f"rank {r} ended (exit code {process.exitcode}) without a result"
                )
                hint = _HANG if r in hung else "a common cause is a call that ends the process"
                raise _Failure(what, f"all {world} ranks done", got, hint)
        return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(world)]


def _lost_contact(error: str) -> bool:
    """A collective that timed out or whose peer left: the echo of another rank's trouble."""
    return any(w in error for w in ("Timed out", "timed out", "Connection"))


def _cause(errors: dict[int, str]) -> tuple[int, str]:
    """The (rank, error) to report: a rank that raised by itself, not one whose collective
    lost contact because that rank left (its "Connection closed" only echoes the exit);
    the first rank's when every error is of that kind."""
    return next(((r, e) for r, e in errors.items() if not _lost_contact(e)),
                next(iter(errors.items())))  # fmt: skip


def _finished(context: Any, out: Path) -> bool:
    """Whether every rank has left, or one has failed (the others may wait for it forever)."""
    if any(out.glob("rank*.err")) or any(out.glob("rank*.stub")):
        return True
    try:
        return context.join(timeout=0.02)
    except Exception:  # a rank died from a signal or exited non-zero: nothing more will come
        return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------- what came back


def _mistakes(
    own: list[dict[str, torch.Tensor]], name: str, r: int, partial: bool
) -> dict[str, torch.Tensor]:
    """What the known mistakes give rank r for parameter `name`."""
    world = len(own)
    stacked = torch.stack([g[name] for g in own])  # (N, *shape)
    total = stacked.sum(0)
    if partial:
        mine = (
            f"this parameter's gradient is still rank {r}'s own, while others were averaged: "
            "average every parameter that has a gradient, `for p in model.parameters()` (not "
            "only the weights, nor only some layers)"
        )
    else:
        mine = (
            f"the gradients are still each rank's own (rank {r}'s): nothing was written back "
            "into p.grad. dist.all_reduce changes the tensor it is given, in place: pass p.grad "
            "itself (not p.grad.clone(), a new tensor, or p.data) or assign the result back"
        )
    mistakes = {
        mine: own[r][name],
        f"the sum over the ranks, not the mean: a factor of {world}, the world size, too "
        "large; divide by dist.get_world_size() after the all-reduce": total,
        f"the mean divided by the world size {world} once more: divide once, after the "
        "all-reduce (which sums)": total / world**2,
        "the elementwise maximum over the ranks (op=ReduceOp.MAX): the default op, SUM, "
        "then a division": stacked.max(0).values,
        "the elementwise minimum over the ranks (op=ReduceOp.MIN): the default op, SUM, "
        "then a division": stacked.min(0).values,
    }
    if world != 2:
        mistakes[
            f"the sum divided by 2 on {world} ranks: a hard-coded 2; divide by "
            "dist.get_world_size()"
        ] = total / 2
    return mistakes


def _agree(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, atol=_ATOL, rtol=_RTOL))


def _check_world(check: Check, world: int) -> None:
    ranks = _run_ranks(check, world)
    for found in ranks:
        check.delegated.update(dict.fromkeys(found["delegated"]))
    returned = next((f["returned"] for f in ranks if f["returned"] is not None), None)
    check.that(
        returned is None,
        "returns None (it replaces the gradients of the model it is given)",
        expected="None",
        got=str(returned),
        hint="average_gradients works by changing p.grad of the model's parameters; end "
        "without a return value",
    )
    before = _model().state_dict(keep_vars=True)
    for r, found in enumerate(ranks):
        moved = [n for n, w in found["weights"].items() if not torch.equal(w, before[n].detach())]
        check.that(
            not moved,
            f"leaves the weights of rank {r}'s model unchanged",
            expected="the weights as they were (only the gradients change)",
            got=f"{moved[0]} changed" if moved else "",
            hint="average p.grad, not p or p.data: the optimizer's step changes the weights, "
            "after the averaging",
        )
    own = _own_gradients(world)
    for r, found in enumerate(ranks):
        ddp, grads = found["ddp"], found["grads"]
        averaged = [n for n in own[r] if isinstance(grads[n], torch.Tensor)
                    and _agree(grads[n], ddp[n])]  # fmt: skip
        partial = bool(averaged)
        for name in own[r]:
            check.close(
                grads[name],
                ddp[name],
                f"rank {r} of {world}: the gradient of {name}, compared with DDP's",
                atol=_ATOL,
                rtol=_RTOL,
                hint=_AVERAGE,
                alternatives=_mistakes(own, name, r, partial),
                sizes={"the world size": world},
            )
        for name, g in grads.items():
            if ddp[name] is None:
                check.that(
                    g is None,
                    f"rank {r} of {world}: the gradient of {name} (no gradient: "
                    + ("frozen)" if name == "scale" else "the forward never uses it)"),
                    expected="None, as DDP leaves it",
                    got=describe(g),
                    hint="skip the parameters whose p.grad is None: a zero gradient would "
                    "still let momentum and weight decay move them",
                )


@exercise("11.1", "averaging gradients by hand", audit_devices=False,
          references=[distributed.average_gradients])  # fmt: skip
def check_average_gradients(check: Check) -> None:
    """Run `average_gradients(model)` on 2 forked gloo ranks, then on 3, after each rank's
    backward on its own rows: every gradient must equal DDP's on every rank (None stays None),
    the weights unchanged, None returned. CPU only (see the module docstring)."""
    for world in WORLDS:
        _check_world(check, world)
