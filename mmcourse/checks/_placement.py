"""A GPU's device rules, enforced on a CPU: catch the tensor created without `device=`.

On a GPU, `torch.arange(n)` inside a function whose inputs are CUDA tensors makes a CPU tensor,
and the next operation that mixes the two raises "Expected all tensors to be on the same device".
On a laptop both are CPU tensors and nothing happens, so the mistake ships. `PlacementAudit`
replays the GPU's rule on the CPU:

- a tensor made by a factory (`torch.zeros`, `arange`, `tensor`, `as_tensor`, `randn`, …)
  without `device=`, or moved with `.cpu()`, is a *host* tensor: where the course device is a
  GPU, it would sit on the CPU;
- every other tensor (the inputs, models, anything made with `device=x.device`, `x.new_*`,
  `*_like`, or moved with `.to(device)`) is on the course device;
- results of operations on host tensors only are host tensors; an operation that mixes a host
  tensor of one or more dimensions with a device tensor raises `HostTensorMixed`, exactly where
  CUDA would raise. Like CUDA it allows zero-dimensional host tensors (scalars), indexing with
  host indices, copies and `.to()`.

It is a `TorchFunctionMode`: it sees the calls a Python function makes (and the package
functions it calls) at the level the learner wrote them, which is where `device=` is or is not
given. Tensors are marked with an attribute, so marks follow objects, not storage.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors
from torch.utils._pytree import tree_leaves

_MARK = "_mmcourse_host"

# Factories with a `device` argument (torch.zeros, arange, tensor, randn, ...). Private torch
# helper, the one DeviceContext uses; pinned torch. (torch.from_numpy bypasses torch-function
# modes, so the audit cannot see it: a known gap.)
_FACTORIES = frozenset(_device_constructors())
# Operations that accept a host tensor next to a CUDA one: indexing with host indices, copies
# across devices, moves, and those that read only a shape.
_MIXING_ALLOWED = frozenset(
    {
        torch.Tensor.__getitem__,
        torch.Tensor.__setitem__,
        torch.Tensor.index_put_,
        torch.Tensor.index_put,
        torch.Tensor.copy_,
        torch.Tensor.to,
        torch.Tensor.type_as,
        torch.Tensor.expand_as,
        torch.Tensor.view_as,
        torch.Tensor.reshape_as,
    }
)
_TO_HOST = frozenset({torch.Tensor.cpu})
_TO_DEVICE = frozenset({torch.Tensor.cuda})
_MOVES = _TO_HOST | _TO_DEVICE | _FACTORIES


class HostTensorMixed(RuntimeError):
    """An operation mixed a tensor that a GPU would keep on the CPU with course-device tensors."""


def is_host(tensor: torch.Tensor) -> bool:
    """Whether `tensor` was made without `device=` (or moved with .cpu()) under the audit."""
    return bool(getattr(tensor, _MARK, False))


def _mark(value: Any, host: bool) -> None:
    for leaf in tree_leaves(value):
        if isinstance(leaf, torch.Tensor):
            try:
                setattr(leaf, _MARK, host)
            except (AttributeError, RuntimeError):  # e.g. a tensor subclass without __dict__
                pass


def _name(func: Any) -> str:
    name = getattr(func, "__name__", repr(func))
    owner = getattr(func, "__objclass__", None) or getattr(func, "__self__", None)
    if owner is torch.Tensor or "Tensor" in getattr(func, "__qualname__", ""):
        return f"Tensor.{name}"
    module = getattr(func, "__module__", "") or ""
    if module.startswith("torch.nn.functional"):
        return f"F.{name}"
    return f"torch.{name}"


class PlacementAudit(TorchFunctionMode):
    """`with PlacementAudit():` raise `HostTensorMixed` where a GPU would raise a device
    mismatch (see the module's docstring). For CPU runs: on a GPU the real rule applies.

    An explicit device is read the way the code meant it: `device=x.device` (and `.to(x.device)`)
    follows x, host or not; any other device (`device=dev`, "cpu" included, since a CPU run
    cannot tell the course device from the host by value) counts as the course device."""

    def __init__(self) -> None:
        super().__init__()
        self._devices: dict[int, tuple[torch.device, bool]] = {}  # id → (object, host?)

    def _placement_of(self, device: Any) -> bool:
        """Whether an explicit device argument means the host (it was read off a host tensor)."""
        known = self._devices.get(id(device))
        return known is not None and known[0] is device and known[1]

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        tensors = [x for x in tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]
        host = [t for t in tensors if is_host(t)]
        on_device = [t for t in tensors if not is_host(t)]
        if host and on_device and func not in _MIXING_ALLOWED and func not in _MOVES:
            mixed = [t for t in host if t.dim() > 0]
            if mixed:  # checked before running, so the error is the one a GPU would give
                raise HostTensorMixed(
                    f"{_name(func)} got a tensor of shape {tuple(mixed[0].shape)} created "
                    "without device= (on a GPU it stays on the CPU) together with tensors on the "
                    "course device"
                )
        out = func(*args, **kwargs)
        if isinstance(out, torch.device) and len(args) == 1 and isinstance(args[0], torch.Tensor):
            self._devices[id(out)] = (out, is_host(args[0]))  # x.device: remember whose it is
            return out
        if func in _FACTORIES:
            if kwargs.get("device") is not None:
                _mark(out, self._placement_of(kwargs["device"]))
            else:  # no device=: the CPU; as_tensor(t) and tensor(t): the input's placement
                _mark(out, not tensors or any(is_host(t) for t in tensors))
            return out
        if func in _TO_HOST:
            return _moved(out, args, True)
        if func in _TO_DEVICE:
            return _moved(out, args, False)
        if func is torch.Tensor.to:
            target = _target(args, kwargs)
            if isinstance(target, torch.Tensor):
                return _moved(out, args, is_host(target))
            if target is not None:
                return _moved(out, args, self._placement_of(target))
            if tensors:  # a dtype change keeps the placement
                _mark(out, is_host(tensors[0]))
            return out
        if host and not on_device:
            _mark(out, True)
        return out


def _moved(out: Any, args: tuple, host: bool) -> Any:
    """The result of a move (.cpu(), .to(...)), marked `host`. On a CPU a move to the CPU
    returns its input itself; a GPU would return a new tensor, so when the mark must change,
    the result is a fresh view (same values, same autograd graph) and the input keeps its mark."""
    if isinstance(out, torch.Tensor) and args and out is args[0] and is_host(out) != host:
        out = out.view_as(out)
    _mark(out, host)
    return out


def _target(args: tuple, kwargs: dict) -> Any:
    """The device (or tensor to follow) a `Tensor.to(...)` call names; None for a dtype only."""
    for key in ("device", "other"):
        if kwargs.get(key) is not None:
            return kwargs[key]
    return next((a for a in args[1:] if isinstance(a, str | torch.device | torch.Tensor)), None)


__all__ = ["HostTensorMixed", "PlacementAudit", "is_host"]
