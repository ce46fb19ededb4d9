"""Graded work is the learner's own: a candidate that calls its exercise's reference is caught.

Every checker knows the package code that *is* its exercise's answer (`checker.references`). A
candidate that calls it, however wrapped (the function itself, a lambda, functools.partial, a
module imported under another name, getattr, a subclass), passes in self-study with a note that
says so, and fails in a graded run (MMCOURSE_GRADED=1: `make check`, `python -m mmcourse.grade`,
`nbgrader autograde` as the README says), naming the reference. Answers of the learner's own,
including those that use package functions of other exercises, are never flagged.

Chapter 09's Triton exercises have no reference to delegate to (see `test_triton_exercises_have_no_
reference`).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
import sys

import pytest
import test_checks_ch00 as t00
import test_checks_ch01 as t01
import test_checks_ch02 as t02
import test_checks_ch03 as t03
import test_checks_ch04 as t04
import test_checks_ch05 as t05
import test_checks_ch06 as t06
import test_checks_ch07 as t07
import test_checks_ch10 as t10
import test_checks_ch11 as t11
import test_checks_ch12 as t12
import torch

import mmcourse.vq as quantizers  # the package, imported under another name
from mmcourse import (
    ar,
    bpe,
    diffusion,
    distributed,
    evaluation,
    fusion,
    patches,
    retrieval,
    sampling,
    tokenizer,
    transformer,
    video,
    viz,
    vocab,
    vq,
)
from mmcourse import transfusion as tf
from mmcourse.checks import (
    ExerciseFailed,
    ch00,
    ch01,
    ch02,
    ch03,
    ch04,
    ch05,
    ch06,
    ch07,
    ch08,
    ch10,
    ch11,
    ch12,
)
from mmcourse.data import shapes

NOTE = "the package's reference for this exercise"


def _probe(reference, own):
    """An own answer that also calls `reference` (with placeholders; whatever it raises is
    ignored): delegation as the detector sees it, whatever the reference's signature."""
    required = [
        p
        for p in inspect.signature(reference).parameters.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]

    def candidate(*args, **kwargs):
        try:
            reference(*[None] * len(required))
        except Exception:
            pass
        return own(*args, **kwargs)

    candidate.__signature__ = inspect.signature(own)
    return candidate


def _own_parse_caption(caption):
    words = caption.split(" ")
    position = " ".join(words[5:])
    if (
        len(words) < 6
        or words[0] != "a"
        or words[3:5] != ["in", "the"]
        or words[1] not in shapes.COLORS
        or words[2] not in shapes.SHAPES
        or position not in shapes.POSITIONS
    ):
        raise ValueError(f"not a caption of the grammar: {caption!r}")
    return {"color": words[1], "shape": words[2], "position": position}


