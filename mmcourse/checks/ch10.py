"""Checkers of chapter 10 (evaluating generators): the Fréchet distance of two Gaussians (FID's
core), KID's unbiased cubic-kernel MMD², improved precision and recall, and CLIPScore.

Every checker compares the candidate with `mmcourse.evaluation` (computed in float64 on copies
of the inputs) on seeded inputs built so that each classic mistake changes the result: covariances
that do not commute and covariances of fewer samples than features (FID), sets of different sizes
(KID), points at exactly the radius of a ball (precision/recall), negative cosines and embeddings
of different norms (CLIPScore). A wrong value is named when it is one of those mistakes.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch

from mmcourse import evaluation
from mmcourse.checks._contract import call
from mmcourse.checks._core import Check, _Failure, exercise, seeded
from mmcourse.evaluation import Gaussian

_F64 = torch.float64


def _scalar(
    check: Check,
    got: object,
    expected: float,
    what: str,
    *,
    atol: float,
    rtol: float,
    hint: str,
    alternatives: dict[str, float],
) -> None:
    """Two checks: `got` is one number (a float or a 0-dim tensor), and it is `expected` within
    atol + rtol·|expected|; a wrong value is named when it equals one of `alternatives`."""
    value = check.number(got, f"{what}: one number")
    check.close(
        torch.tensor(value, dtype=_F64),
        torch.tensor(expected, dtype=_F64),
        what,
        atol=atol,
        rtol=rtol,
        hint=hint,
        alternatives={k: torch.tensor(v, dtype=_F64) for k, v in alternatives.items()},
    )


@contextlib.contextmanager
def _crashes(what: str, dtype: torch.dtype, inputs: str = "") -> Iterator[None]:
    """Around a call of the candidate: a crash on float32 inputs that speaks of dtypes gets a
    hint about them; `inputs` describes the inputs in place of their printout."""
    try:
        yield
    except _Failure as failure:
        crashed = failure.got.startswith("it raised")
        if crashed and inputs:
            failure.what = f"runs on {inputs}"
        if crashed and ("LinAlgError" in failure.got or "converge" in failure.got):
            failure.hint = _NEGATIVE_ROOTS
        if dtype != _F64 and crashed and any(w in failure.got for w in _DTYPE_WORDS):
            failure.hint = (
                f"{what} must work on float32 inputs too: a common cause is a tensor created as "
                "float64 (dtype=torch.float64, .double() on one operand only) meeting the "
                "float32 inputs in a matrix product; compute in the inputs' dtype, or convert "
                "every operand"
            )
        raise


_DTYPE_WORDS = ("dtype", "scalar type", "Double", "Float")
_NEGATIVE_ROOTS = (
    "a common cause is NaN from the square root of eigenvalues that rounding made slightly "
    "negative: a covariance of fewer samples than features has zero eigenvalues, so clamp them "
    "at 0 before the root (eigenvalues.clamp(min=0).sqrt()); a NaN matrix then makes the next "
    "torch.linalg.eigh fail"
)


# -------------------------------------------------------------- Exercise 10.1: Fréchet distance

_FRECHET = (
    "d² = ‖μ_p − μ_q‖² + tr Σ_p + tr Σ_q − 2 tr (Σ_p^½ Σ_q Σ_p^½)^½, the root of a symmetric "
    "PSD matrix from torch.linalg.eigh (eigenvalues clamped at 0, then square-rooted)"
)


def _fit(x: torch.Tensor) -> Gaussian:
    """The Gaussian of features x (N, D) in float64, quietly also for N ≤ D."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return evaluation.gaussian(x)


def _frechet(p: Gaussian, q: Gaussian) -> float:
    """The reference on float64 copies: an input is never touched, any dtype gets its best value."""
    return evaluation.frechet_distance(
        Gaussian(p.mean.double(), p.cov.double()), Gaussian(q.mean.double(), q.cov.double())
    )


