"""Sampling from an autoregressive model (chapter 05): logit processing, guidance, KV cache.

Every step turns the last position's logits (B, V) into one token per row:

    logits / τ                                 temperature τ (τ < 1 sharpens, τ > 1 flattens)
    top-k:  keep logits ≥ the k-th largest     (ties with the k-th are all kept)
    top-p:  keep the smallest set of most likely tokens whose mass reaches p (the token that
            crosses p included), per row, scattered back to vocabulary order
    range:  −∞ outside the allowed ids (an image position may only hold an image token)
    CFG:    ℓ = ℓ_u + s (ℓ_c − ℓ_u)            conditional and unconditional rows in one batch
    plausibility α: keep only ids the *conditional* model finds plausible, p_c(x) ≥ α·max p_c
    sample  from softmax(ℓ) with one uniform number per row (inverse CDF, seeded)

Order matters: guidance acts on the raw logits, then temperature, then the filters, so the
nucleus of top-p is measured on the distribution that is actually sampled.

Why a plausibility constraint: s (ℓ_c − ℓ_u) also amplifies differences among the hundreds of
codes that neither model expects, and at s ≥ 2 such codes get sampled and spoil images. Keeping
only the ids with p_c(x) ≥ α·max_x' p_c(x') (the adaptive plausibility constraint of contrastive
decoding, Li et al. 2023) lets guidance re-rank what the conditional model already finds
plausible and nothing else. With s = 1 it is plain truncation of the conditional model (as in
min-p sampling), so comparing scales at the same α isolates what guidance adds.

`generate` runs the loop with a KV cache (prefill the prompt once, then one new position per
step) or, as the baseline, recomputes the whole growing prefix every step; for a seed both give
the same tokens. Nothing here knows a vocabulary: `mmcourse.ar.generate_images` adds the Shapes
layout, and `mmcourse.recipes.ar` measures what guidance buys and costs.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from mmcourse import _validate, env

__all__ = [
    "apply_temperature",
    "cfg_logits",
    "generate",
    "plausibility_filter",
    "process_logits",
    "restrict_range",
    "sample_from_logits",
    "top_k_filter",
    "top_p_filter",
]

# ------------------------------------------------------------------------- logit processing


def _check_logits(logits: object) -> torch.Tensor:
    return _validate.tensor("logits", logits, shape=("B", "V"), floating=True)


def _check_temperature(temperature: object) -> float:
    return _validate.number("temperature", temperature, 0, open_lo=True)


def _check_p(p: object) -> float:
    return _validate.number("p", p, 0, 1, open_lo=True)


def _check_alpha(alpha: object) -> float:
    return _validate.number("plausibility", alpha, 0, 1, open_lo=True)


def _check_range(start: object, end: object) -> tuple[int, int]:
    start, end = _validate.integer("start", start), _validate.integer("end", end)
    if not start < end:
        raise ValueError(f"need ints 0 ≤ start < end, got start={start!r}, end={end!r}")
    return start, end


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits (B, V) / τ: softmax(ℓ/τ) is sharper for τ < 1 and flatter for τ > 1."""
    logits = _check_logits(logits)
    return logits / _check_temperature(temperature)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep, in each row of logits (B, V), the logits ≥ that row's k-th largest; the others
    become −∞. Tokens tied with the k-th largest are all kept; k ≥ V keeps everything."""
    return _top_k(_check_logits(logits), _validate.positive_int("k", k))


def _top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    if k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[:, -1:]  # (B, 1) the k-th largest of each row
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter on logits (B, V): per row, keep the most likely tokens until their
    probability mass reaches p, including the token that crosses p (so at least one token),
    and set the rest to −∞, in the original vocabulary order. p = 1 keeps every logit."""
    return _top_p(_check_logits(logits), _check_p(p))


def _top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    if p >= 1:  # the whole distribution: nothing to remove
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V) per row
    probs = sorted_logits.softmax(dim=-1)
    # Remove a token when the mass before it reaches p, i.e. when the mass from it to the end
    # of the row is at most 1 − p. Summed from the least likely end, that tail mass is exact
    # where it matters; a running sum from the top reaches 1.0 by rounding before the tail
    # (float32, V = 2000: thousands of ids), so the tail would be cut even for p close to 1.
    tail = probs.flip(-1).cumsum(dim=-1).flip(-1)  # mass of this token and all less likely ones
    sorted_logits = sorted_logits.masked_fill(tail <= 1 - p, float("-inf"))
    return torch.empty_like(logits).scatter(-1, order, sorted_logits)  # back to vocab order


