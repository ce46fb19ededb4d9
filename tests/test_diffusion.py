"""mmcourse.diffusion: schedules, the forward process, exact DDPM/DDIM steps (checked against
what they must invert), the strided DDIM schedule, classifier-free guidance in one batched
forward, clear errors; mmcourse.recipes.diffusion: deterministic training and the shipped
models meeting the bar."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmcourse import checkpoints, diffusion, recipes
from mmcourse.recipes import diffusion as diffusion_recipe
from mmcourse.unet import NULL, UNet

shapes = st.lists(st.integers(0, 5), min_size=0, max_size=5).map(tuple)


# Small models run fastest on one thread, and stay fast when other jobs load the CPU.
pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(b: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 8, 8, generator=g), torch.randn(b, 3, 8, 8, generator=g)


# --- schedules and the forward process ---------------------------------------------------------


@pytest.mark.parametrize("schedule", [diffusion.linear_schedule, diffusion.cosine_schedule])
def test_schedules_fall_from_one_towards_zero(schedule):
    alpha_bar = schedule(1000)
    assert alpha_bar.shape == (1000,) and alpha_bar.dtype == torch.float64
    assert (alpha_bar[1:] < alpha_bar[:-1]).all()
    assert alpha_bar[0] > 0.999 and alpha_bar[-1] < 1e-3
    snr = diffusion.snr(alpha_bar)
    assert (snr[1:] < snr[:-1]).all()


def test_linear_schedule_matches_ddpm():
    alpha_bar = diffusion.linear_schedule(1000)
    betas = 1 - alpha_bar / torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    torch.testing.assert_close(betas[[0, -1]], torch.tensor([1e-4, 0.02], dtype=torch.float64))


def test_q_sample_has_the_closed_form_statistics():
    alpha_bar = diffusion.cosine_schedule()
    x0 = torch.full((20_000, 1, 1, 1), 0.7)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    t = torch.full((len(x0),), 400)
    x_t = diffusion.q_sample(x0, t, alpha_bar, eps)
    a = alpha_bar[400].item()
    assert abs(x_t.mean().item() - a**0.5 * 0.7) < 0.02
    assert abs(x_t.var().item() - (1 - a)) < 0.03


# --- reverse steps -----------------------------------------------------------------------------


@pytest.mark.parametrize("t", [0, 1, 500, 999])
def test_ddim_with_the_true_noise_retraces_the_forward_process(t):
    """η = 0 and the true ε: every step lands on q_sample(x0, t_next, ε), the last on x0."""
    alpha_bar = diffusion.cosine_schedule()
    x0, eps = (v.double() for v in _batch())  # ᾱ_999 ≈ 1e-5: x̂_0 needs float64
    x_t = diffusion.q_sample(x0, torch.full((4,), t), alpha_bar, eps)
    for t_next in sorted({-1, t // 2 - 1, t - 1}):
        if t_next >= t:
            continue
        got = diffusion.ddim_step(x_t, eps, t, t_next, alpha_bar, 0.0, torch.zeros_like(x0))
        want = (
            x0 if t_next < 0 else diffusion.q_sample(x0, torch.full((4,), t_next), alpha_bar, eps)
        )
        torch.testing.assert_close(got, want)


def test_ddpm_last_step_returns_x0_without_noise():
    alpha_bar = diffusion.linear_schedule()
    x0, eps = _batch()
    x_t = diffusion.q_sample(x0, torch.zeros(4, dtype=torch.long), alpha_bar, eps)
    got = diffusion.ddpm_step(x_t, eps, 0, alpha_bar, 100 * torch.ones_like(x0))
    torch.testing.assert_close(got, x0, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("t", [1, 37, 998])
def test_ddim_eta_one_single_step_is_ddpm(t):
    alpha_bar = diffusion.cosine_schedule().float()
    x, eps = _batch()
    noise = torch.randn_like(x)
    torch.testing.assert_close(
        diffusion.ddim_step(x, eps, t, t - 1, alpha_bar, 1.0, noise),
        diffusion.ddpm_step(x, eps, t, alpha_bar, noise),
        atol=1e-4,
        rtol=1e-4,
    )


def test_ddpm_posterior_matches_bayes_on_scalars():
    """μ̃ and β̃ against the Gaussian product q(x_{t−1}|x_0) q(x_t|x_{t−1}), in float64."""
    alpha_bar = diffusion.linear_schedule(50, 0.01, 0.2)
    t, x0, x_t = 20, torch.tensor(0.3, dtype=torch.float64), torch.tensor(-0.5, dtype=torch.float64)
    a_t, a_prev = alpha_bar[t], alpha_bar[t - 1]
    alpha = a_t / a_prev
    # prior N(√ᾱ_{t−1} x0, 1 − ᾱ_{t−1}) times likelihood N(x_t; √α_t x, 1 − α_t)
    precision = 1 / (1 - a_prev) + alpha / (1 - alpha)
    mean = (a_prev.sqrt() * x0 / (1 - a_prev) + alpha.sqrt() * x_t / (1 - alpha)) / precision
    eps = (x_t - a_t.sqrt() * x0) / (1 - a_t).sqrt()  # the ε that gives this x_t
    shape = (1, 1, 1, 1)
    got_mean = diffusion.ddpm_step(
        x_t.expand(shape), eps.expand(shape), t, alpha_bar, torch.zeros(shape, dtype=torch.float64)
    )
    got_std = (
        diffusion.ddpm_step(
            x_t.expand(shape),
            eps.expand(shape),
            t,
            alpha_bar,
            torch.ones(shape, dtype=torch.float64),
        )
        - got_mean
    )
    torch.testing.assert_close(got_mean.squeeze(), mean)
    torch.testing.assert_close(got_std.squeeze() ** 2, 1 / precision)


@settings(max_examples=60, deadline=None)
@given(T=st.integers(1, 1200), steps=st.integers(1, 1200))
def test_ddim_timesteps_chain_from_noise_to_x0(T, steps):
    if steps > T:
        with pytest.raises(ValueError, match="^steps must be ≤ T"):
            diffusion.ddim_timesteps(T, steps)
        return
    pairs = diffusion.ddim_timesteps(T, steps)
    assert len(pairs) == steps and pairs[0][0] == T - 1 and pairs[-1][1] == -1
    assert all(a[1] == b[0] for a, b in zip(pairs, pairs[1:]))
    assert all(t > t_next for t, t_next in pairs)


def test_cfg_combine_interpolates_and_extrapolates():
    cond, uncond = _batch()
    torch.testing.assert_close(diffusion.cfg_combine(cond, uncond, 0.0), uncond)
    torch.testing.assert_close(diffusion.cfg_combine(cond, uncond, 1.0), cond)
    torch.testing.assert_close(diffusion.cfg_combine(cond, uncond, 3.0), 3 * cond - 2 * uncond)


class _Counting(torch.nn.Module):
    """Records each forward's batch; its ε depends on x, t and the labels."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.5))
        self.batches: list[int] = []

    def forward(self, x, t, labels):
        self.batches.append(len(x))
        cond = (labels[:, 0] != NULL).to(x.dtype)[:, None, None, None]
        return self.w * x + t[:, None, None, None] / 1000 + cond


