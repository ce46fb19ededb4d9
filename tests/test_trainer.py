"""The trainer's own mechanics, on a linear model small enough to follow by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mmcourse import trainer
from mmcourse.trainer import EMA, Resume, TrainResult, adamw_cosine, adamw_one_cycle, fit


def _model() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(3, 1)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g)


def _sgd(model: nn.Module, lr: float = 0.1) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=lr)


def test_fit_steps_like_the_hand_written_loop_and_reads_the_losses_back():
    x, y = _data()
    by_hand, model = _model(), _model()
    opt = _sgd(by_hand)
    expected = []
    for _ in range(5):
        loss = (by_hand(x) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        expected.append(loss.item())
    run = fit(
        model,
        lambda step: (model(x) - y).pow(2).mean(),
        steps=5,
        optimizer=_sgd(model),
        progress=False,
    )
    assert isinstance(run, TrainResult) and run.model is model and not model.training
    assert run.losses == expected and all(isinstance(v, float) for v in run.losses)
    assert run.seconds >= 0 and run.history is None
    assert torch.equal(model.weight, by_hand.weight) and torch.equal(model.bias, by_hand.bias)
    assert run._replace(history={"a": [1.0]}).history == {"a": [1.0]}


def test_the_model_trains_in_train_mode():
    model = nn.Sequential(nn.Linear(3, 1), nn.Dropout(0.5))
    model.eval()
    modes = []

    def step_loss(step: int) -> torch.Tensor:
        modes.append(model.training)
        return model(torch.ones(2, 3)).sum()

    fit(model, step_loss, steps=2, optimizer=_sgd(model), progress=False)
    assert modes == [True, True] and not model.training


def test_clip_caps_the_gradient_norm_before_the_step():
    x, y = _data()
    model, seen = _model(), []

    class Spy(torch.optim.SGD):
        def step(self, closure=None):
            seen.append(torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item())
            return super().step(closure)

    def step_loss(step: int) -> torch.Tensor:
        return 100 * (model(x) - y).pow(2).mean()  # gradients far above the cap

    fit(
        model,
        step_loss,
        steps=3,
        optimizer=Spy(model.parameters(), lr=1e-3),
        clip=0.5,
        progress=False,
    )
    assert seen == pytest.approx([0.5] * 3, rel=1e-5)
    fit(model, step_loss, steps=1, optimizer=Spy(model.parameters(), lr=1e-3), progress=False)
    assert seen[-1] > 1


def test_schedule_steps_after_every_optimizer_step_and_callbacks_see_each_step():
    model = _model()
    opt = _sgd(model, lr=1.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5**i)
    lrs, calls = [], []

    def step_loss(step: int) -> torch.Tensor:
        lrs.append(opt.param_groups[0]["lr"])  # the lr this step uses
        return model(torch.ones(1, 3)).sum() * 0 + step

    def callback(step: int, loss: torch.Tensor) -> None:
        calls.append((step, loss.item(), opt.param_groups[0]["lr"]))

    run = fit(
        model,
        step_loss,
        steps=4,
        optimizer=opt,
        schedule=schedule,
        callbacks=[callback, lambda step, loss: calls.append(step)],
        progress=False,
    )
    assert lrs == [1.0, 0.5, 0.25, 0.125]
    assert calls == [(0, 0.0, 0.5), 0, (1, 1.0, 0.25), 1, (2, 2.0, 0.125), 2, (3, 3.0, 0.0625), 3]
    assert run.losses == [0.0, 1.0, 2.0, 3.0]


def test_a_recorded_pair_is_kept_per_step_and_the_first_part_is_minimised():
    x, y = _data()
    model = _model()

    def step_loss(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        loss = (model(x) - y).pow(2).mean()
        return loss, torch.stack([loss, 2 * loss])

    run = fit(model, step_loss, steps=3, optimizer=_sgd(model), progress=False)
    assert len(run.losses) == 3 and all(b == 2 * a for a, b in run.losses)
    assert run.losses[-1][0] < run.losses[0][0]


def test_micro_batches_accumulate_gradients_and_their_sum_is_recorded():
    x, y = _data()
    whole, parts = _model(), _model()
    run_whole = fit(
        whole,
        lambda step: (whole(x) - y).pow(2).sum(),
        steps=2,
        optimizer=_sgd(whole, 0.01),
        progress=False,
    )
    order = []

    def step_loss(step: int):
        for rows in (slice(0, 3), slice(3, 8)):
            order.append(parts.weight.grad is None)  # None only before the first part
            yield (parts(x[rows]) - y[rows]).pow(2).sum()

    run_parts = fit(parts, step_loss, steps=2, optimizer=_sgd(parts, 0.01), progress=False)
    assert order == [True, False, True, False]
    assert torch.allclose(parts.weight, whole.weight)
    assert run_parts.losses == pytest.approx(run_whole.losses)
    with pytest.raises(ValueError, match="yielded no loss"):
        fit(parts, lambda step: iter(()), steps=1, optimizer=_sgd(parts), progress=False)


def test_progress_shows_one_named_bar_when_asked(capsys):
    model = _model()

    def step_loss(step: int) -> torch.Tensor:
        return model(torch.ones(1, 3)).sum()

    for shown in (True, False):
        run = fit(model, step_loss, steps=3, optimizer=_sgd(model), progress=shown, desc="spy")
        assert len(run.losses) == 3
        assert ("spy" in capsys.readouterr().err) == shown


def test_adamw_cosine_warms_up_then_decays_to_the_floor():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    opt, schedule = adamw_cosine(model, lr=1.0, steps=100)
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    assert [p.dim() for p in decayed["params"]] == [2] and len(plain["params"]) == 3
    assert opt.defaults["betas"] == (0.9, 0.95)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert lrs[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])  # 5 % warm-up, then the cosine
    for i in (4, 50, 99):
        assert lrs[i] == pytest.approx(0.05 + 0.475 * (1 + math.cos(math.pi * i / 100)))
    assert min(lrs) > 0.05 and lrs[-1] == pytest.approx(0.05, abs=1e-3)
    opt, schedule = adamw_cosine(model, 1.0, 100, weight_decay=0.0, betas=(0.9, 0.999), final=0.0)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 0.0
    assert schedule.lr_lambdas[0](50) == pytest.approx(0.5)
    _, schedule = adamw_cosine(model, 1.0, 1000, final=1.0, warmup=10)  # chapter 11's runs
    assert [schedule.lr_lambdas[0](i) for i in (0, 4, 9, 500, 999)] == pytest.approx(
        [0.1, 0.5, 1.0, 1.0, 1.0]
    )


def test_adamw_one_cycle_covers_the_trainable_parameters_only():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    model[0].requires_grad_(False)
    opt, schedule = adamw_one_cycle(model, lr=1.0, steps=10, weight_decay=0.1)
    assert opt.param_groups[0]["params"] == list(model[1].parameters())
    assert opt.param_groups[0]["weight_decay"] == 0.1
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])  # the lr this step uses
        opt.step()
        schedule.step()
    assert lrs[0] == pytest.approx(1 / 25) and max(lrs) == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(1 / 25e4)


def test_ema_averages_the_weights_after_every_step_with_a_short_memory_at_the_start():
    x, y = _data()
    model, by_hand = _model(), _model()
    average = [p.detach().clone() for p in by_hand.parameters()]
    opt_hand = _sgd(by_hand)
    for step in range(4):
        opt_hand.zero_grad()
        (by_hand(x) - y).pow(2).mean().backward()
        opt_hand.step()
        d = min(0.9, (1 + step) / (10 + step))  # 0.1, 0.18…, 0.25, 0.3…: below 0.9 throughout
        average = [d * a + (1 - d) * p.detach() for a, p in zip(average, by_hand.parameters())]
    ema = EMA(model, decay=0.9)
    run = fit(
        model,
        lambda step: (model(x) - y).pow(2).mean(),
        steps=4,
        optimizer=_sgd(model),
        callbacks=[ema],
        progress=False,
    )
    assert run.model is model and ema.model is not model
    assert not ema.model.training and not any(p.requires_grad for p in ema.model.parameters())
    for got, want in zip(ema.model.parameters(), average):
        torch.testing.assert_close(got, want)
    late = _model()
    ema_late = EMA(late, decay=0.5)  # past the warm-up, d is the decay itself
    before = [p.clone() for p in ema_late.model.parameters()]
    with torch.no_grad():
        for p in late.parameters():
            p.fill_(1.0)
    ema_late(100)
    for got, old in zip(ema_late.model.parameters(), before):
        torch.testing.assert_close(got, 0.5 * old + 0.5)


def _resumable_run(state, stop: int | None = None, steps: int = 7):
    """AdamW with a cosine schedule, an EMA and batches drawn by a generator; `stop` raises
    KeyboardInterrupt at that step, as a killed run would stop."""
    model = _model()
    g = torch.Generator().manual_seed(5)
    opt, schedule = adamw_cosine(model, 1e-2, steps)
    ema = EMA(model, 0.9)

    def step_loss(step: int) -> torch.Tensor:
        if step == stop:
            raise KeyboardInterrupt
        return model(torch.randn(8, 3, generator=g)).pow(2).mean()

    run = fit(model, step_loss, steps=steps, optimizer=opt, schedule=schedule, callbacks=[ema],
              generators=[g], resume=state, progress=False)  # fmt: skip
    return run, ema


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_stopped_run_resumes_from_its_state_bit_for_bit(tmp_path):
    straight, ema = _resumable_run(None)
    state = Resume(tmp_path / "run.pt", every=3)
    with pytest.raises(KeyboardInterrupt):
        _resumable_run(state, stop=5)
    saved = torch.load(state.path, weights_only=True)
    assert saved["step"] == 3 and len(saved["generators"]) == 1  # written after steps 0, 1, 2
    resumed, ema_resumed = _resumable_run(state)
    assert resumed.losses == straight.losses
    assert _same(resumed.model, straight.model) and _same(ema_resumed.model, ema.model)
    assert torch.load(state.path, weights_only=True)["step"] == 7  # the end is kept too
    again, _ = _resumable_run(state)  # a finished state: nothing left to train
    assert again.losses == straight.losses and _same(again.model, straight.model)


def test_resuming_gives_every_fit_inside_it_a_state_file_in_call_order(tmp_path):
    with trainer.resuming(tmp_path / "runs", every=2):
        first, _ = _resumable_run(None, steps=3)
        _resumable_run(None, steps=4)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["fit-0.pt", "fit-1.pt"]
    assert torch.load(tmp_path / "runs" / "fit-0.pt", weights_only=True)["step"] == 3
    with trainer.resuming(tmp_path / "runs"):
        again, _ = _resumable_run(None, steps=3)
    assert again.losses == first.losses and _same(again.model, first.model)
    state = torch.load(tmp_path / "runs" / "fit-0.pt", weights_only=True)
    state["generators"] *= 2  # as if written by 2 ranks
    torch.save(state, tmp_path / "two.pt")
    with pytest.raises(ValueError, match="holds the state of 2 ranks; resume it on as many, got 1"):
        _resumable_run(Resume(tmp_path / "two.pt"), steps=3)


def test_public_surface():
    assert trainer.__all__ == [
        "EMA", "Resume", "TrainResult", "adamw_cosine", "adamw_one_cycle", "fit", "resuming"
    ]  # fmt: skip
    assert TrainResult._fields == ("model", "losses", "seconds", "history")
