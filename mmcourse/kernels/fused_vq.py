"""Fused nearest-code search: a Triton kernel that never builds the N×K distance matrix.

Chapter 01 found each vector's nearest code as distance matrix + argmin:

    d[i, k] = ‖z_i‖² − 2 z_i·e_k + ‖e_k‖²,   token_i = argmin_k d[i, k]

which writes an (N, K) matrix to memory and reads it back (N = 65536, K = 8192 in float32: 2 GiB)
to keep N numbers. The kernel here gives each program a block of BLOCK_N rows of z; it walks the
codebook in tiles of BLOCK_K codes, computes each (BLOCK_N, BLOCK_K) tile of z·e with `tl.dot`
(float32 accumulation) and folds it into a running minimum and its index, kept in registers.
‖z_i‖² is the same for every code of row i, so the argmin runs on ‖e_k‖² − 2 z_i·e_k. Only the
indices leave the chip; `quantize` then gathers z_q and ‖z − z_q‖² in a second, small kernel.

float32 inputs multiply on TF32 tensor cores (10-bit mantissas, ~8× faster than exact float32
products on an H100). TF32 can swap two codes whose distances lie within its rounding error, so
the kernel also keeps each row's runner-up, and the rows whose best two codes are closer than a
proven bound on that error are recomputed exactly (PyTorch, float32, as the reference): the
tokens equal the reference's, ties to the lowest index included.

- `nearest_code(z, codebook)`: the tokens (N,) long, ties to the lowest index like `torch.argmin`;
- `search(z, codebook)`: the same, with how many rows were re-checked and the kernel's blocks;
- `quantize(z, codebook)`: tokens, z_q with the straight-through gradient (an autograd Function)
  and the squared distance per row, whose gradient is the commitment term's;
- `reference_nearest_code`: the PyTorch reference, distance matrix + argmin in float32.

Inputs: z (N, D) and codebook (K, D), contiguous, float32, float16 or bfloat16, one dtype and one
device: CUDA tensors when kernels compile, CPU tensors in the interpreter (see `mmcourse.kernels`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from mmcourse import _validate
from mmcourse.kernels import INTERPRETED, require_triton, sizes

require_triton()

import triton  # noqa: E402  (after mmcourse.kernels has chosen compiled or interpreted)
import triton.language as tl  # noqa: E402

__all__ = [
    "DTYPES",
    "FusedVQOutput",
    "INTERPRETED",
    "H100",
    "Cost",
    "Search",
    "choose_blocks",
    "cost",
    "nearest_code",
    "quantize",
    "reference_nearest_code",
    "search",
    "tf32_gap_bound",
]

DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# The interpreter pays per program and per loop step, not per element: large blocks are fast there.
_INTERPRETER_BLOCKS = (128, 256, 64)  # BLOCK_N, BLOCK_K, BLOCK_D caps
# On a GPU, Hopper-sized tiles (H100/H200: 227 KiB of shared memory per block). Each program
# re-reads the whole codebook from L2, BLOCK_N rows per read: large BLOCK_N keeps the tensor cores
# fed. BLOCK_D ≥ D keeps a program's rows on chip for the whole codebook; smaller BLOCK_D loops
# over D. The autotuner times those that fit. (BLOCK_N, BLOCK_K, BLOCK_D, warps, stages)
_HALF_CONFIGS = [  # float16, bfloat16
    (256, 64, 256, 8, 2),
    (256, 64, 256, 8, 3),
    (256, 64, 256, 16, 2),
    (128, 128, 256, 8, 2),
    (128, 64, 256, 8, 3),
    (128, 256, 64, 8, 4),
    (128, 128, 64, 4, 4),
    (64, 64, 64, 4, 3),
]
_TF32_CONFIGS = [  # float32 on TF32 tensor cores: twice the bytes per value, half the rows on chip
    (128, 32, 256, 8, 2),
    (128, 32, 256, 8, 3),
    (128, 32, 256, 4, 3),
    (64, 64, 256, 4, 2),
    (128, 64, 64, 4, 4),
    (128, 128, 32, 8, 4),
    (64, 64, 32, 4, 3),
]
_GATHER_BLOCKS = (64, 128)  # BLOCK_N, BLOCK_D of the z_q gather on a GPU (memory-bound)


def _configs(table: list[tuple[int, int, int, int, int]]) -> list[triton.Config]:
    return [
        triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "BLOCK_D": bd}, num_warps=w, num_stages=s)
        for bn, bk, bd, w, s in table
    ]


def _fitting_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list:
    """Drop configs whose BLOCK_D exceeds D's power of two (same work as a smaller one)."""
    cap = max(16, triton.next_power_of_2(named_args["D"]))
    kept = [c for c in configs if c.kwargs["BLOCK_D"] <= cap]
    return kept or configs[-1:]


