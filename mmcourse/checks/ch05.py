"""Checkers of chapter 05 (autoregressive sampling): temperature, top-k, top-p, restricting to
the image range, the order of the logit pipeline, classifier-free guidance on logits, the guided
batch's prompts, attention with a KV cache, and removing the vocabulary offset before decoding.

Every checker compares the candidate with `mmcourse.sampling` / `mmcourse.transformer` on
seeded inputs built so that each classic bug changes the result: rows of a batch sorted
differently (top-p with row 0's order), a token exactly at the crossing of p, ties at the k-th
logit, a chunk of several queries after a cache (a causal mask without the cache offset).
"""

from __future__ import annotations

import torch

from mmcourse import ar, sampling, transformer
from mmcourse.checks._contract import call
from mmcourse.checks._core import Check, _Failure, describe, exercise, seeded

_INF = float("-inf")


def _logits(g: torch.Generator, dev: torch.device, *shape: int) -> torch.Tensor:
    return (2 * torch.randn(*shape, generator=g)).to(dev)


def _same_logits(
    check: Check,
    got: object,
    expected: torch.Tensor,
    what: str,
    hint: str,
    alternatives: dict[str, torch.Tensor] | None = None,
    dtype_hint: str = "",
) -> None:
    """Equal up to float rounding (−∞ exactly where the reference has −∞): x / τ and x · (1/τ)
    may differ in the last bit. `alternatives`: what known mistakes give on these inputs."""
    check.close(
        got,
        expected,
        what,
        atol=1e-6,
        rtol=1e-6,
        hint=hint,
        dtype_hint=dtype_hint,
        alternatives=alternatives,
    )


# ------------------------------------------------------------------ Exercise 5.1: temperature


@exercise("5.1", "temperature", references=(sampling.apply_temperature,))
def check_apply_temperature(check: Check) -> None:
    """Exercise 5.1: apply_temperature(logits (B, V), temperature) -> logits / τ."""
    g, dev = seeded(51), check.device
    logits = _logits(g, dev, 3, 10)
    for tau, what in [
        (0.5, "τ = 0.5 sharpens: logits / 0.5"),
        (2.0, "τ = 2 flattens: logits / 2"),
        (1.0, "τ = 1 leaves the logits unchanged"),
    ]:
        check.close(
            call(check, logits, tau),
            sampling.apply_temperature(logits, tau),
            what,
            hint="divide the logits (not the probabilities) by τ: softmax(ℓ / τ); return "
            "logits, not probabilities",
            alternatives={
                "ℓ · τ, multiplied by τ: divide the logits by it, ℓ / τ": logits * tau,
                "the probabilities softmax(ℓ / τ): return the logits ℓ / τ themselves": (
                    logits / tau
                ).softmax(-1),
                "log(softmax(ℓ) / τ), the probabilities divided by τ: divide the logits, not "
                "the probabilities": (logits.softmax(-1) / tau).log(),
            },
        )
    l64 = logits.double()
    check.close(
        call(check, l64, 0.7),
        sampling.apply_temperature(l64, 0.7),
        "keeps dtype float64 and the device",
        atol=1e-12,
    )


# ------------------------------------------------------------------------ Exercise 5.2: top-k


