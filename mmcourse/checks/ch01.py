"""Checkers of chapter 01 (vector quantization): nearest-code search, the VQ losses and forward
pass with its straight-through gradient, codebook usage, dead-code restarts, residual VQ and FSQ.

Every checker compares the candidate with `mmcourse.vq` on seeded inputs, then checks properties:
where gradients flow (on leaf tensors, with autograd), dtype and device, batch independence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from mmcourse import vq
from mmcourse.checks._contract import call, step_budget
from mmcourse.checks._core import (
    Check,
    OpSpy,
    _Failure,
    describe,
    exercise,
    gradients,
    leaves,
    seeded,
)

_EXPANSION = "‖z − e‖² = ‖z‖² − 2 z·e + ‖e‖²"
_LOSSES = "codebook_loss = mean (sg(z_e) − e)², commitment_loss = β · mean (z_e − sg(e))²"


# ------------------------------------------------------------------------------- helpers


def _rows_of(rows: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """For each row of `rows` (M, D), whether it equals some row of z (N, D): (M,) bool."""
    return (rows[:, None, :] == z[None, :, :]).all(dim=2).any(dim=1)


# ------------------------------------------------------------- Exercise 1.1: squared distances


def _distance_mistakes(z: torch.Tensor, codebook: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the classic expansion mistakes give on z (N, D) and codebook (K, D)."""
    z_sq, e_sq = z.pow(2).sum(dim=1, keepdim=True), codebook.pow(2).sum(dim=1)  # (N, 1), (K,)
    cross = z @ codebook.T  # (N, K)
    mistakes = {
        "the cross term without its factor 2: ‖z‖² − z·e + ‖e‖² where ‖z‖² − 2 z·e + ‖e‖² "
        "belongs": z_sq - cross + e_sq,
    }
    if len(z) == len(codebook):  # only then does ‖z‖² broadcast as a row without an error
        mistakes[
            "‖z‖² broadcast as a row (1, N) where a column (N, 1) belongs (sum with "
            "keepdim=True or index [:, None])"
        ] = z_sq.T - 2 * cross + e_sq
    return mistakes


def _squared_distance_mistakes(z: torch.Tensor, codebook: torch.Tensor) -> dict:
    """Exercise 1.1's mistakes: those of the expansion, and distances that are not squared."""
    cdist = (
        "distances, not squared distances: torch.cdist gives ‖z − e‖; square it, or use the "
        f"expansion {_EXPANSION}"
    )
    return {cdist: torch.cdist(z, codebook), **_distance_mistakes(z, codebook)}


@exercise("1.1", "squared distances to every code", references=(vq.squared_distances,))
def check_squared_distances(check: Check) -> None:
    """Exercise 1.1: squared_distances(z (N, D), codebook (K, D)) -> (N, K)."""
    g, dev = seeded(11), check.device
    # Against the zero codebook every distance is ‖z_i‖²: each row constant, rows different.
    z = torch.randn(4, 3, generator=g).to(dev)  # (N, D), N = K on purpose
    zeros = torch.zeros(4, 3, device=dev)  # (K, D)
    expected = vq.squared_distances(z, zeros)
    every_norm = (  # what both mistakes give against the zero codebook
        "every row holding all the ‖z_k‖²: ‖z‖² broadcast as a row (1, N) where a column "
        "(N, 1) belongs (sum with keepdim=True or index [:, None]), or the result transposed"
    )
    check.close(
        call(check, z, zeros),
        expected,
        "distances from 4 vectors to 4 zero codes: row i holds ‖z_i‖² in every column",
        atol=1e-4,
        hint="a common cause is broadcasting: the result is (N, K) with row i for z_i, so "
        "‖z‖² is a column (N, 1) and ‖e‖² a row (1, K)",
        alternatives={every_norm: expected.T, **_squared_distance_mistakes(z, zeros)},
    )
    codebook = torch.randn(5, 3, generator=g).to(dev)  # (K, D)
    z = codebook[torch.tensor([3, 0, 4, 1, 2])]  # every z_i is a code
    check.close(
        call(check, z, codebook),
        vq.squared_distances(z, codebook),
        "vectors that are codes themselves: distance 0 to their own code",
        atol=1e-4,
        hint=f"{_EXPANSION}; a vector's distance to itself must be 0: a common cause is a "
        "wrong factor or sign on the cross term z @ codebook.T",
        alternatives=_squared_distance_mistakes(z, codebook),
    )
    for n, k, d, dtype in [(6, 3, 5, torch.float32), (37, 11, 8, torch.float32)]:
        z = torch.randn(n, d, generator=g, dtype=dtype).to(dev)
        codebook = torch.randn(k, d, generator=g, dtype=dtype).to(dev)
        check.close(
            call(check, z, codebook),
            vq.squared_distances(z, codebook),
            f"matches the broadcast ‖z_i − e_k‖² for z ({n}, {d}) and codebook ({k}, {d})",
            atol=1e-4,
            hint="the result has shape (N, K) = (len(z), len(codebook))",
            alternatives=_squared_distance_mistakes(z, codebook),
        )
    z = torch.randn(7, 4, generator=g, dtype=torch.float64).to(dev)
    codebook = torch.randn(5, 4, generator=g, dtype=torch.float64).to(dev)
    dtype_hint = "compute with the inputs' own tensors; don't create float32 tensors"
    check.close(
        call(check, z, codebook),
        vq.squared_distances(z, codebook),
        "keeps dtype float64 and the device",
        atol=1e-9,
        hint=dtype_hint,
        dtype_hint=dtype_hint,
    )
    n, k, d = 64, 32, 16
    z = torch.randn(n, d, generator=g).to(dev)
    codebook = torch.randn(k, d, generator=g).to(dev)
    with OpSpy() as spy:
        call(check, z, codebook)
    check.that(
        spy.largest < n * k * d,
        f"builds no (N, K, D) tensor of differences (N={n}, K={k}, D={d})",
        expected=f"no intermediate tensor with {n * k * d} elements or more",
        got=f"a tensor with {spy.largest} elements",
        hint=f"use the expansion {_EXPANSION}: the cross term is one matrix product "
        "z @ codebook.T, and z[:, None] − codebook[None] must not appear",
    )
    check.raises(
        ValueError,
        "raises ValueError when z has D = 3 columns and the codebook D = 4",
        torch.randn(5, 3, generator=g).to(dev),
        torch.randn(6, 4, generator=g).to(dev),
        hint="compare z.shape[1] with codebook.shape[1] first and raise ValueError naming both",
    )


