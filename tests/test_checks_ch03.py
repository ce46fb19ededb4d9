"""Chapter 03 checkers: the reference passes; each known-wrong version fails with its message."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from checker_cases import case_id, passes, rejects, stub
from einops import rearrange

from mmcourse import fusion, patches
from mmcourse.checks import ExerciseFailed, ch03


def _divisible(x, p):
    if x.shape[-2] % p or x.shape[-1] % p:
        raise ValueError(f"image {tuple(x.shape[-2:])} not divisible by patch_size {p}")


# --- Exercise 3.1: patchify --------------------------------------------------------------------


def _patchify_unfold(x, patch_size):
    _divisible(x, patch_size)
    cols = F.unfold(x, kernel_size=patch_size, stride=patch_size)  # (B, C·P·P, N)
    c = x.shape[1]
    return rearrange(cols, "b (c p1 p2) n -> b n (p1 p2 c)", c=c, p1=patch_size)


def _unfold_channels_first(x, patch_size):
    _divisible(x, patch_size)
    return F.unfold(x, patch_size, stride=patch_size).transpose(1, 2)  # BUG: (c p1 p2)


def _unfold_reshape(x, patch_size):
    _divisible(x, patch_size)
    cols = F.unfold(x, patch_size, stride=patch_size)
    return cols.reshape(len(x), cols.shape[2], -1)  # BUG: reshape, axes not moved


def _grid_transposed(x, patch_size):
    _divisible(x, patch_size)
    return rearrange(x, "b c (h p1) (w p2) -> b (w h) (p1 p2 c)", p1=patch_size, p2=patch_size)


def _patch_transposed(x, patch_size):
    _divisible(x, patch_size)
    return rearrange(x, "b c (h p1) (w p2) -> b (h w) (p2 p1 c)", p1=patch_size, p2=patch_size)


def _plain_reshape(x, patch_size):
    _divisible(x, patch_size)
    return x.reshape(len(x), -1, patch_size * patch_size * x.shape[1])  # BUG: not P×P squares


def _no_divisibility_check(x, patch_size):
    cols = F.unfold(x, patch_size, stride=patch_size)  # drops the border silently
    return rearrange(cols, "b (c p1 p2) n -> b n (p1 p2 c)", c=x.shape[1], p1=patch_size)


def _height_check_only(x, patch_size):
    if x.shape[-2] % patch_size:  # BUG: a width the patch does not divide passes
        raise ValueError(f"height {x.shape[-2]} not divisible by {patch_size}")
    return _no_divisibility_check(x, patch_size)


def _float32(x, patch_size):
    return patches.patchify(x.float(), patch_size)


def test_patchify_references_pass(capsys, device):
    passes(ch03.check_patchify, patches.patchify, capsys, "3.1")
    passes(ch03.check_patchify, _patchify_unfold, capsys, "3.1")
    ch03.check_patchify(patches.patchify, device=device)
    assert "✓ Exercise 3.1 passed" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (
            _unfold_channels_first,
            r"failed check 3, \"every value(.|\n)*looks like: the \(c p1 p2\) order",
        ),
        (
            _unfold_reshape,
            r"failed check 2, (.|\n)*looks like: F\.unfold\'s \(B, C·P·P, N\) reshaped",
        ),
        (_grid_transposed, r"failed check 2, (.|\n)*looks like: the patch grid transposed"),
        (_patch_transposed, r"failed check 2, (.|\n)*looks like: each patch transposed"),
        (_plain_reshape, r"failed check 2, (.|\n)*looks like: a plain reshape of x"),
        (_no_divisibility_check, r"raises ValueError for a 6×8 image(.|\n)*no error"),
        (_height_check_only, r"raises ValueError for a 8×6 image(.|\n)*no error(.|\n)*both"),
        (_float32, r"keeps dtype float64(.|\n)*got:      dtype torch\.float32"),
        (stub, r"Exercise 3\.1 \(patchify\): not implemented yet"),
    ],
    ids=case_id,
)
def test_patchify_rejects(wrong, message):
    rejects(ch03.check_patchify, wrong, message)


# --- Exercise 3.2: unpatchify ------------------------------------------------------------------


def _unpatchify_fold(tokens, patch_size, height, width):
    n = (height // patch_size) * (width // patch_size)
    if tokens.shape[1] != n:
        raise ValueError(f"expected {n} patches, got {tokens.shape[1]}")
    cols = rearrange(tokens, "b n (p1 p2 c) -> b (c p1 p2) n", p1=patch_size, p2=patch_size)
    return F.fold(cols, (height, width), kernel_size=patch_size, stride=patch_size)


def _unpatchify_grid_transposed(tokens, patch_size, height, width):
    h = height // patch_size
    return rearrange(  # BUG: the grid read as (w h)
        tokens, "b (w h) (p1 p2 c) -> b c (h p1) (w p2)", h=h, p1=patch_size, p2=patch_size
    )


def _unpatchify_channels_first(tokens, patch_size, height, width):
    h = height // patch_size
    return rearrange(  # BUG: patches read as (c p1 p2)
        tokens, "b (h w) (c p1 p2) -> b c (h p1) (w p2)", h=h, p1=patch_size, p2=patch_size
    )


def _unpatchify_reshape(tokens, patch_size, height, width):
    return tokens.reshape(len(tokens), -1, height, width)  # BUG: reshape is not the inverse


def _unpatchify_no_count_check(tokens, patch_size, height, width):
    h = height // patch_size
    return rearrange(
        tokens, "b (h w) (p1 p2 c) -> b c (h p1) (w p2)", h=h, p1=patch_size, p2=patch_size
    )


def _unpatchify_too_many_only(tokens, patch_size, height, width):
    h, w = height // patch_size, width // patch_size
    if tokens.shape[1] > h * w:  # BUG: too few patches slip through
        raise ValueError(f"expected {h * w} patches, got {tokens.shape[1]}")
    padded = F.pad(tokens, (0, 0, 0, h * w - tokens.shape[1]))  # missing patches become 0
    return rearrange(
        padded, "b (h w) (p1 p2 c) -> b c (h p1) (w p2)", h=h, p1=patch_size, p2=patch_size
    )


def test_unpatchify_references_pass(capsys):
    passes(ch03.check_unpatchify, patches.unpatchify, capsys, "3.2")
    passes(ch03.check_unpatchify, _unpatchify_fold, capsys, "3.2")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_unpatchify_grid_transposed, r"failed check 1, (.|\n)*looks like: the patch grid transp"),
        (_unpatchify_channels_first, r"failed check 2, (.|\n)*looks like: (.|\n)*scrambles the"),
        (_unpatchify_reshape, r"failed check 1, (.|\n)*looks like: a plain reshape, which does"),
        (_unpatchify_no_count_check, r"raises ValueError for 5 patches(.|\n)*EinopsError"),
        (_unpatchify_too_many_only, r"raises ValueError for 3 patches(.|\n)*no error"),
        (stub, r"Exercise 3\.2 \(unpatchify\): not implemented yet"),
    ],
    ids=case_id,
)
def test_unpatchify_rejects(wrong, message):
    rejects(ch03.check_unpatchify, wrong, message)


# --- Exercise 3.3: the patch embedding as a convolution ---------------------------------------


def _conv_embed(x, weight, bias, patch_size):
    _divisible(x, patch_size)
    w = rearrange(weight, "d (p1 p2 c) -> d c p1 p2", p1=patch_size, p2=patch_size)
    return F.conv2d(x, w, bias, stride=patch_size).flatten(2).transpose(1, 2)


def _conv_embed_module(x, weight, bias, patch_size):
    embed = patches.PatchEmbed(patch_size, x.shape[1], len(weight)).to(x)
    with torch.no_grad():
        embed.proj.weight.copy_(weight)
        embed.proj.bias.copy_(bias)
    _divisible(x, patch_size)
    return embed.to_conv()(x).flatten(2).transpose(1, 2)


def _weights_not_permuted(x, weight, bias, patch_size):
    _divisible(x, patch_size)
    w = weight.reshape(len(weight), x.shape[1], patch_size, patch_size)  # BUG: (c p1 p2) assumed
    return F.conv2d(x, w, bias, stride=patch_size).flatten(2).transpose(1, 2)


def _kernel_transposed(x, weight, bias, patch_size):
    _divisible(x, patch_size)
    w = weight.reshape(len(weight), patch_size, patch_size, x.shape[1]).permute(0, 3, 2, 1)
    return F.conv2d(x, w, bias, stride=patch_size).flatten(2).transpose(1, 2)


def _channels_not_last(x, weight, bias, patch_size):
    _divisible(x, patch_size)
    w = rearrange(weight, "d (p1 p2 c) -> d c p1 p2", p1=patch_size, p2=patch_size)
    return F.conv2d(x, w, bias, stride=patch_size).flatten(2)  # BUG: (B, D, N)


def _linear_form(x, weight, bias, patch_size):
    return patches.patchify(x, patch_size) @ weight.T + bias  # right values, no convolution


def _conv_no_check(x, weight, bias, patch_size):
    w = rearrange(weight, "d (p1 p2 c) -> d c p1 p2", p1=patch_size, p2=patch_size)
    return F.conv2d(x, w, bias, stride=patch_size).flatten(2).transpose(1, 2)


def _conv_height_check_only(x, weight, bias, patch_size):
    if x.shape[-2] % patch_size:  # BUG: a width the patch does not divide passes
        raise ValueError(f"height {x.shape[-2]} not divisible by {patch_size}")
    return _conv_no_check(x, weight, bias, patch_size)


def test_conv_patch_embed_references_pass(capsys):
    passes(ch03.check_conv_patch_embed, _conv_embed, capsys, "3.3")
    passes(ch03.check_conv_patch_embed, _conv_embed_module, capsys, "3.3")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_weights_not_permuted, r"failed check 1, (.|\n)*looks like: the weight reshaped straight"),
        (_kernel_transposed, r"failed check 1, (.|\n)*looks like: the kernel transposed"),
        (
            _channels_not_last,
            r"failed check 1, (.|\n)*shape \(2, 5, 4\)\n  looks like: (.|\n)*D last",
        ),
        (_linear_form, r"computes the embedding with a convolution(.|\n)*F\.conv2d"),
        (_conv_no_check, r"raises ValueError for a 6×8 image(.|\n)*silently drops"),
        (_conv_height_check_only, r"raises ValueError for a 8×6 image(.|\n)*no error"),
        (stub, r"Exercise 3\.3 \(the patch embedding as a convolution\): not implemented yet"),
    ],
    ids=case_id,
)
def test_conv_patch_embed_rejects(wrong, message):
    rejects(ch03.check_conv_patch_embed, wrong, message)


# --- Exercise 3.4: sin-cos positional embedding -------------------------------------------------


def _sincos(height, width, dim, base=10_000.0, *, swap=False, per_dim=False, interleave=False):
    if dim % 4:
        raise ValueError(f"dim must be a multiple of 4, got {dim}")
    f = dim // 4
    k = torch.arange(f, dtype=torch.float64)
    omega = base ** (-2 * k / dim) if per_dim else base ** (-k / f)
    y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    if swap:
        y, x = x, y

    def encode(pos):
        angle = pos.flatten()[:, None].double() * omega
        pair = [angle.sin(), angle.cos()]
        return torch.stack(pair, dim=2).flatten(1) if interleave else torch.cat(pair, dim=1)

    return torch.cat([encode(y), encode(x)], dim=1).float()


def _sincos_swapped(height, width, dim, base=10_000.0):
    return _sincos(height, width, dim, base, swap=True)


def _sincos_per_dim(height, width, dim, base=10_000.0):
    return _sincos(height, width, dim, base, per_dim=True)


def _sincos_interleaved(height, width, dim, base=10_000.0):
    return _sincos(height, width, dim, base, interleave=True)


def _sincos_fixed_base(height, width, dim, base=10_000.0):
    return _sincos(height, width, dim, 10_000.0)  # BUG: ignores base


def _sincos_base_1000(height, width, dim, base=10_000.0):
    return _sincos(height, width, dim, 1_000.0)  # BUG: wrong frequency base


def _sincos_float64(height, width, dim, base=10_000.0):
    return _sincos(height, width, dim, base).double()


def _sincos_no_check(height, width, dim, base=10_000.0):
    return patches.sincos_2d(height, width, 4 * (dim // 4) or 4, base)


def test_sincos_references_pass(capsys):
    passes(ch03.check_sincos_2d, patches.sincos_2d, capsys, "3.4")
    passes(ch03.check_sincos_2d, _sincos, capsys, "3.4")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_sincos_swapped, r"failed check 1, (.|\n)*looks like: height and width swapped"),
        (_sincos_per_dim, r"failed check 1, (.|\n)*looks like: frequencies base\^\(−k/\(dim/2\)\)"),
        (_sincos_interleaved, r"failed check 1, (.|\n)*looks like: sin and cos interleaved"),
        (_sincos_base_1000, r"failed check 1, (.|\n)*ω_k = base\^\(−k/F\)"),
        (_sincos_fixed_base, r"failed check 3, \"uses the base argument"),
        (_sincos_float64, r"failed check 1, (.|\n)*dtype torch\.float32"),
        (_sincos_no_check, r"raises ValueError for dim=6(.|\n)*no error"),
        (stub, r"Exercise 3\.4 \(2-D sin-cos positional embedding\): not implemented yet"),
    ],
    ids=case_id,
)
def test_sincos_rejects(wrong, message):
    rejects(ch03.check_sincos_2d, wrong, message)


# --- Exercise 3.5: contrastive loss ------------------------------------------------------------


def _check_pairs(image_emb, text_emb):
    if image_emb.shape != text_emb.shape:
        raise ValueError("image_emb and text_emb must have the same shape")


def _clip_loss(image_emb, text_emb, temperature, *, mode="right"):
    _check_pairs(image_emb, text_emb)
    image_emb, text_emb = F.normalize(image_emb, dim=-1), F.normalize(text_emb, dim=-1)
    logits = image_emb @ text_emb.T / temperature
    labels = torch.arange(len(logits), device=logits.device)
    i2t, t2i = F.cross_entropy(logits, labels), F.cross_entropy(logits.T, labels)
    return {"right": (i2t + t2i) / 2, "one-way": i2t, "sum": i2t + t2i}[mode]


def _one_directional(image_emb, text_emb, temperature):
    return _clip_loss(image_emb, text_emb, temperature, mode="one-way")


def _summed(image_emb, text_emb, temperature):
    return _clip_loss(image_emb, text_emb, temperature, mode="sum")


def _no_temperature(image_emb, text_emb, temperature):
    return _clip_loss(image_emb, text_emb, 1.0)


def _temperature_multiplies(image_emb, text_emb, temperature):
    return _clip_loss(image_emb, text_emb, 1 / temperature)


def _not_normalised(image_emb, text_emb, temperature):
    _check_pairs(image_emb, text_emb)
    logits = image_emb @ text_emb.T / temperature
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def _zero_labels(image_emb, text_emb, temperature):
    _check_pairs(image_emb, text_emb)
    logits = F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T / temperature
    labels = torch.zeros(len(logits), dtype=torch.long, device=logits.device)  # BUG: all 0
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def _labels_on_the_default_device(image_emb, text_emb, temperature):
    _check_pairs(image_emb, text_emb)
    logits = F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T / temperature
    labels = torch.arange(len(logits))  # BUG: no device=, on a GPU the labels stay on the CPU
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def _detached_temperature(image_emb, text_emb, temperature):
    if isinstance(temperature, torch.Tensor):
        temperature = temperature.item()
    return _clip_loss(image_emb, text_emb, temperature)


def _normalises_in_place(image_emb, text_emb, temperature):
    image_emb /= image_emb.norm(dim=-1, keepdim=True)  # BUG: rescales the caller's tensors
    text_emb /= text_emb.norm(dim=-1, keepdim=True)
    return _clip_loss(image_emb, text_emb, temperature)


def test_contrastive_loss_references_pass(capsys):
    passes(ch03.check_contrastive_loss, fusion.contrastive_loss, capsys, "3.5")
    passes(ch03.check_contrastive_loss, _clip_loss, capsys, "3.5")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_one_directional, r"failed check 1, (.|\n)*looks like: only image→text"),
        (_summed, r"failed check 1, (.|\n)*looks like: the two directions summed(.|\n)*average"),
        (_no_temperature, r"failed check 1, (.|\n)*looks like: no temperature"),
        (
            _temperature_multiplies,
            r"failed check 1, (.|\n)*looks like: the similarities multiplied",
        ),
        (_not_normalised, r"failed check 1, (.|\n)*looks like: embeddings that are not normalised"),
        (
            _zero_labels,
            r"failed check 1, (.|\n)*looks like: every target 0(.|\n)*torch\.arange\(N\)",
        ),
        (_detached_temperature, r"gradient reaches temperature"),
        (_normalises_in_place, r"failed check 1, \"leaves its input image_emb unchanged"),
        (
            _labels_on_the_default_device,
            r"on the device of its inputs(.|\n)*(F\.cross_entropy got a tensor of shape \(5,\) "
            r"created without device=|target is on cpu)(.|\n)*device=x\.device",
        ),
        (stub, r"Exercise 3\.5 \(symmetric contrastive loss\): not implemented yet"),
    ],
    ids=case_id,
)
def test_contrastive_loss_rejects(wrong, message):
    rejects(ch03.check_contrastive_loss, wrong, message)


# --- Exercise 3.6: the projector ---------------------------------------------------------------


def _project(vision_tokens, w1, b1, w2, b2):
    h = F.gelu(vision_tokens[:, 1:] @ w1.T + b1)  # (B, N, H)
    return h @ w2.T + b2  # (B, N, D_t)


def _no_activation(vision_tokens, w1, b1, w2, b2):
    return (vision_tokens[:, 1:] @ w1.T + b1) @ w2.T + b2  # BUG: one linear map in disguise


def _relu(vision_tokens, w1, b1, w2, b2):
    return F.relu(vision_tokens[:, 1:] @ w1.T + b1) @ w2.T + b2


def _keeps_cls(vision_tokens, w1, b1, w2, b2):
    return F.gelu(vision_tokens @ w1.T + b1) @ w2.T + b2  # BUG: [CLS] projected too


def _drops_last(vision_tokens, w1, b1, w2, b2):
    return F.gelu(vision_tokens[:, :-1] @ w1.T + b1) @ w2.T + b2


def _in_a_list(vision_tokens, w1, b1, w2, b2):
    return [fusion.project(vision_tokens, w1, b1, w2, b2)]  # BUG: a list around the tensor


def _weights_not_transposed(vision_tokens, w1, b1, w2, b2):
    return F.gelu(vision_tokens[:, 1:] @ w1 + b1) @ w2 + b2  # crashes: (D_v) @ (H, D_v)


def test_project_references_pass(capsys):
    passes(ch03.check_project, fusion.project, capsys, "3.6")
    passes(ch03.check_project, _project, capsys, "3.6")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_no_activation, r"failed check 2, (.|\n)*looks like: no activation between"),
        (_relu, r"failed check 2, (.|\n)*looks like: ReLU instead of GELU"),
        (_keeps_cls, r"failed check 1, (.|\n)*got:      tensor of shape \(2, 5, 5\)(.|\n)*\[CLS\]"),
        (_drops_last, r"failed check 2, (.|\n)*looks like: the last token dropped(.|\n)*token 0"),
        (_weights_not_transposed, r"failed check 1, \"runs on(.|\n)*RuntimeError"),
        (
            _in_a_list,
            r"failed check 1, \"one text-space token per patch(.|\n)*expected: a tensor of shape "
            r"\(2, 4, 5\)\n  got:      a list of 1 value: \(tensor of shape \(2, 4, 5\)(.|\n)*"
            r"hint:     return the tensor itself",
        ),
        (stub, r"Exercise 3\.6 \(the vision-language projector\): not implemented yet"),
    ],
    ids=case_id,
)
def test_project_rejects(wrong, message):
    rejects(ch03.check_project, wrong, message)


def test_a_non_callable_is_refused():
    with pytest.raises(ExerciseFailed, match="pass your function itself"):
        ch03.check_patchify(patches.patchify(torch.zeros(1, 1, 2, 2), 1))