def _keep_above(logits: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    return logits.masked_fill(logits < threshold, _INF)


_K_PLUS_ONE = (
    "the k + 1 largest kept: the threshold is the k-th largest value, index k − 1 of the sorted "
    "row (topk(k).values[:, -1:]), not index k"
)
_K_MINUS_ONE = (
    "only k − 1 kept, the k-th largest itself removed: keep logits ≥ it (set only those < it to −∞)"
)
_EXACTLY_K = (
    "exactly the k indices topk returns, a tie at the k-th value dropped: compare with the k-th "
    "largest value instead, so that equal logits are treated equally"
)
_ROW0_KTH = "row 0's k-th largest used as every row's threshold: take each row's own, shape (B, 1)"


def _top_k_mistakes(logits: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """What the classic top-k slips give on `logits` (B, V), k < V."""
    ranked = logits.sort(dim=-1, descending=True).values  # (B, V)
    by_index = logits.topk(k, dim=-1).indices  # (B, k)
    exactly_k = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, by_index, True)
    return {
        _K_PLUS_ONE: _keep_above(logits, ranked[:, k : k + 1]),
        _K_MINUS_ONE: logits.masked_fill(logits <= ranked[:, k - 1 : k], _INF),
        _EXACTLY_K: logits.masked_fill(~exactly_k, _INF),
        _ROW0_KTH: _keep_above(logits, ranked[0, k - 1]),
    }


@exercise("5.2", "top-k filtering", references=(sampling.top_k_filter, sampling._top_k))
def check_top_k_filter(check: Check) -> None:
    """Exercise 5.2: top_k_filter(logits (B, V), k) -> logits with all but the k largest per
    row set to −∞ (ties with the k-th largest kept)."""
    dev = check.device
    row = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]], device=dev)
    _same_logits(
        check,
        call(check, row, 2),
        torch.tensor([[_INF, 5.0, _INF, 4.0, _INF]], device=dev),
        "k = 2 on [1, 5, 3, 4, 2] keeps exactly 5 and 4",
        hint="the threshold is the k-th largest value, topk(k).values[:, -1:] (index k − 1 of "
        "the sorted row, not k); keep logits ≥ it and set the others to −∞",
        alternatives=_top_k_mistakes(row, 2),
    )
    ties = torch.tensor([[3.0, 2.0, 2.0, 1.0]], device=dev)
    _same_logits(
        check,
        call(check, ties, 2),
        torch.tensor([[3.0, 2.0, 2.0, _INF]], device=dev),
        "k = 2 on [3, 2, 2, 1] keeps both tokens tied at the 2nd largest value",
        hint="compare with the k-th largest value (logits < kth → −∞) instead of keeping the "
        "k indices topk returns: equal logits must be treated equally",
        alternatives=_top_k_mistakes(ties, 2),
    )
    g = seeded(52)
    batch = _logits(g, dev, 4, 12)
    _same_logits(
        check,
        call(check, batch, 3),
        sampling.top_k_filter(batch, 3),
        "a batch of 4 rows, k = 3: each row keeps its own 3 largest",
        hint="take the k-th largest of each row (shape (B, 1)), not one threshold for the batch",
        alternatives=_top_k_mistakes(batch, 3),
    )
    every = (
        "when k ≥ V there is nothing to filter: return the logits unchanged (a common cause "
        "of a failure here is logits.topk(k), which raises for k > V)"
    )
    for k in (12, 15):
        try:
            got = call(check, batch, k)
        except _Failure as failure:
            failure.hint = every
            raise
        _same_logits(check, got, batch, f"k = {k} ≥ V = 12 keeps every logit", hint=every)
    b64 = batch.double()
    dtype_hint = "filter with masked_fill on the logits themselves; don't convert them"
    _same_logits(
        check,
        call(check, b64, 5),
        sampling.top_k_filter(b64, 5),
        "keeps dtype float64",
        hint=dtype_hint,
        dtype_hint=dtype_hint,
    )


# ------------------------------------------------------------------------ Exercise 5.3: top-p


_CROSSING_DROPPED = (
    "the token that crosses p dropped (cumsum > p): it is kept; remove a token only when the "
    "mass of the tokens before it is already ≥ p (cumsum − probs ≥ p)"
)
_SORTED_ORDER = (
    "the filtered logits left in sorted order: scatter them back to vocabulary order "
    "(torch.empty_like(logits).scatter(-1, sorted_indices, sorted_filtered))"
)
_ROW0_ORDER = (
    "row 0's sort order applied to every row: sort, cumsum and scatter along dim=-1 for all "
    "rows, never with row 0's indices"
)


