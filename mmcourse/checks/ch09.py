"""Checkers of chapter 09 (a Triton kernel for fused quantization): the masked tile of distances
and the running argmin update.

Both exercises are Triton code written as plain Python functions (the checker gives them to
Triton's interpreter itself, so they are checked the same way on a laptop and on a GPU machine).
Each check draws fresh random inputs (never zeros) of odd sizes, surrounded by guard memory
filled with NaN, and launches the candidate in the interpreter:

- Exercise 9.1 watches every address the tile loads read: a load past row N, code K or column D
  fails with the first address that was out of range, even when a later `tl.where` would have
  hidden the garbage it read; codes past K must come out as +inf, rows past N as zero vectors.
- Exercise 9.2 compares the running (min, argmin) with torch on tiles built with ties inside a
  tile and across tiles, and recognises the classic wrong updates by what they return.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy
import torch

from mmcourse.checks._core import Check, exercise, seeded
from mmcourse.kernels import interpreter_scope, require_triton

require_triton()

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.runtime import interpreter as _interp  # noqa: E402

# ------------------------------------------------------------------ running in the interpreter


class _Interpreted:
    """A kernel that runs in Triton's interpreter whatever TRITON_INTERPRET said at import.

    When triton.language was imported for compiling (a GPU machine), its library functions
    written in Triton (tl.min, tl.sum, tl.argmin, ...) are compiled-mode @jit objects that the
    interpreter cannot call; for the duration of a launch they are swapped for interpreted
    twins, then put back."""

    def __init__(self, fn: Callable) -> None:
        self.kernel = _interp.InterpretedFunction(_python_fn(fn))

    def __getitem__(self, grid: tuple[int, ...]) -> Callable:
        def launch(*args: Any, **kwargs: Any) -> None:
            with interpreter_scope(), numpy.errstate(all="ignore"):  # NaN guards: quiet
                self.kernel[grid](*args, **kwargs)

        return launch


def interpreted(fn: Callable) -> _Interpreted:
    """`fn` (a plain function, or one decorated with @triton.jit) as a kernel that runs in
    Triton's interpreter, on CPU tensors, whatever TRITON_INTERPRET says:
    `interpreted(fn)[grid](...)`."""
    return _Interpreted(fn)


def _python_fn(fn: Callable) -> Callable:
    """The Python function under a @triton.jit decoration (compiled or interpreted)."""
    return getattr(fn, "fn", fn)


def _raise_cause(error: BaseException) -> None:
    """Re-raise what went wrong inside the interpreter as the learner's own error: the stub's
    NotImplementedError stays one (the checker then says "not implemented yet")."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, NotImplementedError):
            raise NotImplementedError() from None
        cause = cause.__cause__ or cause.__context__
    root = error
    while root.__cause__ is not None:
        root = root.__cause__
    raise RuntimeError(f"{type(root).__name__}: {root}") from None


class _Region:
    """A block of valid elements inside a guard allocation: rows × cols at `stride` elements."""

    def __init__(self, name: str, buf: torch.Tensor, rows: int, cols: int, what: str) -> None:
        self.name, self.what = name, what
        self.start = buf.data_ptr()
        self.end = self.start + buf.numel() * buf.element_size()
        self.size = buf.element_size()
        self.stride = buf.stride(0) if buf.dim() == 2 else 1
        self.rows, self.cols = rows, cols

    def first_bad(self, addresses: torch.Tensor) -> str:
        """'' if every address in this allocation is a valid element, else the first bad one."""
        inside = (addresses >= self.start) & (addresses < self.end)
        offsets = (addresses[inside] - self.start) // self.size
        row, col = offsets // self.stride, offsets % self.stride
        bad = (row >= self.rows) | (col >= self.cols)
        if not bool(bad.any()):
            return ""
        r, c = int(row[bad][0]), int(col[bad][0])
        if self.cols == 1:
            return f"{self.name}[{r}], past the end ({self.what} = {self.rows})"
        if r >= self.rows:
            return f"{self.name} at row {r}, past the last row ({self.what} = {self.rows})"
        return f"{self.name} at row {r}, column {c}, past the last column (D = {self.cols})"


@contextlib.contextmanager
def _watch_loads(regions: list[_Region]) -> Iterator[list[str]]:
    """Record, for every tl.load the interpreter runs, the first address that falls in a guard
    area of `regions` (lanes switched off by the mask are not reads)."""
    found: list[str] = []
    builder = _interp.interpreter_builder
    original = builder.create_masked_load

    def spy(ptrs, mask, other, cache_policy, is_volatile):  # noqa: ANN001
        addresses = torch.from_numpy(ptrs.data.astype("int64")[mask.data.astype(bool)])
        for region in regions:
            bad = region.first_bad(addresses)
            if bad and not found:
                found.append(bad)
        return original(ptrs, mask, other, cache_policy, is_volatile)

    builder.create_masked_load = spy
    try:
        yield found
    finally:
        del builder.create_masked_load  # back to the class's method