# (checker, a delegating candidate, the reference it calls, own answers that must not be flagged)
CASES = [
    (ch00.check_parse_caption, shapes.parse_caption, "mmcourse.data.shapes.parse_caption",
     [_own_parse_caption]),
    (ch00.check_image_grid, viz.image_grid, "mmcourse.viz.image_grid", [t00._loop_image_grid]),
    (ch01.check_squared_distances, vq.squared_distances, "mmcourse.vq.squared_distances",
     [t01._expansion, t01._cdist]),
    (ch01.check_vq_losses, vq.quantize_losses, "mmcourse.vq.quantize_losses", [t01._losses]),
    (ch01.check_vq_forward, _probe(vq.VectorQuantizer.forward, t01._forward),
     "mmcourse.vq.VectorQuantizer.forward", [t01._forward, t01._package_forward]),
    (ch01.check_codebook_usage, t01._usage, "mmcourse.vq.code_usage", []),
    (ch01.check_restart_dead_codes, t01._restart, "mmcourse.vq.restart_dead_codes",
     [t01._restart_by_hand, t01._restart_multinomial]),
    (ch01.check_rvq_encode, _probe(vq.ResidualVQ, t01._rvq), "mmcourse.vq.ResidualVQ",
     [t01._rvq]),
    (ch01.check_fsq_quantize, t01._package_fsq, "mmcourse.vq.FSQ", [t01._fsq]),
    (ch02.check_res_block, tokenizer.ResBlock, "mmcourse.tokenizer.ResBlock", []),
    (ch02.check_to_tokens, _probe(tokenizer.VQVAE.encode, t02._reference_to_tokens),
     "mmcourse.autoencoder.VQAutoencoder.encode", [t02._reference_to_tokens]),
    (ch02.check_psnr, tokenizer.psnr, "mmcourse.tokenizer.psnr", []),
    (ch03.check_patchify, patches.patchify, "mmcourse.patches.patchify", [t03._patchify_unfold]),
    (ch03.check_unpatchify, patches.unpatchify, "mmcourse.patches.unpatchify",
     [t03._unpatchify_fold]),
    (ch03.check_conv_patch_embed, _probe(patches.linear_weight_to_conv, t03._conv_embed),
     "mmcourse.patches.linear_weight_to_conv", [t03._conv_embed]),
    (ch03.check_sincos_2d, patches.sincos_2d, "mmcourse.patches.sincos_2d", [t03._sincos]),
    (ch03.check_contrastive_loss, fusion.contrastive_loss, "mmcourse.fusion.contrastive_loss",
     [t03._clip_loss]),
    (ch03.check_project, fusion.project, "mmcourse.fusion.project", [t03._project]),
    (ch04.check_q_sample, diffusion.q_sample, "mmcourse.diffusion.q_sample", [t04._q_sample]),
    (ch04.check_diffusion_loss, diffusion.diffusion_loss, "mmcourse.diffusion.diffusion_loss",
     [t04._loss]),
    (ch04.check_ddpm_step, diffusion.ddpm_step, "mmcourse.diffusion.ddpm_step",
     [t04._ddpm_step]),
    (ch04.check_ddim_timesteps, diffusion.ddim_timesteps, "mmcourse.diffusion.ddim_timesteps",
     [t04._timesteps]),
    (ch04.check_ddim_step, diffusion.ddim_step, "mmcourse.diffusion.ddim_step",
     [t04._ddim_step]),
    (ch04.check_cfg_combine, diffusion.cfg_combine, "mmcourse.diffusion.cfg_combine",
     [t04._cfg]),
    (ch05.check_apply_temperature, sampling.apply_temperature,
     "mmcourse.sampling.apply_temperature", [t05._temperature]),
    (ch05.check_top_k_filter, sampling.top_k_filter, "mmcourse.sampling.top_k_filter",
     [t05._top_k]),
    (ch05.check_top_p_filter, sampling.top_p_filter, "mmcourse.sampling.top_p_filter",
     [t05._top_p]),
    (ch05.check_restrict_range, sampling.restrict_range, "mmcourse.sampling.restrict_range",
     [t05._restrict]),
    (ch05.check_process_logits, sampling.process_logits, "mmcourse.sampling.process_logits",
     [t05._pipeline, t05._pipeline_times_inverse]),
    (ch05.check_cfg_logits, sampling.cfg_logits, "mmcourse.sampling.cfg_logits", [t05._cfg]),
    (ch05.check_guidance_prompts, ar.guidance_prompts, "mmcourse.ar.guidance_prompts",
     [t05._prompts]),
    (ch05.check_cached_attention, transformer.cached_attention,
     "mmcourse.transformer.cached_attention", [t05._cached]),
    (ch05.check_ids_to_codes, ar.ids_to_codes, "mmcourse.ar.ids_to_codes", [t05._codes]),
    (ch06.check_video_tokens, video.video_tokens, "mmcourse.video.video_tokens", [t06._tokens]),
    (ch06.check_patchify_3d, video.patchify_3d, "mmcourse.video.patchify_3d", [t06._patchify]),
    (ch06.check_causal_pad, video.causal_pad, "mmcourse.video.causal_pad", [t06._pad]),
    (ch06.check_temporal_downsample, video.temporal_downsample,
     "mmcourse.video.temporal_downsample", [t06._down]),
    (ch06.check_temporal_upsample, video.temporal_upsample, "mmcourse.video.temporal_upsample",
     [t06._up_interpolate]),
    (ch07.check_merge, bpe.merge, "mmcourse.bpe.merge", [t07._merge]),
    (ch07.check_layout, vocab.layout, "mmcourse.vocab.layout", [t07._layout]),
    (ch07.check_token_types, lambda ids, v: v.token_types(ids),
     "mmcourse.vocab.Vocabulary.token_types", [t07._types]),
    (ch07.check_encode_interleaved, vocab.encode_interleaved,
     "mmcourse.vocab.encode_interleaved", [t07._encode]),
    (ch07.check_decode_interleaved, vocab.decode_interleaved,
     "mmcourse.vocab.decode_interleaved", [t07._decode]),
    (ch07.check_pad_batch, vocab.pad_batch, "mmcourse.vocab.pad_batch", [t07._pad]),
    (ch08.check_mask, tf.transfusion_mask, "mmcourse.transfusion.transfusion_mask", []),
    (ch08.check_noise, tf.noise_image_span, "mmcourse.transfusion.noise_image_span", []),
    (ch08.check_loss, tf.transfusion_loss, "mmcourse.transfusion.transfusion_loss", []),
    (ch08.check_generation_step, tf.generation_step, "mmcourse.transfusion.generation_step", []),
    (ch10.check_frechet_distance, evaluation.frechet_distance,
     "mmcourse.evaluation.frechet_distance", [t10._frechet, t10._frechet_eig_complex]),
    (ch10.check_kid, evaluation.kid, "mmcourse.evaluation.kid", [t10._kid, t10._kid_loops]),
    (ch10.check_precision_recall, evaluation.precision_recall,
     "mmcourse.evaluation.precision_recall", [t10._pr, t10._pr_squared]),
    (ch10.check_clip_score, evaluation.clip_score, "mmcourse.evaluation.clip_score",
     [t10._clip, t10._clip_float64]),
    (ch11.check_average_gradients, distributed.average_gradients,
     "mmcourse.distributed.average_gradients", [t11._average]),
    (ch12.check_top_k, retrieval.top_k, "mmcourse.retrieval.top_k", [t12._top_k, t12._top_k_loop]),
]  # fmt: skip
IDS = [case[0].number for case in CASES]


