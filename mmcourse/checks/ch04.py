"""Checkers of chapter 04 (diffusion): the forward process q(x_t | x_0), the ε-prediction loss,
the DDPM step, the strided DDIM schedule, the DDIM step and classifier-free guidance.

Every checker compares the candidate with `mmcourse.diffusion` on seeded inputs, on a short
schedule (T = 10, large β) where an off-by-one in ᾱ changes every value, then checks the
properties that catch the classic bugs: no noise at the last step, the last step lands on x_0,
each DDIM step goes to the next scheduled timestep, s = 0 and s = 1 of guidance.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from mmcourse import diffusion
from mmcourse.checks._contract import call
from mmcourse.checks._core import Check, describe, exercise, seeded
from mmcourse.unet import NULL

_Q = "x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε, with ᾱ_t = alpha_bar[t]"
_X0 = "x̂_0 = (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t"
_MEAN = "μ̃_t = (√ᾱ_{t−1} β_t / (1−ᾱ_t)) x̂_0 + (√α_t (1−ᾱ_{t−1}) / (1−ᾱ_t)) x_t"
_VAR = "β̃_t = (1−ᾱ_{t−1}) / (1−ᾱ_t) · β_t, with β_t = 1 − ᾱ_t/ᾱ_{t−1}"


def _short_schedule() -> torch.Tensor:
    """ᾱ (10,) float64 of β rising 0.05 → 0.5: every step changes ᾱ a lot."""
    return diffusion.linear_schedule(10, 0.05, 0.5)


_CAST = (
    "alpha_bar is float64, like the notebook's schedules: cast it to the images' dtype (and "
    "device) before mixing, alpha_bar.to(x0), or the result becomes float64 and the float32 "
    "model downstream fails on it"
)


def _follows_dtype(check: Check, got: Any, like: torch.Tensor, what: str) -> None:
    """The result keeps the images' dtype although the schedule is float64."""
    check.tensor(
        got,
        f"{what}: keeps the images' dtype {like.dtype} with a float64 alpha_bar",
        shape=like.shape,
        dtype=like.dtype,
        hint=_CAST,
        dtype_hint=_CAST,
    )


def _tensors(g: torch.Generator, dev: torch.device, n: int, *shape: int) -> list[torch.Tensor]:
    return [torch.randn(*shape, generator=g).to(dev) for _ in range(n)]


# ---------------------------------------------------------------- Exercise 4.1: q(x_t | x_0)


def _mix(x0: torch.Tensor, eps: torch.Tensor, a: torch.Tensor, root: bool = True) -> torch.Tensor:
    """√ᾱ x_0 + √(1 − ᾱ) ε with ᾱ (B,) one per image (without the roots if not `root`)."""
    a = a.to(x0)[:, None, None, None]  # (B, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * eps if root else a * x0 + (1 - a) * eps


def _q_mistakes(x0: torch.Tensor, t: torch.Tensor, alpha_bar: torch.Tensor, eps: torch.Tensor):
    """What q_sample's classic mistakes give for these inputs."""
    step = "t counts from 0, so ᾱ_t is alpha_bar[t] itself"
    mistakes = {
        f"ᾱ_t and 1 − ᾱ_t as the scales, without their square roots: {_Q}": _mix(
            x0, eps, alpha_bar[t], root=False
        ),
        f"alpha_bar[t − 1] where alpha_bar[t] belongs (one step off): {step}": _mix(
            x0, eps, alpha_bar[t - 1]
        ),
        "every image scaled by the first image's ᾱ: index alpha_bar[t] → (B,) and reshape to "
        "(B, 1, 1, 1) so that image i gets its own ᾱ_t": _mix(
            x0, eps, alpha_bar[t[:1]].expand(len(t))
        ),
    }
    if int(t.max()) + 1 < len(alpha_bar):
        mistakes[f"alpha_bar[t + 1] where alpha_bar[t] belongs (one step off): {step}"] = _mix(
            x0, eps, alpha_bar[t + 1]
        )
    return mistakes


