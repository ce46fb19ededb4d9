"""Chapter 04 checkers: the references pass; each known-wrong version fails with its message."""

from __future__ import annotations

import math

import pytest
import torch
from checker_cases import case_id, devices_seen, passes, rejects, stub

from mmcourse import diffusion
from mmcourse.checks import ch04

# Small models run fastest on one thread, and stay fast when other jobs load the CPU.
pytestmark = pytest.mark.usefixtures("one_thread")


# --- Exercise 4.1: q_sample --------------------------------------------------------------------


def _q_sample(x0, t, alpha_bar, eps):
    a = alpha_bar.to(x0)[t][:, None, None, None]
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


def _q_no_cast(x0, t, alpha_bar, eps):
    a = alpha_bar[t][:, None, None, None]  # BUG: float64 ᾱ makes x_t float64
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


def _q_no_sqrt(x0, t, alpha_bar, eps):
    a = alpha_bar.to(x0)[t][:, None, None, None]
    return a * x0 + (1 - a) * eps  # BUG: variances used as scales


def _q_off_by_one(x0, t, alpha_bar, eps):
    a = alpha_bar.to(x0)[t - 1][:, None, None, None]  # BUG: ᾱ_{t−1}, 1-based thinking
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


def _q_one_step_early(x0, t, alpha_bar, eps):
    a = alpha_bar.to(x0)[t + 1][:, None, None, None]  # BUG: ᾱ_{t+1}
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


def _q_in_place(x0, t, alpha_bar, eps):
    a = alpha_bar.to(x0)[t][:, None, None, None]
    return x0.mul_(a.sqrt()).add_((1 - a).sqrt() * eps)  # BUG: overwrites the clean images


def _q_one_t(x0, t, alpha_bar, eps):
    a = alpha_bar[t[0]]  # BUG: the first image's t for the whole batch
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


def _q_float32(x0, t, alpha_bar, eps):
    return _q_sample(x0.float(), t, alpha_bar.float(), eps.float())


def test_q_sample_references_pass(capsys):
    passes(ch04.check_q_sample, diffusion.q_sample, capsys, "4.1")
    passes(ch04.check_q_sample, _q_sample, capsys, "4.1")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (
            _q_no_sqrt,
            r"failed check 2, \"x_t for a batch(.|\n)*looks like: ᾱ_t and 1 − ᾱ_t as the scales, "
            r"without their square roots",
        ),
        (
            _q_off_by_one,
            r"failed check 2, (.|\n)*looks like: alpha_bar\[t − 1\] where alpha_bar\[t\] belongs "
            r"\(one step off\)",
        ),
        (_q_one_step_early, r"failed check 2, (.|\n)*looks like: alpha_bar\[t \+ 1\] where"),
        (
            _q_one_t,
            r"failed check 3, \"each image at its own timestep(.|\n)*looks like: every image "
            r"scaled by the first image's ᾱ",
        ),
        (_q_float32, r"keeps dtype float64(.|\n)*got:      dtype torch\.float32"),
        (_q_no_cast, r"failed check 1, (.|\n)*float64 alpha_bar(.|\n)*alpha_bar\.to\(x0\)"),
        (_q_in_place, r"failed check 1, \"leaves its input x0 unchanged"),
        (stub, r"Exercise 4\.1 \(sample x_t from q\(x_t \| x_0\)\): not implemented yet"),
    ],
    ids=case_id,
)
def test_q_sample_rejects(wrong, message):
    rejects(ch04.check_q_sample, wrong, message)


# --- Exercise 4.2: diffusion_loss --------------------------------------------------------------


def _loss(model, x0, t, labels, alpha_bar, eps):
    x_t = _q_sample(x0, t, alpha_bar, eps)
    return ((model(x_t, t, labels) - eps) ** 2).mean()


def _loss_x0_target(model, x0, t, labels, alpha_bar, eps):
    x_t = _q_sample(x0, t, alpha_bar, eps)
    return ((model(x_t, t, labels) - x0) ** 2).mean()  # BUG: predicts x_0, not ε


def _loss_clean_input(model, x0, t, labels, alpha_bar, eps):
    return ((model(x0, t, labels) - eps) ** 2).mean()  # BUG: the model never sees x_t


