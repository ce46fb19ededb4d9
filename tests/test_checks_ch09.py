"""Chapter 09 checkers: the references pass; each known-wrong version fails with its message.

The candidates are Triton code as plain functions. The checkers run them as this process runs
kernels: compiled on a GPU, in the interpreter on a CPU. Tests that only the interpreter can
pass (it watches every address) are skipped where kernels compile; on a GPU machine
`test_interpreter_path_in_a_subprocess` runs them in a process with TRITON_INTERPRET=1."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("mmcourse.kernels.fused_vq", reason="chapter 09 needs triton (Linux x86-64)")

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from checker_cases import EXPECTED_AND_GOT, case_id, passes, rejects  # noqa: E402

from mmcourse.checks import ch09  # noqa: E402
from mmcourse.kernels import INTERPRETED, UnsupportedTriton  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
COMPILED = not INTERPRETED
interpreter_only = pytest.mark.skipif(
    COMPILED,
    reason="only the interpreter sees this (compiled kernels are checked by what they "
    "output); test_interpreter_path_in_a_subprocess runs it on this machine",
)


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
    cross = tl.dot(z, tl.trans(e), input_precision="ieee")
    d = tl.sum(z * z, axis=1)[:, None] - 2 * cross + e_sq[None, :]
    tl.store(out_ptr + offs_n[:, None] * stride_out + offs_k[None, :], d)


@triton.jit
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
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    mask_n: tl.constexpr = True,
    mask_k: tl.constexpr = True,
    mask_d: tl.constexpr = True,
    fill: tl.constexpr = float("inf"),
    where_k: tl.constexpr = False,
    z_other: tl.constexpr = True,
    swap_pids: tl.constexpr = False,
    wild_store: tl.constexpr = False,
):
    """distance_tile with one thing changed at a time."""
    pid_n = tl.program_id(1) if swap_pids else tl.program_id(0)
    pid_k = tl.program_id(0) if swap_pids else tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_n < N if mask_n else offs_n >= 0
    code_ok = offs_k < K if mask_k else offs_k >= 0
    col_ok = offs_d < D if mask_d else offs_d >= 0
    z_ptrs = z_ptr + offs_n[:, None] * stride_z + offs_d[None, :]
    e_ptrs = e_ptr + offs_k[:, None] * stride_e + offs_d[None, :]
    if z_other:
        z = tl.load(z_ptrs, mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
    else:
        z = tl.load(z_ptrs, mask=row_ok[:, None] & col_ok[None, :]).to(tl.float32)
    e = tl.load(e_ptrs, mask=code_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
    e_sq = tl.load(e_sq_ptr + offs_k, mask=code_ok, other=fill)
    cross = tl.dot(z, tl.trans(e), input_precision="ieee")
    d = tl.sum(z * z, axis=1)[:, None] - 2 * cross + e_sq[None, :]
    if where_k:  # hides what an unmasked load read, but the read still happened
        d = tl.where(offs_k[None, :] < K, d, float("inf"))
    row_stride = stride_out * 4096 if wild_store else stride_out
    tl.store(out_ptr + offs_n[:, None] * row_stride + offs_k[None, :], d)


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


def _no_other(
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
    # BUG: masked-off lanes of z are undefined on a GPU
    _tile(z, e, e_sq, out, N, K, D, sz, se, so, BLOCK_N, BLOCK_K, BLOCK_D, z_other=False)


def _swapped_pids(
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
    # BUG: rows from program_id(1), codes from program_id(0): stores land outside the output
    _tile(z, e, e_sq, out, N, K, D, sz, se, so, BLOCK_N, BLOCK_K, BLOCK_D, swap_pids=True)


def _wild_store(
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
    # BUG: a row stride 4096 times too large stores far past every tensor
    _tile(z, e, e_sq, out, N, K, D, sz, se, so, BLOCK_N, BLOCK_K, BLOCK_D, wild_store=True)


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
    cross = tl.dot(z.to(tl.float32), tl.trans(e.to(tl.float32)), input_precision="ieee")
    d = e_sq[None, :] - 2 * cross  # BUG: no ‖z‖²
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
    cross = tl.dot(z, tl.trans(e.to(tl.float32)), input_precision="ieee")
    d = tl.sum(z * z, axis=1)[:, None] - 2 * cross + e_sq[None, :]
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


_NO_OTHER = (
    r"failed check 2, \"N = 37(.|\n)*every masked load says what its switched-off lanes hold"
    r"(.|\n)*without other=(.|\n)*hint:     give every masked load an other= value"
)
_SWAPPED = (
    r"failed check 3, \"N = 37(.|\n)*every store lands inside the output's tiles(.|\n)*"
    r"got:      a store to out at row \d+, (column \d+, past the last column|past the last row)"
    r"(.|\n)*offs_n comes from program_id\(0\)"
)
_TILE_WRONG = [
    (
        _no_row_mask,
        r"failed check 1, \"N = 37(.|\n)*got:      a read of z at row 37, past "
        r"the last row \(N = 37\)(.|\n)*hint:     build a mask",
    ),
    (_no_code_mask, r"failed check 1, (.|\n)*a read of (codebook at row 45|e_sq\[45\])"),
    (_no_column_mask, r"a read of z at row 0, column 19, past the last column \(D = 19\)"),
    (_no_other, _NO_OTHER),
    (_swapped_pids, _SWAPPED),
    (_fill_zero, r"codes past K have distance \+inf(.|\n)*other=float\('inf'\)"),
    (_no_z_norm, r"distances of the real rows and codes(.|\n)*‖z‖² = tl.sum"),
    (_masked_store, r"the whole tile is stored(.|\n)*entries never written"),
    (_tile_stub, r"Exercise 9\.1 \(a masked tile of distances\): not implemented yet"),
]


@pytest.mark.parametrize(("wrong", "message"), _TILE_WRONG, ids=case_id)
def test_distance_tile_rejects(wrong, message):
    rejects(ch09.check_distance_tile, wrong, message)


@interpreter_only
@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_no_code_mask_hidden, r"failed check 1, (.|\n)*a read of (codebook at row 45|e_sq)"),
        (_wild_store, r"failed check 3, (.|\n)*a store to memory outside every tensor"),
    ],
    ids=case_id,
)
def test_distance_tile_rejects_what_only_the_interpreter_sees(wrong, message):
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
            r"failed check 2, \"N = 29 rows(.|\n)*ties included(.|\n)*ties went to the "
            r"later code: compare with <",
        ),
        (_update_le_across_tiles, r"failed check 2, (.|\n)*ties went to the later code"),
        (_update_no_offset, r"failed check 2, (.|\n)*add the tile's offset k0"),
        (_update_index_only, r"failed check 2, (.|\n)*not the running minimum"),
        (_update_stub, r"Exercise 9\.2 \(the running argmin update\): not implemented yet"),
    ],
    ids=case_id,
)
def test_update_argmin_rejects(wrong, message):
    rejects(ch09.check_update_argmin, wrong, message)


def _update_none(best, best_idx, d, k0):
    tile_min, tile_arg = tl.min(d, axis=1, return_indices=True)
    better = tile_min < best
    best_idx = tl.where(better, tile_arg + k0, best_idx)
    best = tl.where(better, tile_min, best)  # BUG: no return


def _update_one(best, best_idx, d, k0):
    return (update_argmin(best, best_idx, d, k0)[1],)  # BUG: `return best_idx,`


def _update_three(best, best_idx, d, k0):
    best, best_idx = update_argmin(best, best_idx, d, k0)
    return best, best_idx, k0  # BUG: one value too many


def _update_swapped(best, best_idx, d, k0):
    best, best_idx = update_argmin(best, best_idx, d, k0)
    return best_idx, best  # BUG: the documented order is (best, best_idx)


def _update_float64(best, best_idx, d, k0):
    best, best_idx = update_argmin(best, best_idx, d, k0)
    return best.to(tl.float64), best_idx  # BUG: the running minimum changes type


@interpreter_only
@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (
            _update_none,
            r"failed check 1, \"N = 29 rows[^\n]*: returns \(best, best_idx\)\":\n  expected: a "
            r"tuple \(best, best_idx\)(.|\n)*got:      None \(nothing returned\)\n  hint:     end "
            r"with `return best, best_idx`",
        ),
        (_update_one, r"failed check 1, (.|\n)*got:      a tuple of 1 value\n"),
        (_update_three, r"failed check 1, (.|\n)*got:      a tuple of 3 values\n"),
        (_update_swapped, r"got:      \(best_idx, best\): the two in the other order"),
        (_update_float64, r"got:      best of dtype fp64, shape \(32,\)(.|\n)*stays float32"),
    ],
    ids=case_id,
)
def test_update_argmin_names_what_it_returned(wrong, message):
    """In the interpreter (a compiled kernel refuses these results when it compiles)."""
    rejects(ch09.check_update_argmin, wrong, message)


def _tile_none(
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
    return None  # BUG: stores nothing


@pytest.mark.parametrize(
    ("checker", "wrong"),
    [(ch09.check_distance_tile, _tile_none), (ch09.check_update_argmin, _update_none)],
    ids=case_id,
)
def test_a_candidate_returning_none_gets_expected_and_got(checker, wrong):
    """Never the catch-all "could not be checked": the failing check says what it expected."""
    rejects(checker, wrong, EXPECTED_AND_GOT)


# --- where the candidate runs -----------------------------------------------------------------


def _sourceless(fn):
    """`fn` re-created by exec, as a grader runs a notebook's cells: no source to find."""
    namespace = {"tl": tl}
    exec(compile(textwrap.dedent(_SOURCES[fn.__name__]), "<cell>", "exec"), namespace)
    return namespace[fn.__name__]