def _frechet_mistakes(p: Gaussian, q: Gaussian) -> dict[str, float]:
    """What the classic Fréchet-distance mistakes give on p and q."""
    mp, cp, mq, cq = (t.detach().cpu().double() for t in (*p, *q))
    root_p = evaluation.sqrtm_psd(cp)
    middle = root_p @ cq @ root_p
    cross = float(torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum())
    separate = float((root_p @ evaluation.sqrtm_psd(cq)).trace())
    mean_sq, traces = float((mp - mq).pow(2).sum()), float(cp.trace() + cq.trace())
    right = max(mean_sq + traces - 2 * cross, 0.0)
    return {
        "NaN: the square root of slightly negative eigenvalues. Covariances of fewer samples "
        "than features have zero eigenvalues, and rounding makes some negative: with "
        "torch.linalg.eigh clamp them at 0 before .sqrt(); the non-symmetric product Σ_p Σ_q "
        "(torch.linalg.eig or eigvals, sqrtm, then .real) has them too, so root the symmetric "
        "Σ_p^½ Σ_q Σ_p^½ instead": float("nan"),
        "the roots taken separately, tr(Σ_p^½ Σ_q^½): right only when the covariances "
        "commute; the cross term is tr (Σ_p^½ Σ_q Σ_p^½)^½": mean_sq + traces - 2 * separate,
        "the cross term without its factor 2: tr Σ_p + tr Σ_q − tr(…)^½ where "
        "− 2 tr(…)^½ belongs": mean_sq + traces - cross,
        "the square root of the expected distance: the Fréchet distance (FID) is already "
        "a squared distance, return it without a square root": right**0.5,
        "‖μ_p − μ_q‖ where its square ‖μ_p − μ_q‖² belongs": mean_sq**0.5 + traces - 2 * cross,
    }


def _spd(g: torch.Generator, d: int, dev: torch.device) -> torch.Tensor:
    """A random, well-conditioned covariance (D, D) on dev."""
    a = torch.randn(d, d, generator=g, dtype=_F64)
    return (a @ a.T / d + 0.2 * torch.eye(d, dtype=_F64)).to(dev)


def _gaussians(p: Gaussian, q: Gaussian, what: str) -> str:
    """Two Gaussians in words, for a crash on them."""
    return f"Gaussians p, q of D = {len(p.mean)}, {p.cov.dtype} ({what})"


def _frechet_case(
    check: Check, p: Gaussian, q: Gaussian, what: str, *, atol: float, rtol: float
) -> None:
    with _crashes("frechet_distance", p.cov.dtype, _gaussians(p, q, what)):
        got = call(check, p, q)
    _scalar(
        check,
        got,
        _frechet(p, q),
        what,
        atol=atol,
        rtol=rtol,
        hint=_FRECHET,
        alternatives=_frechet_mistakes(p, q),
    )


