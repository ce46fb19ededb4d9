"""Vector quantization: turning continuous vectors into tokens (chapter 01).

A codebook holds K codes e_k ∈ R^D. Quantizing a vector z replaces it by its nearest code,
z_q = e_k with k = argmin_k ‖z − e_k‖², and k is its token. A VQ-VAE learns the codebook and the
encoder together (van den Oord et al. 2017); this module holds every piece of that story:

- nearest-code search: `squared_distances`, `nearest_code_naive`, `nearest_code` (chunked);
- the VQ layer: `quantize_losses`, `straight_through`, `VectorQuantizer` (gradient or EMA codebook);
- codebook health: `code_counts`, `code_usage`, `perplexity`, and two remedies for dead codes,
  `kmeans_init` and `restart_dead_codes`;
- `ResidualVQ` (coarse-to-fine stages on residuals) and `FSQ` (finite scalar quantization).

Layout: quantizers take z_e channels first, as rows (N, D) or maps (B, D, *S) such as
(B, D, H, W) or (B, D, T, H, W); their tokens drop the channel dimension: (N,) or (B, *S).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mmcourse import _validate

__all__ = [
    "FSQ",
    "FSQOutput",
    "RVQOutput",
    "ResidualVQ",
    "VQOutput",
    "VectorQuantizer",
    "code_counts",
    "code_usage",
    "kmeans_init",
    "nearest_code",
    "nearest_code_naive",
    "perplexity",
    "quantize_losses",
    "restart_dead_codes",
    "squared_distances",
    "straight_through",
]


# ------------------------------------------------------------------------ nearest-code search


def squared_distances(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Squared distance from every vector to every code: z (N, D), codebook (K, D) → (N, K).

    Expands ‖z − e‖² = ‖z‖² − 2 z·e + ‖e‖², so the work is one matrix product (N, D)·(D, K) and
    no (N, K, D) tensor of differences is built. Rounding can push the expansion slightly below
    zero when z ≈ e, hence the clamp at 0.
    """
    z, codebook = _validate.z_and_codebook(z, codebook)
    z_sq = z.pow(2).sum(dim=1, keepdim=True)  # (N, 1)  ‖z‖²
    e_sq = codebook.pow(2).sum(dim=1)  # (K,)  ‖e‖²
    cross = z @ codebook.T  # (N, K)  z·e
    return (z_sq - 2 * cross + e_sq).clamp_min(0)  # (N, K)


