"""Checkers of chapter 02 (image tokenizer): the residual block, latents → tokens, and PSNR."""

from __future__ import annotations

import torch
from torch import nn

from mmcourse import autoencoder, tokenizer, vq
from mmcourse.checks._contract import call
from mmcourse.checks._core import Check, exercise, gradients, seeded

_BLOCK_LAYOUT = (
    "self.block = nn.Sequential(GroupNorm, SiLU, Conv2d 3×3, GroupNorm, SiLU, Conv2d 3×3) and "
    "forward returning x + self.block(x)"
)


@exercise("2.1", "a residual block", references=(tokenizer.ResBlock,))
def check_res_block(check: Check) -> None:
    """Exercise 2.1: ResBlock(channels, groups) is an nn.Module mapping (B, C, H, W) to itself."""
    g = seeded(21)
    dev = check.device
    for channels, groups in [(16, 4), (24, 8), (8, 8), (16, None)]:
        args = (channels,) if groups is None else (channels, groups)
        name = f"ResBlock({', '.join(str(a) for a in args)})"
        with torch.random.fork_rng(devices=[]):  # seeded weights, the learner's RNG untouched
            torch.manual_seed(channels)
            reference = tokenizer.ResBlock(*args).to(dev)
        block = call(check, *args)
        check.that(
            isinstance(block, nn.Module),
            f"{name} builds an nn.Module",
            expected="an nn.Module",
            got=type(block).__name__,
            hint="subclass nn.Module and call super().__init__() first",
        )
        mine, theirs = reference.state_dict(), block.state_dict()
        layout = {k: tuple(v.shape) for k, v in mine.items()}
        got_layout = {k: tuple(v.shape) for k, v in theirs.items()}
        check.that(
            layout == got_layout,
            f"{name} has the layers of the docstring",
            expected=f"parameters {layout}",
            got=f"parameters {got_layout}",
            hint=f"build {_BLOCK_LAYOUT}; nn.GroupNorm takes (num_groups, num_channels) in "
            "that order",
        )
        block.load_state_dict(mine)  # the same weights, so the outputs must agree
        block.to(dev)
        x = torch.randn(2, channels, 6, 5, generator=g).to(dev)
        got, expected = _forward(check, block, x), reference(x)
        check.tensor(
            got,
            f"{name} keeps the shape {tuple(x.shape)}",
            shape=x.shape,
            hint="a common cause is a 3×3 convolution without padding=1, which keeps H and W "
            "(the skip needs equal shapes)",
        )
        check.tensor(got, f"{name} keeps the dtype {x.dtype}", dtype=x.dtype)
        check.that(
            not torch.allclose(got, expected - x, atol=1e-5),
            f"{name} keeps the skip connection",
            expected="x + block(x)",
            got="block(x) alone",
            hint="return x + self.block(x): the skip path carries x, and its gradient, through",
        )
        check.close(
            got,
            expected,
            f"{name} with the reference's weights gives its output",
            atol=1e-5,
            hint="groups defaults to 8: ResBlock(channels, groups=8)"
            if groups is None
            else "a common cause is the order or the activation: normalise before each "
            "convolution, SiLU (not ReLU) after each GroupNorm",
        )
    _check_gradients(check, block, reference, x, g)
    error = check.raises(
        ValueError,
        "ResBlock(36, 8) raises ValueError: 8 groups cannot split 36 channels",
        36,
        8,
        hint="check channels % groups before building the layers",
    )
    check.that(
        "36" in str(error) and "8" in str(error),
        "the error for ResBlock(36, 8) names both numbers",
        expected="a message naming channels=36 and groups=8",
        got=repr(str(error)),
        hint="e.g. raise ValueError(f'groups ({groups}) must divide channels ({channels})')",
    )


