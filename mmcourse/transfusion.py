"""Transfusion (chapter 08): one transformer, next-token text and diffusion images.

A training sequence mixes discrete text ids and continuous image patches:

    caption → image   [BOS] caption [BOI] 16 noisy patches x_t [EOI] [EOS]
    image → caption   [BOS] [BOI] 16 clean patches x_0 [EOI] caption [EOS]

An image is the chapter-02 tokenizer's continuous latent z_e (16 × 8 × 8, before quantization),
scaled to unit standard deviation (`diffusion.latent_scale`) and cut into 2 × 2 patches: 16
patch vectors of 64 numbers (`to_patches`). The body is chapter 07's GPT: its token embedding
embeds the text ids, a linear layer `patch_in` embeds the patches (plus a learned
patch-position embedding and a timestep embedding of the image's t), and at the output the
tied text head gives logits while a linear `patch_out` gives the predicted noise ε̂ at every
image position. Attention is causal across the sequence and bidirectional within each image
(`transfusion_mask`). The loss routes each position to its own objective (`transfusion_loss`):

    L = CE(next text id | text positions) + λ · ‖ε − ε̂‖² (image positions that were noised)

Caption → image samples the 16 patches by DDIM with classifier-free guidance inside the
transformer: the caption's keys and values are cached once, and every denoising step runs
only the 16 image positions against that cache (the null context is [BOS] [BOI], a dropped
caption). Image → caption decodes greedily after a clean image (t = 0).

The shipped model is data/transfusion_shapes.pt, rebuilt by `python -m mmcourse.train
transfusion`.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from tqdm.auto import tqdm

from mmcourse import _validate, checkpoints, diffusion
from mmcourse.bpe import BPE, course_bpe
from mmcourse.data import ShapesDataset, all_captions
from mmcourse.env import device as default_device
from mmcourse.env import to_device
from mmcourse.trainer import TrainResult, adamw_cosine, fit
from mmcourse.transformer import GPT, GPTConfig, KVCache, causal_mask, greedy_decode
from mmcourse.vocab import Vocabulary, course_vocab

__all__ = [
    "COMMAND",
    "PATH",
    "Batch",
    "Document",
    "Transfusion",
    "caption_images",
    "course_latents",
    "evaluate",
    "from_patches",
    "generate_document",
    "generate_images",
    "generation_step",
    "held_out_losses",
    "image_eps",
    "lambda_sweep",
    "load_transfusion",
    "make_batch",
    "noise_image_span",
    "positions_per_step",
    "prefix_cache",
    "rebuild",
    "schedule",
    "to_patches",
    "train_transfusion",
    "transfusion_loss",
    "transfusion_mask",
]

PATH = checkpoints.DATA_DIR / "transfusion_shapes.pt"
COMMAND = "python -m mmcourse.train transfusion"
CACHE_DIR = checkpoints.DATA_DIR / "cache"
GRID, LATENT_DIM = 8, 16  # the tokenizer's latent: 16 channels on an 8 × 8 grid
PATCH = 2  # latent cells per patch side: a 2 × 2 patch of 16 channels is one vector
N_PATCHES = (GRID // PATCH) ** 2  # 16 patches per image
PATCH_DIM = LATENT_DIM * PATCH * PATCH  # 64 numbers per patch
EMA_DECAY = 0.999  # sampling uses an exponential moving average of the weights (chapter 04)
T = diffusion.T
TRAIN_STEPS = 3000  # the shipped run: chapter 07's steps ...
BATCH_SIZE = 104  # ... and its positions per step (≈ 2,730 vs 2,770, `positions_per_step`)
CAPTION_FIRST = 0.8  # share of caption → image sequences (the rest image → caption)
P_DROP = 0.1  # caption dropout of caption → image sequences (the null context of CFG)
LAMBDA = 8.0  # trained, the ε-MSE is ≈ 0.007 per number, the text CE ≈ 0.46: the image needs weight
GUIDANCE = 3.0
DDIM_STEPS = 25
HELD_OUT_SEED = 1


def schedule() -> torch.Tensor:
    """ᾱ (T,) of the shipped model: linear β from 0.00085 to 0.012 (Stable Diffusion's range;
    ᾱ_T ≈ 0.002). Chapter 04's 1e-4 … 0.02 leaves half the timesteps at SNR < 0.1, where the
    ε-MSE is tiny and the layout of the image is decided but hardly trained."""
    return diffusion.linear_schedule(T, 0.00085, 0.012)


# ------------------------------------------------------------------------------ the model


class Transfusion(nn.Module):
    """A GPT body over text ids and continuous image patches.

    forward(ids, patches, t, image_id) with ids (B, L) long (any id at image positions),
    patches (B, L, 64) float (read only at image positions), t (B,) long, the timestep of the
    sequence's images, and image_id (B, L) long, −1 at text positions and k at the patches of
    the k-th image → (logits (B, L, V), eps (B, L, 64))."""

    def __init__(
        self,
        config: GPTConfig | None = None,
        patch_dim: int = PATCH_DIM,
        separate_mlp: bool = False,
        **kw,
    ):
        super().__init__()
        self.gpt = GPT(config or GPTConfig(**kw))
        d = self.gpt.cfg.d_model
        self.patch_dim = _validate.positive_int("patch_dim", patch_dim)
        self.config = self.gpt.config | {"patch_dim": self.patch_dim}
        self.patch_in = nn.Linear(patch_dim, d)
        self.patch_pos = nn.Parameter(torch.randn(N_PATCHES, d) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.patch_out = nn.Linear(d, patch_dim)
        nn.init.zeros_(self.patch_out.weight)
        nn.init.zeros_(self.patch_out.bias)
        self.image_mlps = None  # Mixture-of-Transformers style: patches get their own MLPs
        if separate_mlp:
            self.image_mlps = nn.ModuleList(copy.deepcopy(b.mlp) for b in self.gpt.blocks)
            self.config |= {"separate_mlp": True}

    def new_cache(self) -> KVCache:
        return self.gpt.new_cache()

    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        """Sinusoidal features of t (B,) through a small MLP → (B, D)."""
        d = self.gpt.cfg.d_model
        freqs = torch.exp(-math.log(10_000) * torch.arange(d // 2, device=t.device) / (d // 2))
        angles = t.float()[:, None] * freqs[None]
        return self.time_mlp(torch.cat([angles.sin(), angles.cos()], dim=-1))

    def forward(
        self,
        ids: torch.Tensor,
        patches: torch.Tensor,
        t: torch.Tensor,
        image_id: torch.Tensor,
        cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ids = _validate.tensor("ids", ids, shape=("B", "L"), dtype=torch.long)
        b, n = ids.shape
        patches = _validate.tensor("patches", patches, shape=(b, n, self.patch_dim), floating=True)
        image_id = _validate.tensor("image_id", image_id, shape=(b, n), dtype=torch.long)
        t = _validate.tensor("t", t, shape=(b,), dtype=torch.long)
        is_image = image_id >= 0
        within = _index_within_image(image_id).clamp(0, N_PATCHES - 1)  # (B, L), 0 … 15
        h_img = self.patch_in(patches) + self.patch_pos[within] + self.time_embedding(t)[:, None]
        h = torch.where(is_image[..., None], h_img, self.gpt.tok_emb(ids.clamp(0, None)))
        if mask is None:
            mask = transfusion_mask(image_id)
        mlp = None if self.image_mlps is None else functools.partial(self._mlp, is_image)
        logits, h = self.gpt(cache=cache, mask=mask, embeddings=h, mlp=mlp, return_hidden=True)
        return logits, self.patch_out(h)

    def _mlp(self, is_image: torch.Tensor, layer: int, z: torch.Tensor) -> torch.Tensor:
        """Mixture-of-Transformers MLP of block `layer`: the block's own MLP at text positions,
        its image MLP at patches (each position runs one MLP, so the compute is that of the
        shared block). z (B, L, D) normalized, is_image (B, L)."""
        out = torch.zeros_like(z)
        out[~is_image] = self.gpt.blocks[layer].mlp(z[~is_image])
        out[is_image] = self.image_mlps[layer](z[is_image])
        return out


def _index_within_image(image_id: torch.Tensor) -> torch.Tensor:
    """image_id (B, L) → (B, L) long: at a patch, how many patches of the same image come
    before it in the row (0 … 15); 0 at text. Counted for all images at once, so nothing is
    read back from the device."""
    n = image_id.shape[1]
    earlier = torch.ones(n, n, dtype=torch.bool, device=image_id.device).tril(-1)  # j < i
    same = (image_id[:, :, None] == image_id[:, None, :]) & earlier  # (B, L, L)
    return torch.where(image_id >= 0, same.sum(-1), 0)


def transfusion_mask(image_id: torch.Tensor) -> torch.Tensor:
    """image_id (L,) or (B, L) long, −1 at text and k ≥ 0 at the k-th image's patches →
    (L, L) or (B, L, L) bool, True where query i may attend to key j: causal (j ≤ i) OR both
    in the same image (bidirectional within an image, causal across)."""
    image_id = _validate.tensor("image_id", image_id, dtype=torch.long)
    if image_id.dim() not in (1, 2):
        raise ValueError(f"image_id must be (L,) or (B, L), got shape {tuple(image_id.shape)}")
    n = image_id.shape[-1]
    causal = causal_mask(n, n, image_id.device)  # (L, L)
    same = (image_id[..., :, None] == image_id[..., None, :]) & (image_id[..., :, None] >= 0)
    return causal | same


# ---------------------------------------------------------------------- noise and the loss


def noise_image_span(
    patches: torch.Tensor,
    is_image: torch.Tensor,
    t: torch.Tensor,
    alpha_bar: torch.Tensor,
    eps: torch.Tensor,
) -> torch.Tensor:
    """q(x_t | x_0) on the image positions only: patches (B, L, P) clean, is_image (B, L),
    t (B,) one timestep per sequence, eps like patches → x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε at image
    positions, the patches unchanged elsewhere."""
    patches = _validate.tensor("patches", patches, shape=("B", "L", None), floating=True)
    b, n, _ = patches.shape
    is_image = _validate.tensor("is_image", is_image, shape=(b, n), dtype=torch.bool)
    noisy = diffusion.q_sample(patches, t, alpha_bar, eps)  # (B, L, P), every position noised
    return torch.where(is_image[..., None], noisy, patches)


class Losses(NamedTuple):
    total: torch.Tensor
    ce: torch.Tensor
    mse: torch.Tensor


def transfusion_loss(
    logits: torch.Tensor,
    eps_pred: torch.Tensor,
    ids: torch.Tensor,
    eps: torch.Tensor,
    is_image: torch.Tensor,
    diffuse: torch.Tensor,
    valid: torch.Tensor,
    lam: float = LAMBDA,
) -> Losses:
    """Route each position to its objective. logits (B, L, V), eps_pred and eps (B, L, P),
    ids (B, L), masks (B, L) bool: is_image (patch positions), diffuse (the patches that were
    noised and are scored), valid (real, not padding).

    ce: next-token cross-entropy of the targets ids[:, 1:] that are text (valid, not a patch,
    and not read off a patch: the id after an image, EOI, is placed by the sampler), averaged;
    mse: ‖ε − ε̂‖² at the same position (no shift: a patch predicts its own noise), averaged
    over the diffuse positions and the P numbers. total = ce + lam · mse."""
    if isinstance(lam, bool) or not isinstance(lam, int | float) or lam < 0:
        raise ValueError(f"lam must be a number ≥ 0, got {lam!r}")
    text = valid[:, 1:] & ~is_image[:, 1:] & ~is_image[:, :-1]
    targets = ids[:, 1:].masked_fill(~text, -100)
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, ignore_index=-100)
    if not bool(text.any()):
        ce = logits.sum() * 0.0
    scored = diffuse & is_image & valid
    if bool(scored.any()):
        mse = (eps_pred - eps).pow(2).mean(-1)[scored].mean()
    else:
        mse = eps_pred.sum() * 0.0
    return Losses(ce + lam * mse, ce, mse)


# ----------------------------------------------------------------------------------- data


@torch.no_grad()
def course_latents(n: int = 20_000, seed: int = 0) -> tuple[torch.Tensor, float]:
    """Shapes images of `seed` through the tokenizer's encoder, scaled → (latents (n, 16, 64),
    scale). Cached under data/cache/; the scale is always that of the training set (seed 0)."""
    from mmcourse.tokenizer import load_tokenizer

    n = _validate.positive_int("n", n)
    path = CACHE_DIR / f"transfusion_latents_{n}_{seed}.pt"
    z = None
    if path.is_file():
        try:
            z = torch.load(path, weights_only=True)
            z = z if z.shape == (n, LATENT_DIM, GRID, GRID) else None
        except Exception:
            z = None
    if z is None:
        tokenizer = load_tokenizer(device="cpu")  # host: the same cache on every machine
        z = diffusion.encode_latents(tokenizer, ShapesDataset(n=n, seed=seed).images).cpu()
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        torch.save(z, path)
    scale = diffusion.latent_scale(z) if (n, seed) == (20_000, 0) else course_latents()[1]
    return to_patches(z * scale), scale


def to_patches(z: torch.Tensor) -> torch.Tensor:
    """(N, 16, 8, 8) → (N, 16, 64): 2 × 2 latent patches, row-major over the 4 × 4 patch grid,
    each flattened channels-first, (c p q): the 4 cells of channel 0, then of channel 1, ….
    Chapter 03's `patches.patchify` cuts the same patches but flattens them channels-last,
    (p q c); the order only permutes `patch_in`'s inputs, and this one is what the shipped
    weights were trained on."""
    z = _validate.tensor("z", z, shape=("N", LATENT_DIM, GRID, GRID), floating=True)
    return rearrange(z, "n c (h p) (w q) -> n (h w) (c p q)", p=PATCH, q=PATCH).contiguous()


def from_patches(x: torch.Tensor) -> torch.Tensor:
    """(N, 16, 64) → (N, 16, 8, 8), the inverse of `to_patches`."""
    x = _validate.tensor("x", x, shape=("N", N_PATCHES, PATCH_DIM), floating=True)
    g = GRID // PATCH
    return rearrange(x, "n (h w) (c p q) -> n c (h p) (w q)", h=g, w=g, p=PATCH, q=PATCH)


class Batch(NamedTuple):
    ids: torch.Tensor  # (B, L) long, PAD at image positions
    patches: torch.Tensor  # (B, L, P) clean latents at image positions, 0 elsewhere
    image_id: torch.Tensor  # (B, L) −1 text, 0 the image
    diffuse: torch.Tensor  # (B, L) bool, patches that get noised and scored
    valid: torch.Tensor  # (B, L) bool, not padding


def make_batch(
    latents: torch.Tensor,
    captions: Sequence[list[int]],
    caption_first: Sequence[bool],
    drop: Sequence[bool],
    vocab: Vocabulary,
) -> Batch:
    """One padded batch: row i is [BOS] caption [BOI] image [EOI] [EOS] (caption first, the
    caption left out when drop[i]) or [BOS] [BOI] image [EOI] caption [EOS] (clean image, not
    diffused). latents (B, 16, P), captions as BPE ids."""
    rows = []
    for _, cap, first, dropped in zip(latents, captions, caption_first, drop):
        head = [vocab.BOS, *([] if dropped else cap)] if first else [vocab.BOS]
        tail = [vocab.EOS] if first else [*cap, vocab.EOS]
        rows.append((head, tail, bool(first)))
    n = max(len(h) + len(tl) + N_PATCHES + 2 for h, tl, _ in rows)
    b, p = len(rows), latents.shape[-1]
    ids = torch.full((b, n), vocab.PAD, dtype=torch.long)
    patches = torch.zeros(b, n, p)
    image_id = torch.full((b, n), -1, dtype=torch.long)
    diffuse = torch.zeros(b, n, dtype=torch.bool)
    valid = torch.zeros(b, n, dtype=torch.bool)
    for i, (head, tail, first) in enumerate(rows):
        s = len(head) + 1  # first patch
        ids[i, : s - 1] = torch.tensor(head)
        ids[i, s - 1] = vocab.BOI
        ids[i, s + N_PATCHES] = vocab.EOI
        ids[i, s + N_PATCHES + 1 : s + N_PATCHES + 1 + len(tail)] = torch.tensor(tail)
        patches[i, s : s + N_PATCHES] = latents[i]
        image_id[i, s : s + N_PATCHES] = 0
        diffuse[i, s : s + N_PATCHES] = first
        valid[i, : s + N_PATCHES + 1 + len(tail)] = True
    return Batch(ids, patches, image_id, diffuse, valid)


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
) -> TrainResult:
    """AdamW with warm-up and cosine decay (chapter 07's recipe) on random batches: each row
    caption → image with probability caption_first (caption dropped with P_DROP, image noised
    to a uniform t) else image → caption (clean image, t = 0); an EMA of the weights (decay
    ema_decay) is what comes back. separate_mlp: patches get their own MLP in every block.

    The model trains on `device` (default: the course's). Each batch is built and noised on the
    CPU, where its layout is known (the same draws on every device), and sent over without
    waiting for the GPU; the losses are read back once, at the end."""
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
    g = torch.Generator().manual_seed(seed)
    dev = torch.device(device) if device is not None else default_device()
    latents = latents.cpu()  # host: batches are assembled row by row on the CPU
    model = Transfusion(
        config or default_config(vocab), patch_dim=latents.shape[-1], separate_mlp=separate_mlp
    ).to(dev)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt, lr_schedule = adamw_cosine(model, lr, steps)

    def step_loss(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        batch, t = _draw(latents, captions, words, batch_size, caption_first, vocab, g)
        eps = torch.randn(batch.patches.shape, generator=g)
        x_t = noise_image_span(batch.patches, batch.diffuse, t, alpha_bar, eps)
        routes = _routes(batch)  # transfusion_loss's masks, resolved on the CPU
        on_cpu = (batch.ids, x_t, t, batch.image_id, eps)
        ids, x_t, t, image_id, eps = (to_device(v, dev) for v in on_cpu)
        logits, eps_pred = model(ids, x_t, t, image_id)
        loss = _routed_loss(logits, eps_pred, eps, routes, lam, dev)
        return loss.total, torch.stack([loss.ce, loss.mse])  # (ce, mse) recorded per step

    def update_ema(step: int, _: torch.Tensor) -> None:
        diffusion.ema_update(ema, model, step, ema_decay)

    run = fit(
        model,
        step_loss,
        steps=steps,
        optimizer=opt,
        schedule=lr_schedule,
        clip=1.0,
        callbacks=[update_ema],
        progress=progress,
    )
    return run._replace(model=ema, losses=[tuple(row) for row in run.losses])


class _Routes(NamedTuple):
    targets: torch.Tensor  # (B, L − 1) next text ids, −100 where not scored
    any_text: bool
    scored: tuple[torch.Tensor, torch.Tensor]  # rows and columns of the scored patches
    any_scored: bool


def _routes(batch: Batch) -> _Routes:
    """`transfusion_loss`'s routing of a CPU batch, computed where the batch was built."""
    is_image = batch.image_id >= 0
    text = batch.valid[:, 1:] & ~is_image[:, 1:] & ~is_image[:, :-1]
    scored = batch.diffuse & is_image & batch.valid
    targets = batch.ids[:, 1:].masked_fill(~text, -100)
    return _Routes(targets, bool(text.any()), scored.nonzero(as_tuple=True), bool(scored.any()))


def _routed_loss(
    logits: torch.Tensor,
    eps_pred: torch.Tensor,
    eps: torch.Tensor,
    routes: _Routes,
    lam: float,
    dev: torch.device,
) -> Losses:
    """`transfusion_loss` from precomputed routes: the same numbers, bit for bit (indexing by
    the scored rows and columns picks what the boolean mask picks, in the same order), and
    nothing read back from the device."""
    if isinstance(lam, bool) or not isinstance(lam, int | float) or lam < 0:
        raise ValueError(f"lam must be a number ≥ 0, got {lam!r}")
    targets = to_device(routes.targets, dev)
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, ignore_index=-100)
    if not routes.any_text:
        ce = logits.sum() * 0.0
    if routes.any_scored:
        rows, cols = (to_device(i, dev) for i in routes.scored)
        mse = (eps_pred - eps).pow(2).mean(-1)[rows, cols].mean()
    else:
        mse = eps_pred.sum() * 0.0
    return Losses(ce + lam * mse, ce, mse)


# ----------------------------------------------------------------------------- generation


def prefix_cache(model: Transfusion, ids: torch.Tensor) -> KVCache:
    """The keys and values of a text prefix ids (B, P) (e.g. [BOS] caption [BOI]) in a fresh
    cache, computed once and reused by every denoising step."""
    b, n = ids.shape
    cache = model.new_cache()
    p = next(model.parameters())
    model(
        ids,
        torch.zeros(b, n, model.patch_dim, device=p.device),
        torch.zeros(b, dtype=torch.long, device=p.device),
        torch.full((b, n), -1, dtype=torch.long, device=p.device),
        cache=cache,
    )
    return cache


def image_eps(model: Transfusion, cache: KVCache, x: torch.Tensor, t: int) -> torch.Tensor:
    """ε̂ for the 16 patches x (B, 16, P) at timestep t, after the prefix in `cache` (left
    unchanged): the patches see the whole prefix and each other."""
    b, n, _ = x.shape
    saved = list(cache.layers)
    ids = torch.zeros(b, n, dtype=torch.long, device=x.device)
    mask = torch.ones(n, len(cache) + n, dtype=torch.bool, device=x.device)
    t_batch = torch.full((b,), t, dtype=torch.long, device=x.device)
    image_id = torch.zeros(b, n, dtype=torch.long, device=x.device)
    _, eps = model(ids, x, t_batch, image_id, cache=cache, mask=mask)
    cache.layers = saved  # the image positions are not kept
    return eps


def generation_step(
    model: Transfusion,
    cond: KVCache,
    uncond: KVCache,
    x: torch.Tensor,
    t: int,
    t_next: int,
    alpha_bar: torch.Tensor,
    guidance: float,
) -> torch.Tensor:
    """One DDIM step (η = 0) of the image inside the transformer: ε̂ with the caption context
    (cond) and with the null context (uncond), combined by classifier-free guidance, then
    x_t → x_{t_next}. x (B, 16, P)."""
    eps = diffusion.cfg_combine(
        image_eps(model, cond, x, t), image_eps(model, uncond, x, t), guidance
    )
    x4, e4 = x[..., None], eps[..., None]  # ddim_step wants (B, C, H, W)
    return diffusion.ddim_step(x4, e4, t, t_next, alpha_bar, 0.0, torch.zeros_like(x4))[..., 0]


@torch.no_grad()
def generate_images(
    model: Transfusion,
    captions: Sequence[str],
    *,
    steps: int = DDIM_STEPS,
    guidance: float = GUIDANCE,
    seed: int = 0,
    tokenizer: nn.Module | None = None,
    scale: float | None = None,
    bpe: BPE | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Caption → image: DDIM (+ CFG) after [BOS] caption [BOI], captions of equal token length
    as one batch → (images (N, 3, 32, 32) in [0, 1] on the CPU, latents (N, 16, P)). Without a
    `tokenizer`, the shipped one decodes, on the model's device."""
    from mmcourse.tokenizer import load_tokenizer

    if isinstance(captions, str) or not captions:
        raise TypeError("captions must be a non-empty list of str")
    bpe = bpe or course_bpe()
    vocab = course_vocab(bpe)
    param = next(model.parameters())
    alpha_bar = schedule()
    scale = scale or model_scale(model)
    prompts = [[vocab.BOS, *bpe.encode(c), vocab.BOI] for c in captions]
    out = torch.empty(len(captions), N_PATCHES, model.patch_dim)
    g = torch.Generator().manual_seed(seed)
    for length in sorted({len(p) for p in prompts}):
        rows = [i for i, p in enumerate(prompts) if len(p) == length]
        b = len(rows)
        cond = prefix_cache(model, torch.tensor([prompts[i] for i in rows], device=param.device))
        uncond = prefix_cache(
            model, torch.tensor([[vocab.BOS, vocab.BOI]] * b, device=param.device)
        )
        x = torch.randn(b, N_PATCHES, model.patch_dim, generator=g).to(param.device)
        for t, t_next in diffusion.ddim_timesteps(T, steps):
            x = generation_step(model, cond, uncond, x, t, t_next, alpha_bar, guidance)
        out[rows] = x.cpu()
    tokenizer = tokenizer or load_tokenizer(device=param.device)
    z = from_patches(out).to(next(tokenizer.parameters()))
    return diffusion.decode_latents(tokenizer, z, scale).cpu(), out


def _document_text(ids: list[int], vocab: Vocabulary, bpe: BPE) -> str:
    """ids → text, each BOI … EOI span shown as <image>, BOS and EOS left out."""
    parts, run = [], []
    for i in ids:
        if i < vocab.text_size:
            run.append(i)
        elif i == vocab.BOI:
            parts += [bpe.decode(run).strip(), "<image>"]
            run = []
    parts.append(bpe.decode(run).strip())
    return " ".join(p for p in parts if p)


class Document(NamedTuple):
    text: str  # the whole document as text, the image shown as <image>
    images: torch.Tensor  # (K, 3, 32, 32) in [0, 1], the K images in order
    ids: list[int]  # the token ids, BOI / EOI around each image (no ids for the patches)


def _append(
    model: Transfusion, cache: KVCache, ids: torch.Tensor | None, x: torch.Tensor | None = None
) -> torch.Tensor:
    """Append one text id per row (ids (B, 1)) or one clean image per row (x (B, 16, P), t = 0,
    bidirectional among its patches) to the cache → the logits after it (B, V)."""
    b, n = (len(ids), 1) if x is None else x.shape[:2]
    dev = next(model.parameters()).device
    patches = torch.zeros(b, n, model.patch_dim, device=dev) if x is None else x
    image_id = torch.full((b, n), -1 if x is None else 0, dtype=torch.long, device=dev)
    ids = ids if x is None else torch.zeros(b, n, dtype=torch.long, device=dev)
    mask = torch.ones(n, len(cache) + n, dtype=torch.bool, device=dev)
    logits, _ = model(ids, patches, torch.zeros(b, dtype=torch.long, device=dev), image_id,
                      cache=cache, mask=mask)  # fmt: skip
    return logits[:, -1]


@torch.no_grad()
def generate_document(
    model: Transfusion,
    prompt: str = "",
    *,
    max_tokens: int = 24,
    temperature: float = 1.0,
    steps: int = DDIM_STEPS,
    guidance: float = GUIDANCE,
    seed: int = 0,
    tokenizer: nn.Module | None = None,
    bpe: BPE | None = None,
) -> Document:
    """Generate after [BOS] prompt, switching modality at BOI: text ids (and BOI / EOS) are
    sampled one at a time at `temperature`; when the model emits BOI, the image is sampled by
    DDIM + CFG with everything so far as its context (the null context [BOS] [BOI]), then
    appended clean (t = 0) with EOI, and text resumes — until EOS or max_tokens text ids."""
    from mmcourse.tokenizer import load_tokenizer

    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or temperature <= 0
    ):
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    bpe = bpe or course_bpe()
    vocab = course_vocab(bpe)
    dev = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    ids = [vocab.BOS, *bpe.encode(prompt)]
    cache = model.new_cache()
    if len(ids) > 1:  # all but the last prompt id; appending the last gives the first logits
        cache = prefix_cache(model, torch.tensor([ids[:-1]], device=dev))
    logits = _append(model, cache, torch.tensor([[ids[-1]]], device=dev))
    allowed = torch.zeros(vocab.image_offset, dtype=torch.bool)
    allowed[: vocab.text_size] = True
    allowed[[vocab.BOI, vocab.EOS]] = True
    images, alpha_bar = [], schedule()
    text_tokens = 0
    while text_tokens < max_tokens:
        probs = (logits.cpu().float() / temperature).masked_fill(~allowed, float("-inf"))
        token = int(torch.multinomial(probs.softmax(-1), 1, generator=g))
        ids.append(token)
        if token == vocab.EOS:
            break
        if token != vocab.BOI:
            text_tokens += 1
            logits = _append(model, cache, torch.tensor([[token]], device=dev))
            continue
        _append(model, cache, torch.tensor([[token]], device=dev))  # BOI joins the context
        uncond = prefix_cache(model, torch.tensor([[vocab.BOS, vocab.BOI]], device=dev))
        x = torch.randn(1, N_PATCHES, model.patch_dim, generator=g).to(dev)
        for t, t_next in diffusion.ddim_timesteps(T, steps):
            x = generation_step(model, cache, uncond, x, t, t_next, alpha_bar, guidance)
        images.append(x.cpu())
        _append(model, cache, None, x)  # the clean image, t = 0
        ids.append(vocab.EOI)
        logits = _append(model, cache, torch.tensor([[vocab.EOI]], device=dev))
    tokenizer = tokenizer or load_tokenizer(device=dev)
    pictures = torch.zeros(0, 3, 32, 32)
    if images:
        z = from_patches(torch.cat(images)).to(next(tokenizer.parameters()))
        pictures = diffusion.decode_latents(tokenizer, z, model_scale(model)).cpu()
    return Document(_document_text(ids, vocab, bpe), pictures, ids)


@torch.no_grad()
def caption_images(
    model: Transfusion, latents: torch.Tensor, *, max_len: int = 12, bpe: BPE | None = None
) -> list[str]:
    """Image → caption: greedy decoding after [BOS] [BOI] clean image (t = 0) [EOI], text ids
    and EOS only. latents (N, 16, P) scaled → N str."""
    latents = _validate.tensor("latents", latents, shape=("N", N_PATCHES, None), floating=True)
    bpe = bpe or course_bpe()
    vocab = course_vocab(bpe)
    p = next(model.parameters())
    n = len(latents)
    batch = make_batch(latents, [[]] * n, [False] * n, [False] * n, vocab)
    length = 1 + 1 + N_PATCHES + 1  # [BOS] [BOI] image [EOI]
    cache = model.new_cache()
    logits, _ = model(
        batch.ids[:, :length].to(p.device),
        batch.patches[:, :length].to(p.device),
        torch.zeros(n, dtype=torch.long, device=p.device),
        batch.image_id[:, :length].to(p.device),
        cache=cache,
    )
    allowed = torch.zeros(logits.shape[-1], dtype=torch.bool, device=p.device)
    allowed[: vocab.text_size] = True
    allowed[vocab.EOS] = True
    step = functools.partial(_append, model, cache)
    rows = greedy_decode(logits[:, -1], step, allowed, vocab.EOS, max_len)
    return [bpe.decode(row) for row in rows]


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
) -> dict[str, float]:
    """Chapter 07's two measures: `caption_to_image_judge` = judge "all" on per_caption
    images for each of the 90 captions (plus per attribute); `image_to_caption_exact` = the
    fraction of held-out images (seed 1) whose greedy caption is word-for-word right. Computed
    on the model's device."""
    from mmcourse import recipes

    judge = recipes.load("judge", device=next(model.parameters()).device)
    captions = all_captions() * _validate.positive_int("per_caption", per_caption)
    images, _ = generate_images(model, captions, steps=steps, guidance=guidance, seed=seed)
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


