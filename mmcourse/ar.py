"""Autoregressive image generation on Shapes (chapter 05): vocabulary, sequences, loss, generation.

One vocabulary holds caption words, four special tokens and the tokenizer's K = 512 image codes,
shifted by IMAGE_OFFSET so that no image id collides with a text or special id:

    ids 0 … 16     caption words ("a", "red", "circle", "top", …)
    17 … 20        PAD, NULL (the unconditional prompt), BOI, EOI
    21 … 532       image code c ↦ c + IMAGE_OFFSET

A training sequence is [caption (7 ids, left-padded)][BOI][64 image ids in raster order][EOI].
Captions are dropped now and then: the 7 caption ids become 7 NULLs, the same length, so the
conditional and unconditional prompts of classifier-free guidance line up position for position.
The loss is next-token cross-entropy on the 64 image ids and EOI only. Generation samples the 64
image ids after [caption][BOI] with `mmcourse.sampling.generate`, guided by the [NULL × 7][BOI]
rows, and decodes them with the tokenizer.

The shipped models (data/ar_shapes.pt, its early checkpoint and the model trained on noisy
captions), their training runs and their judge evaluation live in `mmcourse.recipes.ar`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmcourse import _validate
from mmcourse.data import COLORS, POSITIONS, SHAPES, parse_caption
from mmcourse.sampling import generate
from mmcourse.transformer import GPTConfig

WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(["a", "in", "the", *COLORS, *SHAPES, *(w for p in POSITIONS for w in p.split())])
)
PAD, NULL, BOI, EOI = range(len(WORDS), len(WORDS) + 4)
SPECIALS = {"PAD": PAD, "NULL": NULL, "BOI": BOI, "EOI": EOI}
IMAGE_OFFSET = EOI + 1
CODES = 512  # the shipped tokenizer's codebook size
VOCAB_SIZE = IMAGE_OFFSET + CODES
CAPTION_LEN = 7  # "a red circle in the top left"; shorter captions are left-padded
GRID = 8  # 8×8 image tokens
IMAGE_LEN = GRID * GRID
SEQ_LEN = CAPTION_LEN + 1 + IMAGE_LEN + 1  # caption, BOI, image, EOI = 73
_WORD_ID = {w: i for i, w in enumerate(WORDS)}


# ------------------------------------------------------------------------------- vocabulary


def encode_captions(captions: Sequence[str] | str) -> torch.Tensor:
    """Captions of the Shapes grammar → word ids (N, CAPTION_LEN) long, left-padded with PAD."""
    if isinstance(captions, str):
        captions = [captions]
    rows = []
    for caption in captions:
        parse_caption(caption)  # ValueError naming the word outside the grammar
        ids = [_WORD_ID[w] for w in caption.split()]
        rows.append([PAD] * (CAPTION_LEN - len(ids)) + ids)
    return torch.tensor(rows, dtype=torch.long).view(-1, CAPTION_LEN)


def decode_caption(ids: torch.Tensor) -> str:
    """Word ids (CAPTION_LEN,) → the caption ("" for the unconditional prompt)."""
    ids = _validate.tensor("ids", ids, shape=(CAPTION_LEN,), dtype=torch.long)
    return " ".join(WORDS[i] for i in ids.tolist() if i < len(WORDS))


def null_prompt(n: int) -> torch.Tensor:
    """The unconditional caption: (n, CAPTION_LEN) NULL ids, as long as a real caption."""
    return torch.full((_validate.positive_int("n", n), CAPTION_LEN), NULL, dtype=torch.long)


def make_sequences(caption_ids: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
    """caption_ids (N, CAPTION_LEN), image_tokens (N, 8, 8) or (N, 64) codes in [0, 512) →
    sequences (N, SEQ_LEN) = [caption][BOI][codes + IMAGE_OFFSET][EOI]."""
    caption_ids = _validate.tensor(
        "caption_ids", caption_ids, shape=("N", CAPTION_LEN), dtype=torch.long
    )
    image_tokens = _validate.tensor("image_tokens", image_tokens, dtype=torch.long)
    image_tokens = image_tokens.reshape(len(image_tokens), -1)  # raster order (N, 64)
    if image_tokens.shape != (len(caption_ids), IMAGE_LEN):
        raise ValueError(
            f"image_tokens must hold {IMAGE_LEN} codes for each of the {len(caption_ids)} "
            f"captions, got shape {tuple(image_tokens.shape)}"
        )
    n = len(caption_ids)
    boi = torch.full((n, 1), BOI, dtype=torch.long)
    eoi = torch.full((n, 1), EOI, dtype=torch.long)
    return torch.cat([caption_ids, boi, image_tokens + IMAGE_OFFSET, eoi], dim=1)


@torch.no_grad()
def encode_images(tokenizer: nn.Module, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Images (N, 3, 32, 32) in [0, 1] → the tokenizer's codes (N, 8, 8) long, on the CPU."""
    images = _validate.tensor("images", images, shape=("N", 3, 32, 32), floating=True)
    param = next(tokenizer.parameters())
    return torch.cat([tokenizer.encode(x.to(param)).cpu() for x in images.split(batch)])


