"""pytest settings for every run from this repository: the unit suite (tests/ has its own
conftest.py) and nbval over solutions/ or a submitted notebook.

nbval waits at most 5 s between a cell's output messages once the kernel has replied that the
cell finished. On a loaded machine (a GPU machine running ten notebooks at once, a laptop that
grades while busy) the outputs of a long cell can lag behind the reply by more than that, and
nbval then fails a cell that ran fine with "Timeout of 5 seconds exceeded waiting for output"
(issue 21: chapter 08's λ sweep on an H200, with nine other notebooks running beside it). The
cell's own time limit (--nbval-cell-timeout) is unchanged; only this wait is lengthened."""

from __future__ import annotations

import pytest

OUTPUT_WAIT_S = 60


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if type(item).__module__ == "nbval.plugin" and hasattr(item, "output_timeout"):
            item.output_timeout = max(item.output_timeout, OUTPUT_WAIT_S)
