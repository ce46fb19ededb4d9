"""Chapter 08: the Transfusion model, its mask, loss routing, noising and generation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmcourse import checkpoints, diffusion, recipes
from mmcourse import transfusion as tf
from mmcourse.recipes import transfusion as tf_recipe
from mmcourse.transformer import GPTConfig
from mmcourse.vocab import course_vocab

pytestmark = pytest.mark.usefixtures("one_thread")

SHIPPED = tf_recipe.WEIGHTS["transfusion"].path


def _tiny(seed: int = 0) -> tf.Transfusion:
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=20, block_size=160, n_layer=2, n_head=2, d_model=32)
    model = tf.Transfusion(config, patch_dim=4)
    torch.nn.init.normal_(model.patch_out.weight, std=0.3)
    return model.eval()


def test_mask_several_images():
    ids = torch.tensor([-1, 0, 0, 0, -1, 1, 1, -1])
    m = tf.transfusion_mask(ids)
    assert m.dtype == torch.bool and m.shape == (8, 8)
    assert m[1, 3] and m[3, 1] and m[5, 6]  # bidirectional within each image
    assert not m[1, 5] and not m[3, 4] and not m[0, 1]  # causal across and for text
    assert m[7].all() and m[5, :5].all()  # later positions see everything before
    assert torch.equal(tf.transfusion_mask(torch.stack([ids, ids])), torch.stack([m, m]))


def test_mask_without_images_is_causal():
    m = tf.transfusion_mask(torch.full((5,), -1))
    assert torch.equal(m, torch.ones(5, 5, dtype=torch.bool).tril())


def test_mask_rejects_bad_input():
    with pytest.raises(TypeError, match="image_id"):
        tf.transfusion_mask(torch.zeros(3))
    with pytest.raises(ValueError, match="image_id"):
        tf.transfusion_mask(torch.zeros(1, 2, 3, dtype=torch.long))


def test_make_batch_layout():
    v, n = course_vocab(), tf.N_PATCHES
    latents = torch.randn(2, n, 4)
    b = tf.make_batch(latents, [[5, 6], [7]], [True, False], [False, False], v)
    assert b.ids[0, :4].tolist() == [v.BOS, 5, 6, v.BOI]
    assert b.ids[0, 4 + n].item() == v.EOI and b.ids[0, 5 + n].item() == v.EOS
    assert torch.equal(b.patches[0, 4 : 4 + n], latents[0])
    assert (b.image_id[0, 4 : 4 + n] == 0).all()
    assert b.diffuse[0].sum() == n and not b.diffuse[1].any()  # the captioning image is clean
    assert b.ids[1, :2].tolist() == [v.BOS, v.BOI]
    assert b.ids[1, 2 + n : 5 + n].tolist() == [v.EOI, 7, v.EOS]
    assert b.valid[0].sum() == n + 6 and b.valid[1].sum() == n + 5
    dropped = tf.make_batch(latents[:1], [[5, 6]], [True], [True], v)  # the null context
    assert dropped.ids[0, :2].tolist() == [v.BOS, v.BOI]


def test_patches_round_trip_and_layout():
    z = torch.randn(3, tf.LATENT_DIM, tf.GRID, tf.GRID)
    x = tf.to_patches(z)
    assert x.shape == (3, tf.N_PATCHES, tf.PATCH_DIM)
    assert torch.equal(tf.from_patches(x), z)
    # patch 1 is the second 2 × 2 block of the top row, channels first inside the patch
    assert torch.equal(x[0, 1], z[0, :, 0:2, 2:4].flatten())


def test_noise_touches_only_images():
    x0, eps = torch.randn(2, 6, 3), torch.randn(2, 6, 3)
    is_image = torch.tensor([[0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]], dtype=torch.bool)
    ab = diffusion.linear_schedule(1000)
    x = tf.noise_image_span(x0, is_image, torch.tensor([0, 999]), ab, eps)
    assert torch.equal(x[~is_image], x0[~is_image])
    a = ab[999].float()
    assert torch.allclose(x[1, 3:], a.sqrt() * x0[1, 3:] + (1 - a).sqrt() * eps[1, 3:])
    with pytest.raises(ValueError, match="t"):
        tf.noise_image_span(x0, is_image, torch.tensor([0]), ab, eps)
    with pytest.raises(ValueError, match=r"t must hold timesteps in \[0, 1000\)"):
        tf.noise_image_span(x0, is_image, torch.tensor([0, 1000]), ab, eps)


def test_loss_routes_gradients():
    model = _tiny()
    v = course_vocab()
    lat = torch.randn(2, tf.N_PATCHES, 4)
    b = tf.make_batch(lat, [[3, 4], [5]], [True, False], [False, False], v)
    ids = b.ids.clamp(max=19)
    patches = b.patches.requires_grad_(True)
    logits, eps_pred = model(ids, patches, torch.tensor([500, 0]), b.image_id)
    eps = torch.randn_like(eps_pred)
    loss = tf.transfusion_loss(logits, eps_pred, ids, eps, b.image_id >= 0, b.diffuse, b.valid)
    assert loss.total.isfinite() and loss.ce > 0 and loss.mse > 0
    (g,) = torch.autograd.grad(loss.mse, patches)
    assert g[~b.valid].abs().sum() == 0  # padding never influences the loss
    zero = tf.transfusion_loss(logits, eps_pred, ids, eps, b.image_id >= 0, b.diffuse, b.valid, 0)
    assert torch.allclose(zero.total, zero.ce)
    with pytest.raises(ValueError, match=r"lam must be in \[0, inf\), got -1"):
        tf.transfusion_loss(logits, eps_pred, ids, eps, b.image_id >= 0, b.diffuse, b.valid, -1)
    with pytest.raises(TypeError, match="lam must be a number"):
        tf.transfusion_loss(logits, eps_pred, ids, eps, b.image_id >= 0, b.diffuse, b.valid, None)


def test_forward_shapes_and_validation():
    model = _tiny()
    n = tf.N_PATCHES + 6
    ids = torch.zeros(2, n, dtype=torch.long)
    image_id = torch.full((2, n), -1)
    image_id[:, 3 : 3 + tf.N_PATCHES] = 0
    logits, eps = model(ids, torch.randn(2, n, 4), torch.tensor([1, 2]), image_id)
    assert logits.shape == (2, n, 20) and eps.shape == (2, n, 4)
    with pytest.raises(ValueError, match="patches"):
        model(ids, torch.randn(2, n, 5), torch.tensor([1, 2]), image_id)
    with pytest.raises(ValueError, match="t"):
        model(ids, torch.randn(2, n, 4), torch.tensor([1]), image_id)


def test_image_eps_with_cache_matches_full_forward():
    """The cached denoiser sees exactly what the full sequence under the Transfusion mask sees."""
    model = _tiny()
    prefix = torch.tensor([[1, 5, 7, 3]])
    n = tf.N_PATCHES
    x = torch.randn(1, n, 4)
    with torch.no_grad():
        cache = tf.prefix_cache(model, prefix)
        eps = tf.image_eps(model, cache, x, 300)
        assert len(cache) == 4  # restored
        ids = torch.cat([prefix, torch.zeros(1, n, dtype=torch.long)], 1)
        patches = torch.cat([torch.zeros(1, 4, 4), x], 1)
        image_id = torch.tensor([[-1] * 4 + [0] * n])
        _, full = model(ids, patches, torch.tensor([300]), image_id)
    assert torch.allclose(eps, full[:, 4:], atol=1e-5)


def test_generation_step_guidance_one_is_conditional():
    model = _tiny()
    ab = diffusion.linear_schedule(1000)
    x = torch.randn(2, tf.N_PATCHES, 4)
    with torch.no_grad():
        cond = tf.prefix_cache(model, torch.tensor([[1, 5, 3]] * 2))
        uncond = tf.prefix_cache(model, torch.tensor([[1, 3]] * 2))
        a = tf.generation_step(model, cond, uncond, x, 500, 250, ab, 1.0)
        e = tf.image_eps(model, cond, x, 500)
    b = diffusion.ddim_step(x, e, 500, 250, ab, 0.0, torch.zeros_like(x))
    assert torch.allclose(a, b, atol=1e-5)


def test_train_tiny_runs_and_is_deterministic():
    lat = torch.randn(16, tf.N_PATCHES, tf.PATCH_DIM)
    caps = ["a red circle in the top left"] * 8 + ["a blue square in the bottom right"] * 8
    config = tf_recipe.default_config(n_layer=1, n_head=2, d_model=32)
    kwargs = {"config": config, "steps": 3, "batch_size": 4, "progress": False, "device": "cpu"}
    r1 = tf_recipe.train_transfusion(lat, caps, **kwargs)
    r2 = tf_recipe.train_transfusion(lat, caps, **kwargs)
    assert r1.losses == r2.losses and all(c > 0 and m > 0 for c, m in r1.losses)
    with pytest.raises(ValueError, match="captions"):
        tf_recipe.train_transfusion(lat, caps[:3], config=config, steps=1, progress=False)


def test_training_loss_is_transfusion_loss_bit_for_bit():
    """The training loop routes the loss from masks resolved on the CPU (no read-back from a
    GPU); it must give exactly what `transfusion_loss` gives, and the patch index inside each
    image exactly what a loop over the images gives."""
    vocab = course_vocab()
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(6, tf.N_PATCHES, 4, generator=g)
    words = [[5, 6, 7], [8], [9, 10], [11, 12, 13, 14], [15], [16, 17]]
    first, drop = [True, False, True, True, False, True], [False, False, True] + [False] * 3
    batch = tf.make_batch(latents, words, first, drop, vocab)
    logits = torch.randn(*batch.ids.shape, vocab.image_offset, generator=g)
    eps_pred, eps = torch.randn(2, *batch.patches.shape, generator=g)
    want = tf.transfusion_loss(logits, eps_pred, batch.ids, eps, batch.image_id >= 0,
                               batch.diffuse, batch.valid, 8.0)  # fmt: skip
    got = tf.routed_loss(logits, eps_pred, eps, tf.loss_routes(batch), 8.0, torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    image_id = torch.tensor([[-1, 0, 0, 0, -1, 1, 1, -1], [0, 0, -1, -1, -1, -1, 1, 1]])
    loop = torch.zeros_like(image_id)
    for k in (0, 1):
        sel = image_id == k
        loop = torch.where(sel, torch.cumsum(sel.long(), 1) - 1, loop)
    assert torch.equal(tf._index_within_image(image_id), loop)


def test_load_missing_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="mmcourse.train transfusion"):
        recipes.load("transfusion", path=tmp_path / "nope.pt", device="cpu")


def test_load_mismatch_names_the_command(tmp_path):
    path = tmp_path / "bad.pt"
    checkpoints.save(path, {"x": torch.zeros(1)}, config={"vocab_size": 3}, command="rebuild")
    with pytest.raises(checkpoints.CheckpointError, match="mmcourse.train transfusion"):
        recipes.load("transfusion", path=path, device="cpu")


@pytest.mark.skipif(not SHIPPED.is_file(), reason="shipped weights missing")
def test_shipped_model_generates_and_captions():
    model, scale = tf_recipe.load_with_scale(device="cpu")
    assert scale == tf_recipe.course_latents()[1]  # the training set's, carried in the file
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    tok = recipes.load("tokenizer", device="cpu")
    caption = ["a red circle in the top left"]
    images, latents = tf.generate_images(model, caption, steps=5, tokenizer=tok, scale=scale)
    assert images.shape == (1, 3, 32, 32) and latents.shape == (1, tf.N_PATCHES, tf.PATCH_DIM)
    assert 0 <= images.min() and images.max() <= 1
    held, truth = tf_recipe.held_out(8)
    got = tf.caption_images(model, held)
    assert len(got) == 8 and sum(a == b for a, b in zip(got, truth)) >= 5


DTYPES = [torch.float32, torch.float64, torch.int64, torch.bool]
shapes = st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, dtype=st.sampled_from(DTYPES))
def test_mask_names_image_id_on_bad_input(shape, dtype):
    if dtype == torch.int64 and len(shape) in (1, 2):
        assert tf.transfusion_mask(torch.zeros(shape, dtype=dtype)).dtype == torch.bool
        return
    with pytest.raises((ValueError, TypeError), match="^image_id must"):
        tf.transfusion_mask(torch.zeros(shape, dtype=dtype))


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 3),
    n=st.integers(1, 6),
    p=st.integers(1, 4),
    wrong=st.sampled_from(
        ["is_image_shape", "is_image_dtype", "eps_shape", "t_shape", "patches_dtype"]
    ),
)
def test_noise_names_the_wrong_argument(b, n, p, wrong):
    args = {"patches": torch.zeros(b, n, p), "is_image": torch.zeros(b, n, dtype=torch.bool),
            "t": torch.zeros(b, dtype=torch.long), "eps": torch.zeros(b, n, p)}  # fmt: skip
    name = wrong.rsplit("_", 1)[0]
    if wrong == "is_image_shape":
        args[name] = torch.zeros(b, n + 1, dtype=torch.bool)
    elif wrong == "is_image_dtype":
        args[name] = torch.zeros(b, n, dtype=torch.long)
    elif wrong == "eps_shape":
        args[name] = torch.zeros(b, n, p + 1)
    elif wrong == "t_shape":
        args[name] = torch.zeros(b + 1, dtype=torch.long)
    else:
        args[name] = torch.zeros(b, n, p, dtype=torch.long)
    with pytest.raises((ValueError, TypeError), match=f"^{name} must"):
        tf.noise_image_span(args["patches"], args["is_image"], args["t"],
                            diffusion.linear_schedule(1000), args["eps"])  # fmt: skip


@settings(max_examples=30, deadline=None)
@given(shape=shapes, dtype=st.sampled_from(DTYPES))
def test_patch_layout_names_its_argument(shape, dtype):
    good = dtype.is_floating_point
    if not (good and shape[1:] == (tf.LATENT_DIM, tf.GRID, tf.GRID)):
        with pytest.raises((ValueError, TypeError), match="^z must"):
            tf.to_patches(torch.zeros(shape, dtype=dtype))
    if not (good and shape[1:] == (tf.N_PATCHES, tf.PATCH_DIM)):
        with pytest.raises((ValueError, TypeError), match="^x must"):
            tf.from_patches(torch.zeros(shape, dtype=dtype))


@settings(max_examples=30, deadline=None)
@given(wrong=st.sampled_from(["ids", "patches", "t", "image_id"]), b=st.integers(1, 2))
def test_forward_names_the_wrong_argument(wrong, b):
    model = _tiny()
    n = 5
    args = {"ids": torch.zeros(b, n, dtype=torch.long), "patches": torch.zeros(b, n, 4),
            "t": torch.zeros(b, dtype=torch.long),
            "image_id": torch.full((b, n), -1, dtype=torch.long)}  # fmt: skip
    args[wrong] = args[wrong].float() if wrong != "patches" else torch.zeros(b, n, 4).long()
    with pytest.raises((ValueError, TypeError), match=f"^{wrong} must"):
        model(args["ids"], args["patches"], args["t"], args["image_id"])


@pytest.mark.skipif(not SHIPPED.is_file(), reason="shipped weights missing")
def test_generate_document_switches_modality_at_boi():
    model, scale = tf_recipe.load_with_scale(device="cpu")
    v = course_vocab()
    tok = recipes.load("tokenizer", device="cpu")
    kw = {"steps": 4, "seed": 0, "tokenizer": tok, "scale": scale}
    doc = tf.generate_document(model, "a red circle in the top left", **kw)
    again = tf.generate_document(model, "a red circle in the top left", **kw)
    assert doc.ids == again.ids and torch.equal(doc.images, again.images)  # seeded
    assert doc.ids[0] == v.BOS and doc.ids.count(v.BOI) == len(doc.images) >= 1
    boi = doc.ids.index(v.BOI)
    assert doc.ids[boi + 1] == v.EOI  # the patches have no ids: EOI follows BOI in the ids
    assert doc.text.startswith("a red circle in the top left <image>")
    assert doc.images.shape[1:] == (3, 32, 32) and 0 <= doc.images.min() <= doc.images.max() <= 1
    with pytest.raises(TypeError, match="prompt"):
        tf.generate_document(model, 3, **kw)
    with pytest.raises(ValueError, match=r"temperature must be in \(0, inf\), got 0"):
        tf.generate_document(model, "", temperature=0, **kw)
    with pytest.raises(TypeError, match="temperature must be a number"):
        tf.generate_document(model, "", temperature=True, **kw)


def test_separate_mlp_routes_each_position_to_its_own_mlp():
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=20, block_size=64, n_layer=2, n_head=2, d_model=32)
    model = tf.Transfusion(config, patch_dim=4, separate_mlp=True).eval()
    torch.nn.init.normal_(model.patch_out.weight, std=0.3)
    n = tf.N_PATCHES
    ids = torch.tensor([[1, 5, 7, 3] + [0] * n + [2, 6]])
    image_id = torch.tensor([[-1] * 4 + [0] * n + [-1, -1]])
    x = torch.randn(1, len(ids[0]), 4)
    t = torch.tensor([300])
    with torch.no_grad():
        logits, eps = model(ids, x, t, image_id)
        for p in model.image_mlps.parameters():
            p.add_(0.5)
        logits2, eps2 = model(ids, x, t, image_id)
    assert torch.equal(logits[:, :4], logits2[:, :4])  # the caption never passes an image MLP
    assert not torch.allclose(eps[:, 4 : 4 + n], eps2[:, 4 : 4 + n])
    with torch.no_grad():  # the cached denoiser agrees with the full forward here too
        cache = tf.prefix_cache(model, ids[:, :4])
        cached = tf.image_eps(model, cache, x[:, 4 : 4 + n], 300)
        full = model(ids[:, : 4 + n], x[:, : 4 + n], t, image_id[:, : 4 + n])[1][:, 4:]
    assert torch.allclose(cached, full, atol=1e-5)


def test_separate_mlp_survives_save_and_load(tmp_path):
    torch.manual_seed(0)
    config = tf_recipe.default_config(n_layer=1, n_head=2, d_model=32)
    model = tf.Transfusion(config, separate_mlp=True)
    path = tmp_path / "mot.pt"
    config = model.config | {"latent_scale": 2.0}
    tf_recipe.WEIGHTS["transfusion"].save(model, config=config, path=path)
    loaded, scale = tf_recipe.load_with_scale(path, "cpu")
    assert scale == 2.0
    assert loaded.image_mlps is not None
    pairs = zip(model.state_dict().values(), loaded.state_dict().values())
    assert all(torch.equal(a.half().float(), b) for a, b in pairs)  # stored in float16


@pytest.mark.skipif(not SHIPPED.is_file(), reason="shipped weights missing")
def test_recipe_saves_the_shipped_file_byte_for_byte(tmp_path):
    weights = tf_recipe.WEIGHTS["transfusion"]
    model, config = weights.load_with_config(device="cpu")
    path = weights.save(model, config=config, path=tmp_path / SHIPPED.name)  # float16 again
    assert path.read_bytes() == SHIPPED.read_bytes()
    assert recipes.REBUILDS["transfusion"] is tf_recipe.rebuild
