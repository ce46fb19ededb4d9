"""Chapter 11's engine on 2 gloo processes on the CPU: DDP and FSDP2 take the step one process
takes on the whole batch, a real recipe trains under torchrun and its file loads as usual, a
sharded run resumes, and a lost rank ends in a clear error instead of a hang.

Run as a script, this file is the job the tests start on each rank (python this.py JOB DIR).
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmcourse import ar, distributed, train
from mmcourse.data import all_captions
from mmcourse.recipes import ar as ar_recipe
from mmcourse.recipes import vit as vit_recipe
from mmcourse.trainer import Resume, fit
from mmcourse.transformer import GPT, GPTConfig

TOLERANCE = 1e-5  # the chapter's bar: 2 ranks × b ≡ 1 × 2b to float reassociation
TINY = GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, d_model=16, dropout=0.0)
ROOT = Path(__file__).resolve().parents[1]


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.LayerNorm(8), nn.Linear(8, 1))


def _mse(net, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (net(x) - y).pow(2).mean()


def _gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(TINY)


def _next_token(net, idx: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(net(idx[:, :-1]).transpose(1, 2), idx[:, 1:])


def _batch(rows: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(rows, 4, generator=g), torch.randn(rows, 1, generator=g)


# ------------------------------------------------------------------ the measured equality


def test_ddp_on_2_ranks_takes_the_step_of_one_process_on_the_whole_batch():
    gap = distributed.gradient_gap(_mlp, _mse, _batch())
    assert gap["world_size"] == 2
    assert gap["grad"] <= TOLERANCE and gap["weight"] <= TOLERANCE, gap


def test_fsdp2_shards_a_gpt_and_takes_the_same_step():
    idx = torch.randint(TINY.vocab_size, (8, 12), generator=torch.Generator().manual_seed(2))
    gap = distributed.gradient_gap(functools.partial(GPT, TINY), _next_token, (idx,), fsdp=True)
    assert gap["grad"] <= TOLERANCE and gap["weight"] <= TOLERANCE, gap


# ------------------------------------------------------------------------ one process


def test_in_one_process_every_piece_is_the_identity(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert distributed.init() is False
    assert (distributed.rank(), distributed.world_size()) == (0, 1)
    assert distributed.is_main() and not distributed.is_distributed()
    model = _mlp()
    assert distributed.wrap(model) is model and distributed.wrap(model, fsdp=True) is model
    assert distributed.wrap(model, method="extra_repr") == model.extra_repr
    assert distributed.full_model(model) is model
    assert distributed.rank_seed(7) == 7 and distributed.local_batch(64) == 64
    with monkeypatch.context() as m:
        m.setattr(distributed, "rank", lambda: 1)
        other = distributed.rank_seed(7)

    def draw(seed: int) -> torch.Tensor:
        return torch.randint(2**31, (4,), generator=torch.Generator().manual_seed(seed))

    assert not torch.equal(draw(7), draw(other))  # rank 1 draws batches of its own
    x = torch.ones(3)
    assert distributed.sum_over_ranks(x) is x and distributed.per_rank("a") == ["a"]
    assert distributed.full_tensor(x) is x
    assert distributed.lost_contact(RuntimeError("Connection reset by peer"), 3) is None
    distributed.barrier()
    distributed.close()


def test_clear_errors_for_an_uneven_batch_and_fsdp_where_it_is_not_offered(monkeypatch):
    with pytest.raises(ValueError, match="FSDP2 wraps a model's forward; got method='loss'"):
        distributed.wrap(_mlp(), fsdp=True, method="loss")
    with pytest.raises(ValueError, match=r"FSDP2 is offered for the transformer models \(ar, "):
        train.main(["judge", "--fsdp"])
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    assert distributed.local_batch(63) == 21
    with pytest.raises(ValueError, match="batch of 64 rows does not split evenly over 3 ranks"):
        distributed.local_batch(64)


# ----------------------------------------------------------------------- under torchrun


def _torchrun(job: str, tmp_path: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               "--standalone", "--tee=3", __file__, job, str(tmp_path)]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_a_recipe_trains_on_2_ranks_and_its_checkpoint_loads_as_usual(tmp_path):
    done = _torchrun("recipes", tmp_path)
    vit = [torch.load(tmp_path / f"vit-rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(torch.equal(vit[0][k], vit[1][k]) for k in vit[0])  # DDP: one model
    losses = [torch.load(tmp_path / f"vit-losses{r}.pt", weights_only=True) for r in (0, 1)]
    assert len(losses[0]) == 23 and not torch.equal(*losses)  # ranks draw their own batches
    model = vit_recipe.WEIGHTS["vit"].load(tmp_path / "vit.pt", device="cpu")
    assert all(torch.equal(v, vit[0][k]) for k, v in model.state_dict().items())
    gpt = ar_recipe.WEIGHTS["ar"].load(tmp_path / "ar.pt", device="cpu")  # FSDP2, gathered
    assert gpt.config == ar.default_config(n_layer=1, d_model=16, n_head=2).__dict__
    assert (tmp_path / "resumed-equal").read_text() == "True"  # an FSDP2 run, stopped, resumed
    assert float((tmp_path / "by-hand-gap").read_text()) <= 1e-7  # the exercise's all-reduce
    bars = [line for line in done.stderr.splitlines() if "train: 100%" in line]
    assert bars and all(line.startswith("[default0]") for line in bars)  # rank 0's bar only


@pytest.mark.parametrize("how", ["killed", "hung"])
def test_a_lost_rank_ends_in_a_clear_error_not_a_hang(tmp_path, how):
    env = os.environ | {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
                        "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1",
                        "PYTHONPATH": str(ROOT)}  # fmt: skip
    start = time.perf_counter()
    ranks = [subprocess.Popen([sys.executable, __file__, how, str(tmp_path)],
                              env=env | {"RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in (0, 1)]  # fmt: skip
    try:
        _, err = ranks[0].communicate(timeout=60)
    finally:
        for rank in ranks:
            rank.kill()
    assert ranks[0].returncode != 0 and time.perf_counter() - start < 60
    assert "rank 0 of 2 lost contact with another rank at training step 3" in err, err[-2000:]
    assert "the 3 s timeout" in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -------------------------------------------------------------- the jobs, one per rank


def _recipes_job(out: Path) -> None:
    """A real recipe with DDP (the digits ViT, one epoch), the AR recipe with FSDP2 (its full
    model saved by rank 0 in the shipped format), and an FSDP2 run stopped and resumed."""
    rank = distributed.rank()
    vit = vit_recipe.train_vit_digits(epochs=1, batch=64, dim=16, depth=1, heads=2, device="cpu")
    torch.save(vit.model.state_dict(), out / f"vit-rank{rank}.pt")
    torch.save(torch.tensor(vit.losses), out / f"vit-losses{rank}.pt")  # of the rank's own rows
    if distributed.is_main():
        vit_recipe.WEIGHTS["vit"].save(vit.model, path=out / "vit.pt")
    codes = torch.randint(ar.CODES, (16, 8, 8), generator=torch.Generator().manual_seed(0))
    seqs = ar.make_sequences(ar.encode_captions(all_captions()[:16]), codes)
    config = ar.default_config(n_layer=1, d_model=16, n_head=2)
    run = ar_recipe.train_ar(seqs, config=config, steps=4, batch=4, device="cpu", fsdp=True)
    if distributed.is_main():
        ar_recipe.WEIGHTS["ar"].save(run.model, path=out / "ar.pt")
    (out / "resumed-equal").write_text(str(_resumes(out)))
    (out / "by-hand-gap").write_text(str(_by_hand_gap()))


def _by_hand_gap() -> float:
    """The largest |difference| between DDP's averaged gradients and `average_gradients`'."""
    x, y = (v.chunk(2)[distributed.rank()] for v in _batch())
    ddp, by_hand = _mlp(), _mlp()
    net = distributed.wrap(ddp)  # kept: a DDP object dropped before backward averages nothing
    _mse(net, x, y).backward()
    _mse(by_hand, x, y).backward()
    distributed.average_gradients(by_hand)
    pairs = zip(ddp.parameters(), by_hand.parameters())
    return max((a.grad - b.grad).abs().max().item() for a, b in pairs)


def _fsdp_run(resume: Resume | None, stop: int | None = None) -> tuple[dict, list]:
    """A tiny GPT sharded by FSDP2, 4 AdamW steps with clipping; stopped at `stop` if given."""
    model = _gpt()
    net = distributed.wrap(model, fsdp=True)
    g = torch.Generator().manual_seed(distributed.rank_seed(5))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def step_loss(step: int) -> torch.Tensor:
        if step == stop:
            raise KeyboardInterrupt
        return _next_token(net, torch.randint(TINY.vocab_size, (4, 12), generator=g))

    run = fit(model, step_loss, steps=4, optimizer=opt, clip=1.0, progress=False,
              generators=[g], resume=resume)  # fmt: skip
    return distributed.full_model(run.model).state_dict(), run.losses


def _resumes(out: Path) -> bool:
    """Stopped at step 3 (its state written after step 2) and run again: the weights and
    losses of the run that went straight through."""
    weights, losses = _fsdp_run(None)
    resume = Resume(out / "state.pt", every=2)
    try:
        _fsdp_run(resume, stop=3)
    except KeyboardInterrupt:
        pass
    again, losses_again = _fsdp_run(resume)
    return losses_again == losses and all(torch.equal(again[k], v) for k, v in weights.items())


def _lost_job(how: str) -> None:
    """Rank 1 dies (SIGKILL) or hangs at step 3; rank 0 must raise within the 3 s timeout."""
    distributed.init(timeout=3)
    model = _mlp()
    net = distributed.wrap(model)
    x, y = _batch(4)

    def step_loss(step: int) -> torch.Tensor:
        if step == 3 and distributed.rank() == 1:
            if how == "killed":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(120)
        return _mse(net, x, y)

    fit(model, step_loss, steps=6, optimizer=torch.optim.SGD(model.parameters()), progress=False)


if __name__ == "__main__":
    job, where = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    if job == "recipes":
        distributed.init(timeout=60)
        try:
            _recipes_job(where)
        finally:
            distributed.close()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # past torch's teardown race after gloo (see distributed._rank_step)
    else:
        _lost_job(job)