@exercise("4.1", "sample x_t from q(x_t | x_0)", references=(diffusion.q_sample,))
def check_q_sample(check: Check) -> None:
    """Exercise 4.1: q_sample(x0 (B, C, H, W), t (B,) long, alpha_bar (T,), eps) -> x_t."""
    g, dev = seeded(41), check.device
    alpha_bar = _short_schedule().to(dev)  # float64, as in the notebook
    x0, eps = _tensors(g, dev, 2, 4, 3, 4, 4)
    t = torch.tensor([5, 5, 5, 5], device=dev)
    expected = diffusion.q_sample(x0, t, alpha_bar, eps)
    got = call(check, x0, t, alpha_bar, eps)
    _follows_dtype(check, got, x0, "x_t for float32 images")
    check.close(
        got,
        expected,
        "x_t for a batch of 4 images, all at t = 5",
        hint=f"{_Q}: square roots of ᾱ_t and of 1 − ᾱ_t, and alpha_bar[t] itself (t counts "
        "from 0, so no t − 1 or t + 1)",
        alternatives=_q_mistakes(x0, t, alpha_bar, eps),
    )
    t = torch.tensor([0, 3, 7, 9], device=dev)
    expected = diffusion.q_sample(x0, t, alpha_bar, eps)
    check.close(
        call(check, x0, t, alpha_bar, eps),
        expected,
        "each image at its own timestep t = [0, 3, 7, 9]",
        hint="index alpha_bar[t] → (B,), then reshape to (B, 1, 1, 1) with [:, None, None, None] "
        "so that image i is scaled by its own ᾱ_t",
        alternatives=_q_mistakes(x0, t, alpha_bar, eps),
    )
    x0_64, eps_64 = x0.double(), eps.double()
    expected = diffusion.q_sample(x0_64, t, alpha_bar, eps_64)
    dtype_hint = "compute from the inputs' own tensors; don't create float32 tensors"
    check.close(
        call(check, x0_64, t, alpha_bar, eps_64),
        expected,
        "keeps dtype float64 and the device",
        atol=1e-10,
        hint=dtype_hint,
        dtype_hint=dtype_hint,
    )


# ----------------------------------------------------------------- Exercise 4.2: the loss


class _Toy(nn.Module):
    """A tiny stand-in for the U-Net whose output depends on x_t, t and the labels."""

    def __init__(self, channels: int, g: torch.Generator):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        with torch.no_grad():
            for p in self.conv.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
        self.label = nn.Parameter(torch.randn(7, channels, generator=g))
        self.seen: list[torch.dtype] = []  # the dtype of every x_t it was called with

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.dtype)
        x = x.to(self.conv.weight.dtype)  # a real float32 U-Net would fail on float64 here
        colour = torch.where(labels[:, 0] == NULL, 6, labels[:, 0])  # NULL → its own row
        shift = torch.sin(0.7 * t.to(x.dtype))[:, None, None, None]  # (B, 1, 1, 1)
        return torch.tanh(self.conv(x)) + shift + self.label[colour][:, :, None, None]


@exercise("4.2", "the ε-prediction loss", references=(diffusion.diffusion_loss,))
def check_diffusion_loss(check: Check) -> None:
    """Exercise 4.2: diffusion_loss(model, x0, t, labels, alpha_bar, eps) -> scalar."""
    g, dev = seeded(42), check.device
    alpha_bar = _short_schedule().to(dev)  # float64, as in the notebook
    x0, eps = _tensors(g, dev, 2, 4, 3, 4, 4)
    t = torch.tensor([1, 4, 6, 9], device=dev)
    labels = torch.tensor([[0, 1, 2], [3, 0, 4], [NULL] * 3, [5, 2, 0]], device=dev)
    model, reference = _Toy(3, g).to(dev), _Toy(3, seeded(0)).to(dev)
    reference.load_state_dict(model.state_dict())
    expected = diffusion.diffusion_loss(reference, x0, t, labels, alpha_bar, eps)
    with torch.no_grad():  # the classic mistakes, on the reference's copy of the model
        x_t = diffusion.q_sample(x0, t, alpha_bar, eps)
        mistakes = {
            "the prediction compared with x0 where eps belongs: the network predicts the noise ε": (
                reference(x_t, t, labels) - x0
            )
            .pow(2)
            .mean(),
            f"the model run on the clean x0 where the noised x_t belongs: noise the images "
            f"first, {_Q}": (reference(x0, t, labels) - eps).pow(2).mean(),
            "the model given t + 1 where t belongs (one step off)": (
                (reference(x_t, t + 1, labels) - eps).pow(2).mean()
            ),
        }
    got = call(check, model, x0, t, labels, alpha_bar, eps)
    check.that(
        model.seen == [x0.dtype],
        "calls the model once, on x_t in the images' dtype float32 (alpha_bar is float64)",
        expected="one call with a float32 x_t",
        got=f"calls with x_t of dtypes {[str(d) for d in model.seen]}",
        hint=_CAST if torch.float64 in model.seen else "call model(x_t, t, labels) once",
    )
    check.close(
        got,
        expected,
        "the mean squared error between ε and the model's prediction ε_θ(x_t, t, labels)",
        hint=f"noise the images first ({_Q}), call model(x_t, t, labels) and compare its "
        "output with eps (not with x0), averaged over every value: a scalar",
        alternatives=mistakes,
        sizes={"B·C·H·W": x0.numel(), "C·H·W": x0[0].numel(), "B": len(x0)},
    )
    check.that(
        isinstance(got, torch.Tensor) and got.requires_grad,
        "the loss reaches the model's weights",
        expected="a loss with a gradient (requires_grad=True)",
        got=describe(got),
        hint="don't wrap the model call in torch.no_grad() or .detach() the prediction",
    )
    grads = torch.autograd.grad(got, list(model.parameters()))
    ref_grads = torch.autograd.grad(expected, list(reference.parameters()))
    check.close(
        grads[0],
        ref_grads[0],
        "the gradient of the loss on the model's weights",
        atol=1e-5,
        hint="the loss is (prediction − eps)² averaged over all values, with nothing detached",
    )
    check.close(
        grads[-1],
        ref_grads[-1],
        "the caption embedding gets the gradient of the labels that were passed",
        atol=1e-5,
        hint="pass labels to the model as they are (NULL rows included)",
    )


