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

This module holds the model side: the model, its mask, noise and loss, the sequence layout and
the samplers. The latents, the training run, the evaluation and the shipped weights
(data/transfusion_shapes.pt) are chapter 08's recipe, `mmcourse.recipes.transfusion`.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from mmcourse import _validate, diffusion
from mmcourse.bpe import BPE, course_bpe
from mmcourse.env import to_device
from mmcourse.transformer import GPT, GPTConfig, KVCache, causal_mask, greedy_decode
from mmcourse.vocab import Vocabulary, course_vocab

__all__ = [
    "Batch",
    "Document",
    "Losses",
    "Routes",
    "Transfusion",
    "caption_images",
    "from_patches",
    "generate_document",
    "generate_images",
    "generation_step",
    "image_eps",
    "loss_routes",
    "make_batch",
    "noise_image_span",
    "prefix_cache",
    "routed_loss",
    "schedule",
    "to_patches",
    "transfusion_loss",
    "transfusion_mask",
]

GRID, LATENT_DIM = 8, 16  # the tokenizer's latent: 16 channels on an 8 × 8 grid
PATCH = 2  # latent cells per patch side: a 2 × 2 patch of 16 channels is one vector
N_PATCHES = (GRID // PATCH) ** 2  # 16 patches per image
PATCH_DIM = LATENT_DIM * PATCH * PATCH  # 64 numbers per patch
T = diffusion.T
LAMBDA = 8.0  # trained, the ε-MSE is ≈ 0.007 per number, the text CE ≈ 0.46: the image needs weight
GUIDANCE = 3.0
DDIM_STEPS = 25


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
    _validate.number("lam", lam, 0)
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


# ------------------------------------------------------------- the loss on a prebuilt batch


class Routes(NamedTuple):
    targets: torch.Tensor  # (B, L − 1) next text ids, −100 where not scored
    any_text: bool
    scored: tuple[torch.Tensor, torch.Tensor]  # rows and columns of the scored patches
    any_scored: bool


def loss_routes(batch: Batch) -> Routes:
    """`transfusion_loss`'s routing of a CPU batch, computed where the batch was built (the
    training loop then reads nothing back from the device)."""
    is_image = batch.image_id >= 0
    text = batch.valid[:, 1:] & ~is_image[:, 1:] & ~is_image[:, :-1]
    scored = batch.diffuse & is_image & batch.valid
    targets = batch.ids[:, 1:].masked_fill(~text, -100)
    return Routes(targets, bool(text.any()), scored.nonzero(as_tuple=True), bool(scored.any()))


def routed_loss(
    logits: torch.Tensor,
    eps_pred: torch.Tensor,
    eps: torch.Tensor,
    routes: Routes,
    lam: float,
    dev: torch.device,
) -> Losses:
    """`transfusion_loss` from precomputed routes: the same numbers, bit for bit (indexing by
    the scored rows and columns picks what the boolean mask picks, in the same order), and
    nothing read back from the device."""
    _validate.number("lam", lam, 0)
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
    return diffusion.ddim_step(x, eps, t, t_next, alpha_bar, 0.0, torch.zeros_like(x))


@torch.no_grad()
def generate_images(
    model: Transfusion,
    captions: Sequence[str],
    *,
    steps: int = DDIM_STEPS,
    guidance: float = GUIDANCE,
    seed: int = 0,
    tokenizer: nn.Module,
    scale: float,
    bpe: BPE | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Caption → image: DDIM (+ CFG) after [BOS] caption [BOI], captions of equal token length
    as one batch → (images (N, 3, 32, 32) in [0, 1] on the CPU, latents (N, 16, P)). The image
    `tokenizer` decodes the latents, divided by the `scale` they were trained at."""
    if isinstance(captions, str) or not captions:
        raise TypeError("captions must be a non-empty list of str")
    bpe = bpe or course_bpe()
    vocab = course_vocab(bpe)
    param = next(model.parameters())
    alpha_bar = schedule()
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
    tokenizer: nn.Module,
    scale: float,
    bpe: BPE | None = None,
) -> Document:
    """Generate after [BOS] prompt, switching modality at BOI: text ids (and BOI / EOS) are
    sampled one at a time at `temperature`; when the model emits BOI, the image is sampled by
    DDIM + CFG with everything so far as its context (the null context [BOS] [BOI]), then
    appended clean (t = 0) with EOI, and text resumes — until EOS or max_tokens text ids. The
    image `tokenizer` decodes the images' latents, divided by their `scale`."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    _validate.number("temperature", temperature, 0, open_lo=True)
    bpe = bpe or course_bpe()
    vocab = course_vocab(bpe)
    dev = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    ids = [vocab.BOS, *bpe.encode(prompt)]
    cache = model.new_cache()
    if len(ids) > 1:  # all but the last prompt id; appending the last gives the first logits
        cache = prefix_cache(model, torch.tensor([ids[:-1]], device=dev))
    logits = _append(model, cache, torch.tensor([[ids[-1]]], device=dev))
    allowed = vocab.text_mask("BOI", "EOS", size=vocab.image_offset)
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
    pictures = torch.zeros(0, 3, 32, 32)
    if images:
        z = from_patches(torch.cat(images)).to(next(tokenizer.parameters()))
        pictures = diffusion.decode_latents(tokenizer, z, scale).cpu()
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
    allowed = vocab.text_mask("EOS", size=logits.shape[-1], device=p.device)
    step = functools.partial(_append, model, cache)
    rows = greedy_decode(logits[:, -1], step, allowed, vocab.EOS, max_len)
    return [bpe.decode(row) for row in rows]
