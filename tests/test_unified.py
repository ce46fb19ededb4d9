"""The tiny Chameleon (mmcourse.unified and its recipe): data, loss mask, training, both
generation directions, shipped weights."""

from __future__ import annotations

import pytest
import torch

from mmcourse import checkpoints, recipes, unified, vocab
from mmcourse.bpe import course_bpe
from mmcourse.data import MovingShapesDataset, ShapesDataset
from mmcourse.recipes import unified as unified_recipe
from mmcourse.transformer import GPT
from mmcourse.vocab import MixingLoader

pytestmark = pytest.mark.usefixtures("one_thread")

V = vocab.course_vocab()


def _small_data(n=40, m=6):
    g = torch.Generator().manual_seed(0)
    return unified_recipe.CourseData(
        torch.randint(512, (n, 8, 8), generator=g),
        ShapesDataset(n=n, seed=5).captions,
        torch.randint(1024, (m, 2, 8, 8), generator=g),
        MovingShapesDataset(n=m, seed=5).captions,
    )


def _tiny():
    return GPT(unified_recipe.default_config(V, n_layer=1, d_model=32, n_head=2))


def test_vocabulary_of_the_course():
    assert V.text_size == course_bpe().vocab_size == 97
    assert (V.image_codes, V.video_codes, V.size) == (512, 1024, 1640)


def test_sources_hold_every_kind_in_its_layout():
    data = _small_data()
    sources = unified_recipe.build_sources(data, V)
    assert len(sources["text"]) == len(set(data.captions) | set(data.video_captions))
    assert len(sources["caption_image"]) == len(sources["interleaved"]) == 40
    c2i = vocab.decode_interleaved(sources["caption_image"][0], V)
    i2c = vocab.decode_interleaved(sources["image_caption"][0], V)
    assert [s.kind for s in c2i] == ["text", "image"] and [s.kind for s in i2c] == ["image", "text"]
    assert torch.equal(c2i[1].tokens, data.image_codes[0])
    assert course_bpe().decode(c2i[0].tokens.tolist()) == data.captions[0]
    kinds = [[s.kind for s in vocab.decode_interleaved(x, V)] for x in sources["video"][:2]]
    assert kinds == [["text", "video"], ["video", "text"]]
    inter = vocab.decode_interleaved(sources["interleaved"][0], V)
    assert [s.kind for s in inter] == ["text", "image", "text", "image"]
    longest = max(len(x) for xs in sources.values() for x in xs)
    assert longest <= unified_recipe.default_config(V).block_size


def test_loss_ignores_padding_whatever_id_it_holds():
    torch.manual_seed(0)
    model = _tiny()
    seqs = unified_recipe.build_sources(_small_data(), V)["caption_image"][:2]
    ids, mask = vocab.pad_batch([seqs[0], seqs[1][:30]], V)
    loss = unified.lm_loss(model, ids, mask)
    other = ids.clone()
    other[~mask] = 5  # a real text id where the padding is: must not matter
    assert torch.allclose(unified.lm_loss(model, other, mask), loss)
    unmasked = unified.lm_loss(model, ids, torch.ones_like(mask))
    assert not torch.allclose(unmasked, loss)
    with pytest.raises(TypeError, match="loss_mask must have dtype torch.bool"):
        unified.lm_loss(model, ids, mask.long())


def test_training_lowers_the_loss_and_is_deterministic():
    sources = unified_recipe.build_sources(_small_data(), V)
    config = unified_recipe.default_config(V, n_layer=1, d_model=32, n_head=2)

    def run():
        loader = MixingLoader(sources, unified_recipe.DEFAULT_RATIOS, V, batch_size=8, seed=0)
        return unified_recipe.train_unified(
            loader, config=config, steps=30, lr=3e-3, progress=False, device="cpu"
        )

    a, b = run(), run()
    assert a.losses == b.losses
    assert sum(a.losses[-5:]) / 5 < a.losses[0] - 0.5
    with pytest.raises(TypeError, match="loader must be a MixingLoader"):
        unified_recipe.train_unified([], steps=1)


