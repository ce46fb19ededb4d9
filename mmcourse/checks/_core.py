"""The machinery every chapter's checkers share.

A chapter writes one small function per exercise, decorated with `exercise`:

    @exercise("0.1", "read a caption")
    def check_parse_caption(check: Check) -> None:
        got = check.call("a red circle in the center")
        check.equal(got, {"color": "red", ...}, "parses a one-word position")

`check.call(...)` runs the learner's function; `equal`, `close`, `that` and `raises` are the
individual checks. The decorated function takes the learner's candidate, runs every check, and
prints one line, `✓ Exercise 0.1 passed (5 checks)`, or raises `ExerciseFailed` with a message
naming the exercise, the check, what was expected, what came and a hint. The traceback stops at
the checker (`from None`): a learner reads the message, not torch's internals.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import os
import sys
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

# Private torch module, stable in practice: the one hook that sees every operation, whatever
# Python code issued it. Pinned torch; revisit when upgrading.
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from mmcourse.checks._placement import HostTensorMixed, PlacementAudit, is_host
from mmcourse.env import device as _default_device
from mmcourse.env import normalize_device


class ExerciseFailed(AssertionError):
    """An exercise's candidate is wrong; the message says which check failed and why."""

    def _render_traceback_(self) -> list[str]:
        """What IPython shows of a failed check (JupyterLab, nbval, nbgrader's feedback, `make
        check`): the message alone. The frames above it are the checker's own machinery and
        would only bury the message."""
        first, *rest = str(self).splitlines() or [""]
        return [f"\x1b[0;31m{type(self).__name__}\x1b[0m: {first}", *rest]


class _Failure(Exception):
    """One failed check, on its way to becoming an ExerciseFailed in `exercise`."""

    def __init__(
        self, what: str, expected: str, got: str, hint: str = "", diagnosis: str = ""
    ) -> None:
        super().__init__(f"{what}: expected {expected}, got {got}")
        self.what, self.expected, self.got, self.hint = what, expected, got, hint
        self.diagnosis = diagnosis  # what the result looks like, when a known mistake fits


class _NotImplemented(Exception):
    """The candidate is still the stub."""


def describe(value: Any) -> str:
    """A short, readable description of a value for a failure message."""
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)}, dtype {value.dtype}, on {value.device}"
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    first = lines[0] if lines else ""
    return f"{type(error).__name__}: {first[:200]}" if first else type(error).__name__