# ----------------------------------------------------------------- Exercise 1.2: the losses


def _beta_mistakes(expected: Sequence[torch.Tensor], beta: float) -> list[dict]:
    """What β on the wrong term (or a fixed β) gives, for (codebook_loss, commitment_loss)."""
    codebook = {"β on the codebook term: β multiplies only the commitment term": beta * expected[0]}
    commitment = {"the commitment term without its β (β on the wrong term?)": expected[1] / beta}
    if beta != 0.25:
        commitment["β fixed at 0.25: use the beta argument"] = expected[1] * 0.25 / beta
    return [codebook, commitment]


# The sizes a sum in place of a mean multiplies a loss by, for z_e (N, D) = (6, 3).
_LOSS_SIZES = {"N·D": 18, "N": 6, "D": 3}


@exercise("1.2", "codebook and commitment losses", references=(vq.quantize_losses,))
def check_vq_losses(check: Check) -> None:
    """Exercise 1.2: vq_losses(z_e (N, D), e (N, D), beta) -> (codebook_loss, commitment_loss)."""
    g, dev = seeded(12), check.device
    z_e = torch.randn(6, 3, generator=g).to(dev)
    codes = torch.randn(6, 3, generator=g).to(dev)
    for beta in (0.25, 2.0):
        expected = vq.quantize_losses(z_e, codes, beta)
        mistakes = _beta_mistakes(expected, beta)
        got = check.parts(call(check, z_e, codes, beta), ("codebook_loss", "commitment_loss"))
        check.close(
            got[0],
            expected[0],
            f"codebook_loss with beta={beta}: the mean of (z_e − e)² over all elements, no β",
            hint=f"{_LOSSES}; a common cause is β on the wrong term",
            alternatives=mistakes[0],
            sizes=_LOSS_SIZES,
        )
        check.close(
            got[1],
            expected[1],
            f"commitment_loss with beta={beta}: β times the mean of (z_e − e)²",
            hint=f"{_LOSSES}; a common cause is β on the wrong term",
            alternatives=mistakes[1],
            sizes=_LOSS_SIZES,
        )
    z_leaf, codes_leaf = leaves(z_e, codes)
    got = check.parts(call(check, z_leaf, codes_leaf, 0.25), ("codebook_loss", "commitment_loss"))
    ref_z, ref_codes = leaves(z_e, codes)
    expected = vq.quantize_losses(ref_z, ref_codes, 0.25)
    ref_grads = [gradients(loss, (ref_z, ref_codes)) for loss in expected]
    grads = [gradients(loss, (z_leaf, codes_leaf)) for loss in got]
    # (loss: 0 codebook, 1 commitment; input: 0 z_e, 1 e) → what its gradient must be
    for loss, wrt, what, hint in (
        (0, 1, "the codebook loss gives the codes e a gradient",
         "don't detach e in the codebook loss: it is what moves the codes"),
        (0, 0, "the codebook loss gives z_e no gradient: sg(z_e)",
         "stop the gradient with z_e.detach() in the codebook loss; otherwise it also drags "
         "the encoder towards the codes, which is the commitment loss's job"),
        (1, 0, "the commitment loss gives z_e a gradient, scaled by β",
         "don't detach z_e in the commitment loss: it is what keeps the encoder committed"),
        (1, 1, "the commitment loss gives the codes e no gradient: sg(e)",
         "stop the gradient with e.detach() in the commitment loss; otherwise β scales the "
         "codebook's update too"),
    ):  # fmt: skip
        check.close(grads[loss][wrt], ref_grads[loss][wrt], what, hint=hint)
    expected = vq.quantize_losses(z_e, codes)
    got = check.parts(call(check, z_e, codes), ("codebook_loss", "commitment_loss"))
    for index, name in enumerate(("codebook_loss", "commitment_loss")):
        check.close(
            got[index],
            expected[index],
            f"{name} with beta left out: the documented default β = 0.25",
            hint="keep the signature vq_losses(z_e, e, beta=0.25)",
        )
    z64, codes64 = z_e.double(), codes.double()
    expected = vq.quantize_losses(z64, codes64, 0.25)
    got = check.parts(call(check, z64, codes64, 0.25), ("codebook_loss", "commitment_loss"))
    dtype_hint = "compute with the inputs' own tensors; no Python floats or float32 tensors"
    for index, name in enumerate(("codebook_loss", "commitment_loss")):
        check.close(
            got[index],
            expected[index],
            f"keeps dtype float64 and the device ({name})",
            atol=1e-9,
            hint=dtype_hint,
            dtype_hint=dtype_hint,
        )


