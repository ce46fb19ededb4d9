"""Helpers for the parts of the checker contract (COURSE_GUIDE §4) that every chapter shares.

`call(check, ...)` runs the candidate like `Check.call` and then checks that it left every input
as it came: tensors (values, shape, dtype), lists and tuples of them, dicts, and the parameters
and buffers of an `nn.Module`. A candidate that writes into its input can still return the right
result, and it breaks the caller's data (and the next check's inputs), so it fails on the spot,
naming the argument.

`step_budget(check, steps)` stops a candidate after `steps` executed lines of Python: a loop
whose index never advances would otherwise run forever, or append until the kernel runs out of
memory and dies, and the learner would see a dead kernel, not a message.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from mmcourse.checks._core import Check, _Failure

_IN_PLACE_HINT = (
    "a common cause is an in-place operation on an input (x -= …, x[...] = …, x.add_(…), "
    "x.masked_fill_(…), .append on a list you were given): work on a copy, x.clone(), or use "
    "the out-of-place form (x = x - …, x.masked_fill(…))"
)
_SIGNATURE_HINT = (
    "compare your function's parameters with the docstring's signature: every documented "
    "parameter, in that order, with its documented default"
)
_OPAQUE = object()  # a value the snapshot does not look into (caches, generators, vocabularies)


def call(check: Check, *args: Any, **kwargs: Any) -> Any:
    """`check.call(*args, **kwargs)`, then one more check when an input was modified in place:
    `leaves its input <name> unchanged`, naming the argument as the candidate calls it."""
    before = [_snapshot(a) for a in args], {k: _snapshot(v) for k, v in kwargs.items()}
    try:
        result = check.call(*args, **kwargs)
    except _Failure as failure:
        if failure.got.startswith("it raised TypeError") and "argument" in failure.got:
            failure.hint = _SIGNATURE_HINT
        raise
    names = _names(check.candidate, len(args))
    for index, (snap, value) in enumerate(zip(before[0], args)):
        _verify(check, snap, value, names[index])
    for key, snap in before[1].items():
        _verify(check, snap, kwargs[key], key)
    return result


class _OutOfSteps(Exception):
    """The candidate ran more Python lines than its budget."""


@contextlib.contextmanager
def step_budget(check: Check, steps: int, hint: str = "") -> Iterator[None]:
    """Inside the block, every call of the candidate (through `check.call`, `call` or
    `check.raises`) fails once it has executed `steps` lines of Python, its own and those of
    the Python functions it calls, instead of running on; `hint` says what likely loops."""

    def trace(frame: Any, event: str, arg: Any) -> Any:
        if event == "line":
            left[0] -= 1
            if left[0] < 0:
                raise _OutOfSteps()
        return trace

    candidate, previous, left = check.candidate, sys.gettrace(), [steps]

    def bounded(*a: Any, **k: Any) -> Any:
        left[0] = steps
        sys.settrace(trace)
        try:
            return candidate(*a, **k)
        finally:
            sys.settrace(previous)

    bounded.__signature__ = _signature(candidate)  # type: ignore[attr-defined]
    check.candidate = bounded
    try:
        yield
    except _Failure as failure:
        if "_OutOfSteps" in failure.got:
            failure.expected = f"{failure.expected} within {steps:,} steps of Python"
            failure.got = "still running: the loop never ends (stopped here)"
            failure.hint = hint or _LOOP_HINT
        raise
    finally:
        check.candidate = candidate


_LOOP_HINT = (
    "a loop whose index does not move on in some branch runs forever (and a list it appends "
    "to grows until the kernel dies): make sure every pass of the loop advances"
)


def _signature(candidate: Callable) -> inspect.Signature | None:
    try:
        return inspect.signature(candidate)
    except (TypeError, ValueError):
        return None


def _verify(check: Check, snap: Any, value: Any, name: str) -> None:
    where = _difference(snap, value)
    if where is None:
        return
    check.that(
        False,
        f"leaves its input {name} unchanged",
        expected=f"{name} as it was passed in",
        got=f"{name}{where} was modified in place",
        hint=_IN_PLACE_HINT,
    )


def _names(candidate: Callable, n: int) -> list[str]:
    """The candidate's names for its first n positional arguments ('argument i' when unknown)."""
    fallback = [f"argument {i + 1}" for i in range(n)]
    if isinstance(candidate, nn.Module):
        candidate = candidate.forward
    try:
        params = list(inspect.signature(candidate).parameters.values())
    except (TypeError, ValueError):
        return fallback
    names = []
    for i, param in enumerate(params):
        if param.kind in (param.VAR_POSITIONAL, param.KEYWORD_ONLY, param.VAR_KEYWORD):
            break
        names.append(param.name)
        if i + 1 == n:
            break
    return names + fallback[len(names) :]


def _snapshot(value: Any) -> Any:
    """A copy of `value` that later changes to `value` cannot reach."""
    if isinstance(value, torch.Tensor):
        return ("tensor", value.detach().clone())
    if isinstance(value, nn.Module):
        return ("module", {k: v.detach().clone() for k, v in value.state_dict().items()})
    if isinstance(value, (list, tuple)):
        return (getattr(value, "_fields", "sequence"), [_snapshot(v) for v in value])
    if isinstance(value, dict):
        return ("dict", {k: _snapshot(v) for k, v in value.items()})
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return ("plain", value)
    return ("opaque", _OPAQUE)


def _difference(snap: Any, value: Any) -> str | None:
    """None when `value` still matches its snapshot, else where it differs ('' for itself,
    '[2]' for an element, '.weight' for a module's parameter)."""
    kind, saved = snap
    if kind == "opaque":
        return None
    if kind == "tensor":
        return None if _same_tensor(saved, value) else ""
    if kind == "module":
        if not isinstance(value, nn.Module):
            return ""
        state = value.state_dict()
        for key, tensor in saved.items():
            if key not in state or not _same_tensor(tensor, state[key]):
                return f".{key}"
        return None
    if kind == "plain":
        return None if type(value) is type(saved) and value == saved else ""
    if kind == "dict":
        if not isinstance(value, dict) or value.keys() != saved.keys():
            return ""
        for key, item in saved.items():
            inner = _difference(item, value[key])
            if inner is not None:
                return f"[{key!r}]{inner}"
        return None
    if not isinstance(value, (list, tuple)) or len(value) != len(saved):
        return ""
    for index, (item, now) in enumerate(zip(saved, value)):
        inner = _difference(item, now)
        if inner is not None:
            field = f".{kind[index]}" if isinstance(kind, tuple) else f"[{index}]"  # namedtuple
            return f"{field}{inner}"
    return None


def _same_tensor(saved: torch.Tensor, value: Any) -> bool:
    if not isinstance(value, torch.Tensor):
        return False
    if value.shape != saved.shape or value.dtype != saved.dtype:
        return False
    now = value.detach()
    if now.device != saved.device:
        return False
    if saved.is_floating_point() or saved.is_complex():
        return bool(((now == saved) | (now.isnan() & saved.isnan())).all())
    return torch.equal(now, saved)


__all__ = ["call", "step_budget"]