def _loss_sum(model, x0, t, labels, alpha_bar, eps):
    x_t = _q_sample(x0, t, alpha_bar, eps)
    return ((model(x_t, t, labels) - eps) ** 2).sum()  # BUG: sum, not mean


def _loss_no_grad(model, x0, t, labels, alpha_bar, eps):
    x_t = _q_sample(x0, t, alpha_bar, eps)
    return ((model(x_t, t, labels).detach() - eps) ** 2).mean()  # BUG: detached


def _loss_shifted_t(model, x0, t, labels, alpha_bar, eps):
    x_t = _q_sample(x0, t, alpha_bar, eps)
    return ((model(x_t, t + 1, labels) - eps) ** 2).mean()  # BUG: the model sees t + 1


def _loss_no_cast(model, x0, t, labels, alpha_bar, eps):
    x_t = _q_no_cast(x0, t, alpha_bar, eps)  # BUG: a float64 x_t for a float32 model
    return ((model(x_t, t, labels) - eps) ** 2).mean()


def test_diffusion_loss_references_pass(capsys):
    passes(ch04.check_diffusion_loss, diffusion.diffusion_loss, capsys, "4.2")
    passes(ch04.check_diffusion_loss, _loss, capsys, "4.2")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (
            _loss_x0_target,
            r"failed check 2, (.|\n)*looks like: the prediction compared with x0 where eps",
        ),
        (
            _loss_clean_input,
            r"failed check 2, (.|\n)*looks like: the model run on the clean x0 where the noised",
        ),
        (
            _loss_sum,
            r"failed check 2, (.|\n)*looks like: a factor of B·C·H·W = 192 too large: a sum",
        ),
        (
            _loss_shifted_t,
            r"failed check 2, \"the mean squared error(.|\n)*looks like: the model given t \+ 1",
        ),
        (_loss_no_grad, r"failed check 3, \"the loss reaches the model's weights"),
        (_loss_no_cast, r"failed check 1, (.|\n)*torch\.float64'\](.|\n)*alpha_bar\.to\(x0\)"),
        (stub, r"Exercise 4\.2 \(the ε-prediction loss\): not implemented yet"),
    ],
    ids=case_id,
)
def test_diffusion_loss_rejects(wrong, message):
    rejects(ch04.check_diffusion_loss, wrong, message)


# --- Exercise 4.3: ddpm_step -------------------------------------------------------------------


def _ddpm(x, eps, t, alpha_bar, noise, *, a_prev=None, var=None, a_t=None):
    """The DDPM step, with switches that put in the classic bugs."""
    a_t = alpha_bar[t] if a_t is None else a_t
    if a_prev is None:
        a_prev = alpha_bar[t - 1] if t > 0 else torch.ones_like(a_t)
    beta = 1 - a_t / a_prev
    x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    mean = a_prev.sqrt() * beta / (1 - a_t) * x0 + (1 - beta).sqrt() * (1 - a_prev) / (1 - a_t) * x
    if var is None:
        var = (1 - a_prev) / (1 - a_t) * beta
    return mean + var.sqrt() * noise


def _ddpm_step(x, eps, t, alpha_bar, noise):
    return _ddpm(x, eps, t, alpha_bar, noise)


def _ddpm_wraps_at_zero(x, eps, t, alpha_bar, noise):
    return _ddpm(x, eps, t, alpha_bar, noise, a_prev=alpha_bar[t - 1])  # BUG: [−1] at t = 0


def _ddpm_off_by_one(x, eps, t, alpha_bar, noise):
    # BUG: 1-based thinking: alpha_bar[t] taken as ᾱ_{t−1} and alpha_bar[t + 1] as ᾱ_t
    shifted = torch.cat([alpha_bar[1:], alpha_bar[-1:] ** 2])
    return _ddpm(x, eps, t, shifted, noise, a_prev=alpha_bar[t])


def _ddpm_beta_variance(x, eps, t, alpha_bar, noise):
    a_prev = alpha_bar[t - 1] if t > 0 else torch.ones_like(alpha_bar[t])
    beta = 1 - alpha_bar[t] / a_prev
    return _ddpm(x, eps, t, alpha_bar, noise, var=beta)  # BUG: σ² = β_t, noise even at t = 0


