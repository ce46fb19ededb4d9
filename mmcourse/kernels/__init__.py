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

Triton's own library functions written in Triton (`tl.sum`, `tl.min`, `tl.zeros`, ...) take the
mode in force when `triton.language` is first imported; `interpreter_scope()` lets a launch run
in the interpreter even when triton was imported earlier, or imported for compiling.

`import mmcourse` never imports this package or triton. Triton ships for Linux x86-64 only: on
other platforms this package still imports, `TRITON_AVAILABLE` is False, and `require_triton()`
(called by `mmcourse.kernels.fused_vq`) raises an ImportError that says so.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
from collections.abc import Iterator

import torch

__all__ = ["INTERPRETED", "TRITON_AVAILABLE", "interpreter_scope", "require_triton"]

INTERPRET_VARIABLE = "TRITON_INTERPRET"


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


@contextlib.contextmanager
def interpreter_scope() -> Iterator[None]:
    """Inside `with interpreter_scope():`, interpreted kernels can call Triton's library functions
    whatever mode `triton.language` was imported in: its compiled-mode @jit functions are swapped
    for interpreted twins (and TRITON_INTERPRET reads 1), then everything is put back."""
    require_triton()
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    with contextlib.suppress(ImportError):  # imported lazily by a first launch: not in the swap
        importlib.import_module("triton.experimental.gluon")
    swapped = []
    for module in (tl, tl.core, tl.math, tl.standard):
        for name, value in list(vars(module).items()):
            if isinstance(value, JITFunction):
                swapped.append((module, name, value))
                setattr(module, name, InterpretedFunction(value.fn))
    before = os.environ.get(INTERPRET_VARIABLE)
    os.environ[INTERPRET_VARIABLE] = "1"
    try:
        yield
    finally:
        for module, name, value in swapped:
            setattr(module, name, value)
        if before is None:
            del os.environ[INTERPRET_VARIABLE]
        else:
            os.environ[INTERPRET_VARIABLE] = before
