"""Wall-clock helpers shared by the benchmarks (a private module: run.py does not list it).

A GPU runs kernels asynchronously: the clock read right after a call measures the launches, not
the work. Every timer here waits for the device before starting and before stopping the clock
(`sync`), and `warm_up` runs a call once, untimed, so that a GPU's one-off costs (CUDA context,
kernel loading, cuDNN and cuBLAS set-up) stay out of the measurement. On the CPU there is nothing
to wait for and nothing to warm: the CPU's timings are taken exactly as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import torch

import mmcourse

T = TypeVar("T")


def on_gpu(dev: str | torch.device | None = None) -> bool:
    """Whether `dev` (default: the course's device) is a CUDA GPU."""
    return torch.device(dev if dev is not None else mmcourse.device()).type == "cuda"


def sync(dev: str | torch.device | None = None) -> None:
    """Wait until `dev` (default: the course's device) has finished its queued work."""
    if on_gpu(dev):
        torch.cuda.synchronize(dev)


def timed(fn: Callable[[], T], dev: str | torch.device | None = None) -> tuple[T, float]:
    """(fn(), seconds it took), the device's queued work finished before and after."""
    sync(dev)
    start = time.perf_counter()
    out = fn()
    sync(dev)
    return out, time.perf_counter() - start


def best_seconds(
    fn: Callable[[], object],
    repeat: int,
    warmup: bool = False,
    dev: str | torch.device | None = None,
) -> float:
    """The fastest of `repeat` timed calls of fn() (after one untimed call when `warmup`, or
    when `dev` is a GPU): the least disturbed run on a machine that other work shares."""
    if warmup or on_gpu(dev):
        fn()
    best = float("inf")
    for _ in range(repeat):
        best = min(best, timed(fn, dev)[1])
    return best


def warm_up(fn: Callable[[], object], dev: str | torch.device | None = None) -> None:
    """Call fn() once, untimed, when `dev` (default: the course's device) is a GPU; on the CPU,
    nothing (the CPU's measurements stay as they were)."""
    if on_gpu(dev):
        fn()
        sync(dev)