def nearest_code_naive(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest code, the direct way: z (N, D), codebook (K, D) → (N,) long.

    Broadcasting (N, 1, D) − (1, K, D) materialises N·K·D differences: at N = 65536, K = 8192,
    D = 256 in float32 that is 512 GiB. Kept for teaching and as the reference in tests.
    """
    z, codebook = _validate.z_and_codebook(z, codebook)
    diff = z[:, None, :] - codebook[None, :, :]  # (N, K, D)
    return diff.pow(2).sum(dim=2).argmin(dim=1)  # (N,)


@torch.no_grad()
def nearest_code(
    z: torch.Tensor, codebook: torch.Tensor, chunk_size: int | None = None
) -> torch.Tensor:
    """Index of the nearest code: z (N, D), codebook (K, D) → (N,) long; ties go to the lowest
    index, like argmin.

    Without `chunk_size` the whole (N, K) distance matrix exists at once (N = 65536, K = 8192 in
    float32: 2 GiB). With it, z is processed `chunk_size` rows at a time, so at most a
    (chunk_size, K) block exists; the answer is the same. Chapter 09 fuses this into one kernel.
    """
    z, codebook = _validate.z_and_codebook(z, codebook)
    if chunk_size is None:
        tokens = squared_distances(z, codebook).argmin(dim=1)  # (N,)
    else:
        _validate.positive_int("chunk_size", chunk_size)
        blocks = [squared_distances(c, codebook).argmin(dim=1) for c in z.split(chunk_size)]
        tokens = torch.cat(blocks)  # (N,)
    first = _first_copies(codebook)
    return tokens if first is None else first[tokens]


def _first_copies(codebook: torch.Tensor) -> torch.Tensor | None:
    """(K,) long: for each code, the lowest index of a code equal to it; None when all codes
    differ. Identical codes are exact ties, yet a matrix product may round identical columns of
    z @ codebook.T differently (float64 BLAS kernels do), so argmin alone can pick the later
    copy; mapping every token to its first copy restores "ties go to the lowest index"."""
    unique, group = torch.unique(codebook, dim=0, return_inverse=True)  # group: (K,)
    if len(unique) == len(codebook):
        return None
    index = torch.arange(len(codebook), device=codebook.device)
    first = torch.full((len(unique),), len(codebook), device=codebook.device)
    first = first.scatter_reduce(0, group, index, reduce="amin")  # (U,) lowest index per group
    return first[group]  # (K,)


# ------------------------------------------------------------------------------ the VQ layer


def quantize_losses(
    z_e: torch.Tensor, z_q: torch.Tensor, beta: float = 0.25
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two VQ-VAE training terms (van den Oord et al. 2017, eq. 3), as means over elements:

        codebook_loss   = ‖sg(z_e) − z_q‖²      moves the chosen codes towards the encoder outputs
        commitment_loss = β ‖z_e − sg(z_q)‖²    keeps the encoder close to the codes it chose

    sg is stop-gradient (`.detach()`). z_q must be the codes themselves, before
    `straight_through`: afterwards its gradient goes to z_e, and the codebook would learn nothing.
    Returns (codebook_loss, commitment_loss), two scalars.
    """
    z_e, z_q = _check_same("z_e", z_e, "z_q", z_q)
    beta = _validate.number("beta", beta, 0.0, math.inf)
    codebook_loss = F.mse_loss(z_q, z_e.detach())  # ‖sg(z_e) − e‖²: gradient to the codebook only
    commitment_loss = beta * F.mse_loss(z_e, z_q.detach())  # β‖z_e − sg(e)‖²: to the encoder only
    return codebook_loss, commitment_loss


def straight_through(z_e: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
    """z_e + sg(z_q − z_e): the value of z_q, the gradient of z_e.

    Rounding to a code has no useful derivative, so the backward pass copies the decoder's
    gradient at z_q onto z_e unchanged (the straight-through estimator, Bengio et al. 2013).
    """
    z_e, z_q = _check_same("z_e", z_e, "z_q", z_q)
    return z_e + (z_q - z_e).detach()


class VQOutput(NamedTuple):
    """What `VectorQuantizer` returns; z_q has z_e's shape, tokens drop the channel dimension."""

    z_q: torch.Tensor  # like z_e: the codes' values, straight-through gradient to z_e
    tokens: torch.Tensor  # (N,) or (B, *S) long
    loss: torch.Tensor  # codebook_loss + commitment_loss, scalar
    codebook_loss: torch.Tensor  # ‖sg(z_e) − e‖² (0 with an EMA codebook)
    commitment_loss: torch.Tensor  # β‖z_e − sg(e)‖²
    perplexity: torch.Tensor  # exp(entropy of this batch's code frequencies), no gradient


class VectorQuantizer(nn.Module):
    """K = `num_codes` codes of dimension D = `dim`, learned in one of two ways:

    - `ema=False`: the codebook is a parameter trained by gradient descent on the codebook loss;
    - `ema=True`: the codebook is a buffer, moved after every training batch to an exponential
      moving average of the vectors assigned to each code (van den Oord et al. 2017, app. A.1;
      Razavi et al. 2019), so only the commitment loss is left.

    The codebook starts as N(0, 1) samples; `init_codebook` replaces it by k-means centres of
    data, and `restart_dead_codes` revives codes nobody uses.
    """

    def __init__(
        self,
        num_codes: int,
        dim: int,
        *,
        beta: float = 0.25,
        ema: bool = False,
        decay: float = 0.99,
        eps: float = 1e-5,
        chunk_size: int | None = None,
        search: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ):
        super().__init__()
        self.num_codes = _validate.positive_int("num_codes", num_codes)
        self.dim = _validate.positive_int("dim", dim)
        self.beta = _validate.number("beta", beta, 0.0, math.inf)
        self.ema = bool(ema)
        self.decay = _validate.number("decay", decay, 0.0, 1.0, open_hi=True)
        self.eps = _validate.number("eps", eps, 0.0, 1.0, open_lo=True)
        if chunk_size is not None:
            _validate.positive_int("chunk_size", chunk_size)
        self.chunk_size = chunk_size
        if search is not None and not callable(search):
            raise TypeError(
                f"search must be a function (z, codebook) -> tokens, got {type(search).__name__}"
            )
        self.search = search  # e.g. mmcourse.kernels.fused_vq.nearest_code (chapter 09)
        codebook = torch.randn(num_codes, dim)  # (K, D)
        if self.ema:
            self.register_buffer("codebook", codebook)
            self.register_buffer("cluster_size", torch.ones(num_codes))  # (K,)  N_k
            self.register_buffer("code_sum", codebook.clone())  # (K, D)  m_k, with e_k = m_k / N_k
        else:
            self.codebook = nn.Parameter(codebook)

    def forward(self, z_e: torch.Tensor) -> VQOutput:
        """Quantize z_e (N, D) or (B, D, *S); tokens (N,) or (B, *S). Computed in the codebook's
        dtype; z_q comes back in z_e's dtype."""
        z = _to_rows("z_e", z_e, self.dim).to(self.codebook.dtype)  # (N, D)
        if self.search is None:
            tokens = nearest_code(z, self.codebook, chunk_size=self.chunk_size)  # (N,)
        else:
            with torch.no_grad():
                tokens = self.search(z.detach().contiguous(), self.codebook.detach())  # (N,)
        codes = F.embedding(tokens, self.codebook)  # (N, D)  e_k, before straight-through
        counts = _counts(tokens, self.num_codes)  # (K,)  n_k
        codebook_loss, commitment_loss = quantize_losses(z, codes, self.beta)
        if self.ema:
            codebook_loss = torch.zeros_like(commitment_loss)  # the EMA step replaces this loss
            if self.training:
                self._ema_update(z.detach(), tokens, counts)
        z_q = straight_through(z, codes).to(z_e.dtype)  # (N, D)
        return VQOutput(
            z_q=_from_rows(z_q, z_e.shape),
            tokens=tokens.reshape(_token_shape(z_e.shape)),
            loss=codebook_loss + commitment_loss,
            codebook_loss=codebook_loss,
            commitment_loss=commitment_loss,
            perplexity=_perplexity(counts),
        )

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Look codes up, channels last: tokens (...) → (..., D)."""
        return F.embedding(_check_tokens("tokens", tokens, self.num_codes), self.codebook)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Look codes up in forward's layout: tokens (N,) → (N, D), (B, *S) → (B, D, *S)."""
        codes = self.embed(tokens)  # (..., D)
        return codes.movedim(-1, 1) if codes.dim() > 2 else codes

    @torch.no_grad()
    def init_codebook(
        self, z_e: torch.Tensor, iters: int = 10, *, generator: torch.Generator | None = None
    ) -> None:
        """Replace the codebook by k-means centres of z_e (N, D) or (B, D, *S) (see
        `kmeans_init`); an EMA codebook also restarts its running statistics."""
        z = _to_rows("z_e", z_e, self.dim).to(self.codebook.dtype)  # (N, D)
        self.codebook.copy_(kmeans_init(z, self.num_codes, iters, generator=generator))
        if self.ema:
            self.cluster_size.fill_(1.0)
            self.code_sum.copy_(self.codebook)

    @torch.no_grad()
    def restart_dead_codes(
        self,
        z_e: torch.Tensor,
        usage_counts: torch.Tensor,
        *,
        threshold: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> int:
        """Move every code with `usage_counts` (K,) below `threshold` onto a random vector of z_e
        (see `restart_dead_codes`); returns how many moved. EMA statistics follow the move."""
        z = _to_rows("z_e", z_e, self.dim).to(self.codebook.dtype)  # (N, D)
        dead = _dead_mask(usage_counts, self.num_codes, threshold)  # (K,)
        n_dead = _restart(self.codebook, dead, z, generator)
        if self.ema and n_dead:
            self.cluster_size[dead] = 1.0
            self.code_sum[dead] = self.codebook[dead]
        return n_dead

    @torch.no_grad()
    def _ema_update(self, z: torch.Tensor, tokens: torch.Tensor, counts: torch.Tensor) -> None:
        """One EMA step on rows z (N, D) assigned to `tokens` (N,), counts (K,), with γ = decay:

            N_k ← γ N_k + (1 − γ) n_k              n_k = number of rows assigned to code k
            m_k ← γ m_k + (1 − γ) Σ_{i: k_i = k} z_i
            e_k ← m_k / Ñ_k,   Ñ_k = (N_k + ε) / (n + K ε) · n,   n = Σ_k N_k

        Ñ_k is Laplace smoothing: it never reaches 0, so a code nobody picks keeps e_k ≈ m_k / N_k.
        """
        sums = torch.zeros_like(self.code_sum).index_add_(0, tokens, z)  # (K, D)
        self.cluster_size.lerp_(counts.to(z.dtype), 1 - self.decay)  # γ N + (1 − γ) n
        self.code_sum.lerp_(sums, 1 - self.decay)  # γ m + (1 − γ) Σ z
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.num_codes * self.eps) * n  # (K,)
        self.codebook.copy_(self.code_sum / smoothed[:, None])  # (K, D)

    def extra_repr(self) -> str:
        return f"num_codes={self.num_codes}, dim={self.dim}, beta={self.beta}, ema={self.ema}"


# --------------------------------------------------------------------------- codebook health


def code_counts(tokens: torch.Tensor, num_codes: int) -> torch.Tensor:
    """How often each code occurs: tokens of any shape → (K,) long counts."""
    tokens = _check_tokens("tokens", tokens, _validate.positive_int("num_codes", num_codes))
    return _counts(tokens.flatten(), num_codes)  # (K,)


def _counts(tokens: torch.Tensor, num_codes: int) -> torch.Tensor:
    """n_k = #{i : tokens_i = k}, (N,) long → (K,) long. The same as torch.bincount, which on a
    GPU reads the largest token back to the host (a wait every training step); adding ones into
    K zeros never leaves the device."""
    return torch.zeros(num_codes, dtype=torch.long, device=tokens.device).index_add_(
        0, tokens, torch.ones_like(tokens)
    )


def code_usage(tokens: torch.Tensor, num_codes: int) -> float:
    """Fraction of the K codes that occur at least once in `tokens`, in [0, 1]."""
    return (code_counts(tokens, num_codes) > 0).float().mean().item()


def perplexity(tokens: torch.Tensor, num_codes: int) -> float:
    """exp(H(p)) with p the code frequencies in `tokens`: the number of equally used codes that
    would give the same entropy. 1 when one code does everything, K when all are used evenly."""
    return _perplexity(code_counts(tokens, num_codes)).item()


@torch.no_grad()
def kmeans_init(
    z: torch.Tensor,
    num_codes: int,
    iters: int = 10,
    *,
    init: str = "kmeans++",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A codebook (K, D) of k-means centres of z (N, D), N ≥ K; deterministic given `generator`.

    Seeding: "kmeans++" draws each next centre with probability ∝ its squared distance to the
    nearest centre so far (Arthur & Vassilvitskii 2007); "random" takes K distinct rows of z.
    Then `iters` Lloyd steps: assign every row to its nearest centre, move every centre to the
    mean of its rows. No step increases Σ‖z − e_k(z)‖²; a centre left with no rows stays put.
    """
    z = _validate.tensor("z", z, shape=("N", "D"), floating=True)
    _validate.positive_int("num_codes", num_codes)
    _validate.integer("iters", iters, low=0)
    if len(z) < num_codes:
        raise ValueError(f"z must hold at least num_codes = {num_codes} rows, got {len(z)}")
    if init == "kmeans++":
        codebook = _kmeans_plus_plus(z, num_codes, generator)  # (K, D)
    elif init == "random":
        codebook = z[_draw(len(z), num_codes, generator, z.device)].clone()  # (K, D)
    else:
        raise ValueError(f"init must be 'kmeans++' or 'random', got {init!r}")
    for _ in range(iters):
        tokens = nearest_code(z, codebook)  # (N,)
        counts = _counts(tokens, num_codes)  # (K,)
        sums = torch.zeros_like(codebook).index_add_(0, tokens, z)  # (K, D)
        filled = counts > 0
        codebook[filled] = sums[filled] / counts[filled, None].to(z.dtype)  # e_k = mean of its rows
    return codebook


@torch.no_grad()
def restart_dead_codes(
    codebook: torch.Tensor,
    usage_counts: torch.Tensor,
    z: torch.Tensor,
    *,
    threshold: float = 1.0,
    generator: torch.Generator | None = None,
) -> int:
    """Revive dead codes in place: every code whose count in `usage_counts` (K,) (e.g.
    `code_counts` summed over the last few batches) is below `threshold` is replaced by a row of
    z (N, D) drawn at random (distinct rows while N allows). Returns how many were replaced;
    deterministic given `generator`. A revived code sits on real data, so it wins that vector
    at once and starts learning again.
    """
    codebook = _validate.tensor("codebook", codebook, shape=("K", "D"), floating=True)
    z = _validate.z_and_codebook(z, codebook)[0]
    dead = _dead_mask(usage_counts, len(codebook), threshold)  # (K,)
    return _restart(codebook, dead, z, generator)


# -------------------------------------------------------------------------------- residual VQ


class RVQOutput(NamedTuple):
    """What `ResidualVQ` returns."""

    z_q: torch.Tensor  # like z_e: Σ_s codes of stage s, straight-through gradient to z_e
    tokens: torch.Tensor  # (..., num_stages): tokens[..., s] is stage s's token
    loss: torch.Tensor  # Σ_s (codebook_loss + commitment_loss) of stage s, scalar
    stage_errors: torch.Tensor  # (num_stages,) mean (z_e − Σ_{j≤s} e_j)² after stage s


class ResidualVQ(nn.Module):
    """`num_stages` quantizers on successive residuals, coarse to fine (SoundStream, Zeghidour
    et al. 2021):

        r_0 = z_e,   k_s = nearest code of r_s in codebook s,   r_{s+1} = r_s − e^s_{k_s},
        z_q = Σ_s e^s_{k_s}

    S stages of K codes describe K^S combinations with only S·K stored codes. Each stage trains
    on its own residual (the earlier stages' codes are detached); z_q is straight-through.
    Keyword arguments go to every stage's `VectorQuantizer`.
    """

    def __init__(self, num_codes: int, dim: int, num_stages: int = 4, **vq_kwargs: object):
        super().__init__()
        self.num_codes = _validate.positive_int("num_codes", num_codes)
        self.dim = _validate.positive_int("dim", dim)
        self.num_stages = _validate.positive_int("num_stages", num_stages)
        self.stages = nn.ModuleList(
            VectorQuantizer(num_codes, dim, **vq_kwargs) for _ in range(num_stages)
        )

    def forward(self, z_e: torch.Tensor) -> RVQOutput:
        """Quantize z_e (N, D) or (B, D, *S) in `num_stages` stages; tokens (..., num_stages)."""
        _to_rows("z_e", z_e, self.dim)  # checks the layout before any stage runs
        residual, total = z_e, torch.zeros_like(z_e)
        tokens, losses, errors = [], [], []
        for vq in self.stages:
            out = vq(residual)
            codes = out.z_q.detach()  # e^s_k, in z_e's layout
            residual = residual - codes  # r_{s+1} = r_s − e^s_k
            total = total + codes  # Σ_{j≤s} e^j
            tokens.append(out.tokens)
            losses.append(out.loss)
            errors.append(residual.detach().pow(2).mean())  # (z_e − Σ_{j≤s} e^j)²
        return RVQOutput(
            z_q=straight_through(z_e, total),
            tokens=torch.stack(tokens, dim=-1),  # (..., S)
            loss=torch.stack(losses).sum(),
            stage_errors=torch.stack(errors),  # (S,)
        )

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Sum the codes of the first n stages: tokens (..., n), 1 ≤ n ≤ num_stages, → z_q in
        forward's layout. Fewer stages give the coarser reconstruction."""
        tokens = _validate.tensor("tokens", tokens)
        n = tokens.shape[-1] if tokens.dim() else 0
        if tokens.dim() < 2 or not 1 <= n <= self.num_stages:
            raise ValueError(
                f"tokens must have shape (..., n) with 1 ≤ n ≤ num_stages = {self.num_stages}, "
                f"got {tuple(tokens.shape)}"
            )
        return sum(vq.decode(tokens[..., s]) for s, vq in enumerate(self.stages[:n]))

    @torch.no_grad()
    def init_codebooks(
        self, z_e: torch.Tensor, iters: int = 10, *, generator: torch.Generator | None = None
    ) -> None:
        """k-means initialise stage after stage, each on the residuals the stages before leave."""
        residual = _to_rows("z_e", z_e, self.dim)  # (N, D)
        for vq in self.stages:
            vq.init_codebook(residual, iters, generator=generator)
            codebook = vq.codebook.to(residual.dtype)
            residual = residual - codebook[nearest_code(residual, codebook)]  # r_{s+1}


# ---------------------------------------------------------------- finite scalar quantization


class FSQOutput(NamedTuple):
    """What `FSQ` returns."""

    z_q: torch.Tensor  # like z_e: grid values in [−1, 1], straight-through
    tokens: torch.Tensor  # (N,) or (B, *S) long, in [0, prod(levels))
    loss: torch.Tensor  # always 0: FSQ needs no codebook or commitment loss


class FSQ(nn.Module):
    """Finite scalar quantization (Mentzer et al. 2023): channel d of z_e is squashed into a
    range and rounded to one of L_d levels, so the codebook is the implicit grid of
    prod(levels) points: nothing to learn, no codebook loss, no dead codes.

    z_e has D = len(levels) channels; e.g. levels (8, 5, 5, 5) give 1000 codes from D = 4.
    Channel values on the grid are scaled to [−1, 1]: L = 5 → {−1, −½, 0, ½, 1};
    L = 8 → {−1, −¾, …, ¾} (even L has one more level below 0 than above).
    """

    def __init__(self, levels: Sequence[int] = (8, 5, 5, 5), *, eps: float = 1e-3):
        super().__init__()
        if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence) or not levels:
            raise TypeError(f"levels must be a non-empty sequence of ints, got {levels!r}")
        for i, level in enumerate(levels):
            _validate.integer(f"levels[{i}]", level, low=2)
        self.levels = tuple(levels)
        self.dim = len(levels)
        self.num_codes = math.prod(levels)
        self.eps = _validate.number("eps", eps, 0.0, 1.0, open_lo=True, open_hi=True)

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """Squash each channel of z (..., D) so that rounding gives its L integers
        −⌊L/2⌋ … ⌊(L−1)/2⌋:  tanh(z + s)·h − o,  h = (L − 1)(1 + eps)/2,  o = ½ for even L
        (else 0),  s = atanh(o / h) so that bound(0) = 0. The (1 + eps) lets tanh reach the
        outermost levels (the paper writes 1 − eps, which breaks atanh for L = 2)."""
        z = _check_channels_last("z", z, self.dim)
        levels = z.new_tensor(self.levels)  # (D,)
        half = (levels - 1) * (1 + self.eps) / 2  # (D,)  h
        offset = (levels % 2 == 0).to(z.dtype) / 2  # (D,)  o
        shift = torch.atanh(offset / half)  # (D,)  s
        return torch.tanh(z + shift) * half - offset  # (..., D)

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., D) → grid values (..., D) in [−1, 1]; rounding is straight-through."""
        bounded = self.bound(z)  # (..., D)
        rounded = bounded + (bounded.round() - bounded).detach()  # value: round, gradient: 1
        return rounded / self._half_width(z)  # (..., D)

    def forward(self, z_e: torch.Tensor) -> FSQOutput:
        """Quantize z_e (N, D) or (B, D, *S), D = len(levels); tokens (N,) or (B, *S)."""
        z_q = self.quantize(_to_rows("z_e", z_e, self.dim))  # (N, D)
        return FSQOutput(
            z_q=_from_rows(z_q, z_e.shape),
            tokens=self.codes_to_indices(z_q.detach()).reshape(_token_shape(z_e.shape)),
            loss=z_e.new_zeros(()),
        )

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """Grid values (..., D) → tokens (...): digit_d = code_d·⌊L_d/2⌋ + ⌊L_d/2⌋ ∈ [0, L_d),
        token = Σ_d digit_d · prod_{j<d} L_j (channel 0 is the least significant digit)."""
        codes = _check_channels_last("codes", codes, self.dim)
        half = self._half_width(codes)  # (D,)
        digits = (codes * half + half).round().long()  # (..., D)
        return (digits * self._basis(codes.device)).sum(dim=-1)  # (...)

    def indices_to_codes(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (...) → grid values (..., D), the inverse of `codes_to_indices`."""
        tokens = _check_tokens("tokens", tokens, self.num_codes)
        levels = torch.tensor(self.levels, device=tokens.device)  # (D,)
        digits = tokens[..., None] // self._basis(tokens.device) % levels  # (..., D)
        half = levels // 2
        return (digits - half).float() / half  # (..., D)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (N,) → (N, D), (B, *S) → (B, D, *S): forward's layout."""
        codes = self.indices_to_codes(tokens)  # (..., D)
        return codes.movedim(-1, 1) if codes.dim() > 2 else codes

    @property
    def codebook(self) -> torch.Tensor:
        """The implicit codebook (prod(levels), D): every grid point, in token order."""
        return self.indices_to_codes(torch.arange(self.num_codes))

    def _half_width(self, like: torch.Tensor) -> torch.Tensor:
        return like.new_tensor([level // 2 for level in self.levels])  # (D,)  ⌊L/2⌋

    def _basis(self, device: torch.device) -> torch.Tensor:
        place = [math.prod(self.levels[:d]) for d in range(self.dim)]
        return torch.tensor(place, device=device)  # (D,)  prod_{j<d} L_j

    def extra_repr(self) -> str:
        return f"levels={self.levels}, num_codes={self.num_codes}"


# ------------------------------------------------------------------------------------ helpers


def _check_same(
    name_a: str, a: object, name_b: str, b: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two floating tensors of one shape, dtype and device."""
    a = _validate.tensor(name_a, a, floating=True)
    b = _validate.tensor(name_b, b, floating=True)
    if b.shape != a.shape:
        raise ValueError(
            f"{name_b} must have {name_a}'s shape {tuple(a.shape)}, got {tuple(b.shape)}"
        )
    if b.dtype != a.dtype:
        raise TypeError(f"{name_b} must have {name_a}'s dtype {a.dtype}, got {b.dtype}")
    if b.device != a.device:
        raise ValueError(f"{name_b} must be on {name_a}'s device {a.device}, got {b.device}")
    return a, b


def _check_tokens(name: str, tokens: object, num_codes: int) -> torch.Tensor:
    """An integer tensor of code indices in [0, num_codes), returned as long."""
    tokens = _validate.tensor(name, tokens)
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor (torch.long), got dtype {tokens.dtype}")
    if tokens.numel():
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= num_codes:
            raise ValueError(
                f"{name} must hold code indices in [0, {num_codes}), got values in [{low}, {high}]"
            )
    return tokens.long()


def _check_channels_last(name: str, z: object, dim: int) -> torch.Tensor:
    z = _validate.tensor(name, z, floating=True)
    if z.dim() < 1 or z.shape[-1] != dim:
        raise ValueError(f"{name} must have shape (..., {dim}), got {tuple(z.shape)}")
    return z


def _to_rows(name: str, z_e: object, dim: int) -> torch.Tensor:
    """(N, D) or (B, D, *S) with D = dim → rows (N', D), N' = B·prod(S)."""
    z_e = _validate.tensor(name, z_e, floating=True)
    if z_e.dim() < 2 or z_e.shape[1] != dim:
        raise ValueError(
            f"{name} must have D = {dim} channels in dimension 1, (N, {dim}) or "
            f"(B, {dim}, ...), got shape {tuple(z_e.shape)}"
        )
    return z_e.movedim(1, -1).reshape(-1, dim)  # (B, *S, D) → (N', D)


def _from_rows(rows: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Rows (N', D) back to the layout `shape` = (N, D) or (B, D, *S) came in."""
    batch, _, *spatial = shape
    return rows.reshape(batch, *spatial, rows.shape[-1]).movedim(-1, 1)


def _token_shape(shape: torch.Size) -> tuple[int, ...]:
    """(N, D) → (N,); (B, D, *S) → (B, *S)."""
    return (shape[0], *shape[2:])


def _perplexity(counts: torch.Tensor) -> torch.Tensor:
    """exp(−Σ_k p_k log p_k) with p = counts / Σ counts and 0·log 0 = 0; scalar tensor."""
    p = counts.float() / counts.sum().clamp_min(1)  # (K,)
    return torch.exp(-torch.special.xlogy(p, p).sum())


def _dead_mask(usage_counts: object, num_codes: int, threshold: object) -> torch.Tensor:
    usage_counts = _validate.tensor("usage_counts", usage_counts, shape=(num_codes,))
    threshold = _validate.number("threshold", threshold, 0.0, math.inf)
    return usage_counts < threshold  # (K,) bool


def _restart(
    codebook: torch.Tensor,
    dead: torch.Tensor,
    z: torch.Tensor,
    generator: torch.Generator | None,
) -> int:
    """codebook[dead] ← random rows of z, in place; returns the number of dead codes."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return 0
    if len(z) == 0:
        raise ValueError("z must hold at least one vector to restart dead codes from, got none")
    rows = _draw(len(z), n_dead, generator, z.device)  # (n_dead,)
    codebook[dead.to(codebook.device)] = z[rows].to(codebook.dtype)
    return n_dead


def _draw(n: int, k: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """k row indices in [0, n): distinct when k ≤ n, else with repetition."""
    where = generator.device if generator is not None else device
    if k <= n:
        rows = torch.randperm(n, generator=generator, device=where)[:k]
    else:
        rows = torch.randint(n, (k,), generator=generator, device=where)
    return rows.to(device)


def _kmeans_plus_plus(
    z: torch.Tensor, num_codes: int, generator: torch.Generator | None
) -> torch.Tensor:
    """k-means++ seeding: K rows of z, each next one drawn with probability ∝ D(z)², the squared
    distance of a row to its nearest centre so far."""
    picked = [_choice(torch.ones(len(z), device=z.device), generator)]
    d2 = squared_distances(z, z[picked[0]][None]).squeeze(1)  # (N,)  D(z)²
    for _ in range(1, num_codes):
        picked.append(_choice(d2, generator))
        d2 = torch.minimum(d2, squared_distances(z, z[picked[-1]][None]).squeeze(1))
    return z[picked].clone()  # (K, D)


def _choice(weights: torch.Tensor, generator: torch.Generator | None) -> int:
    """One index drawn with probability ∝ weights (uniform when they are all 0)."""
    if generator is not None:
        weights = weights.to(generator.device)
    if not weights.sum() > 0:
        weights = torch.ones_like(weights)
    return int(torch.multinomial(weights.float(), 1, generator=generator))