def _top_p_mistakes(logits: torch.Tensor, p: float) -> dict[str, torch.Tensor]:
    """What the classic top-p slips give on `logits` (B, V)."""
    ranked, order = logits.sort(dim=-1, descending=True)  # (B, V) each
    probs = ranked.softmax(-1)
    mass = probs.cumsum(-1)
    drop = mass - probs >= p  # right, by rank
    crossing = mass > p
    crossing[:, 0] = False  # the most likely token stays in that version too
    by_row0 = torch.zeros_like(drop)
    by_row0[:, order[0]] = drop  # each row's ranks read as row 0's token ids
    return {
        _CROSSING_DROPPED: logits.scatter(-1, order, ranked.masked_fill(crossing, _INF)),
        _SORTED_ORDER: ranked.masked_fill(drop, _INF),
        _ROW0_ORDER: logits.masked_fill(by_row0, _INF),
    }


@exercise("5.3", "top-p (nucleus) filtering", references=(sampling.top_p_filter, sampling._top_p))
def check_top_p_filter(check: Check) -> None:
    """Exercise 5.3: top_p_filter(logits (B, V), p) -> logits with, per row, only the smallest
    set of most likely tokens whose mass reaches p kept (the crossing token included)."""
    dev = check.device
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]], device=dev)
    logits = probs.log()
    _same_logits(
        check,
        call(check, logits, 0.6),
        sampling.top_p_filter(logits, 0.6),
        "p = 0.6 on probabilities [0.5, 0.3, 0.15, 0.05] keeps 0.5 and 0.3",
        hint="0.5 alone does not reach p = 0.6, so the token that crosses it (0.3) is kept: "
        "remove a token only when the mass of the tokens before it is already ≥ p "
        "(cumsum − probs ≥ p), not when cumsum > p",
        alternatives=_top_p_mistakes(logits, 0.6),
    )
    _same_logits(
        check,
        call(check, logits, 0.4),
        sampling.top_p_filter(logits, 0.4),
        "p = 0.4 keeps only the most likely token, which alone crosses p",
        hint="the most likely token is always kept",
        alternatives=_top_p_mistakes(logits, 0.4),
    )
    shuffle = torch.tensor([2, 0, 3, 1], device=dev)
    mixed = logits[:, shuffle]  # probabilities [0.15, 0.5, 0.05, 0.3]
    _same_logits(
        check,
        call(check, mixed, 0.6),
        sampling.top_p_filter(mixed, 0.6),
        "the same row in another vocabulary order: [0.15, 0.5, 0.05, 0.3] keeps 0.5 and 0.3 in "
        "place",
        hint="filter in sorted order, then scatter the result back to vocabulary order "
        "(torch.empty_like(logits).scatter(-1, sorted_indices, sorted_filtered))",
        alternatives=_top_p_mistakes(mixed, 0.6),
    )
    g = seeded(53)
    batch = _logits(g, dev, 4, 16)
    _same_logits(
        check,
        call(check, batch, 0.8),
        sampling.top_p_filter(batch, 0.8),
        "a batch of 4 rows with different orders, p = 0.8",
        hint="every row has its own sort order: sort, cumsum and scatter along dim=-1 for all "
        "rows, never with row 0's indices",
        alternatives=_top_p_mistakes(batch, 0.8),
    )
    wide = (8 * torch.randn(4, 2000, generator=g)).to(dev)  # a peaked row, a long tail
    got = call(check, wide, 1.0)
    removed = int((isinstance(got, torch.Tensor) and got.shape == wide.shape) and
                  torch.isinf(got).sum())  # fmt: skip
    _same_logits(
        check,
        got,
        wide,
        "p = 1 keeps every logit (4 rows of V = 2000, float32)",
        hint=f"p = 1 is the whole distribution: return the logits unchanged. Here {removed} "
        "ids were removed: in float32 the running sum reaches 1.0 by rounding before the "
        "least likely ids, so `mass before ≥ p` cuts them although their probability is not 0"
        if removed
        else "p = 1 is the whole distribution: return the logits unchanged",
    )
    b64 = batch.double()
    dtype_hint = "filter with masked_fill and scatter on the logits themselves; don't convert them"
    _same_logits(
        check,
        call(check, b64, 0.5),
        sampling.top_p_filter(b64, 0.5),
        "keeps dtype float64",
        hint=dtype_hint,
        dtype_hint=dtype_hint,
    )


