"""Fused nearest-code search: a Triton kernel that never builds the N×K distance matrix.

Chapter 01 found each vector's nearest code as distance matrix + argmin:

    d[i, k] = ‖z_i‖² − 2 z_i·e_k + ‖e_k‖²,   token_i = argmin_k d[i, k]

which writes an (N, K) matrix to memory and reads it back (N = 65536, K = 8192 in float32: 2 GiB)
to keep N numbers. The kernel here gives each program a block of BLOCK_N rows of z; it walks the
codebook in tiles of BLOCK_K codes, computes each (BLOCK_N, BLOCK_K) tile of d with `tl.dot`
(float32 accumulation) and folds it into a running minimum and its index, kept in registers. Only
the indices leave the chip, with the gathered codes z_q and the row's squared distance.

- `nearest_code(z, codebook)`: the tokens (N,) long, ties to the lowest index like `torch.argmin`;
- `quantize(z, codebook)`: tokens, z_q with the straight-through gradient (an autograd Function)
  and the squared distance per row, whose gradient is the commitment term's;
- `reference_nearest_code`: the PyTorch reference, distance matrix + argmin in float32.

Inputs: z (N, D) and codebook (K, D), contiguous, float32, float16 or bfloat16, one dtype and one
device: CUDA tensors when kernels compile, CPU tensors in the interpreter (see `mmcourse.kernels`).
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch

from mmcourse import _validate
from mmcourse.kernels import INTERPRETED, interpreter_scope, require_triton

require_triton()

import triton  # noqa: E402  (after mmcourse.kernels has chosen compiled or interpreted)
import triton.language as tl  # noqa: E402

__all__ = [
    "DTYPES",
    "FusedVQOutput",
    "INTERPRETED",
    "H100",
    "Cost",
    "choose_blocks",
    "cost",
    "nearest_code",
    "quantize",
    "reference_nearest_code",
]

DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# The interpreter pays per program and per loop step, not per element: large blocks are fast there.
_INTERPRETER_BLOCKS = (128, 256, 64)  # BLOCK_N, BLOCK_K, BLOCK_D caps
# On a GPU the blocks must fit registers and shared memory (a tile that does not is skipped by
# the autotuner); these suit H100/H200-class parts. (BLOCK_N, BLOCK_K, BLOCK_D, warps, stages)
_TENSOR_CORE_CONFIGS = [  # float16, bfloat16, and float32 on TF32
    (128, 128, 64, 8, 3),
    (128, 128, 32, 4, 4),
    (128, 64, 64, 4, 3),
    (64, 128, 64, 4, 3),
    (256, 128, 64, 8, 3),
    (128, 64, 128, 8, 3),
    (128, 128, 128, 8, 2),
    (128, 64, 256, 8, 3),  # with D ≤ 256: the rows stay on chip for the whole codebook
    (64, 128, 256, 4, 3),
    (128, 128, 256, 8, 2),
]
_FMA_CONFIGS = [  # exact float32 products run on the FMA units; large tiles compile slowly
    (64, 64, 32, 4, 3),
    (128, 64, 32, 8, 3),
    (64, 128, 32, 4, 3),
    (128, 128, 32, 8, 2),
]


def _configs(table: list[tuple[int, int, int, int, int]]) -> list[triton.Config]:
    return [
        triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "BLOCK_D": bd}, num_warps=w, num_stages=s)
        for bn, bk, bd, w, s in table
    ]


@triton.jit
def _nearest_code_kernel(
    z_ptr,  # (N, D)
    e_ptr,  # (K, D)
    e_sq_ptr,  # (K,) float32  ‖e_k‖²
    tokens_ptr,  # (N,) int64   out
    dist_ptr,  # (N,) float32 out: min_k d[i, k]
    zq_ptr,  # (N, D)        out: e_{token_i}
    N,
    K,
    D,
    stride_z,
    stride_e,
    stride_zq,
    PRECISION: tl.constexpr,  # "ieee" for exact float32 products, "tf32" for speed
    UPCAST: tl.constexpr,  # multiply in float32 (the interpreter's bfloat16 tl.dot is wrong)
    WRITE_ZQ: tl.constexpr,  # also gather z_q (quantize); nearest_code needs only the tokens
    SINGLE_D: tl.constexpr,  # BLOCK_D ≥ D: no loop over D
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = (pid * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)  # (BLOCK_N,)
    row_ok = rows < N
    cols = tl.arange(0, BLOCK_D)  # (BLOCK_D,)

    if SINGLE_D:  # all of D in one block: load the rows once, keep them for every code tile
        z_rows = tl.load(
            z_ptr + rows[:, None] * stride_z + cols[None, :],
            mask=row_ok[:, None] & (cols[None, :] < D),
            other=0.0,
        )  # (BLOCK_N, BLOCK_D)
        z32 = z_rows.to(tl.float32)
        z_sq = tl.sum(z32 * z32, axis=1)  # (BLOCK_N,)  ‖z_i‖² in float32
        if UPCAST:
            z_rows = z32
    else:  # ‖z_i‖², one slice of columns at a time
        z_sq = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            c = d0 + cols
            z = tl.load(
                z_ptr + rows[:, None] * stride_z + c[None, :],
                mask=row_ok[:, None] & (c[None, :] < D),
                other=0.0,
            ).to(tl.float32)  # (BLOCK_N, BLOCK_D)
            z_sq += tl.sum(z * z, axis=1)

    best = tl.full((BLOCK_N,), float("inf"), dtype=tl.float32)  # running min_k d[i, k]
    best_idx = tl.zeros((BLOCK_N,), dtype=tl.int64)  # its k
    for k0 in range(0, K, BLOCK_K):
        codes = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)  # (BLOCK_K,)
        code_ok = codes < K
        if SINGLE_D:
            e = tl.load(
                e_ptr + codes[:, None] * stride_e + cols[None, :],
                mask=code_ok[:, None] & (cols[None, :] < D),
                other=0.0,
            )  # (BLOCK_K, BLOCK_D)
            if UPCAST:  # exact: a product of two bfloat16 values fits a float32
                e = e.to(tl.float32)
            cross = tl.dot(z_rows, tl.trans(e), input_precision=PRECISION)  # (BLOCK_N, BLOCK_K)
        else:
            cross = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)  # z_i·e_k, slice by slice
            for d0 in range(0, D, BLOCK_D):
                c = d0 + cols
                col_ok = c < D
                z = tl.load(
                    z_ptr + rows[:, None] * stride_z + c[None, :],
                    mask=row_ok[:, None] & col_ok[None, :],
                    other=0.0,
                )  # (BLOCK_N, BLOCK_D)
                e = tl.load(
                    e_ptr + codes[:, None] * stride_e + c[None, :],
                    mask=code_ok[:, None] & col_ok[None, :],
                    other=0.0,
                )  # (BLOCK_K, BLOCK_D)
                if UPCAST:
                    z = z.to(tl.float32)
                    e = e.to(tl.float32)
                cross = tl.dot(z, tl.trans(e), cross, input_precision=PRECISION)
        # codes past K load ‖e‖² = +inf: their distance is +inf and never wins
        e_sq = tl.load(e_sq_ptr + codes, mask=code_ok, other=float("inf"))  # (BLOCK_K,)
        d = tl.maximum(z_sq[:, None] - 2.0 * cross + e_sq[None, :], 0.0)  # (BLOCK_N, BLOCK_K)
        tile_min, tile_arg = tl.min(
            d, axis=1, return_indices=True, return_indices_tie_break_left=True
        )
        better = tile_min < best  # strict: an equal value in a later tile keeps the earlier index
        best_idx = tl.where(better, k0 + tile_arg.to(tl.int64), best_idx)
        best = tl.where(better, tile_min, best)

    tl.store(tokens_ptr + rows, best_idx, mask=row_ok)
    tl.store(dist_ptr + rows, best, mask=row_ok)
    if WRITE_ZQ:
        for d0 in range(0, D, BLOCK_D):  # gather z_q = e_{token}: one pass over D, no matrix
            c = d0 + cols
            ok = row_ok[:, None] & (c[None, :] < D)
            e = tl.load(e_ptr + best_idx[:, None] * stride_e + c[None, :], mask=ok, other=0.0)
            tl.store(zq_ptr + rows[:, None] * stride_zq + c[None, :], e, mask=ok)


_single_d = triton.heuristics({"SINGLE_D": lambda args: args["BLOCK_D"] >= args["D"]})
_KEY = ["N", "K", "D", "PRECISION", "WRITE_ZQ"]
_autotuned = {
    "tensor cores": triton.autotune(_configs(_TENSOR_CORE_CONFIGS), key=_KEY)(
        _single_d(_nearest_code_kernel)
    ),
    "fma": triton.autotune(_configs(_FMA_CONFIGS), key=_KEY)(_single_d(_nearest_code_kernel)),
}


class FusedVQOutput(NamedTuple):
    """What `quantize` returns."""

    z_q: torch.Tensor  # (N, D) like z: the codes' values, straight-through gradient to z
    tokens: torch.Tensor  # (N,) long
    sq_dist: torch.Tensor  # (N,) float32: ‖z_i − e_{token_i}‖², gradient 2(z − e) to z only


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
    codebook = _validate.tensor("codebook", codebook, shape=("K", "D"))
    z = _validate.tensor("z", z, shape=("N", "D"))
    for name, x in (("codebook", codebook), ("z", z)):
        if x.dtype not in DTYPES:
            raise TypeError(f"{name} must be float32, float16 or bfloat16, got dtype {x.dtype}")
        if not x.is_contiguous():
            raise ValueError(
                f"{name} must be contiguous (call .contiguous()), got shape {tuple(x.shape)} "
                f"with strides {x.stride()}"
            )
    if codebook.shape[0] == 0 or codebook.shape[1] == 0:
        raise ValueError(
            f"codebook must hold at least one code of D ≥ 1, got shape {tuple(codebook.shape)}"
        )
    if z.shape[1] != codebook.shape[1]:
        raise ValueError(
            f"z must have D = {codebook.shape[1]} columns like codebook "
            f"{tuple(codebook.shape)}, got shape {tuple(z.shape)}"
        )
    if z.dtype != codebook.dtype:
        raise TypeError(f"z must have codebook's dtype {codebook.dtype}, got {z.dtype}")
    if z.device != codebook.device:
        raise ValueError(f"z must be on codebook's device {codebook.device}, got {z.device}")
    if not INTERPRETED and z.device.type != "cuda":
        raise ValueError(
            f"z and codebook must be CUDA tensors when Triton compiles kernels, got {z.device}; "
            "without a GPU, set TRITON_INTERPRET=1 before importing (mmcourse.kernels does it "
            "when no GPU is found)"
        )
    return z, codebook


def _launch(
    z: torch.Tensor,
    codebook: torch.Tensor,
    blocks: tuple[int | None, int | None, int | None],
    exact: bool,
    write_zq: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the kernel on checked inputs → tokens (N,) long, sq_dist (N,) float32, z_q like z
    (empty unless `write_zq`)."""
    n, d = z.shape
    k = codebook.shape[0]
    tokens = torch.empty(n, dtype=torch.long, device=z.device)
    sq_dist = torch.empty(n, dtype=torch.float32, device=z.device)
    z_q = torch.empty_like(z) if write_zq else z.new_empty((0, d))
    if n == 0:
        return tokens, sq_dist, z_q
    e_sq = codebook.float().pow(2).sum(dim=1)  # (K,) ‖e_k‖², as the reference computes it
    upcast = INTERPRETED and z.dtype == torch.bfloat16
    # "ieee" matters only for float32 tiles; half-precision tiles keep Triton's default
    precision = "ieee" if upcast or (exact and z.dtype == torch.float32) else "tf32"
    args = (z, codebook, e_sq, tokens, sq_dist, z_q, n, k, d, z.stride(0), codebook.stride(0))
    args += (d,)  # z_q's row stride
    if INTERPRETED or any(b is not None for b in blocks):
        bn, bk, bd = (b or auto for b, auto in zip(blocks, choose_blocks(n, k, d)))
        grid = (triton.cdiv(n, bn),)
        with interpreter_scope() if INTERPRETED else contextlib.nullcontext():
            _nearest_code_kernel[grid](
                *args,
                PRECISION=precision,
                UPCAST=upcast,
                WRITE_ZQ=write_zq,
                SINGLE_D=bd >= d,
                BLOCK_N=bn,
                BLOCK_K=bk,
                BLOCK_D=bd,
            )
    else:
        grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
        kernel = _autotuned["fma" if precision == "ieee" else "tensor cores"]
        kernel[grid](*args, PRECISION=precision, UPCAST=upcast, WRITE_ZQ=write_zq)
    return tokens, sq_dist, z_q