# -------------------------------------------------------------- Exercise 4.3: the DDPM step


def _root(value: float) -> float:
    """√value as torch takes it: NaN below 0 (what a wrapped-round ᾱ gives the learner too)."""
    return math.sqrt(value) if value >= 0 else math.nan


def _posterior(
    x: torch.Tensor,
    eps: torch.Tensor,
    a_t: float,
    a_prev: float,
    noise: torch.Tensor,
    var: float | None = None,
) -> torch.Tensor:
    """The DDPM step from ᾱ_t and ᾱ_{t−1} given as numbers; `var` replaces the variance β̃_t."""
    beta = 1 - a_t / a_prev  # β_t
    x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)  # x̂_0
    mean = math.sqrt(a_prev) * beta / (1 - a_t) * x0
    mean = mean + math.sqrt(1 - beta) * (1 - a_prev) / (1 - a_t) * x
    var = (1 - a_prev) / (1 - a_t) * beta if var is None else var
    return mean + _root(var) * noise


def _ddpm_mistakes(x, eps, t: int, alpha_bar: torch.Tensor, noise) -> dict[str, torch.Tensor]:
    """What the DDPM step's classic mistakes give at timestep t."""
    a = alpha_bar.tolist()
    a_t, a_prev = a[t], a[t - 1] if t > 0 else 1.0
    mistakes = {
        f"β_t as the variance, where the posterior's belongs: {_VAR}": _posterior(
            x, eps, a_t, a_prev, noise, var=1 - a_t / a_prev
        )
    }
    if t == 0:
        mistakes[
            "ᾱ_{t−1} read as alpha_bar[t − 1] = alpha_bar[−1] at t = 0 (the index wraps round "
            "to ᾱ_{T−1}): use ᾱ_{−1} = 1, which makes β̃_0 = 0, no noise"
        ] = _posterior(x, eps, a_t, a[-1], noise)
    if t + 1 < len(a):
        mistakes[
            "alpha_bar[t + 1] as ᾱ_t and alpha_bar[t] as ᾱ_{t−1} (one step off): t counts from "
            "0, so ᾱ_t = alpha_bar[t] and ᾱ_{t−1} = alpha_bar[t − 1]"
        ] = _posterior(x, eps, a[t + 1], a_t, noise)
    return mistakes


