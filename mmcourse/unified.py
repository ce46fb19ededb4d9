"""A tiny Chameleon (chapter 07): one GPT over the joint text | image | video vocabulary.

Training streams mixed examples from `vocab.MixingLoader`, every one a single id sequence:

    text            [BOS] a red circle in the top left [EOS]
    caption_image   [BOS] caption [BOI] 64 image ids [EOI] [EOS]
    image_caption   [BOS] [BOI] 64 image ids [EOI] caption [EOS]
    interleaved     [BOS] caption₁ [BOI] image₁ [EOI] caption₂ [BOI] image₂ [EOI] [EOS]
    video           [BOS] motion caption [BOV] 128 video ids [EOV] [EOS]   (or video first)

and the loss is next-token cross-entropy on every real token (the loss mask drops PAD). The same
weights then do both directions: caption → image samples 64 ids after [BOS] caption [BOI] with
every id outside the image block masked (`sampling.generate`, allowed = the image range), and
image → caption decodes greedily after [BOS] [BOI] image [EOI], restricted to text ids and
EOS. The judge scores the images; captions must match word for word.

This module holds the model side: the loss and the generation in both directions, and whole
documents to and from ids. The data, the training run, the evaluation and the shipped weights
(data/unified_shapes.pt) are chapter 07's recipe, `mmcourse.recipes.unified`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmcourse import _validate
from mmcourse.bpe import BPE, course_bpe
from mmcourse.sampling import generate
from mmcourse.transformer import greedy_decode
from mmcourse.vocab import (
    Segment,
    Vocabulary,
    course_vocab,
    decode_interleaved,
    encode_interleaved,
)

__all__ = [
    "caption_images",
    "decode_document",
    "encode_document",
    "generate_images",
    "lm_loss",
]


# -------------------------------------------------------------------------------- training


def lm_loss(
    model: nn.Module, ids: torch.Tensor, loss_mask: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Next-token cross-entropy of ids (B, L): inputs ids[:, :-1], targets ids[:, 1:], and
    only targets where loss_mask[:, 1:] is True count (padding never does). reduction "mean"
    averages over the counted targets, "sum" adds them."""
    ids = _validate.tensor("ids", ids, shape=("B", "L"), dtype=torch.long)
    loss_mask = _validate.tensor("loss_mask", loss_mask, shape=tuple(ids.shape), dtype=torch.bool)
    logits = model(ids[:, :-1])  # (B, L − 1, V)
    targets = ids[:, 1:].masked_fill(~loss_mask[:, 1:], -100)  # ignored where masked
    return F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction=reduction)


# ------------------------------------------------------------------------------ generation