def _run(
    z: object,
    codebook: object,
    block_n: int | None,
    block_k: int | None,
    block_d: int | None,
    exact: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    z, codebook = _check_inputs(z, codebook)
    blocks = (
        _check_block("block_n", block_n),
        _check_block("block_k", block_k),
        _check_block("block_d", block_d),
    )
    if not isinstance(exact, bool):
        raise TypeError(f"exact must be a bool, got {type(exact).__name__}")
    with torch.no_grad():
        return _launch(z.detach(), codebook.detach(), blocks, exact, write_zq=False)


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

    Products accumulate in float32 whatever the input dtype. `exact=False` lets float32 inputs
    use TF32 tensor cores on a GPU (faster, ~1e-3 relative error in z·e, so near-ties may flip).
    The block sizes (powers of two ≥ 16) default to large blocks in the interpreter and to
    autotuned ones on a GPU; tests set them small to exercise the masks.
    """
    return _run(z, codebook, block_n, block_k, block_d, exact)[0]


class _FusedQuantize(torch.autograd.Function):
    """(z, codebook) → (z_q, tokens, sq_dist) in one kernel launch.

    Backward: z_q passes its gradient straight to z (z_q = z + sg(e − z)); sq_dist = ‖z − e‖²
    sends 2(z − e)·g to z only, which is the commitment term β‖z − sg(e)‖²; the codebook gets
    nothing here (its loss ‖sg(z) − e‖² is computed with F.embedding on the tokens)."""

    @staticmethod
    def forward(ctx, z, codebook, blocks, exact):  # noqa: ANN001
        tokens, sq_dist, z_q = _launch(z.detach(), codebook.detach(), blocks, exact)
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
    blocks = (
        _check_block("block_n", block_n),
        _check_block("block_k", block_k),
        _check_block("block_d", block_d),
    )
    if not isinstance(exact, bool):
        raise TypeError(f"exact must be a bool, got {type(exact).__name__}")
    return FusedVQOutput(*_FusedQuantize.apply(z, codebook, blocks, exact))


def reference_nearest_code(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """The PyTorch reference: the (N, K) float32 distance matrix ‖z‖² − 2 z·eᵀ + ‖e‖² (clamped
    at 0, as chapter 01's `squared_distances`) and its argmin → (N,) long."""
    z, codebook = _check_pair_any_device(z, codebook)
    z, e = z.float(), codebook.float()
    z_sq = z.pow(2).sum(dim=1, keepdim=True)  # (N, 1)
    e_sq = e.pow(2).sum(dim=1)  # (K,)
    return (z_sq - 2 * (z @ e.T) + e_sq).clamp_min(0).argmin(dim=1)  # (N,)


def _check_pair_any_device(z: object, codebook: object) -> tuple[torch.Tensor, torch.Tensor]:
    codebook = _validate.tensor("codebook", codebook, shape=("K", "D"), floating=True)
    z = _validate.tensor("z", z, shape=("N", "D"), floating=True)
    if z.shape[1] != codebook.shape[1]:
        raise ValueError(
            f"z must have D = {codebook.shape[1]} columns like codebook "
            f"{tuple(codebook.shape)}, got shape {tuple(z.shape)}"
        )
    if z.device != codebook.device:
        raise ValueError(f"z must be on codebook's device {codebook.device}, got {z.device}")
    return z, codebook