@pytest.fixture(autouse=True)
def _self_study(monkeypatch):
    monkeypatch.delenv("MMCOURSE_GRADED", raising=False)


def test_every_exercise_but_chapter_09s_is_covered():
    numbers = {
        checker.number
        for n in (*range(9), 10, 11, 12)
        for checker in vars(importlib.import_module(f"mmcourse.checks.ch{n:02d}")).values()
        if hasattr(checker, "references")
    }
    assert numbers == set(IDS)
    assert all(case[0].references.codes for case in CASES)


@pytest.mark.parametrize(("checker", "delegating", "name", "own"), CASES, ids=IDS)
def test_delegation_passes_with_a_note_in_self_study(checker, delegating, name, own, capsys):
    checker(delegating)
    out = capsys.readouterr().out
    assert out.startswith(f"✓ Exercise {checker.number} passed (")
    assert f"but it calls {name}" in out and NOTE in out, out


@pytest.mark.parametrize(("checker", "delegating", "name", "own"), CASES, ids=IDS)
def test_delegation_fails_when_graded(checker, delegating, name, own, capsys, monkeypatch):
    monkeypatch.setenv("MMCOURSE_GRADED", "1")
    with pytest.raises(ExerciseFailed, match=re.escape(f"delegates to {name}")) as failed:
        checker(delegating)
    assert str(failed.value).startswith(f"Exercise {checker.number} (")
    assert "graded answers must compute it themselves" in str(failed.value)
    assert capsys.readouterr().out == ""


OWN = [(case[0], own) for case in CASES for own in case[3]]


@pytest.mark.parametrize(("checker", "own"), OWN, ids=[f"{c.number}-{o.__name__}" for c, o in OWN])
def test_own_answers_are_never_flagged(checker, own, capsys, monkeypatch):
    monkeypatch.setenv("MMCOURSE_GRADED", "1")
    checker(own)
    out = capsys.readouterr().out
    assert out.startswith(f"✓ Exercise {checker.number} passed (") and "but it calls" not in out


def _alias(z, codebook):
    return quantizers.squared_distances(z, codebook)


def _getattr(z, codebook):
    return getattr(vq, "squared_" + "distances")(z, codebook)


class _SubclassedBlock(tokenizer.ResBlock):
    pass


