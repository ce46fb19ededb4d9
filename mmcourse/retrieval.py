"""Exact nearest-neighbour retrieval by cosine similarity, and recall@k.

A memory holds N keys (N, E), the embeddings of stored items (chapter 12: Shapes images and
captions through chapter 03's CLIP). A query q (E,) retrieves the k keys most similar to it,

    cos(q, k_j) = ⟨q / ‖q‖, k_j / ‖k_j‖⟩ ∈ [−1, 1],

best first. For Q queries at once this is one matrix product of the normalised rows,
S = Q̂ K̂ᵀ (Q, N), followed by a per-row selection of the k largest: exact search costs
O(Q·N·E) multiply-adds plus O(Q·N log N) for the ordering, and O(Q·N) memory for S.
`recall_at_k` measures it: the share of queries with a relevant key among their top k.

At scale (N in the millions or billions) exact search is too slow and S too large, and
approximate indexes trade a little recall for orders of magnitude in speed (FAISS, Johnson et
al. 2017; Jégou et al. 2011):

- IVF (inverted file): k-means splits the keys into C coarse cells around centroids; a query
  is compared with the C centroids, then exactly with the keys of its `nprobe` nearest cells
  only, about N · nprobe / C keys instead of N. A true neighbour just across a cell border is
  missed unless nprobe covers its cell: recall against speed.
- PQ (product quantization): chapter 01's vector quantization applied per sub-vector. Each key
  is split into M sub-vectors of E / M dimensions, each replaced by the index of its nearest
  code in a small codebook of its own (256 codes: one byte), so a key costs M bytes instead of
  4·E. A query's distance to a coded key is a sum of M entries read from lookup tables (the
  query sub-vector's distance to every code of each codebook, computed once per query): no
  multiplications per key. Residual VQ (chapter 01's ResidualVQ) is the same idea stacked in
  depth rather than split in width; IVF-PQ codes each key's residual from its cell centroid.

Cosine search becomes inner-product or L2 search there after normalising the keys once:
‖q̂ − k̂‖² = 2 − 2 cos(q, k).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from mmcourse import _validate

__all__ = ["Retrieved", "recall_at_k", "top_k"]


class Retrieved(NamedTuple):
    """The k best keys of each query, best first."""

    scores: torch.Tensor  # (Q, k) cosine similarities, in the inputs' dtype, non-increasing
    indices: torch.Tensor  # (Q, k) int64 key indices in [0, N)


def _memory(keys: object) -> torch.Tensor:
    keys = _validate.tensor("keys", keys, shape=("N", "E"), floating=True)
    if keys.shape[0] == 0:
        raise ValueError(
            f"keys is empty, shape {tuple(keys.shape)}: the memory is empty, nothing to retrieve"
        )
    if keys.shape[1] == 0:
        raise ValueError(f"keys must have E ≥ 1 features, got shape {tuple(keys.shape)}")
    return keys


def _queries(queries: object, keys: torch.Tensor) -> torch.Tensor:
    queries = _validate.tensor("queries", queries, shape=("Q", "E"), floating=True)
    if queries.shape[1] != keys.shape[1]:
        raise ValueError(
            f"queries must have E = {keys.shape[1]} features like keys {tuple(keys.shape)}, "
            f"got shape {tuple(queries.shape)}"
        )
    if queries.dtype != keys.dtype:
        raise TypeError(f"queries must have keys' dtype {keys.dtype}, got {queries.dtype}")
    if queries.device != keys.device:
        raise ValueError(f"queries must be on keys' device {keys.device}, got {queries.device}")
    return queries


def _finite(name: str, x: torch.Tensor) -> None:
    if not bool(x.isfinite().all()):
        raise ValueError(f"{name} must be finite, got NaN or ±inf (a cosine of them is undefined)")


def _exclusions(exclude: object, queries: torch.Tensor, n: int) -> torch.Tensor:
    """exclude (Q,) int64 on the queries' device, each entry −1 or a key index in [0, N)."""
    q = queries.shape[0]
    exclude = _validate.tensor("exclude", exclude, shape=(q,), dtype=torch.int64)
    if exclude.device != queries.device:
        raise ValueError(
            f"exclude must be on the queries' device {queries.device}, got {exclude.device}"
        )
    if q and bool(((exclude < -1) | (exclude >= n)).any()):
        raise ValueError(
            f"exclude must hold key indices in [0, {n - 1}] or −1 for none, got values in "
            f"[{int(exclude.min())}, {int(exclude.max())}]"
        )
    return exclude