def restrict_range(logits: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """Only ids in [start, end) may be sampled: logits (B, V) outside become −∞."""
    logits = _check_logits(logits)
    start, end = _check_range(start, end)
    return logits.masked_fill(_banned(logits.shape[-1], start, end, logits.device), float("-inf"))


def _banned(vocab: int, start: int, end: int, device: torch.device) -> torch.Tensor:
    """(V,) bool, True outside the allowed ids [start, end)."""
    ids = torch.arange(vocab, device=device)
    return (ids < start) | (ids >= end)


def cfg_logits(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on logits: ℓ = ℓ_u + s (ℓ_c − ℓ_u). s = 0 unconditional, s = 1
    plain conditional, s > 1 moves further from the unconditional prediction."""
    cond = _check_logits(cond)
    uncond = _validate.tensor("uncond", uncond, shape=tuple(cond.shape), floating=True)
    return uncond + scale * (cond - uncond)


def plausibility_filter(logits: torch.Tensor, cond: torch.Tensor, alpha: float) -> torch.Tensor:
    """Keep, in each row of logits (B, V), only the ids whose conditional probability is at least
    α times that row's largest, p_c(x) ≥ α·max p_c, i.e. ℓ_c(x) ≥ max ℓ_c + log α (the softmax
    normaliser cancels); the others become −∞. cond (B, V) are the conditional logits (after any
    range restriction, so the max is over allowed ids); α = 1 keeps only the top ids."""
    logits = _check_logits(logits)
    cond = _validate.tensor("cond", cond, shape=tuple(logits.shape), floating=True)
    return _plausible(logits, cond, _check_alpha(alpha))


def _plausible(logits: torch.Tensor, cond: torch.Tensor, alpha: float) -> torch.Tensor:
    floor = cond.max(dim=-1, keepdim=True).values + math.log(alpha)  # (B, 1)
    return logits.masked_fill(cond < floor, float("-inf"))


def process_logits(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    allowed: tuple[int, int] | None = None,
) -> torch.Tensor:
    """The whole pipeline on logits (B, V): restrict to `allowed` ids [start, end), then
    temperature, then top-k, then top-p (the nucleus is measured after temperature)."""
    if allowed is not None:
        logits = restrict_range(logits, *allowed)
    logits = apply_temperature(logits, temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return logits


def sample_from_logits(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One token per row of logits (B, V) from softmax, by inverse CDF with uniforms u (B,) in
    [0, 1): the first id whose cumulative probability exceeds u. Ids of probability 0 (−∞
    logits) are never chosen. → (B,) long."""
    logits = _check_logits(logits)
    return _sample(logits, _validate.tensor("u", u, shape=(len(logits),), floating=True))


def _sample(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    cdf = logits.softmax(dim=-1).cumsum(dim=-1)  # (B, V)
    target = (u.to(cdf) * cdf[:, -1]).unsqueeze(-1)  # (B, 1), scaled to the row's total
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp(max=logits.shape[-1] - 1)


# ------------------------------------------------------------------------------- generation


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt: torch.Tensor,
    n_new: int,
    *,
    uncond_prompt: torch.Tensor | None = None,
    scale: float = 1.0,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    plausibility: float | None = None,
    allowed: tuple[int, int] | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Sample n_new tokens after prompt (B, P) → (B, n_new) long.

    With `uncond_prompt` (B, P) and scale ≠ 1, the conditional and unconditional rows run as one
    batch of 2B and their last logits are combined by `cfg_logits`; every sampled token is
    appended to both halves. `plausibility` α keeps only the ids with p_c ≥ α·max p_c under the
    conditional logits (`plausibility_filter`), after the range restriction and before
    temperature, top-k and top-p. use_cache=True prefills a KV cache with the prompt and then feeds
    one token per step (n_new forwards of one position after the prefill); use_cache=False
    recomputes the whole prefix every step (the baseline). Random numbers come from the CPU
    `generator`, one uniform per row and step, so both paths and every device draw the same.

    Every argument is validated once, here; the loop then runs the same operations as
    `cfg_logits`, `process_logits` and `sample_from_logits` without re-checking them each step."""
    prompt = _validate.tensor("prompt", prompt, shape=("B", "P"), dtype=torch.long)
    n_new = _validate.positive_int("n_new", n_new)
    temperature = _check_temperature(temperature)
    top_k = None if top_k is None else _validate.positive_int("top_k", top_k)
    top_p = None if top_p is None else _check_p(top_p)
    alpha = None if plausibility is None else _check_alpha(plausibility)
    allowed = None if allowed is None else _check_range(*allowed)
    guided = uncond_prompt is not None and scale != 1
    batch = prompt
    if guided:
        uncond_prompt = _validate.tensor(
            "uncond_prompt", uncond_prompt, shape=tuple(prompt.shape), dtype=torch.long
        )  # same length: conditional and unconditional rows share positions
        batch = torch.cat([prompt, uncond_prompt.to(prompt.device)])  # (2B, P)
    b = len(prompt)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    cache = model.new_cache() if use_cache else None
    seq = batch
    logits = model(batch, cache=cache)[:, -1]  # prefill: (2B or B, V)
    banned = None if allowed is None else _banned(logits.shape[-1], *allowed, logits.device)
    # every step's uniforms in one draw (the CPU generator gives the same numbers as one draw of
    # B per step) and one copy: a copy per step would make the host wait for the GPU each token
    uniforms = env.to_device(torch.rand(n_new, b, generator=generator), logits.device)
    out = []
    for step in range(n_new):
        cond = logits[:b].float()  # (B, V) the conditional rows, for the plausibility floor
        if guided:
            logits = logits[b:] + scale * (logits[:b] - logits[b:])  # cfg_logits (B, V)
        logits = logits.float()
        # process_logits: restrict, temperature (÷ 1 is exact, so skipped), top-k, top-p
        if banned is not None:
            logits = logits.masked_fill(banned, float("-inf"))
        if alpha is not None:  # plausibility_filter, its max over the allowed ids only
            cond = cond if banned is None else cond.masked_fill(banned, float("-inf"))
            logits = _plausible(logits, cond, alpha)
        if temperature != 1:
            logits = logits / temperature
        if top_k is not None:
            logits = _top_k(logits, top_k)
        if top_p is not None:
            logits = _top_p(logits, top_p)
        token = _sample(logits, uniforms[step])  # sample_from_logits (B,)
        out.append(token)
        if step == n_new - 1:
            break
        token = token.repeat(2) if guided else token  # the same token for both halves
        if use_cache:
            logits = model(token[:, None], cache=cache)[:, -1]  # one new position
        else:
            seq = torch.cat([seq, token[:, None]], dim=1)
            logits = model(seq)[:, -1]  # the whole prefix again
    return torch.stack(out, dim=1)