@exercise("4.3", "one DDPM step", references=(diffusion.ddpm_step,))
def check_ddpm_step(check: Check) -> None:
    """Exercise 4.3: ddpm_step(x (B, C, H, W), eps, t: int, alpha_bar (T,), noise) -> x_{t−1}."""
    g, dev = seeded(43), check.device
    alpha_bar = _short_schedule().to(dev)  # float64, as in the notebook
    x, eps, noise = _tensors(g, dev, 3, 2, 3, 4, 4)
    _follows_dtype(check, call(check, x, eps, 5, alpha_bar, noise), x, "x_{t−1} at t = 5")
    for t, what, hint in [
        (5, "x_{t−1} at t = 5: posterior mean plus √β̃_t · noise", f"{_X0}; {_MEAN}"),
        (9, "the first step, t = T − 1 = 9", f"{_MEAN}; with 0-based t, ᾱ_t = alpha_bar[t]"),
        (1, "t = 1, where ᾱ_{t−1} = alpha_bar[0]", "ᾱ_{t−1} = alpha_bar[t − 1]"),
    ]:
        expected = diffusion.ddpm_step(x, eps, t, alpha_bar, noise)
        check.close(
            call(check, x, eps, t, alpha_bar, noise),
            expected,
            what,
            atol=1e-4,
            hint=f"{hint}; the variance is the posterior's {_VAR}",
            alternatives=_ddpm_mistakes(x, eps, t, alpha_bar, noise),
        )
    expected = diffusion.ddpm_step(x, eps, 0, alpha_bar, noise)
    for n, z in enumerate((noise, 3 * noise)):
        check.close(
            call(check, x, eps, 0, alpha_bar, z),
            expected,
            f"the last step t = 0 returns x̂_0 and adds no noise (noise draw {n + 1})",
            atol=1e-4,
            hint="at t = 0 there is no ᾱ_{t−1}: use ᾱ_{−1} = 1, which makes β̃_0 = 0 (no "
            "noise); a common cause is alpha_bar[t − 1], which wraps round to alpha_bar[−1]",
            alternatives=_ddpm_mistakes(x, eps, 0, alpha_bar, z),
        )
    x64, eps64, noise64 = x.double(), eps.double(), noise.double()
    expected = diffusion.ddpm_step(x64, eps64, 4, alpha_bar, noise64)
    dtype_hint = "compute from the inputs' own tensors; don't create float32 tensors"
    check.close(
        call(check, x64, eps64, 4, alpha_bar, noise64),
        expected,
        "keeps dtype float64 and the device",
        atol=1e-10,
        hint=dtype_hint,
        dtype_hint=dtype_hint,
    )


# ------------------------------------------------------------- Exercise 4.4: DDIM timesteps


def _is_int(value: Any) -> bool:
    """A timestep: a Python int, or an integer tensor of zero dimensions."""
    if isinstance(value, torch.Tensor):
        return value.dim() == 0 and not value.is_floating_point() and value.dtype != torch.bool
    return isinstance(value, int) and not isinstance(value, bool)


def _pairs(check: Check, got: Any, what: str) -> list[tuple[int, int]]:
    ok = isinstance(got, list | tuple) and all(
        isinstance(p, list | tuple) and len(p) == 2 and _is_int(p[0]) and _is_int(p[1]) for p in got
    )
    check.that(
        ok,
        what,
        expected="a list of (t, t_next) pairs of ints",
        got=describe(got),
        hint="return e.g. [(999, 979), (979, 958), …, (0, -1)]: timesteps index alpha_bar, "
        "so they are ints (.round().long().tolist() gives them)",
    )
    return [(int(a), int(b)) for a, b in got]


