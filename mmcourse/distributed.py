"""Training on several processes (chapter 11): DDP for every model, FSDP2 for the transformers.

torchrun starts N copies of the same command and tells each one who it is through the
environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT):

    torchrun --nproc_per_node=2 -m mmcourse.train judge               # one machine, 2 ranks
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d \\
             --rdzv-endpoint=HOST:29500 -m mmcourse.train ar --fsdp    # two machines, 16 ranks

Data parallelism: every rank holds the same model, draws its own share of the batch and
computes its gradients; an all-reduce averages them, so every rank takes the same step:

    g = 1/N Σ_r ∇L_r(θ)    with L_r the mean loss of rank r's b rows,

which is ∇ of the mean loss over all N·b rows: N ranks × batch b ≡ one process × batch N·b.

A recipe makes three changes, the same in every recipe:

    g = torch.Generator().manual_seed(distributed.rank_seed(seed))  # each rank its own draws
    batch = distributed.local_batch(batch)       # the recipe's batch, split over the ranks
    net = distributed.wrap(model)                # DDP (or FSDP2); forward goes through `net`

In one process (no torchrun) the three are the identity: rank_seed(seed) = seed,
local_batch(b) = b, wrap(model) = model, and the run is bit for bit what it always was.

DistributedDataParallel (`wrap`) broadcasts rank 0's weights when it is built and all-reduces
the gradients in buckets while backward is still running, through hooks that forward installs:
a loss computed by calling the bare model would train nothing together. FSDP2
(`wrap(model, fsdp=True)`, torch.distributed.fsdp.fully_shard) goes further: each rank keeps
only 1/N of every weight, all-gathers a block's weights just before its forward and backward
and reduce-scatters its gradients, so N ranks hold a model N times larger than one could.
`full_model` gathers a sharded model back into an ordinary one, whose checkpoint is the usual
file. `average_gradients` is the by-hand version of DDP's all-reduce, for the exercise.
"""

from __future__ import annotations

import copy
import os
import socket
import sys
import tempfile
import warnings
import weakref
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "TIMEOUT",
    "average_gradients",
    "barrier",
    "close",
    "full_model",
    "full_tensor",
    "gradient_gap",
    "init",
    "is_distributed",
    "is_main",
    "local_batch",
    "lost_contact",
    "per_rank",
    "rank",
    "rank_seed",
    "sum_over_ranks",
    "world_size",
    "wrap",
]

TIMEOUT = timedelta(minutes=10)  # how long a collective waits for a silent rank before failing
RANK_STEP = 0x9E3779B9  # ⌊2³²/φ⌋: rank r's batches are seeded seed + r · RANK_STEP
_MARKERS = ("gloo", "nccl", "NCCL", "Connection", "Timed out", "timed out", "peer")
_timeout = TIMEOUT  # the process group's, once `init` has set it
_UNSHARDED: weakref.WeakKeyDictionary[nn.Module, nn.Module] = weakref.WeakKeyDictionary()


# ----------------------------------------------------------------------------- the group


def init(timeout: timedelta | float | None = None) -> bool:
    """Join the process group torchrun describes in the environment; in one process (no RANK
    in the environment) do nothing. Returns whether this run is distributed (≥ 2 ranks).

    The backend is gloo for CPU tensors, plus NCCL for CUDA tensors where every rank of the
    machine has a GPU of its own (rank LOCAL_RANK then computes on GPU LOCAL_RANK). `timeout`
    (seconds or a timedelta, default TIMEOUT) bounds how long a collective waits for a rank
    that died or hangs: after it, the waiting ranks raise instead of hanging forever."""
    if "RANK" not in os.environ or dist.is_initialized():
        return is_distributed()
    global _timeout
    if isinstance(timeout, int | float):
        timeout = timedelta(seconds=timeout)
    _timeout = timeout or TIMEOUT
    backend = "gloo"
    per_machine = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", 1)))
    if torch.cuda.is_available() and per_machine <= torch.cuda.device_count():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend, timeout=_timeout)
    return is_distributed()


