"""Scaling laws (chapter 11): how a model's loss falls with its size N and its data D.

The loss of a language model trained on D tokens with N parameters follows, over orders of
magnitude, the sum of an irreducible part and two power laws (Hoffmann et al. 2022):

    L(N, D) = E + A / N^α + B / D^β

E is the entropy of the data no model removes; A/N^α is what a model of N parameters cannot
represent however long it trains; B/D^β is what D tokens cannot teach however large the model.
N counts the non-embedding parameters (Kaplan et al. 2020): the embedding table of a small model
is most of its weights and buys almost nothing.

The fit (`fit_law`) follows Hoffmann et al.'s third approach: write each term as an exponential,

    log L̂ = LSE(e, a − α log N, b − β log D)        E = eᵉ, A = eᵃ, B = eᵇ,

and minimise the Huber loss (δ = 10⁻³) of log L̂ − log L over the measured runs with L-BFGS,
from a grid of starting points (the objective has many local minima); the best end wins.
`fit_power` fits the one-variable law L(x) = E + A / x^α the same way.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

__all__ = ["Law", "PowerLaw", "fit_law", "fit_power", "non_embedding_params"]

HUBER_DELTA = 1e-3


class Law(NamedTuple):
    """L(N, D) = E + A / N^α + B / D^β."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float

    def __call__(self, n: float, d: float) -> float:
        return self.E + self.A / n**self.alpha + self.B / d**self.beta


class PowerLaw(NamedTuple):
    """L(x) = E + A / x^α."""

    E: float
    A: float
    alpha: float

    def __call__(self, x: float) -> float:
        return self.E + self.A / x**self.alpha


def non_embedding_params(model: nn.Module) -> int:
    """The parameters a scaling law counts: all but the token and position embeddings (a tied
    output head shares the token table and is not counted twice)."""
    return sum(p.numel() for name, p in model.named_parameters() if not name.endswith("emb.weight"))


def fit_law(
    n: Sequence[float], d: Sequence[float], loss: Sequence[float], *, delta: float = HUBER_DELTA
) -> Law:
    """Fit L(N, D) = E + A/N^α + B/D^β to measured (N, D, loss) triples (at least 5)."""
    x = _columns({"n": n, "d": d, "loss": loss})
    e, (a, b), (alpha, beta) = _fit(x[:, :2].log(), x[:, 2].log(), delta)
    return Law(e.exp().item(), a.exp().item(), alpha.item(), b.exp().item(), beta.item())


def fit_power(x: Sequence[float], loss: Sequence[float], *, delta: float = HUBER_DELTA) -> PowerLaw:
    """Fit L(x) = E + A / x^α to measured (x, loss) pairs (at least 3)."""
    cols = _columns({"x": x, "loss": loss})
    e, (a,), (alpha,) = _fit(cols[:, :1].log(), cols[:, 1].log(), delta)
    return PowerLaw(e.exp().item(), a.exp().item(), alpha.item())


def _columns(named: dict[str, Sequence[float]]) -> torch.Tensor:
    """The named sequences as the columns of a float64 (P, k) tensor, all positive."""
    lengths = {len(v) for v in named.values()}
    if len(lengths) != 1:
        sizes = ", ".join(f"{k} {len(v)}" for k, v in named.items())
        raise ValueError(f"the measurements must have one length each, got {sizes}")
    cols = torch.tensor(list(zip(*named.values())), dtype=torch.float64)  # (P, k)
    needed = 2 * len(named) - 1  # as many points as free parameters
    if len(cols) < needed:
        raise ValueError(f"fitting needs at least {needed} measurements, got {len(cols)}")
    if not (torch.isfinite(cols).all() and (cols > 0).all()):
        raise ValueError(f"{', '.join(named)} must be finite and > 0")
    return cols


def _fit(
    log_x: torch.Tensor, log_loss: torch.Tensor, delta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Minimise Σ Huber(LSE(e, a_i − α_i log x_i) − log L) over (e, a, α), from a grid of
    starts: log_x (P, k), log_loss (P,). Returns e (), a (k,), α (k,)."""
    k = log_x.shape[1]
    grid = [(-1.0, 0.0, 1.0)] + [(0.0, 5.0, 10.0, 20.0)] * k + [(0.2, 0.5, 1.0)] * k
    starts = torch.tensor(list(itertools.product(*grid)), dtype=torch.float64)  # (S, 1 + 2k)

    def objective(theta: torch.Tensor) -> torch.Tensor:  # theta (S, 1 + 2k) → (S,)
        e, a, alpha = theta[:, :1], theta[:, 1 : 1 + k], theta[:, 1 + k :]
        terms = a[:, None, :] - alpha[:, None, :] * log_x  # (S, P, k)
        pred = torch.cat([e[:, None, :].expand(-1, len(log_x), 1), terms], dim=2).logsumexp(2)
        r = pred - log_loss  # (S, P)
        return torch.nn.functional.huber_loss(r, torch.zeros_like(r), delta=delta,
                                              reduction="none").sum(1)  # fmt: skip

    theta = _lbfgs(objective, starts)  # every start at once: the objective is a sum over starts
    best = theta[objective(theta).argmin()][None]
    best = _lbfgs(objective, best)[0]  # polish the winner alone
    return best[0], best[1 : 1 + k], best[1 + k :]


def _lbfgs(objective, theta: torch.Tensor, iterations: int = 500) -> torch.Tensor:
    theta = theta.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([theta], lr=1, max_iter=iterations, tolerance_grad=1e-12,
                            tolerance_change=1e-14, line_search_fn="strong_wolfe")  # fmt: skip

    def closure() -> torch.Tensor:
        opt.zero_grad()
        value = objective(theta).sum()
        value.backward()
        return value

    opt.step(closure)
    return theta.detach()