@exercise("4.4", "the strided DDIM schedule", references=(diffusion.ddim_timesteps,))
def check_ddim_timesteps(check: Check) -> None:
    """Exercise 4.4: ddim_timesteps(T: int, steps: int) -> [(t, t_next), ...]."""
    for T, steps in [(1000, 50), (1000, 20), (10, 10), (1000, 7), (20, 1)]:
        got = _pairs(check, call(check, T, steps), f"returns (t, t_next) pairs for T={T}")
        expected = diffusion.ddim_timesteps(T, steps)
        check.that(
            len(got) == steps,
            f"T={T}, steps={steps}: one pair per network call",
            expected=f"{steps} pairs",
            got=f"{len(got)} pairs",
            hint="every scheduled timestep t is one step, the last one included",
        )
        check.that(
            got[0][0] == T - 1,
            f"T={T}, steps={steps}: sampling starts at pure noise, t = T − 1",
            expected=f"the first t = {T - 1}",
            got=f"{got[0][0]}",
            hint="spread the timesteps from T − 1 down to 0: torch.linspace(T − 1, 0, steps)",
        )
        check.that(
            got[-1][1] == -1,
            f"T={T}, steps={steps}: the final step lands on x_0 (t_next = −1)",
            expected="the last pair (0, −1)",
            got=f"{got[-1]}",
            hint="after the step at t = 0 comes x_0, written t_next = −1 (ᾱ_{−1} = 1); "
            "without it the sampler returns a still slightly noisy x_0",
        )
        nexts = [t_next for _, t_next in got[:-1]]
        following = [t for t, _ in got[1:]]
        bad = [i for i, (a, b) in enumerate(zip(nexts, following)) if a != b]
        check.that(
            not bad,
            f"T={T}, steps={steps}: each step goes to the next scheduled timestep",
            expected="t_next of each pair = t of the pair after it",
            got=f"pair {bad[0]} goes to {nexts[bad[0]]}, the next pair starts at "
            f"{following[bad[0]]}"
            if bad
            else "",
            hint="pair each timestep with the one after it; a common cause is a fixed stride "
            "t − T // steps, which skips to timesteps that are never scheduled (the rounded "
            "timesteps are not evenly spaced)",
        )
        check.equal(
            got,
            expected,
            f"T={T}, steps={steps}: the timesteps round(linspace(T − 1, 0, steps))",
            hint="torch.linspace(T − 1, 0, steps).round().long().tolist()",
        )


# -------------------------------------------------------------- Exercise 4.5: the DDIM step


def _ddim(
    x: torch.Tensor,
    eps: torch.Tensor,
    a_t: float,
    a_next: float,
    eta: float,
    noise: torch.Tensor,
    *,
    sigma_squared: bool = False,
    fresh_noise: bool = False,
) -> torch.Tensor:
    """The DDIM step from ᾱ_t and ᾱ_next given as numbers, with a mistake put in if asked:
    σ² used as σ, or fresh noise in place of ε in the direction term."""
    x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)  # x̂_0
    ratio = (1 - a_next) / (1 - a_t) * (1 - a_t / a_next)  # (σ/η)²
    sigma = eta * (ratio if sigma_squared else _root(ratio))
    direction = noise if fresh_noise else eps
    return math.sqrt(a_next) * x0 + _root(1 - a_next - sigma**2) * direction + sigma * noise


def _ddim_mistakes(x, eps, t: int, t_next: int, alpha_bar, eta: float, noise) -> dict:
    """What the DDIM step's classic mistakes give from t to t_next."""
    a = alpha_bar.tolist()
    a_t, a_next = a[t], a[t_next] if t_next >= 0 else 1.0
    mistakes = {
        "fresh noise where the predicted ε belongs in the direction term √(1 − ᾱ_next − σ²) ε": (
            _ddim(x, eps, a_t, a_next, eta, noise, fresh_noise=True)
        ),
        "σ² where σ belongs: σ = η √((1−ᾱ_next)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_next)": _ddim(
            x, eps, a_t, a_next, eta, noise, sigma_squared=True
        ),
    }
    if t_next < 0:
        mistakes[
            "ᾱ_next read as alpha_bar[−1] = ᾱ_{T−1} for t_next = −1 (the index wraps round): "
            "use ᾱ_next = 1 there, so σ = 0 and the step lands on x̂_0"
        ] = _ddim(x, eps, a_t, a[-1], eta, noise)
    elif t_next + 1 < t:
        mistakes[
            "alpha_bar[t_next + 1] where alpha_bar[t_next] belongs (one step off): ᾱ_next = "
            "alpha_bar[t_next]"
        ] = _ddim(x, eps, a_t, a[t_next + 1], eta, noise)
    return mistakes


