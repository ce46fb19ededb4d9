"""Chapter 05 checkers: the references pass; each known-wrong version fails with its message."""

from __future__ import annotations

import math

import pytest
import torch
from checker_cases import (
    WRONG_KINDS,
    case_id,
    devices_seen,
    passes,
    rejects,
    rejects_wrong_kind,
    stub,
)

from mmcourse import ar, sampling, transformer
from mmcourse.checks import ch05

pytestmark = pytest.mark.usefixtures("one_thread")


# --- Exercise 5.1: temperature -----------------------------------------------------------------


def _temperature(logits, temperature):
    return logits / temperature


def _temperature_times(logits, temperature):
    return logits * temperature  # BUG: multiplies


def _temperature_probs(logits, temperature):
    return (logits.softmax(-1) / temperature).log()  # BUG: scales probabilities


def _temperature_softmax(logits, temperature):
    return (logits / temperature).softmax(-1)  # BUG: probabilities, not logits


def _temperature_float32(logits, temperature):
    return logits.float() / temperature


def _temperature_float64(logits, temperature):
    return logits.double() / temperature  # BUG: float32 in, float64 out


def test_temperature_references_pass(capsys):
    passes(ch05.check_apply_temperature, sampling.apply_temperature, capsys, "5.1")
    passes(ch05.check_apply_temperature, _temperature, capsys, "5.1")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_temperature_times, r"failed check 1, \"τ = 0\.5 sharpens(.|\n)*looks like: ℓ · τ"),
        (_temperature_probs, r"failed check 1(.|\n)*looks like: log\(softmax\(ℓ\) / τ\)"),
        (_temperature_softmax, r"failed check 1(.|\n)*looks like: the probabilities softmax"),
        (_temperature_float32, r"keeps dtype float64(.|\n)*torch\.float32"),
        (
            _temperature_float64,
            r"failed check 1, \"τ = 0\.5 sharpens: logits / 0\.5\":\n  expected: dtype "
            r"torch\.float32\n  got:      dtype torch\.float64\n  hint:     keep the input's "
            r"dtype \(create new tensors with x\.new_full / x\.new_zeros, or pass "
            r"dtype=x\.dtype\)$",
        ),
        (stub, r"Exercise 5\.1 \(temperature\): not implemented yet"),
    ],
    ids=case_id,
)
def test_temperature_rejects(wrong, message):
    rejects(ch05.check_apply_temperature, wrong, message)


# --- Exercise 5.2: top-k -----------------------------------------------------------------------


def _top_k(logits, k):
    if k >= logits.shape[-1]:
        return logits
    kth = logits.sort(dim=-1, descending=True).values[:, k - 1 : k]
    return logits.masked_fill(logits < kth, -math.inf)


def _top_k_plus_one(logits, k):
    kth = logits.sort(dim=-1, descending=True).values[:, k : k + 1]  # BUG: the (k+1)-th
    return logits.masked_fill(logits < kth, -math.inf)


def _top_k_strict(logits, k):
    kth = logits.topk(k, dim=-1).values[:, -1:]
    return logits.masked_fill(logits <= kth, -math.inf)  # BUG: drops the k-th itself


def _top_k_indices(logits, k):
    idx = logits.topk(min(k, logits.shape[-1]), dim=-1).indices  # BUG: exactly k, ties dropped
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, idx, True)
    return logits.masked_fill(~keep, -math.inf)


def _top_k_row0(logits, k):
    kth = logits[0].topk(min(k, logits.shape[-1])).values[-1]  # BUG: row 0's threshold
    return logits.masked_fill(logits < kth, -math.inf)


def _top_k_crash(logits, k):
    kth = logits.topk(k, dim=-1).values[:, -1:]  # BUG: topk fails when k > V … and at k = V ok
    return logits.masked_fill(logits < kth, -math.inf).masked_fill(logits == kth, -math.inf)


def _top_k_no_guard(logits, k):
    kth = logits.topk(k, dim=-1).values[:, -1:]  # BUG: topk raises for k > V
    return logits.masked_fill(logits < kth, -math.inf)


