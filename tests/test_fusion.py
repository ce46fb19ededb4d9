"""mmcourse.fusion: the word tokenizer, the contrastive loss, the projector and captioner, and
the shipped models meeting their bars on held-out Shapes (seed 1): image→caption retrieval among
all 90 captions ≥ 90 %, caption exact match ≥ 80 %."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmcourse import checkpoints, fusion, recipes
from mmcourse.data import ShapesDataset, all_captions
from mmcourse.recipes import fusion as fusion_recipe
from mmcourse.vit import ViT

shapes = st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple)


@pytest.fixture(scope="module")
def held_out() -> ShapesDataset:
    return ShapesDataset(n=1_000, seed=1)


@pytest.fixture(scope="module")
def clip() -> fusion.CLIP:
    return recipes.load("clip", device="cpu")


@pytest.fixture(scope="module")
def captioner() -> fusion.Captioner:
    return recipes.load("captioner", device="cpu")


def test_shipped_clip_meets_the_bar(clip, held_out):
    assert fusion.retrieval_top1(clip, held_out.images, held_out.captions) >= 0.90


def test_shipped_captioner_meets_the_bar(captioner, held_out):
    assert fusion.caption_exact_match(captioner, held_out.images, held_out.captions) >= 0.80


def test_captioner_vision_is_clip_frozen(captioner, clip):
    assert not any(p.requires_grad for p in captioner.vision.parameters())
    assert all(p.requires_grad for p in captioner.projector.parameters())
    x = ShapesDataset(n=2, seed=5).images
    assert torch.allclose(captioner.vision(x), clip.image_encoder(x), atol=1e-6)


def test_caption_tokenizer_round_trips_every_caption():
    captions = all_captions()
    ids = fusion.encode_captions(captions)
    assert ids.shape == (90, fusion.MAX_LEN) and ids.dtype == torch.long
    assert (ids[:, 0] == fusion.BOS).all() and ((ids == fusion.EOS).sum(1) == 1).all()
    assert fusion.decode_captions(ids) == captions
    assert len(set(fusion.VOCAB)) == len(fusion.VOCAB)


def test_caption_tokenizer_refuses_words_outside_the_grammar():
    with pytest.raises(ValueError, match=r"^captions\[1\] = 'a pink circle'"):
        fusion.encode_captions(["a red circle in the center", "a pink circle"])
    with pytest.raises(TypeError, match="^captions must be a list of str"):
        fusion.encode_captions("a red circle in the center")


def test_contrastive_loss_properties():
    torch.manual_seed(0)
    image_emb, text_emb = torch.randn(6, 8), torch.randn(6, 8)
    loss = fusion.contrastive_loss(image_emb, text_emb, 0.1)
    assert loss.shape == ()
    assert torch.allclose(loss, fusion.contrastive_loss(text_emb, image_emb, 0.1))  # symmetric
    same = torch.zeros(4, 8)  # all similarities equal: each row is a uniform guess among N
    assert torch.allclose(
        fusion.contrastive_loss(same + 1, same + 1, 0.07), torch.tensor(math.log(4))
    )
    eye = torch.eye(4, 8)
    assert fusion.contrastive_loss(eye, 5 * eye, 0.01) < 1e-6  # scale does not matter


def test_project_drops_cls_and_keeps_a_nonlinearity():
    proj = fusion.Projector(vision_dim=6, text_dim=5, hidden=10)
    tokens = torch.randn(2, 1 + 4, 6)
    out = proj(tokens)
    assert out.shape == (2, 4, 5)
    changed = tokens.clone()
    changed[:, 0] += 100.0
    assert torch.equal(proj(changed), out)
    assert not torch.allclose(proj(2 * tokens) - proj(tokens), proj(tokens) - proj(0 * tokens))


def test_captioner_learns_on_a_small_run(one_thread):
    vision = ViT(image_size=32, patch_size=8, channels=3, dim=32, depth=1, num_classes=8)
    kwargs = {"steps": 30, "n_images": 500, "dim": 32, "depth": 1, "device": "cpu"}
    first = fusion_recipe.train_captioner(vision, **kwargs)
    second = fusion_recipe.train_captioner(vision, **kwargs)
    assert first.losses == second.losses
    assert sum(first.losses[-5:]) / 5 < first.losses[0] - 1.0
    assert len(first.model.generate(ShapesDataset(n=3, seed=1).images)) == 3


def test_clip_batches_hold_distinct_captions(one_thread):
    g = torch.Generator().manual_seed(0)
    data = ShapesDataset(n=500, seed=0)
    idx = fusion_recipe._distinct_caption_batches(data, 64, g)()
    assert len(idx) == 64 and len({data.captions[i] for i in idx.tolist()}) == 64
    result = fusion_recipe.train_clip(steps=20, n_images=500, dim=32, depth=1)
    assert sum(result.losses[-5:]) / 5 < result.losses[0]


def test_missing_and_corrupt_checkpoints_name_their_commands(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m mmcourse.train clip"):
        recipes.load("clip", path=tmp_path / "clip_shapes.pt")
    bad = tmp_path / "captioner_shapes.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(checkpoints.CheckpointError, match="python -m mmcourse.train captioner"):
        recipes.load("captioner", path=bad)
    checkpoints.save(bad, {"w": torch.zeros(1)}, config=fusion.CLIP().config, command="x")
    with pytest.raises(checkpoints.CheckpointError, match="does not match the CLIP model"):
        recipes.load("clip", path=bad)


# --- input validation --------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(a=shapes, b=shapes)
def test_contrastive_loss_names_the_embeddings(a, b):
    good_a, good_b = len(a) == 2, len(b) == 2
    if good_a and good_b and a == b:
        return
    name = "image_emb" if not good_a else "text_emb" if not good_b else "image_emb .* and text_emb"
    with pytest.raises(ValueError, match=f"^{name}"):
        fusion.contrastive_loss(torch.zeros(a), torch.zeros(b), 0.07)


def test_contrastive_loss_names_integer_embeddings():
    with pytest.raises(TypeError, match="^image_emb must be a floating-point tensor"):
        fusion.contrastive_loss(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3), 0.1)


@settings(max_examples=50, deadline=None)
@given(shape=shapes, which=st.sampled_from(["vision_tokens", "w1", "b1", "w2", "b2"]))
def test_project_names_the_wrong_argument(shape, which):
    args = {
        "vision_tokens": torch.zeros(2, 5, 6),
        "w1": torch.zeros(10, 6),
        "b1": torch.zeros(10),
        "w2": torch.zeros(4, 10),
        "b2": torch.zeros(4),
    }
    if shape == tuple(args[which].shape) or (which == "w2" and len(shape) == 2 and shape[1] == 10):
        return
    named = which
    if which == "vision_tokens" and len(shape) == 3 and shape[1] > 0:
        if shape[2] == 6:
            return
        named = "w1"  # a (B, 1 + N, D_v) of another D_v: w1 (H, 6) no longer fits
    args[which] = torch.zeros(shape)
    with pytest.raises(ValueError, match=f"^{named} must"):
        fusion.project(**args)


@settings(max_examples=30, deadline=None)
@given(shape=shapes)
def test_generate_and_retrieve_name_x(captioner, clip, shape):
    if shape[1:] == (3, 32, 32):
        return
    with pytest.raises(ValueError, match="^x must have"):
        captioner.generate(torch.zeros(shape))
    with pytest.raises(ValueError, match="^x must have"):
        fusion.retrieve(clip, torch.zeros(shape), all_captions())


@settings(max_examples=30, deadline=None)
@given(shape=shapes)
def test_decode_captions_names_ids(shape):
    if len(shape) == 2:
        return
    with pytest.raises(ValueError, match="^ids must have 2 dimensions"):
        fusion.decode_captions(torch.zeros(shape, dtype=torch.long))
