"""mmcourse.unet: shapes for pixels and latents, conditioning that matters, batch independence,
gradients everywhere, a size that ships, and clear errors on bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmcourse.unet import NULL, NUM_CLASSES, UNet, timestep_embedding

shapes = st.lists(st.integers(0, 5), min_size=0, max_size=5).map(tuple)


# Small models run fastest on one thread, and stay fast when other jobs load the CPU.
pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(b: int = 3, c: int = 3, size: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, size, size, generator=g)
    t = torch.randint(1000, (b,), generator=g)
    labels = torch.stack([torch.randint(k, (b,), generator=g) for k in NUM_CLASSES], dim=1)
    return x, t, labels


def _live(model: UNet) -> UNet:
    """The output layer starts at zero (ε̂ = 0); give it weights so outputs differ."""
    torch.manual_seed(0)
    torch.nn.init.normal_(model.conv_out.weight, std=0.1)
    return model


@pytest.mark.parametrize(
    ("config", "size"),
    [({}, 32), ({"in_channels": 16, "patch": 1}, 8), ({"channels": (8, 16, 16), "patch": 2}, 16)],
)
def test_output_has_the_input_shape(config, size):
    model = UNet(**config)
    x, t, labels = _inputs(c=model.in_channels, size=size)
    assert model(x, t, labels).shape == x.shape


def test_starts_by_predicting_the_input():
    """At high noise x_t ≈ ε: the identity skip makes that the starting guess."""
    x, t, labels = _inputs()
    torch.testing.assert_close(UNet(channels=(16, 32))(x, t, labels), x)


def _small() -> UNet:
    return _live(UNet(channels=(16, 32)))


def test_time_and_caption_change_the_prediction():
    model = _small()
    x, t, labels = _inputs()
    out = model(x, t, labels)
    assert not torch.allclose(out, model(x, (t + 500) % 1000, labels))
    assert not torch.allclose(out, model(x, t, torch.full_like(labels, NULL)))
    assert not torch.allclose(out, model(x, t, (labels + 1) % 3))


def test_rows_are_independent():
    model = _small().eval()
    x, t, labels = _inputs(b=4)
    torch.testing.assert_close(model(x[:2], t[:2], labels[:2]), model(x, t, labels)[:2])


def test_every_parameter_gets_a_gradient():
    model = _small()
    x, t, labels = _inputs()
    model(x, t, labels).pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_default_size_ships_under_3_mb():
    n = sum(p.numel() for p in UNet().parameters())
    assert n * 4 < 3e6, n


def test_timestep_embedding():
    emb = timestep_embedding(torch.tensor([0, 10, 999]), 16)
    assert emb.shape == (3, 16)
    torch.testing.assert_close(emb[0], torch.cat([torch.ones(8), torch.zeros(8)]))
    assert emb.abs().max() <= 1


@settings(max_examples=40, deadline=None)
@given(shape=shapes)
def test_names_a_wrong_x(shape):
    if len(shape) == 4 and shape[1] == 3:
        return
    with pytest.raises(ValueError, match="^x must have"):
        UNet(channels=(8, 8))(torch.zeros(shape), torch.zeros(2, dtype=torch.long), None)


def test_names_t_labels_and_size():
    model = UNet(channels=(8, 8))
    x, t, labels = _inputs(b=2)
    with pytest.raises(TypeError, match="^t must have dtype torch.int64"):
        model(x, t.float(), labels)
    with pytest.raises(ValueError, match="^t must have shape"):
        model(x, t[:1], labels)
    with pytest.raises(ValueError, match="^labels must have shape"):
        model(x, t, labels[:, :2])
    with pytest.raises(TypeError, match="^x must be a floating-point"):
        model(x.long(), t, labels)
    with pytest.raises(ValueError, match="multiples of 8"):
        model(torch.zeros(2, 3, 12, 12), t, labels)


def test_groups_that_do_not_divide_the_channels_are_a_clear_error():
    with pytest.raises(ValueError, match="groups must divide channels.*48 channels into 7 groups"):
        UNet(groups=7)
