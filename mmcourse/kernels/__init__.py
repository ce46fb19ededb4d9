"""Triton kernels (chapter 09), and where they run.

Triton compiles kernels for a GPU. Without one, its interpreter runs the same kernels on CPU
tensors, program by program, with NumPy; it is switched on by the environment variable
`TRITON_INTERPRET=1`, which Triton reads when a kernel is decorated with `@triton.jit`.

Importing `mmcourse.kernels` (which `mmcourse.kernels.fused_vq` does first) decides the mode once,
before any kernel of the course is decorated:

- no CUDA GPU and `TRITON_INTERPRET` unset → it sets `TRITON_INTERPRET=1` (interpreter);
- a CUDA GPU → it leaves the variable alone: kernels compile (set `TRITON_INTERPRET=1` yourself,
  before importing, to debug them in the interpreter on a GPU machine too);
- `TRITON_INTERPRET` already set → respected as it is.

A process either interprets or compiles, never both: the interpreter patches `triton.language`
while it runs, and kernels compiled afterwards in the same process can break. Code that needs
the interpreter on a GPU machine runs it in a subprocess with `TRITON_INTERPRET=1`.

Triton's own library functions written in Triton (`tl.sum`, `tl.min`, ...) take the mode in force
when `triton.language` is first imported. When that import happened for compiling and this
process interprets, importing this package swaps them once for interpreted twins.

Chapter 09 relies on a few private Triton APIs (the interpreter's builder and function classes).
Tested with triton `TESTED_TRITON` (3.6.0 on the GPU image, 3.9.0 pinned for CPUs); when one of
them changes, `UnsupportedTriton` says so instead of a crash deep inside Triton.

`import mmcourse` never imports this package or triton. Triton ships for Linux x86-64 only: on
other platforms this package still imports, `TRITON_AVAILABLE` is False, and `require_triton()`
(called by `mmcourse.kernels.fused_vq`) raises an ImportError that says so.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys

import torch

__all__ = [
    "INTERPRETED",
    "TESTED_TRITON",
    "TRITON_AVAILABLE",
    "UnsupportedTriton",
    "require_triton",
    "sizes",
    "unsupported_triton",
]

INTERPRET_VARIABLE = "TRITON_INTERPRET"
#: The Triton versions chapter 09 was tested with: the oldest and the newest.
TESTED_TRITON = ("3.6.0", "3.9.0")


def _triton_installed() -> bool:
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):
        return False


TRITON_AVAILABLE: bool = _triton_installed()

if not torch.cuda.is_available():
    os.environ.setdefault(INTERPRET_VARIABLE, "1")

#: True when kernels run in Triton's interpreter (CPU tensors), False when they compile.
INTERPRETED: bool = os.environ.get(INTERPRET_VARIABLE, "0").strip().lower() in {"1", "true", "on"}


def require_triton() -> None:
    """Raise a clear ImportError when triton is not installed (it ships for Linux x86-64 only)."""
    if not TRITON_AVAILABLE:
        raise ImportError(
            "chapter 09 needs triton, which ships for Linux x86-64 only (pyproject.toml installs "
            "it there); on this platform the kernels cannot run. The rest of the course works."
        )


def sizes(*values: int) -> tuple:
    """Integer arguments for a kernel launch: as they are when kernels compile; in the
    interpreter as constexprs, which stay Python ints (Triton ≤ 3.6 hands int arguments to an
    interpreted kernel as 1-element arrays, which `range()` cannot take with NumPy 2.4:
    "only 0-dimensional arrays can be converted to Python scalars")."""
    if not INTERPRETED:
        return values
    import triton.language as tl

    return tuple(tl.constexpr(v) for v in values)


class UnsupportedTriton(RuntimeError):
    """A private Triton API that chapter 09 relies on changed in the installed version."""


def unsupported_triton(what: str) -> UnsupportedTriton:
    """The error to raise when `what` (a private Triton API) does not behave as tested."""
    try:
        installed = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        installed = "unknown"
    oldest, newest = TESTED_TRITON
    return UnsupportedTriton(
        f"this Triton version is not supported by chapter 09's checker: installed {installed}, "
        f"tested {oldest}–{newest} ({what}); install one of those, e.g. "
        f"pip install triton=={newest}"
    )


def _interpret_triton_library() -> None:
    """If triton.language was imported for compiling, swap its @jit library functions (in its
    modules and as tensor methods) for interpreted twins; only called in interpreting processes,
    where nothing compiles."""
    language = sys.modules.get("triton.language")
    if language is None:  # imported later, it reads TRITON_INTERPRET=1 itself
        return
    try:
        from triton.runtime.interpreter import InterpretedFunction
        from triton.runtime.jit import JITFunction

        namespaces = [language, language.core, language.math, language.standard, language.tensor]
    except (ImportError, AttributeError) as error:
        raise unsupported_triton(f"interpreting its library functions: {error}") from None
    for namespace in namespaces:
        for name, value in list(vars(namespace).items()):
            if isinstance(value, JITFunction):
                setattr(namespace, name, InterpretedFunction(value.fn))


if INTERPRETED and TRITON_AVAILABLE:
    _interpret_triton_library()