# -------------------------------------------------------------------------------- training


def drop_captions(seqs: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Caption dropout: each row's caption ids become NULL with probability p (same length).
    The draws come from `generator`, on its device."""
    seqs = _validate.tensor("seqs", seqs, shape=("B", SEQ_LEN), dtype=torch.long)
    drop = torch.rand(len(seqs), generator=generator, device=generator.device) < p  # (B,)
    drop = drop.to(seqs.device)
    out = seqs.clone()
    out[:, :CAPTION_LEN] = torch.where(drop[:, None], NULL, seqs[:, :CAPTION_LEN])  # no sync
    return out


def lm_loss(model: nn.Module, seqs: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy on the image ids and EOI of seqs (B, SEQ_LEN): the input is
    seqs[:, :-1], the targets seqs[:, 1:], and caption/BOI targets are not scored."""
    logits = model(seqs[:, :-1])  # (B, SEQ_LEN − 1, V)
    targets = seqs[:, 1:].clone()
    targets[:, :CAPTION_LEN] = -100  # position CAPTION_LEN reads BOI and predicts image token 0
    return F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100)


def default_config(**overrides: int | float) -> GPTConfig:
    """The shipped model's configuration (d_model 128, 4 layers, 4 heads), with overrides."""
    base = {"vocab_size": VOCAB_SIZE, "block_size": SEQ_LEN - 1, "n_layer": 4, "n_head": 4}
    return GPTConfig(**(base | {"d_model": 128, "dropout": 0.0} | overrides))


# ------------------------------------------------------------------------------- generation


def guidance_prompts(caption_ids: torch.Tensor) -> torch.Tensor:
    """The prompts of one guided batch: caption_ids (B, CAPTION_LEN) → (2B, CAPTION_LEN + 1),
    rows 0 … B−1 [caption][BOI], rows B … 2B−1 [NULL × CAPTION_LEN][BOI]. Both halves have the
    same length, so BOI and every image token sit at the same position in all rows and one KV
    cache serves both."""
    caption_ids = _validate.tensor(
        "caption_ids", caption_ids, shape=("B", CAPTION_LEN), dtype=torch.long
    )
    b = len(caption_ids)
    prompts = torch.cat([caption_ids, null_prompt(b).to(caption_ids.device)])  # (2B, L)
    boi = torch.full((2 * b, 1), BOI, dtype=torch.long, device=caption_ids.device)
    return torch.cat([prompts, boi], dim=1)


def ids_to_codes(ids: torch.Tensor) -> torch.Tensor:
    """Generated image ids (B, 64) in the joint vocabulary → tokenizer codes (B, 8, 8) in
    [0, 512): remove IMAGE_OFFSET, then restore the raster order's 8×8 grid."""
    ids = _validate.tensor("ids", ids, shape=("B", IMAGE_LEN), dtype=torch.long)
    codes = ids - IMAGE_OFFSET
    if codes.numel() and not bool(((codes >= 0) & (codes < CODES)).all()):
        raise ValueError(
            f"ids must be image ids in [{IMAGE_OFFSET}, {VOCAB_SIZE}), got values in "
            f"[{ids.min().item()}, {ids.max().item()}]"
        )
    return codes.view(-1, GRID, GRID)


@torch.no_grad()
def generate_images(
    model: nn.Module,
    tokenizer: nn.Module,
    captions: Sequence[str],
    *,
    scale: float = 3.0,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    plausibility: float | None = None,
    seed: int = 0,
    use_cache: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One image per caption → (images (N, 3, 32, 32) in [0, 1] on the CPU, image ids (N, 64)):
    the 64 image ids sampled after [caption][BOI] with guidance `scale` (cond and uncond rows
    in one batch), restricted to the image range (and to the conditional model's plausible ids
    when `plausibility` is given), then decoded by the tokenizer."""
    param = next(model.parameters())
    prompts = guidance_prompts(encode_captions(list(captions)).to(param.device))
    b = len(prompts) // 2
    ids = generate(
        model,
        prompts[:b],
        IMAGE_LEN,
        uncond_prompt=prompts[b:],
        scale=scale,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        plausibility=plausibility,
        allowed=(IMAGE_OFFSET, VOCAB_SIZE),
        generator=torch.Generator().manual_seed(seed),
        use_cache=use_cache,
    )
    codes = ids_to_codes(ids).to(next(tokenizer.parameters()).device)
    return tokenizer.decode(codes).cpu(), ids.cpu()