# --------------------------------------------------------------- Exercise 1.3: forward pass


def _vq_forward(z_e: torch.Tensor, codebook: torch.Tensor, beta: float) -> tuple:
    """The reference of Exercise 1.3, built from mmcourse.vq."""
    tokens = vq.nearest_code(z_e.detach(), codebook.detach())  # (N,)
    codes = codebook[tokens]  # (N, D)
    codebook_loss, commitment_loss = vq.quantize_losses(z_e, codes, beta)
    return vq.straight_through(z_e, codes), tokens, codebook_loss, commitment_loss


_FORWARD = ("z_q", "tokens", "codebook_loss", "commitment_loss")
_ORDER_HINT = (
    "a common cause is losses computed after the straight-through step: compute both from "
    "the codes e = codebook[tokens] before it; after z_q = z_e + sg(e − z_e), z_q's gradient "
    "goes to z_e, not to the codebook"
)


@exercise("1.3", "the VQ layer's forward pass", references=(vq.VectorQuantizer.forward,))
def check_vq_forward(check: Check) -> None:
    """Exercise 1.3: vq_forward(z_e (N, D), codebook (K, D), beta) -> (z_q, tokens,
    codebook_loss, commitment_loss)."""
    g, dev = seeded(13), check.device
    # N = K first: a transposed distance matrix still fits; then β away from its default
    for n, k, beta in [(8, 8, 0.25), (10, 6, 2.0)]:
        z_e = torch.randn(n, 4, generator=g).to(dev)
        codebook = torch.randn(k, 4, generator=g).to(dev)
        expected = _vq_forward(z_e, codebook, beta)
        got = check.parts(call(check, z_e, codebook, beta), _FORWARD)
        over_vectors = "argmin over the vectors (dim=0) where it runs over the codes (dim=1)"
        mistakes = {over_vectors: vq.squared_distances(z_e, codebook).argmin(dim=0)}
        for description, wrong in _distance_mistakes(z_e, codebook).items():
            mistakes[f"the nearest codes by {description}"] = wrong.argmin(dim=1)
        check.equal(
            got[1],
            expected[1],
            f"tokens (N,) long for N={n} vectors and K={k} codes: the nearest code of each row",
            hint=f"tokens = argmin over the codes (dim=1) of the (N, K) distances {_EXPANSION}; "
            "a common cause is ‖z‖² broadcast as a row where a column (N, 1) belongs",
            alternatives=mistakes,
        )
        check.close(
            got[0],
            expected[0],
            f"z_q holds the chosen codes codebook[tokens] (N={n}, K={k})",
            hint="z_q has the value of e = codebook[tokens] (then straight-through)",
        )
        mistakes = _beta_mistakes(expected[2:], beta)
        for index, name in ((2, "codebook_loss"), (3, "commitment_loss")):
            check.close(
                got[index],
                expected[index],
                f"{name} (N={n}, K={k}, beta={beta})",
                hint=f"{_LOSSES}, with β = the beta argument on the commitment term only",
                alternatives=mistakes[index - 2],
                sizes={"N·D": 4 * n, "N": n, "D": 4},
            )
    z_e = torch.randn(12, 4, generator=g).to(dev)
    codebook = torch.randn(6, 4, generator=g).to(dev)
    upstream = torch.randn(12, 4, generator=g).to(dev)  # ∂L/∂z_q from a pretend decoder
    z_leaf, cb_leaf = leaves(z_e, codebook)
    got = check.parts(call(check, z_leaf, cb_leaf, 0.25), _FORWARD)
    ref_z, ref_cb = leaves(z_e, codebook)
    expected = _vq_forward(ref_z, ref_cb, 0.25)
    downstream = [
        gradients((got[0] * upstream).sum(), (z_leaf, cb_leaf)),
        gradients((expected[0] * upstream).sum(), (ref_z, ref_cb)),
    ]
    check.close(
        downstream[0][0],
        downstream[1][0],
        "straight-through: the decoder's gradient at z_q reaches z_e unchanged",
        hint="return z_q = z_e + (e − z_e).detach(): the value of e, the gradient of z_e; "
        "returning e itself leaves the encoder without any gradient",
    )
    check.close(
        downstream[0][1],
        downstream[1][1],
        "the decoder's gradient at z_q does not reach the codebook",
        hint="in z_q = z_e + sg(e − z_e) the whole difference is detached",
    )
    losses = [gradients(got[i], (z_leaf, cb_leaf)) for i in (2, 3)]
    ref_losses = [gradients(expected[i], (ref_z, ref_cb)) for i in (2, 3)]
    check.close(
        losses[0][1],
        ref_losses[0][1],
        "the codebook loss gives the codebook its gradient",
        hint=_ORDER_HINT,
    )
    check.close(
        losses[0][0], ref_losses[0][0], "the codebook loss gives z_e no gradient", hint=_ORDER_HINT
    )
    check.close(
        losses[1][0],
        ref_losses[1][0],
        "the commitment loss gives z_e its gradient (β = 0.25)",
        hint=f"{_LOSSES}; {_ORDER_HINT}",
    )
    check.close(
        losses[1][1],
        ref_losses[1][1],
        "the commitment loss gives the codebook no gradient",
        hint="detach the codes in the commitment loss: β‖z_e − sg(e)‖²",
    )
    part = check.parts(call(check, z_e[:5], codebook, 0.25), _FORWARD)
    whole = check.parts(call(check, z_e, codebook, 0.25), _FORWARD)
    check.equal(
        part[1],
        whole[1][:5],
        "each row is quantized on its own: the first 5 rows alone get the same tokens",
        hint="a row's token depends only on that row and the codebook",
    )
    expected = _vq_forward(z_e, codebook, 0.25)
    got = check.parts(call(check, z_e, codebook), _FORWARD)
    check.close(
        got[3],
        expected[3],
        "commitment_loss with beta left out: the documented default β = 0.25",
        hint="keep the signature vq_forward(z_e, codebook, beta=0.25)",
    )
    z64, cb64 = z_e.double(), codebook.double()
    expected = _vq_forward(z64, cb64, 0.25)
    got = check.parts(call(check, z64, cb64, 0.25), _FORWARD)
    dtype_hint = "compute with the inputs' own tensors; no Python floats or float32 tensors"
    for index in (0, 2, 3):
        check.close(
            got[index],
            expected[index],
            f"keeps dtype float64 and the device for {_FORWARD[index]}",
            atol=1e-9,
            hint=dtype_hint,
            dtype_hint=dtype_hint,
        )