_SOURCES = {
    "distance_tile": """
        def distance_tile(z_ptr, e_ptr, e_sq_ptr, out_ptr, N, K, D, stride_z, stride_e,
                          stride_out, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                          BLOCK_D: tl.constexpr):
            offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
            offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
            offs_d = tl.arange(0, BLOCK_D)
            z = tl.load(z_ptr + offs_n[:, None] * stride_z + offs_d[None, :],
                        mask=(offs_n[:, None] < N) & (offs_d[None, :] < D), other=0.0)
            e = tl.load(e_ptr + offs_k[:, None] * stride_e + offs_d[None, :],
                        mask=(offs_k[:, None] < K) & (offs_d[None, :] < D), other=0.0)
            z, e = z.to(tl.float32), e.to(tl.float32)
            e_sq = tl.load(e_sq_ptr + offs_k, mask=offs_k < K, other=float("inf"))
            d = tl.sum(z * z, axis=1)[:, None] - 2 * tl.dot(z, tl.trans(e)) + e_sq[None, :]
            tl.store(out_ptr + offs_n[:, None] * stride_out + offs_k[None, :], d)
    """,
    "update_argmin": """
        def update_argmin(best, best_idx, d, k0):
            tile_min, tile_arg = tl.min(d, axis=1, return_indices=True)
            better = tile_min < best
            return tl.where(better, tile_min, best), tl.where(better, tile_arg + k0, best_idx)
    """,
    "_tile_stub": """
        def _tile_stub(z_ptr, e_ptr, e_sq_ptr, out_ptr, N, K, D, stride_z, stride_e, stride_out,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
            raise NotImplementedError()
    """,
}


