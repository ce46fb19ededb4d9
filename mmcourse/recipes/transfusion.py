"""Chapter 08's recipe: Transfusion's latents, training run, evaluation and rebuild.

data      `course_latents`: Shapes images through the shipped tokenizer's encoder, scaled
          to unit standard deviation and cut into patches (cached under data/cache/)
training  `train_transfusion`: random caption → image / image → caption batches, the routed
          loss (`transfusion.routed_loss`), an EMA of the weights, on `trainer.fit`
measures  `evaluate` (judge on caption → image, exact captions on held-out images),
          `held_out_losses` (teacher-forced), `lambda_sweep` (the loss weight λ)
weights   WEIGHTS["transfusion"] is data/transfusion_shapes.pt (its config carries the
          latent scale: `load_with_scale`); `python -m mmcourse.train transfusion` runs
          `rebuild`
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mmcourse import _validate, diffusion, distributed
from mmcourse.bpe import course_bpe
from mmcourse.checkpoints import Weights, cached
from mmcourse.data import ShapesDataset, all_captions
from mmcourse.env import device as default_device
from mmcourse.env import one_thread, to_device
from mmcourse.recipes import judge as judge_recipe
from mmcourse.recipes import tokenizer as tokenizer_recipe
from mmcourse.trainer import EMA, TrainResult, adamw_cosine, fit
from mmcourse.transformer import GPTConfig
from mmcourse.transfusion import (
    DDIM_STEPS,
    GRID,
    GUIDANCE,
    LAMBDA,
    LATENT_DIM,
    N_PATCHES,
    PATCH_DIM,
    Batch,
    T,
    Transfusion,
    caption_images,
    generate_images,
    loss_routes,
    make_batch,
    noise_image_span,
    routed_loss,
    schedule,
    to_patches,
    transfusion_loss,
)
from mmcourse.vocab import Vocabulary, course_vocab


def _build(config: dict) -> Transfusion:
    config = dict(config)
    patch_dim = config.pop("patch_dim", PATCH_DIM)
    separate = config.pop("separate_mlp", False)
    return Transfusion(GPTConfig(**config), patch_dim=patch_dim, separate_mlp=separate)


WEIGHTS = {
    "transfusion": Weights(
        "transfusion_shapes.pt",
        Transfusion,
        command="python -m mmcourse.train transfusion",
        build=_build,
        half=True,
        extras=("latent_scale",),
    )
}
EMA_DECAY = 0.999  # sampling uses an exponential moving average of the weights (chapter 04)
TRAIN_STEPS = 3000  # the shipped run: chapter 07's steps ...
BATCH_SIZE = 104  # ... and its positions per step (≈ 2,730 vs 2,770, `positions_per_step`)
CAPTION_FIRST = 0.8  # share of caption → image sequences (the rest image → caption)
P_DROP = 0.1  # caption dropout of caption → image sequences (the null context of CFG)
HELD_OUT_SEED = 1
SWEEP_CONFIG = {"n_layer": 2, "n_head": 2, "d_model": 64}


def load_with_scale(
    path: Path | str | None = None, device: torch.device | str | None = None
) -> tuple[Transfusion, float]:
    """The shipped model (eval mode, on `device`, default the course's) and the latent scale
    its file carries, which its samples are decoded at."""
    model, config = WEIGHTS["transfusion"].load_with_config(path, device)
    return model, float(config["latent_scale"])


# ------------------------------------------------------------------------------------ data


@torch.no_grad()
def course_latents(n: int = 20_000, seed: int = 0) -> tuple[torch.Tensor, float]:
    """Shapes images of `seed` through the tokenizer's encoder, scaled → (latents (n, 16, 64),
    scale). Cached under data/cache/; the scale is always that of the training set (seed 0)."""
    n = _validate.positive_int("n", n)

    def make() -> torch.Tensor:
        tokenizer = tokenizer_recipe.WEIGHTS["tokenizer"].load(device="cpu")  # host: same cache
        return diffusion.encode_latents(tokenizer, ShapesDataset(n=n, seed=seed).images).cpu()

    def valid(z: object) -> bool:
        return isinstance(z, torch.Tensor) and z.shape == (n, LATENT_DIM, GRID, GRID)

    z = cached(f"transfusion_latents_{n}_{seed}.pt", make, valid)
    scale = diffusion.latent_scale(z) if (n, seed) == (20_000, 0) else course_latents()[1]
    return to_patches(z * scale), scale


# ------------------------------------------------------------------------------- training


def _draw(
    latents: torch.Tensor,
    captions: Sequence[str],
    words: dict[str, list[int]],
    batch_size: int,
    caption_first: float,
    vocab: Vocabulary,
    g: torch.Generator,
) -> tuple[Batch, torch.Tensor]:
    """One random training batch and its timesteps t (B,): each row caption → image with
    probability caption_first (caption dropped with P_DROP, t uniform) else image → caption
    (t = 0, a clean image)."""
    idx = torch.randint(len(latents), (batch_size,), generator=g)
    first = torch.rand(batch_size, generator=g) < caption_first
    drop = (torch.rand(batch_size, generator=g) < P_DROP) & first
    t = torch.randint(T, (batch_size,), generator=g).masked_fill(~first, 0)
    batch = make_batch(latents[idx], [words[captions[i]] for i in idx.tolist()], first, drop, vocab)
    return batch, t


def positions_per_step(batch_size: int, batches: int = 300, seed: int = 0) -> float:
    """Mean number of real (not padding) positions in a training batch of `batch_size`: the
    compute budget of one step, to set beside chapter 07's (same body, same cost per position)."""
    bpe = course_bpe()
    vocab = course_vocab(bpe)
    captions = all_captions()
    words = {c: bpe.encode(c) for c in captions}
    latents = torch.zeros(len(captions), N_PATCHES, 1)
    g = torch.Generator().manual_seed(seed)
    total = 0
    for _ in range(_validate.positive_int("batches", batches)):
        batch, _ = _draw(latents, captions, words, batch_size, CAPTION_FIRST, vocab, g)
        total += int(batch.valid.sum())
    return total / batches