def close() -> None:
    """Leave the process group (the end of a torchrun command); nothing in one process."""
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    """This process's rank, 0 … world_size() − 1 (0 in one process)."""
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    """The number of processes training together (1 without torchrun)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def is_distributed() -> bool:
    """Whether this run trains on ≥ 2 ranks (torchrun with one process is not distributed)."""
    return world_size() > 1


def is_main() -> bool:
    """Whether this is rank 0, the one that shows progress, prints and writes files."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank gets here (e.g. until rank 0 has written a file); nothing in one
    process."""
    if is_distributed():
        dist.barrier()


def lost_contact(err: BaseException, step: int) -> RuntimeError | None:
    """The error to raise when `err`, raised at training step `step`, is a collective that lost
    another rank (it crashed, was killed, or stayed silent past the timeout); None for any other
    error. torchrun's own summary then names the rank that failed first."""
    if not is_distributed() or not any(m in str(err) for m in _MARKERS):
        return None
    return RuntimeError(
        f"rank {rank()} of {world_size()} lost contact with another rank at training step "
        f"{step}: a rank crashed, was killed, or was silent for more than the "
        f"{_timeout.total_seconds():g} s timeout ({err})"
    )


# ------------------------------------------------------------------------------ the data


def rank_seed(seed: int) -> int:
    """The seed of this rank's batch draws, seed + rank · RANK_STEP. Rank 0 keeps `seed`, so a
    one-process run draws what it always drew; every other rank draws batches of its own, far
    from the small seeds a course uses (the CPU generator reads only the low 32 bits of a seed,
    so a step of 2³² would repeat rank 0's batches). The model's initialisation stays seeded by
    `seed` on every rank."""
    return seed + rank() * RANK_STEP


def local_batch(batch: int) -> int:
    """This rank's share of a global batch of `batch` rows: batch / world_size(). The global
    batch, hence the learning rate that suits it, stays the recipe's."""
    n = world_size()
    if batch % n:
        raise ValueError(f"the batch of {batch} rows does not split evenly over {n} ranks")
    return batch // n


def per_rank(obj: object) -> list:
    """[obj of rank 0, obj of rank 1, …] on every rank (pickled objects, all-gathered);
    [obj] in one process."""
    if not is_distributed():
        return [obj]
    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """Σ_r x_r over the ranks (a copy, e.g. the number of real targets in the whole global
    batch, which a per-token mean must divide by); x itself in one process."""
    if not is_distributed():
        return x
    total = x.clone()
    dist.all_reduce(total)
    return total


# ----------------------------------------------------------------------------- the model


def _shard(model: nn.Module) -> nn.Module:
    """FSDP2: every transformer block (each module of a ModuleList named `blocks`) its own
    unit, the rest (embeddings, final norm) the root's. Rank 0's initial weights first go to
    every rank, as DDP does, so a rank seeded differently cannot train another model."""
    for p in model.parameters():
        dist.broadcast(p.data, src=0)
    # A block also returns its attention's K/V (views, for a KV cache); training never
    # changes them in place, which is what FSDP2 warns of.
    warnings.filterwarnings("ignore", "FSDP2-wrapped module .* returned a view tensor")
    _UNSHARDED[model] = copy.deepcopy(model).to("meta")  # the layout, without memory
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] == "blocks":
            for block in module:
                fully_shard(block)
    return fully_shard(model)


def wrap(model: nn.Module, *, fsdp: bool = False, method: str = "forward") -> Callable[..., object]:
    """What a recipe calls instead of the model while it trains: DDP around `model` (FSDP2 when
    `fsdp`, sharding it in place); in one process the model itself (or its `method`), unchanged.

    method: the method that computes the training loss when it is not forward (CLIP's
    `loss`, a VQ-VAE's `_losses`): DDP's hooks run in forward, so the wrapper's forward calls
    model.<method>. Build the optimizer after wrapping (FSDP2 replaces the parameters by their
    shards)."""
    if fsdp and method != "forward":
        raise ValueError(f"FSDP2 wraps a model's forward; got method={method!r}")
    if not is_distributed():
        return model if method == "forward" else getattr(model, method)
    if fsdp:
        return _shard(model)
    module = model if method == "forward" else _Method(model, method)
    dev = next(model.parameters()).device
    return DistributedDataParallel(module, device_ids=[dev.index] if dev.type == "cuda" else None)


class _Method(nn.Module):
    """`model.<method>` as a module's forward, for DDP to wrap."""

    def __init__(self, model: nn.Module, method: str) -> None:
        super().__init__()
        self.model, self.method = model, method

    def forward(self, *args: object, **kwargs: object) -> object:
        return getattr(self.model, self.method)(*args, **kwargs)


