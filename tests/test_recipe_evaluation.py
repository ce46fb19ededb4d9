"""Chapter 10's recipe (mmcourse/recipes/evaluation.py): the shipped samples of every generator
(data/evaluation_samples.pt) load and belong to the shipped weights, the features are
standardized, the metrics separate real from noise and catch a dropped mode, and the
leaderboard covers every generator with intervals around its values."""

from __future__ import annotations

import pytest
import torch

from mmcourse import checkpoints, recipes, train
from mmcourse.checks._placement import PlacementAudit, is_host
from mmcourse.data import DigitsDataset
from mmcourse.recipes import evaluation as ev

COMMAND = "python -m mmcourse.train evaluation_samples"


@pytest.fixture(scope="module")
def samples() -> dict[str, ev.Samples]:
    return ev.load_samples()


def test_shipped_samples_have_the_documented_layout(samples):
    assert tuple(samples) == ev.GENERATORS
    labels = recipes.diffusion.caption_labels(ev.PER_CAPTION)  # (450, 3)
    for name, s in samples.items():
        assert s.images.shape == (450, 3, 32, 32) and s.images.dtype == torch.float32, name
        assert s.images.min() >= 0 and s.images.max() <= 1
        assert torch.equal(s.images * 255, (s.images * 255).round())  # 8-bit values
        assert torch.equal(s.labels, labels)
        assert 0 < s.seconds_per_image < 10 and s.params > 10_000 and s.settings
    ms = {name: s.seconds_per_image for name, s in samples.items()}
    assert ms["ddpm"] > 10 * ms["ddim"]  # 1000 steps against 50
    stored = torch.load(ev.SAMPLES_PATH, weights_only=True)
    assert stored["command"] == COMMAND and stored["seed"] == 0 and stored["machine"]


def test_rebuild_is_a_train_target():
    assert recipes.REBUILDS["evaluation_samples"] is ev.rebuild_samples
    assert "evaluation_samples" in train.TARGETS