class Check:
    """The checks of one exercise, run against one candidate; counts the checks that ran."""

    def __init__(
        self, candidate: Callable, device: torch.device, references: References | None = None
    ) -> None:
        self.candidate = candidate
        self.device = device
        self.count = 0
        self.references = references or References(())
        self.delegated: dict[str, None] = {}  # the references the candidate called, in order

    def _run(self, *args: Any, **kwargs: Any) -> Any:
        """The candidate itself, watched for calls of the exercise's reference."""
        with self.references.watch(self.delegated):
            return self.candidate(*args, **kwargs)

    # --- running the candidate ---------------------------------------------------------------

    def call(self, *args: Any, **kwargs: Any) -> Any:
        """Run the candidate. The stub's NotImplementedError and any other exception become a
        failed check that names the inputs, instead of a traceback."""
        _inputs_on_device(args, kwargs)
        try:
            result = self._run(*args, **kwargs)
        except NotImplementedError:
            raise _NotImplemented() from None
        except Exception as error:  # the learner's code crashed: report it in one line
            self.count += 1
            if _is_device_mismatch(error):
                raise _device_failure(self.device, args, kwargs, error) from None
            raise _Failure(
                f"runs on {_describe_call(args, kwargs)}",
                "a result",
                f"it raised {_one_line(error)}",
                "run your function on these inputs in a cell of its own to see the traceback",
            ) from None
        self._result_on_device(result, args, kwargs)
        return result

    def _result_on_device(self, result: Any, args: tuple, kwargs: dict) -> None:
        """The tensors a candidate returns are on the device of its tensor inputs: on a GPU a
        result made without device= would be on the CPU (the audit marks such tensors on a CPU
        run; on a GPU its device says so)."""
        inputs = {
            x.device
            for x in tree_leaves((args, kwargs))
            if isinstance(x, torch.Tensor) and not is_host(x)
        }
        if len(inputs) != 1:  # no inputs on the course device, or on several: nothing to follow
            return
        (device,) = inputs
        for leaf in tree_leaves(result):
            if not isinstance(leaf, torch.Tensor) or leaf.dim() == 0:
                continue
            if is_host(leaf) or normalize_device(leaf.device) != normalize_device(device):
                self.count += 1
                where = "cpu" if is_host(leaf) else str(leaf.device)
                raise _Failure(
                    "returns its tensors on the device of its inputs",
                    f"tensors on {_device_words(self.device, device)}",
                    f"a tensor of shape {tuple(leaf.shape)} on {where}"
                    + (" (created without device=)" if is_host(leaf) else ""),
                    _DEVICE_HINT,
                )

    # --- individual checks -------------------------------------------------------------------

    def that(self, condition: bool, what: str, *, expected: str, got: str, hint: str = "") -> None:
        """A check of any condition; `expected` and `got` describe it in words."""
        self.count += 1
        if not condition:
            raise _Failure(what, expected, got, hint)

    def equal(
        self,
        got: Any,
        expected: Any,
        what: str,
        *,
        hint: str = "",
        dtype_hint: str = "",
        alternatives: Mapping[str, torch.Tensor] | None = None,
        sizes: Mapping[str, int] | None = None,
    ) -> None:
        """`got == expected` for plain values; exact equality, shape and dtype for tensors,
        diagnosed like `close`."""
        if isinstance(expected, torch.Tensor):
            self.close(
                got,
                expected,
                what,
                atol=0.0,
                rtol=0.0,
                hint=hint,
                dtype_hint=dtype_hint,
                alternatives=alternatives,
                sizes=sizes,
            )
            return
        self.count += 1
        if type(got) is not type(expected) or got != expected:
            raise _Failure(what, describe(expected), describe(got), hint)

    def close(
        self,
        got: Any,
        expected: torch.Tensor,
        what: str,
        *,
        atol: float = 1e-5,
        rtol: float = 1e-4,
        hint: str = "",
        dtype_hint: str = "",
        check_dtype: bool = True,
        alternatives: Mapping[str, torch.Tensor] | None = None,
        sizes: Mapping[str, int] | None = None,
    ) -> None:
        """`got` is a tensor like `expected` (shape, dtype, device) with values within
        atol + rtol·|expected| of it. `hint` is for wrong values, shape or device; a wrong dtype
        gets `dtype_hint`, or the general one for `expected`'s dtype (a hint about values says
        nothing about a dtype); what is not a tensor at all gets its own.

        A wrong shape or wrong values get a "looks like:" line, shown instead of `hint`, when
        the result is recognisable: `alternatives` maps a description to the tensor a known
        mistake gives on these inputs, and the first that `got` matches is named; otherwise a
        generic relation to `expected` is named when exactly one fits (see `_diagnose`), with
        a constant factor named from `sizes` ({"D": 16}) when it is one of them or its inverse.
        """
        self.count += 1
        if not isinstance(got, torch.Tensor):
            raise _not_a_tensor(what, describe(expected), got)
        if got.shape != expected.shape:
            raise _Failure(
                what,
                f"shape {tuple(expected.shape)}",
                f"shape {tuple(got.shape)}",
                hint,
                _diagnose(got, expected, atol, rtol, alternatives, sizes),
            )
        if check_dtype and got.dtype != expected.dtype:
            raise _Failure(
                what,
                f"dtype {expected.dtype}",
                f"dtype {got.dtype}",
                dtype_hint or _dtype_hint(expected.dtype),
            )
        if got.device != expected.device:
            raise _Failure(
                what,
                f"a tensor on {expected.device}",
                f"a tensor on {got.device}",
                _DEVICE_HINT,  # a hint about values says nothing about a device
            )
        diff = _mismatch(got.detach(), expected.detach(), atol, rtol)
        if diff:
            tolerance = "exactly" if atol == rtol == 0 else f"within atol={atol:g}, rtol={rtol:g}"
            raise _Failure(
                what,
                f"the reference values ({tolerance})",
                diff,
                hint,
                _diagnose(got, expected, atol, rtol, alternatives, sizes),
            )

    # --- what came back: container, type, shape, dtype -----------------------------------------

    def parts(self, got: Any, names: Sequence[str], *, hint: str = "") -> tuple:
        """One check that `got` is a tuple (or list) of the documented values, e.g. `names` =
        ("codebook_loss", "commitment_loss"); returns it as a tuple to unpack."""
        self.count += 1
        listed = ", ".join(names)
        if not (isinstance(got, (tuple, list)) and len(got) == len(names)):
            raise _Failure(
                f"returns a tuple ({listed})",
                f"a tuple of {len(names)} values",
                _describe_parts(got),
                hint or f"end with `return {listed}`",
            )
        return tuple(got)

    def tensor(
        self,
        got: Any,
        what: str,
        *,
        shape: Sequence[int] | None = None,
        dtype: torch.dtype | None = None,
        hint: str = "",
        dtype_hint: str = "",
        sizes: Mapping[str, int] | None = None,
    ) -> torch.Tensor:
        """One check that `got` is a tensor, of `shape` and `dtype` where given: a result the
        later checks inspect fails here with "expected a tensor of shape …, got …" rather than
        inside them. A wrong shape is diagnosed like `close`'s (`sizes` names dims); `hint` is
        for a wrong shape, `dtype_hint` (or the general one for `dtype`) for a wrong dtype;
        what is not a tensor at all gets its own."""
        self.count += 1
        wanted = [f"shape {tuple(shape)}"] if shape is not None else []
        wanted += [f"dtype {dtype}"] if dtype is not None else []
        expected = "a tensor" + (" of " + ", ".join(wanted) if wanted else "")
        if not isinstance(got, torch.Tensor):
            raise _not_a_tensor(what, expected, got)
        if shape is not None and tuple(got.shape) != tuple(shape):
            diagnosis = _shape_diagnosis(tuple(got.shape), tuple(shape), sizes or {})
            raise _Failure(what, expected, describe(got), hint, diagnosis)
        if dtype is not None and got.dtype != dtype:
            raise _Failure(what, expected, describe(got), dtype_hint or _dtype_hint(dtype))
        return got

    def number(self, got: Any, what: str, *, hint: str = "") -> float:
        """One check that `got` is one number: a Python int or float, or a tensor of zero
        dimensions (what .sum() or .mean() gives); returns it as a float."""
        self.count += 1
        plain = isinstance(got, (int, float)) and not isinstance(got, bool)
        if not (plain or (isinstance(got, torch.Tensor) and got.dim() == 0)):
            raise _Failure(
                what,
                "one number (a float, or a tensor of shape ())",
                describe(got)
                if isinstance(got, torch.Tensor)
                else f"a {type(got).__name__}: {describe(got)}",
                hint or "reduce to one number (.mean(), .sum(), .item()) before returning it",
            )
        return float(got)

    def raises(
        self,
        errors: type[BaseException] | tuple[type[BaseException], ...],
        what: str,
        *args: Any,
        hint: str = "",
        **kwargs: Any,
    ) -> BaseException:
        """The candidate, called on these arguments, raises one of `errors`."""
        self.count += 1
        names = " or ".join(
            e.__name__ for e in (errors if isinstance(errors, tuple) else (errors,))
        )
        _inputs_on_device(args, kwargs)
        try:
            result = self._run(*args, **kwargs)
        except NotImplementedError:
            raise _NotImplemented() from None
        except errors as error:
            return error
        except Exception as error:
            raise _Failure(what, names, _one_line(error), hint) from None
        raise _Failure(what, names, f"no error; it returned {describe(result)}", hint)