# ----------------------------------------------------------- Exercise 1.4: codebook health


@exercise(
    "1.4",
    "codebook usage and perplexity",
    references=(vq.code_usage, vq.perplexity, vq._perplexity),
)
def check_codebook_usage(check: Check) -> None:
    """Exercise 1.4: codebook_usage(tokens (...) long, num_codes) -> (usage, perplexity)."""
    g, dev = seeded(14), check.device
    cases = [
        (torch.full((10,), 2), 4, "one code used 10 times of K=4"),
        (torch.arange(8), 8, "each of K=8 codes used once"),
        (torch.tensor([0, 0, 1, 3]), 6, "codes 0, 0, 1, 3 of K=6 (codes 2, 4, 5 unused)"),
        (torch.randint(16, (2, 5, 5), generator=g), 16, "a (2, 5, 5) token map, K=16"),
        (torch.randint(3, (50,), generator=g) * 7, 32, "50 tokens among codes 0, 7, 14 of K=32"),
    ]
    for tokens, k, what in cases:
        tokens = tokens.to(dev)
        got = check.parts(call(check, tokens, k), ("usage", "perplexity"))
        got_usage = check.number(got[0], f"usage for {what} is one number")
        got_ppl = check.number(got[1], f"perplexity for {what} is one number")
        usage, ppl = vq.code_usage(tokens, k), vq.perplexity(tokens, k)
        check.that(
            math.isclose(got_usage, usage, rel_tol=1e-5),
            f"usage for {what}",
            expected=f"{usage:.6g}, the fraction of the K codes used at least once",
            got=f"{got_usage:.6g}",
            hint="count every code with torch.bincount(tokens.flatten(), minlength=num_codes) "
            "(minlength, or unused codes at the end are missing), then usage = (counts > 0) "
            "averaged over the K codes, not over the tokens",
        )
        check.that(
            math.isclose(got_ppl, ppl, rel_tol=1e-4),
            f"perplexity for {what}",
            expected=f"{ppl:.6g} = exp(−Σ_k p_k log p_k)",
            got=f"{got_ppl:.6g}",
            hint="p = counts / counts.sum(); an unused code has p log p = 0 (0·log 0 gives nan "
            "in torch: use torch.special.xlogy(p, p) or keep only p > 0); perplexity is "
            "exp of the entropy, between 1 and K",
        )


