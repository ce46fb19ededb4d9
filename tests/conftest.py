"""Shared fixtures: the device tests compute on, and skipping `gpu` tests without CUDA."""

from __future__ import annotations

import pytest
import torch

import mmcourse


@pytest.fixture
def device() -> torch.device:
    """The course device: $MMCOURSE_DEVICE if set, else cuda when available, else cpu."""
    return mmcourse.device()


@pytest.fixture
def one_thread():
    """Tiny models train fastest on one torch thread, and stay fast when other jobs load the
    CPU; the thread count is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