# --- the exercise's reference: a candidate that calls it is not the learner's own work ---------

GRADED = "MMCOURSE_GRADED"
"""Set (to anything but '', '0', 'false', 'no') in graded runs: `python -m mmcourse.grade` and
`make check` set it for their kernels, instructors set it for `nbgrader autograde`. There a
candidate that calls its exercise's reference fails; in self-study it passes with a note."""


def graded() -> bool:
    """Whether this is a graded run (see `GRADED`)."""
    return os.environ.get(GRADED, "").strip().lower() not in ("", "0", "false", "no")


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # …/mmcourse/
_CHECKS = os.path.dirname(os.path.abspath(__file__)) + os.sep
# Frames that only pass a call on: torch (nn.Module.__call__, no_grad's wrapper) and functools.
_TRANSPARENT = (os.path.dirname(os.path.abspath(torch.__file__)) + os.sep, functools.__file__)


class References:
    """The package code that *is* an exercise's answer: functions (with their private helpers,
    listed alongside), methods, and classes (every method; subclassing counts too). Knows the
    code objects, so a call is recognised however the candidate reached the function: an alias,
    a lambda, functools.partial, a module imported under another name, getattr."""

    def __init__(self, items: Sequence[Any]) -> None:
        self.codes: dict[types.CodeType, str] = {}
        self.classes: list[tuple[type, str]] = []
        for item in items:
            name = f"{item.__module__}.{item.__qualname__}"
            if isinstance(item, type):
                self.classes.append((item, name))
                for member in vars(item).values():
                    self._add(member, name)
            else:
                self._add(item, name)

    def _add(self, item: Any, name: str) -> None:
        if isinstance(item, (staticmethod, classmethod)):
            item = item.__func__
        if isinstance(item, property):
            for part in (item.fget, item.fset):
                if part is not None:
                    self._add(part, name)
            return
        item = getattr(item, "__func__", item)  # a bound method
        item = inspect.unwrap(item) if callable(item) else item
        code = getattr(item, "__code__", None)
        if isinstance(code, types.CodeType):
            self._add_code(code, name)

    def _add_code(self, code: types.CodeType, name: str) -> None:
        self.codes[code] = name
        for const in code.co_consts:  # nested functions, closures
            if isinstance(const, types.CodeType):
                self._add_code(const, name)

    def subclassed(self, candidate: Any) -> str | None:
        """The reference class the candidate is, or subclasses."""
        if isinstance(candidate, type):
            for cls, name in self.classes:
                if issubclass(candidate, cls):
                    return name
        return None

    @contextlib.contextmanager
    def watch(self, found: dict[str, None]) -> Iterator[None]:
        """Inside the block, records in `found` every reference called from outside the package
        (from the learner's code, or straight from the checker: the candidate *is* it). A package
        function of another exercise that uses this reference internally is its own business."""
        if not self.codes:
            yield
            return
        codes, previous = self.codes, sys.getprofile()
        chain = previous if callable(previous) else None

        def profile(frame: Any, event: str, arg: Any) -> Any:
            if event == "call":
                name = codes.get(frame.f_code)
                if name is not None and name not in found and _from_outside(frame.f_back):
                    found[name] = None
            if chain is not None:
                chain(frame, event, arg)

        sys.setprofile(profile)
        try:
            yield
        finally:
            sys.setprofile(previous)