def test_top_k_references_pass(capsys):
    passes(ch05.check_top_k_filter, sampling.top_k_filter, capsys, "5.2")
    passes(ch05.check_top_k_filter, _top_k, capsys, "5.2")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (
            _top_k_plus_one,
            r"failed check 1, \"k = 2 on \[1, 5, 3, 4, 2\](.|\n)*looks like: the k \+ 1",
        ),
        (_top_k_strict, r"failed check 1(.|\n)*looks like: only k − 1 kept(.|\n)*keep logits ≥ it"),
        (
            _top_k_indices,
            r"failed check 2, \"k = 2 on \[3, 2, 2, 1\](.|\n)*looks like: exactly the k",
        ),
        (
            _top_k_row0,
            r"failed check 3, \"a batch of 4 rows(.|\n)*looks like: row 0's k-th largest",
        ),
        (_top_k_crash, r"failed check 1"),
        (_top_k_no_guard, r"runs on \(tensor of shape \(4, 12\)(.|\n)*15\)(.|\n)*k > V"),
        (stub, r"Exercise 5\.2 \(top-k filtering\): not implemented yet"),
    ],
    ids=case_id,
)
def test_top_k_rejects(wrong, message):
    rejects(ch05.check_top_k_filter, wrong, message)


# --- Exercise 5.3: top-p -----------------------------------------------------------------------


def _top_p(logits, p):
    if p >= 1:
        return logits
    sorted_logits, idx = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    drop = probs.cumsum(-1) - probs >= p
    return logits.scatter(-1, idx, sorted_logits.masked_fill(drop, -math.inf))


def _top_p_drops_crossing(logits, p):
    sorted_logits, idx = logits.sort(dim=-1, descending=True)
    drop = sorted_logits.softmax(-1).cumsum(-1) > p  # BUG: the crossing token is dropped
    drop[:, 0] = False
    return logits.scatter(-1, idx, sorted_logits.masked_fill(drop, -math.inf))


def _top_p_no_scatter(logits, p):
    sorted_logits, _ = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    return sorted_logits.masked_fill(probs.cumsum(-1) - probs >= p, -math.inf)  # BUG: sorted


def _top_p_row0(logits, p):
    sorted_logits, idx = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    drop = probs.cumsum(-1) - probs >= p
    remove = torch.zeros_like(drop)
    remove[:, idx[0]] = drop  # BUG: row 0's order for every row
    return logits.masked_fill(remove, -math.inf)


def _top_p_running_sum(logits, p):
    sorted_logits, idx = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    drop = probs.cumsum(-1) - probs >= p  # BUG at p = 1: the sum reaches 1.0 before the tail
    return logits.scatter(-1, idx, sorted_logits.masked_fill(drop, -math.inf))


def test_top_p_references_pass(capsys):
    passes(ch05.check_top_p_filter, sampling.top_p_filter, capsys, "5.3")
    passes(ch05.check_top_p_filter, _top_p, capsys, "5.3")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (
            _top_p_drops_crossing,
            r"failed check 1, \"p = 0\.6(.|\n)*looks like: the token that crosses",
        ),
        (
            _top_p_no_scatter,
            r"failed check 3, \"the same row in another(.|\n)*looks like: the filtered",
        ),
        (_top_p_row0, r"failed check 4, \"a batch of 4 rows(.|\n)*looks like: row 0's sort order"),
        (_top_p_running_sum, r"p = 1 keeps every logit(.|\n)*\d+ ids were removed(.|\n)*1\.0"),
        (stub, r"Exercise 5\.3 \(top-p \(nucleus\) filtering\): not implemented yet"),
    ],
    ids=case_id,
)
def test_top_p_rejects(wrong, message):
    rejects(ch05.check_top_p_filter, wrong, message)


# --- Exercise 5.4: restrict_range --------------------------------------------------------------


def _restrict(logits, start, end):
    out = torch.full_like(logits, -math.inf)
    out[:, start:end] = logits[:, start:end]
    return out


def _restrict_inclusive(logits, start, end):
    out = torch.full_like(logits, -math.inf)
    out[:, start : end + 1] = logits[:, start : end + 1]  # BUG: end included
    return out


def _restrict_zero(logits, start, end):
    out = torch.zeros_like(logits)  # BUG: 0 is a logit, not a ban
    out[:, start:end] = logits[:, start:end]
    return out


def _restrict_nothing(logits, start, end):
    return logits  # BUG: image positions may sample text ids


def _restrict_in_place(logits, start, end):
    logits[:, :start] = -math.inf  # BUG: writes into the caller's logits
    logits[:, end:] = -math.inf
    return logits


