"""Chapter 09 checkers: the references pass; each known-wrong version fails with its message.

The candidates are Triton code as plain functions, run by the checkers in the interpreter."""

from __future__ import annotations

import pytest

pytest.importorskip("mmcourse.kernels.fused_vq", reason="chapter 09 needs triton (Linux x86-64)")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from checker_cases import case_id, passes, rejects  # noqa: E402

from mmcourse.checks import ch09  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


# --- Exercise 9.1: a masked tile of distances ------------------------------------------------


def distance_tile(
    z_ptr,
    e_ptr,
    e_sq_ptr,
    out_ptr,
    N,
    K,
    D,
    stride_z,
    stride_e,
    stride_out,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, BLOCK_D)
    z_mask = (offs_n[:, None] < N) & (offs_d[None, :] < D)
    e_mask = (offs_k[:, None] < K) & (offs_d[None, :] < D)
    z = tl.load(z_ptr + offs_n[:, None] * stride_z + offs_d[None, :], mask=z_mask, other=0.0)
    e = tl.load(e_ptr + offs_k[:, None] * stride_e + offs_d[None, :], mask=e_mask, other=0.0)
    z = z.to(tl.float32)
    e = e.to(tl.float32)
    e_sq = tl.load(e_sq_ptr + offs_k, mask=offs_k < K, other=float("inf"))
    d = tl.sum(z * z, axis=1)[:, None] - 2 * tl.dot(z, tl.trans(e)) + e_sq[None, :]
    tl.store(out_ptr + offs_n[:, None] * stride_out + offs_k[None, :], d)