# ---------------------------------------------------------------- Exercise 5.4: allowed range


@exercise(
    "5.4",
    "restrict logits to a token range",
    references=(sampling.restrict_range, sampling._banned),
)
def check_restrict_range(check: Check) -> None:
    """Exercise 5.4: restrict_range(logits (B, V), start, end) -> −∞ outside ids [start, end)."""
    g, dev = seeded(54), check.device
    logits = _logits(g, dev, 3, 12)
    got = call(check, logits, 4, 9)
    _same_logits(
        check,
        got,
        sampling.restrict_range(logits, 4, 9),
        "ids 4 … 8 keep their logits, all others are −∞",
        hint="the range is half-open: start is allowed, end is not; build a (V,) mask of "
        "allowed ids and masked_fill the rest with −inf (don't touch the allowed logits)",
        alternatives={
            "id 9 = end allowed too: the range is half-open, start is allowed, end is not": (
                sampling.restrict_range(logits, 4, 10)
            ),
            "0 outside the range: a logit of 0 is still a likely token; masked_fill the "
            "banned ids with −inf": torch.where(
                sampling.restrict_range(logits, 4, 9).isinf(), 0.0, logits
            ),
        },
    )
    probs = got.softmax(-1)
    picks = torch.multinomial(probs.cpu(), 2000, replacement=True, generator=seeded(540))
    outside = int(((picks < 4) | (picks >= 9)).sum())
    check.that(
        outside == 0,
        "2,000 samples from softmax of the result all lie in [4, 9)",
        expected="0 samples outside the range",
        got=f"{outside} samples outside",
        hint="a token outside the image range must have probability exactly 0 (logit −∞)",
    )
    l64 = logits.double()
    dtype_hint = "masked_fill the logits themselves; don't convert them"
    _same_logits(
        check,
        call(check, l64, 0, 3),
        sampling.restrict_range(l64, 0, 3),
        "keeps dtype float64; ids [0, 3)",
        hint=dtype_hint,
        dtype_hint=dtype_hint,
    )


# ------------------------------------------------------------- Exercise 5.5: the whole pipeline


_TAU_LAST = (
    "τ applied after the filters: the nucleus must be measured on the distribution that is "
    "sampled, so divide by τ before top-k and top-p"
)
_RANGE_LAST = (
    "the range restricted after the filters, which then measured the nucleus with forbidden ids "
    "in it: restrict to the allowed ids first"
)


def _pipeline_mistakes(logits: torch.Tensor, options: dict) -> dict[str, torch.Tensor]:
    """What the pipeline gives with τ after the filters, or the range restricted last."""
    tau = options.get("temperature", 1.0)
    rest = {k: v for k, v in options.items() if k != "temperature"}
    mistakes = {_TAU_LAST: sampling.process_logits(logits, **rest) / tau}
    if (allowed := options.get("allowed")) is not None:
        rest = {k: v for k, v in options.items() if k != "allowed"}
        mistakes[_RANGE_LAST] = sampling.restrict_range(
            sampling.process_logits(logits, **rest), *allowed
        )
    return mistakes