def test_restrict_references_pass(capsys):
    passes(ch05.check_restrict_range, sampling.restrict_range, capsys, "5.4")
    passes(ch05.check_restrict_range, _restrict, capsys, "5.4")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_restrict_inclusive, r"failed check 1, \"ids 4 … 8(.|\n)*looks like: id 9 = end allowed"),
        (_restrict_zero, r"failed check 1(.|\n)*looks like: 0 outside the range(.|\n)*−inf"),
        (_restrict_nothing, r"failed check 1(.|\n)*masked_fill"),
        (_restrict_in_place, r"failed check 1, \"leaves its input logits unchanged"),
        (stub, r"Exercise 5\.4 \(restrict logits to a token range\): not implemented yet"),
    ],
    ids=case_id,
)
def test_restrict_rejects(wrong, message):
    rejects(ch05.check_restrict_range, wrong, message)


# --- Exercise 5.5: process_logits --------------------------------------------------------------


def _pipeline(logits, *, temperature=1.0, top_k=None, top_p=None, allowed=None):
    if allowed is not None:
        logits = sampling.restrict_range(logits, *allowed)
    logits = logits / temperature
    if top_k is not None:
        logits = sampling.top_k_filter(logits, top_k)
    if top_p is not None:
        logits = sampling.top_p_filter(logits, top_p)
    return logits


def _pipeline_temperature_last(logits, *, temperature=1.0, top_k=None, top_p=None, allowed=None):
    if allowed is not None:
        logits = sampling.restrict_range(logits, *allowed)
    if top_k is not None:
        logits = sampling.top_k_filter(logits, top_k)
    if top_p is not None:
        logits = sampling.top_p_filter(logits, top_p)
    return logits / temperature  # BUG: temperature after filtering


def _pipeline_restrict_last(logits, *, temperature=1.0, top_k=None, top_p=None, allowed=None):
    logits = logits / temperature
    if top_k is not None:
        logits = sampling.top_k_filter(logits, top_k)
    if top_p is not None:
        logits = sampling.top_p_filter(logits, top_p)
    if allowed is not None:  # BUG: the nucleus was measured with forbidden ids in it
        logits = sampling.restrict_range(logits, *allowed)
    return logits


def _pipeline_times_inverse(logits, *, temperature=1.0, top_k=None, top_p=None, allowed=None):
    if allowed is not None:
        logits = sampling.restrict_range(logits, *allowed)
    logits = logits * (1 / temperature)  # right: equal to / τ up to the last bit
    if top_k is not None:
        logits = sampling.top_k_filter(logits, top_k)
    if top_p is not None:
        logits = sampling.top_p_filter(logits, top_p)
    return logits


def _pipeline_no_defaults(logits, *, temperature, top_k, top_p, allowed):
    return _pipeline(logits, temperature=temperature, top_k=top_k, top_p=top_p, allowed=allowed)


def _pipeline_default_temperature(logits, *, temperature=0.8, top_k=None, top_p=None, allowed=None):
    return _pipeline(logits, temperature=temperature, top_k=top_k, top_p=top_p, allowed=allowed)


def _pipeline_float32(logits, *, temperature=1.0, top_k=None, top_p=None, allowed=None):
    return _pipeline(logits.float(), temperature=temperature, top_k=top_k, top_p=top_p,
                     allowed=allowed)  # fmt: skip


def test_pipeline_references_pass(capsys):
    passes(ch05.check_process_logits, sampling.process_logits, capsys, "5.5")
    passes(ch05.check_process_logits, _pipeline, capsys, "5.5")
    passes(ch05.check_process_logits, _pipeline_times_inverse, capsys, "5.5")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (
            _pipeline_temperature_last,
            r"failed check 2, \"τ = 2 then top-p(.|\n)*looks like: τ appl",
        ),
        (
            _pipeline_restrict_last,
            r"failed check 4, \"ids \[8, 20\) then(.|\n)*looks like: the range",
        ),
        (_pipeline_no_defaults, r"failed check 6, \"runs on(.|\n)*docstring's signature"),
        (_pipeline_default_temperature, r"every option left out(.|\n)*temperature=1\.0, top_k"),
        (_pipeline_float32, r"keeps dtype float64(.|\n)*torch\.float32"),
        (stub, r"Exercise 5\.5 \(the logit pipeline in the right order\): not implemented yet"),
    ],
    ids=case_id,
)
def test_pipeline_rejects(wrong, message):
    rejects(ch05.check_process_logits, wrong, message)


# --- Exercise 5.6: cfg_logits ------------------------------------------------------------------


def _cfg(cond, uncond, scale):
    return scale * cond + (1 - scale) * uncond


def _cfg_from_cond(cond, uncond, scale):
    return cond + scale * (cond - uncond)  # BUG: starts from the conditional logits