# -------------------------------------------------------- Exercise 1.5: restarting dead codes


def _check_restart(
    check: Check,
    codebook: torch.Tensor,
    counts: torch.Tensor,
    z: torch.Tensor,
    threshold: float,
    what: str,
) -> torch.Tensor:
    """Run the candidate once and check which codes moved and where to; returns its result."""
    before = codebook.clone()
    got = call(check, codebook, counts, z, threshold, generator=seeded(0))
    _like_codebook(check, got, codebook, what)
    dead = counts < threshold  # (K,)
    live = (got[~dead] == before[~dead]).all(dim=1)
    check.that(
        bool(live.all()),
        f"keeps every code with count ≥ threshold={threshold} as it was ({what})",
        expected=f"codes {(~dead).nonzero().flatten().tolist()} unchanged",
        got=f"codes {(~dead).nonzero().flatten()[~live].tolist()} changed",
        hint="a code is dead when counts[k] < threshold (strictly below) and only those "
        "move; a common cause is ≤ where < belongs",
    )
    revived = got[dead]  # (n_dead, D)
    on_data = _rows_of(revived, z)
    check.that(
        bool(on_data.all()),
        f"moves every dead code onto a vector of z ({what})",
        expected=f"codes {dead.nonzero().flatten().tolist()} each equal to some row of z",
        got=f"{int((~on_data).sum())} of {len(revived)} are not rows of z",
        hint="codebook[k] = z[i] for a random row i: a revived code sits on real data, so it "
        "wins that vector at once (random noise could land anywhere, and die again)",
    )
    return got


def _like_codebook(check: Check, got: Any, codebook: torch.Tensor, what: str) -> None:
    check.that(
        isinstance(got, torch.Tensor)
        and got.shape == codebook.shape
        and got.dtype == codebook.dtype
        and got.device == codebook.device,
        f"returns a new codebook like the old one ({what})",
        expected=describe(codebook),
        got=describe(got),
        hint="return the codebook (K, D), with the input's dtype and device",
    )


def _picked_rows(got: torch.Tensor, dead: torch.Tensor, z: torch.Tensor) -> list[int]:
    """For each dead code, the index of the row of z it now equals (−1 if none)."""
    match = (got[dead][:, None, :] == z[None, :, :]).all(dim=2)  # (n_dead, N)
    return [int(row.nonzero()[0]) if row.any() else -1 for row in match]


_NO_GENERATOR_HINT = (
    "generator defaults to None: pass it through as it is, torch.randperm(len(z), "
    "generator=generator), which draws from the global random state when it is None"
)


def _check_rows_of_z(
    check: Check, got: Any, codebook: torch.Tensor, counts: torch.Tensor, z: torch.Tensor
) -> None:
    _like_codebook(check, got, codebook, "generator=None")
    rows = _picked_rows(got, counts < 1, z)
    check.that(
        -1 not in rows and bool((got[counts >= 1] == codebook[counts >= 1]).all()),
        "works without a generator (generator=None: the global random state)",
        expected="the dead codes on rows of z, the others unchanged",
        got=f"{rows.count(-1)} of {len(rows)} dead codes are not rows of z",
        hint=_NO_GENERATOR_HINT,
    )