def test_guidance_uses_one_batched_forward():
    model, (x, _) = _Counting(), _batch()
    labels = torch.tensor([[0, 1, 2]] * 4)
    eps = diffusion.guided_eps(model, x, 10, labels, 3.0)
    assert model.batches == [8]
    t = torch.full((4,), 10)
    cond, uncond = model(x, t, labels), model(x, t, torch.full_like(labels, NULL))
    torch.testing.assert_close(eps, uncond + 3.0 * (cond - uncond))


def test_samplers_are_seeded_and_shaped():
    model = UNet(channels=(16, 32)).eval()
    torch.nn.init.normal_(model.conv_out.weight, std=0.01)
    labels = torch.tensor([[0, 1, 2], [3, 0, 4]])
    alpha_bar = diffusion.cosine_schedule(40)

    def ddim(seed):
        g = torch.Generator().manual_seed(seed)
        return diffusion.ddim_sample(model, labels, alpha_bar, steps=5, guidance=2.0, generator=g)

    assert ddim(0).shape == (2, 3, 32, 32)
    torch.testing.assert_close(ddim(0), ddim(0))
    assert not torch.allclose(ddim(0), ddim(1))
    g = torch.Generator().manual_seed(0)
    x = diffusion.ddpm_sample(model, labels, alpha_bar, generator=g, shape=(3, 16, 16))
    assert x.shape == (2, 3, 16, 16) and torch.isfinite(x).all()


