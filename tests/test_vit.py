"""mmcourse.vit: attention maps and masks, the ViT's shapes, training, and the shipped digits
classifier meeting the chapter's bar (≥ 95 % on the 360 held-out digits)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmcourse import checkpoints, recipes, vit
from mmcourse.data import DigitsDataset
from mmcourse.recipes import vit as vit_recipe

DTYPES = [torch.float32, torch.float64, torch.int64, torch.bool]
shapes = st.lists(st.integers(0, 9), min_size=0, max_size=5).map(tuple)


@pytest.fixture(scope="module")
def shipped() -> vit.ViT:
    return recipes.load("vit", device="cpu")


def test_shipped_vit_meets_the_bar(shipped):
    test = DigitsDataset("test")
    assert vit.accuracy(shipped, test.images, test.labels) >= 0.95


def test_shapes_and_attention_maps(device):
    torch.manual_seed(0)
    model = vit.ViT(image_size=8, patch_size=2, dim=32, depth=2, heads=4).to(device)
    x = torch.rand(3, 1, 8, 8, device=device)
    tokens, maps = model.encode(x)
    assert tokens.shape == (3, 1 + 16, 32) and len(maps) == 2
    assert maps[0].shape == (3, 4, 17, 17)
    assert torch.allclose(maps[0].sum(-1), torch.ones(3, 4, 17, device=device), atol=1e-5)
    assert model(x).shape == (3, 10)
    cls = model.cls_attention(x)
    assert cls.shape == (3, 4, 4) and (cls.sum(dim=(1, 2)) <= 1 + 1e-5).all()


def test_batch_independence():
    torch.manual_seed(0)
    model = vit.ViT(dim=32, depth=2).eval()
    x = torch.rand(4, 1, 8, 8)
    assert torch.allclose(model(x)[:1], model(x[:1]), atol=1e-5)


def test_causal_attention_hides_the_future():
    torch.manual_seed(0)
    block = vit.Block(dim=16, heads=2)
    x = torch.randn(1, 6, 16)
    changed = x.clone()
    changed[:, 4:] = torch.randn(1, 2, 16)
    out, attn = block(x, causal=True)
    out_changed, _ = block(changed, causal=True)
    assert torch.allclose(out[:, :4], out_changed[:, :4], atol=1e-6)
    assert (attn[0, :, 0, 1:] == 0).all()
    assert not torch.allclose(block(x)[0][:, :4], block(changed)[0][:, :4])


def test_learned_and_sincos_positions():
    learned = vit.ViT(dim=32, depth=1, pos="learned")
    fixed = vit.ViT(dim=32, depth=1, pos="sincos")
    assert "pos" in dict(learned.named_parameters())
    assert "pos" not in dict(fixed.named_parameters()) and "pos" not in fixed.state_dict()
    with pytest.raises(ValueError, match="^pos must be 'learned' or 'sincos'"):
        vit.ViT(pos="rope")
    with pytest.raises(ValueError, match="^image_size 8 is not divisible by patch_size 3"):
        vit.ViT(patch_size=3)
    with pytest.raises(ValueError, match="^dim 30 must be divisible by heads 4"):
        vit.ViT(dim=30, pos="learned")


def test_training_is_deterministic_and_learns(one_thread):
    first = vit_recipe.train_vit_digits(seed=3, epochs=4, lr=5e-3, dim=32, depth=1, device="cpu")
    second = vit_recipe.train_vit_digits(seed=3, epochs=4, lr=5e-3, dim=32, depth=1, device="cpu")
    assert first.losses == second.losses
    assert sum(first.losses[-5:]) / 5 < first.losses[0] - 0.2


def test_missing_checkpoint_names_the_rebuild_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m mmcourse.train vit"):
        recipes.load("vit", path=tmp_path / "vit_digits.pt")


def test_corrupt_and_foreign_checkpoints_name_the_rebuild_command(tmp_path):
    bad = tmp_path / "vit_digits.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoints.CheckpointError, match="python -m mmcourse.train vit"):
        recipes.load("vit", path=bad)
    config = vit.ViT().config
    checkpoints.save(bad, {"w": torch.zeros(1)}, config=config, command="x")
    with pytest.raises(checkpoints.CheckpointError, match="does not match the ViT model"):
        recipes.load("vit", path=bad)


@settings(max_examples=50, deadline=None)
@given(shape=shapes, dtype=st.sampled_from(DTYPES))
def test_forward_names_x_on_wrong_layout(shipped, shape, dtype):
    if shape[1:] == (1, 8, 8) and len(shape) == 4 and dtype.is_floating_point:
        return
    with pytest.raises((ValueError, TypeError), match="^x must"):
        shipped(torch.zeros(shape, dtype=dtype))


def test_embed_is_what_the_head_reads(device):
    torch.manual_seed(0)
    model = vit.ViT(image_size=8, patch_size=2, channels=1, dim=16, depth=1, heads=2).to(device)
    keys = set(model.state_dict())
    x = torch.rand(3, 1, 8, 8, device=device)
    h = model.embed(x)
    assert h.shape == (3, 16) and h.device == x.device
    assert torch.allclose(model.head(h), model(x))
    assert set(model.state_dict()) == keys  # embed adds no parameters: shipped files still load