@exercise(
    "10.1",
    "the Fréchet distance of two Gaussians",
    references=(evaluation.frechet_distance, evaluation.sqrtm_psd),
)
def check_frechet_distance(check: Check) -> None:
    """Exercise 10.1: frechet_distance(p: Gaussian, q: Gaussian) -> float, with p.mean (D,) and
    p.cov (D, D)."""
    g, dev = seeded(101), check.device
    var_p, var_q = torch.tensor([1.0, 4.0, 9.0, 0.25]), torch.tensor([4.0, 1.0, 1.0, 2.25])
    p = Gaussian(torch.tensor([0.0, 1.0, 0.0, 2.0]).double().to(dev), var_p.diag().double().to(dev))
    q = Gaussian(torch.tensor([1.0, 1.0, 2.0, 0.0]).double().to(dev), var_q.diag().double().to(dev))
    _frechet_case(
        check,
        p,
        q,
        "diagonal covariances: ‖μ_p − μ_q‖² + Σ_i (σ_p,i − σ_q,i)² (= 9 + 7 = 16)",
        atol=1e-8,
        rtol=1e-8,
    )
    for d in (3, 6):
        p = Gaussian(torch.randn(d, generator=g, dtype=_F64).to(dev), _spd(g, d, dev))
        q = Gaussian(torch.randn(d, generator=g, dtype=_F64).to(dev), _spd(g, d, dev))
        _frechet_case(
            check,
            p,
            q,
            f"covariances that do not commute (D = {d}): Σ_p Σ_q ≠ Σ_q Σ_p",
            atol=1e-8,
            rtol=1e-8,
        )
    d = 16
    real = torch.randn(6, d, generator=g, dtype=_F64)
    mixing = torch.randn(d, d, generator=g, dtype=_F64) / 4
    fake = torch.randn(9, d, generator=g, dtype=_F64) @ mixing + 0.5
    p, q = _fit(real.to(dev)), _fit(fake.to(dev))
    _frechet_case(
        check,
        p,
        q,
        "rank-deficient covariances of 6 and 9 samples of D = 16 features: a finite value",
        atol=1e-5,
        rtol=1e-5,
    )
    _frechet_case(
        check,
        q,
        Gaussian(q.mean.clone(), q.cov.clone()),
        "a Gaussian against itself (rank-deficient covariance): 0 up to rounding, not NaN",
        atol=1e-4,
        rtol=0.0,
    )
    p = Gaussian(torch.randn(8, generator=g).to(dev), _spd(g, 8, dev).float())
    q = Gaussian(torch.randn(8, generator=g).to(dev), _spd(g, 8, dev).float())
    _frechet_case(
        check,
        p,
        q,
        "float32 Gaussians (D = 8): the same distance, to float32 precision",
        atol=1e-4,
        rtol=1e-4,
    )


# --------------------------------------------------------------------------- Exercise 10.2: KID

_KID = (
    "KID = mean_{i≠j} k(r_i, r_j) + mean_{i≠j} k(g_i, g_j) − 2 mean_{i,j} k(r_i, g_j) with "
    "k(a, b) = (aᵀb / D + 1)³: the within-set sums leave out the diagonal i = j and divide by "
    "N(N − 1) and M(M − 1)"
)


def _kernel(a: torch.Tensor, b: torch.Tensor, degree: int = 3, per_d: bool = True) -> torch.Tensor:
    """(aᵀb / D + 1)^degree for rows a (N, D) and b (M, D) → (N, M); without /D if not per_d."""
    return (a @ b.T / (a.shape[1] if per_d else 1) + 1) ** degree


def _mmd(
    r: torch.Tensor,
    f: torch.Tensor,
    *,
    degree: int = 3,
    per_d: bool = True,
    pairs: tuple[int, int] | None = None,
    diagonal: bool = False,
    cross: float = 2.0,
) -> float:
    """KID's estimate and its variants: within-set sums over i ≠ j (every i, j if `diagonal`)
    divided by `pairs` (N(N − 1), M(M − 1) by default), minus `cross` × the mean across."""
    n, m = len(r), len(f)
    k_rr, k_ff = _kernel(r, r, degree, per_d), _kernel(f, f, degree, per_d)
    if not diagonal:
        k_rr, k_ff = k_rr - k_rr.diagonal().diag(), k_ff - k_ff.diagonal().diag()
    pairs_r, pairs_f = pairs or (n * (n - 1), m * (m - 1))
    across = _kernel(r, f, degree, per_d).mean()
    return float(k_rr.sum() / pairs_r + k_ff.sum() / pairs_f - cross * across)


def _kid_mistakes(real: torch.Tensor, generated: torch.Tensor) -> dict[str, float]:
    """What the classic KID mistakes give on real (N, D) and generated (M, D)."""
    r, f = real.detach().cpu().double(), generated.detach().cpu().double()
    n, m = len(r), len(f)
    mistakes = {
        "the biased estimator: the within-set means include the diagonal i = j (k(x, x)); "
        "leave it out and divide by N(N − 1)": _mmd(r, f, pairs=(n * n, m * m), diagonal=True),
        "the diagonal left out but divided by N² and M²: i ≠ j leaves N(N − 1) pairs": _mmd(
            r, f, pairs=(n * n, m * m)
        ),
        "the kernel without its /D: k(a, b) = (aᵀb / D + 1)³": _mmd(r, f, per_d=False),
        "a kernel of degree 2: KID's kernel is cubic, (aᵀb / D + 1)³": _mmd(r, f, degree=2),
        "the cross term without its factor 2: − 2 mean k(r_i, g_j)": _mmd(r, f, cross=1.0),
    }
    if n != m:
        mistakes[
            "one set's size used for both: the generated set has its own M, divide its sum by "
            "M(M − 1)"
        ] = _mmd(r, f, pairs=(n * (n - 1), n * (n - 1)))
        mistakes["the two sizes swapped: real's sum over N(N − 1), generated's over M(M − 1)"] = (
            _mmd(r, f, pairs=(m * (m - 1), n * (n - 1)))
        )
    return mistakes