# --- training ----------------------------------------------------------------------------------


def test_drop_labels():
    labels = torch.tensor([[0, 1, 2]] * 1000)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(diffusion.drop_labels(labels, 0.0, g), labels)
    assert (diffusion.drop_labels(labels, 1.0, g) == NULL).all()
    dropped = (diffusion.drop_labels(labels, 0.1, g) == NULL).all(dim=1).float().mean()
    assert 0.07 < dropped < 0.13


def test_training_is_deterministic_and_learns():
    x0, labels = diffusion_recipe.shapes_data(n=256, seed=3)

    def train():
        config = {"channels": (16, 32)}
        return diffusion_recipe.train_diffusion(
            x0, labels, config=config, steps=40, batch=32, progress=False, device="cpu"
        )

    a, b = train(), train()
    assert a.losses == b.losses
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)
    assert sum(a.losses[-10:]) < sum(a.losses[:10])


def test_latent_scale_gives_unit_std():
    z = 4.0 * torch.randn(64, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    scale = diffusion.latent_scale(z)
    assert abs(scale - 0.25) < 0.01 and abs((z * scale).std().item() - 1) < 1e-4


# --- input validation --------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(shape=shapes, which=st.sampled_from(["x0", "eps"]))
def test_q_sample_names_a_wrong_tensor(shape, which):
    args = {"x0": torch.zeros(2, 3, 4, 4), "eps": torch.zeros(2, 3, 4, 4)}
    if shape == (2, 3, 4, 4):
        return
    args[which] = torch.zeros(shape)
    # x0 may have any trailing shape (B, ...); eps is then held to x0's
    name = "x0" if which == "x0" and len(shape) == 0 else "eps"
    with pytest.raises(ValueError, match=f"^{name} must"):
        diffusion.q_sample(
            args["x0"], torch.zeros(2, dtype=torch.long), torch.rand(10) * 0.9 + 0.05, args["eps"]
        )


@settings(max_examples=40, deadline=None)
@given(t=st.integers(-5, 20))
def test_q_sample_names_t_out_of_range(t):
    x = torch.zeros(2, 3, 4, 4)
    alpha_bar = diffusion.linear_schedule(10)
    ts = torch.tensor([0, t])
    if 0 <= t < 10:
        diffusion.q_sample(x, ts, alpha_bar, x)
        return
    with pytest.raises(ValueError, match=r"^t must hold timesteps in \[0, 10\)"):
        diffusion.q_sample(x, ts, alpha_bar, x)


def test_q_sample_names_dtypes():
    x, alpha_bar = torch.zeros(2, 3, 4, 4), diffusion.linear_schedule(10)
    t = torch.zeros(2, dtype=torch.long)
    with pytest.raises(TypeError, match="^t must have dtype torch.int64"):
        diffusion.q_sample(x, t.float(), alpha_bar, x)
    with pytest.raises(TypeError, match="^x0 must be a floating-point"):
        diffusion.q_sample(x.long(), t, alpha_bar, x)
    with pytest.raises(TypeError, match="^alpha_bar must be a torch.Tensor"):
        diffusion.q_sample(x, t, [0.5] * 10, x)
    with pytest.raises(ValueError, match="^alpha_bar must be a non-empty"):
        diffusion.q_sample(x, t, torch.linspace(1, 0, 10), x)


@settings(max_examples=60, deadline=None)
@given(t=st.integers(-3, 12), t_next=st.integers(-3, 12), eta=st.floats(-1, 2))
def test_steps_name_bad_timesteps_and_eta(t, t_next, eta):
    x, alpha_bar = torch.zeros(1, 3, 4, 4), diffusion.linear_schedule(10)
    if not 0 <= t < 10:
        with pytest.raises(ValueError, match="^t must be in"):
            diffusion.ddpm_step(x, x, t, alpha_bar, x)
        with pytest.raises(ValueError, match="^t must be in"):
            diffusion.ddim_step(x, x, t, t_next, alpha_bar, 0.0, x)
        return
    diffusion.ddpm_step(x, x, t, alpha_bar, x)
    if not -1 <= t_next < 10:
        match = "^t_next must be in"
    elif t_next >= t:
        match = "^t_next must be below t"
    elif not 0 <= eta <= 1:
        match = r"^eta must be in \[0, 1\]"
    else:
        assert diffusion.ddim_step(x, x, t, t_next, alpha_bar, eta, x).shape == x.shape
        return
    with pytest.raises(ValueError, match=match):
        diffusion.ddim_step(x, x, t, t_next, alpha_bar, eta, x)


def test_steps_name_wrong_types_and_shapes():
    x, alpha_bar = torch.zeros(1, 3, 4, 4), diffusion.linear_schedule(10)
    with pytest.raises(TypeError, match="^t must be an int"):
        diffusion.ddpm_step(x, x, 2.0, alpha_bar, x)
    with pytest.raises(ValueError, match="^noise must have the shape of x"):
        diffusion.ddpm_step(x, x, 2, alpha_bar, x[:, :1])
    with pytest.raises(ValueError, match="^eps must have the shape of x"):
        diffusion.ddim_step(x, x[0], 2, 1, alpha_bar, 0.0, x)
    with pytest.raises(ValueError, match="^eps_uncond must have the shape"):
        diffusion.cfg_combine(x, x[:, :2], 2.0)
    with pytest.raises(TypeError, match="^eps_cond must be a floating-point"):
        diffusion.cfg_combine(x.long(), x, 2.0)
    with pytest.raises(ValueError, match=r"^labels must have shape \(B, 3\)"):
        diffusion.ddim_sample(UNet(channels=(8, 8)), torch.zeros(2, 2, dtype=torch.long), alpha_bar)


# --- the shipped models ------------------------------------------------------------------------


def test_missing_checkpoint_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m mmcourse.train diffusion"):
        diffusion_recipe.load_generator(path=tmp_path / "nope.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoints.CheckpointError, match="python -m mmcourse.train diffusion"):
        diffusion_recipe.load_generator(path=tmp_path / "bad.pt")


def test_shipped_model_meets_the_bar():
    """The bar (judge faithfulness ≥ 80 %) on every caption twice (180 samples), DDIM 50 at
    guidance 3, as the notebook and the benchmark measure it."""
    gen = diffusion_recipe.load_generator(device="cpu")
    labels = diffusion_recipe.caption_labels(2)
    scores, images = diffusion_recipe.faithfulness(
        gen, recipes.load("judge", device="cpu"), labels, guidance=3.0
    )
    assert images.shape == (180, 3, 32, 32)
    assert scores["all"] >= 0.80, scores


def test_shipped_latent_model_samples_faithfully():
    """The latent model, decoded by the tokenizer: every caption once, DDIM 20, guidance 3."""
    gen = diffusion_recipe.load_generator("diffusion_latent", device="cpu")
    assert gen.latent_scale is not None and gen.model.in_channels == 16
    tokenizer = recipes.load("tokenizer", device="cpu")
    scores, images = diffusion_recipe.faithfulness(
        gen,
        recipes.load("judge", device="cpu"),
        diffusion_recipe.caption_labels(1),
        steps=20,
        tokenizer=tokenizer,
    )
    assert images.shape == (90, 3, 32, 32)
    assert scores["all"] >= 0.80, scores


def test_the_generator_carries_the_schedule_and_the_latent_scale():
    pixel = diffusion_recipe.load_generator(device="cpu")
    assert pixel.latent_scale is None and torch.equal(pixel.alpha_bar, diffusion.linear_schedule())
    assert not pixel.model.training and pixel.model.in_channels == 3
    latent = diffusion_recipe.load_generator("diffusion_latent", device="cpu")
    _, config = diffusion_recipe.WEIGHTS["diffusion_latent"].load_with_config(device="cpu")
    assert latent.latent_scale == config["latent_scale"] and config["schedule"] == "linear"


def test_the_diffusion_targets_are_the_recipes_rebuilds():
    assert recipes.REBUILDS["diffusion"] is diffusion_recipe.rebuild
    assert recipes.REBUILDS["ddpm_samples"] is diffusion_recipe.rebuild_ddpm_samples
