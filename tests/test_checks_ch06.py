"""Chapter 06 checkers: the references pass; each known-wrong version fails with its message."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from checker_cases import WRONG_KINDS, case_id, passes, rejects, rejects_wrong_kind, stub
from einops import rearrange

from mmcourse import video
from mmcourse.checks import ExerciseFailed, ch06

pytestmark = pytest.mark.usefixtures("one_thread")


# --- Exercise 6.1: video_tokens ----------------------------------------------------------------


def _tokens(frames, height, width, *, temporal_stride=1, spatial_stride=4):
    if frames % temporal_stride or height % spatial_stride or width % spatial_stride:
        raise ValueError(f"frames = {frames} is not divisible by {temporal_stride}")
    return (frames // temporal_stride) * (height // spatial_stride) * (width // spatial_stride)


def _tokens_ceil(frames, height, width, *, temporal_stride=1, spatial_stride=4):
    if height % spatial_stride or width % spatial_stride:
        raise ValueError(f"{height}×{width} is not divisible by {spatial_stride}")
    t = math.ceil(frames / temporal_stride)  # BUG: rounds up instead of refusing
    return t * (height // spatial_stride) * (width // spatial_stride)


def _tokens_no_time(frames, height, width, *, temporal_stride=1, spatial_stride=4):
    return frames * (height // spatial_stride) * (width // spatial_stride)  # BUG: no s_t


def _tokens_float(frames, height, width, *, temporal_stride=1, spatial_stride=4):
    return frames / temporal_stride * (height / spatial_stride) * (width / spatial_stride)


def _tokens_tensor(frames, height, width, *, temporal_stride=1, spatial_stride=4):
    size = torch.tensor([frames, height, width])
    return (size // torch.tensor([temporal_stride, spatial_stride, spatial_stride])).prod()  # BUG


def _tokens_area_once(frames, height, width, *, temporal_stride=1, spatial_stride=4):
    return (frames // temporal_stride) * (height * width // spatial_stride)  # BUG: s, not s²


def _tokens_no_spatial_check(frames, height, width, *, temporal_stride=1, spatial_stride=4):
    if frames % temporal_stride:
        raise ValueError(f"frames = {frames} is not divisible by {temporal_stride}")
    t = frames // temporal_stride  # BUG: H and W rounded down silently
    return t * (height // spatial_stride) * (width // spatial_stride)


def _tokens_width_check_only(frames, height, width, *, temporal_stride=1, spatial_stride=4):
    if width % spatial_stride:  # BUG: the height is never checked
        raise ValueError(f"width {width} is not divisible by {spatial_stride}")
    return _tokens_no_spatial_check(
        frames, height, width, temporal_stride=temporal_stride, spatial_stride=spatial_stride
    )


def _tokens_default_stride_two(frames, height, width, *, temporal_stride=2, spatial_stride=4):
    return _tokens(  # BUG: the documented default temporal_stride is 1
        frames, height, width, temporal_stride=temporal_stride, spatial_stride=spatial_stride
    )


def _tokens_vague(frames, height, width, *, temporal_stride=1, spatial_stride=4):
    if frames % temporal_stride:
        raise ValueError("bad clip")  # BUG: says nothing useful
    return _tokens(
        frames, height, width, temporal_stride=temporal_stride, spatial_stride=spatial_stride
    )


def test_video_tokens_references_pass(capsys):
    passes(ch06.check_video_tokens, video.video_tokens, capsys, "6.1")
    passes(ch06.check_video_tokens, _tokens, capsys, "6.1")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_tokens_no_time, r"failed check 2, \"a course clip with temporal stride 4(.|\n)*s_t"),
        (_tokens_float, r"failed check 1(.|\n)*got:      a float: 512\.0(.|\n)*//"),
        (
            _tokens_tensor,
            r"failed check 1(.|\n)*expected: the int 512\n  got:      a Tensor: tensor of shape "
            r"\(\)(.|\n)*int\(\.\.\.\)",
        ),
        (_tokens_area_once, r"failed check 1(.|\n)*expected: 512(.|\n)*both H and W"),
        (_tokens_ceil, r"9 frames with temporal stride 4 raise ValueError(.|\n)*no error"),
        (_tokens_vague, r"the error names the frame count and the stride(.|\n)*'bad clip'"),
        (_tokens_no_spatial_check, r"a 30×32 frame with spatial stride 4(.|\n)*no error"),
        (_tokens_width_check_only, r"a 30×32 frame(.|\n)*no error(.|\n)*both H and W"),
        (_tokens_default_stride_two, r"strides left out(.|\n)*expected: 512\n  got:      256"),
        (stub, r"Exercise 6\.1 \(count the tokens of a clip\): not implemented yet"),
    ],
    ids=case_id,
)
def test_video_tokens_rejects(wrong, message):
    rejects(ch06.check_video_tokens, wrong, message)


# --- Exercise 6.2: patchify_3d -----------------------------------------------------------------


def _patchify(x, pt, p):
    b, t, c, h, w = x.shape
    x = x.reshape(b, t // pt, pt, c, h // p, p, w // p, p)  # b t pt c h p1 w p2
    x = x.permute(0, 1, 4, 6, 2, 5, 7, 3)  # b t h w pt p1 p2 c
    return x.reshape(b, (t // pt) * (h // p) * (w // p), pt * p * p * c)


def _patch_channels_first(x, pt, p):
    spec = "b (t pt) c (h p1) (w p2) -> b (t h w) (c pt p1 p2)"  # BUG: channels first
    return rearrange(x, spec, pt=pt, p1=p, p2=p)


def _patch_swapped(x, pt, p):
    spec = "b (t pt) c (h p1) (w p2) -> b (t h w) (pt p2 p1 c)"  # BUG: column before row
    return rearrange(x, spec, pt=pt, p1=p, p2=p)


def _patch_reshape(x, pt, p):
    b, t, c, h, w = x.shape
    return x.reshape(b, (t // pt) * (h // p) * (w // p), -1)  # BUG: no permute


def _patch_float32(x, pt, p):
    return _patchify(x.float(), pt, p)


def test_patchify_references_pass(capsys):
    passes(ch06.check_patchify_3d, video.patchify_3d, capsys, "6.2")
    passes(ch06.check_patchify_3d, _patchify, capsys, "6.2")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_patch_channels_first, r"failed check 2,(.|\n)*\(c pt p1 p2\): channels first"),
        (_patch_swapped, r"failed check 3,(.|\n)*rows and columns inside a patch are swapped"),
        (_patch_reshape, r"failed check 4,(.|\n)*reshaped without moving axes"),
        (_patch_float32, r"keeps dtype float64(.|\n)*got:      dtype torch\.float32"),
        (stub, r"Exercise 6\.2 \(cut a clip into 3-D patches\): not implemented yet"),
    ],
    ids=case_id,
)
def test_patchify_rejects(wrong, message):
    rejects(ch06.check_patchify_3d, wrong, message)


# --- Exercise 6.3: causal_pad ------------------------------------------------------------------


def _pad(x, kernel_t, stride_t=1):
    return F.pad(x, (0, 0, 0, 0, kernel_t - stride_t, 0))


def _pad_symmetric(x, kernel_t, stride_t=1):
    return F.pad(x, (0, 0, 0, 0, kernel_t // 2, kernel_t // 2))  # BUG: sees the future


def _pad_right(x, kernel_t, stride_t=1):
    return F.pad(x, (0, 0, 0, 0, 0, kernel_t - stride_t))  # BUG: padding after the clip


def _pad_k_minus_1(x, kernel_t, stride_t=1):
    return F.pad(x, (0, 0, 0, 0, kernel_t - 1, 0))  # BUG: ignores the stride


def _pad_too_much(x, kernel_t, stride_t=1):
    return F.pad(x, (0, 0, 0, 0, kernel_t, 0))  # BUG: one frame too many


def _pad_last_axis(x, kernel_t, stride_t=1):
    return F.pad(x, (kernel_t - stride_t, 0))  # BUG: pads the width


def _pad_no_default(x, kernel_t, stride_t):
    return _pad(x, kernel_t, stride_t)  # BUG: stride_t has no default


def _pad_replicate(x, kernel_t, stride_t=1):
    return F.pad(x, (0, 0, 0, 0, kernel_t - stride_t, 0), mode="replicate")  # BUG: not zeros


def _pad_float64(x, kernel_t, stride_t=1):
    return _pad(x.double(), kernel_t, stride_t)  # BUG: float32 in, float64 out


def _pad_float32(x, kernel_t, stride_t=1):
    return _pad(x.float(), kernel_t, stride_t)


def _pad_in_place_view(x, kernel_t, stride_t=1):
    out = _pad(x, kernel_t, stride_t)
    x[:, :, :1] = 0  # BUG: "clears" the first frame of the caller's clip
    return out


def test_causal_pad_references_pass(capsys):
    passes(ch06.check_causal_pad, video.causal_pad, capsys, "6.3")
    passes(ch06.check_causal_pad, _pad, capsys, "6.3")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_pad_symmetric, r"failed check 4, \"no output sees a later frame(.|\n)*output frame 4"),
        (_pad_right, r"failed check 4, \"no output sees a later frame(.|\n)*front of the time"),
        (
            _pad_k_minus_1,
            r"\"8 frames padded for kernel 3, stride 2\"(.|\n)*looks like: kernel_t − 1 = 2 frames"
            r"(.|\n)*kernel_t − stride_t = 1",
        ),
        (_pad_replicate, r"failed check 5, (.|\n)*looks like: 2 copies of the first frame"),
        (
            _pad_float64,
            r"failed check 2, \"the padded clip keeps the dtype of x\":\n  expected: a tensor of "
            r"dtype torch\.float32\n  got:      tensor of shape \(2, 3, 10, 4, 4\), dtype "
            r"torch\.float64",
        ),
        (_pad_too_much, r"failed check 1,(.|\n)*shape \(2, 3, 11, 4, 4\)(.|\n)*F\.pad"),
        (_pad_last_axis, r"failed check 1,(.|\n)*shape \(2, 3, 8, 4, 6\)"),
        (_pad_no_default, r"runs on(.|\n)*stride_t(.|\n)*docstring's signature"),
        (_pad_float32, r"keeps dtype float64(.|\n)*torch\.float32"),
        (_pad_in_place_view, r"failed check 1, \"leaves its input x unchanged"),
        (stub, r"Exercise 6\.3 \(pad time causally\): not implemented yet"),
    ],
    ids=case_id,
)
def test_causal_pad_rejects(wrong, message):
    rejects(ch06.check_causal_pad, wrong, message)


# --- Exercise 6.4: temporal_downsample ---------------------------------------------------------


def _down(x, weight, bias, stride_t):
    if x.shape[2] % stride_t:
        raise ValueError(f"frames = {x.shape[2]} is not divisible by stride_t = {stride_t}")
    k_t, k_h, k_w = weight.shape[2:]
    x = F.pad(x, (0, 0, 0, 0, k_t - stride_t, 0))
    return F.conv3d(x, weight, bias, stride=(stride_t, 1, 1), padding=(0, k_h // 2, k_w // 2))


def _down_symmetric(x, weight, bias, stride_t):
    k_t = weight.shape[2]
    return F.conv3d(x, weight, bias, stride=(stride_t, 1, 1), padding=(k_t // 2, 1, 1))  # BUG


def _down_no_time_pad(x, weight, bias, stride_t):
    return F.conv3d(x, weight, bias, stride=(stride_t, 1, 1), padding=(0, 1, 1))  # BUG


def _down_no_error(x, weight, bias, stride_t):
    k_t = weight.shape[2]
    x = F.pad(x, (0, 0, 0, 0, k_t - stride_t, 0))  # BUG: 9 frames silently lose one
    return F.conv3d(x, weight, bias, stride=(stride_t, 1, 1), padding=(0, 1, 1))


def _down_strided_space(x, weight, bias, stride_t):
    k_t = weight.shape[2]
    x = F.pad(x, (0, 0, 0, 0, k_t - stride_t, 0))
    return F.conv3d(x, weight, bias, stride=stride_t, padding=(0, 1, 1))  # BUG: space too


def _down_bias_added(x, weight, bias, stride_t):
    if x.shape[2] % stride_t:
        raise ValueError(f"frames = {x.shape[2]} is not divisible by stride_t = {stride_t}")
    out = _down(x, weight, None, stride_t)
    return out + bias[:, None, None, None]  # BUG: fails for bias=None


def _down_float32(x, weight, bias, stride_t):
    return _down(x.float(), weight.float(), None if bias is None else bias.float(), stride_t)


def test_temporal_downsample_references_pass(capsys):
    passes(ch06.check_temporal_downsample, video.temporal_downsample, capsys, "6.4")
    passes(ch06.check_temporal_downsample, _down, capsys, "6.4")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_down_symmetric, r"failed check 3, \"no output sees a later frame(.|\n)*symmetric"),
        (_down_no_time_pad, r"failed check 1,(.|\n)*shape \(2, 5, 6, 6, 6\)(.|\n)*causal_pad"),
        (_down_strided_space, r"\"shape of \(2, 4, 8, 6, 6\) with a \(3, 3, 3\) kernel, stride 2"),
        (_down_no_error, r"9 frames with stride 2 raise ValueError(.|\n)*no error"),
        (_down_bias_added, r"runs on(.|\n)*None, 2\)(.|\n)*TypeError"),
        (_down_float32, r"keeps dtype float64(.|\n)*torch\.float32"),
        (stub, r"Exercise 6\.4 \(downsample time with a causal 3-D convolution\): not impl"),
    ],
    ids=case_id,
)
def test_temporal_downsample_rejects(wrong, message):
    rejects(ch06.check_temporal_downsample, wrong, message)


# --- Exercise 6.5: temporal_upsample -----------------------------------------------------------


def _up_interpolate(x, factor):
    return F.interpolate(x, scale_factor=(factor, 1, 1), mode="nearest")  # same as in place


def _up_tile(x, factor):
    return x.repeat(1, 1, factor, 1, 1)  # BUG: [a, b, a, b]


def _up_float32(x, factor):
    return x.float().repeat_interleave(factor, dim=2)


def test_temporal_upsample_references_pass(capsys):
    passes(ch06.check_temporal_upsample, video.temporal_upsample, capsys, "6.5")
    passes(ch06.check_temporal_upsample, _up_interpolate, capsys, "6.5")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_up_tile, r"failed check 1,(.|\n)*looks like: the clip tiled(.|\n)*repeat_interleave"),
        (_up_float32, r"keeps dtype float64(.|\n)*got:      dtype torch\.float32"),
        (stub, r"Exercise 6\.5 \(upsample time\): not implemented yet"),
    ],
    ids=case_id,
)
def test_temporal_upsample_rejects(wrong, message):
    rejects(ch06.check_temporal_upsample, wrong, message)


def test_checkers_name_a_non_callable():
    with pytest.raises(ExerciseFailed, match=r"Exercise 6\.1 .*pass your function itself"):
        ch06.check_video_tokens(torch.zeros(1))


# --- every checker: whatever comes back, the failure says what was expected and what came ------


@pytest.mark.parametrize("kind", WRONG_KINDS)
@pytest.mark.parametrize(
    ("checker", "reference"),
    [
        (ch06.check_video_tokens, video.video_tokens),
        (ch06.check_patchify_3d, video.patchify_3d),
        (ch06.check_causal_pad, video.causal_pad),
        (ch06.check_temporal_downsample, video.temporal_downsample),
        (ch06.check_temporal_upsample, video.temporal_upsample),
    ],
    ids=case_id,
)
def test_a_wrong_kind_of_result_gets_expected_and_got(checker, reference, kind):
    rejects_wrong_kind(checker, reference, kind)
