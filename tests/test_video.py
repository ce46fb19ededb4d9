"""The video tokenizer (chapter 06): token arithmetic, 3-D patches, causality in time, the
quantizer's gradients, clear errors, the shipped checkpoint and its quality bar."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmcourse import checkpoints, recipes, video
from mmcourse.data.moving import MovingShapesDataset
from mmcourse.recipes import video as video_recipe

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clips() -> torch.Tensor:
    return MovingShapesDataset(n=4, seed=3).clips  # (4, 8, 3, 32, 32)


@pytest.fixture(scope="module")
def model() -> video.VideoVQVAE:
    torch.manual_seed(0)
    return video.VideoVQVAE(channels=16, num_codes=64).eval()


# --- token arithmetic ---------------------------------------------------------------------------


def test_token_counts():
    assert video.video_tokens(8, 32, 32) == 512  # per frame: 8 × 8 × 8
    assert video.video_tokens(8, 32, 32, temporal_stride=4) == 128  # the course target 2×8×8
    assert video.video_tokens(32, 256, 256, temporal_stride=4, spatial_stride=8) == 8192
    assert video.attention_cost(128) == 128**2


def test_frames_not_divisible_by_the_stride_is_a_clear_error(model, clips):
    with pytest.raises(ValueError, match=r"frames = 9 is not divisible by temporal_stride = 4"):
        video.video_tokens(9, 32, 32, temporal_stride=4)
    six = clips[:, :6]
    with pytest.raises(ValueError, match=r"frames = 6 is not divisible by the temporal stride = 4"):
        model(six)
    with pytest.raises(ValueError, match=r"frames = 6 .* multiple of 4 \(4 or 8\)"):
        model.encode(six)
    with pytest.raises(ValueError, match=r"frames = 7 is not divisible by stride_t = 2"):
        video.temporal_downsample(torch.zeros(1, 2, 7, 4, 4), torch.zeros(2, 2, 3, 3, 3), None, 2)


def test_channels_not_divisible_by_groups_is_a_clear_error():
    with pytest.raises(ValueError, match=r"groups must divide channels.*30 channels into 8"):
        video.VideoVQVAE(channels=30, groups=8)


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        (torch.zeros(2, 8, 32, 32), ValueError, r"x must have 5 dimensions"),
        (torch.zeros(2, 8, 1, 32, 32), ValueError, r"dimension 2 is 1, expected 3"),
        (torch.zeros(2, 8, 3, 32, 32, dtype=torch.uint8), TypeError, r"floating-point"),
        (torch.full((2, 8, 3, 32, 32), 255.0), ValueError, r"values in \[0, 1\]"),
        (torch.zeros(2, 8, 3, 30, 32), ValueError, r"height = 30 is not divisible"),
        ([[0.0]], TypeError, r"x must be a torch\.Tensor, got list"),
    ],
)
def test_bad_clips_are_named(model, bad, error, message):
    with pytest.raises(error, match=message):
        model(bad)


def test_bad_tokens_are_named(model):
    with pytest.raises(TypeError, match=r"tokens must have dtype torch\.int64"):
        model.decode(torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match=r"tokens must hold code indices in \[0, 64\)"):
        model.decode(torch.full((1, 2, 8, 8), 64))


# --- 3-D patches --------------------------------------------------------------------------------


def test_patchify_order_and_inverse():
    x = torch.arange(2 * 4 * 3 * 4 * 4).reshape(2, 4, 3, 4, 4)
    patches = video.patchify_3d(x, 2, 2)
    assert patches.shape == (2, 2 * 2 * 2, 2 * 2 * 2 * 3)
    # Patch 0 feature (pt, p1, p2, c) = (1, 0, 1, 2) is frame 1, row 0, column 1, channel 2.
    assert patches[0, 0, ((1 * 2 + 0) * 2 + 1) * 3 + 2] == x[0, 1, 2, 0, 1]
    # Patch 3 is (t, h, w) = (0, 1, 1): rows and columns 2–3 of frames 0–1.
    assert patches[1, 3, 0] == x[1, 0, 0, 2, 2]
    assert torch.equal(video.unpatchify_3d(patches, 2, 2, 4, 4, 4), x)


@settings(max_examples=25, deadline=None)
@given(
    pt=st.integers(1, 3),
    p=st.integers(1, 3),
    t=st.integers(1, 3),
    hw=st.integers(1, 3),
    c=st.integers(1, 3),
)
def test_unpatchify_inverts_patchify(pt, p, t, hw, c):
    x = torch.randn(2, t * pt, c, hw * p, hw * p)
    patches = video.patchify_3d(x, pt, p)
    assert patches.shape == (2, t * hw * hw, pt * p * p * c)
    assert torch.equal(video.unpatchify_3d(patches, pt, p, t * pt, hw * p, hw * p), x)


def test_patchify_refuses_sizes_the_patch_does_not_divide():
    with pytest.raises(ValueError, match=r"frames = 5 is not divisible by pt = 2"):
        video.patchify_3d(torch.zeros(1, 5, 3, 4, 4), 2, 2)
    with pytest.raises(ValueError, match=r"patches must have shape \(B, 8, pt·p·p·C\)"):
        video.unpatchify_3d(torch.zeros(1, 7, 24), 2, 2, 4, 4, 4)


# --- causality ----------------------------------------------------------------------------------


def test_causal_pad_puts_zeros_in_front():
    x = torch.randn(1, 2, 8, 3, 3)
    padded = video.causal_pad(x, 3, 2)
    assert padded.shape == (1, 2, 9, 3, 3)
    assert torch.equal(padded[:, :, 1:], x) and not padded[:, :, 0].any()
    with pytest.raises(ValueError, match=r"stride_t must be ≤ kernel_t"):
        video.causal_pad(x, 2, 3)


def test_encoder_is_causal_in_time(model, clips):
    """Latent frame 0 (frames 0–3) must not change when frames 4–7 change."""
    later = clips.clone()
    later[:, 4:] = later[:, 4:].flip(-1)
    with torch.no_grad():
        z, z_later = model.encoder(clips), model.encoder(later)
    assert z.shape == (4, 16, 2, 8, 8)
    assert torch.allclose(z[:, :, 0], z_later[:, :, 0], atol=1e-6)
    assert not torch.allclose(z[:, :, 1], z_later[:, :, 1])


def test_decoder_is_causal_in_time(model):
    """Frames 0–3 come from latent frame 0 alone."""
    tokens = torch.randint(64, (2, 2, 8, 8), generator=torch.Generator().manual_seed(0))
    changed = tokens.clone()
    changed[:, 1] = (changed[:, 1] + 1) % 64
    x, x_changed = model.decode(tokens), model.decode(changed)
    assert x.shape == (2, 8, 3, 32, 32)
    assert torch.allclose(x[:, :4], x_changed[:, :4], atol=1e-6)
    assert not torch.allclose(x[:, 4:], x_changed[:, 4:])


# --- the quantizer is really in the loop --------------------------------------------------------


def test_forward_shapes_and_straight_through_gradients(clips):
    torch.manual_seed(0)
    model = video.VideoVQVAE(channels=16, num_codes=64).train()
    out = model(clips)
    assert out.x_hat.shape == clips.shape and out.tokens.shape == (4, 2, 8, 8)
    assert out.tokens.dtype == torch.long
    assert torch.allclose(out.loss, out.recon_loss + out.vq_loss)
    assert out.vq_loss > 0  # the commitment term β‖z_e − sg(e)‖² is there
    out.recon_loss.backward()  # the reconstruction alone reaches the encoder through z_q
    first = model.encoder.spatial[0].weight.grad
    assert first is not None and first.abs().sum() > 0
    # The tokens of forward are the ones encode gives (nearest codes, codebook unmoved).
    model.eval()
    assert torch.equal(model(clips).tokens, model.encode(clips))


def test_training_is_deterministic_and_learns():
    kwargs = {"steps": 6, "batch": 2, "n_clips": 16, "log": None, "device": "cpu"}
    kwargs |= {"channels": 8, "num_codes": 16, "restart_every": 3}
    a = video_recipe.train_video_tokenizer(seed=0, **kwargs)
    b = video_recipe.train_video_tokenizer(seed=0, **kwargs)
    for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(p, q), name
    assert len(a.history["recon_loss"]) == 6
    assert a.history["recon_loss"][-1] < a.history["recon_loss"][0]
    with pytest.raises(ValueError, match="held-out"):
        video_recipe.train_video_tokenizer(seed=1, **kwargs)


# --- the shipped checkpoint ---------------------------------------------------------------------


def test_missing_checkpoint_names_the_rebuild_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"python -m mmcourse\.train video"):
        recipes.load("video", path=tmp_path / "nope.pt", device="cpu")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoints.CheckpointError, match=r"python -m mmcourse\.train video"):
        recipes.load("video", path=bad, device="cpu")


def test_shipped_tokenizer_meets_the_bar():
    """Chapter 06's bar: 8×32×32 → 2×8×8 tokens at held-out PSNR ≥ 24 dB."""
    assert video_recipe.WEIGHTS["video"].path.stat().st_size < 2 * 2**20
    model = recipes.load("video", device="cpu")
    scores = video_recipe.evaluate(model, video_recipe.held_out_clips(200))
    assert scores["tokens"] == 2 * 8 * 8
    assert scores["psnr_db"] >= 24.0, scores