@triton.jit
def _fold_tile(d, k0, local, best, best_idx, second, SECOND: tl.constexpr):
    """Fold a tile d (BLOCK_N, BLOCK_K) of codes k0 + local into the running minimum `best`, its
    code `best_idx` and, with SECOND, the smallest value among all other codes `second`."""
    # (BLOCK_N,) each row's minimum and its first column: ties go to the lowest code
    tile_min, tile_arg = tl.min(d, axis=1, return_indices=True, return_indices_tie_break_left=True)
    better = tile_min < best  # strict: an equal value in a later tile keeps the earlier code
    if SECOND:  # runner-up: the tile without its own minimum, or the minimum it did not beat
        rest = tl.min(tl.where(local[None, :] == tile_arg[:, None], float("inf"), d), axis=1)
        second = tl.where(better, tl.minimum(best, rest), tl.minimum(second, tile_min))
    best_idx = tl.where(better, k0 + tile_arg, best_idx)
    best = tl.where(better, tile_min, best)
    return best, best_idx, second


@triton.jit
def _nearest_code_kernel(
    z_ptr,  # (N, D)
    e_ptr,  # (K, D)
    e_sq_ptr,  # (K,) float32  ‖e_k‖²
    tokens_ptr,  # (N,) int64   out: argmin_k d[i, k]
    best_ptr,  # (N,) float32 out (SECOND): min_k ‖e_k‖² − 2 z_i·e_k
    second_ptr,  # (N,) float32 out (SECOND): the same over every other code
    N,
    K,
    D,
    stride_z,
    stride_e,
    UPCAST: tl.constexpr,  # multiply in float32 (the interpreter's bfloat16 tl.dot is wrong)
    SECOND: tl.constexpr,  # also track the runner-up, for the TF32 re-check
    SINGLE_D: tl.constexpr,  # BLOCK_D ≥ D: the rows are loaded once, no loop over D
    EVEN_K: tl.constexpr,  # K % BLOCK_K == 0: code tiles need no mask
    EVEN_D: tl.constexpr,  # D % BLOCK_D == 0: columns need no mask (wide vector loads)
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    row_ok = rows < N
    local = tl.arange(0, BLOCK_K)  # (BLOCK_K,) code index inside a tile
    cols = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    col_ok = (cols < D) | EVEN_D  # EVEN_D: all True, folded away: loads unmasked along D
    z_ptrs = z_ptr + rows.to(tl.int64)[:, None] * stride_z + cols[None, :]  # (BLOCK_N, BLOCK_D)
    e_ptrs = e_ptr + local[:, None] * stride_e + cols[None, :]  # (BLOCK_K, BLOCK_D), tile 0
    if SINGLE_D:  # the rows stay on chip for the whole codebook
        z_rows = tl.load(z_ptrs, mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        if UPCAST:
            z_rows = z_rows.to(tl.float32)

    best = tl.full((BLOCK_N,), float("inf"), dtype=tl.float32)  # running min_k ‖e_k‖² − 2 z·e_k
    best_idx = tl.zeros((BLOCK_N,), dtype=tl.int32)  # its k
    second = tl.full((BLOCK_N,), float("inf"), dtype=tl.float32)
    # codes past K load ‖e‖² = +inf: they never win
    e_sq = tl.load(e_sq_ptr + local, mask=local < K, other=float("inf"))  # (BLOCK_K,) tile 0
    for k0 in range(0, K, BLOCK_K):
        # the next tile's ‖e‖², loaded now: its latency hides behind this tile's products
        e_sq_next = tl.load(
            e_sq_ptr + k0 + BLOCK_K + local, mask=k0 + BLOCK_K + local < K, other=float("inf")
        )
        code_ok = ((k0 + local) < K) | EVEN_K  # (BLOCK_K,)
        if SINGLE_D:
            e = tl.load(e_ptrs, mask=code_ok[:, None] & col_ok[None, :], other=0.0)
            if UPCAST:  # exact: a product of two bfloat16 values fits a float32
                e = e.to(tl.float32)
            # (BLOCK_N, BLOCK_K) z_i·e_k; "tf32" concerns float32 inputs only
            cross = tl.dot(z_rows, tl.trans(e), input_precision="tf32")
        else:
            cross = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)  # z_i·e_k, slice by slice
            for d0 in range(0, D, BLOCK_D):
                ok = ((d0 + cols) < D) | EVEN_D
                z = tl.load(z_ptrs + d0, mask=row_ok[:, None] & ok[None, :], other=0.0)
                e = tl.load(e_ptrs + d0, mask=code_ok[:, None] & ok[None, :], other=0.0)
                if UPCAST:
                    z = z.to(tl.float32)
                    e = e.to(tl.float32)
                cross = tl.dot(z, tl.trans(e), cross, input_precision="tf32")
        d = e_sq[None, :] - 2.0 * cross  # d[i, k] − ‖z_i‖²  (BLOCK_N, BLOCK_K)
        best, best_idx, second = _fold_tile(d, k0, local, best, best_idx, second, SECOND)
        e_ptrs += BLOCK_K * stride_e
        e_sq = e_sq_next

    tl.store(tokens_ptr + rows, best_idx.to(tl.int64), mask=row_ok)
    if SECOND:
        tl.store(best_ptr + rows, best, mask=row_ok)
        tl.store(second_ptr + rows, second, mask=row_ok)


@triton.jit
def _gather_kernel(
    z_ptr,  # (N, D)
    e_ptr,  # (K, D)
    tokens_ptr,  # (N,) int64
    zq_ptr,  # (N, D) out: e_{token_i}
    sq_dist_ptr,  # (N,) float32 out: ‖z_i − e_{token_i}‖²
    N,
    D,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)  # (BLOCK_N,)
    row_ok = rows < N
    tokens = tl.load(tokens_ptr + rows, mask=row_ok, other=0)  # (BLOCK_N,)
    sq_dist = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        c = d0 + tl.arange(0, BLOCK_D)  # (BLOCK_D,)
        ok = row_ok[:, None] & (c[None, :] < D)
        z = tl.load(z_ptr + rows[:, None] * D + c[None, :], mask=ok, other=0.0)
        e = tl.load(e_ptr + tokens[:, None] * D + c[None, :], mask=ok, other=0.0)
        tl.store(zq_ptr + rows[:, None] * D + c[None, :], e, mask=ok)
        diff = z.to(tl.float32) - e.to(tl.float32)  # exact difference, not the expansion
        sq_dist += tl.sum(diff * diff, axis=1)
    tl.store(sq_dist_ptr + rows, sq_dist, mask=row_ok)


_flags = triton.heuristics(
    {
        "SINGLE_D": lambda args: args["BLOCK_D"] >= args["D"],
        "EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0,
        "EVEN_D": lambda args: args["D"] % args["BLOCK_D"] == 0,
    }
)
_direct = _flags(_nearest_code_kernel)
_KEY = ["N", "K", "D", "SECOND"]
_PRUNE = {"early_config_prune": _fitting_configs}
_autotuned = {
    "half": triton.autotune(_configs(_HALF_CONFIGS), key=_KEY, prune_configs_by=_PRUNE)(_direct),
    "tf32": triton.autotune(_configs(_TF32_CONFIGS), key=_KEY, prune_configs_by=_PRUNE)(_direct),
}


class FusedVQOutput(NamedTuple):
    """What `quantize` returns."""

    z_q: torch.Tensor  # (N, D) like z: the codes' values, straight-through gradient to z
    tokens: torch.Tensor  # (N,) long
    sq_dist: torch.Tensor  # (N,) float32: ‖z_i − e_{token_i}‖², gradient 2(z − e) to z only


class Search(NamedTuple):
    """What `search` returns."""

    tokens: torch.Tensor  # (N,) long
    rechecked: int  # rows recomputed exactly after TF32 products (float32 inputs, exact=True)
    config: str  # the kernel's blocks (picked by the autotuner on a GPU)


#: Round datasheet figures for an H100 SXM (dense, no sparsity): a model, not a measurement.
H100 = {"bandwidth": 3.0e12, "tf32": 400e12, "bf16": 800e12}  # bytes/s, FLOP/s, FLOP/s


class Cost(NamedTuple):
    """The arithmetic of nearest-code search for z (N, D) and K codes; bytes and FLOPs."""

    flops: float  # 2·N·K·D: the cross terms z·e (the norms and the argmin are O(N·K + N·D))
    matrix_bytes: float  # N·K·4: the float32 distance matrix, written once and read once at least
    index_bytes: float  # N·8: the int64 tokens, all the fused kernel has to write
    min_bytes: float  # (N·D + K·D)·bytes_per_value + N·8: read z, codebook once; write tokens

    def floor_seconds(self, flops_per_s: float, bandwidth: float) -> float:
        """Roofline floor of the fused kernel: max(compute time, memory time)."""
        return max(self.flops / flops_per_s, self.min_bytes / bandwidth)

    def matrix_traffic_seconds(self, bandwidth: float) -> float:
        """The least time the distance-matrix path spends writing and re-reading its matrix."""
        return 2 * self.matrix_bytes / bandwidth


def cost(n: int, k: int, d: int, bytes_per_value: int = 4) -> Cost:
    """FLOPs and bytes of nearest-code search at (N, K, D) with inputs of `bytes_per_value`."""
    for name, value in (("n", n), ("k", k), ("d", d), ("bytes_per_value", bytes_per_value)):
        _validate.positive_int(name, value)
    return Cost(
        flops=2.0 * n * k * d,
        matrix_bytes=4.0 * n * k,
        index_bytes=8.0 * n,
        min_bytes=float((n * d + k * d) * bytes_per_value + 8 * n),
    )


def choose_blocks(n: int, k: int, d: int) -> tuple[int, int, int]:
    """Interpreter block sizes (BLOCK_N, BLOCK_K, BLOCK_D) for an (n, k, d) problem: powers of two
    ≥ 16 (tl.dot's smallest tile), as large as the problem up to caps, so that few programs and
    few loop steps run."""
    caps = _INTERPRETER_BLOCKS
    return tuple(
        min(cap, max(16, triton.next_power_of_2(size))) for cap, size in zip(caps, (n, k, d))
    )


def tf32_gap_bound(z_sq: torch.Tensor, e_sq_max: torch.Tensor | float, d: int) -> torch.Tensor:
    """How far TF32 products and float32 rounding can move the gap between two codes' distances,
    for rows with ‖z‖² = z_sq (N,), codes with ‖e‖² ≤ e_sq_max, D = d columns → (N,).

    TF32 keeps 10 of float32's 23 mantissa bits: each input is off by a relative u ≤ 2⁻¹⁰, each
    product by 2u + u², and a sum of D products in float32 by γ = D·2⁻²² more (generously), so
    |z·e − z̃·ẽ| ≤ (2u + u² + γ) Σ|z_j e_j| ≤ (2u + u² + γ)(‖z‖² + ‖e‖²)/2. The kernel's value
    ‖e‖² − 2 z·e is then off by (2u + u² + γ + 2⁻²³)·S with S = ‖z‖² + ‖e‖², the reference's
    float32 distance by (γ + 2⁻²¹)·S. A gap between two codes moves by twice each:
    (4u + 2u² + 4γ + 2⁻²² + 2⁻²⁰)·S. Beyond it, kernel and reference agree on the nearest code."""
    u = 2.0**-10
    gamma = d * 2.0**-22
    rel = 4 * u + 2 * u * u + 4 * gamma + 2.0**-22 + 2.0**-20
    return rel * (z_sq + e_sq_max)


def _check_block(name: str, value: object) -> int | None:
    if value is None:
        return None
    value = _validate.positive_int(name, value)
    if value < 16 or value & (value - 1):
        raise ValueError(f"{name} must be a power of two ≥ 16 (tl.dot's tile), got {value}")
    return value


def _check_inputs(z: object, codebook: object) -> tuple[torch.Tensor, torch.Tensor]:
    """z (N, D) and codebook (K, D): contiguous, one supported dtype, one device the kernel
    can run on."""
    for name, x, rows in (("codebook", codebook, "K"), ("z", z, "N")):
        x = _validate.tensor(name, x, shape=(rows, "D"))
        if x.dtype not in DTYPES:
            raise TypeError(f"{name} must be float32, float16 or bfloat16, got dtype {x.dtype}")
        if not x.is_contiguous():
            raise ValueError(
                f"{name} must be contiguous (call .contiguous()), got shape {tuple(x.shape)} "
                f"with strides {x.stride()}"
            )
    z, codebook = _validate.z_and_codebook(z, codebook)
    if not INTERPRETED and z.device.type != "cuda":
        raise ValueError(
            f"z and codebook must be CUDA tensors when Triton compiles kernels, got {z.device}; "
            "without a GPU, set TRITON_INTERPRET=1 before importing (mmcourse.kernels does it "
            "when no GPU is found)"
        )
    return z, codebook


def _check_options(block_n: object, block_k: object, block_d: object, exact: object) -> tuple:
    blocks = (
        _check_block("block_n", block_n),
        _check_block("block_k", block_k),
        _check_block("block_d", block_d),
    )
    if not isinstance(exact, bool):
        raise TypeError(f"exact must be a bool, got {type(exact).__name__}")
    return blocks


def _argmin(
    z: torch.Tensor,
    codebook: torch.Tensor,
    e_sq: torch.Tensor,
    blocks: tuple[int | None, int | None, int | None],
    second: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """Run the kernel → tokens (N,) long, best and second (N,) float32 (empty unless `second`),
    and the blocks it ran with."""
    n, d = z.shape
    k = codebook.shape[0]
    tokens = torch.empty(n, dtype=torch.long, device=z.device)
    best = torch.empty(n if second else 0, dtype=torch.float32, device=z.device)
    runner_up = torch.empty_like(best)
    args = (z, codebook, e_sq, tokens, best, runner_up, *sizes(n, k, d, d, d))
    upcast = INTERPRETED and z.dtype == torch.bfloat16
    if INTERPRETED or any(b is not None for b in blocks):
        bn, bk, bd = (b or auto for b, auto in zip(blocks, choose_blocks(n, k, d)))
        grid = (triton.cdiv(n, bn),)
        _direct[grid](*args, UPCAST=upcast, SECOND=second, BLOCK_N=bn, BLOCK_K=bk, BLOCK_D=bd)
        return tokens, best, runner_up, f"BLOCK_N: {bn}, BLOCK_K: {bk}, BLOCK_D: {bd}"
    kernel = _autotuned["tf32" if z.dtype == torch.float32 else "half"]
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    kernel[grid](*args, UPCAST=upcast, SECOND=second)
    return tokens, best, runner_up, str(kernel.best_config)


def _distances_argmin(z: torch.Tensor, e: torch.Tensor, e_sq: torch.Tensor) -> torch.Tensor:
    """argmin_k of clamp(‖z‖² − 2 z·e + ‖e‖², 0) in float32 for z (R, D), e (K, D) → (R,) long,
    rounded exactly as `reference_nearest_code` rounds it (one (R, K) buffer, updated in place)."""
    d = z @ e.T  # (R, K)  z·e
    d.mul_(-2).add_(z.pow(2).sum(dim=1, keepdim=True)).add_(e_sq)  # ‖z‖² − 2 z·e + ‖e‖²
    return d.clamp_min_(0).argmin(dim=1)


def _recheck(
    z: torch.Tensor,
    codebook: torch.Tensor,
    e_sq: torch.Tensor,
    tokens: torch.Tensor,
    best: torch.Tensor,
    second: torch.Tensor,
) -> int:
    """Recompute, exactly as the reference does, the tokens of the rows whose best two codes
    are within `tf32_gap_bound` of each other (ties included); → how many there were."""
    z_sq = torch.linalg.vector_norm(z, dim=1).square()  # (N,) no (N, D) temporary
    bound = tf32_gap_bound(z_sq, e_sq.max(), z.shape[1])
    near = (second - best <= bound).nonzero().flatten()  # (R,)
    rows_per_chunk = max(1, 2**24 // codebook.shape[0])  # (chunk, K) float32 ≤ 64 MiB
    for rows in near.split(rows_per_chunk):
        tokens[rows] = _distances_argmin(z[rows], codebook, e_sq)
    return near.numel()


def _search(
    z: torch.Tensor,
    codebook: torch.Tensor,
    blocks: tuple[int | None, int | None, int | None],
    exact: bool,
) -> Search:
    """Tokens of checked inputs (no gradient): kernel, then the exact re-check of near-ties
    for float32 inputs."""
    if z.shape[0] == 0:
        return Search(torch.empty(0, dtype=torch.long, device=z.device), 0, "no rows")
    e_sq = codebook.float().pow(2).sum(dim=1)  # (K,) ‖e_k‖², as the reference computes it
    recheck = exact and z.dtype == torch.float32
    tokens, best, second, config = _argmin(z, codebook, e_sq, blocks, recheck)
    rechecked = _recheck(z, codebook, e_sq, tokens, best, second) if recheck else 0
    return Search(tokens, rechecked, config)


def search(
    z: torch.Tensor,
    codebook: torch.Tensor,
    *,
    block_n: int | None = None,
    block_k: int | None = None,
    block_d: int | None = None,
    exact: bool = True,
) -> Search:
    """`nearest_code` with a report: the tokens (N,) long, how many rows were re-checked exactly
    after TF32 products, and the block sizes the kernel ran with."""
    z, codebook = _check_inputs(z, codebook)
    blocks = _check_options(block_n, block_k, block_d, exact)
    with torch.no_grad():
        return _search(z.detach(), codebook.detach(), blocks, exact)


def nearest_code(
    z: torch.Tensor,
    codebook: torch.Tensor,
    *,
    block_n: int | None = None,
    block_k: int | None = None,
    block_d: int | None = None,
    exact: bool = True,
) -> torch.Tensor:
    """Index of the nearest code with the fused kernel: z (N, D), codebook (K, D) → (N,) long;
    ties go to the lowest index, like `torch.argmin`.

    Products accumulate in float32 whatever the input dtype. float32 inputs multiply on TF32
    tensor cores; with `exact=True` the rows whose two nearest codes are closer than TF32's
    error bound are recomputed exactly, so the tokens equal the reference's. `exact=False`
    skips that (fastest; ~1e-3 relative error in z·e, so near-ties may flip).
    The block sizes (powers of two ≥ 16) default to large blocks in the interpreter and to
    autotuned ones on a GPU; tests set them small to exercise the masks.
    """
    return search(
        z, codebook, block_n=block_n, block_k=block_k, block_d=block_d, exact=exact
    ).tokens


def _gather(
    z: torch.Tensor, codebook: torch.Tensor, tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """z_q = codebook[tokens] like z, and ‖z − z_q‖² (N,) float32, in one pass over z."""
    n, d = z.shape
    z_q = torch.empty_like(z)
    sq_dist = torch.empty(n, dtype=torch.float32, device=z.device)
    if n == 0:
        return z_q, sq_dist
    if INTERPRETED:  # no tl.dot here: rows in blocks of up to 1024, one program per block
        block_n = min(1024, max(16, triton.next_power_of_2(n)))
        block_d = choose_blocks(n, 1, d)[2]
    else:
        block_n, block_d = _GATHER_BLOCKS
    _gather_kernel[(triton.cdiv(n, block_n),)](
        z, codebook, tokens, z_q, sq_dist, *sizes(n, d), BLOCK_N=block_n, BLOCK_D=block_d
    )
    return z_q, sq_dist


class _FusedQuantize(torch.autograd.Function):
    """(z, codebook) → (z_q, tokens, sq_dist): the search, then one gather pass.

    Backward: z_q passes its gradient straight to z (z_q = z + sg(e − z)); sq_dist = ‖z − e‖²
    sends 2(z − e)·g to z only, which is the commitment term β‖z − sg(e)‖²; the codebook gets
    nothing here (its loss ‖sg(z) − e‖² is computed with F.embedding on the tokens)."""

    @staticmethod
    def forward(ctx, z, codebook, blocks, exact):  # noqa: ANN001
        z, codebook = z.detach(), codebook.detach()
        tokens = _search(z, codebook, blocks, exact).tokens
        z_q, sq_dist = _gather(z, codebook, tokens)
        ctx.save_for_backward(z, z_q)
        ctx.mark_non_differentiable(tokens)
        return z_q, tokens, sq_dist

    @staticmethod
    def backward(ctx, grad_zq, grad_tokens, grad_dist):  # noqa: ANN001
        z, z_q = ctx.saved_tensors
        grad_z = grad_zq.clone() if grad_zq is not None else torch.zeros_like(z)
        if grad_dist is not None:
            grad_z += (2 * (z.float() - z_q.float()) * grad_dist[:, None]).to(z.dtype)
        return grad_z, None, None, None


def quantize(
    z: torch.Tensor,
    codebook: torch.Tensor,
    *,
    block_n: int | None = None,
    block_k: int | None = None,
    block_d: int | None = None,
    exact: bool = True,
) -> FusedVQOutput:
    """Quantize rows z (N, D) with the fused kernel: tokens, z_q (straight-through) and the
    squared distance per row, differentiable as described in `FusedVQOutput`.

    A drop-in for chapter 02's VQ layer: with codes = F.embedding(tokens, codebook),
    codebook_loss = ‖sg(z) − codes‖² (mean) and commitment_loss = β · sq_dist.sum() / (N·D)
    give the layer's losses and gradients, and z_q replaces `straight_through(z, codes)`.
    """
    z, codebook = _check_inputs(z, codebook)
    blocks = _check_options(block_n, block_k, block_d, exact)
    return FusedVQOutput(*_FusedQuantize.apply(z, codebook, blocks, exact))


def reference_nearest_code(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """The PyTorch reference: the (N, K) float32 distance matrix ‖z‖² − 2 z·eᵀ + ‖e‖² (clamped
    at 0, as chapter 01's `squared_distances`) and its argmin → (N,) long."""
    z, codebook = _validate.z_and_codebook(z, codebook, same_dtype=False)
    e = codebook.float()
    return _distances_argmin(z.float(), e, e.pow(2).sum(dim=1))
