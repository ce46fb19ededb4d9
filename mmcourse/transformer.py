"""A small decoder-only transformer (GPT) with a KV cache and an optional explicit attention mask.

    h = tok_emb(idx) + pos_emb(positions)                     # (B, T, D)
    h = h + Attention(LayerNorm(h))                           # pre-norm blocks, n_layer times
    h = h + MLP(LayerNorm(h))
    logits = LayerNorm(h) @ tok_embᵀ                           # (B, T, vocab), tied weights

Attention is causal by default: the token at position i sees positions ≤ i. With a `KVCache`,
`forward` takes only the new tokens; every layer appends their keys and values to the cache and
attends over all cached positions, so generating one token costs one position, not the whole
prefix. Chapters 07 and 08 reuse the module with their own `mask` (e.g. bidirectional inside an
image, causal across), a boolean (T, T_keys) or (B, T, T_keys) tensor, True where attention is
allowed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from mmcourse import _validate

__all__ = ["GPT", "GPTConfig", "KVCache", "cached_attention", "causal_mask", "greedy_decode"]


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int  # the longest sequence (number of positions) the model can see
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    dropout: float = 0.0
    mlp_ratio: int = 4


def causal_mask(t_query: int, t_key: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(t_query, t_key) bool, True where query i may attend to key j. The queries are the last
    t_query of the t_key positions, so query i sits at position p = t_key − t_query + i and sees
    keys j ≤ p (with t_query = t_key this is the usual lower triangle)."""
    offset = t_key - t_query  # positions already in the cache
    q = torch.arange(t_query, device=device)[:, None] + offset  # absolute position of each query
    return torch.arange(t_key, device=device)[None, :] <= q


def cached_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cache: tuple[torch.Tensor, torch.Tensor] | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Attention of T new queries over the cached and the new keys.

    q, k, v (B, H, T, d_head) for the T new positions; cache (k_past, v_past) each
    (B, H, P, d_head) or None. The new keys and values are appended to the cache, and query i
    (absolute position P + i) attends to every key at a position ≤ P + i; an explicit `mask`
    ((T, P + T) or (B, T, P + T) bool, True = allowed) replaces that causal rule.
    Returns out (B, H, T, d_head) and the new cache (k_all, v_all), each (B, H, P + T, d_head).
    """
    if cache is not None:
        k = torch.cat([cache[0], k], dim=2)  # (B, H, P + T, d_head)
        v = torch.cat([cache[1], v], dim=2)
    t, t_all = q.shape[2], k.shape[2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # q·kᵀ / √d_head (B, H, T, P + T)
    if mask is None and t > 1:  # one query at the last position sees every key: nothing to mask
        mask = causal_mask(t, t_all, q.device)  # (T, P + T)
    if mask is not None:
        mask = mask[:, None] if mask.dim() == 3 else mask  # (B, 1, T, P + T): same for all heads
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1) @ v, (k, v)


class KVCache:
    """The keys and values of every layer for the positions seen so far, (B, H, P, d_head) each.

    `GPT.forward(idx, cache=cache)` reads and extends it; `len(cache)` is P, the position the
    next token will take. All rows of a batch share P: conditional and unconditional rows of
    classifier-free guidance stay aligned position for position."""

    def __init__(self, n_layer: int):
        self.layers: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layer

    def __len__(self) -> int:
        first = self.layers[0]
        return 0 if first is None else first[0].shape[2]


class Attention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
        mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_head, d // self.n_head).unbind(2)
        q, k, v = (y.transpose(1, 2) for y in (q, k, v))  # (B, H, T, d_head)
        out, cache = cached_attention(q, k, v, cache, mask)
        out = out.transpose(1, 2).reshape(b, t, d)  # (B, T, D)
        return self.dropout(self.proj(out)), cache


class Block(nn.Module):
    """Pre-norm block: x + Attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        d = config.d_model
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(config)
        self.mlp = nn.Sequential(
            nn.Linear(d, config.mlp_ratio * d),
            nn.GELU(),
            nn.Linear(config.mlp_ratio * d, d),
            nn.Dropout(config.dropout),
        )

    def forward(self, x, cache, mask, mlp=None):
        """x (B, T, D) → (B, T, D) and the layer's cache; `mlp`, when given, runs in place of
        the block's own MLP on LN(x)."""
        out, cache = self.attn(self.norm1(x), cache, mask)
        x = x + out
        return x + (mlp or self.mlp)(self.norm2(x)), cache