@torch.no_grad()
def generate_images(
    model: nn.Module,
    captions: Sequence[str],
    *,
    tokenizer: nn.Module,
    vocab: Vocabulary | None = None,
    bpe: BPE | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Caption → image: 64 ids sampled after [BOS] caption [BOI], only image ids allowed
    (`sampling.generate` with a KV cache), decoded through the image `tokenizer`. Captions of the
    same token length run as one batch. → (images (N, 3, 32, 32) in [0, 1] on the CPU, codes
    (N, 8, 8))."""
    if isinstance(captions, str) or not captions:
        raise TypeError("captions must be a non-empty list of str")
    bpe, param = bpe or course_bpe(), next(model.parameters())
    vocab = vocab or course_vocab(bpe)
    prompts = [torch.tensor([vocab.BOS, *bpe.encode(c), vocab.BOI]) for c in captions]
    codes = torch.empty(len(captions), 64, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    for length in sorted({len(p) for p in prompts}):
        rows = [i for i, p in enumerate(prompts) if len(p) == length]
        ids = generate(
            model,
            torch.stack([prompts[i] for i in rows]).to(param.device),
            64,
            temperature=temperature,
            top_k=top_k,
            allowed=vocab.ranges["image"],
            generator=generator,
        )
        codes[rows] = vocab.image_codes_of(ids.cpu())  # remove the image offset
    codes = codes.view(-1, 8, 8)
    t_param = next(tokenizer.parameters())
    return tokenizer.decode(codes.to(t_param.device)).cpu(), codes


@torch.no_grad()
def caption_images(
    model: nn.Module,
    image_codes: torch.Tensor,
    *,
    vocab: Vocabulary | None = None,
    bpe: BPE | None = None,
    max_len: int = 12,
) -> list[str]:
    """Image → caption: greedy decoding after [BOS] [BOI] image [EOI], with every id but the
    text ids and EOS masked, until EOS (or max_len tokens). image_codes (N, 8, 8) → N str."""
    bpe, param = bpe or course_bpe(), next(model.parameters())
    vocab = vocab or course_vocab(bpe)
    image_codes = _validate.tensor("image_codes", image_codes, shape=("N", 8, 8), dtype=torch.long)
    n = len(image_codes)
    head = torch.tensor([vocab.BOS, vocab.BOI])
    prompt = torch.cat(
        [head.expand(n, 2), vocab.image_ids(image_codes.cpu().flatten(1)),
         torch.full((n, 1), vocab.EOI)], dim=1,
    ).to(param.device)  # fmt: skip
    allowed = vocab.text_mask("EOS", device=param.device)
    cache = model.new_cache()
    logits = model(prompt, cache=cache)[:, -1]
    rows = greedy_decode(
        logits, lambda ids: model(ids, cache=cache)[:, -1], allowed, vocab.EOS, max_len
    )
    return [bpe.decode(row) for row in rows]


def decode_document(
    ids: torch.Tensor,
    *,
    tokenizer: nn.Module,
    video_tokenizer: nn.Module,
    vocab: Vocabulary | None = None,
    bpe: BPE | None = None,
) -> list[str | torch.Tensor]:
    """ids (L,) → the document's items: str for text, an image (3, 32, 32) or a clip
    (8, 3, 32, 32) decoded by the image `tokenizer` and the `video_tokenizer`."""
    bpe = bpe or course_bpe()
    vocab = vocab or course_vocab(bpe)
    items: list[str | torch.Tensor] = []
    for kind, tokens in decode_interleaved(ids, vocab):
        if kind == "text":
            items.append(bpe.decode(tokens.tolist()))
        elif kind == "image":
            p = next(tokenizer.parameters())
            items.append(tokenizer.decode(tokens[None].to(p.device))[0].cpu())
        else:
            p = next(video_tokenizer.parameters())
            items.append(video_tokenizer.decode(tokens[None].to(p.device))[0].cpu())
    return items


def encode_document(
    items: Sequence[str | torch.Tensor],
    *,
    tokenizer: nn.Module,
    video_tokenizer: nn.Module,
    vocab: Vocabulary | None = None,
    bpe: BPE | None = None,
) -> torch.Tensor:
    """A document as a list of items (str | image (3, 32, 32) | clip (8, 3, 32, 32) in [0, 1])
    → ids (L,): text through the BPE, images and clips through their tokenizers."""
    bpe = bpe or course_bpe()
    vocab = vocab or course_vocab(bpe)
    segments = []
    for k, item in enumerate(items):
        if isinstance(item, str):
            segments.append(Segment("text", torch.tensor(bpe.encode(item), dtype=torch.long)))
            continue
        item = _validate.tensor(f"items[{k}]", item, floating=True)
        if item.shape == (3, 32, 32):
            p = next(tokenizer.parameters())
            segments.append(Segment("image", tokenizer.encode(item[None].to(p))[0].cpu()))
        elif item.shape == (8, 3, 32, 32):
            p = next(video_tokenizer.parameters())
            segments.append(Segment("video", video_tokenizer.encode(item[None].to(p))[0].cpu()))
        else:
            raise ValueError(
                f"items[{k}] must be a str, an image (3, 32, 32) or a clip (8, 3, 32, 32), got "
                f"shape {tuple(item.shape)}"
            )
    return encode_interleaved(segments, vocab)