@exercise(
    "2.2",
    "latents to tokens",
    references=(autoencoder.VQAutoencoder.encode, vq.VectorQuantizer.forward, vq._to_rows),
)
def check_to_tokens(check: Check) -> None:
    """Exercise 2.2: to_tokens(z_e (B, D, h, w), codebook (K, D)) -> tokens (B, h, w) long."""
    g = seeded(23)
    dev = check.device
    hint = (
        "move channels last first: z_e.permute(0, 2, 3, 1) is (B, h, w, D), whose rows are "
        "the vectors; reshape to (B·h·w, D), take the nearest code, reshape to (B, h, w)"
    )
    for b, d, h, w, k in [(2, 4, 3, 5, 16), (3, 8, 4, 4, 64), (1, 2, 2, 7, 5)]:
        codebook = torch.randn(k, d, generator=g).to(dev)
        # Latents near codes, so every token is unambiguous.
        picks = torch.randint(k, (b, h, w), generator=g).to(dev)
        noise = 0.01 * torch.randn(b, d, h, w, generator=g).to(dev)
        z_e = codebook[picks].permute(0, 3, 1, 2) + noise  # (B, D, h, w)
        expected = _tokens(z_e, codebook)
        got = call(check, z_e, codebook)
        check.tensor(
            got,
            "returns tokens as a long tensor",
            dtype=torch.long,
            dtype_hint="argmin returns torch.long indices; don't convert them to float or int32",
        )
        check.equal(
            got,
            expected,
            f"tokens of z_e {(b, d, h, w)} with a codebook of {k} codes",
            hint=hint + "; nearest means the smallest squared distance (argmin)",
            alternatives=_token_mistakes(z_e, codebook),
        )
    z_e = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64).to(dev)
    codebook = torch.randn(10, 4, generator=g, dtype=torch.float64).to(dev)
    expected = _tokens(z_e, codebook)
    check.equal(
        call(check, z_e, codebook),
        expected,
        "float64 latents and codebook: long tokens on the same device",
        hint=hint,
    )


@exercise("2.3", "PSNR per image", references=(tokenizer.psnr,))
def check_psnr(check: Check) -> None:
    """Exercise 2.3: psnr(x, y, max_value=1.0) -> (B,) dB, one value per image."""
    g = seeded(22)
    dev = check.device
    x = torch.rand(4, 3, 8, 8, generator=g).to(dev)
    # Errors of very different sizes per image, so averaging in the wrong place shows.
    scale = torch.tensor([0.3, 0.1, 0.03, 0.01]).view(4, 1, 1, 1).to(dev)
    y = x + scale * torch.randn(4, 3, 8, 8, generator=g).to(dev)
    hint = "10 · log10(max_value² / MSE) with the MSE of each image (mean over C, H and W)"
    expected = tokenizer.psnr(x, y)
    got = call(check, x, y)
    check.close(
        got,
        expected,
        "one PSNR per image for 4 images with different errors",
        atol=1e-3,
        hint=hint + "; average over images only afterwards, outside this function",
        alternatives=_psnr_mistakes(x, y, 1.0),
    )
    ramp = torch.linspace(0, 1, 48).view(1, 3, 4, 4).to(dev)
    noisy = ramp + 0.1 * torch.ones_like(ramp)  # MSE = 0.01 exactly: 20 dB at max_value 1
    check.close(
        call(check, ramp, noisy),
        torch.tensor([20.0], device=dev),
        "an error of 0.1 on every pixel of [0, 1] images is 20 dB",
        atol=1e-3,
        hint=hint + "; with pixels in [0, 1] the peak is 1",
        alternatives=_psnr_mistakes(ramp, noisy, 1.0),
    )
    check.close(
        call(check, ramp * 255, noisy * 255, max_value=255.0),
        torch.tensor([20.0], device=dev),
        "max_value=255 on the same images scaled to [0, 255] is still 20 dB",
        atol=1e-3,
        hint="use max_value² in the numerator; a common cause is a fixed peak",
        alternatives=_psnr_mistakes(ramp * 255, noisy * 255, 255.0),
    )
    same = call(check, x, x.clone())
    check.close(
        same,
        torch.full((4,), 100.0, device=dev),
        "identical images give 100 dB (MSE floored at 1e-10), not inf",
        atol=1e-3,
        hint="mse.clamp_min(1e-10) before dividing",
    )
    x64, y64 = x.double(), y.double()
    expected = tokenizer.psnr(x64, y64)
    dtype_hint = "compute with tensor operations on x and y, no Python floats or numpy"
    check.close(
        call(check, x64, y64),
        expected,
        "keeps dtype float64 and the device",
        atol=1e-6,
        hint=dtype_hint,
        dtype_hint=dtype_hint,
    )


