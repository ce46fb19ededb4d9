"""Checkers of chapter 09 (a Triton kernel for fused quantization): the masked tile of distances
and the running argmin update.

Both exercises are Triton code written as plain Python functions. The checker runs them the way
this process runs kernels (see `mmcourse.kernels`): compiled with `triton.jit` on CUDA tensors
when there is a GPU, in Triton's interpreter on CPU tensors otherwise. Interpreted and compiled
kernels never share a process: on a GPU machine, a function whose source Python cannot find
(defined by `exec`) cannot be compiled, and runs in the interpreter in a subprocess instead.

Each check draws fresh random inputs (never zeros) of odd sizes, inside guard memory: the rows
and columns around z and the codebook hold NaN, those past ‖e‖² hold −1e30, and the output sits
in a larger buffer filled with −7. Reads and writes out of range therefore stay inside the
allocations (no crash) and show:

- Exercise 9.1, interpreted: every load and store is watched, address by address; a load past
  row N, code K or column D fails with the first address out of range (even when a later
  `tl.where` hides the garbage it read); a masked load without `other=` fails; a store outside
  the output is dropped and reported. Compiled: the guard values that come out tell which read
  went out of range, the output's guard tells a store that did, and the kernel's Triton IR lists
  masked loads without `other=`. Codes past K must come out as +inf, rows past N as zero vectors.
- Exercise 9.2 compares the running (min, argmin) with torch on tiles built with ties inside a
  tile and across tiles, and recognises the classic wrong updates by what they return.

Delegation (a candidate calling its exercise's reference, caught by the other chapters'
checkers) does not apply here, and these checkers list no references: the package has no function
with either exercise's contract (the fused kernel in `mmcourse.kernels.fused_vq` computes its tile
inline and folds it with `_fold_tile`, which also tracks the second best and returns three
values), and a compiled kernel runs no Python a profiler could watch. A kernel built on
`_fold_tile` or on copied source is the instructor's matter (README, "Teaching with mmcourse").

Triton versions: see `mmcourse.kernels.TESTED_TRITON`; the private interpreter APIs used here are
tried on a small kernel first, and a change gives `UnsupportedTriton`, not a crash.
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import functools
import importlib
import inspect
import marshal
import os
import pickle
import re
import subprocess
import sys
import tempfile
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy
import torch

from mmcourse.checks._core import Check, exercise, seeded
from mmcourse.kernels import (
    INTERPRETED,
    UnsupportedTriton,
    require_triton,
    sizes,
    unsupported_triton,
)

require_triton()

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

_UNWRITTEN = -7.0  # the output's fill: "never written" inside it, "written" in its guard
_E_SQ_GUARD = -1e30  # past ‖e‖²: a read there gives a distance no real code can have

# ------------------------------------------------------------------ where the candidate runs


def _python_fn(fn: Callable) -> Callable:
    """The Python function under a @triton.jit decoration (compiled or interpreted)."""
    return getattr(fn, "fn", fn)


def _device() -> torch.device:
    """Kernel tensors live on the GPU when kernels compile, on the CPU in the interpreter."""
    return torch.device("cpu" if INTERPRETED else "cuda")


def _compilable(fn: Callable) -> Callable | None:
    """`triton.jit(fn)` for compiling, or None when Python has no source for `fn` (exec)."""
    try:
        inspect.getsource(fn)
    except (OSError, TypeError):
        return None
    return triton.jit(fn)


class _Failed:
    """What the candidate raised on a case, kept to be raised again inside `check.call`."""

    def __init__(self, error: BaseException) -> None:
        self.not_implemented = _is_not_implemented(error)
        root = _root(error)
        self.message = f"{type(root).__name__}: {root}"

    def reraise(self) -> None:
        if self.not_implemented:
            raise NotImplementedError() from None
        raise RuntimeError(self.message) from None


def _root(error: BaseException) -> BaseException:
    """The first exception of a chain (the interpreter wraps what a kernel raised)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def _is_not_implemented(error: BaseException | None) -> bool:
    while error is not None:
        if isinstance(error, NotImplementedError):
            return True
        error = error.__cause__ or error.__context__
    return False


