"""The generator metrics against closed forms and their known behaviour: FID's Gaussian formula
and small-sample bias, KID's unbiasedness, precision/recall under mode dropping, CLIPScore's
clamp, the bootstrap interval, and clear errors."""

import math

import pytest
import torch

from mmcourse import evaluation as ev


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


Z = torch.zeros


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
    ],
)  # fmt: skip
def test_bad_input_names_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()