def _ddpm_noise_always(x, eps, t, alpha_bar, noise):
    out = _ddpm(x, eps, t, alpha_bar, noise)
    return out + 0.1 * noise if t == 0 else out  # BUG: a little noise at the last step


def _ddpm_float32(x, eps, t, alpha_bar, noise):
    return _ddpm(x.float(), eps.float(), t, alpha_bar.float(), noise.float())


def _ddpm_slices(x, eps, t, alpha_bar, noise):
    a_t = alpha_bar[t : t + 1]  # BUG: (1,) float64 tensors promote x to float64
    a_prev = alpha_bar[t - 1 : t] if t > 0 else torch.ones_like(a_t)
    return _ddpm(x, eps, t, alpha_bar, noise, a_prev=a_prev, var=None, a_t=a_t)


def test_ddpm_step_references_pass(capsys):
    passes(ch04.check_ddpm_step, diffusion.ddpm_step, capsys, "4.3")
    passes(ch04.check_ddpm_step, _ddpm_step, capsys, "4.3")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (
            _ddpm_off_by_one,
            r"failed check 2, \"x_\{t−1\} at t = 5(.|\n)*values differ(.|\n)*looks like: "
            r"alpha_bar\[t \+ 1\] as ᾱ_t and alpha_bar\[t\] as ᾱ_\{t−1\} \(one step off\)",
        ),
        (
            _ddpm_beta_variance,
            r"failed check 2, (.|\n)*looks like: β_t as the variance, where the posterior's",
        ),
        (
            _ddpm_wraps_at_zero,
            r"failed check 5, \"the last step t = 0(.|\n)*got nan\n  looks like: ᾱ_\{t−1\} read "
            r"as alpha_bar\[t − 1\] = alpha_bar\[−1\] at t = 0 \(the index wraps round",
        ),
        (
            _ddpm_noise_always,
            r"failed check 5, \"the last step t = 0 returns x̂_0(.|\n)*hint:(.|\n)*a common cause",
        ),
        (_ddpm_float32, r"keeps dtype float64(.|\n)*got:      dtype torch\.float32"),
        (_ddpm_slices, r"failed check 1, (.|\n)*float64 alpha_bar(.|\n)*alpha_bar\.to"),
        (stub, r"Exercise 4\.3 \(one DDPM step\): not implemented yet"),
    ],
    ids=case_id,
)
def test_ddpm_step_rejects(wrong, message):
    rejects(ch04.check_ddpm_step, wrong, message)


# --- Exercise 4.4: ddim_timesteps --------------------------------------------------------------


def _timesteps(T, steps):
    ts = [round((T - 1) * (1 - i / (steps - 1))) if steps > 1 else T - 1 for i in range(steps)]
    return list(zip(ts, ts[1:] + [-1]))


def _hard_coded_stride(T, steps):
    ts = torch.linspace(T - 1, 0, steps).round().long().tolist()
    return [(t, t - T // steps) for t in ts]  # BUG: t − T/n, not the next scheduled step


def _hard_coded_stride_last_fixed(T, steps):
    pairs = _hard_coded_stride(T, steps)
    return pairs[:-1] + [(pairs[-1][0], -1)]  # still BUG: skips to unscheduled timesteps


def _ends_at_zero(T, steps):
    ts = torch.linspace(T - 1, 0, steps).round().long().tolist()
    return list(zip(ts, ts[1:] + [0]))  # BUG: the last step goes to t = 0, not to x_0


def _drops_last_step(T, steps):
    ts = torch.linspace(T - 1, 0, steps + 1).round().long().tolist()
    return list(zip(ts[:-1], ts[1:]))  # BUG: stops at t = 0, never reaching x_0


def _float_timesteps(T, steps):
    ts = torch.linspace(T - 1, 0, steps).round().tolist()  # BUG: floats cannot index alpha_bar
    return list(zip(ts, ts[1:] + [-1.0]))


def _starts_at_T(T, steps):
    ts = torch.linspace(T, 0, steps).round().long().tolist()  # BUG: t = T does not exist
    return list(zip(ts, ts[1:] + [-1]))


def test_ddim_timesteps_references_pass(capsys):
    passes(ch04.check_ddim_timesteps, diffusion.ddim_timesteps, capsys, "4.4")
    passes(ch04.check_ddim_timesteps, _timesteps, capsys, "4.4")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_hard_coded_stride, r"lands on x_0(.|\n)*got:      \(0, -20\)"),
        (
            _hard_coded_stride_last_fixed,
            r"each step goes to the next scheduled(.|\n)*pair 1 goes to 959(.|\n)*T // steps",
        ),
        (_ends_at_zero, r"final step lands on x_0(.|\n)*got:      \(0, 0\)"),
        (_drops_last_step, r"final step lands on x_0 \(t_next = −1\)"),
        (_starts_at_T, r"starts at pure noise, t = T − 1(.|\n)*got:      1000"),
        (
            _float_timesteps,
            r"returns \(t, t_next\) pairs for T=1000\":\n  expected: a list of \(t, t_next\) "
            r"pairs of ints\n  got:      \[\(999\.0, 979\.0\)",
        ),
        (stub, r"Exercise 4\.4 \(the strided DDIM schedule\): not implemented yet"),
    ],
    ids=case_id,
)
def test_ddim_timesteps_rejects(wrong, message):
    rejects(ch04.check_ddim_timesteps, wrong, message)


