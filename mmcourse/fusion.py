"""Fusing images and text, measured on Shapes with captions.

- **Late fusion** (CLIP): an image encoder and a text encoder meet only at the very end, as two
  unit vectors in a shared space, trained with the symmetric contrastive loss. Good for retrieval;
  it cannot write text.
- **Medium fusion** (LLaVA): the frozen image encoder's patch tokens pass through a small MLP
  projector into the input space of a causal text decoder, which writes the caption word by word.
- **Early fusion** (Chameleon, chapter 07): the image becomes discrete tokens in the same sequence
  and vocabulary as the text; one transformer models both.

Training both and the rebuilds of data/clip_shapes.pt and data/captioner_shapes.pt live in
`mmcourse.recipes.fusion`; `recipes.load("clip")` and `recipes.load("captioner")` read them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmcourse import _validate
from mmcourse.data import COLORS, POSITIONS, SHAPES, all_captions
from mmcourse.vit import Block, ViT

# ------------------------------------------------------------------------------- word tokenizer

PAD, BOS, EOS = 0, 1, 2
_WORDS = ["a", "in", "the", *COLORS, *SHAPES]
_WORDS += sorted({w for p in POSITIONS for w in p.split()})
VOCAB: list[str] = ["<pad>", "<bos>", "<eos>", *_WORDS]
MAX_LEN = 2 + max(len(c.split()) for c in all_captions())  # <bos> words <eos>: 9


def encode_captions(captions: Sequence[str]) -> torch.Tensor:
    """Captions of the Shapes grammar → ids (N, MAX_LEN) long: <bos> words <eos>, then <pad>."""
    if isinstance(captions, str) or not isinstance(captions, Sequence):
        raise TypeError(f"captions must be a list of str, got {type(captions).__name__}")
    ids = torch.full((len(captions), MAX_LEN), PAD, dtype=torch.long)
    for i, caption in enumerate(captions):
        words = caption.split() if isinstance(caption, str) else None
        if words is None or any(w not in VOCAB[3:] for w in words) or len(words) > MAX_LEN - 2:
            raise ValueError(f"captions[{i}] = {caption!r} is not a caption of the Shapes grammar")
        row = [BOS, *(VOCAB.index(w) for w in words), EOS]
        ids[i, : len(row)] = torch.tensor(row)
    return ids


def decode_captions(ids: torch.Tensor) -> list[str]:
    """ids (N, L) → captions, reading each row up to its first <eos> (special ids skipped)."""
    ids = _validate.tensor("ids", ids, shape=("N", "L"), dtype=torch.long)
    captions = []
    for row in ids.tolist():
        words = []
        for i in row:
            if i == EOS:
                break
            if EOS < i < len(VOCAB):
                words.append(VOCAB[i])
        captions.append(" ".join(words))
    return captions


# ------------------------------------------------------------------ late fusion: CLIP-style


def contrastive_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, temperature: float | torch.Tensor
) -> torch.Tensor:
    """Symmetric contrastive (InfoNCE) loss of N matching pairs: row i of each is one pair.

    logits = norm(image_emb) · norm(text_emb)ᵀ / τ                       # (N, N)
    loss = ½ [CE(logits, arange N) + CE(logitsᵀ, arange N)]   image→text and text→image
    """
    image_emb = _validate.tensor("image_emb", image_emb, shape=("N", "D"), floating=True)
    text_emb = _validate.tensor("text_emb", text_emb, shape=("N", "D"), floating=True)
    if image_emb.shape != text_emb.shape:
        raise ValueError(
            f"image_emb {tuple(image_emb.shape)} and text_emb {tuple(text_emb.shape)} must have "
            "the same shape (N pairs of D-dimensional embeddings)"
        )
    logits = F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T / temperature
    labels = torch.arange(len(logits), device=logits.device)  # pair i is the diagonal
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class TextEncoder(nn.Module):
    """ids (B, L) → text embedding (B, embed_dim): a causal transformer read at <eos>, as CLIP
    does (causal attention makes the padding after <eos> invisible)."""

    def __init__(self, dim: int = 64, depth: int = 2, heads: int = 4, embed_dim: int = 64):
        super().__init__()
        self.embed = nn.Embedding(len(VOCAB), dim)
        self.pos = nn.Parameter(0.02 * torch.randn(1, MAX_LEN, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, embed_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.pos[:, : ids.shape[1]]  # (B, L, D)
        for block in self.blocks:
            x, _ = block(x, causal=True)
        eos = (ids == EOS).int().argmax(dim=1)  # (B,) position of <eos>
        return self.proj(self.norm(x[torch.arange(len(ids), device=ids.device), eos]))  # (B, E)


class CLIP(nn.Module):
    """Two encoders into one space: image (B, 3, 32, 32) and caption ids (B, L) → unit vectors
    (B, embed_dim); the temperature τ = exp(−logit_scale) is learned, starting at 0.07."""

    def __init__(
        self,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        patch_size: int = 8,
        embed_dim: int = 64,
    ):
        super().__init__()
        self.config = {
            "dim": dim, "depth": depth, "heads": heads, "patch_size": patch_size,
            "embed_dim": embed_dim,
        }  # fmt: skip
        self.image_encoder = ViT(
            image_size=32, patch_size=patch_size, channels=3, dim=dim, depth=depth, heads=heads,
            num_classes=embed_dim, pos="sincos",
        )  # fmt: skip
        self.text_encoder = TextEncoder(dim, depth, heads, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_encoder(x), dim=-1)  # (B, E)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_encoder(ids), dim=-1)  # (B, E)

    def loss(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        temperature = self.logit_scale.clamp(max=math.log(100)).exp().reciprocal()
        return contrastive_loss(self.image_encoder(x), self.text_encoder(ids), temperature)


@torch.no_grad()
def retrieve(model: CLIP, x: torch.Tensor, candidates: Sequence[str]) -> list[str]:
    """Image → caption retrieval: for each image (N, 3, 32, 32), the candidate caption whose
    embedding has the largest cosine similarity with the image's (computed on the model's
    device)."""
    x = _validate.tensor("x", x, shape=("N", 3, 32, 32), floating=True)
    dev = model.logit_scale.device
    text = model.encode_text(encode_captions(candidates).to(dev))  # (K, E)
    scores = [model.encode_image(xb.to(dev)) @ text.T for xb in x.split(512)]
    best = torch.cat(scores).argmax(dim=1)
    return [candidates[i] for i in best.tolist()]


def retrieval_top1(model: CLIP, x: torch.Tensor, captions: Sequence[str]) -> float:
    """Fraction of images whose retrieved caption, among all 90 of the grammar, is theirs."""
    found = retrieve(model, x, all_captions())
    return sum(f == c for f, c in zip(found, captions)) / len(captions)


# ----------------------------------------------------------- medium fusion: LLaVA-style


def project(
    vision_tokens: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
) -> torch.Tensor:
    """LLaVA-1.5's MLP projector on the patch tokens of a vision encoder.

    vision_tokens (B, 1 + N, D_v), [CLS] first; w1 (H, D_v), b1 (H,), w2 (D_t, H), b2 (D_t,)
    → (B, N, D_t) = GELU(patches · w1ᵀ + b1) · w2ᵀ + b2 for the N patch tokens ([CLS] dropped).
    """
    vision_tokens = _validate.tensor(
        "vision_tokens", vision_tokens, shape=("B", "1 + N", "D_v"), floating=True
    )
    if vision_tokens.shape[1] < 1:
        raise ValueError("vision_tokens must hold the [CLS] token first, got no tokens")
    d_v = vision_tokens.shape[2]
    w1 = _validate.tensor("w1", w1, shape=("H", d_v), floating=True)
    b1 = _validate.tensor("b1", b1, shape=(w1.shape[0],), floating=True)
    w2 = _validate.tensor("w2", w2, shape=("D_t", w1.shape[0]), floating=True)
    b2 = _validate.tensor("b2", b2, shape=(w2.shape[0],), floating=True)
    patches = vision_tokens[:, 1:]  # (B, N, D_v)  the [CLS] summary is not a place in the image
    return F.linear(F.gelu(F.linear(patches, w1, b1)), w2, b2)  # (B, N, D_t)


class Projector(nn.Module):
    """`project` with its own weights: vision tokens (B, 1 + N, D_v) → (B, N, D_t)."""

    def __init__(self, vision_dim: int, text_dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or text_dim
        self.fc1, self.fc2 = nn.Linear(vision_dim, hidden), nn.Linear(hidden, text_dim)

    def forward(self, vision_tokens: torch.Tensor) -> torch.Tensor:
        return project(
            vision_tokens, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias
        )


class Captioner(nn.Module):
    """A frozen copy of a ViT, a trained projector and a tiny causal decoder that writes captions.

    sequence = [projected patch tokens (N); word embeddings of <bos> w_1 … w_k]   # (B, N + L, D)
    One causal transformer reads it; the logits at the word positions predict the next word.
    """

    def __init__(self, vision: ViT, dim: int = 64, depth: int = 2, heads: int = 4):
        super().__init__()
        self.config = {"vision": vision.config, "dim": dim, "depth": depth, "heads": heads}
        self.vision = copy.deepcopy(vision)  # its own copy: freezing it leaves `vision` alone
        self.vision.requires_grad_(False)
        n = vision.num_patches
        self.projector = Projector(vision.config["dim"], dim)
        self.embed = nn.Embedding(len(VOCAB), dim)
        self.pos = nn.Parameter(0.02 * torch.randn(1, n + MAX_LEN, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, len(VOCAB))

    def train(self, mode: bool = True) -> Captioner:
        super().train(mode)
        self.vision.eval()  # frozen: always in inference mode
        return self

    def image_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, 32, 32) → projected patch tokens (B, N, D), no gradient into the ViT."""
        with torch.no_grad():
            vision_tokens, _ = self.vision.encode(x)  # (B, 1 + N, D_v)
        return self.projector(vision_tokens)

    def forward(self, image_tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """image_tokens (B, N, D), ids (B, L) → next-word logits at the word positions
        (B, L, vocab)."""
        n = image_tokens.shape[1]
        x = torch.cat([image_tokens, self.embed(ids)], dim=1)  # (B, N + L, D)
        x = x + self.pos[:, : x.shape[1]]
        for block in self.blocks:
            x, _ = block(x, causal=True)
        return self.head(self.norm(x[:, n:]))  # (B, L, vocab)

    def loss(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Next-word cross-entropy on the caption only (padding ignored)."""
        logits = self(self.image_tokens(x), ids[:, :-1])  # (B, L − 1, vocab)
        return F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], ignore_index=PAD)

    @torch.no_grad()
    def generate(self, x: torch.Tensor) -> list[str]:
        """Greedy captions for images x (B, 3, 32, 32), written on the model's device."""
        x = _validate.tensor("x", x, shape=("B", 3, 32, 32), floating=True).to(self.pos.device)
        image_tokens = self.image_tokens(x)
        ids = torch.full((len(x), 1), BOS, dtype=torch.long, device=x.device)
        for _ in range(MAX_LEN - 1):
            next_id = self(image_tokens, ids)[:, -1].argmax(dim=-1, keepdim=True)  # (B, 1)
            ids = torch.cat([ids, next_id], dim=1)
        return decode_captions(ids)


def caption_exact_match(model: Captioner, x: torch.Tensor, captions: Sequence[str]) -> float:
    """Fraction of images whose greedy caption equals the reference word for word."""
    written = [c for xb in x.split(512) for c in model.generate(xb)]
    return sum(w == c for w, c in zip(written, captions)) / len(captions)
