"""The shipped DDPM samples of chapter 04 (data/diffusion_ddpm_samples.pt): they belong to the
shipped pixel model, cover every caption at the documented scale, and a damaged, missing or
stale file says how to rebuild it."""

from __future__ import annotations

import pytest
import torch

from mmcourse import checkpoints, recipes
from mmcourse.recipes import diffusion as diffusion_recipe


@pytest.fixture(scope="module")
def gen() -> diffusion_recipe.Generator:
    return diffusion_recipe.load_generator(device="cpu")


def test_shipped_samples_are_the_shipped_models(gen):
    samples = diffusion_recipe.load_ddpm_samples(gen)
    assert samples.images.shape == (90, 3, 32, 32)
    assert samples.images.min() >= 0 and samples.images.max() <= 1
    assert torch.equal(samples.images * 255, (samples.images * 255).round())  # 8-bit values
    assert torch.equal(samples.labels, diffusion_recipe.caption_labels(1))
    assert (samples.guidance, samples.seed) == (diffusion_recipe.DDPM_GUIDANCE, 0)
    assert recipes.load("judge", device="cpu").score(samples.images, samples.labels)["all"] >= 0.9


def test_missing_damaged_or_stale_samples_name_the_rebuild(gen, tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m mmcourse.train ddpm_samples"):
        diffusion_recipe.load_ddpm_samples(gen, tmp_path / "nope.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(checkpoints.CheckpointError, match="python -m mmcourse.train ddpm_samples"):
        diffusion_recipe.load_ddpm_samples(gen, tmp_path / "bad.pt")
    other = diffusion_recipe.load_generator(device="cpu")
    with torch.no_grad():
        next(other.model.parameters()).add_(1e-3)
    with pytest.raises(checkpoints.CheckpointError, match="other weights.*mmcourse.train"):
        diffusion_recipe.load_ddpm_samples(other)


def test_rebuild_writes_samples_that_load(gen, tmp_path, monkeypatch):
    """The rebuild on two captions (DDPM still walks all 1000 steps)."""
    monkeypatch.setattr(diffusion_recipe, "DDPM_SAMPLES_PATH", tmp_path / "samples.pt")
    two = torch.tensor([[0, 0, 0], [1, 1, 1]])
    monkeypatch.setattr(diffusion_recipe, "caption_labels", lambda per_caption: two)
    summary = diffusion_recipe.rebuild_ddpm_samples(seed=0)
    assert summary.startswith("wrote samples.pt in ")
    assert "(DDPM 1000, guidance 3, 2 samples)" in summary
    samples = diffusion_recipe.load_ddpm_samples(gen, tmp_path / "samples.pt")
    assert samples.images.shape == (2, 3, 32, 32) and torch.equal(samples.labels, two)