# --- Exercise 4.5: ddim_step -------------------------------------------------------------------


def _ddim(x, eps, t, t_next, alpha_bar, eta, noise, *, wrap=False, off_by_one=False):
    a_t = alpha_bar[t]
    if wrap or t_next >= 0:
        a_next = alpha_bar[t_next + 1 if off_by_one else t_next]
    else:
        a_next = torch.ones_like(a_t)
    x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    sigma = eta * ((1 - a_next) / (1 - a_t) * (1 - a_t / a_next)).sqrt()
    return a_next.sqrt() * x0 + (1 - a_next - sigma**2).clamp(min=0).sqrt() * eps + sigma * noise


def _ddim_step(x, eps, t, t_next, alpha_bar, eta, noise):
    return _ddim(x, eps, t, t_next, alpha_bar, eta, noise)


def _ddim_wraps_final(x, eps, t, t_next, alpha_bar, eta, noise):
    return _ddim(x, eps, t, t_next, alpha_bar, eta, noise, wrap=True)  # BUG: alpha_bar[−1]


def _ddim_off_by_one(x, eps, t, t_next, alpha_bar, eta, noise):
    return _ddim(x, eps, t, t_next, alpha_bar, eta, noise, off_by_one=True)  # BUG: ᾱ_{t_next+1}


def _ddim_no_direction(x, eps, t, t_next, alpha_bar, eta, noise):
    a_t = alpha_bar[t]
    a_next = alpha_bar[t_next] if t_next >= 0 else torch.ones_like(a_t)
    x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    return a_next.sqrt() * x0 + (1 - a_next).sqrt() * noise  # BUG: fresh noise, not ε


def _ddim_sigma_squared(x, eps, t, t_next, alpha_bar, eta, noise):
    a_t = alpha_bar[t]
    a_next = alpha_bar[t_next] if t_next >= 0 else torch.ones_like(a_t)
    x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    sigma = eta * (1 - a_next) / (1 - a_t) * (1 - a_t / a_next)  # BUG: σ² used as σ
    return a_next.sqrt() * x0 + (1 - a_next - sigma**2).sqrt() * eps + sigma * noise


def _ddim_one_element(x, eps, t, t_next, alpha_bar, eta, noise):
    a_t = alpha_bar[[t]]  # BUG: a (1,) float64 tensor, not a scalar: x_next becomes float64
    a_next = alpha_bar[[t_next]] if t_next >= 0 else torch.ones_like(a_t)
    x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    sigma = eta * ((1 - a_next) / (1 - a_t) * (1 - a_t / a_next)).sqrt()
    return a_next.sqrt() * x0 + (1 - a_next - sigma**2).clamp(min=0).sqrt() * eps + sigma * noise