def default_config(vocab: Vocabulary | None = None, **overrides: int | float) -> GPTConfig:
    """Chapter 07's shipped body (d_model 128, 4 layers, 4 heads, MLP ×3) over the text and
    special ids only; block size 96 (a training sequence is ≤ 30 positions; room for documents
    with two images in `generate_document`)."""
    vocab = vocab or course_vocab()
    base = {"vocab_size": vocab.image_offset, "block_size": 96, "n_layer": 4, "n_head": 4}
    return GPTConfig(**(base | {"d_model": 128, "mlp_ratio": 3, "dropout": 0.0} | overrides))


def train_transfusion(
    latents: torch.Tensor,
    captions: Sequence[str],
    *,
    config: GPTConfig | None = None,
    steps: int = 300,
    batch_size: int = 32,
    lam: float = LAMBDA,
    lr: float = 2e-3,
    ema_decay: float = EMA_DECAY,
    caption_first: float = CAPTION_FIRST,
    separate_mlp: bool = False,
    seed: int = 0,
    progress: bool = True,
    device: torch.device | str | None = None,
    fsdp: bool = False,
) -> TrainResult:
    """AdamW with warm-up and cosine decay (chapter 07's recipe) on random batches: each row
    caption → image with probability caption_first (caption dropped with P_DROP, image noised
    to a uniform t) else image → caption (clean image, t = 0); an EMA of the weights (decay
    ema_decay) is what comes back. separate_mlp: patches get their own MLP in every block.

    The model trains on `device` (default: the course's). Each batch is built and noised on the
    CPU, where its layout is known (the same draws on every device), and sent over without
    waiting for the GPU; the losses are read back once, at the end. Under torchrun each rank
    draws its share of the batch, with DDP, or FSDP2 when `fsdp` (see `mmcourse.distributed`);
    each rank's loss is its own rows' mean."""
    latents = _validate.tensor("latents", latents, shape=("N", N_PATCHES, None), floating=True)
    steps = _validate.positive_int("steps", steps)
    batch_size = _validate.positive_int("batch_size", batch_size)
    if len(captions) != len(latents):
        raise ValueError(f"captions must have {len(latents)} entries, got {len(captions)}")
    bpe = course_bpe()
    vocab = course_vocab(bpe)
    words = {c: bpe.encode(c) for c in dict.fromkeys(captions)}
    alpha_bar = schedule().float()
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(distributed.rank_seed(seed))
    batch_size = distributed.local_batch(batch_size)
    dev = torch.device(device) if device is not None else default_device()
    latents = latents.cpu()  # host: batches are assembled row by row on the CPU
    model = Transfusion(
        config or default_config(vocab), patch_dim=latents.shape[-1], separate_mlp=separate_mlp
    ).to(dev)
    ema = EMA(model, ema_decay)  # an ordinary copy, made before FSDP2 can shard the model
    net = distributed.wrap(model, fsdp=fsdp)  # DDP or FSDP2 under torchrun, else the model
    opt, lr_schedule = adamw_cosine(model, lr, steps)  # after wrap: FSDP2 shards the parameters

    def step_loss(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        batch, t = _draw(latents, captions, words, batch_size, caption_first, vocab, g)
        eps = torch.randn(batch.patches.shape, generator=g)
        x_t = noise_image_span(batch.patches, batch.diffuse, t, alpha_bar, eps)
        routes = loss_routes(batch)  # transfusion_loss's masks, resolved on the CPU
        on_cpu = (batch.ids, x_t, t, batch.image_id, eps)
        ids, x_t, t, image_id, eps = (to_device(v, dev) for v in on_cpu)
        logits, eps_pred = net(ids, x_t, t, image_id)
        loss = routed_loss(logits, eps_pred, eps, routes, lam, dev)
        return loss.total, torch.stack([loss.ce, loss.mse])  # (ce, mse) recorded per step

    run = fit(
        model,
        step_loss,
        steps=steps,
        optimizer=opt,
        schedule=lr_schedule,
        clip=1.0,
        callbacks=[ema],
        progress=progress,
        generators=[g],
    )
    return run._replace(model=ema.model, losses=[tuple(row) for row in run.losses])


# ------------------------------------------------------------------------------ evaluation


def held_out(n: int = 500) -> tuple[torch.Tensor, list[str]]:
    """Held-out Shapes (seed 1): scaled latents (n, 16, 64) and captions."""
    latents, _ = course_latents(n, HELD_OUT_SEED)
    return latents, ShapesDataset(n=n, seed=HELD_OUT_SEED).captions


def evaluate(
    model: Transfusion,
    *,
    per_caption: int = 2,
    n_captions: int = 500,
    steps: int = DDIM_STEPS,
    guidance: float = GUIDANCE,
    seed: int = 0,
    held: tuple[torch.Tensor, list[str]] | None = None,
    scale: float | None = None,
) -> dict[str, float]:
    """Chapter 07's two measures: `caption_to_image_judge` = judge "all" on per_caption
    images for each of the 90 captions (plus per attribute); `image_to_caption_exact` = the
    fraction of held-out images (seed 1) whose greedy caption is word-for-word right. Computed
    on the model's device, the images decoded at `scale` (default: the training set's, which
    the shipped file carries too)."""
    dev = next(model.parameters()).device
    judge = judge_recipe.WEIGHTS["judge"].load(device=dev)
    tokenizer = tokenizer_recipe.WEIGHTS["tokenizer"].load(device=dev)
    scale = scale if scale is not None else course_latents()[1]
    captions = all_captions() * _validate.positive_int("per_caption", per_caption)
    images, _ = generate_images(model, captions, steps=steps, guidance=guidance, seed=seed,
                                tokenizer=tokenizer, scale=scale)  # fmt: skip
    scores = judge.score(images, captions)
    latents, truth = held or held_out(n_captions)
    got = caption_images(model, latents)
    return {
        "caption_to_image_judge": scores["all"],
        **{f"caption_to_image_{a}": scores[a] for a in ("color", "shape", "position")},
        "image_to_caption_exact": sum(a == b for a, b in zip(got, truth)) / len(truth),
    }


@torch.no_grad()
def held_out_losses(
    model: Transfusion,
    held: tuple[torch.Tensor, list[str]] | None = None,
    t_grid: Sequence[int] = (50, 200, 400, 600, 800, 950),
    seed: int = 0,
) -> dict[str, float]:
    """Teacher-forced losses on held-out images, the same draws for every model: `ce`, the
    text cross-entropy of image → caption sequences ([BOS] [BOI] x_0 [EOI] caption [EOS]);
    `mse`, the ε-MSE of caption → image sequences, averaged over the timesteps t_grid with ε
    fixed by `seed`."""
    latents, captions = held or held_out(200)
    bpe = course_bpe()
    vocab = course_vocab(bpe)
    p = next(model.parameters())
    words = [bpe.encode(c) for c in captions]
    n = len(latents)
    rows = {first: make_batch(latents, words, [first] * n, [False] * n, vocab)
            for first in (True, False)}  # fmt: skip
    b = rows[False]
    logits, eps_pred = model(b.ids.to(p.device), b.patches.to(p.device),
                             torch.zeros(n, dtype=torch.long, device=p.device),
                             b.image_id.to(p.device))  # fmt: skip
    ids, is_image = b.ids.to(p.device), (b.image_id >= 0).to(p.device)
    eps, diffuse, valid = torch.zeros_like(eps_pred), b.diffuse.to(p.device), b.valid.to(p.device)
    ce = transfusion_loss(logits, eps_pred, ids, eps, is_image, diffuse, valid).ce
    b, alpha_bar = rows[True], schedule()
    g = torch.Generator().manual_seed(seed)
    mse = []
    for t in t_grid:
        t_batch = torch.full((n,), int(t), dtype=torch.long)
        eps = torch.randn(b.patches.shape, generator=g)
        x_t = noise_image_span(b.patches, b.diffuse, t_batch, alpha_bar, eps)
        dev = [x.to(p.device) for x in (b.ids, x_t, t_batch, b.image_id)]
        logits, eps_pred = model(*dev)
        loss = transfusion_loss(logits, eps_pred, dev[0], eps.to(p.device), dev[3] >= 0,
                                b.diffuse.to(p.device), b.valid.to(p.device))  # fmt: skip
        mse.append(float(loss.mse))
    return {"ce": float(ce), "mse": sum(mse) / len(mse)}


def lambda_sweep(
    lams: Sequence[float] = (0.5, 2.0, 8.0, 32.0),
    *,
    steps: int = 1000,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = False,
    device: torch.device | str | None = None,
) -> list[dict]:
    """A SMALL budget, not the shipped model: for each λ, a SWEEP_CONFIG model (2 layers,
    d = 64) trained `steps` steps of `batch_size` (same seed, same batches) on `device`
    (default: the course's) → one dict per λ: its `held_out_losses` on 200 held-out images
    (ce, mse), the training time (seconds) and the training curve (losses, (ce, mse) per step).
    `progress` shows one bar over the λ values (not one per training run: fewer redraws)."""
    latents, _ = course_latents()
    captions = ShapesDataset(n=20_000, seed=0).captions
    held = held_out(200)
    rows = []
    for lam in tqdm(lams, desc="λ sweep", disable=not progress):
        config = default_config(**SWEEP_CONFIG)
        r = train_transfusion(latents, captions, config=config, steps=steps,
                              batch_size=batch_size, lam=lam, lr=3e-3, seed=seed,
                              progress=False, device=device)  # fmt: skip
        scores = held_out_losses(r.model, held)
        rows.append({"lam": float(lam), **scores, "seconds": r.seconds, "losses": r.losses})
    return rows


# ----------------------------------------------------------------------------------- rebuild


def rebuild(seed: int = 0, steps: int = TRAIN_STEPS, fsdp: bool = False) -> str:
    """Train the shipped model from `seed` on one thread, write data/transfusion_shapes.pt
    (float16, the latent scale in its config), return a summary with both held-out scores
    (`python -m mmcourse.train transfusion`; `fsdp`: FSDP2 under torchrun)."""
    weights = WEIGHTS["transfusion"]
    with one_thread():
        latents, scale = course_latents(seed=seed)
        captions = ShapesDataset(n=20_000, seed=seed).captions
        result = train_transfusion(
            latents, captions, steps=steps, batch_size=BATCH_SIZE, seed=seed, device="cpu",
            fsdp=fsdp,
        )  # fmt: skip
        if not distributed.is_main():
            return ""  # rank 0 writes the file and measures it
        config = result.model.config | {"latent_scale": scale}
        path = weights.save(result.model, config=config)
        model, scale = load_with_scale(path, "cpu")
        scores = evaluate(model, seed=seed, scale=scale)
    tail = result.losses[-50:]
    return (
        f"wrote {path.name} in {result.seconds:.0f} s; final ce "
        f"{sum(c for c, _ in tail) / len(tail):.3f}, mse {sum(m for _, m in tail) / len(tail):.3f}"
        "; held-out " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
    )


REBUILDS = {"transfusion": rebuild}
