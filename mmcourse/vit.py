"""A small Vision Transformer: patch embedding, [CLS] token, pre-norm blocks, attention maps.

    tokens = [CLS; PatchEmbed(x) + pos]                       # (B, 1 + N, D)
    tokens = tokens + Attention(LayerNorm(tokens))            # pre-norm: the residual stream
    tokens = tokens + MLP(LayerNorm(tokens))                  #   is never normalised in place
    logits = head(LayerNorm(tokens)[:, 0])                    # classify from [CLS]

`Block` and `Attention` take an optional causal mask, so the text models of `mmcourse.fusion`
reuse them. Training the digits classifier and the rebuild of data/vit_digits.pt live in
`mmcourse.recipes.vit`; `recipes.load("vit")` reads the shipped one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from mmcourse import _validate
from mmcourse.patches import PatchEmbed, sincos_2d


class Attention(nn.Module):
    """Multi-head self-attention that also returns its attention maps (B, heads, T, T)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, causal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = (y.transpose(1, 2) for y in (q, k, v))  # (B, heads, T, d_head)
        scores = q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)  # (B, heads, T, T)
        if causal:  # token i sees tokens ≤ i only
            future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        attn = scores.softmax(dim=-1)  # softmax(q·kᵀ / √d_head)
        out = (attn @ v).transpose(1, 2).reshape(b, t, d)  # (B, T, D)
        return self.proj(out), attn


class Block(nn.Module):
    """Pre-norm transformer block: x + Attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim)
        )

    def forward(self, x: torch.Tensor, causal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        out, attn = self.attn(self.norm1(x), causal)
        x = x + out
        return x + self.mlp(self.norm2(x)), attn


@dataclass
class ViTConfig:
    image_size: int = 8
    patch_size: int = 2
    channels: int = 1
    dim: int = 64
    depth: int = 3
    heads: int = 4
    mlp_ratio: int = 2
    num_classes: int = 10
    pos: str = "sincos"  # "sincos" (fixed) or "learned"


class ViT(nn.Module):
    """x (B, C, S, S) → logits (B, num_classes), read from the [CLS] token. Keyword arguments
    are the fields of `ViTConfig` (defaults: the digits classifier)."""

    def __init__(self, **config: int | str):
        super().__init__()
        c = ViTConfig(**config)
        self.config = asdict(c)
        if c.pos not in ("learned", "sincos"):
            raise ValueError(f"pos must be 'learned' or 'sincos', got {c.pos!r}")
        if c.image_size % c.patch_size:
            raise ValueError(
                f"image_size {c.image_size} is not divisible by patch_size {c.patch_size}"
            )
        side = c.image_size // c.patch_size
        self.num_patches = side * side
        self.patch_embed = PatchEmbed(c.patch_size, c.channels, c.dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, c.dim))
        if c.pos == "learned":
            self.pos = nn.Parameter(0.02 * torch.randn(1, self.num_patches, c.dim))
        else:
            self.register_buffer("pos", sincos_2d(side, side, c.dim)[None], persistent=False)
        self.blocks = nn.ModuleList(Block(c.dim, c.heads, c.mlp_ratio) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.dim)
        self.head = nn.Linear(c.dim, c.num_classes)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x (B, C, S, S) → (tokens (B, 1 + N, D) after the final norm, [CLS] first; the
        attention maps of every block, each (B, heads, 1 + N, 1 + N))."""
        c = self.config
        x = _validate.tensor("x", x, shape=("B", c["channels"], c["image_size"], c["image_size"]))
        tokens = self.patch_embed(x) + self.pos  # (B, N, D)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], dim=1)  # (B, 1 + N, D)
        maps = []
        for block in self.blocks:
            tokens, attn = block(tokens)
            maps.append(attn)
        return self.norm(tokens), maps

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled penultimate features: x (B, C, S, S) → the [CLS] token after the final
        norm (B, D), what the head reads (chapter 10 measures generated digits with them)."""
        tokens, _ = self.encode(x)
        return tokens[:, 0]  # (B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))  # (B, num_classes)

    @torch.no_grad()
    def cls_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Where [CLS] looks in the last block, averaged over heads: x (B, C, S, S) →
        (B, S/P, S/P), each map summing to ≤ 1 over the patches (the rest is on [CLS])."""
        _, maps = self.encode(x)
        side = self.config["image_size"] // self.config["patch_size"]
        return maps[-1][:, :, 0, 1:].mean(dim=1).reshape(len(x), side, side)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (only those with requires_grad when trainable_only)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of images whose argmax logit is the label (computed on the model's device)."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    correct = sum(
        (model(xb.to(dev)).argmax(-1) == yb.to(dev)).sum()
        for xb, yb in zip(x.split(512), labels.split(512))
    )
    model.train(was_training)
    return int(correct) / len(labels)