@exercise("5.5", "the logit pipeline in the right order", references=(sampling.process_logits,))
def check_process_logits(check: Check) -> None:
    """Exercise 5.5: process_logits(logits, *, temperature, top_k, top_p, allowed) -> restrict,
    temperature, top-k, top-p, in that order."""
    g, dev = seeded(55), check.device
    logits = _logits(g, dev, 4, 20)
    cases = [
        ({"temperature": 1.0}, "nothing but τ = 1: the logits unchanged"),
        ({"temperature": 2.0, "top_p": 0.6}, "τ = 2 then top-p 0.6"),
        ({"temperature": 0.5, "top_k": 5, "top_p": 0.9}, "τ = 0.5, top-k 5, top-p 0.9"),
        ({"temperature": 1.0, "top_p": 0.7, "allowed": (8, 20)}, "ids [8, 20) then top-p 0.7"),
        (
            {"temperature": 1.5, "top_k": 4, "top_p": 0.8, "allowed": (5, 15)},
            "all four: ids [5, 15), τ = 1.5, top-k 4, top-p 0.8",
        ),
    ]
    order = (
        "restrict to the allowed ids first, then divide by τ, then top-k, then top-p: the "
        "nucleus must be measured on the distribution that is sampled (after τ, without the "
        "forbidden ids); skip a filter whose argument is None"
    )
    for kwargs, what in cases:
        full = {"top_k": None, "top_p": None, "allowed": None} | kwargs
        _same_logits(
            check,
            call(check, logits, **full),
            sampling.process_logits(logits, **kwargs),
            what,
            hint=order,
            alternatives=_pipeline_mistakes(logits, kwargs),
        )
    defaults = "the documented defaults temperature=1.0, top_k=None, top_p=None, allowed=None"
    _same_logits(
        check,
        call(check, logits),
        logits,
        f"every option left out: {defaults} leave the logits unchanged",
        hint=f"keep {defaults}",
    )
    _same_logits(
        check,
        call(check, logits, top_k=5),
        sampling.process_logits(logits, top_k=5),
        f"only top_k=5 given, the others at {defaults}",
        hint=f"keep {defaults}",
    )
    l64 = logits.double()
    dtype_hint = "apply the filters to the logits themselves; don't convert them"
    _same_logits(
        check,
        call(check, l64, temperature=0.7, top_k=6, top_p=0.9, allowed=(2, 18)),
        sampling.process_logits(l64, temperature=0.7, top_k=6, top_p=0.9, allowed=(2, 18)),
        "keeps dtype float64 (ids [2, 18), τ = 0.7, top-k 6, top-p 0.9)",
        hint=dtype_hint,
        dtype_hint=dtype_hint,
    )


# --------------------------------------------------------- Exercise 5.6: guidance on logits


@exercise("5.6", "classifier-free guidance on logits", references=(sampling.cfg_logits,))
def check_cfg_logits(check: Check) -> None:
    """Exercise 5.6: cfg_logits(cond (B, V), uncond (B, V), scale) -> ℓ_u + s (ℓ_c − ℓ_u)."""
    g, dev = seeded(56), check.device
    cond, uncond = _logits(g, dev, 3, 10), _logits(g, dev, 3, 10)
    formula = "ℓ = ℓ_u + s · (ℓ_c − ℓ_u): start from the unconditional logits"
    for scale, what in [
        (1.0, "scale 1 gives the conditional logits ℓ_c"),
        (0.0, "scale 0 gives the unconditional logits ℓ_u"),
        (3.0, "scale 3 extrapolates past ℓ_c, away from ℓ_u"),
    ]:
        check.close(
            call(check, cond, uncond, scale),
            sampling.cfg_logits(cond, uncond, scale),
            what,
            hint=f"{formula}; the weights are s on ℓ_c and (1 − s) on ℓ_u",
            alternatives={
                f"ℓ_c + s · (ℓ_c − ℓ_u), which starts from the conditional logits: {formula}": (
                    cond + scale * (cond - uncond)
                ),
                "ℓ_c + s · (ℓ_u − ℓ_c), ℓ_c and ℓ_u swapped: the weights are s on ℓ_c and "
                "(1 − s) on ℓ_u": cond + scale * (uncond - cond),
            },
        )
    c64, u64 = cond.double(), uncond.double()
    check.close(
        call(check, c64, u64, 2.5),
        sampling.cfg_logits(c64, u64, 2.5),
        "keeps dtype float64 and the device",
        atol=1e-12,
    )


# ------------------------------------------------------ Exercise 5.7: the guided batch prompts


