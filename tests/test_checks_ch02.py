"""Chapter 02 checkers: the reference passes; each known-wrong version fails with its message."""

from __future__ import annotations

import math

import pytest
import torch
from checker_cases import case_id, stub
from torch import nn

from mmcourse import tokenizer, vq
from mmcourse.checks import ExerciseFailed, ch02


def test_stubs_are_not_implemented_yet():
    for checker in (ch02.check_res_block, ch02.check_psnr, ch02.check_to_tokens):
        with pytest.raises(ExerciseFailed, match=r"Exercise 2\.\d .*: not implemented yet"):
            checker(stub)


# --- Exercise 2.1: ResBlock --------------------------------------------------------------------


def _layers(channels, groups, act=nn.SiLU):
    return nn.Sequential(
        nn.GroupNorm(groups, channels),
        act(),
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.GroupNorm(groups, channels),
        act(),
        nn.Conv2d(channels, channels, 3, padding=1),
    )


class _Block(nn.Module):
    """A candidate: the layers above and a configurable forward and check."""

    skip = True
    validate = True
    act = nn.SiLU

    def __init__(self, channels, groups=8):
        super().__init__()
        if self.validate and channels % groups:
            raise ValueError(f"groups ({groups}) must divide channels ({channels})")
        self.block = _layers(channels, groups, self.act)

    def forward(self, x):
        return x + self.block(x) if self.skip else self.block(x)


class _NoSkip(_Block):
    skip = False


class _Relu(_Block):
    act = nn.ReLU


class _AssertInstead(_Block):
    validate = False

    def __init__(self, channels, groups=8):
        assert channels % groups == 0  # an AssertionError, and it says nothing
        super().__init__(channels, groups)


class _VagueError(_Block):
    validate = False

    def __init__(self, channels, groups=8):
        if channels % groups:
            raise ValueError("bad groups")
        super().__init__(channels, groups)


class _SwappedGroupNorm(nn.Module):
    def __init__(self, channels, groups):
        super().__init__()
        if channels % groups:
            raise ValueError(f"groups ({groups}) must divide channels ({channels})")
        self.block = nn.Sequential(
            nn.GroupNorm(channels, groups),  # (num_groups, num_channels) swapped
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x):
        return x + self.block(x)


class _PostNorm(_Block):
    def __init__(self, channels, groups):
        super().__init__(channels, groups)
        self.block = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(groups, channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(groups, channels),
            nn.SiLU(),
        )


class _NoPadding(_Block):
    def __init__(self, channels, groups):
        super().__init__(channels, groups)
        self.block[2].padding = (0, 0)

    def forward(self, x):
        return x[..., 1:-1, 1:-1] + self.block(x)


class _DefaultGroupsFour(_Block):
    def __init__(self, channels, groups=4):  # BUG: the documented default is 8
        super().__init__(channels, groups)


class _NoDefaultGroups(_Block):
    def __init__(self, channels, groups):  # BUG: groups has no default
        super().__init__(channels, groups)


class _DetachedSkip(_Block):
    def forward(self, x):
        return x.detach() + self.block(x)  # BUG: the skip carries no gradient


class _FrozenBlock(_Block):
    def forward(self, x):
        with torch.no_grad():  # BUG: the weights never learn
            out = self.block(x)
        return x + out


class _Float64Out(_Block):
    def forward(self, x):
        return (x + self.block(x)).double()  # BUG: a float64 result for float32 images


class _AddsInPlace(_Block):
    def forward(self, x):
        x += self.block(x)  # BUG: writes into the caller's x
        return x


