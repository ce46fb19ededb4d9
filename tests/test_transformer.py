"""The GPT of mmcourse.transformer: causal, cache-equivalent, explicit masks, clear errors."""

from __future__ import annotations

import pytest
import torch

from mmcourse.transformer import (
    GPT,
    GPTConfig,
    KVCache,
    cached_attention,
    causal_mask,
    greedy_decode,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _gpt(**overrides) -> GPT:
    torch.manual_seed(0)
    config = {"vocab_size": 37, "block_size": 16, "n_layer": 2, "n_head": 2, "d_model": 16}
    return GPT(GPTConfig(**(config | overrides))).eval()


def _idx(b: int = 3, t: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randint(37, (b, t), generator=torch.Generator().manual_seed(seed))


def test_forward_shape_and_config():
    model = _gpt()
    assert model(_idx()).shape == (3, 10, 37)
    assert model.config["vocab_size"] == 37 and GPT(GPTConfig(**model.config)).cfg == model.cfg


def test_causal_future_tokens_do_not_change_the_past():
    model, idx = _gpt(), _idx()
    changed = idx.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % 37
    with torch.no_grad():
        a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_cache_prefill_then_steps_equals_full_forward():
    model, idx = _gpt(), _idx()
    with torch.no_grad():
        full = model(idx)
        cache = model.new_cache()
        parts = [model(idx[:, :4], cache=cache)]
        assert len(cache) == 4
        for i in range(4, 10):
            parts.append(model(idx[:, i : i + 1], cache=cache))
    assert len(cache) == 10
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-4)


def test_explicit_mask():
    model, idx = _gpt(), _idx()
    with torch.no_grad():
        causal = model(idx)
        same = model(idx, mask=causal_mask(10, 10))
        bidirectional = model(idx, mask=torch.ones(3, 10, 10, dtype=torch.bool))
    torch.testing.assert_close(same, causal)
    assert not torch.allclose(bidirectional[:, 0], causal[:, 0])  # position 0 now sees ahead


def test_block_mask_bidirectional_inside_a_segment():
    """The Transfusion-style mask of later chapters: causal overall, full inside positions 3–6."""
    mask = causal_mask(10, 10)
    mask[3:7, 3:7] = True
    model, idx = _gpt(), _idx()
    changed = idx.clone()
    changed[:, 6] = (changed[:, 6] + 1) % 37
    with torch.no_grad():
        a, b = model(idx, mask=mask), model(changed, mask=mask)
    torch.testing.assert_close(a[:, :3], b[:, :3])  # before the segment: unaffected
    assert not torch.allclose(a[:, 3], b[:, 3])  # inside: position 3 sees position 6


def test_causal_mask_with_offset():
    assert causal_mask(2, 5).tolist() == [[True] * 4 + [False], [True] * 5]
    assert torch.equal(causal_mask(4, 4), torch.ones(4, 4, dtype=torch.bool).tril())


def test_cached_attention_appends():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 1, 4, generator=g) for _ in range(3))
    past = (torch.randn(1, 2, 3, 4, generator=g), torch.randn(1, 2, 3, 4, generator=g))
    out, (k_all, v_all) = cached_attention(q, k, v, past)
    assert out.shape == (1, 2, 1, 4) and k_all.shape == v_all.shape == (1, 2, 4, 4)
    assert torch.equal(k_all[:, :, -1:], k) and torch.equal(v_all[:, :, :3], past[1])


def test_new_cache_is_empty():
    cache = _gpt().new_cache()
    assert isinstance(cache, KVCache) and len(cache) == 0 and len(cache.layers) == 2


def test_errors_name_the_argument():
    model = _gpt()
    with pytest.raises(ValueError, match="sequence too long"):
        model(_idx(t=17))
    cache = model.new_cache()
    model(_idx(t=10), cache=cache)
    with pytest.raises(ValueError, match="sequence too long: positions up to 17"):
        model(_idx(t=7), cache=cache)
    with pytest.raises(TypeError, match="^idx must have dtype torch.int64"):
        model(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"^idx must have 2 dimensions"):
        model(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"^mask must have shape \(10, 10\)"):
        model(_idx(), mask=torch.ones(9, 10, dtype=torch.bool))
    with pytest.raises(TypeError, match="^mask must have dtype torch.bool"):
        model(_idx(), mask=torch.ones(10, 10))
    with pytest.raises(ValueError, match="d_model must be divisible by n_head"):
        _gpt(d_model=15)


def test_tied_embeddings_and_small_size():
    model = _gpt()
    assert "head.weight" not in dict(model.named_parameters())
    assert sum(p.numel() for p in model.parameters()) < 20_000


def test_a_few_steps_learn_a_fixed_sequence():
    torch.manual_seed(0)
    model = _gpt().train()
    idx = _idx(b=4, t=12)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        logits = model(idx[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), idx[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_embeddings_hidden_states_and_mlp_hook():
    model, idx = _gpt(), _idx()
    logits, h = model(embeddings=model.tok_emb(idx), return_hidden=True)
    assert torch.equal(logits, model(idx)) and h.shape == (3, 10, 16)
    assert torch.equal(logits, h @ model.tok_emb.weight.T)
    calls = []

    def own(layer: int, z: torch.Tensor) -> torch.Tensor:  # each block's own MLP: no change
        calls.append(layer)
        return model.blocks[layer].mlp(z)

    assert torch.equal(model(idx, mlp=own), logits) and calls == [0, 1]
    assert not torch.equal(model(idx, mlp=lambda layer, z: z), logits)
    with pytest.raises(ValueError, match="exactly one of idx"):
        model(idx, embeddings=model.tok_emb(idx))
    with pytest.raises(ValueError, match="exactly one of idx"):
        model()
    with pytest.raises(ValueError, match="embeddings"):
        model(embeddings=torch.zeros(1, 3, 8))


def test_greedy_decode_takes_the_best_allowed_id_and_stops_rows():
    logits = torch.tensor([[0.0, 5.0, 1.0, 2.0], [0.0, 1.0, 9.0, 3.0]])
    allowed = torch.tensor([True, False, True, True])
    fed = []

    def step(ids: torch.Tensor) -> torch.Tensor:  # then row 0 says 0, row 1 says 3 (stop)
        fed.append(ids[:, 0].tolist())
        return torch.tensor([[4.0, 0, 0, 0], [0, 0, 0, 4.0]])

    rows = greedy_decode(logits, step, allowed, stop=3, max_len=4)
    assert rows == [[], [2]] and fed == [[3, 2]]  # row 0 stops at once, row 1 after one id
    assert greedy_decode(logits, step, allowed, stop=1, max_len=2) == [[3, 0], [2, 3]]  # cap
