"""mmcourse.sampling: the logit filters, guidance and the KV-cache loop (on the Shapes layout)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmcourse import ar, sampling
from mmcourse.transformer import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("one_thread")
shapes = st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple)


def _logits(b: int = 4, v: int = 20, seed: int = 0) -> torch.Tensor:
    return 2 * torch.randn(b, v, generator=torch.Generator().manual_seed(seed))


def _tiny_gpt() -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=ar.VOCAB_SIZE, block_size=ar.SEQ_LEN - 1, n_layer=2,
                       n_head=2, d_model=32)  # fmt: skip
    return GPT(config).eval()


# --- filters -------------------------------------------------------------------------------------


def test_top_p_keeps_at_least_one_and_is_per_row():
    logits = _logits()
    out = sampling.top_p_filter(logits, 1e-6)
    assert torch.equal(torch.isfinite(out).sum(-1), torch.ones(4, dtype=torch.long))
    for i in range(4):  # each row filtered alone gives the same row
        torch.testing.assert_close(out[i : i + 1], sampling.top_p_filter(logits[i : i + 1], 1e-6))


@settings(max_examples=40, deadline=None)
@given(p=st.floats(0.01, 1.0), seed=st.integers(0, 1000))
def test_top_p_mass_reaches_p_with_the_smallest_set(p, seed):
    logits = _logits(seed=seed)
    out = sampling.top_p_filter(logits, p)
    probs = logits.softmax(-1)
    kept = torch.isfinite(out)
    mass = (probs * kept).sum(-1)
    assert bool((mass >= p - 1e-5).all())
    smallest_kept = torch.where(kept, probs, torch.inf).min(-1).values
    assert bool((mass - smallest_kept < p + 1e-5).all())  # without it, the mass is below p


def _nucleus_by_hand(logits: torch.Tensor, p: float) -> torch.Tensor:
    """A second formulation: per row, in float64 Python arithmetic, walk the ids from the most
    likely down and remove one once the mass before it has reached p."""
    out = logits.clone()
    for row, values in enumerate(logits.double()):
        probs = values.softmax(-1).tolist()
        mass = 0.0
        for i in sorted(range(len(probs)), key=lambda i: -probs[i]):
            if mass >= p:
                out[row, i] = float("-inf")
            mass += probs[i]
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_top_p_at_one_keeps_every_logit(dtype):
    # A running sum reaches 1.0 by rounding before the tail: 97,152 ids with nonzero
    # probability were removed here (float32) before p = 1 meant "off".
    logits = 8 * torch.randn(64, 2000, generator=torch.Generator().manual_seed(0), dtype=dtype)
    logits[:, :5] = float("-inf")  # already banned ids stay banned
    assert torch.equal(sampling.top_p_filter(logits, 1.0), logits)
    assert torch.equal(sampling.process_logits(logits, top_p=1.0), logits)


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9, 0.99, 0.999, 0.9999])
@pytest.mark.parametrize(("scale", "v"), [(2.0, 20), (8.0, 2000)])
def test_top_p_equals_a_float64_walk_down_the_sorted_row(p, scale, v):
    logits = scale * torch.randn(6, v, generator=torch.Generator().manual_seed(v))
    assert torch.equal(sampling.top_p_filter(logits, p), _nucleus_by_hand(logits, p))


def test_top_k_and_range():
    logits = _logits()
    assert torch.equal(
        torch.isfinite(sampling.top_k_filter(logits, 3)).sum(-1), torch.full((4,), 3)
    )
    out = sampling.restrict_range(logits, 5, 9)
    assert torch.isfinite(out).nonzero()[:, 1].unique().tolist() == [5, 6, 7, 8]


def test_process_logits_order_matters_for_top_p():
    logits = _logits()
    a = sampling.process_logits(logits, temperature=3.0, top_p=0.5)
    b = sampling.top_p_filter(logits, 0.5) / 3.0
    assert not torch.equal(torch.isfinite(a), torch.isfinite(b))


def test_sample_from_logits_never_picks_banned_ids_and_follows_softmax():
    logits = sampling.restrict_range(_logits(b=1, v=6).expand(20_000, 6), 2, 5)
    u = torch.rand(20_000, generator=torch.Generator().manual_seed(0))
    picks = sampling.sample_from_logits(logits, u)
    assert set(picks.unique().tolist()) <= {2, 3, 4}
    freq = torch.bincount(picks, minlength=6).float() / len(picks)
    torch.testing.assert_close(freq, logits[0].softmax(-1), atol=0.02, rtol=0)
    assert sampling.sample_from_logits(logits[:2], torch.zeros(2)).tolist() == [2, 2]


def test_cfg_logits_scale_one_is_conditional():
    cond, uncond = _logits(seed=1), _logits(seed=2)
    torch.testing.assert_close(sampling.cfg_logits(cond, uncond, 1.0), cond)
    torch.testing.assert_close(sampling.cfg_logits(cond, uncond, 0.0), uncond)


def test_plausibility_filter_keeps_what_the_conditional_model_finds_plausible():
    cond = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.04, 0.06, 0.1, 0.8]]))
    guided = torch.tensor([[0.0, 1.0, 2.0, 9.0], [5.0, 4.0, 0.0, 1.0]])  # guidance favours the tail
    out = sampling.plausibility_filter(guided, cond, 0.25)  # p_c ≥ 0.25 · max p_c
    assert torch.isfinite(out).tolist() == [[True, True, True, False], [False, False, False, True]]
    torch.testing.assert_close(out[torch.isfinite(out)], torch.tensor([0.0, 1.0, 2.0, 1.0]))
    only_top = sampling.plausibility_filter(guided, cond, 1.0)
    assert torch.isfinite(only_top).sum(-1).tolist() == [1, 1]
    # the floor is relative to each row's own maximum, so shifting a row's logits changes nothing
    assert torch.equal(sampling.plausibility_filter(guided, cond + torch.tensor([[3.0], [-7.0]]),
                                                    0.25), out)  # fmt: skip


def test_plausibility_at_scale_one_is_truncation_of_the_conditional_model():
    model = _tiny_gpt()
    prompts = ar.guidance_prompts(ar.encode_captions(["a red circle in the center"] * 64))
    cond_prompts, uncond_prompts = prompts[:64], prompts[64:]
    image = (ar.IMAGE_OFFSET, ar.VOCAB_SIZE)
    with torch.no_grad():
        cond = sampling.restrict_range(model(cond_prompts)[:, -1], *image)
    plausible = cond >= cond.max(-1, keepdim=True).values + torch.log(torch.tensor(0.9))  # (64, V)
    guided = {"uncond_prompt": uncond_prompts, "scale": 8.0, "allowed": image}
    first = {a: sampling.generate(model, cond_prompts, 1, plausibility=a, **guided)
             for a in (None, 0.9)}  # fmt: skip
    assert not bool(plausible.gather(1, first[None]).all())  # strong guidance leaves the set …
    assert bool(plausible.gather(1, first[0.9]).all())  # … unless the constraint keeps it in
    a, b = cond_prompts[:2], uncond_prompts[:2]
    plain = sampling.generate(model, a, 6, plausibility=0.5, allowed=image)
    scale_one = sampling.generate(model, a, 6, uncond_prompt=b, scale=1.0, plausibility=0.5,
                                  allowed=image)  # fmt: skip
    assert torch.equal(plain, scale_one)


# --- generation ----------------------------------------------------------------------------------


def test_kv_cache_and_recompute_give_identical_tokens():
    model = _tiny_gpt()
    prompts = ar.guidance_prompts(ar.encode_captions(["a red circle in the center"] * 3))
    kwargs = {
        "uncond_prompt": prompts[3:], "scale": 3.0, "top_p": 0.9, "plausibility": 0.05,
        "allowed": (ar.IMAGE_OFFSET, ar.VOCAB_SIZE),
    }  # fmt: skip
    fast = sampling.generate(model, prompts[:3], 20, generator=torch.Generator().manual_seed(5),
                             **kwargs)  # fmt: skip
    slow = sampling.generate(model, prompts[:3], 20, generator=torch.Generator().manual_seed(5),
                             use_cache=False, **kwargs)  # fmt: skip
    assert torch.equal(fast, slow)
    assert bool((fast >= ar.IMAGE_OFFSET).all())


def test_guided_rows_are_independent_of_batch_company():
    model = _tiny_gpt()
    prompts = ar.guidance_prompts(ar.encode_captions(["a red circle in the center"] * 2))
    g = torch.Generator().manual_seed(0)
    both = sampling.generate(model, prompts[:2], 8, uncond_prompt=prompts[2:], scale=2.0,
                             generator=g)  # fmt: skip
    assert both.shape == (2, 8)
    assert not torch.equal(both[0], both[1])  # different random numbers per row


def test_scale_one_skips_the_unconditional_half():
    model = _tiny_gpt()
    prompts = ar.guidance_prompts(ar.encode_captions(["a red circle in the center"]))
    a = sampling.generate(model, prompts[:1], 6, uncond_prompt=prompts[1:], scale=1.0)
    b = sampling.generate(model, prompts[:1], 6)
    assert torch.equal(a, b)


def test_misaligned_unconditional_prompt_is_refused():
    model = _tiny_gpt()
    prompt = torch.full((2, 8), ar.BOI)
    with pytest.raises(ValueError, match=r"^uncond_prompt must have shape \(2, 8\)"):
        sampling.generate(model, prompt, 4, uncond_prompt=torch.full((2, 1), ar.BOI), scale=2.0)


@settings(max_examples=40, deadline=None)
@given(shape=shapes)
def test_filters_name_logits_on_wrong_shapes(shape):
    if len(shape) == 2:
        return
    for fn in (
        lambda x: sampling.apply_temperature(x, 1.0),
        lambda x: sampling.top_k_filter(x, 2),
        lambda x: sampling.top_p_filter(x, 0.5),
        lambda x: sampling.restrict_range(x, 0, 2),
    ):
        with pytest.raises(ValueError, match=r"^logits must have 2 dimensions \(B, V\)"):
            fn(torch.zeros(shape))


@settings(max_examples=30, deadline=None)
@given(value=st.one_of(st.floats(-10, 0), st.floats(1.0001, 5), st.none(), st.text(max_size=2)))
def test_bad_p_and_temperature(value):
    with pytest.raises((ValueError, TypeError), match="^p must be"):
        sampling.top_p_filter(_logits(), value)
    if isinstance(value, float) and value > 0:
        return
    with pytest.raises((ValueError, TypeError), match="^temperature must be"):
        sampling.apply_temperature(_logits(), value)


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="^k must be ≥ 1"):
        sampling.top_k_filter(_logits(), 0)
    with pytest.raises(ValueError, match="start < end"):
        sampling.restrict_range(_logits(), 5, 5)
    with pytest.raises(TypeError, match="^logits must be a floating-point"):
        sampling.top_p_filter(torch.zeros(2, 3, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match=r"^uncond must have shape \(4, 20\)"):
        sampling.cfg_logits(_logits(), _logits()[:2], 2.0)
    with pytest.raises(ValueError, match=r"^plausibility must be in \(0, 1\]"):
        sampling.plausibility_filter(_logits(), _logits(), 0.0)
    with pytest.raises(ValueError, match=r"^cond must have shape \(4, 20\)"):
        sampling.plausibility_filter(_logits(), _logits()[:2], 0.5)
    with pytest.raises(ValueError, match=r"^plausibility must be in \(0, 1\]"):
        sampling.generate(_tiny_gpt(), torch.full((1, 8), ar.BOI), 2, plausibility=1.5)
