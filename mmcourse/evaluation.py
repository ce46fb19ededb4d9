"""Measuring generators by their samples' features: FID, KID, precision/recall, CLIPScore.

Every metric compares two sets of feature vectors, real (N, D) and generated (M, D), taken by a
network that sees images the way a judge would (chapter 10 uses networks the course owns, so
the absolute numbers are not comparable with published, Inception-based ones).

    FID  = ‖μ_r − μ_g‖² + tr(Σ_r + Σ_g − 2 (Σ_r^½ Σ_g Σ_r^½)^½)   Heusel et al. 2017
    KID  = MMD²_unbiased with k(a, b) = (aᵀb / D + 1)³              Bińkowski et al. 2018
    precision = share of generated samples inside the real data's k-NN balls,
    recall    = share of real samples inside the generated data's k-NN balls
                                                                   Kynkäänniemi et al. 2019
    CLIPScore = w · max(cos(image, text), 0), w = 2.5               Hessel et al. 2021

Everything runs in float64 on the features' device; a bootstrap gives any metric a confidence
interval.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch

from mmcourse import _validate

__all__ = [
    "Gaussian",
    "PrecisionRecall",
    "bootstrap_interval",
    "clip_score",
    "fid",
    "frechet_distance",
    "gaussian",
    "kid",
    "precision_recall",
    "sqrtm_psd",
]


class Gaussian(NamedTuple):
    """The mean (D,) and covariance (D, D) of a feature set, float64."""

    mean: torch.Tensor
    cov: torch.Tensor


def _features(name: str, x: object, min_rows: int = 2) -> torch.Tensor:
    x = _validate.tensor(name, x, shape=("N", "D"), floating=True)
    if len(x) < min_rows:
        raise ValueError(
            f"{name} needs at least {min_rows} rows (N, D), got shape {tuple(x.shape)}"
        )
    return x.double()


def _pair(x: object, y: object, min_rows: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _features("real", x, min_rows), _features("generated", y, min_rows)
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"generated must have D = {x.shape[1]} features like real, got shape {tuple(y.shape)}"
        )
    if x.device != y.device:
        raise ValueError(f"generated must be on real's device {x.device}, got {y.device}")
    return x, y


def gaussian(features: torch.Tensor) -> Gaussian:
    """The Gaussian fitted to features (N, D): mean and unbiased covariance (divided by N − 1).

    With N ≤ D the covariance has rank at most N − 1 < D: a warning says so, because the FID of
    such a fit depends on N far more than on the images (see the small-N bias in chapter 10)."""
    x = _features("features", features)
    n, d = x.shape
    if n <= d:
        warnings.warn(
            f"{n} samples of {d} features: the covariance has rank ≤ {n - 1} < {d} "
            "(rank-deficient); FID from it is dominated by the sample size",
            stacklevel=2,
        )
    mean = x.mean(dim=0)  # (D,)
    centred = x - mean  # (N, D)
    return Gaussian(mean, centred.T @ centred / (n - 1))  # (D, D)


def sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix (D, D):
    a = V diag(λ) Vᵀ → V diag(√max(λ, 0)) Vᵀ. Rounding can make tiny eigenvalues of a singular
    matrix negative; they are clamped at 0 instead of turning the root complex."""
    a = _validate.tensor("a", a, shape=("D", "D"), floating=True)
    if a.shape[0] and not torch.allclose(a, a.T, rtol=1e-6, atol=1e-8 * float(a.abs().max())):
        raise ValueError("a must be symmetric (a covariance), got a matrix with a ≠ aᵀ")
    eigenvalues, vectors = torch.linalg.eigh((a + a.T) / 2)  # (D,), (D, D)
    return (vectors * eigenvalues.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(p: Gaussian, q: Gaussian) -> float:
    """Fréchet (2-Wasserstein²) distance between two Gaussians:
    ‖μ_p − μ_q‖² + tr Σ_p + tr Σ_q − 2 tr (Σ_p^½ Σ_q Σ_p^½)^½.

    The last trace is that of a symmetric PSD matrix, so it is the sum of the square roots of its
    eigenvalues: no non-symmetric matrix square root, and no complex parts to discard."""
    root_p = sqrtm_psd(p.cov)  # Σ_p^½ (D, D)
    middle = root_p @ q.cov @ root_p  # Σ_p^½ Σ_q Σ_p^½, symmetric PSD
    cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    distance = (p.mean - q.mean).pow(2).sum() + p.cov.trace() + q.cov.trace() - 2 * cross
    return float(distance.clamp(min=0))


def fid(real: torch.Tensor, generated: torch.Tensor) -> float:
    """FID of two feature sets (N, D) and (M, D): the Fréchet distance of their Gaussians."""
    real, generated = _pair(real, generated)
    return frechet_distance(gaussian(real), gaussian(generated))


def _polynomial_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a @ b.T / a.shape[1] + 1) ** 3  # (N, M)