def test_generation_stays_in_its_block():
    torch.manual_seed(0)
    model = _tiny().eval()
    tok = recipes.load("tokenizer", device="cpu")
    two = ["a red circle in the top left", "a blue square in the center"]
    images, codes = unified.generate_images(model, two, tokenizer=tok, seed=0)
    assert images.shape == (2, 3, 32, 32) and codes.shape == (2, 8, 8)
    assert 0 <= images.min() and images.max() <= 1
    assert bool(((codes >= 0) & (codes < 512)).all())
    again = unified.generate_images(model, two, tokenizer=tok, seed=0)[1]
    assert torch.equal(again, codes)
    texts = unified.caption_images(model, codes, max_len=5)
    alphabet = set(course_bpe().alphabet)
    assert len(texts) == 2 and all(set(t) <= alphabet for t in texts)
    with pytest.raises(TypeError, match="captions must be a non-empty list of str"):
        unified.generate_images(model, "a red circle in the top left", tokenizer=tok)


def test_documents_round_trip_through_the_tokenizers():
    image = ShapesDataset(n=1, seed=3).images[0]
    clip = MovingShapesDataset(n=1, seed=3).clips[0]
    tokenizers = {
        "tokenizer": recipes.load("tokenizer", device="cpu"),
        "video_tokenizer": recipes.load("video", device="cpu"),
    }
    doc = ["a red circle in the top left", image, "a blue", clip]
    ids = unified.encode_document(doc, **tokenizers)
    items = unified.decode_document(ids, **tokenizers)
    assert items[0] == "a red circle in the top left" and items[2] == "a blue"
    assert items[1].shape == (3, 32, 32) and items[3].shape == (8, 3, 32, 32)
    back = vocab.encode_interleaved(vocab.decode_interleaved(ids, V), V)
    assert torch.equal(back, ids)  # ids → segments → ids exactly
    with pytest.raises(ValueError, match=r"items\[0\] must be a str, an image"):
        unified.encode_document([torch.zeros(3, 16, 16)], **tokenizers)


def test_missing_checkpoint_names_the_rebuild_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m mmcourse.train unified"):
        recipes.load("unified", path=tmp_path / "nothing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoints.CheckpointError, match="python -m mmcourse.train unified"):
        recipes.load("unified", path=bad)


def test_shipped_model_does_both_directions():
    model = recipes.load("unified", device="cpu")
    assert model.cfg.vocab_size == V.size
    assert unified_recipe.WEIGHTS["unified"].path.stat().st_size < 2_000_000
    data = ShapesDataset(n=40, seed=unified_recipe.HELD_OUT_SEED)
    codes, _ = unified_recipe.held_out(40)
    got = unified.caption_images(model, codes)
    assert sum(g == t for g, t in zip(got, data.captions)) >= 34  # ≥ 85 %; measured 95 % on 500
    captions = data.captions[:20]
    tok = recipes.load("tokenizer", device="cpu")
    images, _ = unified.generate_images(
        model, captions, tokenizer=tok, temperature=unified_recipe.TEMPERATURE
    )
    assert (
        recipes.load("judge", device="cpu").score(images, captions)["all"] >= 0.7
    )  # measured 87 % on 180


def test_direction_losses_score_only_their_targets():
    torch.manual_seed(0)
    model = _tiny().eval()
    data = _small_data(n=6)
    scores = unified_recipe.direction_losses(model, data.image_codes, data.captions)
    assert set(scores) == {"image_loss", "caption_loss", "caption_token_acc", "loss"}
    assert all(torch.isfinite(torch.tensor(v)) for v in scores.values())
    assert 0 <= scores["caption_token_acc"] <= 1
    with pytest.raises(ValueError, match=r"shares must be in \[0, 1\], got 1.5"):
        unified_recipe.ratio_sweep((1.5,), steps=1, data=data, progress=False)
    with pytest.raises(TypeError, match="shares must be a number"):
        unified_recipe.ratio_sweep((True,), steps=1, data=data, progress=False)


def test_rebuild_is_registered():
    assert recipes.REBUILDS["unified"] is unified_recipe.rebuild


def test_recipe_saves_the_shipped_file_byte_for_byte(tmp_path):
    weights = unified_recipe.WEIGHTS["unified"]
    path = weights.save(weights.load(device="cpu"), path=tmp_path / weights.path.name)
    assert path.read_bytes() == weights.path.read_bytes()
