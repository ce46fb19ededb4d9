"""The GPU's device rule on a CPU (mmcourse.checks._placement), and every checker using it.

`make test` runs on CPU machines, where a tensor created without `device=` is on the same device
as everything else. The audit marks such tensors and raises where CUDA would; these tests pin
its rule down (what a GPU rejects, what it allows) and show that every exercise's checker turns
the classic mistake into a plain-words failure, on a CPU run as on a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmcourse import (
    ar,
    diffusion,
    evaluation,
    fusion,
    patches,
    retrieval,
    sampling,
    transformer,
    video,
    vocab,
    vq,
)
from mmcourse.checks import ch01, ch03, ch04, ch05, ch06, ch07, ch08, ch10, ch12
from mmcourse.checks._placement import HostTensorMixed, PlacementAudit, is_host
from mmcourse.env import normalize_device, same_device
from mmcourse.transfusion import noise_image_span, transfusion_loss, transfusion_mask

# --- the rule --------------------------------------------------------------------------------


def test_a_tensor_made_without_device_cannot_meet_the_inputs():
    x = torch.randn(4, 3)  # made outside the audit: the course device
    with PlacementAudit():
        labels = torch.arange(4)
        assert is_host(labels) and not is_host(x)
        with pytest.raises(HostTensorMixed, match=r"F\.cross_entropy got a tensor of shape \(4,\)"):
            F.cross_entropy(x, labels)
        with pytest.raises(HostTensorMixed, match=r"torch\.cat"):
            torch.cat([x, torch.zeros(1, 3)])
        with pytest.raises(HostTensorMixed):
            x @ torch.ones(3, 2)
        with pytest.raises(HostTensorMixed):
            x + torch.as_tensor(np.ones((4, 3), dtype=np.float32))


def test_what_a_gpu_allows_passes():
    x = torch.randn(4, 3)
    with PlacementAudit():
        assert not is_host(torch.arange(4, device=x.device))  # device= follows x
        assert not is_host(x.new_zeros(2)) and not is_host(torch.zeros_like(x))
        y = x * torch.tensor(2.0)  # a zero-dimensional host tensor is a scalar
        z = x[torch.tensor([0, 2])]  # indexing with host indices
        x2 = x.clone()
        x2[torch.tensor([1])] = torch.zeros(1, 3, device=x.device)
        moved = torch.ones(4, 3).to(x.device)  # made on the host, then moved
        assert not is_host(moved) and not is_host(y) and not is_host(z)
        assert (x + moved).shape == (4, 3)
        host_only = torch.arange(3) * 2 + torch.ones(3)  # host with host: fine, stays host
        assert is_host(host_only)


def test_moves_and_their_marks():
    x = torch.randn(3)
    with PlacementAudit():
        back = x.cpu()  # on a GPU: a host copy; here the same storage, but a new mark
        assert is_host(back) and not is_host(x)
        assert not is_host(back.to(x.device))
        assert is_host(back.to(torch.float64))  # a dtype change keeps the placement
        h = torch.ones(3)
        assert not is_host(torch.zeros(3, device=x.device))
        assert is_host(torch.zeros(3, device=h.device))


def test_device_normalisation():
    assert normalize_device("cpu") == torch.device("cpu")
    assert same_device("cpu", torch.device("cpu"))
    assert normalize_device("cpu:0") == torch.zeros(1, device="cpu:0").device == torch.device("cpu")
    if torch.cuda.is_available():
        assert normalize_device("cuda") == torch.device("cuda", torch.cuda.current_device())
        assert same_device("cuda", torch.zeros(1, device="cuda").device)


def test_naming_the_gpu_does_not_start_cuda(monkeypatch):
    """Before CUDA starts, "cuda" is GPU 0 without asking CUDA (asking would create a context
    that ranks forked later cannot use); once started, the current GPU. A stand-in CUDA here."""
    calls = []

    def current_device():
        calls.append("current_device")
        return 1

    monkeypatch.setattr(torch.cuda, "current_device", current_device)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert normalize_device("cuda") == torch.device("cuda", 0) and calls == []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert normalize_device("cuda") == torch.device("cuda", 1) and calls == ["current_device"]
    assert normalize_device("cuda:2") == torch.device("cuda", 2)


# --- every checker reports the classic mistake -------------------------------------------------


def _made_without_device(reference):
    """`reference` with the classic GPU bug: a helper tensor without device= meets an input."""

    def candidate(*args, **kwargs):
        args = list(args)
        for i, a in enumerate(args):
            if isinstance(a, torch.Tensor) and a.dim() > 0 and a.is_floating_point():
                keep = torch.ones(a.shape, dtype=torch.bool)  # BUG: no device=a.device
                args[i] = torch.where(keep, a, a)
                break
        else:
            for i, a in enumerate(args):
                if isinstance(a, torch.Tensor) and a.dim() > 0:
                    args[i] = a + torch.zeros(a.shape, dtype=a.dtype)  # BUG: no device=
                    break
        return reference(*args, **kwargs)

    candidate.__name__ = f"{reference.__name__}_without_device"
    return candidate


def _result_on_the_host(reference):
    """`reference` whose tensor results come back with .cpu(): on a GPU, the wrong device."""

    def candidate(*args, **kwargs):
        out = reference(*args, **kwargs)
        if isinstance(out, torch.Tensor):
            return out.cpu()
        return type(out)(o.cpu() if isinstance(o, torch.Tensor) else o for o in out)

    return candidate


INPUT_MISTAKE = [
    (ch01.check_squared_distances, vq.squared_distances),
    (ch01.check_vq_losses, vq.quantize_losses),
    (ch03.check_patchify, patches.patchify),
    (ch03.check_unpatchify, patches.unpatchify),
    (ch03.check_contrastive_loss, fusion.contrastive_loss),
    (ch03.check_project, fusion.project),
    (ch04.check_q_sample, diffusion.q_sample),
    (ch04.check_diffusion_loss, diffusion.diffusion_loss),
    (ch04.check_ddpm_step, diffusion.ddpm_step),
    (ch04.check_ddim_step, diffusion.ddim_step),
    (ch04.check_cfg_combine, diffusion.cfg_combine),
    (ch05.check_apply_temperature, sampling.apply_temperature),
    (ch05.check_top_k_filter, sampling.top_k_filter),
    (ch05.check_top_p_filter, sampling.top_p_filter),
    (ch05.check_restrict_range, sampling.restrict_range),
    (ch05.check_process_logits, sampling.process_logits),
    (ch05.check_cfg_logits, sampling.cfg_logits),
    (ch05.check_guidance_prompts, ar.guidance_prompts),
    (ch05.check_cached_attention, transformer.cached_attention),
    (ch05.check_ids_to_codes, ar.ids_to_codes),
    (ch06.check_patchify_3d, video.patchify_3d),
    (ch06.check_causal_pad, video.causal_pad),
    (ch06.check_temporal_upsample, video.temporal_upsample),
    (ch07.check_token_types, lambda ids, v: v.token_types(ids)),
    (ch07.check_decode_interleaved, vocab.decode_interleaved),
    (ch08.check_mask, transfusion_mask),
    (ch08.check_noise, noise_image_span),
    (ch08.check_loss, transfusion_loss),
    (ch10.check_kid, evaluation.kid),
    (ch10.check_precision_recall, evaluation.precision_recall),
    (ch10.check_clip_score, evaluation.clip_score),
    (ch12.check_top_k, retrieval.top_k),
]


@pytest.mark.parametrize(
    ("checker", "reference"), INPUT_MISTAKE, ids=lambda v: getattr(v, "__name__", "")
)
def test_every_checker_names_a_tensor_made_without_device(checker, reference):
    with pytest.raises(AssertionError) as failed:
        checker(_made_without_device(reference))
    message = str(failed.value)
    assert "on the device of its inputs" in message, message
    assert "device=x.device" in message and "_core" not in message


RESULT_MISTAKE = [
    (ch01.check_squared_distances, vq.squared_distances),
    (ch03.check_patchify, patches.patchify),
    (ch04.check_q_sample, diffusion.q_sample),
    (ch05.check_top_k_filter, sampling.top_k_filter),
    (ch06.check_causal_pad, video.causal_pad),
    (ch07.check_pad_batch, vocab.pad_batch),
    (ch08.check_mask, transfusion_mask),
    (ch10.check_clip_score, evaluation.clip_score),
]


@pytest.mark.parametrize(
    ("checker", "reference"), RESULT_MISTAKE, ids=lambda v: getattr(v, "__name__", "")
)
def test_every_checker_names_a_result_moved_to_the_host(checker, reference):
    with pytest.raises(AssertionError, match="returns its tensors on the device of its inputs"):
        checker(_result_on_the_host(reference))