def _from_outside(frame: Any) -> bool:
    """Whether the first frame below `frame` that does more than pass the call on is outside the
    package: the learner's, or the checker machinery that runs the candidate."""
    while frame is not None and frame.f_code.co_filename.startswith(_TRANSPARENT):
        frame = frame.f_back
    if frame is None:
        return True
    file = frame.f_code.co_filename
    if file.startswith(_CHECKS):  # _core / _contract run the candidate; chNN bodies are package
        return os.path.basename(file) in ("_core.py", "_contract.py")
    return not file.startswith(_PACKAGE)


_DTYPE_HINT = (
    "keep the input's dtype (create new tensors with x.new_full / x.new_zeros, or pass "
    "dtype=x.dtype)"
)


def _dtype_hint(expected: torch.dtype) -> str:
    """The general hint for a result of another dtype than `expected`: a float result keeps the
    input's; indices, ids and masks keep the integer or bool dtype they are documented with."""
    if expected.is_floating_point or expected.is_complex:
        return _DTYPE_HINT
    return (
        f"return {expected}, as documented: indices (argmin, argmax, arange) are torch.int64 "
        f"and comparisons give torch.bool, so don't convert them (.float(), .int()); pass "
        f"dtype={expected} to the tensors you create"
    )


def _not_a_tensor(what: str, expected: str, got: Any) -> _Failure:
    """A result that should be a tensor and is not: what came instead, and what to return."""
    if isinstance(got, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in got):
        hint = "return the tensor itself, not a tuple or list holding it"
        return _Failure(what, expected, _describe_parts(got), hint)
    return _Failure(what, expected, f"a {type(got).__name__}: {describe(got)}", _TENSOR_HINT)