def _execute(kind: str, candidate: Callable, cases: list[tuple], labels: list[str]) -> Callable:
    """Run the candidate on every case (until one raises), in the right place: compiled on a GPU;
    interpreted in this process without one; interpreted in a subprocess on a GPU machine when
    the candidate has no source to compile. → `replay(label)`: the case's result, or what the
    candidate raised on it, for `check.call(label)`."""
    fn = _python_fn(candidate)
    if INTERPRETED:  # triton.jit gives the interpreter's function, source or not
        runs = _run_cases(kind, triton.jit(fn), cases)
    elif (kernel := _compilable(fn)) is None:
        runs = _in_interpreter_process(kind, fn, cases)
    else:
        runs = _run_cases(kind, kernel, cases)

    def replay(label: str) -> Any:
        run = runs[labels.index(label)]
        if isinstance(run, _Failed):
            run.reraise()
        return run

    return replay


def _run_cases(kind: str, fn: Callable, cases: list[tuple]) -> list:
    runs: list = []
    for case in cases:
        try:
            runs.append(_RUNNERS[kind](fn, *case))
        except UnsupportedTriton:
            raise
        except Exception as error:  # noqa: BLE001  (reported as the learner's error)
            root = _root(error)
            runs.append(root if isinstance(root, _WrongReturn) else _Failed(error))
            break
    return runs


# ---------------------------------------- the interpreter in its own process (GPU machines)


def _global_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _portable(fn: Callable, depth: int = 0) -> dict:
    """A plain function as data another process can rebuild: its bytecode (marshal: same Python),
    defaults, annotations (constexprs) and the globals it names (modules by name, functions
    recursively, other values pickled)."""
    if fn.__closure__:
        raise RuntimeError(
            f"{fn.__name__} uses variables of an enclosing function; define it at "
            "the top level of a cell"
        )
    env = {}
    language = {name for name, value in fn.__globals__.items() if value is tl}  # interpreter needs
    for name in (_global_names(fn.__code__) | language) & set(fn.__globals__):
        value = fn.__globals__[name]
        if isinstance(value, types.ModuleType):
            env[name] = ("module", value.__name__)
        elif isinstance(_python_fn(value), types.FunctionType) and depth < 8:
            wrapped = _python_fn(value) is not value  # a @triton.jit helper
            env[name] = ("jit" if wrapped else "function", _portable(_python_fn(value), depth + 1))
        else:
            env[name] = ("value", value)
    return {
        "code": marshal.dumps(fn.__code__),
        "name": fn.__name__,
        "defaults": fn.__defaults__,
        "kwdefaults": fn.__kwdefaults__,
        "annotations": fn.__annotations__,
        "globals": env,
    }


def _rebuild(data: dict) -> Callable:
    namespace: dict = {"__builtins__": builtins}
    for name, (kind, value) in data["globals"].items():
        if kind == "module":
            namespace[name] = importlib.import_module(value)
        elif kind == "value":
            namespace[name] = value
        else:
            helper = _rebuild(value)
            namespace[name] = triton.jit(helper) if kind == "jit" else helper
    fn = types.FunctionType(marshal.loads(data["code"]), namespace, data["name"], data["defaults"])
    fn.__kwdefaults__ = data["kwdefaults"]
    fn.__annotations__ = data["annotations"]
    return fn