def _check_random_rows(check: Check, g: torch.Generator, dev: torch.device) -> None:
    """Over many seeds: distinct rows for the dead codes, and every row of z drawn sometimes."""
    codebook = torch.randn(8, 3, generator=g).to(dev)
    counts = torch.tensor([0, 0, 0, 9, 0, 0, 0, 9], device=dev)  # 6 dead codes
    z = torch.randn(8, 3, generator=g).to(dev) + 5  # 8 different rows
    dead = counts < 1
    seeds, picks = range(24), []
    for seed in seeds:
        got = call(check, codebook, counts, z, 1.0, generator=seeded(seed))
        _like_codebook(check, got, codebook, f"seed {seed}")
        rows = _picked_rows(got, dead, z)
        check.that(
            -1 not in rows,
            f"moves every dead code onto a vector of z (seed {seed})",
            expected="each revived code equal to some row of z",
            got=f"{rows.count(-1)} of {len(rows)} are not rows of z",
            hint="codebook[k] = z[i] for a random row i",
        )
        picks.append(rows)
    repeated = [(seed, rows) for seed, rows in zip(seeds, picks) if len(set(rows)) < len(rows)]
    check.that(
        not repeated,
        f"draws 6 distinct rows of z (N = 8) for 6 dead codes, for each of {len(seeds)} seeds",
        expected="no row of z given to two dead codes",
        got=f"seed {repeated[0][0]} gave rows {repeated[0][1]}" if repeated else "",
        hint="draw without replacement while N allows: torch.randperm(len(z), "
        "generator=generator)[:n_dead]; torch.randint draws with replacement and repeats rows",
    )
    never = sorted(set(range(len(z))) - {r for rows in picks for r in rows})
    check.that(
        not never,
        f"draws the rows at random: over {len(seeds)} seeds every row of z is picked sometimes",
        expected="each of the 8 rows of z picked for some seed",
        got=f"rows {never} never picked; seeds 0 and 1 gave rows {picks[0]} and {picks[1]}",
        hint="the rows must be a uniform random choice among all N rows of z, e.g. "
        "torch.randperm(len(z), generator=generator)[:n_dead]; the first rows of z (or a "
        "permutation of only some of them) revive the same vectors every time",
    )


@exercise(
    "1.5",
    "restart dead codes",
    references=(
        vq.restart_dead_codes,
        vq._restart,
        vq._dead_mask,
        vq.VectorQuantizer.restart_dead_codes,
    ),
)
def check_restart_dead_codes(check: Check) -> None:
    """Exercise 1.5: restart_dead_codes(codebook (K, D), counts (K,), z (N, D), threshold,
    generator) -> new codebook (K, D)."""
    with step_budget(check, 200_000, _ENDLESS_DRAW):
        _check_restart_dead_codes(check)


_ENDLESS_DRAW = (
    "a loop that redraws until the rows are distinct never ends when there are more dead codes "
    "than rows of z: draw distinct rows while N allows (torch.randperm), and with "
    "replacement (torch.randint) otherwise"
)