def kid(real: torch.Tensor, generated: torch.Tensor) -> float:
    """Unbiased MMD² between two feature sets with the cubic polynomial kernel (KID):

        1/(N(N−1)) Σ_{i≠j} k(r_i, r_j) + 1/(M(M−1)) Σ_{i≠j} k(g_i, g_j) − 2/(NM) Σ k(r_i, g_j)

    Its expectation is the population MMD² whatever N and M (FID's is not), so it can be
    slightly negative when the two sets come from one distribution."""
    real, generated = _pair(real, generated)
    n, m = len(real), len(generated)
    k_rr = _polynomial_kernel(real, real)
    k_gg = _polynomial_kernel(generated, generated)
    within_r = (k_rr.sum() - k_rr.diagonal().sum()) / (n * (n - 1))  # i ≠ j only
    within_g = (k_gg.sum() - k_gg.diagonal().sum()) / (m * (m - 1))
    across = _polynomial_kernel(real, generated).mean()
    return float(within_r + within_g - 2 * across)


class PrecisionRecall(NamedTuple):
    precision: float  # share of generated samples that look real (fidelity)
    recall: float  # share of real samples the generator covers (diversity)


def _knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row of x (N, D) to its k-th nearest other row → (N,)."""
    d = torch.cdist(x, x)  # (N, N), 0 on the diagonal (each row is its own nearest)
    return d.kthvalue(k + 1, dim=1).values


def _covered(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> float:
    """Share of `points` (P, D) inside at least one ball (centre, radius)."""
    inside = torch.cdist(points, centres) <= radii[None, :]  # (P, C)
    return float(inside.any(dim=1).double().mean())


def precision_recall(real: torch.Tensor, generated: torch.Tensor, k: int = 3) -> PrecisionRecall:
    """Improved precision and recall: each set's manifold is the union of balls around its
    samples reaching their k-th nearest neighbour. Precision = share of generated samples
    inside the real manifold; recall = share of real samples inside the generated one. A
    generator that drops modes keeps its precision and loses recall."""
    real, generated = _pair(real, generated, min_rows=2)
    k = _validate.positive_int("k", k)
    if k >= min(len(real), len(generated)):
        raise ValueError(
            f"k must be below the smaller set's size {min(len(real), len(generated))}, got {k}"
        )
    precision = _covered(generated, real, _knn_radii(real, k))
    recall = _covered(real, generated, _knn_radii(generated, k))
    return PrecisionRecall(precision, recall)


def clip_score(image_emb: torch.Tensor, text_emb: torch.Tensor, w: float = 2.5) -> torch.Tensor:
    """CLIPScore of matched pairs: image and text embeddings (N, E) → w · max(cos, 0) (N,),
    float64. Embeddings need not be normalised; w = 2.5 stretches the usual cosines (≈ 0–0.4
    for web images) over [0, 1]."""
    image_emb = _validate.tensor("image_emb", image_emb, shape=("N", "E"), floating=True)
    text_emb = _validate.tensor("text_emb", text_emb, shape=tuple(image_emb.shape), floating=True)
    w = _validate.number("w", w, 0.0, open_lo=True)
    cos = torch.nn.functional.cosine_similarity(image_emb.double(), text_emb.double(), dim=1)
    return w * cos.clamp(min=0)


def bootstrap_interval(
    metric: Callable[..., float],
    *samples: torch.Tensor,
    rounds: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(metric on the samples, lower, upper): a percentile bootstrap interval at `level`, each
    round resampling every sample set's rows with replacement (on the CPU generator: the same
    interval on every device)."""
    rounds = _validate.positive_int("rounds", rounds)
    level = _validate.number("level", level, 0.0, 1.0, open_lo=True, open_hi=True)
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(rounds):
        resampled = [s[torch.randint(len(s), (len(s),), generator=g).to(s.device)] for s in samples]
        values.append(metric(*resampled))
    low, high = torch.tensor(values, dtype=torch.float64).quantile(
        torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    )
    return metric(*samples), float(low), float(high)