def _in_interpreter_process(kind: str, fn: Callable, cases: list[tuple]) -> list:
    """`_run_cases` in a fresh Python with TRITON_INTERPRET=1, on CPU tensors."""
    root = str(Path(__file__).resolve().parents[2])  # where `mmcourse` imports from
    env = os.environ | {
        "TRITON_INTERPRET": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
    }
    with tempfile.TemporaryDirectory() as tmp:
        request, answer = Path(tmp, "request.pkl"), Path(tmp, "answer.pkl")
        request.write_bytes(pickle.dumps((kind, _portable(fn), cases)))
        code = "import sys; from mmcourse.checks import ch09; ch09._serve(*sys.argv[1:])"
        done = subprocess.run(
            [sys.executable, "-c", code, str(request), str(answer)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            if UnsupportedTriton.__name__ in last:
                raise UnsupportedTriton(last.split(": ", 1)[-1])
            raise RuntimeError(f"the interpreter process failed: {last}")
        return pickle.loads(answer.read_bytes())


def _serve(request: str, answer: str) -> None:
    """The subprocess side of `_in_interpreter_process`."""
    kind, data, cases = pickle.loads(Path(request).read_bytes())
    _check_triton_support()
    runs = _run_cases(kind, triton.jit(_rebuild(data)), cases)
    Path(answer).write_bytes(pickle.dumps(runs))


# ---------------------------------------------------------------- guard memory, watched


class _Region:
    """rows × cols valid elements at the start of an allocation with row stride `stride`."""

    def __init__(self, name: str, buf: torch.Tensor, rows: int, cols: int, what: tuple) -> None:
        self.name, self.what = name, what  # what: (what rows counts, what columns count)
        self.start = buf.data_ptr()
        self.end = self.start + buf.numel() * buf.element_size()
        self.size = buf.element_size()
        self.stride = buf.stride(0) if buf.dim() == 2 else 1
        self.rows, self.cols = rows, cols

    def describe(self, row: int, col: int) -> str:
        """Where element (row, col) lies outside the valid block, in words."""
        if self.cols == 1 and self.stride == 1:
            return f"{self.name}[{row}], past the end ({self.what[0]} = {self.rows})"
        if row >= self.rows:
            return f"{self.name} at row {row}, past the last row ({self.what[0]} = {self.rows})"
        return (
            f"{self.name} at row {row}, column {col}, past the last column "
            f"({self.what[1]} = {self.cols})"
        )

    def first_bad(self, addresses: numpy.ndarray) -> str:
        """'' if every address in this allocation is a valid element, else the first bad one."""
        addresses = addresses[(addresses >= self.start) & (addresses < self.end)]
        offsets = (addresses - self.start) // self.size
        row, col = offsets // self.stride, offsets % self.stride
        bad = (row >= self.rows) | (col >= self.cols)
        return self.describe(int(row[bad][0]), int(col[bad][0])) if bad.any() else ""

    def holds(self, addresses: numpy.ndarray) -> numpy.ndarray:
        return (addresses >= self.start) & (addresses < self.end)


def _guarded(values: torch.Tensor, rows: int, stride: int, fill: float) -> torch.Tensor:
    """A (rows, stride) buffer filled with `fill`, `values` (R, C) in its top-left corner."""
    r, c = values.shape
    buf = torch.full((rows, stride), fill, dtype=values.dtype)
    buf[:r, :c] = values
    return buf


class _Watch:
    """What the interpreter's loads and stores did to guarded regions: the first read outside
    a tensor, masked loads without `other=`, the first store outside the output. Lanes that fall
    outside every allocation are switched off, so that nothing can crash the process."""

    def __init__(self, loads: list[_Region], stores: list[_Region]) -> None:
        self.loads, self.stores = loads, stores
        self.bad_reads: list[str] = []
        self.no_other: list[str] = []
        self.bad_stores: list[str] = []

    def _screen(self, args: dict, regions: list[_Region], found: list[str]) -> numpy.ndarray:
        ptrs, mask = args["ptrs"], args["mask"]
        addresses = ptrs.data.astype(numpy.int64)
        on = numpy.broadcast_to(mask.data.astype(bool), addresses.shape)
        known = numpy.zeros(addresses.shape, dtype=bool)
        for region in self.loads + self.stores:
            known |= region.holds(addresses)
        if (on & ~known).any():
            if not found:
                found.append("memory outside every tensor the kernel was given")
            args["mask"] = copy.copy(mask)
            args["mask"].data = on & known
        active = addresses[on & known]
        for region in regions:
            bad = region.first_bad(active)
            if bad and not found:
                found.append(bad)
        return active

    def on_load(self, args: dict) -> None:
        partial = not numpy.all(args["mask"].data)
        active = self._screen(args, self.loads, self.bad_reads)
        if args.get("other") is None and partial and not self.no_other:
            owner = [r.name for r in self.loads if r.holds(active[:1]).any()]
            self.no_other.append(f"a masked load from {owner[0] if owner else 'a tensor'}")

    def on_store(self, args: dict) -> None:
        self._screen(args, self.stores, self.bad_stores)


def _spy(builder: Any, method: str, names: tuple[str, ...], on_call: Callable) -> Callable:
    """Wrap the interpreter builder's `method` so that `on_call` sees (and may change) its
    arguments by name, whatever their position in this Triton version; → an undo function."""
    try:
        original = getattr(builder, method)
        signature = inspect.signature(original)
    except (AttributeError, TypeError, ValueError) as error:
        raise unsupported_triton(f"interpreter_builder.{method}: {error}") from None
    if not set(names) <= set(signature.parameters):
        raise unsupported_triton(f"interpreter_builder.{method}{signature} lacks {names}")

    def spy(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        on_call(bound.arguments)
        return original(*bound.args, **bound.kwargs)

    shadowed = method in vars(builder)
    setattr(builder, method, spy)
    return lambda: setattr(builder, method, original) if shadowed else delattr(builder, method)


@contextlib.contextmanager
def _watching(watch: _Watch) -> Iterator[_Watch]:
    """Inside, every load and store the interpreter runs goes through `watch`."""
    from triton.runtime import interpreter

    builder = getattr(interpreter, "interpreter_builder", None)
    if builder is None:
        raise unsupported_triton("triton.runtime.interpreter.interpreter_builder is gone")
    undo = [
        _spy(builder, "create_masked_load", ("ptrs", "mask", "other"), watch.on_load),
        _spy(builder, "create_masked_store", ("ptrs", "mask"), watch.on_store),
    ]
    try:
        with numpy.errstate(all="ignore"):  # NaN guards: quiet
            yield watch
    finally:
        for restore in undo:
            restore()


def _loads_without_other(ttir: str) -> int:
    """How many `tt.load`s in a kernel's Triton IR have a mask (2nd operand) but no `other`."""
    loads = re.findall(r"\btt\.load\s+(%[\w.#]+(?:\s*,\s*%[\w.#]+)*)", ttir)
    return sum(len(operands.split(",")) == 2 for operands in loads)


def _ttir(compiled: Any) -> str:
    """The Triton IR of a kernel a launch returned."""
    try:
        return compiled.asm["ttir"]
    except (AttributeError, KeyError, TypeError) as error:
        raise unsupported_triton(
            f"a launch's compiled kernel has no asm['ttir']: {error}"
        ) from None


def _launch(kernel: Callable, grid: tuple, args: tuple, watch: _Watch | None, **meta: Any) -> None:
    """Run `kernel` over `grid`: watched in the interpreter; compiled, with the masked loads
    without `other=` read from its Triton IR into `watch`."""
    if INTERPRETED:
        with _watching(watch) if watch else numpy.errstate(all="ignore"):
            kernel[grid](*args, **meta)
        return
    compiled = kernel[grid](*args, **meta)
    torch.cuda.synchronize()
    if watch and _loads_without_other(_ttir(compiled)):
        watch.no_other.append("a masked load (in the compiled kernel)")


def _canary_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    a = tl.load(x_ptr + offs, mask=offs < n)  # no other=
    b = tl.load(x_ptr + offs, mask=offs < n, other=0.0)
    tl.store(out_ptr + offs, a + b)  # BLOCK > n: past out's n elements


@functools.cache
def _check_triton_support() -> None:
    """Run the watcher (interpreted) or the IR reader (compiled) on a kernel with a known masked
    load without `other=` and a known store out of range; UnsupportedTriton if they miss them."""
    if not INTERPRETED and not torch.cuda.is_available():
        raise RuntimeError(
            "TRITON_INTERPRET says to compile kernels, but there is no CUDA GPU to run them: "
            "unset it (or set TRITON_INTERPRET=1) before importing mmcourse.kernels"
        )
    x = torch.zeros(8, device=_device())
    out = torch.zeros(8, device=_device())
    watch = _Watch([_Region("x", x[:, None], 8, 1, ("n",))], [_Region("out", out, 4, 1, ("n",))])
    try:
        _launch(triton.jit(_canary_kernel), (1,), (x, out, 4), watch, BLOCK=8)
    except UnsupportedTriton:
        raise
    except Exception as error:  # noqa: BLE001
        raise unsupported_triton(f"a test kernel failed: {type(error).__name__}: {error}") from None
    if not watch.no_other or (INTERPRETED and not watch.bad_stores):
        raise unsupported_triton("the load and store watchers saw nothing on a test kernel")


def _triton_checked(checker: Callable) -> Callable:
    """The checker, after making sure this Triton behaves as chapter 09's checks expect."""

    @functools.wraps(checker)
    def run(candidate: Callable, *, device: str | torch.device | None = None) -> None:
        _check_triton_support()
        checker(candidate, device=device)

    return run


# -------------------------------------------------------- Exercise 9.1: a masked distance tile

_MASK_HINT = (
    "build a mask for every load: rows (offs_n < N), codes (offs_k < K) and columns "
    "(offs_d < D), combined with & and broadcast like the pointers, e.g. "
    "mask=(offs_n[:, None] < N) & (offs_d[None, :] < D); ‖e‖² needs mask=offs_k < K too"
)
_TILE_CASES = [  # (N, K, D, (BLOCK_N, BLOCK_K, BLOCK_D), dtype, seed, label)
    (
        37,
        45,
        19,
        (16, 32, 32),
        torch.float32,
        91,
        "N = 37, K = 45, D = 19 (no size a multiple of its block)",
    ),
    (32, 48, 16, (16, 16, 16), torch.float32, 92, "N = 32, K = 48, D = 16 (exact multiples)"),
    (21, 70, 40, (32, 64, 64), torch.float16, 93, "float16, N = 21, K = 70, D = 40"),
]


def _guard_reads(out: torch.Tensor, regions: dict[str, _Region], n: int, k: int) -> str:
    """Compiled: which read went out of range, from what came out of the guards into the valid
    output `out` (rows of whole tiles × codes of whole tiles): NaN from the rows and columns
    around z and the codebook, −1e30 from past ‖e‖²."""
    nan = torch.isnan(out)
    if nan[:n, :k].any():  # columns past D: every real row (z) or every real code (codebook)
        z_side = nan[:n, k:].any() or k == out.shape[1]
        return regions["z" if z_side else "codebook"].describe(0, regions["z"].cols)
    if nan[n:, :k].any():  # rows past N
        return regions["z"].describe(n, 0)
    if nan[:, k:].any():  # codes past K
        return regions["codebook"].describe(k, 0)
    return regions["e_sq"].describe(k, 0) if (out[:, k:] < _E_SQ_GUARD / 2).any() else ""


def _guard_stores(buf: torch.Tensor, region: _Region) -> str:
    """The first element of the output's guard that a store changed, or ''."""
    written = buf != _UNWRITTEN
    written[: region.rows, : region.cols] = False
    where = written.nonzero()
    return region.describe(int(where[0, 0]), int(where[0, 1])) if len(where) else ""


def _run_tile(
    kernel: Callable,
    n: int,
    k: int,
    d: int,
    blocks: tuple[int, int, int],
    dtype: torch.dtype,
    seed: int,
) -> dict[str, Any]:
    """Launch the tile kernel over a (cdiv(N, BN), cdiv(K, BK)) grid on guarded random inputs;
    return the valid part of its output (whole tiles), what went out of range and the inputs."""
    bn, bk, bd = blocks
    grid_n, grid_k = triton.cdiv(n, bn), triton.cdiv(k, bk)
    reach = max(grid_n, grid_k)  # tiles along either axis a program can touch, pids swapped
    g = seeded(seed)
    z = (torch.randn(n, d, generator=g) + 0.1).to(dtype)  # never zeros: the shift breaks symmetry
    e = (torch.randn(k, d, generator=g) - 0.1).to(dtype)
    e_sq = e.float().pow(2).sum(dim=1)  # (K,)
    dev = _device()
    z_buf = _guarded(z, reach * bn + 1 + bd // (d + 3), d + 3, float("nan")).to(dev)
    e_buf = _guarded(e, reach * bk + 1 + bd // (d + 5), d + 5, float("nan")).to(dev)
    e_sq_buf = _guarded(e_sq[:, None], reach * bk, 1, _E_SQ_GUARD)[:, 0].contiguous().to(dev)
    out = torch.full(((reach + 1) * bn, (reach + 1) * bk), _UNWRITTEN, device=dev)
    regions = {
        "z": _Region("z", z_buf, n, d, ("N", "D")),
        "codebook": _Region("codebook", e_buf, k, d, ("K", "D")),
        "e_sq": _Region("e_sq", e_sq_buf, k, 1, ("K",)),
        "out": _Region(
            "out",
            out,
            grid_n * bn,
            grid_k * bk,
            (f"{grid_n} row programs × BLOCK_N", f"{grid_k} code programs × BLOCK_K"),
        ),
    }
    watch = _Watch([regions["z"], regions["codebook"], regions["e_sq"]], [regions["out"]])
    args = (z_buf, e_buf, e_sq_buf, out, n, k, d, z_buf.stride(0), e_buf.stride(0), out.stride(0))
    inputs = [buf.cpu() for buf in (z_buf, e_buf, e_sq_buf)]
    _launch(kernel, (grid_n, grid_k), args, watch, BLOCK_N=bn, BLOCK_K=bk, BLOCK_D=bd)
    out = out.cpu()
    valid = out[: grid_n * bn, : grid_k * bk]
    bad_reads = watch.bad_reads if INTERPRETED else [_guard_reads(valid, regions, n, k)]
    changed = [  # the inputs, guards included, must be as they were
        f"{name}, an input"
        for name, before, buf in zip(("z", "codebook", "e_sq"), inputs, (z_buf, e_buf, e_sq_buf))
        if not torch.allclose(before, buf.cpu(), rtol=0, atol=0, equal_nan=True)
    ]
    zf, ef = z.double(), e.double()
    return {
        "out": valid,
        "bad_reads": bad_reads,
        "no_other": watch.no_other,
        "bad_stores": watch.bad_stores + changed + [_guard_stores(out, regions["out"])],
        "expected": zf.pow(2).sum(1, keepdim=True) - 2 * zf @ ef.T + ef.pow(2).sum(1),  # (N, K)
        "e_sq": e_sq,
    }


@_triton_checked
@exercise("9.1", "a masked tile of distances", audit_devices=False)
def check_distance_tile(check: Check) -> None:
    """Exercise 9.1: distance_tile(...) stores the (BLOCK_N, BLOCK_K) tile of
    d = ‖z‖² − 2 z·e + ‖e‖² of program (pid 0 over rows, pid 1 over codes), BLOCK_D ≥ D."""
    cases = [case[:-1] for case in _TILE_CASES]
    check.candidate = _execute("tile", check.candidate, cases, [c[-1] for c in _TILE_CASES])
    for n, k, _, blocks, dtype, _, label in _TILE_CASES:
        run = check.call(label)
        out, expected = run["out"], run["expected"]
        bn, bk, _ = blocks
        bad_read = next((r for r in run["bad_reads"] if r), "")
        check.that(
            not bad_read,
            f"{label}: every load stays inside z, the codebook and ‖e‖²",
            expected="no read outside the tensors",
            got=f"a read of {bad_read}",
            hint=_MASK_HINT,
        )
        check.that(
            not run["no_other"],
            f"{label}: every masked load says what its switched-off lanes hold",
            expected="an other= value on every load with a mask",
            got=f"{run['no_other'][0] if run['no_other'] else ''} without other=",
            hint="give every masked load an other= value: a switched-off lane's value is "
            "undefined on a GPU; other=0.0 for z and the codebook (zeros add nothing to a dot "
            "product), other=float('inf') for ‖e‖²",
        )
        bad_store = next((s for s in run["bad_stores"] if s), "")
        check.that(
            not bad_store,
            f"{label}: every store lands inside the output's tiles",
            expected=f"stores only to the {out.shape[0]} × {out.shape[1]} output "
            f"({bn} × {bk} per program)",
            got=f"a store to {bad_store}",
            hint="program (i, j) = (tl.program_id(0), tl.program_id(1)) owns rows "
            "i·BLOCK_N … and codes j·BLOCK_K …: offs_n comes from program_id(0), offs_k from "
            "program_id(1). A store outside the output overwrites other memory (on a GPU it "
            "can kill the process)",
        )
        check.that(
            not bool((out == _UNWRITTEN).any()),
            f"{label}: the whole tile is stored",
            expected=f"every (BLOCK_N, BLOCK_K) = ({bn}, {bk}) entry written",
            got=f"{int((out == _UNWRITTEN).sum())} entries never written",
            hint="store the full tile at out_ptr + offs_n[:, None] * stride_out + offs_k[None, :] "
            "(out is padded to whole tiles, so this store needs no mask)",
        )
        check.close(
            out[:n, :k].double(),
            expected,
            f"{label}: distances of the real rows and codes",
            atol=2e-3 if dtype == torch.float32 else 2e-2,
            rtol=1e-4,
            hint="d = ‖z‖²[:, None] − 2 · tl.dot(z, tl.trans(e)) + ‖e‖²[None, :], with "
            "‖z‖² = tl.sum(z * z, axis=1) in float32 (.to(tl.float32)), ‖e‖² loaded from "
            'e_sq_ptr, and tl.dot(..., input_precision="ieee") (on a GPU, float32 tl.dot '
            "otherwise rounds its inputs to TF32, ~3 decimal digits)",
        )
        past_k = out[:n, k:]
        check.that(
            past_k.numel() == 0 or bool(torch.isposinf(past_k).all()),
            f"{label}: codes past K have distance +inf",
            expected="+inf in every column k ≥ K, so that no argmin can pick a code that "
            "does not exist",
            got=f"values such as {past_k[~torch.isposinf(past_k)][:3].tolist()}",
            hint="load ‖e‖² with mask=offs_k < K and other=float('inf'): a fill of 0 makes a "
            "code that does not exist the nearest one",
        )
        past_n = out[n:, :k].double()
        check.close(
            past_n,
            run["e_sq"].double().expand(past_n.shape[0], k),
            f"{label}: rows past N load as zero vectors (distance ‖e‖²)",
            atol=1e-3 if dtype == torch.float32 else 1e-2,
            hint="load z with other=0.0 for masked rows and columns",
        )


# --------------------------------------------------- Exercise 9.2: the running argmin update


@triton.jit
def _harness(
    d_ptr,
    best_ptr,
    idx_ptr,
    update: tl.constexpr,
    N,
    K,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Fold a (N, K) matrix of distances into (min, argmin) per row, BLOCK_K codes at a time,
    with the learner's `update(best, best_idx, d, k0)`."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    best = tl.full((BLOCK_N,), float("inf"), dtype=tl.float32)
    best_idx = tl.zeros((BLOCK_N,), dtype=tl.int64)
    for k0 in range(0, K, BLOCK_K):
        codes = k0 + tl.arange(0, BLOCK_K)
        mask = row_ok[:, None] & (codes[None, :] < K)
        d = tl.load(d_ptr + rows[:, None] * K + codes[None, :], mask=mask, other=float("inf"))
        best, best_idx = update(best, best_idx, d, k0)
    tl.store(best_ptr + rows, best, mask=row_ok)
    tl.store(idx_ptr + rows, best_idx.to(tl.int64), mask=row_ok)


def _tie_matrix(n: int, k: int, block_k: int, g: torch.Generator) -> torch.Tensor:
    """Random positive distances (N, K) with deliberate ties at the minimum: row 0 across two
    tiles, row 1 inside one tile, row 2 three times, row 3 at the very last code."""
    d = torch.rand(n, k, generator=g) * 10 + 1  # in [1, 11): never zero
    d[0, 3] = d[0, block_k + 2] = 0.25  # tie across tiles → 3
    d[1, block_k + 1] = d[1, block_k + 6] = 0.5  # tie inside a tile → block_k + 1
    d[2, 1] = d[2, block_k] = d[2, k - 1] = 0.125  # three tiles → 1
    d[3, k - 1] = 0.0625  # the last code of a partial tile
    d[4, 2], d[4, block_k + 2] = 0.9, 0.3  # a smaller minimum in a later tile
    if k > 2 * block_k + 2:
        d[4, 2 * block_k + 2] = 0.6  # ... and a larger one after it: the minimum must stay put
    return d


def _simulate(d: torch.Tensor, block_k: int, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """What the right update ("right") or a classic wrong one ("no_offset", "index_only")
    returns on `d`, tile by tile, in torch."""
    n = d.shape[0]
    best = torch.full((n,), float("inf"))
    idx = torch.zeros(n, dtype=torch.long)
    for k0 in range(0, d.shape[1], block_k):
        t_min, t_arg = d[:, k0 : k0 + block_k].min(dim=1)  # the first minimum of each row
        better = t_min < best
        idx = torch.where(better, t_arg + (0 if kind == "no_offset" else k0), idx)
        if kind != "index_only":
            best = torch.where(better, t_min, best)
    return best, idx


_WRONG_UPDATES = {
    "no_offset": (
        "the indices are positions inside the tile: add the tile's offset k0 to tl.argmin's "
        "local index"
    ),
    "index_only": (
        "the index was updated but not the running minimum: update best with the same "
        "condition as best_idx, or every later tile is compared with a stale value"
    ),
}
_LATER_TIE_HINT = (
    "ties went to the later code: compare with < (strictly better), not <=, and take the "
    "first minimum inside a tile (tl.argmin, or tl.min(..., return_indices=True) with its "
    "default return_indices_tie_break_left=True; on a GPU ties otherwise go anywhere)"
)


def _update_hint(d: torch.Tensor, idx: torch.Tensor, want: torch.Tensor, block_k: int) -> str:
    """Name the mistake behind wrong indices `idx` (expected `want`) when it is recognisable."""
    for kind, hint in _WRONG_UPDATES.items():
        if torch.equal(idx, _simulate(d, block_k, kind)[1]):
            return hint
    rows = (idx != want).nonzero().flatten()
    got = idx[rows]
    if bool(((got >= 0) & (got < d.shape[1])).all()):
        tied = torch.equal(d[rows, got], d[rows, want[rows]])
        if tied and bool((got > want[rows]).all()):
            return _LATER_TIE_HINT
    return (
        "per tile: tile_min, tile_arg = tl.min(d, axis=1, return_indices=True); "
        "better = tile_min < best; then tl.where(better, ...) for both best_idx "
        "(tile_arg + k0) and best"
    )


class _WrongReturn(Exception):
    """What an update returned instead of (best, best_idx), in words: the checker's result for
    that case (replayed by `check.call`, so that the check can say what came)."""


def _return_problem(result: Any, shape: Any) -> str:
    """'' when `result` is (best float32, best_idx int64), both of `shape`, else what it is."""
    if not isinstance(result, tuple | list):
        return "None (nothing returned)" if result is None else f"one {type(result).__name__}"
    if len(result) != 2:
        return f"a {type(result).__name__} of {len(result)} value" + "s" * (len(result) != 1)
    dtypes = [getattr(value, "dtype", None) for value in result]
    if dtypes == [tl.int64, tl.float32]:
        return "(best_idx, best): the two in the other order"
    for name, value, dtype in zip(("best", "best_idx"), result, (tl.float32, tl.int64)):
        if getattr(value, "dtype", None) is None:
            return f"{name} a {type(value).__name__}, not a tensor"
        if value.dtype != dtype or _dims(value.shape) != _dims(shape):
            return f"{name} of dtype {value.dtype}, shape {tuple(_dims(value.shape))}"
    return ""


def _dims(shape: Any) -> list[int]:
    """A Triton shape as plain ints (the interpreter's are constexprs)."""
    return [int(getattr(size, "value", size)) for size in shape]


def _returns_checked(update: Callable) -> Callable:
    """The interpreter's update, raising _WrongReturn when its result is not (best, best_idx)
    of the running values' dtypes and shape, before the harness unpacks it. (A compiled kernel
    refuses such a result itself, when it compiles.)"""

    def checked(best: Any, best_idx: Any, d: Any, k0: Any) -> Any:  # Triton's tensors
        result = update(best, best_idx, d, k0)
        if problem := _return_problem(result, best.shape):
            raise _WrongReturn(problem)
        return result

    return checked  # the interpreter calls a plain function as it is (triton.jit would lose
    # the closure)


def _run_update(update: Callable, d: torch.Tensor, block_n: int, block_k: int) -> tuple:
    n, k = d.shape
    dev = _device()
    if INTERPRETED:
        update = _returns_checked(update)
    best = torch.full((n,), -7.0, device=dev)
    idx = torch.full((n,), -7, dtype=torch.long, device=dev)
    grid = (triton.cdiv(n, block_n),)
    args = (d.contiguous().to(dev), best, idx, update, *sizes(n, k))
    _launch(_harness, grid, args, None, BLOCK_N=block_n, BLOCK_K=block_k)
    return best.cpu(), idx.cpu()


_UPDATE_CASES = [  # (N, K, BLOCK_N, BLOCK_K, seed, label)
    (29, 83, 32, 16, 92, "N = 29 rows, K = 83 codes in tiles of 16 (the last one partial)"),
    (64, 64, 64, 32, 93, "N = 64, K = 64 in two full tiles of 32"),
    (7, 200, 16, 64, 94, "N = 7, K = 200 in tiles of 64"),
]


def _update_inputs() -> list[tuple]:
    return [
        (_tie_matrix(n, k, bk, seeded(seed)), bn, bk) for n, k, bn, bk, seed, _ in _UPDATE_CASES
    ]


@_triton_checked
@exercise("9.2", "the running argmin update", audit_devices=False)
def check_update_argmin(check: Check) -> None:
    """Exercise 9.2: update_argmin(best (BLOCK_N,) f32, best_idx (BLOCK_N,) int, d (BLOCK_N,
    BLOCK_K) f32, k0) → (best, best_idx) after folding in the tile of codes k0 … k0+BLOCK_K−1."""
    inputs = _update_inputs()
    labels = [case[-1] for case in _UPDATE_CASES]
    check.candidate = _execute("update", check.candidate, inputs, labels)
    for (d, _, block_k), label in zip(inputs, labels):
        got = check.call(label)
        check.that(
            not isinstance(got, _WrongReturn),
            f"{label}: returns (best, best_idx)",
            expected="a tuple (best, best_idx): float32 minima and int64 indices, each of shape "
            "(BLOCK_N,)",
            got=str(got),
            hint="end with `return best, best_idx`, each a tl.where(better, …, …) of the running "
            "value, so that best stays float32 and best_idx int64 (a compiled kernel refuses a "
            "loop variable that changes type)",
        )
        best, idx = got
        want_best, want_idx = _simulate(d, block_k, "right")
        check.equal(
            idx,
            want_idx,
            f"{label}, ties included: the index of each row's minimum (the lowest one on ties, "
            "like torch.argmin)",
            hint="" if torch.equal(idx, want_idx) else _update_hint(d, idx, want_idx, block_k),
        )
        check.close(
            best,
            want_best,
            f"{label}: the running minimum returned with it",
            atol=0.0,
            rtol=0.0,
            hint="return (best, best_idx) with best = tl.where(better, tile_min, best)",
        )


_RUNNERS = {"tile": _run_tile, "update": _run_update}

__all__ = ["check_distance_tile", "check_update_argmin"]