def _kid_case(
    check: Check, real: torch.Tensor, generated: torch.Tensor, what: str, atol: float, rtol: float
) -> None:
    with _crashes("kid", real.dtype):
        got = call(check, real, generated)
    _scalar(
        check,
        got,
        evaluation.kid(real.double(), generated.double()),
        what,
        atol=atol,
        rtol=rtol,
        hint=_KID,
        alternatives=_kid_mistakes(real, generated),
    )


@exercise("10.2", "the kernel inception distance", references=(evaluation.kid,))
def check_kid(check: Check) -> None:
    """Exercise 10.2: kid(real (N, D), generated (M, D)) -> float, the unbiased MMD² with the
    cubic kernel k(a, b) = (aᵀb / D + 1)³."""
    g, dev = seeded(102), check.device
    for n, m, d, shift in ((10, 7, 4, 1.5), (8, 8, 3, 2.0), (40, 25, 16, 1.0)):
        real = torch.randn(n, d, generator=g, dtype=_F64).to(dev)
        generated = (torch.randn(m, d, generator=g, dtype=_F64) * 1.3 + shift).to(dev)
        _kid_case(
            check,
            real,
            generated,
            f"real ({n}, {d}) against generated ({m}, {d})" + (": N ≠ M" if n != m else ": N = M"),
            atol=1e-9,
            rtol=1e-7,
        )
    real = torch.randn(20, 6, generator=g).to(dev)
    generated = (torch.randn(15, 6, generator=g) + 1.0).to(dev)
    _kid_case(
        check,
        real,
        generated,
        "float32 features, real (20, 6) against generated (15, 6): to float32 precision",
        atol=1e-4,
        rtol=1e-4,
    )


# ------------------------------------------------------------ Exercise 10.3: precision/recall

_PR = (
    "each set's manifold is the union of balls around its points, radius = distance to the "
    "k-th nearest *other* point of the same set; precision = share of generated points inside "
    "a real ball (distance ≤ that ball's radius), recall = share of real points inside a "
    "generated ball"
)


def _radii(x: torch.Tensor, rank: int) -> torch.Tensor:
    """The `rank`-th smallest distance of each row of x (N, D) to the rows of x, itself (0)
    included: rank k + 1 is the k-th nearest other point → (N,)."""
    return torch.cdist(x, x).kthvalue(rank, dim=1).values


def _shares(
    r: torch.Tensor,
    f: torch.Tensor,
    r_radii: torch.Tensor,
    f_radii: torch.Tensor,
    strict: bool = False,
) -> torch.Tensor:
    """(precision, recall) (2,): the share of f inside a ball (r_i, r_radii_i), and of r inside
    a ball (f_j, f_radii_j); a point at distance = radius is inside unless `strict`."""
    shares = []
    for points, centres, radii in ((f, r, r_radii), (r, f, f_radii)):
        d = torch.cdist(points, centres)  # (P, C)
        inside = d < radii[None, :] if strict else d <= radii[None, :]
        shares.append(inside.any(dim=1).double().mean())
    return torch.stack(shares)