def test_a_function_without_source_runs_in_an_interpreter_process():
    """On a GPU machine a function defined by exec cannot be compiled: its cases run in a
    subprocess's interpreter, with the same results as in this process's."""
    cases = [case[:-1] for case in ch09._TILE_CASES[:1]]
    tile = _sourceless(distance_tile)
    (far,) = ch09._in_interpreter_process("tile", tile, cases)
    if INTERPRETED:
        (near,) = ch09._run_cases("tile", triton.jit(tile), cases)
        assert torch.equal(far["out"].isnan(), near["out"].isnan())
        torch.testing.assert_close(far["out"], near["out"], equal_nan=True)
    assert not far["bad_reads"] and not far["no_other"] and not any(far["bad_stores"])
    update = _sourceless(update_argmin)
    runs = ch09._in_interpreter_process("update", update, ch09._update_inputs())
    for (d, _, block_k), (_, idx) in zip(ch09._update_inputs(), runs):
        assert torch.equal(idx, ch09._simulate(d, block_k, "right")[1])
    (stub,) = ch09._in_interpreter_process("tile", _sourceless(_tile_stub), cases)
    assert isinstance(stub, ch09._Failed) and stub.not_implemented


def test_sourceless_candidates_are_checked(capsys):
    passes(ch09.check_distance_tile, _sourceless(distance_tile), capsys, "9.1")
    rejects(ch09.check_distance_tile, _sourceless(_tile_stub), "not implemented yet")