def test_res_block_reference_passes(capsys):
    ch02.check_res_block(tokenizer.ResBlock)
    assert capsys.readouterr().out.startswith("✓ Exercise 2.1 passed (")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_NoSkip, r"keeps the skip connection(.|\n)*got:      block\(x\) alone"),
        (_Relu, r"gives its output(.|\n)*SiLU \(not ReLU\)"),
        (_AssertInstead, r"ResBlock\(36, 8\) raises ValueError(.|\n)*got:      AssertionError"),
        (_VagueError, r"names both numbers(.|\n)*got:      'bad groups'"),
        (_SwappedGroupNorm, r"runs on \(16, 4\)(.|\n)*must be divisible by num_groups \(16\)"),
        (_PostNorm, r"has the layers of the docstring"),
        (_DefaultGroupsFour, r"ResBlock\(16\) with the reference's weights(.|\n)*groups=8"),
        (_NoDefaultGroups, r"runs on \(16\)(.|\n)*missing 1 required(.|\n)*docstring's signature"),
        (_DetachedSkip, r"gradient reaches x through the skip(.|\n)*nothing detached"),
        (_FrozenBlock, r"gradient reaches x(.|\n)*no torch\.no_grad"),
        (_AddsInPlace, r"failed check 3, \"leaves its input x unchanged"),
        (
            _NoPadding,
            r"keeps the shape \(2, 16, 6, 5\)(.|\n)*got:      tensor of shape \(2, 16, 4, 3\)",
        ),
        (
            _Float64Out,
            r"keeps the dtype torch\.float32\":\n  expected: a tensor of dtype torch\.float32\n"
            r"  got:      tensor of shape \(2, 16, 6, 5\), dtype torch\.float64",
        ),
    ],
    ids=case_id,
)
def test_res_block_wrong_versions_fail(wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        ch02.check_res_block(wrong)


# --- Exercise 2.3: psnr ------------------------------------------------------------------------


def _mse(x, y):
    return (x - y).pow(2).flatten(1).mean(dim=1)


def _peak_255(x, y, max_value=1.0):
    return 10 * torch.log10(255.0**2 / _mse(x, y).clamp_min(1e-10))


def _batch_mean_first(x, y, max_value=1.0):
    mse = (x - y).pow(2).mean()  # one MSE for the whole batch
    return 10 * torch.log10(max_value**2 / mse.clamp_min(1e-10)).expand(len(x))


def _twenty_log_mse(x, y, max_value=1.0):
    return 20 * torch.log10(max_value / _mse(x, y).clamp_min(1e-10))


def _ignores_max_value(x, y, max_value=1.0):
    return 10 * torch.log10(1.0 / _mse(x, y).clamp_min(1e-10))


def _no_floor(x, y, max_value=1.0):
    return 10 * torch.log10(max_value**2 / _mse(x, y))


def _python_floats(x, y, max_value=1.0):
    values = [10 * math.log10(max_value**2 / max(m, 1e-10)) for m in _mse(x, y).tolist()]
    return torch.tensor(values, device=x.device)


def _sum_not_mean(x, y, max_value=1.0):
    mse = (x - y).pow(2).flatten(1).sum(dim=1)
    return 10 * torch.log10(max_value**2 / mse.clamp_min(1e-10))


def test_psnr_reference_passes(capsys):
    ch02.check_psnr(tokenizer.psnr)
    assert capsys.readouterr().out.startswith("✓ Exercise 2.3 passed (")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_peak_255, r"one PSNR per image(.|\n)*looks like: a peak of 255 where max_value"),
        (
            _batch_mean_first,
            r"one PSNR per image(.|\n)*looks like: one MSE for the whole batch(.|\n)*afterwards",
        ),
        (_twenty_log_mse, r"one PSNR per image(.|\n)*looks like: 20 · log10\(max_value / MSE\)"),
        (_ignores_max_value, r"max_value=255(.|\n)*looks like: a peak of 1 whatever max_value"),
        (_no_floor, r"identical images give 100 dB(.|\n)*got:      .*inf"),
        (_python_floats, r"keeps dtype float64(.|\n)*dtype torch.float32"),
        (_sum_not_mean, r"one PSNR per image(.|\n)*looks like: the squared errors summed over C"),
    ],
    ids=case_id,
)
def test_psnr_wrong_versions_fail(wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        ch02.check_psnr(wrong)


# --- Exercise 2.2: to_tokens -------------------------------------------------------------------


def _reference_to_tokens(z_e, codebook):
    b, d, h, w = z_e.shape
    rows = z_e.permute(0, 2, 3, 1).reshape(-1, d)  # (B·h·w, D)
    return vq.squared_distances(rows, codebook).argmin(dim=1).view(b, h, w)


def _reshape_without_permute(z_e, codebook):
    b, d, h, w = z_e.shape
    rows = z_e.reshape(-1, d)  # mixes channels of different positions
    return vq.squared_distances(rows, codebook).argmin(dim=1).view(b, h, w)


def _argmax(z_e, codebook):
    b, d, h, w = z_e.shape
    rows = z_e.permute(0, 2, 3, 1).reshape(-1, d)
    return vq.squared_distances(rows, codebook).argmax(dim=1).view(b, h, w)


def _transposed(z_e, codebook):
    b, d, h, w = z_e.shape
    rows = z_e.permute(0, 3, 2, 1).reshape(-1, d)  # (B, w, h, D): column by column
    return vq.squared_distances(rows, codebook).argmin(dim=1).view(b, h, w)


def _dot_product_similarity(z_e, codebook):
    b, d, h, w = z_e.shape
    rows = z_e.permute(0, 2, 3, 1).reshape(-1, d)
    return (rows @ codebook.T).argmax(dim=1).view(b, h, w)  # ignores ‖e‖²


def _flat_tokens(z_e, codebook):
    rows = z_e.permute(0, 2, 3, 1).reshape(-1, z_e.shape[1])
    return vq.squared_distances(rows, codebook).argmin(dim=1)  # (B·h·w,)


def _sums_over_codes(z_e, codebook):
    b, d, h, w = z_e.shape
    rows = z_e.permute(0, 2, 3, 1).reshape(-1, d)
    diff = rows[:, None, :] - codebook[None, :, :]  # (N, K, D)
    return diff.pow(2).sum(dim=1).argmin(dim=1).view(b, h, w)  # summed over K, not D


def _float_tokens(z_e, codebook):
    return _reference_to_tokens(z_e, codebook).float()  # e.g. to plot them


def _in_place(z_e, codebook):
    centre = codebook.mean(0)  # centring both sides keeps every distance: right tokens...
    codebook -= centre  # ...but the caller's tensors are changed
    z_e -= centre[None, :, None, None]
    return _reference_to_tokens(z_e, codebook)


def test_to_tokens_reference_passes(capsys):
    ch02.check_to_tokens(_reference_to_tokens)
    assert capsys.readouterr().out.startswith("✓ Exercise 2.2 passed (")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (
            _reshape_without_permute,
            r"tokens of z_e \(2, 4, 3, 5\)(.|\n)*looks like: z_e reshaped to rows without moving "
            r"channels last",
        ),
        (_argmax, r"tokens of z_e(.|\n)*looks like: argmax where argmin belongs"),
        (
            _transposed,
            r"tokens of z_e \(2, 4, 3, 5\)(.|\n)*looks like: the positions taken column by column",
        ),
        (_dot_product_similarity, r"tokens of z_e(.|\n)*looks like: the largest dot product z·e"),
        (_flat_tokens, r"expected: shape \(2, 3, 5\)(.|\n)*got:      shape \(30,\)"),
        (_sums_over_codes, r"tokens of z_e(.|\n)*values differ"),
        (_float_tokens, r"returns tokens as a long tensor(.|\n)*dtype torch.float32"),
        (_in_place, r"leaves its input z_e unchanged(.|\n)*x\.clone\(\)"),
    ],
    ids=case_id,
)
def test_to_tokens_wrong_versions_fail(wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        ch02.check_to_tokens(wrong)