# --- input validation, property-tested ----------------------------------------------------------

DTYPES = [torch.float16, torch.float32, torch.float64, torch.int64, torch.uint8, torch.bool]
shapes = st.lists(st.integers(0, 5), min_size=0, max_size=6).map(tuple)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, dtype=st.sampled_from(DTYPES))
def test_model_names_x_on_wrong_layout(model, shape, dtype):
    five = len(shape) == 5 and shape[2] == 3 and dtype.is_floating_point
    if five and all(size % 4 == 0 for size in (shape[1], shape[3], shape[4])):
        return  # a valid layout (possibly empty)
    with pytest.raises((ValueError, TypeError), match="^x must|^(frames|height|width) = "):
        model(torch.zeros(shape, dtype=dtype))


@settings(max_examples=40, deadline=None)
@given(
    frames=st.integers(-3, 40),
    stride=st.one_of(st.integers(-2, 6), st.floats(0.5, 3), st.none()),
)
def test_video_tokens_answers_every_input_clearly(frames, stride):
    try:
        n = video.video_tokens(frames, 32, 32, temporal_stride=stride)
    except TypeError as error:
        assert str(error).startswith(("frames must", "temporal_stride must"))
    except ValueError as error:
        assert str(error).startswith(("frames", "temporal_stride"))
    else:
        assert n == frames // stride * 64 and frames % stride == 0


@settings(max_examples=30, deadline=None)
@given(shape=shapes)
def test_causal_pad_names_x_on_wrong_dimensions(shape):
    if len(shape) == 5:
        return
    with pytest.raises(ValueError, match=r"^x must have 5 dimensions \(B, C, T, H, W\)"):
        video.causal_pad(torch.zeros(shape), 3, 1)