def _pr_mistakes(real: torch.Tensor, generated: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """What the classic precision/recall mistakes give, as (precision, recall) tensors."""
    r, f = real.detach().cpu().double(), generated.detach().cpu().double()
    r_k, f_k = _radii(r, k + 1), _radii(f, k + 1)
    mistakes = {
        "precision and recall swapped: precision = generated points inside real balls, "
        "recall = real points inside generated balls": _shares(r, f, r_k, f_k).flip(0),
        "radii one neighbour short: the k-th smallest distance counts the point itself "
        "(distance 0), so the k-th neighbour is the (k + 1)-th smallest": _shares(
            r, f, _radii(r, k), _radii(f, k)
        ),
        "strict < where ≤ belongs: a point exactly at a ball's radius is inside": _shares(
            r, f, r_k, f_k, strict=True
        ),
    }
    if len(r) == len(f):
        mistakes[
            "radii taken from the wrong set: the balls around real points have the real "
            "points' k-NN radii (and generated balls the generated ones')"
        ] = _shares(r, f, f_k, r_k)
    if k != 3:
        mistakes["k ignored: the result of k = 3 (use the k argument)"] = _shares(
            r, f, _radii(r, 4), _radii(f, 4)
        )
    return mistakes


def _pr_case(
    check: Check, real: torch.Tensor, generated: torch.Tensor, k: int | None, what: str
) -> None:
    args = (real, generated) if k is None else (real, generated, k)
    with _crashes("precision_recall", real.dtype):
        got = call(check, *args)
    precision, recall = check.parts(got, ("precision", "recall"))
    values = [check.number(v, f"{what}: {name} is one number") for v, name in
              ((precision, "precision"), (recall, "recall"))]  # fmt: skip
    expected = evaluation.precision_recall(real.double(), generated.double(), k or 3)
    check.close(
        torch.tensor(values, dtype=_F64),
        torch.tensor(list(expected), dtype=_F64),
        f"(precision, recall) for {what}",
        atol=1e-6,
        rtol=0.0,
        hint=_PR,
        alternatives=_pr_mistakes(real, generated, k or 3),
    )


def _lattice(dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Real points on a 4 × 4 integer grid (every k = 1 radius exactly 1) and generated points
    of which some lie exactly 1 from a grid point: ties on the radius, exact in any float."""
    grid = torch.stack(torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1)
    real = grid.reshape(16, 2)  # (16, 2)
    generated = torch.tensor(  # 1 from a grid point: 3; inside: 2; far: 3
        [[-1.0, 0.0], [0.0, 4.0], [4.0, 3.0], [1.5, 1.5], [2.5, 0.5], [9.0, 9.0],
         [9.0, 8.0], [8.0, 9.0], [-4.0, -4.0], [-4.0, -3.0]]
    )  # fmt: skip
    return real.double().to(dev), generated.double().to(dev)


@exercise(
    "10.3",
    "precision and recall",
    references=(evaluation.precision_recall, evaluation._knn_radii, evaluation._covered),
)
def check_precision_recall(check: Check) -> None:
    """Exercise 10.3: precision_recall(real (N, D), generated (M, D), k=3) -> (precision,
    recall), two floats (a PrecisionRecall or a tuple)."""
    g, dev = seeded(1), check.device
    modes = torch.tensor([[4.0, 0, 0], [-4, 0, 0], [0, 4, 0], [0, -4, 0]], dtype=_F64)
    real = (modes.repeat_interleave(5, 0) + torch.randn(20, 3, generator=g, dtype=_F64)).to(dev)
    generated = modes[:2].repeat_interleave(10, 0) + 0.7 * torch.randn(
        20, 3, generator=g, dtype=_F64
    )
    _pr_case(  # the generator drops two of the four modes: precision 1, recall 0.4
        check, real, generated.to(dev), None, "4 real modes, 2 generated ones, k left out"
    )
    real, generated = _lattice(dev)
    _pr_case(check, real, generated, 1, "a 4 × 4 grid of real points, k = 1: ties on the radius")
    for n, m, d, k in ((30, 22, 4, 2), (60, 45, 6, 5)):
        real = torch.randn(n, d, generator=g, dtype=_F64).to(dev)
        generated = (torch.randn(m, d, generator=g, dtype=_F64) * 0.8 + 0.3).to(dev)
        _pr_case(check, real, generated, k, f"real ({n}, {d}), generated ({m}, {d}), k = {k}")
    real = torch.randn(24, 5, generator=g).to(dev)
    generated = (torch.randn(18, 5, generator=g) * 1.5).to(dev)
    _pr_case(check, real, generated, 4, "float32 features (24, 5) and (18, 5), k = 4")


# ------------------------------------------------------------------- Exercise 10.4: CLIPScore

_CLIP = (
    "CLIPScore_i = w · max(cos(image_i, text_i), 0) for each matched pair i, with cos = "
    "aᵀb / (‖a‖ ‖b‖): normalise both embeddings, multiply row by row, sum over E"
)


def _clip_mistakes(image: torch.Tensor, text: torch.Tensor, w: float) -> dict[str, torch.Tensor]:
    """What the classic CLIPScore mistakes give on image and text (N, E), as (N,) tensors."""
    a, b = image.detach().cpu().double(), text.detach().cpu().double()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1)  # (N,)
    mistakes = {
        "no clamp at 0: a negative cosine must give 0, w · max(cos, 0)": w * cos,
        f"w forgotten: the cosines without their factor w = {w:g}": cos.clamp(min=0),
        "the embeddings not normalised: a dot product where the cosine belongs (divide by "
        "both norms)": w * (a * b).sum(dim=1).clamp(min=0),
    }
    if w != 2.5:
        mistakes[f"w fixed at 2.5 where w = {w:g} was passed: use the w argument"] = (
            2.5 * cos.clamp(min=0)
        )
    return mistakes


def _clip_case(
    check: Check, image: torch.Tensor, text: torch.Tensor, w: float | None, what: str
) -> None:
    args = (image, text) if w is None else (image, text, w)
    got = call(check, *args)
    n = len(image)
    got = check.tensor(
        got,
        f"{what}: one score per matched pair",
        shape=(n,),
        hint=f"pair i is image_emb[i] with text_emb[i]: one score each, shape (N,) = ({n},); a "
        "common cause of (N, N) is a matrix product image @ text.T (all pairs), whose diagonal "
        "is the matched pairs: multiply row by row and sum over E instead",
        sizes={"N": n},
    )
    w = 2.5 if w is None else w
    expected = evaluation.clip_score(image, text, w)  # (N,) float64
    low = image.dtype != _F64
    if low and got.dtype == image.dtype:  # the inputs' dtype is as good as float64
        expected = expected.to(image.dtype)
    check.close(
        got,
        expected,
        what,
        atol=1e-5 if low else 1e-9,
        rtol=1e-5 if low else 1e-9,
        hint=_CLIP,
        alternatives=_clip_mistakes(image, text, w),
    )


def _clip_inputs(
    g: torch.Generator, n: int, e: int, dtype: torch.dtype, dev: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image and text embeddings (N, E) of different norms, every other pair pointing apart
    (negative cosine)."""
    image = torch.randn(n, e, generator=g, dtype=dtype)
    text = image + 0.8 * torch.randn(n, e, generator=g, dtype=dtype)
    text[1::2] = -text[1::2]  # cosines < 0 on odd rows
    scale = torch.linspace(0.3, 4.0, n, dtype=dtype)[:, None]  # norms far from 1
    return (image * scale).to(dev), (text * scale.flip(0)).to(dev)


@exercise("10.4", "CLIPScore", references=(evaluation.clip_score,))
def check_clip_score(check: Check) -> None:
    """Exercise 10.4: clip_score(image_emb (N, E), text_emb (N, E), w=2.5) -> (N,)."""
    g, dev = seeded(104), check.device
    image, text = _clip_inputs(g, 6, 5, _F64, dev)
    _clip_case(check, image, text, None, "6 matched pairs (3 with negative cosines), w left out")
    image, text = _clip_inputs(g, 7, 8, _F64, dev)
    _clip_case(check, image, text, 1.0, "7 matched pairs, w = 1.0")
    image, text = _clip_inputs(g, 5, 4, torch.float32, dev)
    _clip_case(check, image, text, 0.5, "float32 embeddings, w = 0.5: to float32 precision")