def _guarded(values: torch.Tensor, pad_rows: int, pad_cols: int) -> torch.Tensor:
    """`values` (R, C) as a view into a NaN-filled (R + pad_rows, C + pad_cols) buffer: reading
    past its rows or columns reads NaN, inside the same allocation."""
    r, c = values.shape
    buf = torch.full((r + pad_rows, c + pad_cols), float("nan"), dtype=values.dtype)
    buf[:r, :c] = values
    return buf


# -------------------------------------------------------- Exercise 9.1: a masked distance tile

_TILE_SIGNATURE = (
    "distance_tile(z_ptr, e_ptr, e_sq_ptr, out_ptr, N, K, D, stride_z, stride_e, stride_out, "
    "BLOCK_N, BLOCK_K, BLOCK_D)"
)
_MASK_HINT = (
    "build a mask for every load: rows (offs_n < N), codes (offs_k < K) and columns "
    "(offs_d < D), combined with & and broadcast like the pointers, e.g. "
    "mask=(offs_n[:, None] < N) & (offs_d[None, :] < D); ‖e‖² needs mask=offs_k < K too"
)


def _run_tile(
    candidate: Callable,
    n: int,
    k: int,
    d: int,
    blocks: tuple[int, int, int],
    seed: int,
    dtype: torch.dtype,
) -> dict[str, Any]:
    """Launch the candidate tile kernel over a (cdiv(N, BN), cdiv(K, BK)) grid on guarded random
    inputs; return its padded output, what the load watcher saw and the inputs."""
    bn, bk, bd = blocks
    g = seeded(seed)
    z = (torch.randn(n, d, generator=g) + 0.1).to(dtype)  # never zeros: the shift breaks symmetry
    e = (torch.randn(k, d, generator=g) - 0.1).to(dtype)
    e_sq = e.float().pow(2).sum(dim=1)  # (K,)
    z_buf, e_buf = _guarded(z, bn, 3), _guarded(e, bk, 5)  # row stride D + 3, D + 5
    e_sq_buf = _guarded(e_sq[:, None], bk, 0)[:, 0].contiguous()
    grid_n, grid_k = triton.cdiv(n, bn), triton.cdiv(k, bk)
    out = torch.full((grid_n * bn, grid_k * bk), -7.0)  # -7: "never written"
    regions = [
        _Region("z", z_buf, n, d, "N"),
        _Region("codebook", e_buf, k, d, "K"),
        _Region("e_sq", e_sq_buf, k, 1, "K"),
    ]
    kernel = interpreted(candidate)
    with _watch_loads(regions) as bad_reads:
        try:
            kernel[(grid_n, grid_k)](
                z_buf,
                e_buf,
                e_sq_buf,
                out,
                n,
                k,
                d,
                z_buf.stride(0),
                e_buf.stride(0),
                out.stride(0),
                BLOCK_N=bn,
                BLOCK_K=bk,
                BLOCK_D=bd,
            )
        except Exception as error:  # noqa: BLE001  (reported as the learner's error)
            _raise_cause(error)
    zf, ef = z.double(), e.double()
    expected = zf.pow(2).sum(1, keepdim=True) - 2 * zf @ ef.T + ef.pow(2).sum(1)  # (N, K)
    return {"out": out, "bad_reads": bad_reads, "expected": expected, "e_sq": e_sq}