def _check_restart_dead_codes(check: Check) -> None:
    g, dev = seeded(15), check.device
    codebook = torch.randn(6, 3, generator=g).to(dev)
    z = torch.randn(10, 3, generator=g).to(dev) + 5
    counts = torch.tensor([5, 0, 3, 0, 0, 1], device=dev)
    got = _check_restart(check, codebook, counts, z, 1.0, "counts [5, 0, 3, 0, 0, 1]")
    revived = got[counts < 1]  # (3, D)
    distinct = len(torch.unique(revived, dim=0))
    check.that(
        distinct == len(revived),
        "gives different dead codes different rows of z",
        expected=f"{len(revived)} distinct vectors",
        got=f"{distinct} distinct",
        hint="draw distinct rows, e.g. torch.randperm(len(z), generator=generator)[:n_dead]; "
        "codes restarted on the same vector compete for it and all but one die again",
    )
    _check_random_rows(check, g, dev)
    thresholded = torch.tensor([3, 1, 2, 0], device=dev)
    _check_restart(check, codebook[:4], thresholded, z, 2.0, "counts [3, 1, 2, 0], threshold 2")
    few = torch.randn(2, 3, generator=g).to(dev)
    _check_restart(check, codebook[:4], torch.zeros(4, device=dev), few, 1.0, "4 dead, 2 rows")
    same = [call(check, codebook, counts, z, 1.0, generator=seeded(7)) for _ in range(2)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        other_global = call(check, codebook, counts, z, 1.0, generator=seeded(7))
    check.that(
        torch.equal(same[0], same[1]) and torch.equal(same[0], other_global),
        "draws its random rows from `generator` only: the same seed gives the same codebook",
        expected="identical codebooks for generators with the same seed",
        got="different codebooks",
        hint="pass generator=generator to torch.randperm / torch.randint (on the CPU, then "
        "move the indices to z.device); don't use the global random state",
    )
    check.equal(
        call(check, codebook, counts, z, generator=seeded(3)),
        call(check, codebook, counts, z, 1.0, generator=seeded(3)),
        "threshold left out: the documented default threshold = 1.0",
        hint="keep the signature restart_dead_codes(codebook, counts, z, threshold=1.0, "
        "generator=None)",
    )
    with torch.random.fork_rng(devices=[]):  # the learner's global random state untouched
        torch.manual_seed(0)
        try:
            got = call(check, codebook, counts, z, 1.0)
        except _Failure as failure:
            failure.hint = _NO_GENERATOR_HINT
            raise
        _check_rows_of_z(check, got, codebook, counts, z)
    alive = torch.ones(6, device=dev)
    check.equal(
        call(check, codebook, alive, z, 1.0, generator=seeded(0)),
        codebook,
        "changes nothing when no code is dead",
    )
    z64, cb64 = z.double(), codebook.double()
    _check_restart(check, cb64, counts, z64, 1.0, "float64")


# ------------------------------------------------------------------ Exercise 1.6: residual VQ


def _rvq_reference(z: torch.Tensor, codebooks: Sequence[torch.Tensor]) -> tuple:
    """tokens (N, S) and z_q (N, D) of `vq.ResidualVQ` with these codebooks."""
    k, d = codebooks[0].shape
    rvq = vq.ResidualVQ(k, d, num_stages=len(codebooks)).to(device=z.device, dtype=z.dtype)
    with torch.no_grad():
        for stage, codebook in zip(rvq.stages, codebooks):
            stage.codebook.copy_(codebook)
        out = rvq.eval()(z)
    return out.tokens, out.z_q.detach()


def _stage_codebooks(g: torch.Generator, stages: int, k: int, d: int) -> list[torch.Tensor]:
    """Codebooks with shrinking scales, each holding the zero vector, so no stage can hurt."""
    books = [torch.randn(k, d, generator=g) * 0.5**s for s in range(stages)]
    for book in books:
        book[0] = 0
    return books


def _rvq_token_mistakes(z: torch.Tensor, codebooks: Sequence[torch.Tensor]) -> dict:
    """The tokens (N, S) of residual VQ's classic mistakes: z quantized at every stage, or a
    residual that grows (+ where − belongs)."""
    residual, grown = z, []
    for codebook in codebooks:
        k = vq.nearest_code(residual, codebook)  # (N,)
        residual = residual + codebook[k]
        grown.append(k)
    recurrence = "r_0 = z and r_{s+1} = r_s − e_{k_s}"
    return {
        f"every stage quantizing z itself where its residual belongs: {recurrence}": (
            torch.stack([vq.nearest_code(z, codebook) for codebook in codebooks], dim=1)
        ),
        f"the residual updated with + where − belongs: {recurrence}": torch.stack(grown, dim=1),
    }


@exercise("1.6", "residual VQ encoding", references=(vq.ResidualVQ,))
def check_rvq_encode(check: Check) -> None:
    """Exercise 1.6: rvq_encode(z (N, D), codebooks [(K, D)] * S) -> (tokens (N, S), z_q)."""
    g, dev = seeded(16), check.device
    z = torch.randn(20, 3, generator=g).to(dev)
    books = [b.to(dev) for b in _stage_codebooks(g, 3, 8, 3)]
    tokens, z_q = check.parts(call(check, z, books[:1]), ("tokens", "z_q"))
    check.equal(
        tokens,
        vq.nearest_code(z, books[0])[:, None],
        "one stage is plain VQ: tokens (N, 1) are the nearest codes",
        hint="tokens has shape (N, S), one column per stage; torch.stack(per_stage, dim=1)",
    )
    expected_tokens, expected_z_q = _rvq_reference(z, books)
    tokens, z_q = check.parts(call(check, z, books), ("tokens", "z_q"))
    check.equal(
        tokens,
        expected_tokens,
        "three stages: stage s quantizes the residual r_s = z − (codes of stages < s)",
        hint="r_0 = z; k_s = nearest code of r_s in codebooks[s]; r_{s+1} = r_s − e_{k_s} "
        "(subtract, and quantize the residual, not z)",
        alternatives=_rvq_token_mistakes(z, books),
    )
    check.close(
        z_q,
        expected_z_q,
        "z_q is the sum of the codes of all stages",
        hint="z_q = Σ_s codebooks[s][tokens[:, s]], which equals z − (last residual)",
        alternatives={
            "the last stage's codes alone: z_q = Σ_s codebooks[s][tokens[:, s]] sums the codes "
            "of every stage": books[-1][expected_tokens[:, -1]]
        },
    )
    errors = []
    for s in range(1, len(books) + 1):
        _, partial = check.parts(call(check, z, books[:s]), ("tokens", "z_q"))
        errors.append((z - partial).pow(2).mean().item())
    check.that(
        all(b <= a + 1e-6 for a, b in zip(errors, errors[1:])),
        "the error ‖z − z_q‖² never grows with another stage (each codebook holds 0)",
        expected="a non-increasing error per stage",
        got="errors " + ", ".join(f"{e:.4f}" for e in errors),
        hint="each stage must quantize what the stages before left over",
    )
    part = check.parts(call(check, z[:7], books), ("tokens", "z_q"))
    check.equal(
        part[0],
        expected_tokens[:7],
        "each row is encoded on its own: the first 7 rows alone get the same tokens",
    )
    z64, books64 = z.double(), [b.double() for b in books]
    _, z_q = check.parts(call(check, z64, books64), ("tokens", "z_q"))
    check.close(z_q, _rvq_reference(z64, books64)[1], "keeps dtype float64 and the device")


# -------------------------------------------------------------------------- Exercise 1.7: FSQ


@exercise("1.7", "finite scalar quantization", references=(vq.FSQ,))
def check_fsq_quantize(check: Check) -> None:
    """Exercise 1.7: fsq_quantize(z (..., D), levels (D ints)) -> z_q (..., D) on the grid."""
    g, dev = seeded(17), check.device
    for levels, shape in [((5, 5), (64, 2)), ((8, 5, 5, 5), (3, 10, 4)), ((2, 3, 4), (40, 3))]:
        z = (torch.randn(*shape, generator=g) * 2).to(dev)
        got = call(check, z, levels)
        expected = vq.FSQ(levels).quantize(z)
        n = z.new_tensor(levels)  # (D,)
        check.close(
            got,
            expected,
            f"values for levels {levels} on z of shape {shape}",
            atol=1e-6,
            hint="b = tanh(z + s)·h − o with h = (L − 1)(1 + ε)/2, o = ½ for even L (else 0), "
            "s = atanh(o / h); then round b and divide by ⌊L/2⌋, channel by channel",
            alternatives={
                "the grid divided by L − 1 where ⌊L/2⌋ belongs: the integers −⌊L/2⌋ … ⌊L/2⌋ "
                "divided by ⌊L/2⌋ fill [−1, 1]": expected * (n // 2) / (n - 1)
            },
        )
    huge = torch.tensor([[-100.0, -100.0], [100.0, 100.0]], device=dev)
    check.close(
        call(check, huge, (5, 8)),
        vq.FSQ((5, 8)).quantize(huge),
        "saturates: z = ±100 maps to the outermost levels (−1, −1) and (1, ¾) for levels (5, 8)",
        atol=1e-6,
        hint="a common cause is a missing bound: squash z with tanh before rounding, so "
        "every channel stays within its L levels",
    )
    z = (torch.randn(16, 3, generator=g) * 2).to(dev)
    upstream = torch.randn(16, 3, generator=g).to(dev)
    (leaf,), (ref_leaf,) = leaves(z), leaves(z)
    got = call(check, leaf, (7, 4, 3))
    check.that(
        isinstance(got, torch.Tensor) and got.requires_grad,
        "the output carries a gradient back to z",
        expected="z_q.requires_grad is True",
        got="no gradient" if isinstance(got, torch.Tensor) else describe(got),
        hint="rounding has zero gradient: round straight-through, b + (b.round() − b).detach()",
    )
    check.close(
        gradients((got * upstream).sum(), [leaf])[0],
        gradients((vq.FSQ((7, 4, 3)).quantize(ref_leaf) * upstream).sum(), [ref_leaf])[0],
        "gradient: straight through the rounding, through tanh and the scaling",
        hint="the straight-through step goes on the bounded value b, b + sg(round(b) − b), so "
        "the gradient still carries tanh's slope and the 1/⌊L/2⌋ scale",
    )
    wide = (torch.randn(200, 3, generator=g) * 1.5).to(dev)
    check.close(
        call(check, wide, (5, 4, 3), eps=0.1),
        vq.FSQ((5, 4, 3), eps=0.1).quantize(wide),
        "uses the eps argument: eps = 0.1, levels (5, 4, 3)",
        atol=1e-6,
        hint="h = (L − 1)(1 + eps)/2 with the eps argument, not a fixed 1e-3",
    )
    z64 = z.double()
    dtype_hint = "build per-channel constants with z.new_tensor(levels)"
    check.close(
        call(check, z64, (7, 4, 3)),
        vq.FSQ((7, 4, 3)).quantize(z64),
        "keeps dtype float64 and the device",
        atol=1e-9,
        hint=dtype_hint,
        dtype_hint=dtype_hint,
    )
    check.raises(
        ValueError,
        "raises ValueError when z has 3 channels but levels has 2",
        z,
        (5, 5),
        hint="compare z.shape[-1] with len(levels) first and raise ValueError naming both",
    )