@exercise("5.7", "prompts of a guided batch", references=(ar.guidance_prompts,))
def check_guidance_prompts(check: Check) -> None:
    """Exercise 5.7: guidance_prompts(caption_ids (B, CAPTION_LEN)) -> (2B, CAPTION_LEN + 1):
    [caption][BOI] rows, then [NULL × CAPTION_LEN][BOI] rows."""
    dev = check.device
    captions = ["a red circle in the top left", "a blue square in the center", "a cyan triangle "
                "in the bottom right"]  # fmt: skip
    ids = ar.encode_captions(captions).to(dev)
    got = call(check, ids)
    expected = ar.guidance_prompts(ids)
    check.that(
        isinstance(got, torch.Tensor) and got.shape == expected.shape,
        "3 captions give 6 prompts of the same length",
        expected=f"shape {tuple(expected.shape)}",
        got=describe(got),
        hint="both halves are CAPTION_LEN + 1 long: the unconditional caption is CAPTION_LEN "
        "NULL ids, not an empty caption, so the rows batch without padding",
    )
    boi = (got == ar.BOI).nonzero()[:, 1].tolist() if got.dim() == 2 else []
    check.that(
        boi == [ar.CAPTION_LEN] * len(got),
        "BOI sits at the same position (the last) in every row",
        expected=f"BOI in column {ar.CAPTION_LEN} of all 6 rows",
        got=f"BOI in columns {boi}",
        hint="conditional and unconditional rows share one KV cache and one position counter; "
        "if BOI (and so every image token) sits at different positions in the two halves, "
        "the cache positions are misaligned. Make the unconditional prompt as long as a caption",
    )
    b = len(ids)
    padded = expected.clone()
    padded[b:, :-1] = ar.PAD
    check.equal(
        got,
        expected,
        "rows 0–2 are [caption][BOI], rows 3–5 [NULL × 7][BOI]",
        hint="conditional rows first (cfg splits logits[:B] as cond, logits[B:] as uncond), and "
        "the unconditional caption is NULL ids (ar.NULL), the token caption dropout trained on, "
        "not PAD",
        alternatives={
            "the unconditional rows first: cfg splits logits[:B] as cond and logits[B:] as "
            "uncond, so the conditional rows come first": expected.roll(b, dims=0),
            "PAD where the unconditional caption belongs: it is NULL ids (ar.NULL), the token "
            "caption dropout trained on, not PAD": padded,
        },
    )
    one = ids[1:2]
    check.equal(
        call(check, one),
        ar.guidance_prompts(one),
        "one caption gives 2 prompts: [caption][BOI], then [NULL × 7][BOI]",
        hint="build the halves from the batch that comes in (len(caption_ids) rows, e.g. "
        "torch.full_like(caption_ids, ar.NULL)), not for a fixed batch size",
    )


# ------------------------------------------------------- Exercise 5.8: attention with a cache


def _attend(check: Check, *args: object) -> tuple:
    """Run the candidate; every call's result must be (out, cache) before anything unpacks it
    (a learner's branch for `cache is not None` may return something else than the first)."""
    return check.parts(call(check, *args), ("out", "(k_all, v_all)"))


_NO_MASK = "no causal mask, so each query also saw later keys: set the scores of keys j > i to −∞"
_NO_OFFSET = (
    "a causal mask without the cache offset, query i treated as position i: the mask must be "
    "shifted by the cache length P, query i sees keys j ≤ P + i (transformer.causal_mask(T, "
    "P + T))"
)
_CACHE_IGNORED = (
    "attention over the new keys only, the cache ignored: attend over torch.cat([k_past, k], "
    "dim=2) and the same for v"
)
_MASK_IGNORED = (
    "the causal rule, the explicit mask ignored (or combined with it): when mask is given, use "
    "it as given instead"
)
_MASK_AND_CAUSAL = (
    "the explicit mask combined with the causal mask: use the mask as given (True = may attend)"
)
_MASK_INVERTED = "the explicit mask inverted: True = may attend, so scores.masked_fill(~mask, −inf)"