def _k(k: object, n: int, excluding: bool) -> int:
    k = _validate.positive_int("k", k)
    if excluding and k > n - 1:
        raise ValueError(
            f"k must be ≤ N − 1 = {n - 1} when exclude is given (a query may lose one of the "
            f"N = {n} keys), got {k}"
        )
    if k > n:
        raise ValueError(f"k must be ≤ N = {n}, the number of keys in the memory, got {k}")
    return k


def top_k(
    queries: torch.Tensor, keys: torch.Tensor, k: int, exclude: torch.Tensor | None = None
) -> Retrieved:
    """The k keys (N, E) most cosine-similar to each query (Q, E), best first: Retrieved(scores
    (Q, k), indices (Q, k)).

        S_ij = ⟨q_i / ‖q_i‖, k_j / ‖k_j‖⟩                          (Q, N), one matrix product

    then each row's k largest, ties broken to the lowest key index (a stable sort), so the
    result does not depend on the hardware or on the other queries of the batch. Computed in
    the inputs' dtype on their device (both must share them); a zero vector has similarity 0
    with everything. Cost O(Q·N·E) for S plus O(Q·N log N) for the ordering.

    `exclude` (Q,) int64: exclude[i] is a key index query i must not retrieve, or −1 for none;
    retrieving a memory from itself, exclude = arange(N) leaves out each item's own entry (its
    self-match, similarity 1). Then k ≤ N − 1.

    Raises ValueError for an empty memory (N = 0), k < 1 or k > N (k > N − 1 with exclude),
    queries of another E than keys, tensors on different devices, NaN or ±inf, and exclude
    entries outside [−1, N); TypeError for non-tensors, non-floating or mixed dtypes."""
    keys = _memory(keys)
    queries = _queries(queries, keys)
    n = keys.shape[0]
    if exclude is not None:
        exclude = _exclusions(exclude, queries, n)
    k = _k(k, n, exclude is not None)
    _finite("keys", keys)
    _finite("queries", queries)
    similarity = F.normalize(queries, dim=1) @ F.normalize(keys, dim=1).T  # (Q, N) cosines
    if exclude is not None:
        own = exclude[:, None]  # (Q, 1)
        drop = torch.zeros_like(similarity, dtype=torch.bool)  # (Q, N)
        drop = drop.scatter(1, own.clamp(min=0), own >= 0)  # True at (i, exclude[i] ≥ 0)
        similarity = similarity.masked_fill(drop, -torch.inf)  # never among the k ≤ N − 1 best
    # stable: equal similarities keep their key order, so ties go to the lowest index
    scores, indices = similarity.sort(dim=1, descending=True, stable=True)  # (Q, N)
    return Retrieved(scores[:, :k], indices[:, :k])


def recall_at_k(indices: torch.Tensor, relevant: torch.Tensor) -> float:
    """Recall@k: the share of queries with at least one relevant key among their retrieved ones,

        recall@k = (1/Q) Σ_i 1[∃ j ≤ k : relevant[i, indices[i, j]]],

    for indices (Q, k) int64 from `top_k` and relevant (Q, N) bool (relevant[i, n]: key n is a
    right answer for query i). k is indices' width: pass indices[:, :k] for a smaller k."""
    relevant = _validate.tensor("relevant", relevant, shape=("Q", "N"), dtype=torch.bool)
    q, n = relevant.shape
    indices = _validate.tensor("indices", indices, shape=(q, "k"), dtype=torch.int64)
    if q == 0 or indices.shape[1] == 0:
        raise ValueError(
            f"indices must hold at least one query and one retrieved key (Q, k), got shape "
            f"{tuple(indices.shape)}"
        )
    if indices.device != relevant.device:
        raise ValueError(
            f"indices must be on relevant's device {relevant.device}, got {indices.device}"
        )
    if bool(((indices < 0) | (indices >= n)).any()):
        raise ValueError(
            f"indices must hold key indices in [0, {n - 1}] (relevant has N = {n} columns), got "
            f"values in [{int(indices.min())}, {int(indices.max())}]"
        )
    hit = relevant.gather(1, indices).any(dim=1)  # (Q,) a relevant key among the k
    return float(hit.double().mean())
