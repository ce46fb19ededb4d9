"""Chapter 01 reference (mmcourse.vq): nearest-code search, the VQ layer and its gradients, EMA
codebooks, codebook health and its remedies, residual VQ, FSQ, and input validation."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmcourse.vq import (
    FSQ,
    ResidualVQ,
    VectorQuantizer,
    code_counts,
    code_usage,
    kmeans_init,
    nearest_code,
    nearest_code_naive,
    perplexity,
    quantize_losses,
    restart_dead_codes,
    squared_distances,
    straight_through,
)

DTYPES = [torch.float32, torch.float64]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _broadcast_distances(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    return (z[:, None, :] - codebook[None, :, :]).pow(2).sum(-1)  # (N, K)


def _grads(loss: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """d loss / d input for each input, zeros where the loss does not reach it."""
    grads = torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]


def _clusters(n_per: int = 40, k: int = 8, dim: int = 2, seed: int = 0) -> torch.Tensor:
    g = _gen(seed)
    centres = torch.randn(k, dim, generator=g) * 10
    noise = torch.randn(k, n_per, dim, generator=g) * 0.1
    return (centres[:, None, :] + noise).reshape(-1, dim)  # (k·n_per, dim)


def _mse(z: torch.Tensor, codebook: torch.Tensor) -> float:
    return (z - codebook[nearest_code(z, codebook)]).pow(2).mean().item()


# ------------------------------------------------------------------------ nearest-code search


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [37, 11])  # 11 = K: a transposed broadcast would go unnoticed
def test_squared_distances_equal_the_broadcast(dtype, n):
    g = _gen(1)
    codebook = torch.randn(11, 5, generator=g, dtype=dtype)
    z = torch.randn(n, 5, generator=g, dtype=dtype) * 2
    z[:3] = codebook[4:7]  # exact hits: expansion rounds near 0, must not go negative
    d = squared_distances(z, codebook)
    assert d.shape == (n, 11) and d.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(d, _broadcast_distances(z, codebook), rtol=tol, atol=tol)
    assert (d >= 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_nearest_code_is_the_argmin_of_the_broadcast_distances(dtype):
    g = _gen(2)
    z, codebook = torch.randn(300, 8, generator=g, dtype=dtype), torch.randn(50, 8, generator=g)
    codebook = codebook.to(dtype)
    want = _broadcast_distances(z, codebook).argmin(1)
    assert torch.equal(nearest_code(z, codebook), want)
    assert torch.equal(nearest_code_naive(z, codebook), want)
    assert nearest_code(z, codebook).dtype == torch.long


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chunk_size", [1, 7, 64, 300, 1000])  # 7 does not divide 300
def test_chunked_search_equals_unchunked(dtype, chunk_size):
    g = _gen(3)
    z, codebook = torch.randn(300, 6, generator=g), torch.randn(40, 6, generator=g)
    z, codebook = z.to(dtype), codebook.to(dtype)
    whole = nearest_code(z, codebook)
    assert torch.equal(nearest_code(z, codebook, chunk_size=chunk_size), whole)
    assert nearest_code(z[:0], codebook, chunk_size=chunk_size).shape == (0,)


def test_ties_go_to_the_lowest_index():
    # Integer-valued data: every distance is exact, so these ties are real ties.
    codebook = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    z = torch.tensor([[1.0, 0.0], [0.5, 0.0], [0.5, 0.5]])  # ties {1, 2}, {0, 1, 2}, all four
    want = torch.tensor([1, 0, 0])
    for search in (nearest_code, nearest_code_naive):
        assert torch.equal(search(z, codebook), want)
    assert torch.equal(nearest_code(z, codebook, chunk_size=2), want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("k", "d"), [(64, 16), (512, 64), (100, 33)])
def test_duplicated_codes_go_to_the_lowest_copy_like_the_broadcast(dtype, k, d):
    # Copies of a code are exact ties, yet a matrix product can round identical columns of
    # z @ codebook.T differently (in float64 a few % of rows picked the later copy). The direct
    # broadcast computes every copy the same way, so its argmin is the second formulation.
    g = _gen(k + d)
    half = torch.randn(k // 2, d, generator=g, dtype=dtype)
    codebook = torch.cat([half, half])[torch.randperm(k, generator=g)]  # every code twice
    z = torch.randn(3000, d, generator=g, dtype=dtype)
    want = _broadcast_distances(z, codebook).argmin(1)
    assert torch.equal(nearest_code_naive(z, codebook), want)
    assert torch.equal(nearest_code(z, codebook), want)
    assert torch.equal(nearest_code(z, codebook, chunk_size=777), want)
    first = [int((codebook == codebook[i]).all(1).nonzero()[0]) for i in range(k)]
    assert all(first[int(t)] == int(t) for t in want.unique())  # only first copies chosen


# ------------------------------------------------------------------------------ the VQ layer


def test_z_q_holds_the_chosen_codes_and_channels_are_dimension_1():
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 4)
    z_e = torch.randn(2, 4, 3, 5)  # (B, D, H, W) with H ≠ W
    out = vq(z_e)
    assert out.tokens.shape == (2, 3, 5) and out.tokens.dtype == torch.long
    rows = z_e.permute(0, 2, 3, 1).reshape(-1, 4)  # (B·H·W, D)
    assert torch.equal(out.tokens.flatten(), nearest_code(rows, vq.codebook.detach()))
    codes = vq.codebook.detach()[out.tokens].permute(0, 3, 1, 2)  # (B, D, H, W)
    assert out.z_q.shape == z_e.shape
    torch.testing.assert_close(out.z_q, codes, rtol=0, atol=1e-6)
    torch.testing.assert_close(vq.decode(out.tokens), codes)
    torch.testing.assert_close(vq.embed(out.tokens), codes.permute(0, 2, 3, 1))
    flat = vq(rows)  # (N, D) rows → (N,) tokens, same answer
    assert flat.tokens.shape == (30,) and torch.equal(flat.tokens, out.tokens.flatten())


def test_other_layouts_and_dtype_are_preserved():
    vq = VectorQuantizer(8, 3)
    video = vq(torch.randn(2, 3, 4, 5, 6))  # (B, D, T, H, W)
    assert video.tokens.shape == (2, 4, 5, 6) and video.z_q.shape == (2, 3, 4, 5, 6)
    out = vq(torch.randn(5, 3, dtype=torch.float64))
    assert out.z_q.dtype == torch.float64
    torch.testing.assert_close(out.z_q, vq.codebook.detach()[out.tokens].double())


def _layer_and_input(beta: float = 0.25, seed: int = 0):
    torch.manual_seed(seed)
    vq = VectorQuantizer(8, 3, beta=beta)
    z_e = torch.randn(4, 3, 2, 2, requires_grad=True)
    return vq, z_e


def test_gradients_go_where_they_should_and_nowhere_else():
    vq, z_e = _layer_and_input()
    out = vq(z_e)
    g = torch.randn_like(z_e)
    inputs = [z_e, vq.codebook]
    # Reconstruction: straight-through copies the gradient onto z_e; the codebook gets none.
    d_ze, d_cb = _grads((out.z_q * g).sum(), inputs)
    torch.testing.assert_close(d_ze, g)
    assert not d_cb.any()
    # Codebook loss: mean ‖sg(z_e) − e‖² → 2/(N·D) Σ_{i→k} (e_k − z_i) on code k, nothing on z_e.
    rows = z_e.detach().permute(0, 2, 3, 1).reshape(-1, 3)  # (N, D)
    codes = vq.codebook.detach()[out.tokens.flatten()]  # (N, D)
    d_ze, d_cb = _grads(out.codebook_loss, inputs)
    assert not d_ze.any()
    want = torch.zeros(8, 3).index_add_(0, out.tokens.flatten(), codes - rows) * 2 / rows.numel()
    torch.testing.assert_close(d_cb, want)
    assert d_cb.any()
    # Commitment loss: β mean ‖z_e − sg(e)‖² → 2β/(N·D) (z_e − e) on z_e, nothing on the codebook.
    d_ze, d_cb = _grads(out.commitment_loss, inputs)
    assert not d_cb.any()
    want = (2 * 0.25 / rows.numel() * (rows - codes)).reshape(4, 2, 2, 3).permute(0, 3, 1, 2)
    torch.testing.assert_close(d_ze, want)
    torch.testing.assert_close(out.loss, out.codebook_loss + out.commitment_loss)


def test_beta_multiplies_the_commitment_term_only():
    vq, z_e = _layer_and_input(beta=0.25)
    strict, _ = _layer_and_input(beta=1.0)
    a, b = vq(z_e), strict(z_e)
    assert torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.codebook_loss, b.codebook_loss)
    torch.testing.assert_close(b.commitment_loss, 4 * a.commitment_loss)
    assert a.commitment_loss > 0
    # The free function says the same: both terms are the same MSE, β on the second.
    z, e = torch.randn(6, 3), torch.randn(6, 3)
    codebook_loss, commitment_loss = quantize_losses(z, e, beta=0.5)
    torch.testing.assert_close(codebook_loss, (z - e).pow(2).mean())
    torch.testing.assert_close(commitment_loss, 0.5 * (z - e).pow(2).mean())


def test_straight_through_has_z_q_value_and_z_e_gradient():
    z_e = torch.randn(5, 3, requires_grad=True)
    z_q = torch.randn(5, 3, requires_grad=True)
    out = straight_through(z_e, z_q)
    torch.testing.assert_close(out, z_q, rtol=0, atol=1e-6)
    g = torch.randn(5, 3)
    d_ze, d_zq = _grads((out * g).sum(), [z_e, z_q])
    torch.testing.assert_close(d_ze, g)
    assert not d_zq.any()


def test_perplexity_in_the_output_counts_this_batch():
    vq = VectorQuantizer(4, 2)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0, 0], [10, 0], [0, 10], [10, 10]]))
    z = torch.tensor([[0.1, 0], [9, 0.2], [0, 9.5], [9, 9]])  # one vector per code
    assert torch.equal(vq(z).tokens, torch.arange(4))
    assert vq(z).perplexity.item() == pytest.approx(4.0)
    assert vq(z[:1].repeat(3, 1)).perplexity.item() == pytest.approx(1.0)


# ---------------------------------------------------------------------------- EMA codebooks


def _ema_layer(decay: float, eps: float = 1e-8) -> VectorQuantizer:
    vq = VectorQuantizer(3, 2, ema=True, decay=decay, eps=eps)
    start = torch.tensor([[0.0, 0.0], [4.0, 4.0], [-9.0, 9.0]])  # code 2 is far from the data
    vq.codebook.copy_(start)
    vq.code_sum.copy_(start)
    return vq


def test_ema_moves_used_codes_towards_their_assigned_means():
    vq = _ema_layer(decay=0.9)
    old = vq.codebook.clone()
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [5.0, 5.0], [5.0, 3.0]])
    out = vq(z)
    assert out.tokens.tolist() == [0, 0, 0, 1, 1]
    for k, rows in ((0, z[:3]), (1, z[3:])):
        n, mean = len(rows), rows.mean(0)
        # e_k = (γ m_k + (1 − γ) Σ z) / (γ N_k + (1 − γ) n_k) with m_k = e_k, N_k = 1 at start.
        want = (0.9 * old[k] + 0.1 * n * mean) / (0.9 + 0.1 * n)
        torch.testing.assert_close(vq.codebook[k], want, rtol=1e-5, atol=1e-6)
        assert (vq.codebook[k] - mean).norm() < (old[k] - mean).norm()
    torch.testing.assert_close(vq.codebook[2], old[2], rtol=1e-5, atol=1e-6)  # unused: untouched


def test_ema_leaves_unused_codes_alone_up_to_smoothing():
    vq = _ema_layer(decay=0.99, eps=0.1)
    old = vq.codebook[2].clone()
    vq(torch.tensor([[1.0, 0.0], [5.0, 5.0]]))
    new = vq.codebook[2]
    assert not torch.allclose(new, old)  # smoothing with a large ε shrinks it …
    torch.testing.assert_close(new / new.norm(), old / old.norm())  # … along its own direction
    assert 0.5 < new.norm() / old.norm() < 1


def test_ema_codebook_is_a_buffer_with_commitment_loss_only_and_frozen_in_eval():
    vq = _ema_layer(decay=0.5)
    assert list(vq.parameters()) == [] and "codebook" in dict(vq.named_buffers())
    z = torch.randn(10, 2, requires_grad=True)
    out = vq.eval()(z)
    assert torch.equal(vq.codebook, _ema_layer(decay=0.5).codebook)  # eval: no update
    assert out.codebook_loss.item() == 0.0
    torch.testing.assert_close(out.loss, out.commitment_loss)
    assert out.commitment_loss > 0 and _grads(out.loss, [z])[0].any()


def test_ema_training_fits_clustered_data():
    z = _clusters(n_per=20, k=4, seed=5)
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 2, ema=True, decay=0.5)
    vq.init_codebook(z, iters=0, generator=_gen(0))  # codes start on data points
    before = _mse(z, vq.codebook)
    for _ in range(5):
        vq(z)
    assert _mse(z, vq.codebook) < before


# --------------------------------------------------------------------------- codebook health


def test_usage_and_perplexity_on_hand_made_tokens():
    one = torch.full((20,), 3)
    uniform = torch.arange(8).repeat(5)
    half = torch.tensor([[0, 0], [1, 1]])
    skew = torch.tensor([0, 0, 0, 1])
    assert torch.equal(code_counts(half, 4), torch.tensor([2, 2, 0, 0]))
    assert code_usage(one, 8) == pytest.approx(1 / 8)
    assert code_usage(uniform, 8) == pytest.approx(1.0)
    assert code_usage(half, 4) == pytest.approx(0.5)
    assert perplexity(one, 8) == pytest.approx(1.0)
    assert perplexity(uniform, 8) == pytest.approx(8.0)
    assert perplexity(half, 4) == pytest.approx(2.0)
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert perplexity(skew, 4) == pytest.approx(math.exp(entropy))


def test_kmeans_init_beats_random_init_on_clustered_data():
    z = _clusters()  # 8 tight clusters, spread 0.1 per axis
    for seed in (1, 2, 3):  # 8 random rows rarely hit all 8 clusters; these seeds miss some
        random = kmeans_init(z, 8, iters=0, init="random", generator=_gen(seed))
        fitted = kmeans_init(z, 8, generator=_gen(seed))
        assert fitted.shape == (8, 2)
        assert _mse(z, fitted) < 0.05  # ≈ the clusters' own variance, 0.1² = 0.01
        assert _mse(z, fitted) < 0.1 * _mse(z, random)
        # Lloyd steps never make a random start worse, and here strictly improve it.
        lloyd = kmeans_init(z, 8, iters=10, init="random", generator=_gen(seed))
        assert _mse(z, lloyd) < _mse(z, random)


def test_kmeans_init_is_deterministic_given_a_generator():
    z = torch.randn(100, 3, generator=_gen(9))
    a = kmeans_init(z, 10, iters=3, generator=_gen(1))
    assert torch.equal(a, kmeans_init(z, 10, iters=3, generator=_gen(1)))
    assert not torch.equal(a, kmeans_init(z, 10, iters=3, generator=_gen(2)))


def test_restart_dead_codes_replaces_exactly_the_unused_codes():
    codebook = torch.arange(12.0).reshape(6, 2)
    old = codebook.clone()
    z = torch.randn(10, 2, generator=_gen(4)) + 100
    counts = torch.tensor([3, 0, 2, 0, 0, 1])
    assert restart_dead_codes(codebook, counts, z, generator=_gen(0)) == 3
    dead = counts == 0
    assert torch.equal(codebook[~dead], old[~dead])
    revived = codebook[dead]
    assert all((row == z).all(1).any() for row in revived)  # each is a batch vector …
    assert len(torch.unique(revived, dim=0)) == 3  # … and no two are the same one
    again = old.clone()
    restart_dead_codes(again, counts, z, generator=_gen(0))
    assert torch.equal(again, codebook)  # same seed, same codes
    assert restart_dead_codes(old.clone(), counts, z, threshold=2) == 4  # counts < 2
    assert restart_dead_codes(old.clone(), counts + 1, z) == 0


@pytest.mark.parametrize("ema", [False, True])
def test_restarting_dead_codes_revives_them_in_the_layer(ema):
    z = _clusters(n_per=10, k=8, seed=2)
    vq = VectorQuantizer(8, 2, ema=ema, decay=0.8)
    with torch.no_grad():  # all codes but one far from the data: 7 dead codes
        vq.codebook.copy_(torch.full((8, 2), 1e3))
        vq.codebook[0] = 0.0
        if ema:
            vq.code_sum.copy_(vq.codebook)
    tokens = vq(z).tokens
    assert code_usage(tokens, 8) == pytest.approx(1 / 8)
    assert vq.restart_dead_codes(z, code_counts(tokens, 8), generator=_gen(0)) == 7
    revived = vq(z).tokens.unique()  # for EMA this also runs an update
    assert set(range(1, 8)) <= set(revived.tolist())  # each revived code wins its own row
    assert (vq.codebook.detach().abs() < 100).all()  # EMA statistics did not pull them back


# -------------------------------------------------------------------------------- residual VQ


def test_residual_vq_shapes_and_decoding():
    torch.manual_seed(0)
    rvq = ResidualVQ(8, 4, num_stages=3)
    z_e = torch.randn(2, 4, 3, 5)
    out = rvq(z_e)
    assert out.tokens.shape == (2, 3, 5, 3) and out.z_q.shape == z_e.shape
    assert out.stage_errors.shape == (3,)
    torch.testing.assert_close(rvq.decode(out.tokens), out.z_q.detach(), rtol=0, atol=1e-5)
    coarse = rvq.stages[0].decode(out.tokens[..., 0])
    torch.testing.assert_close(rvq.decode(out.tokens[..., :1]), coarse)
    torch.testing.assert_close(out.stage_errors[-1], (out.z_q - z_e).pow(2).mean())


def test_residual_vq_error_shrinks_stage_by_stage():
    z = torch.randn(256, 8, generator=_gen(6))
    rvq = ResidualVQ(16, 8, num_stages=4)
    rvq.init_codebooks(z, iters=5, generator=_gen(0))
    errors = rvq(z).stage_errors
    assert errors[0] < z.pow(2).mean()
    assert (errors[1:] < errors[:-1]).all(), errors


def test_residual_vq_gradients():
    torch.manual_seed(1)
    rvq = ResidualVQ(8, 3, num_stages=3)
    z_e = torch.randn(6, 3, requires_grad=True)
    out = rvq(z_e)
    g = torch.randn_like(z_e)
    torch.testing.assert_close(_grads((out.z_q * g).sum(), [z_e])[0], g)  # once, not per stage
    codebooks = [vq.codebook for vq in rvq.stages]
    assert all(grad.any() for grad in _grads(out.loss, codebooks))
    total = sum(vq(r).loss for vq, r in _residuals(rvq, z_e))
    torch.testing.assert_close(out.loss, total)


def _residuals(rvq, z_e):
    residual = z_e
    for vq in rvq.stages:
        yield vq, residual
        residual = residual - vq(residual).z_q.detach()


# ---------------------------------------------------------------- finite scalar quantization


def test_fsq_values_lie_on_the_grid():
    fsq = FSQ((8, 5, 4, 3))
    z_e = torch.randn(64, 4, 3, generator=_gen(7)) * 3  # (B, D, L)
    out = fsq(z_e)
    assert out.z_q.shape == z_e.shape and out.tokens.shape == (64, 3)
    assert out.loss.item() == 0.0
    for d, level in enumerate((8, 5, 4, 3)):
        steps = out.z_q[:, d] * (level // 2)
        assert torch.equal(steps, steps.round())
        grid = torch.arange(-(level // 2), (level - 1) // 2 + 1).float()
        assert torch.equal(torch.unique(steps), grid)  # every level used, nothing else
    assert out.z_q.abs().max() <= 1
    assert torch.equal(fsq.quantize(torch.zeros(4)), torch.zeros(4))  # bound(0) = 0
    extremes = FSQ((2, 3)).quantize(torch.tensor([[-20.0, -20.0], [20.0, 20.0]]))
    assert torch.equal(extremes, torch.tensor([[-1.0, -1.0], [0.0, 1.0]]))  # L = 2 works too


def test_fsq_rounding_is_straight_through():
    fsq = FSQ((8, 5, 5, 5))
    z = torch.randn(10, 4, requires_grad=True)
    (d_round,) = _grads(fsq.quantize(z).sum(), [z])
    half = torch.tensor([4.0, 2.0, 2.0, 2.0])
    (d_smooth,) = _grads((fsq.bound(z) / half).sum(), [z])
    torch.testing.assert_close(d_round, d_smooth)
    assert (d_round > 0).all()


def test_fsq_index_round_trip_over_the_whole_codebook():
    fsq = FSQ((8, 5, 5, 5))
    assert fsq.num_codes == 1000 and fsq.codebook.shape == (1000, 4)
    tokens = torch.arange(1000)
    codes = fsq.indices_to_codes(tokens)
    assert torch.equal(fsq.codes_to_indices(codes), tokens)
    assert len(torch.unique(codes, dim=0)) == 1000
    z_e = torch.randn(3, 4, 2, 2, generator=_gen(8))
    out = fsq(z_e)
    torch.testing.assert_close(fsq.decode(out.tokens), out.z_q.detach())


# -------------------------------------------------------------------------------- validation


def test_wrong_inputs_name_the_argument():
    z, codebook = torch.randn(5, 3), torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"^z must have D = 3 columns like codebook"):
        squared_distances(torch.randn(5, 4), codebook)
    with pytest.raises(TypeError, match=r"^z must have codebook's dtype torch.float32"):
        nearest_code(z.double(), codebook)
    with pytest.raises(TypeError, match="^z must be a floating-point tensor"):
        nearest_code_naive(z.long(), codebook)
    with pytest.raises(ValueError, match="^codebook must have 2 dimensions"):
        nearest_code(z, codebook[None])
    with pytest.raises(ValueError, match="^chunk_size must be ≥ 1"):
        nearest_code(z, codebook, chunk_size=0)
    with pytest.raises(ValueError, match="^z_q must have z_e's shape"):
        quantize_losses(z, z[:2])
    with pytest.raises(ValueError, match=r"^beta must be in \[0, inf\)"):
        quantize_losses(z, z, beta=-1.0)
    with pytest.raises(ValueError, match="^num_codes must be ≥ 1"):
        VectorQuantizer(0, 3)
    vq = VectorQuantizer(4, 3)
    with pytest.raises(ValueError, match="^z_e must have D = 3 channels in dimension 1"):
        vq(torch.randn(2, 3, 4).transpose(1, 2))
    with pytest.raises(TypeError, match="^tokens must be an integer tensor"):
        vq.decode(torch.zeros(3))
    with pytest.raises(ValueError, match=r"^tokens must hold code indices in \[0, 4\)"):
        vq.embed(torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="^z must hold at least num_codes = 8 rows"):
        kmeans_init(z, 8)
    with pytest.raises(ValueError, match="^usage_counts must have shape"):
        restart_dead_codes(codebook, torch.zeros(5), z)
    with pytest.raises(ValueError, match=r"^levels\[1\] must be ≥ 2"):
        FSQ((8, 1))
    with pytest.raises(ValueError, match=r"^tokens must have shape \(\.\.\., n\)"):
        ResidualVQ(4, 3, num_stages=2).decode(torch.zeros(5, 3, dtype=torch.long))


shapes = st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple)
dtypes = st.sampled_from([torch.float16, torch.float32, torch.float64, torch.int64, torch.bool])


@settings(max_examples=40, deadline=None)
@given(shape=shapes, dtype=dtypes)
def test_search_names_z_on_any_wrong_layout(shape, dtype):
    if len(shape) == 2 and shape[1] == 3 and dtype == torch.float32:
        return
    with pytest.raises((ValueError, TypeError), match="^z must"):
        nearest_code(torch.zeros(shape, dtype=dtype), torch.randn(4, 3))


@settings(max_examples=40, deadline=None)
@given(shape=shapes)
def test_quantizer_names_z_e_on_any_wrong_layout(shape):
    if len(shape) >= 2 and shape[1] == 3:
        return
    with pytest.raises(ValueError, match="^z_e must have D = 3 channels"):
        VectorQuantizer(4, 3)(torch.zeros(shape))


def test_layer_takes_a_custom_search():
    """`search=` swaps the nearest-code search (chapter 09's kernel drops in here); the losses and
    the straight-through gradient stay the layer's own."""
    calls = []

    def search(z, codebook):
        calls.append(z.requires_grad)
        return nearest_code(z, codebook)

    z_e = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    plain, custom = VectorQuantizer(16, 4), VectorQuantizer(16, 4, search=search)
    custom.load_state_dict(plain.state_dict())
    a, b = plain(z_e), custom(z_e)
    assert calls == [False], "search runs once, on detached inputs"
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.loss, b.loss)
    with pytest.raises(TypeError, match="^search must be a function"):
        VectorQuantizer(16, 4, search="fused")