@exercise("4.5", "one DDIM step", references=(diffusion.ddim_step,))
def check_ddim_step(check: Check) -> None:
    """Exercise 4.5: ddim_step(x, eps, t, t_next, alpha_bar, eta, noise) -> x_{t_next}."""
    g, dev = seeded(45), check.device
    alpha_bar = _short_schedule().to(dev)  # float64, as in the notebook
    x, eps, noise = _tensors(g, dev, 3, 2, 3, 4, 4)
    got = call(check, x, eps, 9, 6, alpha_bar, 0.5, noise)
    _follows_dtype(check, got, x, "x_{t_next} from t = 9 to 6")
    sigma = "σ = η √((1−ᾱ_next)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_next)"
    for t, t_next, eta, what in [
        (9, 6, 0.0, "η = 0 from t = 9 to t_next = 6: deterministic"),
        (6, 2, 0.0, "η = 0 from t = 6 to t_next = 2"),
        (7, 3, 0.5, "η = 0.5 from t = 7 to t_next = 3: some fresh noise"),
    ]:
        expected = diffusion.ddim_step(x, eps, t, t_next, alpha_bar, eta, noise)
        check.close(
            call(check, x, eps, t, t_next, alpha_bar, eta, noise),
            expected,
            what,
            atol=1e-4,
            hint=f"{_X0}, then x_next = √ᾱ_next x̂_0 + √(1 − ᾱ_next − σ²) ε + σ · noise, "
            f"{sigma}; ᾱ_t = alpha_bar[t] and ᾱ_next = alpha_bar[t_next]",
            alternatives=_ddim_mistakes(x, eps, t, t_next, alpha_bar, eta, noise),
        )
    for eta in (0.0, 1.0):
        expected = diffusion.ddim_step(x, eps, 3, -1, alpha_bar, eta, noise)
        check.close(
            call(check, x, eps, 3, -1, alpha_bar, eta, noise),
            expected,
            f"the final step, t_next = −1 with η = {eta:g}, lands exactly on x̂_0",
            atol=1e-4,
            hint="t_next = −1 means x_0: use ᾱ_next = 1 there, so σ = 0 and the result is "
            "x̂_0; a common cause is alpha_bar[−1], which is ᾱ_{T−1}, nearly pure noise",
            alternatives=_ddim_mistakes(x, eps, 3, -1, alpha_bar, eta, noise),
        )
    expected = diffusion.ddpm_step(x, eps, 5, alpha_bar, noise)
    check.close(
        call(check, x, eps, 5, 4, alpha_bar, 1.0, noise),
        expected,
        "η = 1 over a single step t → t − 1 is exactly the DDPM step",
        atol=1e-4,
        hint=f"{sigma}: with η = 1 and t_next = t − 1 this is DDPM's √β̃_t",
    )
    x64, eps64, noise64 = x.double(), eps.double(), noise.double()
    expected = diffusion.ddim_step(x64, eps64, 8, 5, alpha_bar, 0.3, noise64)
    dtype_hint = "compute from the inputs' own tensors; don't create float32 tensors"
    check.close(
        call(check, x64, eps64, 8, 5, alpha_bar, 0.3, noise64),
        expected,
        "keeps dtype float64 and the device",
        atol=1e-10,
        hint=dtype_hint,
        dtype_hint=dtype_hint,
    )


# ------------------------------------------------------- Exercise 4.6: classifier-free guidance


@exercise("4.6", "classifier-free guidance", references=(diffusion.cfg_combine,))
def check_cfg_combine(check: Check) -> None:
    """Exercise 4.6: cfg_combine(eps_cond, eps_uncond, scale) -> ε̂ = ε_u + s (ε_c − ε_u)."""
    g, dev = seeded(46), check.device
    eps_cond, eps_uncond = _tensors(g, dev, 2, 2, 3, 4, 4)
    formula = "ε̂ = ε_u + s · (ε_c − ε_u): start from the unconditional prediction"
    for scale, what in [
        (1.0, "scale 1 gives the plain conditional prediction ε_c"),
        (0.0, "scale 0 gives the unconditional prediction ε_u"),
        (4.0, "scale 4 extrapolates past ε_c, away from ε_u"),
    ]:
        expected = diffusion.cfg_combine(eps_cond, eps_uncond, scale)
        mistakes = {
            f"ε_c + s · (ε_c − ε_u), which starts from the conditional prediction; {formula}": (
                eps_cond + scale * (eps_cond - eps_uncond)
            ),
            "the weights swapped: s on ε_u and (1 − s) on ε_c, where s goes on ε_c": (
                (1 - scale) * eps_cond + scale * eps_uncond
            ),
        }
        check.close(
            call(check, eps_cond, eps_uncond, scale),
            expected,
            what,
            hint=f"{formula}; the weights are s on ε_c and (1 − s) on ε_u",
            alternatives=mistakes,
        )
    c64, u64 = eps_cond.double(), eps_uncond.double()
    expected = diffusion.cfg_combine(c64, u64, 2.5)
    check.close(
        call(check, c64, u64, 2.5),
        expected,
        "keeps dtype float64 and the device",
        atol=1e-12,
    )