def _cfg_swapped(cond, uncond, scale):
    return cond + scale * (uncond - cond)  # BUG: uncond and cond swapped


def test_cfg_references_pass(capsys):
    passes(ch05.check_cfg_logits, sampling.cfg_logits, capsys, "5.6")
    passes(ch05.check_cfg_logits, _cfg, capsys, "5.6")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (
            _cfg_from_cond,
            r"failed check 1, \"scale 1 gives the cond(.|\n)*ℓ_c \+ s · \(ℓ_c − ℓ_u\)",
        ),
        (
            _cfg_swapped,
            r"failed check 1(.|\n)*looks like: ℓ_c \+ s · \(ℓ_u − ℓ_c\), ℓ_c and ℓ_u swap",
        ),
        (stub, r"Exercise 5\.6 \(classifier-free guidance on logits\): not implemented yet"),
    ],
    ids=case_id,
)
def test_cfg_rejects(wrong, message):
    rejects(ch05.check_cfg_logits, wrong, message)


# --- Exercise 5.7: guidance_prompts ------------------------------------------------------------


def _prompts(caption_ids):
    b, n = caption_ids.shape
    boi = torch.full((b, 1), ar.BOI, dtype=torch.long, device=caption_ids.device)
    null = torch.full_like(caption_ids, ar.NULL)
    return torch.cat([torch.cat([caption_ids, boi], 1), torch.cat([null, boi], 1)])


def _prompts_short_uncond(caption_ids):
    b, n = caption_ids.shape
    boi = torch.full((b, 1), ar.BOI, dtype=torch.long, device=caption_ids.device)
    pad = torch.full_like(caption_ids, ar.PAD)
    uncond = torch.cat([boi, pad], 1)  # BUG: [BOI] alone, right-padded: positions misaligned
    return torch.cat([torch.cat([caption_ids, boi], 1), uncond])


def _prompts_uncond_first(caption_ids):
    p = _prompts(caption_ids)
    return torch.cat([p[len(caption_ids) :], p[: len(caption_ids)]])  # BUG: halves swapped


def _prompts_pad(caption_ids):
    p = _prompts(caption_ids)
    p[len(caption_ids) :, :-1] = ar.PAD  # BUG: PAD is not the trained unconditional prompt
    return p


def _prompts_empty(caption_ids):
    boi = torch.full((len(caption_ids), 1), ar.BOI, dtype=torch.long, device=caption_ids.device)
    return [torch.cat([caption_ids, boi], 1), boi]  # BUG: two lengths, not one batch


def _prompts_fixed_batch(caption_ids):
    null = torch.full((3, caption_ids.shape[1]), ar.NULL, device=caption_ids.device)  # BUG: B = 3
    boi = torch.full((len(caption_ids) + 3, 1), ar.BOI, device=caption_ids.device)
    return torch.cat([torch.cat([caption_ids, null]), boi], dim=1)


def test_prompts_references_pass(capsys):
    passes(ch05.check_guidance_prompts, ar.guidance_prompts, capsys, "5.7")
    passes(ch05.check_guidance_prompts, _prompts, capsys, "5.7")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_prompts_short_uncond, r"failed check 2, \"BOI sits at the same(.|\n)*misaligned"),
        (_prompts_uncond_first, r"failed check 3(.|\n)*looks like: the unconditional rows first"),
        (_prompts_pad, r"failed check 3(.|\n)*looks like: PAD where(.|\n)*not PAD"),
        (_prompts_fixed_batch, r"failed check 4, \"one caption gives 2 prompts(.|\n)*fixed batch"),
        (_prompts_empty, r"failed check 1, \"3 captions give 6 prompts(.|\n)*NULL ids"),
        (stub, r"Exercise 5\.7 \(prompts of a guided batch\): not implemented yet"),
    ],
    ids=case_id,
)
def test_prompts_rejects(wrong, message):
    rejects(ch05.check_guidance_prompts, wrong, message)


# --- Exercise 5.8: cached_attention ------------------------------------------------------------


def _attend(q, k, v, mask):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return scores.masked_fill(~mask, -math.inf).softmax(-1) @ v


def _cached(q, k, v, cache=None, mask=None):
    if cache is not None:
        k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
    t, n = q.shape[2], k.shape[2]
    if mask is None:
        mask = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()[n - t :]
    return _attend(q, k, v, mask), (k, v)


def _cached_not_appended(q, k, v, cache=None, mask=None):
    t = q.shape[2]
    if mask is None:
        mask = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
    return _attend(q, k, v, mask), (k, v)  # BUG: the cache is ignored and never grows


