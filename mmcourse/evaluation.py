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

Preferences rank generators without features: raters compare two samples and say which is
better, and a Bradley–Terry model turns the win counts into one strength per generator,
    P(i ≻ j) = p_i / (p_i + p_j) = σ(log p_i − log p_j)            Bradley & Terry 1952
fitted by Hunter's MM algorithm (Hunter 2004), the model behind arena-style leaderboards.
`simulate_comparisons` plays the rater from per-sample qualities, `kendall_tau` compares the
ranking it gives with a metric's.
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
    "bradley_terry",
    "clip_score",
    "fid",
    "frechet_distance",
    "gaussian",
    "kendall_tau",
    "kid",
    "precision_recall",
    "simulate_comparisons",
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
    # the (k+1)-th smallest of each row; topk is several times faster than kthvalue on the CPU
    return d.topk(k + 1, dim=1, largest=False).values[:, -1]


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


def _wins(wins: object) -> torch.Tensor:
    """wins (G, G), G ≥ 2, real, non-negative and finite, zero diagonal → float64."""
    wins = _validate.tensor("wins", wins, shape=("G", "G"))
    if wins.shape[0] != wins.shape[1]:
        raise ValueError(f"wins must be square (G, G), got {tuple(wins.shape)}")
    if wins.dtype == torch.bool or wins.is_complex():
        raise TypeError(f"wins must hold real counts (int or float), got dtype {wins.dtype}")
    if len(wins) < 2:
        raise ValueError(f"wins must compare at least 2 generators, got shape {tuple(wins.shape)}")
    wins = wins.double()
    if not wins.isfinite().all() or (wins < 0).any():
        raise ValueError("wins must hold finite counts ≥ 0 (wins[i, j] = times i beat j)")
    if wins.diagonal().any():
        raise ValueError("wins must have a zero diagonal (a generator never meets itself)")
    played = wins.sum(dim=0) + wins.sum(dim=1)  # (G,) comparisons each generator took part in
    if not played.all():
        missing = played.eq(0).nonzero().flatten().tolist()
        raise ValueError(f"wins has generators that were never compared: {missing}")
    return wins


def _strongly_connected(beats: torch.Tensor) -> bool:
    """Whether every generator reaches every other along "i beat j" edges (G, G) bool."""
    g = len(beats)
    reach = beats | torch.eye(g, dtype=torch.bool, device=beats.device)
    for _ in range(max(g - 1, 1).bit_length()):  # paths of length ≤ 2^k after k squarings
        reach = reach | ((reach.double() @ reach.double()) > 0)
    return bool(reach.all())


def bradley_terry(
    wins: torch.Tensor, iterations: int = 1000, tol: float = 1e-10, prior: float = 0.5
) -> torch.Tensor:
    """Bradley–Terry log-strengths (G,) float64, mean 0, from wins (G, G): wins[i, j] = times
    generator i was preferred to generator j.

    Model: P(i ≻ j) = p_i / (p_i + p_j). The maximum-likelihood strengths solve
    W_i = Σ_j n_ij p_i / (p_i + p_j) (W_i = Σ_j wins[i, j], n_ij = wins[i, j] + wins[j, i]);
    Hunter's (2004) minorize–maximize update iterates

        p_i ← W_i / Σ_{j≠i} n_ij / (p_i + p_j),

    each step raising the likelihood, until no log p_i moves by more than `tol` (at most
    `iterations` steps). Strengths are defined up to a common factor: log p is centred.

    A generator that never wins has maximum-likelihood strength 0 (log −∞), and in general the
    estimate is finite only when every generator beats, directly or through others, every
    other. `prior` adds that many pseudo-wins of every generator against every other (add-½
    smoothing at the default 0.5), which keeps every strength finite and shrinks them slightly
    towards equality (negligible once each pair has many comparisons). With prior=0 a wins
    matrix whose estimate diverges raises ValueError."""
    wins = _wins(wins)
    iterations = _validate.positive_int("iterations", iterations)
    tol = _validate.number("tol", tol, 0.0, open_lo=True)
    prior = _validate.number("prior", prior, 0.0)
    g = len(wins)
    off_diagonal = 1 - torch.eye(g, dtype=torch.float64, device=wins.device)  # (G, G)
    wins = wins + prior * off_diagonal
    if prior == 0 and not _strongly_connected(wins > 0):
        raise ValueError(
            "wins has no finite Bradley–Terry fit: some generators never beat the rest, "
            "directly or through others (their log-strength is −∞); pass prior > 0"
        )
    won = wins.sum(dim=1)  # W_i (G,)
    played = wins + wins.T  # n_ij (G, G), zero diagonal
    log_p = torch.zeros(g, dtype=torch.float64, device=wins.device)  # (G,)
    for _ in range(iterations):
        p = log_p.exp()
        denominator = (played / (p[:, None] + p[None, :])).sum(dim=1)  # Σ_j n_ij/(p_i+p_j)
        new = (won / denominator).log()
        new = new - new.mean()  # the common factor: geometric mean 1
        step = float((new - log_p).abs().max())
        log_p = new
        if step < tol:
            break
    return log_p


