"""mmcourse.patches: patchify/unpatchify, the Linear = Conv2d patch embedding, sin-cos positions,
the cost table, and clear errors for wrong input (property-tested)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from mmcourse import patches

DTYPES = [torch.float16, torch.float32, torch.float64, torch.int64, torch.uint8, torch.bool]
shapes = st.lists(st.integers(0, 5), min_size=0, max_size=6).map(tuple)
not_tensors = st.one_of(st.none(), st.integers(), st.text(max_size=5), st.lists(st.floats()))


def test_patchify_puts_channels_last_inside_each_patch():
    x = torch.arange(2 * 4 * 4).view(1, 2, 4, 4)  # channel 0: 0–15, channel 1: 16–31
    tokens = patches.patchify(x, 2)  # (1, 4, 8)
    assert tokens.shape == (1, 4, 8)
    # patch 0 = rows 0–1, cols 0–1; values (p1 p2 c): pixel (0,0) ch0, ch1, pixel (0,1) ch0, ...
    assert tokens[0, 0].tolist() == [0, 16, 1, 17, 4, 20, 5, 21]
    assert tokens[0, 1].tolist()[:2] == [2, 18]  # patch 1 is to the right of patch 0
    assert tokens[0, 2].tolist()[:2] == [8, 24]  # patch 2 starts the second row of patches


@pytest.mark.parametrize(("c", "h", "w", "p"), [(1, 8, 8, 2), (3, 32, 32, 4), (3, 6, 9, 3)])
def test_unpatchify_inverts_patchify(c, h, w, p):
    x = torch.randn(2, c, h, w)
    tokens = patches.patchify(x, p)
    assert tokens.shape == (2, (h // p) * (w // p), p * p * c)
    assert torch.equal(patches.unpatchify(tokens, p, h, w), x)


def test_patch_embedding_equals_its_conv2d_form(device):
    torch.manual_seed(0)
    embed = patches.PatchEmbed(patch_size=4, channels=3, dim=32).to(device)
    x = torch.rand(5, 3, 32, 32, device=device)
    conv_tokens = embed.to_conv()(x).flatten(2).transpose(1, 2)  # (B, N, D)
    assert conv_tokens.device == x.device
    assert (embed(x) - conv_tokens).abs().max().item() < 1e-6
    embed64, x64 = embed.double(), x.double()
    gap = (embed64(x64) - embed64.to_conv()(x64).flatten(2).transpose(1, 2)).abs().max()
    assert gap.item() < 1e-12


def test_conv_weight_layout_and_the_unpermuted_bug():
    embed = patches.PatchEmbed(patch_size=2, channels=3, dim=4)
    x = torch.rand(1, 3, 4, 4)
    conv = nn.Conv2d(3, 4, 2, stride=2)
    with torch.no_grad():
        conv.weight.copy_(embed.proj.weight.reshape(4, 3, 2, 2))  # the classic bug
        conv.bias.copy_(embed.proj.bias)
    wrong = conv(x).flatten(2).transpose(1, 2)
    assert not torch.allclose(wrong, embed(x), atol=1e-3)
    assert patches.linear_weight_to_conv(embed.proj.weight, 2).shape == (4, 3, 2, 2)


def test_sincos_2d_layout():
    pos = patches.sincos_2d(3, 5, 16)  # (15, 16)
    assert pos.shape == (15, 16) and pos.dtype == torch.float32
    assert torch.equal(pos[0], torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0] * 4 + [1.0] * 4))
    # patch n = y·5 + x: the first half depends on the row only, the second on the column only
    grid = pos.view(3, 5, 16)
    assert torch.allclose(grid[:, :1, :8].expand(3, 5, 8), grid[..., :8])
    assert torch.allclose(grid[:1, :, 8:].expand(3, 5, 8), grid[..., 8:])
    assert torch.allclose(pos[1, 8], torch.sin(torch.tensor(1.0)))  # x = 1, ω_0 = 1


def test_sincos_2d_neighbours_are_more_similar_than_far_patches():
    pos = patches.sincos_2d(8, 8, 64).view(8, 8, 64)
    centre = pos[4, 4]
    near, far = pos[4, 5] @ centre, pos[0, 0] @ centre
    assert near > far


def test_cost_table_matches_the_vit_numbers():
    rows = patches.cost_table(224, [32, 16, 14, 8])
    assert [r["tokens"] for r in rows] == [49, 196, 256, 784]
    assert rows[3]["pairs"] / rows[1]["pairs"] == 16
    assert rows[0]["relative_cost"] == 1 and rows[0]["values_per_patch"] == 3 * 32 * 32
    assert [r["tokens"] for r in patches.cost_table(32, [8, 4, 2])] == [16, 64, 256]


# --- input validation --------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(shape=shapes)
def test_patchify_names_x_on_wrong_dimensions(shape):
    if len(shape) == 4:
        return
    with pytest.raises(ValueError, match=r"^x must have 4 dimensions \(B, C, H, W\)"):
        patches.patchify(torch.zeros(shape), 2)


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), p=st.integers(1, 6))
def test_patchify_names_sizes_that_do_not_divide(h, w, p):
    x = torch.zeros(1, 2, h, w)
    if h % p == 0 and w % p == 0:
        assert patches.patchify(x, p).shape == (1, (h // p) * (w // p), p * p * 2)
    else:
        with pytest.raises(ValueError, match=rf"^x of size {h}×{w} does not divide into patches"):
            patches.patchify(x, p)


@settings(max_examples=30, deadline=None)
@given(p=st.one_of(st.integers(-3, 0), st.floats(), st.text(max_size=2), st.booleans()))
def test_patchify_names_a_bad_patch_size(p):
    with pytest.raises((ValueError, TypeError), match="^patch_size must be"):
        patches.patchify(torch.zeros(1, 1, 4, 4), p)


@settings(max_examples=30, deadline=None)
@given(obj=not_tensors)
def test_patchify_and_unpatchify_name_non_tensors(obj):
    with pytest.raises(TypeError, match="^x must be a torch.Tensor"):
        patches.patchify(obj, 2)
    with pytest.raises(TypeError, match="^patches must be a torch.Tensor"):
        patches.unpatchify(obj, 2, 4, 4)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 9), values=st.integers(1, 20))
def test_unpatchify_names_the_patch_count_and_size(n, values):
    tokens = torch.zeros(1, n, values)
    if n == 4 and values % 4 == 0:
        assert patches.unpatchify(tokens, 2, 4, 4).shape == (1, values // 4, 4, 4)
    else:
        with pytest.raises(ValueError, match="^patches must"):
            patches.unpatchify(tokens, 2, 4, 4)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, dtype=st.sampled_from(DTYPES))
def test_patch_embed_names_x_on_wrong_layout(shape, dtype):
    embed = patches.PatchEmbed(2, 3, 8)
    if len(shape) == 4 and shape[1] == 3 and dtype.is_floating_point:
        return
    with pytest.raises((ValueError, TypeError), match="^x must"):
        embed(torch.zeros(shape, dtype=dtype))


@settings(max_examples=40, deadline=None)
@given(dim=st.integers(1, 40))
def test_sincos_2d_names_a_dim_not_divisible_by_four(dim):
    if dim % 4 == 0:
        assert patches.sincos_2d(2, 3, dim).shape == (6, dim)
    else:
        with pytest.raises(ValueError, match="^dim must be a multiple of 4"):
            patches.sincos_2d(2, 3, dim)


@settings(max_examples=20, deadline=None)
@given(base=st.one_of(st.floats(-10, 1), st.text(max_size=2), st.none()))
def test_sincos_2d_names_a_bad_base(base):
    with pytest.raises(ValueError, match="^base must be a number > 1"):
        patches.sincos_2d(2, 2, 8, base=base)


def test_linear_weight_to_conv_and_cost_names_bad_arguments():
    with pytest.raises(ValueError, match=r"^weight must have P·P·C columns"):
        patches.linear_weight_to_conv(torch.zeros(4, 10), 2)
    with pytest.raises(TypeError, match="^weight must be a floating-point tensor"):
        patches.linear_weight_to_conv(torch.zeros(4, 12, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="^image_size 32 is not divisible by patch_size 5"):
        patches.attention_cost(32, 5)
