"""Shared fixtures: the device tests compute on, and skipping `gpu` tests without CUDA."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import mmcourse

# The instructor tools (nbgrader, JupyterLab, the browser test's Playwright) are dev dependencies
# that a bare GPU image lacks (.ci/gpu-check installs only what notebooks need). The tests that
# use them do not depend on the device and `make test` runs them, so without the tools they are
# left out, and the summary says so.
_NEEDS = {
    "nbgrader": ["test_notebooks.py", "test_nbgrader.py"],
    "jupyterlab": ["test_lab.py", "test_browser.py"],
}
_MISSING = [name for name in _NEEDS if importlib.util.find_spec(name) is None]
collect_ignore = [test for name in _MISSING for test in _NEEDS[name]]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if collect_ignore:
        terminalreporter.write_line(
            f"left out, {' and '.join(_MISSING)} not installed (device-independent; "
            f"`make test` runs them): {', '.join(collect_ignore)}"
        )


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