def test_the_load_spy_finds_its_arguments_by_name():
    """Triton 3.6 passes the load six arguments (3.9: five); the spy binds them by name."""

    class Builder:
        def create_masked_load(self, ptrs, mask, other, cache_modifier, eviction_policy, vol):
            return mask

    builder, seen = Builder(), []
    undo = ch09._spy(builder, "create_masked_load", ("ptrs", "mask", "other"), seen.append)
    assert builder.create_masked_load(1, 2, None, "", "", False) == 2
    assert seen[0]["other"] is None and seen[0]["mask"] == 2
    undo()
    assert "create_masked_load" not in vars(builder)


@interpreter_only
def test_an_unsupported_triton_is_named(monkeypatch):
    from triton.runtime import interpreter

    def create_masked_load(self, pointers, where):  # renamed arguments: "a new Triton"
        raise AssertionError("never called")

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_masked_load", create_masked_load)
    ch09._check_triton_support.cache_clear()
    try:
        with pytest.raises(UnsupportedTriton, match=r"not supported by chapter 09's checker: "):
            ch09.check_distance_tile(distance_tile)
    finally:
        ch09._check_triton_support.cache_clear()


def test_reads_and_stores_are_told_from_the_guards():
    """Compiled kernels are checked by what comes out of the guard memory."""
    z = torch.full((100, 100), float("nan"))
    e = torch.full((100, 100), float("nan"))
    e_sq = torch.full((100,), ch09._E_SQ_GUARD)
    out = torch.full((12, 14), ch09._UNWRITTEN)
    regions = {
        "z": ch09._Region("z", z, 5, 3, ("N", "D")),
        "codebook": ch09._Region("codebook", e, 6, 3, ("K", "D")),
        "e_sq": ch09._Region("e_sq", e_sq, 6, 1, ("K",)),
    }
    valid = torch.zeros(8, 8)  # N = 5 rows, K = 6 codes, in tiles of 8
    assert ch09._guard_reads(valid, regions, 5, 6) == ""
    cases = {
        "z at row 5, past the last row (N = 5)": (slice(5, None), slice(0, 6)),
        "z at row 0, column 3, past the last column (D = 3)": (slice(0, 5), slice(None)),
        "codebook at row 0, column 3, past the last column (D = 3)": (slice(None), slice(0, 6)),
        "codebook at row 6, past the last row (K = 6)": (slice(None), slice(6, None)),
    }
    for message, where in cases.items():
        read = valid.clone()
        read[where] = float("nan")
        assert ch09._guard_reads(read, regions, 5, 6) == message
    read = valid.clone()
    read[:, 6:] = ch09._E_SQ_GUARD
    assert ch09._guard_reads(read, regions, 5, 6) == "e_sq[6], past the end (K = 6)"
    region = ch09._Region("out", out, 8, 8, ("rows", "columns"))
    assert ch09._guard_stores(out, region) == ""
    out[2, 9] = 1.0
    assert ch09._guard_stores(out, region) == (
        "out at row 2, column 9, past the last column (columns = 8)"
    )