def simulate_comparisons(
    quality: torch.Tensor, comparisons: int, noise: float, seed: int = 0
) -> torch.Tensor:
    """A simulated rater's wins (G, G) float64: wins[i, j] = times generator i was preferred.

    quality (G, C, S): a score for each generator's S samples of each of C captions. Each
    comparison draws an ordered pair of generators i ≠ j uniformly, a caption c, one sample
    s, t of each for c, and prefers i with probability

        P(i ≻ j) = σ((q[i, c, s] − q[j, c, t]) / noise),

    a Bradley–Terry rater on the log-strength scale q / noise: small noise, a decisive rater;
    large, a coin flip. The draws come from a CPU generator seeded with `seed`, so every device
    gets the same comparisons (up to rounding in σ)."""
    quality = _validate.tensor("quality", quality, shape=("G", "C", "S"), floating=True)
    g, c, s = quality.shape
    if g < 2 or c < 1 or s < 1:
        raise ValueError(
            f"quality needs at least 2 generators and one sample of one caption (G, C, S), "
            f"got shape {tuple(quality.shape)}"
        )
    if not quality.isfinite().all():
        raise ValueError("quality must be finite")
    comparisons = _validate.positive_int("comparisons", comparisons)
    noise = _validate.number("noise", noise, 0.0, open_lo=True)
    seed = _validate.integer("seed", seed, low=None)
    rng = torch.Generator().manual_seed(seed)
    first = torch.randint(g, (comparisons,), generator=rng)  # (K,)
    second = torch.randint(g - 1, (comparisons,), generator=rng)
    second = second + (second >= first).long()  # uniform over the other G − 1
    caption = torch.randint(c, (comparisons,), generator=rng)
    sample_i = torch.randint(s, (comparisons,), generator=rng)
    sample_j = torch.randint(s, (comparisons,), generator=rng)
    uniform = torch.rand(comparisons, generator=rng, dtype=torch.float64)
    i, j, caption, sample_i, sample_j, uniform = (
        t.to(quality.device) for t in (first, second, caption, sample_i, sample_j, uniform)
    )
    q = quality.double()
    margin = (q[i, caption, sample_i] - q[j, caption, sample_j]) / noise  # (K,)
    i_wins = uniform < torch.sigmoid(margin)  # (K,) bool
    winner, loser = torch.where(i_wins, i, j), torch.where(i_wins, j, i)
    wins = torch.zeros(g * g, dtype=torch.float64, device=quality.device)
    wins.index_add_(0, winner * g + loser, torch.ones_like(uniform))
    return wins.view(g, g)


def kendall_tau(a: torch.Tensor, b: torch.Tensor) -> float:
    """Kendall's τ_b between two score vectors (G,): the rank agreement of the orders they give,

        τ_b = (concordant − discordant) / √((pairs − ties_a)(pairs − ties_b)),

    over the G(G−1)/2 pairs: 1 for the same order, −1 for the reverse, ≈ 0 for unrelated ones;
    ties count neither way (τ_b's denominator corrects for them)."""
    a = _validate.tensor("a", a, shape=("G",))
    b = _validate.tensor("b", b, shape=(len(a),))
    if len(a) < 2:
        raise ValueError(f"a must hold at least 2 scores to rank, got shape {tuple(a.shape)}")
    if a.device != b.device:
        raise ValueError(f"b must be on a's device {a.device}, got {b.device}")
    a, b = a.double(), b.double()
    if a.isnan().any() or b.isnan().any():
        raise ValueError("a and b must not hold NaN (a NaN score has no rank)")
    upper = torch.ones(len(a), len(a), dtype=torch.bool, device=a.device).triu(1)  # pairs i < j
    sign_a = torch.sign(a[:, None] - a[None, :])[upper]  # (pairs,)
    sign_b = torch.sign(b[:, None] - b[None, :])[upper]
    untied_a, untied_b = sign_a.ne(0).sum(), sign_b.ne(0).sum()
    if untied_a == 0 or untied_b == 0:
        raise ValueError(
            f"{'a' if untied_a == 0 else 'b'} holds one value throughout: it gives no order, "
            "so τ is undefined"
        )
    return float((sign_a * sign_b).sum() / (untied_a * untied_b).double().sqrt())