_TENSOR_HINT = "return a torch.Tensor"


def _describe_parts(value: Any) -> str:
    """A tuple or list by its length and items, anything else as `describe` puts it."""
    if not isinstance(value, (tuple, list)):
        return describe(value)
    items = ", ".join(describe(item) for item in value)
    count = f"{len(value)} value" + ("" if len(value) == 1 else "s")
    return f"a {type(value).__name__} of {count}: ({items})"


def _describe_call(args: tuple, kwargs: dict) -> str:
    parts = [describe(a) for a in args] + [f"{k}={describe(v)}" for k, v in kwargs.items()]
    return "(" + ", ".join(parts) + ")"


_DEVICE_HINT = (
    "a tensor created without device= stays on the CPU while the inputs are on the GPU: create "
    "new tensors on the inputs' device, e.g. torch.arange(n, device=x.device), x.new_zeros(…), "
    "torch.zeros_like(x), or move them with .to(x.device)"
)
# How CUDA words a device mismatch (torch 2.x), and the audit's own error on a CPU run.
_MISMATCH_WORDS = (
    "Expected all tensors to be on the same device",
    "to be on the same device",
    "is on cpu, different from other tensors",
    "Expected a 'cuda' device type for generator",
    "found two devices",
    "should be the same device",
)


def _inputs_on_device(args: tuple, kwargs: dict) -> None:
    """A checker hands the candidate its tensors on the course device: one it built without
    device= (seen by the audit) is the checker's own bug, which a GPU would turn into a device
    mismatch inside the learner's code. Raised as an internal error, never blamed on the learner."""
    for leaf in tree_leaves((args, kwargs)):
        if isinstance(leaf, torch.Tensor) and leaf.dim() > 0 and is_host(leaf):
            raise RuntimeError(
                f"checker bug: it passes a tensor of shape {tuple(leaf.shape)} built without "
                "device= (move every input to check.device)"
            )


def _is_device_mismatch(error: BaseException) -> bool:
    return isinstance(error, HostTensorMixed) or (
        isinstance(error, RuntimeError) and any(w in str(error) for w in _MISMATCH_WORDS)
    )


def _device_words(course: torch.device, inputs: torch.device) -> str:
    if course.type == "cpu":  # the audit: say what a GPU would make of it
        return "the inputs' device (cpu here, cuda on a GPU machine)"
    return str(normalize_device(inputs))


def _device_failure(
    course: torch.device, args: tuple, kwargs: dict, error: BaseException
) -> _Failure:
    inputs = [x for x in tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]
    where = _device_words(course, inputs[0].device) if inputs else str(course)
    got = _one_line(error).removeprefix("HostTensorMixed: ")
    if course.type == "cpu":
        got += "; on a GPU this raises 'Expected all tensors to be on the same device'"
    return _Failure(
        "keeps every tensor it creates on the device of its inputs",
        f"every tensor on {where}",
        got,
        _DEVICE_HINT,
    )


def _mismatch(got: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float) -> str:
    """'' when the values agree, else a one-line account of where and by how much."""
    if got.numel() == 0:
        return ""
    if got.is_floating_point() or expected.is_floating_point():
        a, b = got.double(), expected.double()
        bad = ~torch.isclose(a, b, rtol=rtol, atol=atol, equal_nan=True)
    else:
        a, b = got, expected
        bad = a != b
    n_bad = int(bad.sum())
    if n_bad == 0:
        return ""
    first = tuple(int(i) for i in bad.nonzero()[0])
    where = list(first) if first else "the value"
    message = f"{n_bad} of {got.numel()} values differ; at {where} expected {b[first].item():.6g}, "
    message += f"got {a[first].item():.6g}"
    if a.is_floating_point():
        gap = (a - b).abs()
        gap = gap[~torch.isnan(gap)]
        if gap.numel():
            message += f" (largest difference {gap.max().item():.3g})"
    return message