@pytest.fixture
def as_if_compiled(monkeypatch):
    """The checker's compiled path, with the interpreter standing in for the GPU: no address
    watch, only what comes out of the guard memory (and no IR to read)."""
    monkeypatch.setattr(ch09, "INTERPRETED", False)
    monkeypatch.setattr(ch09, "_device", lambda: torch.device("cpu"))
    monkeypatch.setattr(ch09, "_check_triton_support", lambda: None)
    monkeypatch.setattr(ch09, "_ttir", lambda compiled: "")
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)


@interpreter_only
@pytest.mark.parametrize(("wrong", "message"), [*_TILE_WRONG[:3], _TILE_WRONG[4]], ids=case_id)
def test_compiled_checks_tell_reads_and_stores_from_the_guards(as_if_compiled, wrong, message):
    rejects(ch09.check_distance_tile, wrong, message)


@interpreter_only
def test_compiled_checks_pass_the_reference(as_if_compiled, capsys):
    passes(ch09.check_distance_tile, distance_tile, capsys, "9.1")


def test_masked_loads_without_other_are_read_from_the_ir():
    ttir = """
    %a = tt.load %p, %m : tensor<16x!tt.ptr<f32>> loc(#loc1)
    %b = tt.load %p, %m, %cst : tensor<16x!tt.ptr<f32>> loc(#loc2)
    %c = tt.load %p : tensor<16x!tt.ptr<f32>> loc(#loc3)
    %d_1 = tt.load %ptrs_3, %mask_4 cacheModifier = ca : tensor<16x!tt.ptr<f32>>
    """
    assert ch09._loads_without_other(ttir) == 2


_COMPILE = """
import sys
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile
import triton
import test_checks_ch09 as t
from mmcourse.checks import ch09

def ttir(fn, types, constexprs):
    types = types | dict.fromkeys(constexprs, "constexpr")
    signature = {name: types[name] for name in fn.arg_names}
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    return compile(source, target=GPUTarget("cuda", 90, 32)).asm["ttir"]

tile = dict.fromkeys(["z_ptr", "e_ptr", "e_sq_ptr", "out_ptr"], "*fp32")
tile |= dict.fromkeys(["N", "K", "D", "stride_z", "stride_e", "stride_out"], "i32")
blocks = {"BLOCK_N": 16, "BLOCK_K": 32, "BLOCK_D": 32}
for name in ["distance_tile", "_no_other", "_swapped_pids", "_no_column_mask"]:
    fn = triton.jit(getattr(t, name))
    types = dict(zip(fn.arg_names, tile.values()))
    print(name, ch09._loads_without_other(ttir(fn, types, blocks)))
canary = {"x_ptr": "*fp32", "out_ptr": "*fp32", "n": "i32"}
canary_ir = ttir(triton.jit(ch09._canary_kernel), canary, {"BLOCK": 8})
print("canary", ch09._loads_without_other(canary_ir))
harness = {"d_ptr": "*fp32", "best_ptr": "*fp32", "idx_ptr": "*i64", "N": "i32", "K": "i32"}
update = {"update": triton.jit(t.update_argmin), "BLOCK_N": 32, "BLOCK_K": 16}
print("harness", ch09._loads_without_other(ttir(ch09._harness, harness, update)))
"""