class GPT(nn.Module):
    """Decoder-only transformer: idx (B, T) token ids → logits (B, T, vocab_size)."""

    def __init__(self, config: GPTConfig | None = None, **kwargs: int | float):
        super().__init__()
        config = config or GPTConfig(**kwargs)
        _validate.positive_int("vocab_size", config.vocab_size)
        _validate.positive_int("block_size", config.block_size)
        if config.d_model % config.n_head:
            raise ValueError(
                f"d_model must be divisible by n_head, got {config.d_model} and {config.n_head}"
            )
        self.cfg = config
        self.config = asdict(config)  # what checkpoints store
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.block_size, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = nn.LayerNorm(config.d_model)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: scale the residual projections
            if name.endswith(("proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def new_cache(self) -> KVCache:
        return KVCache(self.cfg.n_layer)

    def forward(
        self,
        idx: torch.Tensor | None = None,
        cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
        *,
        embeddings: torch.Tensor | None = None,
        mlp: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
        return_hidden: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """idx (B, T) long → logits (B, T, vocab_size).

        cache: a KVCache (from `new_cache()`); idx then holds only the new tokens, placed at
        positions len(cache) … len(cache) + T − 1, and the cache is extended in place.
        mask: optional bool (T, P + T) or (B, T, P + T), True where attention is allowed;
        None means causal.
        embeddings: (B, T, D) float, given in place of idx: the input vectors before the
        position embedding (chapter 08 embeds image patches itself).
        mlp: optional `mlp(layer, z)` → (B, T, D), run in place of block `layer`'s MLP on its
        normalized input z (B, T, D) (chapter 08 routes image positions to their own MLPs).
        return_hidden: return (logits, h) with h (B, T, D) the final normalized hidden states."""
        if (idx is None) == (embeddings is None):
            raise ValueError("give exactly one of idx (token ids) and embeddings")
        if embeddings is None:
            idx = _validate.tensor("idx", idx, shape=("B", "T"), dtype=torch.long)
            embeddings = self.tok_emb(idx)  # (B, T, D)
        else:
            shape = ("B", "T", self.cfg.d_model)
            embeddings = _validate.tensor("embeddings", embeddings, shape=shape, floating=True)
        start = len(cache) if cache is not None else 0
        t = embeddings.shape[1]
        if start + t > self.cfg.block_size:
            raise ValueError(
                f"sequence too long: positions up to {start + t} for block_size "
                f"{self.cfg.block_size}"
            )
        if mask is not None:
            mask = _validate.tensor("mask", mask, dtype=torch.bool)
            if mask.shape[-2:] != (t, start + t) or mask.dim() not in (2, 3):
                raise ValueError(
                    f"mask must have shape ({t}, {start + t}) or (B, {t}, {start + t}), got "
                    f"{tuple(mask.shape)}"
                )
        positions = torch.arange(start, start + t, device=embeddings.device)  # after the cache
        h = self.drop(embeddings + self.pos_emb(positions))  # (B, T, D)
        for i, block in enumerate(self.blocks):
            layer_mlp = None if mlp is None else functools.partial(mlp, i)
            h, layer_cache = block(h, None if cache is None else cache.layers[i], mask, layer_mlp)
            if cache is not None:
                cache.layers[i] = layer_cache
        h = self.norm(h)
        logits = h @ self.tok_emb.weight.T  # (B, T, vocab), tied embeddings
        return (logits, h) if return_hidden else logits


@torch.no_grad()
def greedy_decode(
    logits: torch.Tensor,
    step: Callable[[torch.Tensor], torch.Tensor],
    allowed: torch.Tensor,
    stop: int,
    max_len: int,
) -> list[list[int]]:
    """Greedy decoding of N rows from their next-id logits (N, V): each step takes the most
    likely allowed id (allowed (V,) bool, on the logits' device); a row that has emitted `stop`
    keeps `stop`; `step(ids (N, 1))` feeds the chosen ids to the model (through its KV cache)
    and returns the next logits (N, V). Ends when every row has stopped or after max_len ids
    → each row's ids before its first `stop`."""
    n = len(logits)
    out = torch.full((n, max_len), stop, dtype=torch.long)
    done = torch.zeros(n, dtype=torch.bool)
    for i in range(max_len):
        token = logits.float().masked_fill(~allowed, float("-inf")).argmax(-1)  # (N,)
        token_cpu = token.cpu().masked_fill(done, stop)
        out[:, i] = token_cpu
        done |= token_cpu == stop
        if bool(done.all()) or i == max_len - 1:
            break
        logits = step(token[:, None])  # (N, V)
    return [row[: row.index(stop)] if stop in row else row for row in out.tolist()]