# --- what a wrong result looks like ------------------------------------------------------------


def _diagnose(
    got: torch.Tensor,
    expected: torch.Tensor,
    atol: float,
    rtol: float,
    alternatives: Mapping[str, torch.Tensor] | None,
    sizes: Mapping[str, int] | None,
) -> str:
    """What a wrong `got` looks like, in words, or '' when nothing fits unambiguously: the first
    of `alternatives` (known mistakes' results on these inputs) it matches; else, for a wrong
    shape, how its shape relates to the expected one; else the one generic relation to
    `expected` that fits (√, square, a constant factor, the negative, two dims swapped, one step
    shifted). Compared in float64 on the CPU, so any dtype and device can be diagnosed."""
    if got.numel() > _DIAGNOSED_AT_MOST:
        return ""
    if got.is_floating_point() or expected.is_floating_point():
        atol, rtol = max(atol, 1e-6), max(rtol, 1e-5)  # an exact check still allows rounding
    g = _plain(got)
    for description, wrong in (alternatives or {}).items():
        if wrong.shape == got.shape and _agrees(g, _plain(wrong), atol, rtol):
            return description
    if got.shape != expected.shape:
        return _shape_diagnosis(tuple(got.shape), tuple(expected.shape), sizes or {})
    e = _plain(expected)
    found = [*_powers(g, e, atol, rtol)] if got.is_floating_point() else []
    found += [*_factor(g, e, atol, rtol, sizes or {}), *_swaps(g, e, atol, rtol)]
    found += [*_shifts(g, e, atol, rtol)]
    return found[0] if len(found) == 1 else ""


_DIAGNOSED_AT_MOST = 1 << 22  # elements: each comparison copies the tensors to CPU float64


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().double()


def _agrees(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float) -> bool:
    return bool(torch.isclose(a, b, rtol=rtol, atol=atol, equal_nan=True).all())


def _powers(g: torch.Tensor, e: torch.Tensor, atol: float, rtol: float) -> Iterator[str]:
    if bool((e.nan_to_num() >= 0).all()) and _agrees(g, e.sqrt(), atol, rtol):
        yield "the square root of the expected values (distances where squared distances belong)"
    if _agrees(g, e.square(), atol, rtol):
        yield "the square of the expected values (squared distances where distances belong)"


def _factor(
    g: torch.Tensor, e: torch.Tensor, atol: float, rtol: float, sizes: Mapping[str, int]
) -> Iterator[str]:
    """got = c·expected for one constant c (fitted by least squares): named when c is −1 or a
    named size (or its inverse); a plain number only when two or more entries pin it down."""
    finite = g.isfinite() & e.isfinite()
    scale = e[finite].square().sum()
    if scale == 0:
        return
    c = float((g[finite] * e[finite]).sum() / scale)
    if abs(c) < 1e-6 or abs(c - 1) < 1e-3 or not _agrees(g, c * e, atol * max(1, abs(c)), rtol):
        return
    near = max(1e-3, 10 * rtol)
    if abs(c + 1) < near:
        yield "the negative of the expected values (a sign flipped)"
        return
    for size in sorted(set(sizes.values())):
        names = [name for name, value in sizes.items() if value == size]
        label, over = " = ".join(names) + f" = {size}", " or ".join(names)
        if size > 1 and abs(c / size - 1) < near:
            yield f"a factor of {label} too large: a sum over {over} where a mean belongs"
            return
        if size > 1 and abs(c * size - 1) < near:
            yield f"a factor of {label} too small: a mean over {over} where a sum belongs"
            return
    if int((e.abs() > atol).sum()) >= 2:
        yield f"the expected values times {c:.4g} (a constant factor too many or missing)"