SWEEP_CONFIG = {"n_layer": 2, "n_head": 2, "d_model": 64}


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


# ---------------------------------------------------------------- shipped weights and rebuild


def model_scale(model: nn.Module) -> float:
    scale = getattr(model, "latent_scale", None)
    return float(scale) if scale is not None else course_latents()[1]


def _build(config: dict) -> Transfusion:
    config = dict(config)
    config.pop("latent_scale", None)
    patch_dim = config.pop("patch_dim", PATCH_DIM)
    separate = config.pop("separate_mlp", False)
    return Transfusion(GPTConfig(**config), patch_dim=patch_dim, separate_mlp=separate)


def load_transfusion(
    path: Path | str = PATH, device: torch.device | str | None = None
) -> Transfusion:
    """The shipped Transfusion model (data/transfusion_shapes.pt), in eval mode on `device`.
    Weights ship in float16 and load into float32; the latent scale travels in the config."""
    path = Path(path)
    ckpt = checkpoints.load(path, command=COMMAND)
    state = {k: v.float() for k, v in ckpt["state_dict"].items()}
    model = checkpoints.restore(
        {**ckpt, "state_dict": state}, Transfusion, path=path, command=COMMAND, build=_build
    )
    model.latent_scale = float(ckpt["config"].get("latent_scale", 0.0)) or None
    return model.to(device or default_device()).eval()


def rebuild(seed: int = 0, steps: int = TRAIN_STEPS) -> str:
    """Train the shipped model from `seed` on one thread, write data/transfusion_shapes.pt
    (float16), return a summary with both held-out scores."""
    from mmcourse.env import one_thread

    with one_thread():
        latents, scale = course_latents(seed=seed)
        captions = ShapesDataset(n=20_000, seed=seed).captions
        result = train_transfusion(
            latents, captions, steps=steps, batch_size=BATCH_SIZE, seed=seed, device="cpu"
        )
        half = {k: v.half() for k, v in result.model.state_dict().items()}
        config = result.model.config | {"latent_scale": scale}
        checkpoints.save(PATH, half, config=config, command=COMMAND)
        scores = evaluate(load_transfusion(PATH, "cpu"), seed=seed)
    tail = result.losses[-50:]
    return (
        f"wrote {PATH.name} in {result.seconds:.0f} s; final ce "
        f"{sum(c for c, _ in tail) / len(tail):.3f}, mse {sum(m for _, m in tail) / len(tail):.3f}"
        "; held-out " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
    )
