"""Wall-clock helper shared by the benchmarks (a private module: run.py does not list it)."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_seconds(fn: Callable[[], object], repeat: int, warmup: bool = False) -> float:
    """The fastest of `repeat` timed calls of fn() (after one untimed call when `warmup`): the
    least disturbed run on a machine that other work shares."""
    if warmup:
        fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best