def _swaps(g: torch.Tensor, e: torch.Tensor, atol: float, rtol: float) -> Iterator[str]:
    n = e.dim()
    for i, j in itertools.combinations(range(n), 2):
        if e.shape[i] == e.shape[j] > 1 and _agrees(g, e.transpose(i, j), atol, rtol):
            dims = "the last two dims" if (i, j) == (n - 2, n - 1) else f"dims {i} and {j}"
            yield (
                f"the expected values transposed ({dims} swapped): a .T or transpose too many "
                "or missing, or a permute in the wrong order"
            )


def _shifts(g: torch.Tensor, e: torch.Tensor, atol: float, rtol: float) -> Iterator[str]:
    """got[i] = expected[i − 1] (or [i + 1]) along one dim, except at the edge, where the
    unshifted comparison differs in two or more entries: one step off."""
    for d in range(e.dim()):
        n = e.shape[d]
        if n < 2:
            continue
        first, rest = (0, n - 1), (1, n - 1)
        for mine, theirs, source in ((rest, first, "i−1"), (first, rest, "i+1")):
            part = g.narrow(d, *mine)
            if (
                part.numel() >= 2
                and _agrees(part, e.narrow(d, *theirs), atol, rtol)
                and int((~torch.isclose(part, e.narrow(d, *mine), rtol, atol, True)).sum()) >= 2
            ):
                yield (
                    f"the expected values shifted one step along dim {d}: entry i holds "
                    f"expected entry {source} (an index or time step one off)"
                )


def _shape_diagnosis(got: tuple, want: tuple, sizes: Mapping[str, int]) -> str:
    """How a wrong shape relates to the expected one: dims swapped or reordered, a dim of size
    1 too many or too few, one dim a named size too large or too small; '' otherwise."""
    if len(got) == len(want) and sorted(got) == sorted(want):
        moved = [i for i in range(len(got)) if got[i] != want[i]]
        if len(moved) == 2:
            return (
                f"the expected shape with dims {moved[0]} and {moved[1]} swapped: a transpose, "
                "or a permute in the wrong order"
            )
        return "the expected sizes in another order: a permute in the wrong order"
    if [s for s in got if s != 1] == [s for s in want if s != 1]:
        if len(got) > len(want):
            return (
                "the expected shape with an extra dim of size 1: keepdim=True or an indexing "
                "[:, None] where it does not belong, or a missing squeeze"
            )
        return (
            "the expected shape without one of its dims of size 1: a squeeze too many, or "
            "keepdim=True missing"
        )
    differ = [i for i in range(len(got)) if got[i] != want[i]] if len(got) == len(want) else []
    if len(differ) == 1:
        (d,) = differ
        for name, size in sizes.items():
            if size > 1 and got[d] == want[d] * size:
                return f"dim {d} {name} = {size} times too large: {name} folded into it"
            if size > 1 and got[d] * size == want[d]:
                return f"dim {d} {name} = {size} times too small: {name} split off from it"
    return ""