def test_missing_unreadable_or_stale_samples_name_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=COMMAND):
        ev.load_samples(tmp_path / "nope.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(checkpoints.CheckpointError, match=f"could not be read.*{COMMAND}"):
        ev.load_samples(tmp_path / "bad.pt")
    stored = torch.load(ev.SAMPLES_PATH, weights_only=True)
    stored["generators"]["ar"]["weights"]["ar"] = "0" * 64  # a tampered digest
    torch.save(stored, tmp_path / "stale.pt")
    with pytest.raises(checkpoints.CheckpointError, match=f"other weights.*ar_shapes.*{COMMAND}"):
        ev.load_samples(tmp_path / "stale.pt")


def test_digest_names_the_weights():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert checkpoints.digest(a) == checkpoints.digest(b) and len(checkpoints.digest(a)) == 64
    with torch.no_grad():
        b.bias.add_(1e-6)
    assert checkpoints.digest(a) != checkpoints.digest(b)


@pytest.mark.parametrize("extractor", ev.EXTRACTORS)
def test_features_are_standardized_by_the_real_reference(extractor):
    images, _ = ev.real_images(ev.REFERENCE, ev.REFERENCE_SEED)
    f = ev.features(images, extractor)
    mean, std = ev.reference_stats(extractor)
    assert f.dtype == torch.float32 and f.shape == (ev.REFERENCE, len(mean))
    assert f.mean(0).abs().max() < 1e-3
    live = f.std(0) > 0.5  # a dead unit (never moved by the reference) stays at 0
    assert torch.allclose(f.std(0)[live], torch.ones(int(live.sum())), atol=1e-3)
    assert live.float().mean() > 0.7 and (std > 0).all()


def test_real_images_are_seeded_and_held_out():
    a, la = ev.real_images(50, seed=12)
    b, lb = ev.real_images(50, seed=12)
    assert torch.equal(a, b) and torch.equal(la, lb) and a.shape == (50, 3, 32, 32)
    assert not torch.equal(a, ev.real_images(50, seed=13)[0])
    assert recipes.load("judge", device="cpu").score(a, la)["all"] > 0.9


def test_real_halves_are_far_closer_than_noise():
    floors = ev.floors(rounds=20)
    assert floors["real_fid"][2] * 20 < floors["noise_fid"][1]  # whole intervals apart
    assert abs(floors["real_kid"][0]) * 100 < floors["noise_kid"][0]
    for key in ("real_fid", "real_kid", "noise_fid", "noise_kid"):
        value, low, high = floors[key]
        assert low <= value <= high, key


def test_small_n_bias_shrinks_with_n_and_kid_stays_near_zero():
    with pytest.warns(UserWarning, match="rank-deficient"):  # N = 100 < D = 128: said aloud
        bias = ev.small_n_bias(ns=(100, 1000, 5000), draws=4)
    assert [bias[n].draws for n in (100, 1000, 5000)] == [4, 4, 1]  # disjoint slices only
    assert bias[100].fid[1] > 2 * bias[1000].fid[2] > 0  # the lowest at 100 above the highest
    assert abs(bias[1000].kid[0]) < 0.05 * bias[1000].fid[0]
    assert bias[100].kid[1] < 0 < bias[100].kid[2]  # unbiased: the draws straddle 0
    assert bias[5000].fid[1] == bias[5000].fid[0] == bias[5000].fid[2]


def test_a_dropped_mode_costs_recall_not_precision():
    dropped = ev.mode_dropped(n=500, rounds=20)
    assert dropped["recall"][2] < 0.75 < dropped["precision"][1]
    assert dropped["fid"][0] > ev.floors(n=500, rounds=5)["real_fid"][0]


def test_leaderboard_covers_every_generator(samples):
    rows = ev.leaderboard(samples, rounds=20)
    assert [r.name for r in rows] == list(ev.GENERATORS)
    for row in rows:
        for measure in ("fid", "kid", "precision", "recall", "clip_score", "judge"):
            value, low, high = getattr(row, measure)
            assert low <= value <= high, (row.name, measure)
        assert row.ms_per_image > 0 and row.params > 0
    by = {r.name: r for r in rows}
    assert by["ddpm"].fid[0] < ev.floors(rounds=5)["noise_fid"][0] / 10
    assert by["ddim"].judge[0] > 0.8


def test_preference_quality_has_one_number_per_sample(samples):
    few = {k: samples[k] for k in ("ddim", "ar")}
    q = ev.preference_quality(few, rater="judge")
    assert q.shape == (2, 90, ev.PER_CAPTION) and q.dtype == torch.float64 and (q <= 0).all()
    c = ev.preference_quality(few, rater="clip_score")
    assert c.shape == (2, 90, ev.PER_CAPTION) and (c >= 0).all() and (c <= 2.5).all()


def test_bad_inputs_get_clear_errors(samples):
    images, _ = ev.real_images(4, seed=12)
    with pytest.raises(ValueError, match="unknown extractor 'inception'"):
        ev.features(images, "inception")
    with pytest.raises(ValueError, match="unknown extractor"):
        ev.leaderboard(samples, extractor="inception")
    with pytest.raises(ValueError, match="unknown generator 'gan'"):
        ev.sample("gan", torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown rater"):
        ev.preference_quality(samples, rater="human")
    with pytest.raises(ValueError, match="images"):
        ev.features(images[:, :1])
    with pytest.raises(ValueError, match="each n"):
        ev.small_n_bias(ns=(100, 6000))
    with pytest.raises(TypeError, match="samples"):
        ev.leaderboard({"x": images})


def test_digit_features_use_the_vit():
    digits = DigitsDataset("test").images  # (360, 1, 8, 8)
    f = ev.digit_features(digits)
    assert f.shape == (len(digits), 64) and f.dtype == torch.float32
    assert f.mean().abs() < 0.2 and 0.7 < f.std() < 1.3  # scaled by the training digits


@pytest.mark.parametrize("extractor", ev.EXTRACTORS)
def test_features_computed_on_the_course_device_come_back_to_the_images(extractor, device):
    """Host images (`.cpu()`, as on a GPU machine) with their features computed on the course
    device, under the GPU's rule (the placement audit): each batch is sent there, the result
    comes back to the images' device, and the values are the host computation's."""
    images, _ = ev.real_images(8, seed=3)
    digits = DigitsDataset("test").images[:8]
    with PlacementAudit():
        host, host_digits = images.cpu(), digits.cpu()
        f = ev.features(host, extractor, device=device)
        d = ev.digit_features(host_digits, device=device)
        assert is_host(f) and is_host(d)
    tol = 1e-4 if device.type == "cpu" else 2e-2  # a GPU's convolutions may run on TF32
    assert torch.allclose(f, ev.features(images.cpu(), extractor), atol=tol)
    assert torch.allclose(d, ev.digit_features(digits.cpu()), atol=tol)


def test_sample_draws_fresh_images_of_the_captions():
    labels = torch.tensor([[0, 0, 0], [1, 1, 1]])
    images = ev.sample("ar", labels, seed=0)
    assert images.shape == (2, 3, 32, 32)
    assert recipes.load("judge", device="cpu").score(images, labels)["all"] >= 0.5