def test_ddim_step_references_pass(capsys):
    passes(ch04.check_ddim_step, diffusion.ddim_step, capsys, "4.5")
    passes(ch04.check_ddim_step, _ddim_step, capsys, "4.5")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (
            _ddim_off_by_one,
            r"failed check 2, \"η = 0 from t = 9(.|\n)*looks like: alpha_bar\[t_next \+ 1\] "
            r"where alpha_bar\[t_next\] belongs \(one step off\)",
        ),
        (
            _ddim_no_direction,
            r"failed check 2, (.|\n)*looks like: fresh noise where the predicted ε belongs",
        ),
        (_ddim_sigma_squared, r"failed check 4, \"η = 0.5 from t = 7(.|\n)*looks like: σ² where σ"),
        (_ddim_one_element, r"failed check 1, (.|\n)*float64 alpha_bar"),
        (
            _ddim_wraps_final,
            r"failed check 5, \"the final step, t_next = −1(.|\n)*looks like: ᾱ_next read as "
            r"alpha_bar\[−1\](.|\n)*use ᾱ_next = 1",
        ),
        (stub, r"Exercise 4\.5 \(one DDIM step\): not implemented yet"),
    ],
    ids=case_id,
)
def test_ddim_step_rejects(wrong, message):
    rejects(ch04.check_ddim_step, wrong, message)


# --- Exercise 4.6: cfg_combine -----------------------------------------------------------------


def _cfg(eps_cond, eps_uncond, scale):
    return scale * eps_cond + (1 - scale) * eps_uncond


def _cfg_from_cond(eps_cond, eps_uncond, scale):
    return eps_cond + scale * (eps_cond - eps_uncond)  # BUG: starts from ε_c


def _cfg_swapped(eps_cond, eps_uncond, scale):
    return (1 - scale) * eps_cond + scale * eps_uncond  # BUG: weights swapped


def _cfg_average(eps_cond, eps_uncond, scale):
    return (eps_cond + scale * eps_uncond) / (1 + scale)  # BUG: a weighted mean, no extrapolation


def _cfg_in_place(eps_cond, eps_uncond, scale):
    eps_uncond += scale * (eps_cond - eps_uncond)  # BUG: overwrites the caller's ε_u
    return eps_uncond


def test_cfg_combine_references_pass(capsys):
    passes(ch04.check_cfg_combine, diffusion.cfg_combine, capsys, "4.6")
    passes(ch04.check_cfg_combine, _cfg, capsys, "4.6")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (
            _cfg_from_cond,
            r"failed check 1, \"scale 1 gives the plain(.|\n)*looks like: ε_c \+ s · "
            r"\(ε_c − ε_u\), which starts from the conditional prediction",
        ),
        (
            _cfg_swapped,
            r"failed check 1, \"scale 1(.|\n)*looks like: the weights swapped: s on ε_u and "
            r"\(1 − s\) on ε_c",
        ),
        (_cfg_average, r"failed check 1, \"scale 1 gives the plain"),
        (_cfg_in_place, r"failed check 1, \"leaves its input eps_uncond unchanged"),
        (stub, r"Exercise 4\.6 \(classifier-free guidance\): not implemented yet"),
    ],
    ids=case_id,
)
def test_cfg_combine_rejects(wrong, message):
    rejects(ch04.check_cfg_combine, wrong, message)


# --- every checker on the course device --------------------------------------------------------


@pytest.mark.parametrize(
    ("checker", "reference"),
    [
        (ch04.check_q_sample, diffusion.q_sample),
        (ch04.check_diffusion_loss, diffusion.diffusion_loss),
        (ch04.check_ddpm_step, diffusion.ddpm_step),
        (ch04.check_ddim_step, diffusion.ddim_step),
        (ch04.check_cfg_combine, diffusion.cfg_combine),
    ],
    ids=case_id,
)
def test_checks_run_on_the_chosen_device(checker, reference, device, capsys):
    seen = devices_seen(checker, reference, device, capsys)
    assert seen == {torch.device(device)}


def test_short_schedule_changes_every_step():
    """The checkers' schedule must make an off-by-one visible: ᾱ changes by > 4 % per step."""
    alpha_bar = diffusion.linear_schedule(10, 0.05, 0.5)
    ratios = alpha_bar[1:] / alpha_bar[:-1]
    assert float(ratios.max()) < 0.96
    assert math.isclose(float(alpha_bar[0]), 0.95)
