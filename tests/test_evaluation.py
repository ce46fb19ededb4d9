"""The generator metrics against closed forms and their known behaviour: FID's Gaussian formula
and small-sample bias, KID's unbiasedness, precision/recall under mode dropping, CLIPScore's
clamp, the bootstrap interval; Bradley–Terry strengths recovered from simulated preferences,
their symmetries and the prior; Kendall's τ; and clear errors."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmcourse import evaluation as ev
from mmcourse.checks._placement import PlacementAudit


def _draw(n: int, d: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    return shift + scale * torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_frechet_distance_of_diagonal_gaussians_has_its_closed_form():
    # Σ diagonal: ‖μ_p − μ_q‖² + Σ_i (σ_p,i − σ_q,i)²
    mu_p, mu_q = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    sd_p, sd_q = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([3.0, 2.0, 1.5])
    p = ev.Gaussian(mu_p.double(), torch.diag(sd_p**2).double())
    q = ev.Gaussian(mu_q.double(), torch.diag(sd_q**2).double())
    expected = (mu_p - mu_q).pow(2).sum() + (sd_p - sd_q).pow(2).sum()
    assert ev.frechet_distance(p, q) == pytest.approx(float(expected), rel=1e-12)


def test_fid_is_zero_for_one_set_symmetric_and_blind_to_rotations():
    x, y = _draw(500, 6, 0), _draw(400, 6, 1, shift=0.5, scale=1.5)
    assert ev.fid(x, x) == pytest.approx(0.0, abs=1e-9)
    assert ev.fid(x, y) == pytest.approx(ev.fid(y, x), rel=1e-9)
    q, _ = torch.linalg.qr(_draw(6, 6, 2).double())  # an orthogonal matrix
    x, y = x.double(), y.double()
    assert ev.fid(x @ q, y @ q) == pytest.approx(ev.fid(x, y), rel=1e-9)


def test_square_root_of_a_singular_covariance_is_real_and_squares_back():
    z = _draw(3, 5, 3).double()
    a = z.T @ z  # (5, 5) of rank 3: two zero eigenvalues, rounding may make them negative
    root = ev.sqrtm_psd(a)
    assert not root.isnan().any()
    torch.testing.assert_close(root @ root, a, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(root, root.T)


def test_fewer_samples_than_features_warns_and_still_gives_a_number():
    with pytest.warns(UserWarning, match=r"10 samples of 16 features.*rank-deficient"):
        value = ev.fid(_draw(10, 16, 4), _draw(10, 16, 5))
    assert math.isfinite(value) and value > 0


def test_kid_is_unbiased_where_fid_is_biased_upwards_at_small_n():
    # both sets from one distribution: the population distance is 0
    kids = [ev.kid(_draw(30, 4, 2 * s), _draw(30, 4, 2 * s + 1)) for s in range(200)]
    mean = sum(kids) / len(kids)
    stderr = torch.tensor(kids).std().item() / math.sqrt(len(kids))
    assert abs(mean) < 3 * stderr  # unbiased: centred on 0, negative values included
    assert min(kids) < 0
    small = sum(ev.fid(_draw(30, 4, 2 * s), _draw(30, 4, 2 * s + 1)) for s in range(20)) / 20
    large = sum(ev.fid(_draw(3000, 4, 2 * s), _draw(3000, 4, 2 * s + 1)) for s in range(5)) / 5
    assert small > 10 * large > 0  # FID's bias shrinks with N


def test_kid_grows_with_the_shift():
    x = _draw(300, 4, 6)
    near, far = ev.kid(x, _draw(300, 4, 7, shift=0.3)), ev.kid(x, _draw(300, 4, 7, shift=1.0))
    assert 0 < near < far


def test_mode_dropping_keeps_precision_and_loses_recall():
    centres = torch.tensor([[-6.0, 0.0], [6.0, 0.0]])
    real = torch.cat([c + _draw(200, 2, 8 + i) for i, c in enumerate(centres)])
    dropped = centres[0] + _draw(400, 2, 10)  # only the first mode
    pr = ev.precision_recall(real, dropped, k=3)
    assert pr.precision > 0.9 and 0.4 < pr.recall < 0.6
    full = ev.precision_recall(
        real, torch.cat([c + _draw(200, 2, 11 + i) for i, c in enumerate(centres)])
    )
    assert full.precision > 0.9 and full.recall > 0.9


def test_clip_score_is_w_times_the_clamped_cosine():
    img = torch.tensor([[1.0, 0.0], [1.0, 0.0], [2.0, 2.0]])
    txt = torch.tensor([[3.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    torch.testing.assert_close(ev.clip_score(img, txt), torch.tensor([2.5, 0.0, 0.0]).double())
    torch.testing.assert_close(ev.clip_score(img[:1], txt[:1], w=1.0), torch.ones(1).double())


def test_bootstrap_interval_brackets_the_estimate_and_is_seeded():
    x, y = _draw(200, 3, 12), _draw(200, 3, 13, shift=0.5)
    value, low, high = ev.bootstrap_interval(ev.fid, x, y, rounds=50)
    assert value == ev.fid(x, y) and low < value < high
    assert ev.bootstrap_interval(ev.fid, x, y, rounds=50) == (value, low, high)


# --- preferences: Bradley–Terry and Kendall's τ -------------------------------------------------


def _constant_quality(q: torch.Tensor, captions: int = 3, samples: int = 2) -> torch.Tensor:
    """Every sample of generator i scores q[i]: the rater is then exactly Bradley–Terry."""
    return q[:, None, None].expand(len(q), captions, samples).contiguous()  # (G, C, S)


def test_bradley_terry_recovers_the_strengths_behind_many_comparisons():
    # P(i ≻ j) = σ((q_i − q_j)/noise): log-strengths q/noise, centred
    q = torch.tensor([0.3, -1.2, 1.5, 0.0, -0.4, 0.9]).double()
    wins = ev.simulate_comparisons(_constant_quality(q), comparisons=100_000, noise=0.5, seed=1)
    strengths = ev.bradley_terry(wins)
    expected = (q - q.mean()) / 0.5
    assert strengths.dtype == torch.float64 and strengths.sum().abs() < 1e-9
    assert ev.kendall_tau(strengths, q) == 1.0  # the exact order
    assert (strengths - expected).abs().max() < 0.05  # ≈ 2σ of 100,000 comparisons


def test_bradley_terry_of_two_generators_is_the_log_odds():
    # two generators: p_0/p_1 = wins[0, 1]/wins[1, 0] exactly, ± half the log-odds after centring
    half = math.log(3) / 2
    exact = ev.bradley_terry(PAIR, prior=0)
    torch.testing.assert_close(exact, torch.tensor([half, -half]).double())
    smoothed = ev.bradley_terry(PAIR)  # (3 + ½) / (1 + ½)
    torch.testing.assert_close(smoothed, torch.tensor([1, -1]).double() * math.log(3.5 / 1.5) / 2)


def test_bradley_terry_solves_the_likelihood_equations():
    # the maximum-likelihood fixed point: W_i = Σ_j n_ij p_i / (p_i + p_j)
    wins = ev.simulate_comparisons(torch.randn(5, 4, 3, dtype=torch.float64), 2000, 1.0, seed=3)
    p = ev.bradley_terry(wins, prior=0).exp()
    expected = ((wins + wins.T) * p[:, None] / (p[:, None] + p[None, :])).sum(dim=1)
    torch.testing.assert_close(wins.sum(dim=1), expected, rtol=1e-8, atol=1e-8)


def test_bradley_terry_follows_relabelling_and_role_reversal():
    wins = ev.simulate_comparisons(torch.randn(5, 4, 3, dtype=torch.float64), 3000, 1.0, seed=4)
    strengths = ev.bradley_terry(wins)
    perm = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(ev.bradley_terry(wins[perm][:, perm]), strengths[perm])
    torch.testing.assert_close(ev.bradley_terry(wins.T), -strengths)  # winners become losers
    torch.testing.assert_close(ev.bradley_terry(wins.long()), strengths)  # counts of any dtype


def test_a_generator_that_never_wins_stays_finite_under_the_prior():
    wins = torch.tensor([[0.0, 5.0, 9.0], [4.0, 0.0, 7.0], [0.0, 0.0, 0.0]])
    strengths = ev.bradley_terry(wins)
    assert strengths.isfinite().all()
    assert strengths[2] < strengths[1] < strengths[0]
    weaker = ev.bradley_terry(wins, prior=0.1)
    assert weaker[2] < strengths[2]  # a weaker prior lets it sink further
    with pytest.raises(ValueError, match="no finite Bradley–Terry fit"):
        ev.bradley_terry(wins, prior=0)


def test_simulated_comparisons_follow_the_rater_model():
    # two generators, constant qualities 1 and 0: P(0 ≻ 1) = σ(1/noise)
    n = 20_000
    wins = ev.simulate_comparisons(_constant_quality(torch.tensor([1.0, 0.0])), n, 0.5, seed=5)
    assert wins.sum() == n and wins.diagonal().eq(0).all()
    share, p = float(wins[0, 1] / n), 1 / (1 + math.exp(-2))
    assert abs(share - p) < 4 * math.sqrt(p * (1 - p) / n)
    coin = ev.simulate_comparisons(_constant_quality(torch.tensor([1.0, 0.0])), n, 1e6, seed=5)
    assert abs(float(coin[0, 1] / n) - 0.5) < 0.02  # a very noisy rater: a coin flip
    again = ev.simulate_comparisons(_constant_quality(torch.tensor([1.0, 0.0])), n, 0.5, seed=5)
    assert torch.equal(again, wins)


def test_simulated_comparisons_draw_the_samples_of_one_caption():
    # generator 0 is better only on caption 0, generator 1 only on caption 1: even overall
    quality = torch.tensor([[[2.0, 2.0], [-2.0, -2.0]], [[-2.0, -2.0], [2.0, 2.0]]])
    wins = ev.simulate_comparisons(quality, 20_000, 0.1, seed=6)
    assert abs(float(wins[0, 1] / wins.sum()) - 0.5) < 0.02


def test_preferences_stay_on_the_device(device):
    quality = torch.randn(4, 3, 2, generator=torch.Generator().manual_seed(7)).to(device)
    with PlacementAudit():
        wins = ev.simulate_comparisons(quality, 500, 1.0, seed=7)
        strengths = ev.bradley_terry(wins)
        tau = ev.kendall_tau(strengths, quality.mean(dim=(1, 2)))
    assert wins.device == strengths.device == quality.device and wins.dtype == torch.float64
    assert torch.equal(wins.cpu(), ev.simulate_comparisons(quality.cpu(), 500, 1.0, seed=7))
    assert -1 <= tau <= 1


def test_kendall_tau_counts_agreeing_pairs():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert ev.kendall_tau(a, a) == 1.0 and ev.kendall_tau(a, -a) == -1.0
    assert ev.kendall_tau(a, a.exp() * 10) == 1.0  # only the order counts
    assert ev.kendall_tau(a, torch.tensor([2.0, 1.0, 3.0, 4.0])) == pytest.approx(4 / 6)
    # τ_b with a tie in b: 5 concordant, 0 discordant, 1 tied of 6 pairs → 5/√(6·5)
    assert ev.kendall_tau(a, torch.tensor([1, 1, 3, 4])) == pytest.approx(5 / math.sqrt(30))


Z = torch.zeros
PAIR = torch.tensor([[0.0, 3.0], [1.0, 0.0]])  # generator 0 beat 1 three times, lost once


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: ev.fid(Z(5), Z(5, 2)), ValueError, "^real must have 2 dim"),
        (lambda: ev.fid(Z(5, 3), Z(5, 2)), ValueError, "^generated must have D = 3"),
        (lambda: ev.fid(Z(1, 3), Z(5, 3)), ValueError, "^real needs at least 2"),
        (lambda: ev.kid(Z(5, 3, dtype=torch.long), Z(5, 3)), TypeError, "^real must be a float"),
        (lambda: ev.precision_recall(Z(4, 2), Z(9, 2), k=4), ValueError,
         "^k must be below the smaller set.s size 4"),
        (lambda: ev.sqrtm_psd(torch.eye(2).triu(-1) + torch.ones(2, 2).triu(1)), ValueError,
         "^a must be symmetric"),
        (lambda: ev.clip_score(Z(3, 4), Z(2, 4)), ValueError, "^text_emb must have shape"),
        (lambda: ev.bootstrap_interval(ev.fid, Z(4, 2), level=1.0), ValueError,
         r"^level must be in \(0, 1\)"),
        (lambda: ev.bradley_terry(Z(3, 2)), ValueError,
         r"^wins must be square \(G, G\), got \(3, 2\)"),
        (lambda: ev.bradley_terry(Z(1, 1)), ValueError, "^wins must compare at least 2"),
        (lambda: ev.bradley_terry(torch.eye(2, dtype=torch.bool)), TypeError,
         "^wins must hold real counts"),
        (lambda: ev.bradley_terry(-PAIR), ValueError, "^wins must hold finite counts ≥ 0"),
        (lambda: ev.bradley_terry(PAIR + torch.eye(2)), ValueError, "^wins must have a zero diag"),
        (lambda: ev.bradley_terry(torch.block_diag(PAIR, Z(1, 1))), ValueError,
         r"^wins has generators that were never compared: \[2\]"),
        (lambda: ev.bradley_terry(PAIR.triu(), prior=0), ValueError,
         "^wins has no finite Bradley–Terry fit.*prior > 0"),
        (lambda: ev.bradley_terry(PAIR, prior=-1), ValueError, r"^prior must be in \[0, inf"),
        (lambda: ev.bradley_terry(PAIR, iterations=0), ValueError, "^iterations must be ≥ 1"),
        (lambda: ev.simulate_comparisons(Z(2, 3), 10, 1.0), ValueError,
         "^quality must have 3 dim"),
        (lambda: ev.simulate_comparisons(Z(1, 3, 2), 10, 1.0), ValueError,
         "^quality needs at least 2 generators"),
        (lambda: ev.simulate_comparisons(Z(2, 3, 2, dtype=torch.long), 10, 1.0), TypeError,
         "^quality must be a floating"),
        (lambda: ev.simulate_comparisons(Z(2, 1, 1) / 0, 10, 1.0), ValueError,
         "^quality must be finite"),
        (lambda: ev.simulate_comparisons(Z(2, 1, 1), 0, 1.0), ValueError,
         "^comparisons must be ≥ 1"),
        (lambda: ev.simulate_comparisons(Z(2, 1, 1), 10, 0.0), ValueError,
         r"^noise must be in \(0, inf"),
        (lambda: ev.simulate_comparisons(Z(2, 1, 1), 10, 1.0, seed=1.5), TypeError,
         "^seed must be an int"),
        (lambda: ev.kendall_tau(Z(3), Z(4)), ValueError, r"^b must have shape \(3\), got \(4,\)"),
        (lambda: ev.kendall_tau(Z(1), Z(1)), ValueError, "^a must hold at least 2 scores"),
        (lambda: ev.kendall_tau(torch.arange(3.0), Z(3)), ValueError,
         "^b holds one value throughout"),
        (lambda: ev.kendall_tau(torch.tensor([0.0, math.nan]), Z(2) + 1), ValueError,
         "^a and b must not hold NaN"),
    ],
)  # fmt: skip
def test_bad_input_names_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


DTYPES = [torch.float16, torch.float32, torch.float64, torch.int64, torch.uint8, torch.bool]
SHAPES = st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple)


@settings(max_examples=60, deadline=None)
@given(shape=SHAPES, dtype=st.sampled_from(DTYPES))
def test_wins_without_comparisons_or_of_the_wrong_layout_are_refused(shape, dtype):
    # a zero tensor never holds a comparison: every layout, right or wrong, must be refused
    with pytest.raises((ValueError, TypeError), match="^wins (must|has)"):
        ev.bradley_terry(torch.zeros(shape, dtype=dtype))


@settings(max_examples=60, deadline=None)
@given(shape=SHAPES, dtype=st.sampled_from(DTYPES))
def test_quality_of_the_wrong_layout_is_refused(shape, dtype):
    good = len(shape) == 3 and shape[0] >= 2 and min(shape) >= 1 and dtype.is_floating_point
    if good:
        assert ev.simulate_comparisons(torch.zeros(shape, dtype=dtype), 5, 1.0).sum() == 5
        return
    with pytest.raises((ValueError, TypeError), match="^quality (must|needs)"):
        ev.simulate_comparisons(torch.zeros(shape, dtype=dtype), 5, 1.0)
