"""Chapter 12's recipe: a memory of Shapes pairs, retrieval-augmented documents, the models
the chapter compares, and their held-out evaluation, in both directions.

held out  HELD_OUT colour × shape pairs (every position) never appear among the training
          targets; the memory still holds them, so only retrieval can bring them in
memory    `memory(n, seed)`: Shapes pairs embedded by the shipped CLIP (image and caption unit
          vectors) with the shipped tokenizer's codes, cached under data/cache/
documents `rag_document`: retrieved pairs as interleaved context before the query,
          [BOS] ([BOI] ctx image [EOI] ctx caption)* caption [BOI] image [EOI] [EOS] (or the
          query's image first, for image → caption), scored only on the query; `rag_documents`
          retrieves the context of every training pair (by its caption or its own image
          vector, the pair itself excluded), optionally in a seeded CONTEXT_MIX of retrieved,
          random and no context; `RAGLoader` pads them
training  `new_model` (chapter 07's GPT, block BLOCK_SIZE) and `train` on RAG documents; per
          direction (PAIRS) a RAG model trains from scratch on `training_documents(mem, K, …)`
          and a baseline on the same pairs without context
measures  caption → image: `sample_heldout` / `evaluate_heldout` on the held-out captions with
          retrieved, random or no context, read by the judge; image → caption:
          `caption_heldout` / `evaluate_heldout_captions` on fresh renders of them
          (`render_captions`), read by `read_captions`; `recall`; the relevance gate
          `fit_gate` for either kind of query
rebuild   `experiment` / `rebuild` (`python -m mmcourse.train retrieval`, `… retrieval_captions`):
          a direction's two models from their seed and every held-out score, on one thread
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn

from mmcourse import _validate, distributed
from mmcourse.bpe import BPE, course_bpe
from mmcourse.checkpoints import Weights, cached
from mmcourse.data import (
    COLORS,
    SHAPES,
    ShapesDataset,
    all_captions,
    caption_to_labels,
    parse_caption,
    render,
)
from mmcourse.env import device as default_device
from mmcourse.env import one_thread, synchronize, to_device
from mmcourse.fusion import CLIP, encode_captions
from mmcourse.recipes import fusion as fusion_recipe
from mmcourse.recipes import judge as judge_recipe
from mmcourse.recipes import tokenizer as tokenizer_recipe
from mmcourse.recipes import unified as unified_recipe
from mmcourse.retrieval import recall_at_k, top_k
from mmcourse.sampling import generate
from mmcourse.trainer import TrainResult, adamw_cosine, fit
from mmcourse.transformer import GPT, GPTConfig, greedy_decode
from mmcourse.unified import lm_loss
from mmcourse.vocab import Segment, Vocabulary, course_vocab, encode_interleaved, pad_batch


def _gpt(config: dict) -> GPT:
    return GPT(GPTConfig(**config))


# Each direction's two models, the RAG model and its no-context baseline, with the command
# that rebuilds them; float16 in git like chapter 07's.
PAIRS = {
    "caption_image": ("retrieval_rag", "retrieval_baseline"),
    "image_caption": ("retrieval_rag_captions", "retrieval_baseline_captions"),
}
REBUILD_TARGETS = {"caption_image": "retrieval", "image_caption": "retrieval_captions"}
WEIGHTS = {
    name: Weights(f"{name}.pt", GPT, command=f"python -m mmcourse.train {REBUILD_TARGETS[d]}",
                  build=_gpt, half=True)
    for d, names in PAIRS.items() for name in names
}  # fmt: skip

# One pair per colour, each shape twice: 6 of the 18 colour × shape pairs, 30 of the 90
# captions (all five positions of each pair).
HELD_OUT: tuple[tuple[str, str], ...] = (
    ("red", "circle"),
    ("green", "square"),
    ("blue", "triangle"),
    ("yellow", "circle"),
    ("purple", "square"),
    ("cyan", "triangle"),
)
_HELD = torch.tensor([[(c, s) in HELD_OUT for s in SHAPES] for c in COLORS])  # (colours, shapes)
DIRECTIONS = ("caption_image", "image_caption")
QUERY_SEED = 10_000  # the held-out query images are fresh renders, not the memory's draws
BLOCK_SIZE = 240  # one context pair and the query: ≤ 2 × (66 + caption) + 3 ids
MODEL_CONFIG = {"block_size": BLOCK_SIZE}  # chapter 07's default_config otherwise
MEMORY_SIZE = 20_000  # the memory: chapter 07's training images (seed 0)
_CHUNK = 1024  # queries retrieved at once
CONTEXT_KINDS = ("retrieved", "random", "none")
# Each pair's training, in its one direction: the RAG model's documents with K retrieved pairs,
# the baseline's without context, STEPS steps of BATCH from scratch. Caption → image: the pairs
# whole in CONTEXT_MIX (random pairs teach the model to check the context, documents without
# any keep it able to draw alone). Image → caption (chapter 12, section 6, measured): the pairs'
# captions alone in CAPTION_CONTEXT_MIX (the gate checks relevance, not the model) and the
# query image's codes dropped at a uniform random rate per document, so that copying the
# retrieved caption is learned as the surer way.
K = 1
CONTEXT_MIX = {"retrieved": 0.6, "random": 0.2, "none": 0.2}
CAPTION_CONTEXT_MIX = {"retrieved": 0.8, "none": 0.2}
TRAINING = {
    "caption_image": {"mix": CONTEXT_MIX, "context_images": True, "query_dropout": False},
    "image_caption": {"mix": CAPTION_CONTEXT_MIX, "context_images": False,
                      "query_dropout": True},
}  # fmt: skip
GATE_SAMPLES = 50  # random memory images per training query when the gate is set
GATE_RENDERS = 5  # fresh images of each training caption when the image gate is set
STEPS, BATCH, LR = 3000, 16, 2e-3


def is_held_out(labels: torch.Tensor) -> torch.Tensor:
    """labels (N, 3) long (colour, shape, position) → (N,) bool: the pair is held out."""
    labels = _validate.tensor("labels", labels, shape=("N", 3), dtype=torch.long)
    held = _HELD.to(labels.device)
    return held[labels[:, 0], labels[:, 1]]


def held_out_captions() -> list[str]:
    """The 30 captions of the held-out pairs, in `all_captions()` order."""
    captions = all_captions()
    labels = torch.stack([caption_to_labels(c) for c in captions])
    return [c for c, h in zip(captions, is_held_out(labels).tolist()) if h]


def render_captions(captions: Sequence[str], seed: int = 0) -> torch.Tensor:
    """Fresh Shapes images of the given captions (size and place jitter seeded by QUERY_SEED +
    seed, so never the memory's own draws) → (N, 3, 32, 32) on the CPU: image → caption's
    held-out queries and the image gate's training queries."""
    if isinstance(captions, str) or not captions:
        raise TypeError("captions must be a non-empty list of str")
    labels = torch.stack([caption_to_labels(c) for c in captions])  # (N, 3)
    return render(labels, torch.Generator().manual_seed(QUERY_SEED + seed))


# ---------------------------------------------------------------------------------- memory


class Memory(NamedTuple):
    image_emb: torch.Tensor  # (N, E) CLIP image unit vectors
    text_emb: torch.Tensor  # (N, E) CLIP caption unit vectors
    codes: torch.Tensor  # (N, 8, 8) long, the image tokenizer's codes
    captions: list[str]  # N captions
    labels: torch.Tensor  # (N, 3) long (colour, shape, position)


@torch.no_grad()
def memory(n: int = 20_000, seed: int = 0) -> Memory:
    """Shapes pairs of `seed` embedded by the shipped CLIP and tokenized by the shipped image
    tokenizer, computed once on the CPU and cached under data/cache/ (git-ignored). With the
    default n and seed the pairs are chapter 07's training images."""
    n = _validate.positive_int("n", n)
    data = ShapesDataset(n=n, seed=seed)

    def make() -> dict[str, torch.Tensor]:
        clip = fusion_recipe.WEIGHTS["clip"].load(device="cpu")
        tokenizer = tokenizer_recipe.WEIGHTS["tokenizer"].load(device="cpu")
        return {
            "image_emb": torch.cat([clip.encode_image(x) for x in data.images.split(500)]),
            "text_emb": embed_captions(data.captions, clip),
            "codes": torch.cat([tokenizer.encode(x) for x in data.images.split(500)]),
        }

    def valid(v: object) -> bool:
        return isinstance(v, dict) and all(
            isinstance(v.get(key), torch.Tensor) and len(v[key]) == n
            for key in ("image_emb", "text_emb", "codes")
        )

    stored = cached(f"retrieval_memory_{n}_{seed}.pt", make, valid)
    return Memory(stored["image_emb"], stored["text_emb"], stored["codes"], data.captions,
                  data.labels)  # fmt: skip


@torch.no_grad()
def embed_captions(captions: Sequence[str], clip: CLIP | None = None) -> torch.Tensor:
    """Captions → (N, E) CLIP caption unit vectors on the CPU (the shipped CLIP unless given);
    each distinct caption is encoded once."""
    if isinstance(captions, str) or not captions:
        raise TypeError("captions must be a non-empty list of str")
    clip = clip or fusion_recipe.WEIGHTS["clip"].load(device="cpu")
    distinct = list(dict.fromkeys(captions))
    dev = clip.logit_scale.device
    emb = clip.encode_text(encode_captions(distinct).to(dev)).cpu()  # (K, E)
    index = torch.tensor([distinct.index(c) for c in captions])
    return emb[index]


@torch.no_grad()
def embed_images(images: torch.Tensor, clip: CLIP | None = None) -> torch.Tensor:
    """Images (N, 3, 32, 32) in [0, 1] → (N, E) CLIP image unit vectors on the CPU (the shipped
    CLIP unless given)."""
    images = _validate.tensor("images", images, shape=("N", 3, 32, 32), floating=True)
    clip = clip or fusion_recipe.WEIGHTS["clip"].load(device="cpu")
    dev = clip.logit_scale.device
    return torch.cat([clip.encode_image(x.to(dev)).cpu() for x in images.split(500)])


def subset(mem: Memory, rows: torch.Tensor) -> Memory:
    """The memory's rows where `rows` (N,) bool is True (or at the given indices)."""
    index = rows.nonzero().flatten() if rows.dtype == torch.bool else rows
    return Memory(mem.image_emb[index], mem.text_emb[index], mem.codes[index],
                  [mem.captions[i] for i in index.tolist()], mem.labels[index])  # fmt: skip


def training_memory(mem: Memory) -> Memory:
    """The memory without its held-out pairs: what the training documents retrieve from."""
    return subset(mem, ~is_held_out(mem.labels))


def relevant(mem: Memory, captions: Sequence[str]) -> torch.Tensor:
    """(Q, N) bool: memory pair j is relevant to query i when it has query i's caption."""
    ids = {c: k for k, c in enumerate(all_captions())}
    keys = torch.tensor([ids[c] for c in mem.captions])  # (N,)
    queries = torch.tensor([ids[c] for c in captions])  # (Q,)
    return queries[:, None] == keys[None, :]


def recall(
    mem: Memory,
    captions: Sequence[str],
    ks: Sequence[int] = (1, 4),
    images: torch.Tensor | None = None,
) -> dict[str, float]:
    """Retrieval in the memory against its image vectors, by each caption's CLIP vector (caption
    → image) or, given `images` (N, 3, 32, 32) of those captions, by each image's (image →
    image): recall@k for each k = share of queries with at least one memory image of their
    caption among their top k."""
    queries = embed_captions(captions) if images is None else embed_images(images)  # (Q, E)
    found = top_k(queries, mem.image_emb, max(ks))
    truth = relevant(mem, captions)
    return {f"recall_at_{k}": recall_at_k(found.indices[:, :k], truth) for k in ks}


# ------------------------------------------------------------------------------- documents


def rag_document(
    context: Sequence[tuple[torch.Tensor | None, str]],
    caption: str,
    codes: torch.Tensor,
    vocab: Vocabulary | None = None,
    bpe: BPE | None = None,
    *,
    direction: str = "caption_image",
) -> tuple[torch.Tensor, torch.Tensor]:
    """A retrieval-augmented document and its loss mask → (ids (L,), scored (L,) bool):

        [BOS] ([BOI] ctx image [EOI] ctx caption)*  caption [BOI] image [EOI]  [EOS]

    for direction "caption_image" (the query's image follows its caption), or with the query
    written [BOI] image [EOI] caption for "image_caption". context: (codes (8, 8), caption)
    pairs, possibly none; codes None puts the caption alone. `scored[t]` is True where ids[t]
    is a target that counts, as `unified.lm_loss` reads a loss mask: what the model is asked to
    write, never the retrieved context (the model learns to use it, not to write it). For
    caption → image that is the query and the final EOS; for image → caption the caption and
    EOS (the query's image is the model's input, as when it captions)."""
    bpe = bpe or course_bpe()
    vocab = vocab or course_vocab(bpe)
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    segments = _context_segments(context, bpe)
    query = [_text(caption, bpe, "caption"), Segment("image", codes)]
    if direction == "image_caption":
        query.reverse()
    given = segments + query[:1] if direction == "image_caption" else segments
    head = encode_interleaved(given, vocab)[:-1]  # [BOS] what the model is given, no EOS
    ids = encode_interleaved(segments + query, vocab)
    scored = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
    scored[len(head) :] = True  # what the model writes, and EOS
    return ids, scored


def _context_segments(context: object, bpe: BPE) -> list[Segment]:
    """(codes (8, 8) | None, caption) pairs → their segments: image then caption, or the
    caption alone where codes is None."""
    if isinstance(context, str | torch.Tensor) or not isinstance(context, Sequence):
        raise TypeError(f"context must be a list of (codes, caption) pairs, got {context!r:.60}")
    segments = []
    for k, pair in enumerate(context):
        if not (
            isinstance(pair, tuple)
            and len(pair) == 2
            and isinstance(pair[0], torch.Tensor | None)
            and isinstance(pair[1], str)
        ):
            raise TypeError(
                f"context[{k}] must be a (codes (8, 8) or None, caption) pair, got {pair!r:.60}"
            )
        if pair[0] is not None:
            segments.append(Segment("image", pair[0]))
        segments.append(_text(pair[1], bpe, f"context[{k}] caption"))
    return segments


def _text(caption: object, bpe: BPE, name: str) -> Segment:
    if not isinstance(caption, str) or not caption:
        raise TypeError(f"{name} must be a non-empty str, got {caption!r:.60}")
    return Segment("text", torch.tensor(bpe.encode(caption), dtype=torch.long))


def retrieve_context(
    mem: Memory, queries: torch.Tensor, k: int, exclude: torch.Tensor | None = None
) -> list[list[tuple[torch.Tensor, str]]]:
    """Each query vector (Q, E) → its k best memory pairs by cosine against the memory's image
    vectors (`retrieval.top_k`), best first, as (codes, caption) context lists; `exclude` (Q,)
    a memory row each query must not retrieve (−1: none)."""
    return _pairs(mem, _retrieved_rows(mem, queries, k, exclude))


def random_context(
    mem: Memory, n: int, k: int, seed: int = 0
) -> list[list[tuple[torch.Tensor, str]]]:
    """The control: n context lists of k memory pairs drawn uniformly (seeded)."""
    n, k = _validate.positive_int("n", n), _validate.positive_int("k", k)
    return _pairs(mem, _random_rows(mem, n, k, seed))


def _retrieved_rows(
    mem: Memory, queries: torch.Tensor, k: int, exclude: torch.Tensor | None = None
) -> torch.Tensor:
    """(Q, k) memory rows of each query's k best pairs, best first."""
    rows = []
    for start in range(0, len(queries), _CHUNK):  # bounds the (chunk, N) similarity matrix
        part = None if exclude is None else exclude[start : start + _CHUNK]
        rows.append(top_k(queries[start : start + _CHUNK], mem.image_emb, k, part).indices)
    return torch.cat(rows) if rows else torch.empty(0, k, dtype=torch.long)


def _random_rows(mem: Memory, n: int, k: int, seed: int) -> torch.Tensor:
    """(n, k) memory rows drawn uniformly (seeded)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(len(mem.captions), (n, k), generator=g)


def _pairs(
    mem: Memory, rows: torch.Tensor, keep: torch.Tensor | None = None
) -> list[list[tuple[torch.Tensor, str]]]:
    """Memory rows (Q, k) → (codes, caption) context lists; where keep (Q,) is False, []."""
    keep = torch.ones(len(rows), dtype=torch.bool) if keep is None else keep
    return [[(mem.codes[j], mem.captions[j]) for j in row] if ok else []
            for row, ok in zip(rows.tolist(), keep.tolist())]  # fmt: skip


def context_modes(n: int, mix: Mapping[str, float], seed: int = 0) -> torch.Tensor:
    """n draws (seeded) of a context mode from `mix` ({"retrieved", "random", "none"} → shares
    summing to 1) → (n,) long indices into `CONTEXT_KINDS`: which context each training
    document gets, so that one model learns all three."""
    n = _validate.positive_int("n", n)
    if not isinstance(mix, Mapping) or not set(mix) <= set(CONTEXT_KINDS) or not mix:
        raise ValueError(f"mix must map some of {CONTEXT_KINDS} to shares, got {mix!r:.80}")
    shares = [_validate.number(f"mix[{m!r}]", mix.get(m, 0.0), 0, 1) for m in CONTEXT_KINDS]
    if abs(sum(shares) - 1) > 1e-6:
        raise ValueError(f"mix shares must sum to 1, got {sum(shares):.4f}")
    g = torch.Generator().manual_seed(seed)
    return torch.multinomial(torch.tensor(shares), n, replacement=True, generator=g)  # (n,)


def rag_documents(
    mem: Memory,
    *,
    k: int = 1,
    directions: Sequence[str] = ("caption_image",),
    retrieve_by: str = "caption",
    mix: Mapping[str, float] | None = None,
    seed: int = 0,
    context_images: bool = True,
    query_dropout: bool = False,
    vocab: Vocabulary | None = None,
    bpe: BPE | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Training documents: for every pair of `mem` (pass `training_memory(...)`: no held-out
    pair) and each direction, its k retrieved pairs from the same memory, the pair itself
    excluded, against the memory's image vectors. caption_image documents retrieve by the
    caption's CLIP vector (retrieve_by "caption", as at test time) or by the pair's own image
    vector ("image": its nearest neighbours, the same caption drawn with nearly the same size
    and place, so the context is worth copying); image_caption documents by the image's.
    k = 0: no context (the baseline). `mix` (e.g. CONTEXT_MIX) gives each document, by
    `context_modes(…, seed)` (one draw per direction in turn), retrieved context, k uniformly
    random memory pairs (seeded) or none; without it every document gets retrieved context.
    context_images False puts each context pair's caption alone. query_dropout (image_caption
    documents with k > 0): each document's query codes are replaced by uniformly random codes
    at a rate drawn uniformly in [0, 1) (seeded), from a clean image to noise, so that the
    context caption is sometimes the only sure source of the answer."""
    bpe = bpe or course_bpe()
    vocab = vocab or course_vocab(bpe)
    k = _validate.integer("k", k, low=0)
    if retrieve_by not in ("caption", "image"):
        raise ValueError(f"retrieve_by must be 'caption' or 'image', got {retrieve_by!r}")
    if any(d not in DIRECTIONS for d in directions):
        raise ValueError(f"directions must be among {DIRECTIONS}, got {directions!r}")
    n = len(mem.captions)
    modes = [torch.zeros(n, dtype=torch.long)] * len(directions)  # all retrieved
    if mix is not None and k > 0:
        drawn = context_modes(n * len(directions), mix, seed)
        modes = list(drawn.view(len(directions), n))
    g = torch.Generator().manual_seed(seed)
    docs = []
    for direction, mode in zip(directions, modes):
        contexts: list[list[tuple[torch.Tensor | None, str]]] = [[] for _ in range(n)]
        if k > 0:
            by_caption = direction == "caption_image" and retrieve_by == "caption"
            queries = mem.text_emb if by_caption else mem.image_emb  # (N, E)
            rows = (mode == 0).nonzero().flatten()
            found = retrieve_context(mem, queries[rows], k, exclude=rows) if len(rows) else []
            picks = torch.randint(n, (n, k), generator=g)  # the random pairs
            for i, ctx in zip(rows.tolist(), found):
                contexts[i] = ctx
            for i in (mode == 1).nonzero().flatten().tolist():
                contexts[i] = [(mem.codes[j], mem.captions[j]) for j in picks[i].tolist()]
        if not context_images:
            contexts = [[(None, c) for _, c in ctx] for ctx in contexts]
        codes = mem.codes
        if query_dropout and k > 0 and direction == "image_caption":
            codes = _drop_codes(codes, vocab.image_codes, g)
        docs += [rag_document(ctx, c, x, vocab, bpe, direction=direction)
                 for ctx, c, x in zip(contexts, mem.captions, codes)]  # fmt: skip
    return docs


def _drop_codes(codes: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """codes (N, 8, 8) → a copy with each image's codes replaced by random codes in [0, size)
    at its own rate r ~ U[0, 1): query dropout."""
    rate = torch.rand(len(codes), 1, 1, generator=g)  # (N, 1, 1)
    hit = torch.rand(codes.shape, generator=g) < rate  # (N, 8, 8)
    noise = torch.randint(size, codes.shape, generator=g)
    return torch.where(hit, noise, codes)


class RAGLoader:
    """Endless padded batches of RAG documents drawn uniformly (seeded) → (ids (B, L), loss
    mask (B, L) bool: the documents' `scored`, False on padding)."""

    def __init__(
        self,
        documents: Sequence[tuple[torch.Tensor, torch.Tensor]],
        vocab: Vocabulary | None = None,
        *,
        batch_size: int = 16,
        seed: int = 0,
    ):
        if not documents:
            raise ValueError("documents is empty: need at least one (ids, scored) pair")
        self.documents = list(documents)
        self.vocab = vocab or course_vocab()
        self.batch_size = _validate.positive_int("batch_size", batch_size)
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        picks = torch.randint(len(self.documents), (self.batch_size,), generator=self.generator)
        docs = [self.documents[i] for i in picks.tolist()]
        ids, real = pad_batch([d[0] for d in docs], self.vocab)  # (B, L)
        scored = torch.zeros_like(real)
        for row, (_, doc_scored) in enumerate(docs):
            scored[row, : len(doc_scored)] = doc_scored
        return ids, real & scored

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next_batch()


# -------------------------------------------------------------------------------- training


def new_model(seed: int = 0) -> GPT:
    """A fresh chapter 07 GPT (default_config, block size BLOCK_SIZE), initialised from `seed`."""
    torch.manual_seed(seed)
    return GPT(unified_recipe.default_config(**MODEL_CONFIG))


def save_model(model: nn.Module, path: Path | str) -> Path:
    """Write a GPT's weights (float16) and config to `path`; return the path."""
    return WEIGHTS["retrieval_rag"].save(model, path=Path(path))


def load_model(path: Path | str, device: torch.device | str | None = None) -> nn.Module:
    """The GPT written by `save_model` at `path`, in eval mode on `device`."""
    return WEIGHTS["retrieval_rag"].load(path, device)


def train(
    model: nn.Module,
    loader: RAGLoader,
    *,
    steps: int = 300,
    lr: float = LR,
    seed: int = 0,
    progress: bool = True,
    device: torch.device | str | None = None,
) -> TrainResult:
    """A copy of `model` (fresh from `new_model` or already trained) trained on the loader's
    documents: next-token cross-entropy on the scored targets only (`unified.lm_loss` with the
    documents' loss mask), AdamW with warm-up and cosine decay, gradient clipping at 1. `model`
    itself is left unchanged. Under torchrun the copy trains with DDP (give each rank its
    loader: batch `distributed.local_batch(b)`, seed `distributed.rank_seed(s)`)."""
    if not isinstance(loader, RAGLoader):
        raise TypeError(f"loader must be a RAGLoader, got {type(loader).__name__}")
    steps = _validate.positive_int("steps", steps)
    dev = torch.device(device) if device is not None else default_device()
    torch.manual_seed(seed)
    trained = copy.deepcopy(model).float().to(dev).train()
    net = distributed.wrap(trained)  # DDP under torchrun, else the model itself
    opt, schedule = adamw_cosine(trained, lr, steps)

    def step_loss(step: int) -> torch.Tensor:
        ids, mask = loader.next_batch()  # host: padded on the CPU
        return lm_loss(net, to_device(ids, dev), to_device(mask, dev))

    return fit(trained, step_loss, steps=steps, optimizer=opt, schedule=schedule, clip=1.0,
               progress=progress)  # fmt: skip


# ------------------------------------------------------------------------------ evaluation


@torch.no_grad()
def gate_scores(
    mem: Memory, samples: int = GATE_SAMPLES, seed: int = 0, query: str = "caption"
) -> tuple[torch.Tensor, torch.Tensor]:
    """What the gate is set from, on the training captions alone (no held-out caption is
    seen), as queries of kind `query`: "caption" (each training caption's CLIP vector) or
    "image" (GATE_RENDERS fresh renders of each, `render_captions(…, seed)`) → (the cosine of
    each query with its best retrieved memory image (C,), the cosines of `samples` seeded
    random memory images of another caption with each query (M,))."""
    samples = _validate.positive_int("samples", samples)
    if query not in ("caption", "image"):
        raise ValueError(f"query must be 'caption' or 'image', got {query!r}")
    held = set(held_out_captions())
    captions = [c for c in all_captions() if c not in held]
    if query == "image":
        captions = captions * GATE_RENDERS
        queries = embed_images(render_captions(captions, seed))  # (C, E)
    else:
        queries = embed_captions(captions)  # (C, E)
    best = top_k(queries, mem.image_emb, 1).scores[:, 0]  # (C,)
    g = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(mem.captions), (len(captions), samples), generator=g)  # (C, S)
    cos = (queries[:, None, :] * mem.image_emb[picks]).sum(-1)  # (C, S)
    other = ~torch.gather(relevant(mem, captions), 1, picks)  # another caption's image
    return best, cos[other]


def fit_gate(
    mem: Memory, samples: int = GATE_SAMPLES, seed: int = 0, query: str = "caption"
) -> float:
    """The relevance gate's threshold τ for queries of kind `query` ("caption" or "image"),
    halfway between the weakest best match and the strongest random mismatch of `gate_scores`.
    A context whose image scores below τ against its query is irrelevant: a gated system
    leaves it out."""
    best, other = gate_scores(mem, samples, seed, query)
    return float((best.min() + other.max()) / 2)


def _contexts(
    mem: Memory, queries: torch.Tensor, mode: str, k: int, seed: int, gate: float | None = None
) -> list[list[tuple[torch.Tensor, str]]]:
    """The context lists of `mode` for the queries (Q, E); with a `gate` τ, a context whose
    first image has cosine < τ with its query is left out (that query gets no context)."""
    if mode not in CONTEXT_KINDS:
        raise ValueError(f"mode must be one of {CONTEXT_KINDS}, got {mode!r}")
    if mode == "none":
        return [[] for _ in range(len(queries))]
    if mode == "random":
        rows = _random_rows(mem, len(queries), k, seed)
    else:
        rows = _retrieved_rows(mem, queries, k)
    keep = None
    if gate is not None:  # unit vectors: the dot product is the cosine
        keep = (queries * mem.image_emb[rows[:, 0]]).sum(-1) >= gate  # (Q,)
    return _pairs(mem, rows, keep)


def _prompts(
    contexts: Sequence[Sequence[tuple[torch.Tensor | None, str]]],
    queries: Sequence[Segment],
    close: int,
    vocab: Vocabulary,
    bpe: BPE,
) -> list[torch.Tensor]:
    """[BOS] context… query then the `close` id (BOI before an image is sampled)."""
    prompts = []
    for ctx, query in zip(contexts, queries):
        segments = _context_segments(ctx, bpe)
        ids = encode_interleaved([*segments, query], vocab)[:-1]  # without EOS
        prompts.append(torch.cat([ids, torch.tensor([close])]) if close >= 0 else ids)
    return prompts


def _by_length(prompts: Sequence[torch.Tensor]) -> Iterator[list[int]]:
    for length in sorted({len(p) for p in prompts}):
        yield [i for i, p in enumerate(prompts) if len(p) == length]


@torch.no_grad()
def sample_heldout(
    model: nn.Module,
    mem: Memory,
    captions: Sequence[str],
    mode: str = "retrieved",
    *,
    k: int = 1,
    temperature: float = 1.0,
    seed: int = 0,
    tokenizer: nn.Module | None = None,
    gate: float | None = None,
) -> tuple[torch.Tensor, list[list[tuple[torch.Tensor, str]]]]:
    """Caption → image for each caption: the prompt is [BOS] context caption [BOI], the
    context being the caption's k best memory pairs by CLIP (mode "retrieved"; `mem` may hold
    the held-out pairs), k uniformly random memory pairs ("random", the control) or nothing
    ("none"); with a `gate` τ (`fit_gate`) a context whose image's cosine with the caption is
    below τ is left out; 64 image ids sampled (seeded) with only image ids allowed, decoded by the
    shipped tokenizer (unless given) → (images (N, 3, 32, 32) on the tokenizer's device, the
    contexts used: (codes, caption) lists)."""
    k = _validate.positive_int("k", k)
    if isinstance(captions, str) or not captions:
        raise TypeError("captions must be a non-empty list of str")
    bpe, vocab, param = course_bpe(), course_vocab(), next(model.parameters())
    tokenizer = tokenizer or tokenizer_recipe.WEIGHTS["tokenizer"].load(device=param.device)
    captions = list(captions)
    contexts = _contexts(mem, embed_captions(captions), mode, k, seed, gate)
    queries = [_text(c, bpe, "caption") for c in captions]
    prompts = _prompts(contexts, queries, vocab.BOI, vocab, bpe)
    codes = torch.empty(len(captions), 64, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    for rows in _by_length(prompts):
        ids = generate(model, torch.stack([prompts[i] for i in rows]).to(param.device), 64,
                       temperature=temperature, allowed=vocab.ranges["image"],
                       generator=generator)  # fmt: skip
        codes[rows] = vocab.image_codes_of(ids.cpu())  # remove the image offset
    t_param = next(tokenizer.parameters())
    return tokenizer.decode(codes.view(-1, 8, 8).to(t_param.device)), contexts


def judge_images(
    images: torch.Tensor, captions: Sequence[str], judge: nn.Module | None = None
) -> dict[str, float]:
    """The judge's reading of images (N, 3, 32, 32) against their captions → {"judge": share
    with colour, shape and position all right, "color", "shape", "position"}."""
    judge = judge or judge_recipe.WEIGHTS["judge"].load(device=images.device)
    scores = judge.score(images.to(next(judge.parameters()).device), list(captions))
    return {"judge": scores["all"], **{a: scores[a] for a in ("color", "shape", "position")}}


def evaluate_heldout(
    model: nn.Module,
    mem: Memory,
    mode: str = "retrieved",
    *,
    k: int = 1,
    per_caption: int = 4,
    temperature: float = 1.0,
    seed: int = 0,
    judge: nn.Module | None = None,
    tokenizer: nn.Module | None = None,
    captions: Sequence[str] | None = None,
    gate: float | None = None,
) -> dict[str, float]:
    """`sample_heldout` on the held-out captions (every one, per_caption samples each, unless
    `captions` are given), read by the judge (`judge_images`) → {"judge": "all", "color",
    "shape", "position", and with context "context_right": the share of prompts whose first
    context pair has the query's caption, "context_used": the share with a context (below 1
    when a `gate` leaves some out)}."""
    per_caption = _validate.positive_int("per_caption", per_caption)
    captions = list(captions or held_out_captions()) * per_caption
    images, contexts = sample_heldout(model, mem, captions, mode, k=k, temperature=temperature,
                                      seed=seed, tokenizer=tokenizer, gate=gate)  # fmt: skip
    out = judge_images(images, captions, judge)
    if mode != "none":
        right = sum(bool(ctx) and ctx[0][1] == c for ctx, c in zip(contexts, captions))
        out["context_right"] = right / len(captions)
        out["context_used"] = sum(bool(ctx) for ctx in contexts) / len(captions)
    return out


@torch.no_grad()
def caption_heldout(
    model: nn.Module,
    mem: Memory,
    images: torch.Tensor,
    mode: str = "retrieved",
    *,
    k: int = 1,
    seed: int = 0,
    tokenizer: nn.Module | None = None,
    gate: float | None = None,
    max_len: int = 12,
) -> tuple[list[str], list[list[tuple[torch.Tensor, str]]]]:
    """Image → caption for each image (N, 3, 32, 32): the prompt is [BOS] context [BOI] image
    [EOI], the context being the image's k best memory pairs by CLIP image vector (mode
    "retrieved"), k seeded random memory pairs ("random", the control) or nothing ("none"),
    written as the captioning pair trained (TRAINING["image_caption"]: the captions alone);
    with a `gate` τ (`fit_gate(…, query="image")`) a context whose image's cosine with the
    query image is below τ is left out. The image goes in as the shipped tokenizer's codes
    (unless given); the caption is decoded greedily among text ids until EOS (or max_len ids)
    → (N captions, the contexts used)."""
    k = _validate.positive_int("k", k)
    images = _validate.tensor("images", images, shape=("N", 3, 32, 32), floating=True)
    bpe, vocab, param = course_bpe(), course_vocab(), next(model.parameters())
    tokenizer = tokenizer or tokenizer_recipe.WEIGHTS["tokenizer"].load(device=param.device)
    t_param = next(tokenizer.parameters())
    codes = torch.cat([tokenizer.encode(x.to(t_param.device)).cpu()
                       for x in images.split(500)])  # (N, 8, 8)  # fmt: skip
    contexts = _contexts(mem, embed_images(images), mode, k, seed, gate)
    shown = contexts
    if not TRAINING["image_caption"]["context_images"]:
        shown = [[(None, c) for _, c in ctx] for ctx in contexts]
    prompts = _prompts(shown, [Segment("image", c) for c in codes], -1, vocab, bpe)
    allowed = vocab.text_mask("EOS", device=param.device)  # text ids and EOS only
    captions: list[str] = [""] * len(prompts)
    for rows in _by_length(prompts):
        batch = torch.stack([prompts[i] for i in rows]).to(param.device)  # (B, L)
        for i, row in zip(rows, _greedy(model, batch, allowed, vocab.EOS, max_len)):
            captions[i] = bpe.decode(row)
    return captions, contexts


def _greedy(
    model: nn.Module, prompts: torch.Tensor, allowed: torch.Tensor, stop: int, max_len: int
) -> list[list[int]]:
    """Greedy ids after prompts (B, L) of one length, through the model's KV cache."""
    cache = model.new_cache()
    logits = model(prompts, cache=cache)[:, -1]  # (B, V)
    return greedy_decode(logits, lambda ids: model(ids, cache=cache)[:, -1], allowed, stop,
                         max_len)  # fmt: skip


def read_captions(got: Sequence[str], truth: Sequence[str]) -> dict[str, float]:
    """Generated captions against the true ones → {"exact": share word for word, "color",
    "shape", "position": share with that attribute right}; a caption outside the grammar has
    every attribute wrong."""
    if len(got) != len(truth) or not truth:
        raise ValueError(f"got and truth must be non-empty and as long, got {len(got)} and "
                         f"{len(truth)}")  # fmt: skip
    right = dict.fromkeys(("color", "shape", "position"), 0)
    for g, t in zip(got, truth):
        try:
            words = parse_caption(g)
        except ValueError:
            continue
        for attribute, word in parse_caption(t).items():
            right[attribute] += words[attribute] == word
    exact = sum(g == t for g, t in zip(got, truth))
    return {"exact": exact / len(truth), **{a: r / len(truth) for a, r in right.items()}}


def evaluate_heldout_captions(
    model: nn.Module,
    mem: Memory,
    mode: str = "retrieved",
    *,
    k: int = 1,
    per_caption: int = 4,
    seed: int = 0,
    tokenizer: nn.Module | None = None,
    gate: float | None = None,
) -> dict[str, float]:
    """`caption_heldout` on fresh images of the held-out captions (per_caption renders each,
    `render_captions(…, seed)`), read by `read_captions` → {"exact", "color", "shape",
    "position", and with context "context_right": the share of queries whose first context
    pair has the query's caption, "context_used": the share with a context, "context_copied":
    the share whose caption is their first context pair's, word for word}."""
    per_caption = _validate.positive_int("per_caption", per_caption)
    truth = held_out_captions() * per_caption
    got, contexts = caption_heldout(model, mem, render_captions(truth, seed), mode, k=k,
                                    seed=seed, tokenizer=tokenizer, gate=gate)  # fmt: skip
    out = read_captions(got, truth)
    if mode != "none":
        right = sum(bool(ctx) and ctx[0][1] == c for ctx, c in zip(contexts, truth))
        out["context_right"] = right / len(truth)
        out["context_used"] = sum(bool(ctx) for ctx in contexts) / len(truth)
        out["context_copied"] = sum(bool(ctx) and ctx[0][1] == g
                                    for ctx, g in zip(contexts, got)) / len(truth)  # fmt: skip
    return out


# ----------------------------------------------------------------------------------- rebuild


def training_documents(
    mem: Memory, k: int, seed: int = 0, direction: str = "caption_image"
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The documents of a direction's two models: every pair of `training_memory(mem)` in
    `direction`, with k = K context pairs retrieved by the pair's own image vector, as
    TRAINING[direction] says (the mix of retrieved, random and no context; whole pairs or
    captions alone; query dropout) for the RAG model, or none with k = 0 (the baseline, on
    clean images)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    return rag_documents(training_memory(mem), k=k, directions=(direction,),
                         retrieve_by="image", seed=seed, **TRAINING[direction])  # fmt: skip


def experiment(
    seed: int = 0,
    *,
    direction: str = "caption_image",
    directory: Path | str | None = None,
    steps: int = STEPS,
    per_caption: int = 10,
    progress: bool = False,
) -> dict[str, float]:
    """One direction's whole experiment on the CPU (call it on one thread: `rebuild`):

    1. RAG: a fresh `new_model(seed)` trained `steps` steps (batch BATCH, lr LR) from scratch
       on `training_documents(mem, K, seed, direction)`: retrieval from the first step, so
       that copying the context is learned while it is the cheapest way down the loss;
    2. baseline: the same fresh model trained the same steps on the same pairs without
       context (k = 0), the fair comparison (same data, same steps, no retrieval);
    3. held-out measures, both models read back from their float16 files: `measure` (caption
       → image) or `measure_captions` (image → caption), per_caption queries of each
       held-out caption, seed `seed`.

    The models go to directory/<PAIRS[direction]>.pt (default: the shipped files under
    data/). Returns the measures' keys with each model's training seconds; under torchrun
    the other ranks return {} after training."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    steps = _validate.positive_int("steps", steps)
    mem = memory(MEMORY_SIZE, seed)
    out: dict[str, float] = {}
    paths = []
    for name, k in zip(PAIRS[direction], (K, 0)):
        docs = training_documents(mem, k, seed, direction)
        rows, draws = distributed.local_batch(BATCH), distributed.rank_seed(seed)  # per rank
        loader = RAGLoader(docs, batch_size=rows, seed=draws)
        result = train(new_model(seed), loader, steps=steps, lr=LR, seed=seed,
                       progress=progress, device="cpu")  # fmt: skip
        out[f"{'rag' if k else 'baseline'}_seconds"] = result.seconds
        weights = WEIGHTS[name]
        paths.append(Path(directory) / weights.file if directory is not None else weights.path)
        if distributed.is_main():  # rank 0 writes the files
            weights.save(result.model, path=paths[-1])
    if not distributed.is_main():
        return {}
    rag, baseline = (load_model(path, "cpu") for path in paths)
    measures = measure if direction == "caption_image" else measure_captions
    return out | measures(rag, baseline, mem, per_caption, seed)


def measure(
    rag: nn.Module,
    baseline: nn.Module,
    mem: Memory,
    per_caption: int = 10,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Step 3 of `experiment`: recall and the held-out judge scores of both models (moved to
    `device` with the shipped judge and tokenizer; the rebuild measures on the CPU), and the
    RAG system with its relevance gate (`fit_gate`, set on training captions): `gate` τ, the
    gated judge with retrieved and with random context, and the share of each let through."""
    start = time.perf_counter()
    out = recall(mem, held_out_captions())
    rag, baseline = rag.to(device), baseline.to(device)
    kw = {"per_caption": per_caption, "seed": seed,
          "judge": judge_recipe.WEIGHTS["judge"].load(device=device),
          "tokenizer": tokenizer_recipe.WEIGHTS["tokenizer"].load(device=device)}  # fmt: skip
    gate = fit_gate(mem)  # the system's threshold: one value, whatever the sampling seed
    rows = _rows(evaluate_heldout, rag, baseline, mem, gate, **kw)
    judge = {name: row["judge"] for name, row in rows.items()}
    synchronize(device)
    return out | {
        "heldout_judge_no_retrieval": judge["baseline"],
        "heldout_judge_retrieval": judge["retrieved"],
        "heldout_judge_random_context": judge["random"],
        "rag_gain_points": 100 * (judge["retrieved"] - judge["baseline"]),
        "heldout_judge_rag_no_context": judge["none"],
        "gate": gate,
        "heldout_judge_retrieval_gated": judge["gated_retrieved"],
        "heldout_judge_random_context_gated": judge["gated_random"],
        "gated_retrieved_used": rows["gated_retrieved"]["context_used"],
        "gated_random_used": rows["gated_random"]["context_used"],
        "gated_gain_points": 100 * (judge["gated_retrieved"] - judge["baseline"]),
        "eval_seconds": time.perf_counter() - start,
    }


def _rows(
    evaluate: Callable[..., dict[str, float]],
    rag: nn.Module,
    baseline: nn.Module,
    mem: Memory,
    gate: float,
    **kw: object,
) -> dict[str, dict[str, float]]:
    """One direction's measured rows, each `evaluate(model, mem, mode, …)`: the RAG model with
    each of CONTEXT_KINDS, "baseline" (no context) and "gated_retrieved" / "gated_random" (the
    RAG model behind the gate)."""
    rows = {mode: evaluate(rag, mem, mode, **kw) for mode in CONTEXT_KINDS}
    rows["baseline"] = evaluate(baseline, mem, "none", **kw)
    for mode in ("retrieved", "random"):
        rows[f"gated_{mode}"] = evaluate(rag, mem, mode, gate=gate, **kw)
    return rows


def measure_captions(
    rag: nn.Module,
    baseline: nn.Module,
    mem: Memory,
    per_caption: int = 10,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Step 3 of `experiment` for image → caption: recall of fresh held-out images (their CLIP
    image vectors against the memory's) and the exact-caption share of both models on them
    (`evaluate_heldout_captions`, moved to `device` with the shipped tokenizer), and the RAG
    system with its image relevance gate (`fit_gate(mem, query="image")`, set on images of
    training captions)."""
    start = time.perf_counter()
    truth = held_out_captions() * per_caption
    out = {f"image_{key}": v for key, v in
           recall(mem, truth, images=render_captions(truth, seed)).items()}  # fmt: skip
    rag, baseline = rag.to(device), baseline.to(device)
    kw = {"per_caption": per_caption, "seed": seed,
          "tokenizer": tokenizer_recipe.WEIGHTS["tokenizer"].load(device=device)}  # fmt: skip
    gate = fit_gate(mem, query="image")  # one value, whatever the sampling seed
    rows = _rows(evaluate_heldout_captions, rag, baseline, mem, gate, **kw)
    exact = {name: row["exact"] for name, row in rows.items()}
    synchronize(device)
    return out | {
        "heldout_caption_no_retrieval": exact["baseline"],
        "heldout_caption_retrieval": exact["retrieved"],
        "heldout_caption_random_context": exact["random"],
        "caption_gain_points": 100 * (exact["retrieved"] - exact["baseline"]),
        "heldout_caption_rag_no_context": exact["none"],
        "caption_gate": gate,
        "heldout_caption_retrieval_gated": exact["gated_retrieved"],
        "heldout_caption_random_context_gated": exact["gated_random"],
        "caption_gated_retrieved_used": rows["gated_retrieved"]["context_used"],
        "caption_gated_random_used": rows["gated_random"]["context_used"],
        "caption_random_copied": rows["random"]["context_copied"],  # a forced random caption
        "caption_gated_gain_points": 100 * (exact["gated_retrieved"] - exact["baseline"]),
        "eval_seconds": time.perf_counter() - start,
    }


def rebuild(
    seed: int = 0,
    *,
    direction: str = "caption_image",
    directory: Path | str | None = None,
    **sizes: int,
) -> str:
    """`experiment(seed, direction=…, directory=…, **sizes)` on one thread (bit for bit
    reproducible): writes the direction's two models, data/retrieval_rag.pt and
    retrieval_baseline.pt (`python -m mmcourse.train retrieval`) or retrieval_rag_captions.pt
    and retrieval_baseline_captions.pt (`… retrieval_captions`), about 20 minutes each on one
    CPU thread → a one-line summary of its numbers."""
    with one_thread():
        out = experiment(seed, direction=direction, directory=directory, **sizes)
    if not out:
        return ""
    return f"{REBUILD_TARGETS[direction]}: " + ", ".join(
        f"{k} {v:.1f}" if k.endswith(("seconds", "points")) else f"{k} {v:.4f}"
        for k, v in out.items()
    )


def rebuild_captions(seed: int = 0, *, directory: Path | str | None = None, **sizes: int) -> str:
    """`rebuild(seed, direction="image_caption", …)`: the image → caption pair."""
    return rebuild(seed, direction="image_caption", directory=directory, **sizes)


REBUILDS = {"retrieval": rebuild, "retrieval_captions": rebuild_captions}