def full_tensor(p: torch.Tensor) -> torch.Tensor:
    """A parameter or gradient whole: an FSDP2 shard (a DTensor) all-gathered from every rank
    (a collective: every rank calls it), any other tensor itself."""
    return p.full_tensor() if isinstance(p, DTensor) else p


def full_model(model: nn.Module) -> nn.Module:
    """`model` as an ordinary module with all its weights: itself, unless FSDP2 sharded it; then
    a new unsharded copy filled with the full state dict gathered from every rank
    (get_model_state_dict with full_state_dict=True; a collective: every rank calls it). Its
    state dict, and so its checkpoint, is the one a one-process run writes."""
    if not isinstance(model, FSDPModule):
        return model
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    device = next(iter(state.values())).device
    plain = copy.deepcopy(_UNSHARDED[model]).to_empty(device=device)
    plain.load_state_dict(state)
    plain.train(model.training)
    for name, buffer in model.named_buffers():  # buffers are not sharded (nor all saved)
        plain.get_buffer(name).copy_(buffer)
    return plain


def average_gradients(model: nn.Module) -> None:
    """The teaching version of DDP's all-reduce: after backward, replace every gradient by its
    mean over the ranks, g ← 1/N Σ_r g_r, one all-reduce per parameter. DDP does the same in
    buckets, overlapped with backward; the course trains with DDP."""
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world_size()


# ------------------------------------------------------------------- the measured equality


def gradient_gap(
    build: Callable[[], nn.Module],
    loss: Callable[..., torch.Tensor],
    batch: Sequence[torch.Tensor],
    *,
    world: int = 2,
    fsdp: bool = False,
    lr: float = 0.1,
    seed: int = 0,
    timeout: float = 60,
) -> dict[str, float]:
    """The largest |difference| between one SGD step (rate `lr`) on `world` gloo ranks, each on
    its 1/world of `batch`, and the same step in this process on the whole batch:
    {"grad": max |Δ gradient|, "weight": max |Δ weight after the step|, "world_size"}.

    build(): the model, built after torch.manual_seed(seed) (this process's random state is
    left as it was); loss(net, *rows): the mean loss of the rows; batch: tensors whose first
    dimension (N·b rows) is split over the ranks. `build` and `loss` travel to the ranks by
    pickling: module-level functions, classes, or functools.partial of them (e.g.
    partial(GPT, config)). fsdp: FSDP2 instead of DDP."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build()
    expected = _one_step(model, model, loss, batch, lr)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rank0.pt"
        args = (build, loss, batch, lr, seed, fsdp, out, _free_port(), timeout, world)
        mp.spawn(_rank_step, args=args, nprocs=world, join=True)
        got = torch.load(out, weights_only=True)
    gap = {
        key: max((got[key][n] - v).abs().max().item() for n, v in expected[key].items())
        for key in ("grad", "weight")
    }
    return gap | {"world_size": world}


def _one_step(
    model: nn.Module,
    net: Callable[..., object],
    loss: Callable[..., torch.Tensor],
    batch: Sequence[torch.Tensor],
    lr: float,
) -> dict[str, dict[str, torch.Tensor]]:
    """Gradients and weights (whole) after one SGD step of loss(net, *batch) on `model`."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss(net, *batch).backward()
    grads = {n: full_tensor(p.grad).detach().clone() for n, p in model.named_parameters()}
    opt.step()
    weights = {n: full_tensor(p).detach().clone() for n, p in model.named_parameters()}
    return {"grad": grads, "weight": weights}


def _rank_step(
    r: int,
    build: Callable[[], nn.Module],
    loss: Callable[..., torch.Tensor],
    batch: Sequence[torch.Tensor],
    lr: float,
    seed: int,
    fsdp: bool,
    out: Path,
    port: int,
    timeout: float,
    world: int,
) -> None:
    """One rank of `gradient_gap`: its rows of the batch, one step, rank 0 writes the result.
    The rank then leaves at once (os._exit): torch's interpreter teardown after gloo can abort
    or hang in its worker threads (pytorch/pytorch#190489)."""
    os.environ |= {"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(world),
                   "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": str(port)}  # fmt: skip
    torch.set_num_threads(1)
    init(timeout)
    try:
        torch.manual_seed(seed)
        model = build()
        net = wrap(model, fsdp=fsdp)  # FSDP2 shards the model in place: the optimizer follows
        rows = [x.chunk(world)[r] for x in batch]
        result = _one_step(model, net, loss, rows, lr)
        if is_main():
            torch.save(result, out)
    finally:
        close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
