"""Where the course runs: the device to use and a report of the environment."""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import torch

DEVICE_VARIABLE = "MMCOURSE_DEVICE"


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block on one CPU thread: for the course's small models it is the fastest setting,
    it does not fight other programs for the cores, and it makes a training run reproducible bit
    for bit whatever the machine's core count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextmanager
def compute_threads(dev: str | torch.device | None = None) -> Iterator[None]:
    """Run the block with the CPU thread count that suits computing on `dev` (default: the
    course's device): one thread on the CPU (see `one_thread`), torch's own setting on a GPU,
    where the CPU only prepares batches and launches kernels and one slow thread would starve
    the GPU."""
    if torch.device(dev if dev is not None else device()).type == "cpu":
        with one_thread():
            yield
    else:
        yield


def set_compute_threads(dev: str | torch.device | None = None) -> int:
    """A notebook's setting for the whole session, as `compute_threads` for one block: one CPU
    thread when the course computes on the CPU, torch's setting left alone on a GPU. Returns
    the number of threads torch now uses."""
    if torch.device(dev if dev is not None else device()).type == "cpu":
        torch.set_num_threads(1)
    return torch.get_num_threads()


def to_device(x: torch.Tensor, dev: str | torch.device) -> torch.Tensor:
    """`x` on `dev`. A CPU tensor bound for a GPU goes through page-locked memory without
    blocking: a plain `.to("cuda")` makes the CPU wait until the GPU has finished everything
    queued before it, once per training step if the batches are drawn on the CPU. On the CPU
    this is `x.to(dev)`, the same tensor."""
    dev = torch.device(dev)
    if dev.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(dev, non_blocking=True)
    return x.to(dev)


def synchronize(dev: str | torch.device | None = None) -> None:
    """Wait until `dev` (default: the course's device) has finished the work queued on it. A GPU
    runs kernels asynchronously, so a wall-clock timing must wait for it before reading the
    clock; on the CPU there is nothing to wait for."""
    dev = torch.device(dev if dev is not None else device())
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def device() -> torch.device:
    """The device the course computes on: $MMCOURSE_DEVICE if set (e.g. "cpu", "cuda:0"),
    else "cuda" when a GPU is available, else "cpu"."""
    wanted = os.environ.get(DEVICE_VARIABLE, "").strip()
    if not wanted:
        return normalize_device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(wanted)
    except RuntimeError:
        raise ValueError(
            f"{DEVICE_VARIABLE} must name a torch device such as 'cpu' or 'cuda:0', got {wanted!r}"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{DEVICE_VARIABLE}={wanted!r} but this machine has no CUDA GPU")
    return normalize_device(dev)


def normalize_device(dev: str | torch.device) -> torch.device:
    """`dev` as tensors report it: "cuda" → cuda:0 (the current GPU), "cpu:0" → cpu (CPU tensors
    carry no index).

    `torch.device("cuda") != torch.device("cuda", 0)` although a tensor created on the first is
    on the second, so every comparison of devices in the course goes through this function.

    Naming the device does not start CUDA: until CUDA starts the current GPU is GPU 0, and
    asking CUDA would create its context here, which a process forked afterwards cannot use
    (chapter 11 forks its gloo ranks from the notebook)."""
    dev = torch.device(dev)
    if dev.type == "cuda" and dev.index is None:
        index = torch.cuda.current_device() if torch.cuda.is_initialized() else 0
        return torch.device("cuda", index)
    if dev.type == "cpu":
        return torch.device("cpu")
    return dev


def same_device(a: str | torch.device, b: str | torch.device) -> bool:
    """Whether `a` and `b` name the same device ("cuda" and "cuda:0" do on a one-GPU machine)."""
    return normalize_device(a) == normalize_device(b)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def triton_mode() -> str:
    """How Triton kernels will run here: compiled on a GPU, interpreted on the CPU, or not at all.

    Looks only at package metadata and the GPU, so it does not import triton (importing it before
    TRITON_INTERPRET=1 is set fixes the mode for the whole process)."""
    if _version("triton") == "not installed":
        return "not installed (chapter 09 needs Linux x86-64)"
    if torch.cuda.is_available():
        return "compiled on the GPU"
    return "interpreted on the CPU (TRITON_INTERPRET=1)"


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC …" from /proc/cpuinfo on Linux; elsewhere what
    `platform` knows): the machine a measurement was taken on."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def report() -> dict[str, str]:
    """Versions, hardware and modes that matter to the course, as printable strings."""
    dev = device()
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "none"
    return {
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "torch": torch.__version__,
        "numpy": _version("numpy"),
        "matplotlib": _version("matplotlib"),
        "triton": _version("triton"),
        "mmcourse device": str(dev),
        "GPU": gpu,
        "CPU threads used by torch": str(torch.get_num_threads()),
        "Triton kernels": triton_mode(),
    }