def _forward(check: Check, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """block(x) run like a candidate: a crash or a stub becomes a readable failure, and x must
    come back unchanged."""
    candidate, check.candidate = check.candidate, block
    try:
        return call(check, x)
    finally:
        check.candidate = candidate


def _check_gradients(
    check: Check, block: nn.Module, reference: nn.Module, x: torch.Tensor, g: torch.Generator
) -> None:
    """The gradient of a pretend loss reaches x (through both paths) and every weight."""
    upstream = torch.randn(x.shape, generator=g).to(x.device)
    mine, theirs = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    got = _forward(check, block, mine)
    names = [n for n, _ in reference.named_parameters()]
    got_params = dict(block.named_parameters())
    got_grads = gradients((got * upstream).sum(), [mine, *(got_params[n] for n in names)])
    ref_grads = gradients((reference(theirs) * upstream).sum(), [theirs, *reference.parameters()])
    check.close(
        got_grads[0],
        ref_grads[0],
        "the gradient reaches x through the skip and through the block",
        atol=1e-4,
        hint="return x + self.block(x) with nothing detached and no torch.no_grad(): the skip "
        "carries the gradient to x unchanged",
    )
    for name, got_grad, ref_grad in zip(names, got_grads[1:], ref_grads[1:]):
        check.close(
            got_grad,
            ref_grad,
            f"the gradient reaches the weight block.{name}",
            atol=1e-4,
            hint="every layer must be trained: no .detach() and no torch.no_grad() in forward",
        )


def _token_mistakes(z_e: torch.Tensor, codebook: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the classic mistakes of Exercise 2.2 give on z_e (B, D, h, w), codebook (K, D)."""
    b, d, h, w = z_e.shape
    rows = z_e.permute(0, 2, 3, 1).reshape(-1, d)  # (B·h·w, D)
    distances = vq.squared_distances(rows, codebook)  # (B·h·w, K)
    by_columns = z_e.permute(0, 3, 2, 1).reshape(-1, d)  # (B·w·h, D)
    return {
        "z_e reshaped to rows without moving channels last: reshape keeps the memory order "
        "(B, D, h, w), so each row mixes channels of different positions; permute(0, 2, 3, 1) "
        "first": vq.nearest_code(z_e.reshape(-1, d), codebook).view(b, h, w),
        "argmax where argmin belongs: the nearest code has the smallest squared distance": (
            distances.argmax(dim=1).view(b, h, w)
        ),
        "the positions taken column by column: permute(0, 3, 2, 1) swaps h and w; "
        "permute(0, 2, 3, 1) keeps rows before columns": vq.nearest_code(by_columns, codebook).view(
            b, h, w
        ),
        "the largest dot product z·e where the smallest distance belongs: ‖e‖² differs from "
        "code to code, so it counts too": (rows @ codebook.T).argmax(dim=1).view(b, h, w),
    }


def _psnr_mistakes(x: torch.Tensor, y: torch.Tensor, max_value: float) -> dict:
    """What the classic mistakes of Exercise 2.3 give on images x, y (B, C, H, W)."""
    mse = (x - y).pow(2).flatten(1).mean(dim=1).clamp_min(1e-10)  # (B,)
    batch = (x - y).pow(2).mean().clamp_min(1e-10).expand(len(x))  # (B,), one for all
    summed = (x - y).pow(2).flatten(1).sum(dim=1).clamp_min(1e-10)  # (B,)
    return {
        "one MSE for the whole batch: the MSE of each image (mean over C, H and W), and an "
        "average over images only afterwards, outside this function": 10
        * torch.log10(max_value**2 / batch),
        "20 · log10(max_value / MSE): the 20 goes with the root of the MSE; PSNR = "
        "10 · log10(max_value² / MSE)": 20 * torch.log10(max_value / mse),
        "a peak of 255 where max_value belongs (images in [0, 1] peak at 1)": 10
        * torch.log10(255.0**2 / mse),
        "a peak of 1 whatever max_value says: max_value² goes in the numerator": 10
        * torch.log10(1 / mse),
        "the squared errors summed over C, H and W where their mean belongs": 10
        * torch.log10(max_value**2 / summed),
    }


def _tokens(z_e: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """The reference: (B, D, h, w), (K, D) → (B, h, w)."""
    b, d, h, w = z_e.shape
    rows = z_e.detach().permute(0, 2, 3, 1).reshape(-1, d)  # (B·h·w, D)
    return vq.nearest_code(rows, codebook).view(b, h, w)