def _tile(
    z_ptr,
    e_ptr,
    e_sq_ptr,
    out_ptr,
    N,
    K,
    D,
    stride_z,
    stride_e,
    stride_out,
    BLOCK_N,
    BLOCK_K,
    BLOCK_D,
    *,
    mask_n=True,
    mask_k=True,
    mask_d=True,
    fill=float("inf"),
    where_k=False,
):
    """distance_tile with one thing changed at a time (plain Python run by the interpreter)."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_n < N if mask_n else offs_n >= 0
    code_ok = offs_k < K if mask_k else offs_k >= 0
    col_ok = offs_d < D if mask_d else offs_d >= 0
    z_ptrs = z_ptr + offs_n[:, None] * stride_z + offs_d[None, :]
    e_ptrs = e_ptr + offs_k[:, None] * stride_e + offs_d[None, :]
    z = tl.load(z_ptrs, mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
    e = tl.load(e_ptrs, mask=code_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
    e_sq = tl.load(e_sq_ptr + offs_k, mask=code_ok, other=fill)
    d = tl.sum(z * z, axis=1)[:, None] - 2 * tl.dot(z, tl.trans(e)) + e_sq[None, :]
    if where_k:  # hides what an unmasked load read, but the read still happened
        d = tl.where(offs_k[None, :] < K, d, float("inf"))
    tl.store(out_ptr + offs_n[:, None] * stride_out + offs_k[None, :], d)


def _no_row_mask(
    z,
    e,
    e_sq,
    out,
    N,
    K,
    D,
    sz,
    se,
    so,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # BUG: reads z past row N
    _tile(z, e, e_sq, out, N, K, D, sz, se, so, BLOCK_N, BLOCK_K, BLOCK_D, mask_n=False)


def _no_code_mask(
    z,
    e,
    e_sq,
    out,
    N,
    K,
    D,
    sz,
    se,
    so,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # BUG: reads codes past K
    _tile(z, e, e_sq, out, N, K, D, sz, se, so, BLOCK_N, BLOCK_K, BLOCK_D, mask_k=False)


def _no_code_mask_hidden(
    z,
    e,
    e_sq,
    out,
    N,
    K,
    D,
    sz,
    se,
    so,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # BUG: reads past K
    _tile(
        z, e, e_sq, out, N, K, D, sz, se, so, BLOCK_N, BLOCK_K, BLOCK_D, mask_k=False, where_k=True
    )


def _no_column_mask(
    z,
    e,
    e_sq,
    out,
    N,
    K,
    D,
    sz,
    se,
    so,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # BUG: reads past column D
    _tile(z, e, e_sq, out, N, K, D, sz, se, so, BLOCK_N, BLOCK_K, BLOCK_D, mask_d=False)


def _fill_zero(
    z,
    e,
    e_sq,
    out,
    N,
    K,
    D,
    sz,
    se,
    so,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # BUG: missing codes at distance ‖z‖²
    _tile(z, e, e_sq, out, N, K, D, sz, se, so, BLOCK_N, BLOCK_K, BLOCK_D, fill=0.0)


def _no_z_norm(
    z_ptr,
    e_ptr,
    e_sq_ptr,
    out_ptr,
    N,
    K,
    D,
    stride_z,
    stride_e,
    stride_out,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, BLOCK_D)
    z_mask = (offs_n[:, None] < N) & (offs_d[None, :] < D)
    e_mask = (offs_k[:, None] < K) & (offs_d[None, :] < D)
    z = tl.load(z_ptr + offs_n[:, None] * stride_z + offs_d[None, :], mask=z_mask, other=0.0)
    e = tl.load(e_ptr + offs_k[:, None] * stride_e + offs_d[None, :], mask=e_mask, other=0.0)
    e_sq = tl.load(e_sq_ptr + offs_k, mask=offs_k < K, other=float("inf"))
    d = e_sq[None, :] - 2 * tl.dot(z.to(tl.float32), tl.trans(e.to(tl.float32)))  # BUG: no ‖z‖²
    tl.store(out_ptr + offs_n[:, None] * stride_out + offs_k[None, :], d)


def _masked_store(
    z_ptr,
    e_ptr,
    e_sq_ptr,
    out_ptr,
    N,
    K,
    D,
    stride_z,
    stride_e,
    stride_out,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, BLOCK_D)
    z_mask = (offs_n[:, None] < N) & (offs_d[None, :] < D)
    e_mask = (offs_k[:, None] < K) & (offs_d[None, :] < D)
    z = tl.load(z_ptr + offs_n[:, None] * stride_z + offs_d[None, :], mask=z_mask, other=0.0)
    e = tl.load(e_ptr + offs_k[:, None] * stride_e + offs_d[None, :], mask=e_mask, other=0.0)
    z = z.to(tl.float32)
    e_sq = tl.load(e_sq_ptr + offs_k, mask=offs_k < K, other=float("inf"))
    d = tl.sum(z * z, axis=1)[:, None] - 2 * tl.dot(z, tl.trans(e.to(tl.float32))) + e_sq[None, :]
    ptrs = out_ptr + offs_n[:, None] * stride_out + offs_k[None, :]
    tl.store(ptrs, d, mask=(offs_n[:, None] < N) & (offs_k[None, :] < K))  # BUG: part unwritten


def _tile_stub(
    z_ptr,
    e_ptr,
    e_sq_ptr,
    out_ptr,
    N,
    K,
    D,
    stride_z,
    stride_e,
    stride_out,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # YOUR CODE HERE
    raise NotImplementedError()


def test_distance_tile_references_pass(capsys):
    passes(ch09.check_distance_tile, distance_tile, capsys, "9.1")
    passes(ch09.check_distance_tile, triton.jit(distance_tile), capsys, "9.1")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (
            _no_row_mask,
            r"failed check 1, \"N = 37(.|\n)*got:      a read of z at row 37, past "
            r"the last row \(N = 37\)(.|\n)*hint:     build a mask",
        ),
        (_no_code_mask, r"failed check 1, (.|\n)*a read of (codebook at row 45|e_sq\[45\])"),
        (_no_code_mask_hidden, r"failed check 1, (.|\n)*a read of (codebook at row 45|e_sq)"),
        (_no_column_mask, r"a read of z at row 0, column 19, past the last column \(D = 19\)"),
        (_fill_zero, r"codes past K have distance \+inf(.|\n)*other=float\('inf'\)"),
        (_no_z_norm, r"distances of the real rows and codes(.|\n)*‖z‖² = tl.sum"),
        (_masked_store, r"the whole tile is stored(.|\n)*entries never written"),
        (_tile_stub, r"Exercise 9\.1 \(a masked tile of distances\): not implemented yet"),
    ],
    ids=case_id,
)
def test_distance_tile_rejects(wrong, message):
    rejects(ch09.check_distance_tile, wrong, message)


# --- Exercise 9.2: the running argmin update -------------------------------------------------


def update_argmin(best, best_idx, d, k0):
    tile_min, tile_arg = tl.min(d, axis=1, return_indices=True)
    better = tile_min < best
    best_idx = tl.where(better, tile_arg + k0, best_idx)
    best = tl.where(better, tile_min, best)
    return best, best_idx


def _update_with_argmin(best, best_idx, d, k0):
    tile_min = tl.min(d, axis=1)
    tile_arg = tl.argmin(d, axis=1)
    better = tile_min < best
    return tl.where(better, tile_min, best), tl.where(better, k0 + tile_arg, best_idx)


def _update_le(best, best_idx, d, k0):
    tile_min, tile_arg = tl.min(d, axis=1, return_indices=True, return_indices_tie_break_left=False)
    better = tile_min <= best  # BUG: ties go to the later code
    return tl.where(better, tile_min, best), tl.where(better, tile_arg + k0, best_idx)


def _update_le_across_tiles(best, best_idx, d, k0):
    tile_min, tile_arg = tl.min(d, axis=1, return_indices=True)
    better = tile_min <= best  # BUG: a tie in a later tile wins
    return tl.where(better, tile_min, best), tl.where(better, tile_arg + k0, best_idx)


def _update_no_offset(best, best_idx, d, k0):
    tile_min, tile_arg = tl.min(d, axis=1, return_indices=True)
    better = tile_min < best
    return tl.where(better, tile_min, best), tl.where(better, tile_arg, best_idx)  # BUG: no k0


def _update_index_only(best, best_idx, d, k0):
    tile_min, tile_arg = tl.min(d, axis=1, return_indices=True)
    better = tile_min < best
    return best, tl.where(better, tile_arg + k0, best_idx)  # BUG: best never moves


def _update_stub(best, best_idx, d, k0):
    # YOUR CODE HERE
    raise NotImplementedError()


def test_update_argmin_references_pass(capsys):
    passes(ch09.check_update_argmin, update_argmin, capsys, "9.2")
    passes(ch09.check_update_argmin, _update_with_argmin, capsys, "9.2")
    passes(ch09.check_update_argmin, triton.jit(update_argmin), capsys, "9.2")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (
            _update_le,
            r"failed check 1, \"N = 29 rows(.|\n)*ties included(.|\n)*ties went to the "
            r"later code: compare with <",
        ),
        (_update_le_across_tiles, r"failed check 1, (.|\n)*ties went to the later code"),
        (_update_no_offset, r"failed check 1, (.|\n)*add the tile's offset k0"),
        (_update_index_only, r"failed check 1, (.|\n)*not the running minimum"),
        (_update_stub, r"Exercise 9\.2 \(the running argmin update\): not implemented yet"),
    ],
    ids=case_id,
)
def test_update_argmin_rejects(wrong, message):
    rejects(ch09.check_update_argmin, wrong, message)


def test_interpreted_runs_a_plain_function_anywhere():
    import torch

    def double(x_ptr, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.store(x_ptr + offs, 2 * tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)

    x = torch.arange(5.0)
    ch09.interpreted(double)[(1,)](x, 5, BLOCK=8)
    assert x.tolist() == [0.0, 2.0, 4.0, 6.0, 8.0]
