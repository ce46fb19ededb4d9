"""Checkers of chapter 06 (video tokenizer): token counts, 3-D patches in (pt p1 p2 c) order,
causal padding in time, the causal strided 3-D convolution and the temporal upsampling.

Every checker compares the candidate with `mmcourse.video` on seeded inputs, then checks the
properties that catch the classic bugs: a frame count the stride does not divide raises, the
features inside a patch come channels last, and no output frame changes when only a later input
frame changes (a convolution that sees the future breaks causal video generation).
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from einops import rearrange

from mmcourse import video
from mmcourse.checks._contract import call
from mmcourse.checks._core import Check, describe, exercise, seeded

_TOKENS = "tokens = (T / s_t) · (H / s) · (W / s)"
_CAUSAL = (
    "pad kernel_t − stride_t frames at the front of the time axis only (dimension 2), e.g. "
    "F.pad(x, (0, 0, 0, 0, kernel_t - stride_t, 0))"
)


# ------------------------------------------------------------ Exercise 6.1: token arithmetic


def _same_number(got: object, expected: int) -> bool:
    """Whether `got` is the number `expected` in another type: a float, a one-element tensor, a
    NumPy number."""
    if isinstance(got, torch.Tensor):
        return got.numel() == 1 and got.item() == expected
    return isinstance(got, numbers.Number) and got == expected


@exercise("6.1", "count the tokens of a clip", references=(video.video_tokens,))
def check_video_tokens(check: Check) -> None:
    """Exercise 6.1: video_tokens(frames, height, width, *, temporal_stride, spatial_stride)."""
    cases = [
        ((8, 32, 32), 1, 4, "per-frame tokenization of a course clip"),
        ((8, 32, 32), 4, 4, "a course clip with temporal stride 4"),
        ((8, 32, 32), 2, 4, "a course clip with temporal stride 2"),
        ((32, 256, 256), 4, 8, "32 frames of 256×256 with strides 4 in time, 8 in space"),
        ((6, 12, 20), 3, 2, "a 6×12×20 clip with strides 3 and 2 (not square)"),
    ]
    for (t, h, w), st, s, what in cases:
        got = call(check, t, h, w, temporal_stride=st, spatial_stride=s)
        expected = video.video_tokens(t, h, w, temporal_stride=st, spatial_stride=s)
        if type(got) is not int and _same_number(got, expected):
            check.that(
                False,
                what,
                expected=f"the int {expected}",
                got=f"a {type(got).__name__}: {describe(got)}",
                hint="divide with // so the count stays an int"
                if isinstance(got, float)
                else "return a Python int: int(...) around a tensor or NumPy number",
            )
        check.equal(
            got,
            expected,
            what,
            hint=f"{_TOKENS}: each stride divides its own axis, the spatial one both H and W",
        )
    check.equal(
        call(check, 8, 32, 32),
        video.video_tokens(8, 32, 32),
        "strides left out: the documented defaults temporal_stride=1, spatial_stride=4",
        hint="keep the signature video_tokens(frames, height, width, *, temporal_stride=1, "
        "spatial_stride=4)",
    )
    for h, w in [(30, 32), (32, 30)]:
        check.raises(
            ValueError,
            f"a {h}×{w} frame with spatial stride 4 raises ValueError",
            8,
            h,
            w,
            temporal_stride=2,
            spatial_stride=4,
            hint="the spatial stride must divide both H and W: check height % spatial_stride "
            "and width % spatial_stride and raise ValueError, instead of rounding down",
        )
    error = check.raises(
        ValueError,
        "9 frames with temporal stride 4 raise ValueError",
        9,
        32,
        32,
        temporal_stride=4,
        spatial_stride=4,
        hint="a stride that does not divide the frame count would silently drop (or invent) "
        "frames: check frames % temporal_stride and raise ValueError naming both numbers",
    )
    check.that(
        "9" in str(error) and "4" in str(error),
        "the error names the frame count and the stride",
        expected="a message containing 9 and 4",
        got=repr(str(error)),
        hint="e.g. raise ValueError(f'frames = {frames} is not divisible by temporal_stride = "
        "{temporal_stride}')",
    )


# --------------------------------------------------------------- Exercise 6.2: 3-D patchify


def _patch_variants(x: torch.Tensor, pt: int, p: int) -> dict[str, torch.Tensor]:
    """The usual wrong layouts of patchify_3d, with the hint that fixes each."""
    b, t, c, h, w = x.shape
    n, f = (t // pt) * (h // p) * (w // p), pt * p * p * c
    spec = "b (t pt) c (h p1) (w p2) -> b (t h w)"
    return {
        "the features of a patch are ordered (c pt p1 p2): channels first; they must come last, "
        "(pt p1 p2 c), as in a ViT patch": rearrange(x, f"{spec} (c pt p1 p2)", pt=pt, p1=p, p2=p),
        "rows and columns inside a patch are swapped: order (pt p1 p2 c) puts the row p1 "
        "before the column p2": rearrange(x, f"{spec} (pt p2 p1 c)", pt=pt, p1=p, p2=p),
        "the clip was reshaped without moving axes first: a reshape cuts the memory in order, so "
        "a 'patch' mixes pixels of different places; rearrange (or permute) to put the patch "
        "axes together first": x.reshape(b, n, f),
    }


@exercise("6.2", "cut a clip into 3-D patches", references=(video.patchify_3d,))
def check_patchify_3d(check: Check) -> None:
    """Exercise 6.2: patchify_3d(x (B, T, C, H, W), pt, p) -> (B, N, pt·p·p·C)."""
    g, dev = seeded(62), check.device
    for shape, pt, p in [((2, 4, 3, 4, 4), 2, 2), ((1, 6, 2, 8, 4), 3, 4)]:
        x = torch.randn(*shape, generator=g).to(dev)
        got = call(check, x, pt, p)
        expected = video.patchify_3d(x, pt, p)
        what = f"patches of a clip {shape} with pt = {pt}, p = {p}"
        check.close(
            got,
            expected,
            f"shape of the {what}",
            atol=float("inf"),
            hint="N = (T/pt)(H/p)(W/p) patches of pt·p·p·C numbers each",
        )
        for hint, wrong in _patch_variants(x, pt, p).items():
            check.that(
                not torch.equal(got, wrong),
                what,
                expected="features in (pt p1 p2 c) order, patches in (t h w) order",
                got="a different layout",
                hint=hint,
            )
        check.close(got, expected, what, atol=0.0, rtol=0.0)
    weight = torch.randn(5, 3, 2, 2, 2, generator=g).to(dev)  # (E, C, pt, p, p)
    x = torch.randn(2, 4, 3, 4, 4, generator=g).to(dev)
    conv = F.conv3d(x.transpose(1, 2), weight, stride=(2, 2, 2))  # (B, E, t, h, w)
    flat = weight.permute(0, 2, 3, 4, 1).reshape(5, -1)  # (E, pt·p·p·C), (pt p1 p2 c) order
    patches = check.tensor(
        call(check, x, 2, 2), f"patches of a clip {tuple(x.shape)}", shape=(2, 8, 24), dtype=x.dtype
    )
    check.close(
        patches @ flat.T,
        rearrange(conv, "b e t h w -> b (t h w) e"),
        "patches times the permuted weights equal Conv3d(kernel = stride = (pt, p, p))",
        atol=1e-4,
    )
    x64 = x.double()
    dtype_hint = "rearranging only moves numbers; don't convert them"
    check.close(
        call(check, x64, 2, 2),
        video.patchify_3d(x64, 2, 2),
        "keeps dtype float64 and the device",
        atol=0.0,
        rtol=0.0,
        hint=dtype_hint,
        dtype_hint=dtype_hint,
    )


# ------------------------------------------------------------ Exercise 6.3: causal padding


def _future_leak(output: torch.Tensor, perturbed: torch.Tensor, frame: int, stride: int) -> str:
    """'' if outputs (B, C, t, H, W) of frames before `frame` agree, else which one moved."""
    last_safe = frame // stride  # output j sees frames ≤ stride·j + stride − 1
    for j in range(last_safe):
        if not torch.allclose(output[:, :, j], perturbed[:, :, j], atol=1e-6):
            return f"output frame {j} changed when only input frame {frame} changed"
    return ""


def _pad_mistakes(x: torch.Tensor, kernel_t: int, stride_t: int) -> dict[str, torch.Tensor]:
    """What the classic causal-padding slips give on x (B, C, T, H, W)."""
    n = kernel_t - stride_t
    first = x[:, :, :1].expand(-1, -1, n, -1, -1)  # (B, C, n, H, W)
    return {
        f"kernel_t − 1 = {kernel_t - 1} frames in front, the stride ignored: a strided "
        f"convolution needs kernel_t − stride_t = {n}": F.pad(x, (0, 0, 0, 0, kernel_t - 1, 0)),
        f"the {n} frames after the clip, not in front: " + _CAUSAL: F.pad(x, (0, 0, 0, 0, 0, n)),
        f"{n} copies of the first frame in front: the padding frames are zeros": torch.cat(
            [first, x], dim=2
        ),
    }


@exercise("6.3", "pad time causally", references=(video.causal_pad,))
def check_causal_pad(check: Check) -> None:
    """Exercise 6.3: causal_pad(x (B, C, T, H, W), kernel_t, stride_t) -> padded x."""
    g, dev = seeded(63), check.device
    x = torch.randn(2, 3, 8, 4, 4, generator=g).to(dev)
    weight = torch.randn(2, 3, 3, 1, 1, generator=g).to(dev)  # kernel 3 in time
    got = call(check, x, 3, 1)
    check.that(
        isinstance(got, torch.Tensor) and got.shape == (2, 3, 10, 4, 4),
        "8 frames padded for a kernel of 3, stride 1",
        expected="shape (2, 3, 10, 4, 4): kernel_t − stride_t = 2 more frames",
        got=describe(got),
        hint=_CAUSAL,
    )
    check.tensor(got, "the padded clip keeps the dtype of x", dtype=x.dtype)
    late = x.clone()
    late[:, :, 5] += 1.0  # change frame 5 only
    got_late = check.tensor(
        call(check, late, 3, 1),
        "the same clip with frame 5 changed is padded the same way",
        shape=got.shape,
        dtype=got.dtype,
    )
    out, out_late = F.conv3d(got, weight), F.conv3d(got_late, weight)
    leak = _future_leak(out, out_late, 5, 1)
    check.that(
        not leak,
        "no output sees a later frame (kernel 3, stride 1, frame 5 changed)",
        expected="outputs 0–4 unchanged",
        got=leak,
        hint="a common cause is padding after the clip (or on both sides), which lets output j "
        "see frames after j: " + _CAUSAL,
    )
    check.close(
        call(check, x, 3, 1),
        video.causal_pad(x, 3, 1),
        "the padded clip (kernel 3, stride 1)",
        hint="the new frames are zeros, in front; the clip itself follows unchanged",
        alternatives=_pad_mistakes(x, 3, 1),
    )
    check.close(
        call(check, x, 3),
        video.causal_pad(x, 3, 1),
        "stride_t left out: the documented default stride_t = 1",
        hint="keep the signature causal_pad(x, kernel_t, stride_t=1)",
    )
    for k, s in [(3, 2), (4, 2), (4, 4)]:
        got = call(check, x, k, s)
        check.close(
            got,
            video.causal_pad(x, k, s),
            f"8 frames padded for kernel {k}, stride {s}",
            hint=f"a strided conv needs kernel_t − stride_t = {k - s} padding frames to give "
            f"T / stride_t outputs, and output j then sees frames ≤ {s}·j + {s - 1}: " + _CAUSAL,
            alternatives=_pad_mistakes(x, k, s),
        )
    x64 = x.double()
    dtype_hint = "F.pad keeps the dtype; don't build the padding frames in float32"
    check.close(
        call(check, x64, 4, 2),
        video.causal_pad(x64, 4, 2),
        "keeps dtype float64 and the device",
        hint=dtype_hint,
        dtype_hint=dtype_hint,
    )


# ------------------------------------------------- Exercise 6.4: causal strided 3-D conv


@exercise(
    "6.4", "downsample time with a causal 3-D convolution", references=(video.temporal_downsample,)
)
def check_temporal_downsample(check: Check) -> None:
    """Exercise 6.4: temporal_downsample(x, weight, bias, stride_t) -> (B, C', T/s_t, H, W)."""
    g, dev = seeded(64), check.device
    x = torch.randn(2, 4, 8, 6, 6, generator=g).to(dev)
    for k, s in [(3, 1), (3, 2), (4, 4)]:
        weight = torch.randn(5, 4, k, 3, 3, generator=g).to(dev) * 0.1
        bias = torch.randn(5, generator=g).to(dev)
        got = call(check, x, weight, bias, s)
        expected = video.temporal_downsample(x, weight, bias, s)
        what = f"(2, 4, 8, 6, 6) with a ({k}, 3, 3) kernel, stride {s} in time"
        check.close(
            got,
            expected,
            f"shape of {what}",
            atol=float("inf"),
            hint=f"T / stride_t = {8 // s} frames and the same H × W: pad time causally "
            "(causal_pad), pad space by k // 2 on each side, stride (stride_t, 1, 1)",
        )
        late = x.clone()
        late[:, :, 5] += 1.0
        got_late = check.tensor(
            call(check, late, weight, bias, s),
            f"{what}, frame 5 changed: an output like the first",
            shape=got.shape,
            dtype=got.dtype,
        )
        leak = _future_leak(got, got_late, 5, s)
        check.that(
            not leak,
            f"no output sees a later frame ({what}, frame 5 changed)",
            expected=f"outputs 0–{5 // s - 1} unchanged",
            got=leak,
            hint="a common cause is the convolution's own symmetric padding in time: pad time "
            "on the left only (causal_pad) and use padding=(0, k_h // 2, k_w // 2) in F.conv3d",
        )
        check.close(got, expected, what, atol=1e-4)
    weight = (torch.randn(3, 4, 2, 3, 3, generator=g) * 0.1).to(dev)
    check.close(
        call(check, x, weight, None, 2),
        video.temporal_downsample(x, weight, None, 2),
        "bias=None: the convolution without a bias (kernel (2, 3, 3), stride 2)",
        atol=1e-4,
        hint="pass bias straight to F.conv3d, which takes None for no bias",
    )
    x64, w64 = x.double(), weight.double()
    dtype_hint = "pad with F.pad and convolve with F.conv3d; both keep the dtype"
    check.close(
        call(check, x64, w64, None, 2),
        video.temporal_downsample(x64, w64, None, 2),
        "keeps dtype float64 and the device",
        atol=1e-10,
        hint=dtype_hint,
        dtype_hint=dtype_hint,
    )
    weight = torch.randn(5, 4, 3, 3, 3, generator=g).to(dev)
    error = check.raises(
        ValueError,
        "9 frames with stride 2 raise ValueError",
        torch.randn(1, 4, 9, 6, 6, generator=g).to(dev),
        weight,
        None,
        2,
        hint="check x.shape[2] % stride_t first: a strided conv would silently drop the last frame",
    )
    check.that(
        "9" in str(error),
        "the error names the frame count",
        expected="a message containing 9",
        got=repr(str(error)),
    )


# ---------------------------------------------------------- Exercise 6.5: temporal upsample


@exercise("6.5", "upsample time", references=(video.temporal_upsample,))
def check_temporal_upsample(check: Check) -> None:
    """Exercise 6.5: temporal_upsample(x (B, C, t, H, W), factor) -> (B, C, t·factor, H, W)."""
    g, dev = seeded(65), check.device
    x = torch.randn(2, 3, 2, 4, 4, generator=g).to(dev)
    for factor in (2, 4):
        got = call(check, x, factor)
        check.close(
            got,
            video.temporal_upsample(x, factor),
            f"{factor}× in time of (2, 3, 2, 4, 4)",
            hint="each frame repeated in place, [a, b] → [a, a, b, b] (repeat_interleave on dim 2)",
            alternatives={
                "the clip tiled, [a, b] → [a, b, a, b], which shows latent b before its time: "
                "repeat each frame in place, [a, a, b, b] (repeat_interleave on dim 2)": x.repeat(
                    1, 1, factor, 1, 1
                )
            },
        )
    x64 = x.double()
    dtype_hint = "repeating only copies numbers; don't convert them"
    check.close(
        call(check, x64, 2),
        video.temporal_upsample(x64, 2),
        "keeps dtype float64 and the device",
        hint=dtype_hint,
        dtype_hint=dtype_hint,
    )