def _cached_no_offset(q, k, v, cache=None, mask=None):
    if cache is not None:
        k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
    t, n = q.shape[2], k.shape[2]
    if mask is None:  # BUG: query i treated as position i, not P + i
        mask = torch.ones(t, n, dtype=torch.bool, device=q.device).tril()
    return _attend(q, k, v, mask), (k, v)


def _cached_returns_old(q, k, v, cache=None, mask=None):
    out, new = _cached(q, k, v, cache, mask)
    return out, (cache if cache is not None else new)  # BUG: the appended cache is not returned


def _cached_ignores_mask(q, k, v, cache=None, mask=None):
    return _cached(q, k, v, cache, None)  # BUG: an explicit mask is ignored


def _cached_additive_mask(q, k, v, cache=None, mask=None):
    if mask is None:
        return _cached(q, k, v, cache, None)
    if cache is not None:
        k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) + mask.float()  # BUG: adds 0/1
    return scores.softmax(-1) @ v, (k, v)


def _cached_no_defaults(q, k, v, cache, mask):
    return _cached(q, k, v, cache, mask)  # BUG: cache and mask have no default


def _cached_float32(q, k, v, cache=None, mask=None):
    out, new = _cached(q, k, v, cache, mask)
    return out.float(), new


def _cached_no_mask(q, k, v, cache=None, mask=None):
    n = k.shape[2] + (cache[0].shape[2] if cache is not None else 0)
    everything = torch.ones(q.shape[2], n, dtype=torch.bool, device=q.device)
    return _cached(q, k, v, cache, everything if mask is None else mask)  # BUG: sees the future


def _cached_ignores_cache(q, k, v, cache=None, mask=None):
    out, _ = _cached(q, k, v, None, None)  # BUG: attends over the new keys only
    return out, _cached(q, k, v, cache, mask)[1]


def _cached_mask_and_causal(q, k, v, cache=None, mask=None):
    if mask is not None:
        n = mask.shape[-1]
        mask = mask & torch.ones(n, n, dtype=torch.bool, device=q.device).tril()[n - q.shape[2] :]
    return _cached(q, k, v, cache, mask)  # BUG: the explicit mask also made causal


def _cached_mask_inverted(q, k, v, cache=None, mask=None):
    return _cached(q, k, v, cache, None if mask is None else ~mask)  # BUG: True read as banned


def _cached_none_with_cache(q, k, v, cache=None, mask=None):
    out, new = _cached(q, k, v, cache, mask)
    if cache is None:
        return out, new  # BUG: the branch with a cache returns nothing


def _cached_one_tuple(q, k, v, cache=None, mask=None):
    return (_cached(q, k, v, cache, mask)[0],)  # BUG: `return out,`


def _cached_flat(q, k, v, cache=None, mask=None):
    out, (k_all, v_all) = _cached(q, k, v, cache, mask)
    return out, k_all, v_all  # BUG: the cache is one value, a pair


def _cached_stacked(q, k, v, cache=None, mask=None):
    out, (k_all, v_all) = _cached(q, k, v, cache, mask)
    return out, torch.stack([k_all, v_all])  # BUG: a tensor, not the pair (k_all, v_all)


def _cached_float64(q, k, v, cache=None, mask=None):
    out, new = _cached(q, k, v, cache, mask)
    return out.double(), new


