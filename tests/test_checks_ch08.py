"""Chapter 08 checkers: the references pass; each known-wrong version fails with its message."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from checker_cases import WRONG_KINDS, case_id, passes, rejects, rejects_wrong_kind, stub

from mmcourse import diffusion
from mmcourse import transfusion as tf
from mmcourse.checks import ch08
from mmcourse.transformer import causal_mask

pytestmark = pytest.mark.usefixtures("one_thread")


# --- Exercise 8.1: the mask ---------------------------------------------------------------------


def _mask_causal_inside(image_id):
    n = image_id.shape[-1]
    return causal_mask(n, n, image_id.device).expand(*image_id.shape[:-1], n, n)  # BUG


def _mask_text_as_image(image_id):
    n = image_id.shape[-1]
    same = image_id[..., :, None] == image_id[..., None, :]  # BUG: −1 == −1 for text
    return causal_mask(n, n, image_id.device) | same


def _mask_any_image(image_id):
    n = image_id.shape[-1]
    img = image_id >= 0
    both = img[..., :, None] & img[..., None, :]  # BUG: all images see each other
    return causal_mask(n, n, image_id.device) | both


def _mask_batch_none(image_id):
    if image_id.dim() == 1:
        return tf.transfusion_mask(image_id)  # BUG: nothing for a batch


def _mask_float(image_id):
    return tf.transfusion_mask(image_id).float()  # BUG: not bool


def _mask_unbatched(image_id):
    if image_id.dim() == 2:
        return torch.stack([tf.transfusion_mask(image_id[0])] * len(image_id))  # BUG: row 0
    return tf.transfusion_mask(image_id)


def test_mask_reference_passes(capsys):
    passes(ch08.check_mask, tf.transfusion_mask, capsys, "8.1")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_mask_causal_inside, "bidirectional within"),
        (_mask_text_as_image, "text positions stay causal"),
        (_mask_any_image, "causal across the sequence"),
        (_mask_float, "mask is bool"),
        (_mask_unbatched, "one mask per row"),
        (_mask_batch_none, r"one mask per row(.|\n)*got:      a NoneType: None"),
        (stub, "not implemented yet"),
    ],
    ids=case_id,
)
def test_mask_rejects(wrong, message):
    rejects(ch08.check_mask, wrong, message)


# --- Exercise 8.3: loss routing -----------------------------------------------------------------


def _loss_mse_on_text(logits, eps_pred, ids, eps, is_image, diffuse, valid, lam):
    ref = tf.transfusion_loss(logits, eps_pred, ids, eps, is_image, diffuse, valid, lam)
    mse = (eps_pred - eps).pow(2).mean()  # BUG: every position, text included
    return ref.ce + lam * mse, ref.ce, mse


def _loss_ce_on_images(logits, eps_pred, ids, eps, is_image, diffuse, valid, lam):
    ref = tf.transfusion_loss(logits, eps_pred, ids, eps, is_image, diffuse, valid, lam)
    targets = ids[:, 1:].masked_fill(~valid[:, 1:], -100)  # BUG: image targets count too
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, ignore_index=-100)
    return ce + lam * ref.mse, ce, ref.mse


def _loss_shifted_eps(logits, eps_pred, ids, eps, is_image, diffuse, valid, lam):
    ref = tf.transfusion_loss(logits, eps_pred, ids, eps, is_image, diffuse, valid, lam)
    scored = (diffuse & is_image & valid)[:, 1:]
    mse = (eps_pred[:, :-1] - eps[:, 1:]).pow(2).mean(-1)[scored].mean()  # BUG: shifted
    return ref.ce + lam * mse, ref.ce, mse


def _loss_clean_image_scored(logits, eps_pred, ids, eps, is_image, diffuse, valid, lam):
    ref = tf.transfusion_loss(logits, eps_pred, ids, eps, is_image, diffuse, valid, lam)
    mse = (eps_pred - eps).pow(2).mean(-1)[is_image & valid].mean()  # BUG: ignores diffuse
    return ref.ce + lam * mse, ref.ce, mse


def _loss_mse_summed(logits, eps_pred, ids, eps, is_image, diffuse, valid, lam):
    ref = tf.transfusion_loss(logits, eps_pred, ids, eps, is_image, diffuse, valid, lam)
    scored = diffuse & is_image & valid
    mse = (eps_pred - eps).pow(2).sum(-1)[scored].mean()  # BUG: summed over the P numbers
    return ref.ce + lam * mse, ref.ce, mse


def _loss_ce_summed(logits, eps_pred, ids, eps, is_image, diffuse, valid, lam):
    ref = tf.transfusion_loss(logits, eps_pred, ids, eps, is_image, diffuse, valid, lam)
    keep = valid[:, 1:] & ~is_image[:, 1:] & ~is_image[:, :-1]
    targets = ids[:, 1:].masked_fill(~keep, -100)
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, reduction="sum")  # BUG: a sum
    return ce + lam * ref.mse, ce, ref.mse


def _loss_float64(logits, eps_pred, ids, eps, is_image, diffuse, valid, lam=8.0):
    ref = tf.transfusion_loss(logits, eps_pred, ids, eps, is_image, diffuse, valid, lam)
    return tuple(x.double() for x in ref)  # BUG: float32 in, float64 out


def _loss_lambda_on_ce(logits, eps_pred, ids, eps, is_image, diffuse, valid, lam):
    ref = tf.transfusion_loss(logits, eps_pred, ids, eps, is_image, diffuse, valid, lam)
    return lam * ref.ce + ref.mse, ref.ce, ref.mse  # BUG: λ on the wrong term


def _loss_items(logits, eps_pred, ids, eps, is_image, diffuse, valid, lam=8.0):
    ref = tf.transfusion_loss(logits, eps_pred, ids, eps, is_image, diffuse, valid, lam)
    return ref.total.item(), ref.ce.item(), ref.mse.item()  # BUG: numbers, no backward


def _loss_rewrapped(logits, eps_pred, ids, eps, is_image, diffuse, valid, lam=8.0):
    ref = tf.transfusion_loss(logits, eps_pred, ids, eps, is_image, diffuse, valid, lam)
    return tuple(torch.tensor(x.item(), device=logits.device) for x in ref)  # BUG: detached


def _loss_default_lambda_one(logits, eps_pred, ids, eps, is_image, diffuse, valid, lam=1.0):
    return tf.transfusion_loss(logits, eps_pred, ids, eps, is_image, diffuse, valid, lam)


def _loss_float32(logits, eps_pred, ids, eps, is_image, diffuse, valid, lam=8.0):
    return tf.transfusion_loss(logits.float(), eps_pred.float(), ids, eps.float(), is_image,
                               diffuse, valid, lam)  # fmt: skip


def test_loss_reference_passes(capsys):
    passes(ch08.check_loss, tf.transfusion_loss, capsys, "8.3")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_loss_mse_on_text, "diffusion loss ignores text positions"),
        (_loss_ce_on_images, "cross-entropy ignores image positions"),
        (_loss_shifted_eps, "at the same position"),
        (_loss_clean_image_scored, "over the diffused patches"),
        (_loss_lambda_on_ce, r"total = ce(.|\n)*looks like: λ · ce \+ mse"),
        (
            _loss_mse_summed,
            r"mse = mean(.|\n)*looks like: a factor of P = 4 too large: a sum over P",
        ),
        (
            _loss_ce_summed,
            r"ce = mean(.|\n)*looks like: a factor of the number of text targets = \d+ too large",
        ),
        (
            _loss_float64,
            r"failed check 2, \"the two-row batch: total, ce and mse are scalar tensors of the "
            r"logits' dtype\"(.|\n)*dtype torch\.float64(.|\n)*a common cause",
        ),
        (_loss_items, r"total, ce and mse are scalar tensors(.|\n)*got:      \d\.\d+(.|\n)*\.item"),
        (_loss_rewrapped, r"total\.backward\(\) reaches the logits(.|\n)*stay in the autograd"),
        (_loss_default_lambda_one, r"lam left out(.|\n)*λ = 8(.|\n)*lam=8"),
        (_loss_float32, r"float64 inputs: total, ce and mse are scalar(.|\n)*dtype torch\.float32"),
        (stub, "not implemented yet"),
    ],
    ids=case_id,
)
def test_loss_rejects(wrong, message):
    rejects(ch08.check_loss, wrong, message)


# --- Exercise 8.2: noising the span -------------------------------------------------------------


def _noise_everything(patches, is_image, t, alpha_bar, eps):
    a = alpha_bar.to(patches)[t][:, None, None]
    return a.sqrt() * patches + (1 - a).sqrt() * eps  # BUG: text noised too


def _noise_first_t(patches, is_image, t, alpha_bar, eps):
    return tf.noise_image_span(patches, is_image, t[:1].expand_as(t), alpha_bar, eps)  # BUG


def _noise_no_sqrt(patches, is_image, t, alpha_bar, eps):
    a = alpha_bar.to(patches)[t][:, None, None]
    return torch.where(is_image[..., None], a * patches + (1 - a) * eps, patches)  # BUG


def _noise_t_minus_one(patches, is_image, t, alpha_bar, eps):
    return tf.noise_image_span(patches, is_image, t - 1, alpha_bar, eps)  # BUG: ᾱ_{t−1}


def _noise_float64(patches, is_image, t, alpha_bar, eps):
    a = alpha_bar[t][:, None, None]  # BUG: float64, never cast to the patches' dtype
    return torch.where(is_image[..., None], a.sqrt() * patches + (1 - a).sqrt() * eps, patches)


def _noise_in_place(patches, is_image, t, alpha_bar, eps):
    a = alpha_bar.to(patches)[t][:, None, None]
    noisy = a.sqrt() * patches + (1 - a).sqrt() * eps
    patches[is_image] = noisy[is_image]  # BUG: overwrites the clean patches
    return patches


def test_noise_reference_passes(capsys):
    passes(ch08.check_noise, tf.noise_image_span, capsys, "8.2")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_noise_everything, "text positions .* unchanged"),
        (_noise_first_t, r"each row's own t(.|\n)*looks like: row 0's t used for every row"),
        (_noise_no_sqrt, r"each row's own t(.|\n)*looks like: ᾱ_t x_0 \+ \(1 − ᾱ_t\) ε, the sq"),
        (_noise_t_minus_one, r"each row's own t(.|\n)*looks like: ᾱ_\{t−1\} where ᾱ_t belongs"),
        (
            _noise_float64,
            r"failed check 2, \"x_t keeps the dtype of patches\"(.|\n)*got:      tensor of shape "
            r"\(3, 10, 4\), dtype torch\.float64(.|\n)*a common cause is ᾱ",
        ),
        (_noise_in_place, r"failed check 1, \"leaves its input patches unchanged"),
        (stub, "not implemented yet"),
    ],
    ids=case_id,
)
def test_noise_rejects(wrong, message):
    rejects(ch08.check_noise, wrong, message)


# --- Exercise 8.4: one generation step ----------------------------------------------------------


def _step_swapped(model, cond, uncond, x, t, t_next, alpha_bar, guidance):
    return tf.generation_step(model, uncond, cond, x, t, t_next, alpha_bar, guidance)  # BUG


def _step_keeps_patches(model, cond, uncond, x, t, t_next, alpha_bar, guidance):
    def eps_of(cache):
        b, n, _ = x.shape
        dev = x.device
        mask = torch.ones(n, len(cache) + n, dtype=torch.bool, device=dev)
        t_b = torch.full((b,), t, dtype=torch.long, device=dev)
        ids = image_id = torch.zeros(b, n, dtype=torch.long, device=dev)
        return model(ids, x, t_b, image_id, cache=cache, mask=mask)[1]  # BUG: cache grows

    eps = diffusion.cfg_combine(eps_of(cond), eps_of(uncond), guidance)
    return diffusion.ddim_step(
        x[..., None], eps[..., None], t, t_next, alpha_bar, 0.0, torch.zeros_like(x[..., None])
    )[..., 0]


def _step_no_guidance(model, cond, uncond, x, t, t_next, alpha_bar, guidance):
    return tf.generation_step(model, cond, uncond, x, t, t_next, alpha_bar, 1.0)  # BUG


def _step_from_cond(model, cond, uncond, x, t, t_next, alpha_bar, guidance):
    eps_c, eps_u = tf.image_eps(model, cond, x, t), tf.image_eps(model, uncond, x, t)
    eps = eps_c + guidance * (eps_c - eps_u)  # BUG: starts from the caption's ε̂
    x4 = x[..., None]
    return diffusion.ddim_step(x4, eps[..., None], t, t_next, alpha_bar, 0.0, 0 * x4)[..., 0]


def _step_float64(model, cond, uncond, x, t, t_next, alpha_bar, guidance):
    return tf.generation_step(model, cond, uncond, x, t, t_next, alpha_bar, guidance).double()


def _step_in_place(model, cond, uncond, x, t, t_next, alpha_bar, guidance):
    out = tf.generation_step(model, cond, uncond, x, t, t_next, alpha_bar, guidance)
    return x.copy_(out)  # BUG: the caller's x is overwritten


def test_generation_step_reference_passes(capsys):
    passes(ch08.check_generation_step, tf.generation_step, capsys, "8.4")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_step_swapped, "pushes towards the caption"),
        (_step_keeps_patches, "keep their lengths"),
        (_step_no_guidance, r"one DDIM step(.|\n)*looks like: the caption's ε̂ alone, no guidance"),
        (_step_from_cond, r"one DDIM step(.|\n)*looks like: ε̂ = ε_caption \+ s \(ε_caption − ε_n"),
        (
            _step_float64,
            r"failed check 3, \"one DDIM step t = 600 → 400 with guidance 3\.0: x at t_next keeps "
            r"the dtype of x\"(.|\n)*dtype torch\.float64(.|\n)*alpha_bar\.to\(x\)",
        ),
        (_step_in_place, r"failed check 1, \"leaves its input x unchanged"),
        (stub, "not implemented yet"),
    ],
    ids=case_id,
)
def test_generation_step_rejects(wrong, message):
    rejects(ch08.check_generation_step, wrong, message)


def test_checkers_reject_non_callables():
    for checker in (ch08.check_mask, ch08.check_loss, ch08.check_noise):
        with pytest.raises(Exception, match="pass your function itself"):
            checker(None)


# --- every checker: whatever comes back, the failure says what was expected and what came ------


@pytest.mark.parametrize("kind", WRONG_KINDS)
@pytest.mark.parametrize(
    ("checker", "reference"),
    [
        (ch08.check_mask, tf.transfusion_mask),
        (ch08.check_loss, tf.transfusion_loss),
        (ch08.check_noise, tf.noise_image_span),
        (ch08.check_generation_step, tf.generation_step),
    ],
    ids=case_id,
)
def test_a_wrong_kind_of_result_gets_expected_and_got(checker, reference, kind):
    rejects_wrong_kind(checker, reference, kind)
