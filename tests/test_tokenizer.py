"""The image tokenizer: shapes, determinism, clear errors, a learning training loop, and the
shipped checkpoint meeting the chapter's bar (held-out PSNR ≥ 26 dB, ≥ 70 % of codes in use)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmcourse import checkpoints, recipes, tokenizer
from mmcourse.autoencoder import VQAutoencoder, VQOutput
from mmcourse.data import ShapesDataset
from mmcourse.recipes import tokenizer as tokenizer_recipe
from mmcourse.tokenizer import VQVAE, ResBlock, group_norm, psnr
from mmcourse.trainer import TrainResult
from mmcourse.video import VideoVQVAE

DTYPES = [torch.float16, torch.float32, torch.float64, torch.int64, torch.uint8, torch.bool]
shapes = st.lists(st.integers(0, 9), min_size=0, max_size=5).map(tuple)


@pytest.fixture(scope="module")
def shipped():
    return recipes.load("tokenizer", device="cpu")


@pytest.fixture(scope="module")
def held_out():
    return ShapesDataset(n=512, seed=1).images


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return VQVAE(channels=16, num_codes=32, code_dim=4).eval()


# --- shapes ------------------------------------------------------------------------------------


def test_encode_decode_shapes(shipped, held_out):
    tokens = shipped.encode(held_out[:5])
    assert tokens.shape == (5, 8, 8) and tokens.dtype == torch.long
    assert 0 <= tokens.min() and tokens.max() < shipped.num_codes
    images = shipped.decode(tokens)
    assert images.shape == (5, 3, 32, 32)
    assert 0 <= images.min() and images.max() <= 1


def test_forward_gives_reconstruction_and_losses(small):
    out = small(torch.rand(2, 3, 16, 24))
    assert out.x_hat.shape == (2, 3, 16, 24) and out.tokens.shape == (2, 4, 6)
    assert out.loss.shape == () and torch.allclose(out.loss, out.recon_loss + out.vq_loss)


@pytest.mark.parametrize(
    ("make", "x"),
    [
        (lambda: VQVAE(channels=8, num_codes=16, code_dim=4, groups=4), torch.rand(2, 3, 8, 12)),
        (lambda: VideoVQVAE(channels=8, num_codes=16, groups=4), torch.rand(2, 4, 3, 8, 8)),
    ],
    ids=["image", "video"],
)
def test_both_tokenizers_keep_the_vq_autoencoder_contract(make, x):
    """One base for chapter 02's and chapter 06's tokenizers: forward gives a VQOutput whose
    tokens are encode's (eval mode), and decode maps them back to x's shape in [0, 1]."""
    torch.manual_seed(0)
    model = make().eval()
    assert isinstance(model, VQAutoencoder)
    out = model(x)
    assert isinstance(out, VQOutput) and out.x_hat.shape == x.shape
    assert torch.allclose(out.loss, out.recon_loss + out.vq_loss)
    assert torch.equal(out.tokens, model.encode(x))
    assert out.tokens.dim() == 1 + len(model.grid) and out.tokens.dtype == torch.long
    images = model.decode(out.tokens)
    assert images.shape == x.shape and 0 <= images.min() and images.max() <= 1


def test_gradients_reach_encoder_decoder_and_not_the_ema_codebook(small):
    small.zero_grad()
    small(torch.rand(2, 3, 8, 8)).loss.backward()
    assert small.encoder.net[0].weight.grad.abs().sum() > 0  # through the straight-through path
    assert small.decoder.net[-1].weight.grad.abs().sum() > 0
    assert not small.quantizer.codebook.requires_grad  # EMA: moved by averages, not gradients


def test_resblock_keeps_shape_and_starts_from_its_input():
    block = ResBlock(16, groups=4)
    x = torch.randn(2, 16, 5, 5)
    assert block(x).shape == x.shape
    torch.nn.init.zeros_(block.block[-1].weight)
    torch.nn.init.zeros_(block.block[-1].bias)
    assert torch.equal(block(x), x)  # the skip path is an exact identity


# --- metrics -----------------------------------------------------------------------------------


def test_psnr_per_image():
    x = torch.zeros(3, 3, 4, 4)
    y = x.clone()
    y[0] += 0.1  # MSE 0.01 → 20 dB
    y[1] += 0.01  # MSE 1e-4 → 40 dB
    got = psnr(y, x)
    assert got.shape == (3,)
    assert torch.allclose(got[:2], torch.tensor([20.0, 40.0]))
    assert got[2] == 100  # identical images: MSE floored at 1e-10
    assert torch.allclose(psnr(y[:2] * 255, x[:2] * 255, max_value=255), got[:2])


def test_compression_ratio():
    assert tokenizer.compression_ratio((3, 32, 32), (8, 8), 512) == pytest.approx(24576 / 576)


# --- determinism and training ------------------------------------------------------------------


def _short_run(seed: int) -> TrainResult:
    return tokenizer_recipe.train_tokenizer(
        seed=seed,
        steps=20,
        batch=8,
        n_images=64,
        restart_every=5,
        log=None,
        device="cpu",
        channels=8,
        groups=4,
        num_codes=32,
        code_dim=4,
    )


def test_training_is_deterministic_and_learns(held_out, one_thread):
    one, two = _short_run(0), _short_run(0)
    x = held_out[:8]
    assert torch.equal(one.model.encode(x), two.model.encode(x))
    assert not one.model.training
    losses = one.history["recon_loss"]
    assert len(losses) == 20 and set(one.history) >= {"recon_loss", "vq_loss", "perplexity"}
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])


# --- the shipped checkpoint --------------------------------------------------------------------


def test_shipped_tokenizer_meets_the_bar(shipped, held_out):
    scores = tokenizer_recipe.evaluate(shipped, held_out)
    assert scores["psnr_db"] >= 26.0, scores
    assert scores["code_usage"] >= 0.70, scores
    assert shipped.num_codes >= 256
    assert tokenizer_recipe.WEIGHTS["tokenizer"].path.stat().st_size < 5_000_000


def test_missing_checkpoint_names_the_rebuild_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m mmcourse.train tokenizer"):
        recipes.load("tokenizer", path=tmp_path / "tokenizer.pt")


def test_corrupt_checkpoint_names_the_rebuild_command(tmp_path):
    path = tmp_path / "tokenizer.pt"
    path.write_bytes(tokenizer_recipe.WEIGHTS["tokenizer"].path.read_bytes()[:1000])
    with pytest.raises(checkpoints.CheckpointError, match="python -m mmcourse.train tokenizer"):
        recipes.load("tokenizer", path=path)


def test_foreign_weights_are_refused(tmp_path):
    path = tmp_path / "tokenizer.pt"
    checkpoints.save(path, {"w": torch.zeros(1)}, config={}, command="x")
    with pytest.raises(checkpoints.CheckpointError, match="does not match the VQVAE model"):
        recipes.load("tokenizer", path=path)


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(("channels", "groups"), [(36, 8), (10, 4), (7, 2)])
def test_groups_must_divide_channels(channels, groups):
    with pytest.raises(ValueError, match=f"groups must divide channels.*{channels} channels"):
        group_norm(channels, groups)
    with pytest.raises(ValueError, match="groups must divide channels"):
        VQVAE(channels=channels, groups=groups)


@settings(max_examples=60, deadline=None)
@given(shape=shapes, dtype=st.sampled_from(DTYPES))
def test_encode_names_x_on_wrong_layout(small, shape, dtype):
    good = len(shape) == 4 and shape[1] == 3 and shape[2] % 4 == shape[3] % 4 == 0
    if good and dtype.is_floating_point:
        return
    with pytest.raises((ValueError, TypeError), match="^x must"):
        small.encode(torch.zeros(shape, dtype=dtype))


@settings(max_examples=30, deadline=None)
@given(low=st.floats(-1e3, -0.01), high=st.floats(1.01, 1e3))
def test_encode_names_the_range(small, low, high):
    x = torch.zeros(1, 3, 8, 8)
    x[0, 0, 0, 0], x[0, 0, 0, 1] = low, high
    with pytest.raises(ValueError, match=r"x must hold values in \[0, 1\]"):
        small.encode(x)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, dtype=st.sampled_from(DTYPES))
def test_decode_names_tokens_on_wrong_layout(small, shape, dtype):
    if len(shape) == 3 and dtype == torch.int64:
        return
    with pytest.raises((ValueError, TypeError), match="^tokens must"):
        small.decode(torch.zeros(shape, dtype=dtype))


def test_decode_names_out_of_range_tokens(small):
    with pytest.raises(ValueError, match="tokens"):
        small.decode(torch.full((1, 2, 2), small.num_codes))


@pytest.mark.parametrize(
    ("name", "value"), [("steps", 0), ("batch", 2.5), ("recolor", 1.5), ("blobs", -0.1)]
)
def test_training_names_bad_arguments(name, value):
    with pytest.raises((ValueError, TypeError), match=f"^{name} must"):
        tokenizer_recipe.train_tokenizer(**{name: value}, log=None)


def test_psnr_names_mismatched_arguments():
    with pytest.raises(ValueError, match="same shape"):
        psnr(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 5))
    with pytest.raises(TypeError, match="^y must be a floating-point"):
        psnr(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="^x must have 4 dimensions"):
        psnr(torch.zeros(3, 4, 4), torch.zeros(3, 4, 4))