def test_cached_attention_references_pass(capsys):
    passes(ch05.check_cached_attention, transformer.cached_attention, capsys, "5.8")
    passes(ch05.check_cached_attention, _cached, capsys, "5.8")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_cached_not_appended, r"failed check 5, \"after 4 cached positions(.|\n)*append"),
        (
            _cached_no_offset,
            r"failed check 8, \"one new query(.|\n)*looks like: a causal mask without the cache "
            r"offset(.|\n)*shifted by the cache length",
        ),
        (_cached_returns_old, r"failed check 5(.|\n)*return the longer tensors"),
        (_cached_ignores_mask, r"explicit all-True mask(.|\n)*looks like: the causal rule, the"),
        (_cached_additive_mask, r"explicit mask with holes(.|\n)*not combined with the causal"),
        (_cached_no_mask, r"failed check 2, \"no cache, 5 positions(.|\n)*looks like: no causal"),
        (_cached_ignores_cache, r"failed check 8(.|\n)*looks like: attention over the new keys"),
        (
            _cached_mask_and_causal,
            r"all-True mask(.|\n)*looks like: the causal rule(.|\n)*as given",
        ),
        (_cached_mask_inverted, r"all-True mask(.|\n)*looks like: the explicit mask inverted"),
        (
            _cached_none_with_cache,
            r"failed check 3, \"returns a tuple \(out, \(k_all, v_all\)\)\":\n  expected: a "
            r"tuple of 2 values\n  got:      None",
        ),
        (
            _cached_one_tuple,
            r"failed check 1, \"returns a tuple(.|\n)*got:      a tuple of 1 value",
        ),
        (_cached_flat, r"failed check 1, (.|\n)*got:      a tuple of 3 values: \(tensor of shape"),
        (
            _cached_stacked,
            r"failed check 4, \"returns a tuple \(k_all, v_all\)(.|\n)*got:      tensor of "
            r"shape \(2, 2, 3, 5, 4\)(.|\n)*the cache is one value, a pair",
        ),
        (
            _cached_float64,
            r"failed check 2, (.|\n)*expected: dtype torch\.float32\n  got:      dtype "
            r"torch\.float64",
        ),
        (_cached_no_defaults, r"failed check 1, \"runs on(.|\n)*docstring's signature"),
        (_cached_float32, r"keeps dtype float64 and the device \(the output\)(.|\n)*float32"),
        (stub, r"Exercise 5\.8 \(attention with a KV cache\): not implemented yet"),
    ],
    ids=case_id,
)
def test_cached_attention_rejects(wrong, message):
    rejects(ch05.check_cached_attention, wrong, message)


# --- Exercise 5.9: ids_to_codes ----------------------------------------------------------------


def _codes(ids):
    return (ids - ar.IMAGE_OFFSET).view(-1, 8, 8)


def _codes_no_offset(ids):
    return ids.view(-1, 8, 8)  # BUG: ids still carry the vocabulary offset


def _codes_transposed(ids):
    return (ids - ar.IMAGE_OFFSET).view(-1, 8, 8).transpose(1, 2)  # BUG: column order


def _codes_flat(ids):
    return ids - ar.IMAGE_OFFSET  # BUG: not a grid


def _codes_fixed_batch(ids):
    return (ids - ar.IMAGE_OFFSET).view(3, 8, 8)  # BUG: the batch size of the example


def test_codes_references_pass(capsys):
    passes(ch05.check_ids_to_codes, ar.ids_to_codes, capsys, "5.9")
    passes(ch05.check_ids_to_codes, _codes, capsys, "5.9")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (
            _codes_no_offset,
            r"failed check 2, \"the codes the tokenizer(.|\n)*looks like: the ids with",
        ),
        (
            _codes_transposed,
            r"failed check 2(.|\n)*looks like: the grids transposed(.|\n)*no transpose",
        ),
        (_codes_flat, r"failed check 1(.|\n)*\(B, 8, 8\)"),
        (_codes_fixed_batch, r"runs on \(tensor of shape \(1, 64\)(.|\n)*RuntimeError"),
        (stub, r"Exercise 5\.9 \(remove the vocabulary offset\): not implemented yet"),
    ],
    ids=case_id,
)
def test_codes_rejects(wrong, message):
    rejects(ch05.check_ids_to_codes, wrong, message)


# --- every checker ---------------------------------------------------------------------------

_REFERENCES = [
    (ch05.check_apply_temperature, sampling.apply_temperature),
    (ch05.check_top_k_filter, sampling.top_k_filter),
    (ch05.check_top_p_filter, sampling.top_p_filter),
    (ch05.check_restrict_range, sampling.restrict_range),
    (ch05.check_process_logits, sampling.process_logits),
    (ch05.check_cfg_logits, sampling.cfg_logits),
    (ch05.check_guidance_prompts, ar.guidance_prompts),
    (ch05.check_cached_attention, transformer.cached_attention),
    (ch05.check_ids_to_codes, ar.ids_to_codes),
]


@pytest.mark.parametrize(("checker", "reference"), _REFERENCES, ids=case_id)
def test_checks_run_on_the_chosen_device(checker, reference, device, capsys):
    seen = devices_seen(checker, reference, device, capsys)
    assert seen <= {torch.device(device)}


@pytest.mark.parametrize("kind", WRONG_KINDS)
@pytest.mark.parametrize(("checker", "reference"), _REFERENCES, ids=case_id)
def test_a_wrong_kind_of_result_gets_expected_and_got(checker, reference, kind):
    rejects_wrong_kind(checker, reference, kind)