class _WrappedBlock(torch.nn.Module):
    """Builds the package's block and borrows its layers and its forward."""

    def __init__(self, channels, groups=8):
        super().__init__()
        for name, child in tokenizer.ResBlock(channels, groups).named_children():
            self.add_module(name, child)

    def forward(self, x):
        return tokenizer.ResBlock.forward(self, x)


WRAPPED = [
    (ch01.check_squared_distances, lambda z, e: vq.squared_distances(z, e),
     "mmcourse.vq.squared_distances"),
    (ch01.check_squared_distances, functools.partial(vq.squared_distances),
     "mmcourse.vq.squared_distances"),
    (ch01.check_squared_distances, _alias, "mmcourse.vq.squared_distances"),
    (ch01.check_squared_distances, _getattr, "mmcourse.vq.squared_distances"),
    (ch05.check_top_p_filter, lambda logits, p: sampling.top_p_filter(logits, p),
     "mmcourse.sampling.top_p_filter"),
    (ch05.check_top_p_filter, functools.partial(sampling.top_p_filter),
     "mmcourse.sampling.top_p_filter"),
    (ch05.check_top_p_filter,
     lambda logits, p: sampling._top_p(logits, p),
     "mmcourse.sampling._top_p"),
    (ch02.check_res_block, _SubclassedBlock, "mmcourse.tokenizer.ResBlock"),
    (ch02.check_res_block, _WrappedBlock, "mmcourse.tokenizer.ResBlock"),
    (ch07.check_token_types, lambda ids, v: type(v).token_types(v, ids),
     "mmcourse.vocab.Vocabulary.token_types"),
]  # fmt: skip


@pytest.mark.parametrize(("checker", "wrapped", "name"), WRAPPED)
def test_every_wrapping_is_seen_through(checker, wrapped, name, capsys, monkeypatch):
    checker(wrapped)
    assert f"but it calls {name}" in capsys.readouterr().out
    monkeypatch.setenv("MMCOURSE_GRADED", "1")
    with pytest.raises(ExerciseFailed, match=re.escape(f"delegates to {name}")):
        checker(wrapped)


def test_a_package_function_using_the_reference_inside_is_allowed(capsys, monkeypatch):
    """vq.nearest_code computes squared distances itself: a 1.3 answer built on it is not a 1.1
    delegation, and ch01's 1.3 checker does not list squared_distances."""
    monkeypatch.setenv("MMCOURSE_GRADED", "1")
    ch01.check_vq_forward(t01._package_forward)
    assert "✓ Exercise 1.3 passed" in capsys.readouterr().out


def test_graded_accepts_only_a_set_flag(monkeypatch, capsys):
    for off in ("", "0", "false", "no"):
        monkeypatch.setenv("MMCOURSE_GRADED", off)
        ch01.check_squared_distances(vq.squared_distances)
    assert capsys.readouterr().out.count("but it calls") == 4


def test_triton_exercises_have_no_reference():
    pytest.importorskip("triton")
    from mmcourse.checks import ch09

    assert not ch09.check_distance_tile.references.codes
    assert not ch09.check_update_argmin.references.codes


def test_a_profiler_already_running_keeps_seeing_every_call(capsys):
    """The watch chains a profiler that was there before (a learner's or a tool's) and puts it
    back afterwards."""
    seen = []

    def outer(frame, event, arg):
        if event == "call" and frame.f_code is _alias.__code__:
            seen.append(frame.f_code)

    sys.setprofile(outer)
    try:
        ch01.check_squared_distances(_alias)
        assert sys.getprofile() is outer
    finally:
        sys.setprofile(None)
    assert seen, "the earlier profiler missed the candidate's calls"
    assert "but it calls mmcourse.vq.squared_distances" in capsys.readouterr().out


def test_a_candidate_under_a_step_budget_is_watched_too(capsys, monkeypatch):
    """Exercise 1.5 runs its candidate under `step_budget` (sys.settrace; its endless loops are
    still stopped, tests/test_checks_ch01.py): the watch (sys.setprofile) still sees the
    reference."""
    ch01.check_restart_dead_codes(t01._restart)
    assert "but it calls mmcourse.vq.restart_dead_codes" in capsys.readouterr().out
    monkeypatch.setenv("MMCOURSE_GRADED", "1")
    with pytest.raises(ExerciseFailed, match="delegates to mmcourse.vq.restart_dead_codes"):
        ch01.check_restart_dead_codes(t01._restart)