@exercise("9.1", "a masked tile of distances", audit_devices=False)
def check_distance_tile(check: Check) -> None:
    """Exercise 9.1: distance_tile(...) stores the (BLOCK_N, BLOCK_K) tile of
    d = ‖z‖² − 2 z·e + ‖e‖² of program (pid 0 over rows, pid 1 over codes), BLOCK_D ≥ D."""
    candidate = _python_fn(check.candidate)
    cases = [
        (
            37,
            45,
            19,
            (16, 16, 32),
            torch.float32,
            "N = 37, K = 45, D = 19 (no size a multiple of its block)",
        ),
        (32, 48, 16, (16, 16, 16), torch.float32, "N = 32, K = 48, D = 16 (exact multiples)"),
        (21, 70, 40, (32, 64, 64), torch.float16, "float16, N = 21, K = 70, D = 40"),
    ]
    for seed, (n, k, d, blocks, dtype, label) in enumerate(cases, start=91):
        check.candidate = lambda *args, c=candidate: _run_tile(c, *args)  # noqa: B023
        run = check.call(n, k, d, blocks, seed, dtype)
        out, expected = run["out"], run["expected"]
        bn, bk, _ = blocks
        check.that(
            not run["bad_reads"],
            f"{label}: every load stays inside z, the codebook and ‖e‖²",
            expected="no read outside the tensors",
            got=f"a read of {run['bad_reads'][0] if run['bad_reads'] else ''}",
            hint=_MASK_HINT,
        )
        check.that(
            not bool((out == -7.0).any()),
            f"{label}: the whole tile is stored",
            expected=f"every (BLOCK_N, BLOCK_K) = ({bn}, {bk}) entry written",
            got=f"{int((out == -7.0).sum())} entries never written",
            hint="store the full tile at out_ptr + offs_n[:, None] * stride_out + offs_k[None, :] "
            "(out is padded to whole tiles, so this store needs no mask)",
        )
        valid = out[:n, :k].double()
        check.close(
            valid,
            expected,
            f"{label}: distances of the real rows and codes",
            atol=2e-3 if dtype == torch.float32 else 2e-2,
            rtol=1e-4,
            hint="d = ‖z‖²[:, None] − 2 · tl.dot(z, tl.trans(e)) + ‖e‖²[None, :], with "
            "‖z‖² = tl.sum(z * z, axis=1) in float32 (.to(tl.float32)) and ‖e‖² loaded from "
            "e_sq_ptr",
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


def _harness(d_ptr, best_ptr, idx_ptr, update, N, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
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
    """What a right or a classic wrong update returns on `d`, tile by tile, in torch."""
    n = d.shape[0]
    best = torch.full((n,), float("inf"))
    idx = torch.zeros(n, dtype=torch.long)
    for k0 in range(0, d.shape[1], block_k):
        tile = d[:, k0 : k0 + block_k]
        if kind == "le_right":  # ties go to the later code, inside a tile too
            flipped = tile.flip(1)
            t_min, t_arg = flipped.min(dim=1)
            t_arg = tile.shape[1] - 1 - t_arg
        else:
            t_min, t_arg = tile.min(dim=1)
        better = t_min <= best if kind.startswith("le") else t_min < best
        offset = 0 if kind == "no_offset" else k0
        idx = torch.where(better, t_arg + offset, idx)
        if kind != "index_only":
            best = torch.where(better, t_min, best)
    return best, idx


_LE_HINT = (
    "ties went to the later code: compare with < (strictly better), not <=, and take the "
    "first minimum inside a tile (tl.argmin / tl.min(..., return_indices=True) do)"
)
_WRONG_UPDATES = {
    "le": _LE_HINT,
    "le_right": _LE_HINT,
    "no_offset": (
        "the indices are positions inside the tile: add the tile's offset k0 to tl.argmin's "
        "local index"
    ),
    "index_only": (
        "the index was updated but not the running minimum: update best with the same "
        "condition as best_idx, or every later tile is compared with a stale value"
    ),
}


def _run_update(candidate: Callable, d: torch.Tensor, block_n: int, block_k: int) -> tuple:
    n, k = d.shape
    best = torch.full((n,), -7.0)
    idx = torch.full((n,), -7, dtype=torch.long)
    kernel = interpreted(_harness)
    try:
        kernel[(triton.cdiv(n, block_n),)](
            d.contiguous(), best, idx, candidate, n, k, BLOCK_N=block_n, BLOCK_K=block_k
        )
    except Exception as error:  # noqa: BLE001  (reported as the learner's error)
        _raise_cause(error)
    return best, idx


@exercise("9.2", "the running argmin update", audit_devices=False)
def check_update_argmin(check: Check) -> None:
    """Exercise 9.2: update_argmin(best (BLOCK_N,) f32, best_idx (BLOCK_N,) int, d (BLOCK_N,
    BLOCK_K) f32, k0) → (best, best_idx) after folding in the tile of codes k0 … k0+BLOCK_K−1."""
    candidate = _python_fn(check.candidate)
    check.candidate = lambda *args: _run_update(candidate, *args)
    cases = [
        (29, 83, 32, 16, "N = 29 rows, K = 83 codes in tiles of 16 (the last one partial)"),
        (64, 64, 64, 32, "N = 64, K = 64 in two full tiles of 32"),
        (7, 200, 16, 64, "N = 7, K = 200 in tiles of 64"),
    ]
    for seed, (n, k, block_n, block_k, label) in enumerate(cases, start=92):
        d = _tie_matrix(n, k, block_k, seeded(seed))
        best, idx = check.call(d, block_n, block_k)
        want_best, want_idx = _simulate(d, block_k, "right")
        if not torch.equal(idx, want_idx):
            for kind, known_hint in _WRONG_UPDATES.items():
                if torch.equal(idx, _simulate(d, block_k, kind)[1]):
                    hint = known_hint
                    break
            else:
                hint = (
                    "per tile: tile_min, tile_arg = tl.min(d, axis=1, return_indices=True); "
                    "better = tile_min < best; then tl.where(better, ...) for both best_idx "
                    "(tile_arg + k0) and best"
                )
            check.equal(
                idx,
                want_idx,
                f"{label}, ties included: the index of each row's "
                "minimum (the lowest one on ties, like torch.argmin)",
                hint=hint,
            )
        check.equal(idx, want_idx, f"{label}: the argmin of each row")
        check.close(
            best,
            want_best,
            f"{label}: the running minimum returned with it",
            atol=0.0,
            rtol=0.0,
            hint="return (best, best_idx) with best = tl.where(better, tile_min, best)",
        )


__all__ = ["check_distance_tile", "check_update_argmin", "interpreted"]