def exercise(
    number: str,
    title: str,
    *,
    audit_devices: bool = True,
    references: Sequence[Any] = (),
) -> Callable[[Callable[[Check], None]], Callable[..., None]]:
    """Turn `body(check)` into the checker `check_<name>(candidate, *, device=None)` of
    Exercise `number`. `device` defaults to `mmcourse.device()`.

    `references`: the package code that is this exercise's answer (functions, their private
    helpers, methods, classes). A candidate that calls one of them from its own code (however
    wrapped), is one, or subclasses one, delegates: in self-study it passes with a note saying
    so; in a graded run (`graded()`, the environment variable MMCOURSE_GRADED) it fails, naming
    the reference. Package functions of other exercises stay free to use.

    On a CPU the checker and the candidate run under `PlacementAudit`, which applies a GPU's
    device rule (a tensor made without device= must not meet the inputs), so a device mistake
    fails on a laptop as it would on a GPU. `audit_devices=False` for exercises that are not
    torch code (Triton kernels, run by their own launcher)."""

    watched = References(references)

    def decorate(body: Callable[[Check], None]) -> Callable[..., None]:
        @functools.wraps(body)
        def checker(candidate: Callable, *, device: str | torch.device | None = None) -> None:
            if not callable(candidate):
                raise ExerciseFailed(
                    f"Exercise {number} ({title}): pass your function itself to the checker, "
                    f"e.g. check(my_function) without parentheses; got {describe(candidate)}"
                )
            check = Check(
                candidate, normalize_device(device) if device else _default_device(), watched
            )
            prefix = f"Exercise {number} ({title})"
            if (cls := watched.subclassed(candidate)) is not None:
                check.delegated[cls] = None
            audit = audit_devices and check.device.type == "cpu"
            try:
                with PlacementAudit() if audit else contextlib.nullcontext():
                    body(check)
            except _NotImplemented:
                raise ExerciseFailed(
                    f"{prefix}: not implemented yet. Replace the lines `# YOUR CODE HERE` and "
                    "`raise NotImplementedError()` with your code, run that cell, then this one."
                ) from None
            except _Failure as failure:
                lines = [
                    f'{prefix} failed check {check.count}, "{failure.what}":',
                    f"  expected: {failure.expected}",
                    f"  got:      {failure.got}",
                ]
                if failure.diagnosis:  # says what the result is, in place of a general hint
                    lines.append(f"  looks like: {failure.diagnosis}")
                elif failure.hint:
                    lines.append(f"  hint:     {failure.hint}")
                raise ExerciseFailed("\n".join(lines)) from None
            except Exception as error:  # a result the checks could not even inspect
                raise ExerciseFailed(
                    f"{prefix} failed after {check.count} checks: the result could not be "
                    f"checked ({_one_line(error)}). Compare what your function returns with its "
                    "docstring: type, shape and dtype."
                ) from None
            if check.delegated and graded():
                raise ExerciseFailed(
                    f"{prefix} delegates to {_names(check.delegated)}, the package's reference: "
                    "graded answers must compute it themselves (package functions of other "
                    "exercises and earlier chapters are fine)"
                )
            note = ""
            if check.delegated:
                note = (
                    f" — but it calls {_names(check.delegated)}, the package's reference for "
                    "this exercise: fine to compare, but it teaches nothing; write it yourself "
                    "(a graded run fails it)"
                )
            print(f"✓ Exercise {number} passed ({check.count} checks){note}")

        checker.number, checker.title = number, title  # type: ignore[attr-defined]
        checker.references = watched  # type: ignore[attr-defined]
        return checker

    return decorate


def _names(found: dict[str, None]) -> str:
    names = list(found)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


class OpSpy(TorchDispatchMode):
    """Inside `with OpSpy() as spy:`, records the torch operations run (`spy.names`, e.g.
    "convolution") and the most elements of any tensor they create (`spy.largest`), so a checker
    can tell *how* a candidate computed its result (a convolution? an (N, K, D) temporary?)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()
        self.largest = 0

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple = (), kwargs: Any = None
    ) -> Any:
        self.names.add(func.__name__.split(".")[0])
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.largest = max(self.largest, leaf.numel())
        return out


def leaves(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Fresh leaf copies of `tensors` that require grad, for gradient checks."""
    return [t.detach().clone().requires_grad_() for t in tensors]


def gradients(loss: Any, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """∂(sum of loss)/∂x for each leaf x of `inputs`; zeros where the loss does not reach x (or
    is not a tensor that requires grad), so a candidate's missing gradient compares as zeros."""
    if not (isinstance(loss, torch.Tensor) and loss.requires_grad):
        return [torch.zeros_like(x) for x in inputs]
    grads = torch.autograd.grad(loss.sum(), inputs, allow_unused=True, retain_graph=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]


def seeded(seed: int) -> torch.Generator:
    """A CPU generator with this seed: checkers draw their inputs from it, then move them."""
    return torch.Generator().manual_seed(seed)


__all__ = [
    "GRADED",
    "Check",
    "ExerciseFailed",
    "References",
    "OpSpy",
    "describe",
    "exercise",
    "gradients",
    "graded",
    "leaves",
    "seeded",
]