def _attention_mistakes(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cache: tuple | None,
    mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The outputs (B, H, T, d) of the classic slips with the cache's positions and the mask."""
    past = cache[0].shape[2] if cache is not None else 0
    t = q.shape[2]
    causal = transformer.causal_mask(t, past + t, q.device)  # (T, P + T)
    if mask is None:
        masks = {_NO_MASK: torch.ones_like(causal), _NO_OFFSET: causal.new_ones(t, t + past).tril()}
    else:
        masks = {_MASK_IGNORED: None, _MASK_AND_CAUSAL: mask & causal, _MASK_INVERTED: ~mask}
    outputs = {
        what: transformer.cached_attention(q, k, v, cache, m)[0] for what, m in masks.items()
    }
    if cache is not None and mask is None:
        outputs[_CACHE_IGNORED] = transformer.cached_attention(q, k, v, None)[0]
    return outputs


def _qkv(g: torch.Generator, dev: torch.device, t: int) -> list[torch.Tensor]:
    return [torch.randn(2, 3, t, 4, generator=g).to(dev) for _ in range(3)]


@exercise("5.8", "attention with a KV cache", references=(transformer.cached_attention,))
def check_cached_attention(check: Check) -> None:
    """Exercise 5.8: cached_attention(q, k, v, cache=None, mask=None) -> (out (B, H, T, d),
    (k_all, v_all) (B, H, P + T, d))."""
    g, dev = seeded(58), check.device
    q, k, v = _qkv(g, dev, 5)
    out, _ = _attend(check, q, k, v)
    check.close(
        out,
        transformer.cached_attention(q, k, v, None)[0],
        "no cache, 5 positions (cache and mask left out): causal attention",
        hint="softmax(q kᵀ / √d) v with scores of future keys (j > i) set to −∞; keep the "
        "documented defaults cache=None, mask=None",
        alternatives=_attention_mistakes(q, k, v, None),
    )
    past_k, past_v = _qkv(g, dev, 4)[:2]
    q1, k1, v1 = _qkv(g, dev, 1)
    out, cache = _attend(check, q1, k1, v1, (past_k, past_v))
    ref_out, ref_cache = transformer.cached_attention(q1, k1, v1, (past_k, past_v))
    k_all, v_all = check.parts(
        cache, ("k_all", "v_all"), hint="the cache is one value, a pair: return out, (k_all, v_all)"
    )
    check.tensor(
        k_all,
        "after 4 cached positions, one new position: the returned cache holds 5",
        shape=ref_cache[0].shape,
        hint="append the new keys and values to the cache along the time axis "
        "(torch.cat([k_past, k], dim=2)) and return the longer tensors",
    )
    check.close(
        k_all, ref_cache[0], "the new cache's keys are the old keys then the new one",
        hint="cat([k_past, k]) in that order: the cache is in position order",
    )  # fmt: skip
    check.close(v_all, ref_cache[1], "the new cache's values are the old then the new one")
    check.close(
        out,
        ref_out,
        "one new query attends to all 5 positions",
        hint="the new query sits at position P = 4 and sees all P + 1 keys: attend over the "
        "concatenated keys and values (not only the new one), with the causal mask shifted by "
        "the cache length P",
        alternatives=_attention_mistakes(q1, k1, v1, (past_k, past_v)),
    )
    q3, k3, v3 = _qkv(g, dev, 3)
    out, _ = _attend(check, q3, k3, v3, (past_k, past_v))
    check.close(
        out,
        transformer.cached_attention(q3, k3, v3, (past_k, past_v))[0],
        "3 new queries after 4 cached positions (query i sits at position 4 + i)",
        hint="the causal mask is (T, P + T) and shifted by the cache length P: query i sees "
        "keys j ≤ P + i (transformer.causal_mask(T, P + T)); a mask built as if the queries "
        "started at position 0 misaligns the positions",
        alternatives=_attention_mistakes(q3, k3, v3, (past_k, past_v)),
    )
    full_q, full_k, full_v = (torch.cat(x, dim=2) for x in ((q, q1), (k, k1), (v, v1)))
    whole, _ = transformer.cached_attention(full_q, full_k, full_v, None)
    cache, steps = None, []
    for i in range(6):
        out, cache = _attend(check, full_q[:, :, i : i + 1], full_k[:, :, i : i + 1],
                             full_v[:, :, i : i + 1], cache)  # fmt: skip
        steps.append(out)
    check.close(
        torch.cat(steps, dim=2),
        whole,
        "6 steps of one position with the returned cache equal one pass over all 6",
        hint="feed the cache you returned back in: each step must see every earlier position",
    )
    mask = torch.ones(3, 7, dtype=torch.bool, device=dev)
    out, _ = _attend(check, q3, k3, v3, (past_k, past_v), mask)
    check.close(
        out,
        transformer.cached_attention(q3, k3, v3, (past_k, past_v), mask)[0],
        "an explicit all-True mask (3, 7) replaces the causal rule",
        hint="when mask is given, use it (True = may attend) instead of the causal mask",
        alternatives=_attention_mistakes(q3, k3, v3, (past_k, past_v), mask),
    )
    sparse = torch.tensor(
        [[1, 0, 1, 0, 0, 1, 0], [0, 1, 0, 1, 1, 0, 1], [1, 1, 0, 0, 0, 0, 1]],
        dtype=torch.bool,
        device=dev,
    )
    out, _ = _attend(check, q3, k3, v3, (past_k, past_v), sparse)
    check.close(
        out,
        transformer.cached_attention(q3, k3, v3, (past_k, past_v), sparse)[0],
        "an explicit mask with holes (3, 7), keys allowed before and after each query",
        hint="True = may attend: scores.masked_fill(~mask, −inf), with the mask as given "
        "(not combined with the causal mask, not inverted)",
        alternatives=_attention_mistakes(q3, k3, v3, (past_k, past_v), sparse),
    )
    q64, k64, v64 = (x.double() for x in (q3, k3, v3))
    past64 = (past_k.double(), past_v.double())
    out, cache = _attend(check, q64, k64, v64, past64)
    ref_out, ref_cache = transformer.cached_attention(q64, k64, v64, past64)
    check.close(out, ref_out, "keeps dtype float64 and the device (the output)", atol=1e-10)
    k_all, _ = check.parts(cache, ("k_all", "v_all"))
    check.close(k_all, ref_cache[0], "keeps dtype float64 and the device (the cache)")


# -------------------------------------------------- Exercise 5.9: image ids → tokenizer codes


@exercise("5.9", "remove the vocabulary offset", references=(ar.ids_to_codes,))
def check_ids_to_codes(check: Check) -> None:
    """Exercise 5.9: ids_to_codes(ids (B, 64)) -> codes (B, 8, 8) in [0, 512)."""
    g, dev = seeded(59), check.device
    codes = torch.randint(ar.CODES, (3, ar.GRID, ar.GRID), generator=g).to(dev)
    ids = codes.flatten(1) + ar.IMAGE_OFFSET  # what generation returns, raster order
    got = call(check, ids)
    check.that(
        isinstance(got, torch.Tensor) and got.shape == codes.shape,
        "3 rows of 64 image ids give 3 grids of 8×8 codes",
        expected=f"shape {tuple(codes.shape)}",
        got=describe(got),
        hint="reshape (B, 64) → (B, 8, 8) with .view(-1, 8, 8)",
    )
    check.equal(
        got,
        codes,
        "the codes the tokenizer gave, in raster order",
        hint=f"subtract ar.IMAGE_OFFSET ({ar.IMAGE_OFFSET}) so the ids become codes in [0, "
        f"{ar.CODES}) again, and keep raster order: row by row, no transpose",
        alternatives={
            f"the ids with the vocabulary offset still on: subtract ar.IMAGE_OFFSET "
            f"({ar.IMAGE_OFFSET}) so they become codes in [0, {ar.CODES}) again": codes
            + ar.IMAGE_OFFSET,
            "the grids transposed, filled column by column: keep raster order, row by row, no "
            "transpose": codes.transpose(1, 2),
        },
    )
    check.equal(
        call(check, ids[1:2]),
        codes[1:2],
        "one row of 64 ids gives one 8×8 grid",
        hint="reshape with .view(-1, 8, 8): the batch size is whatever comes in",
    )