def test_candidates_compile_for_a_gpu_without_one():
    """Triton compiles (to Hopper's code) without a GPU: the checker's compiled path builds the
    learner's kernels and its harness, and finds the one masked load without other=."""
    env = os.environ | {
        "TRITON_INTERPRET": "0",
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
        ),
    }
    done = subprocess.run(
        [sys.executable, "-c", _COMPILE], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    counts = dict(line.split() for line in done.stdout.splitlines())
    assert counts == {
        "distance_tile": "0",
        "_no_other": "1",
        "_swapped_pids": "0",
        "_no_column_mask": "0",
        "canary": "1",
        "harness": "0",
    }


# --- on a GPU ---------------------------------------------------------------------------------


@pytest.mark.gpu
def test_compiled_checker_path_on_the_gpu(capsys):
    """The checkers compile the candidates and run them on CUDA tensors; masking, other= and
    stores are still checked there, through guard memory and the kernel's IR."""
    assert COMPILED and ch09._device().type == "cuda"
    passes(ch09.check_distance_tile, distance_tile, capsys, "9.1")
    passes(ch09.check_update_argmin, update_argmin, capsys, "9.2")
    for wrong, message in [_TILE_WRONG[0], (_no_other, _NO_OTHER), (_swapped_pids, _SWAPPED)]:
        rejects(ch09.check_distance_tile, wrong, message)
    rejects(ch09.check_update_argmin, _update_no_offset, r"add the tile's offset k0")


@pytest.mark.gpu
def test_interpreter_path_in_a_subprocess():
    """Interpreted and compiled kernels never share a process: on a GPU machine the interpreter
    tests of chapter 09 run in one with TRITON_INTERPRET=1."""
    env = os.environ | {"TRITON_INTERPRET": "1"}
    tests = ["tests/test_checks_ch09.py", "tests/test_fused_vq.py"]
    command = [sys.executable, "-m", "pytest", "-q", "-m", "not gpu", "-p", "no:cacheprovider"]
    command += ["-k", "not compile"]  # compiling for sm_90 runs in this process's suite already
    done = subprocess.run(
        command + tests, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900
    )
    assert done.returncode == 0, done.stdout[-4000:]


# --- The notebook's own kernels, under every supported Triton ---------------------------------


def _jit_loops_over_arguments(tree) -> dict[str, set[str]]:
    """{kernel: its runtime (not constexpr) parameters that a `range()` inside it reads}."""
    loops = {}
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef):
            continue
        if not any(ast.unparse(d).endswith("jit") for d in fn.decorator_list):
            continue
        runtime = {
            a.arg
            for a in fn.args.args
            if a.annotation is None or "constexpr" not in ast.unparse(a.annotation)
        }
        read = {
            name.id
            for call in ast.walk(fn)
            if isinstance(call, ast.Call) and ast.unparse(call.func) == "range"
            for name in ast.walk(call)
            if isinstance(name, ast.Name)
        }
        if runtime & read:
            loops[fn.name] = runtime & read
    return loops


def test_notebook_kernels_that_loop_over_sizes_get_them_through_sizes():
    """Triton ≤ 3.6's interpreter hands an int argument to a kernel as a 1-element array, which
    `range(0, K, BLOCK_K)` refuses under NumPy 2.4 ("only 0-dimensional arrays can be converted
    to Python scalars"); `mmcourse.kernels.sizes` passes them as plain ints there. A launch of
    such a kernel must take its sizes from `*sizes(...)` (a rehearsal with triton 3.6 failed on
    notebook 09's own `fused_nearest` before)."""
    for name in ("solutions", "notebooks"):
        nb = json.loads((ROOT / name / "09_triton_fused_vq.ipynb").read_text(encoding="utf-8"))
        tree = ast.parse(
            "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
        )
        loops = _jit_loops_over_arguments(tree)
        assert "fused_nearest_kernel" in loops, "the rule no longer sees the notebook's kernel"
        launches = [
            call
            for call in ast.walk(tree)
            if isinstance(call, ast.Call)
            and isinstance(call.func, ast.Subscript)
            and ast.unparse(call.func.value) in loops
        ]
        assert launches
        for call in launches:
            through_sizes = any(
                isinstance(a, ast.Starred) and ast.unparse(a.value).startswith("sizes(")
                for a in call.args
            )
            assert through_sizes, f"{name}/09: {ast.unparse(call)[:120]} passes its sizes as ints"
