"""Checkers of chapter 12 (retrieval-augmented generation): exact top-k cosine retrieval.

The checker compares the candidate with `mmcourse.retrieval.top_k` (computed in float64 on CPU
copies of the inputs) on seeded inputs built so that each classic mistake changes the result:
keys of very different norms (a dot product ranks the long keys first), queries that rank the
keys differently (row 0's indices used for every row), keys with exactly equal cosines across
the k-th place (ties not broken to the lowest index), a memory retrieved from itself with some
rows excluding nothing (exclude ignored, −1 read as the last key) and exclusions off the
diagonal. A wrong result is named when it is one of those mistakes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmcourse import retrieval
from mmcourse.checks._contract import call
from mmcourse.checks._core import Check, exercise, seeded
from mmcourse.retrieval import Retrieved

_F64 = torch.float64

_RANKING = (
    "S = F.normalize(queries, dim=1) @ F.normalize(keys, dim=1).T gives the (Q, N) cosines; "
    "set S[i, exclude[i]] = −inf where exclude[i] ≥ 0; then sort each row, best first, ties "
    "to the lowest key index (torch.sort(S, dim=1, descending=True, stable=True)), and keep "
    "the first k columns"
)
_TIES = (
    "torch.topk and an unstable sort return keys of equal score in no particular order: sort "
    "with stable=True (descending=True), which keeps equal scores in key order, and keep the "
    "first k columns"
)
_SCORES = (
    "scores[i, j] is the cosine of query i and key indices[i, j], ⟨q/‖q‖, k/‖k‖⟩: normalise "
    "both sides, and return the sorted scores with their indices"
)
_INDICES_DTYPE = (
    "indices are key positions, int64 (what sort and topk return); a common cause of a "
    "floating dtype here is returning (indices, scores): return scores, indices in that order"
)
_ERRORS = (
    "check the sizes first and raise ValueError naming them: torch.topk raises a RuntimeError "
    "for k > N, and a sort silently returns fewer than k columns"
)


def _cosines(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """The (Q, N) cosines of float64 CPU copies of the inputs."""
    q, k = (x.detach().cpu().double() for x in (queries, keys))
    return F.normalize(q, dim=1) @ F.normalize(k, dim=1).T


def _drop(sim: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """sim with −inf at (rows[j], columns[j])."""
    mask = torch.zeros_like(sim, dtype=torch.bool)
    mask[rows, columns] = True
    return sim.masked_fill(mask, -torch.inf)


def _excluded(sim: torch.Tensor, exclude: torch.Tensor | None, minus_one: int = -1) -> torch.Tensor:
    """sim with −inf at (i, exclude[i]) where exclude[i] ≥ 0; −1 means `minus_one` instead when
    that is ≥ 0 (the negative-index mistake)."""
    if exclude is None:
        return sim
    exclude = exclude.cpu().clone()
    exclude[exclude < 0] = minus_one
    rows = (exclude >= 0).nonzero().flatten()
    return _drop(sim, rows, exclude[rows])


def _best(sim: torch.Tensor, k: int) -> Retrieved:
    scores, indices = sim.sort(dim=1, descending=True, stable=True)
    return Retrieved(scores[:, :k], indices[:, :k])


def _mistakes(
    queries: torch.Tensor, keys: torch.Tensor, k: int, exclude: torch.Tensor | None
) -> dict[str, Retrieved]:
    """What the classic retrieval mistakes give on these inputs (float64 and int64, CPU)."""
    q, n = len(queries), len(keys)
    sim = _excluded(_cosines(queries, keys), exclude)  # (Q, N)
    right = _best(sim, k)
    raw_q, raw_k = (x.detach().cpu().double() for x in (queries, keys))
    dot = _excluded(raw_q @ raw_k.T, exclude)
    flipped = _best(sim.flip(1), k)  # ties in reverse key order
    ascending = _best(-sim, k)  # the least similar first
    mistakes = {
        "the embeddings not normalised: a dot product ranks the long keys first; the cosine "
        "divides by both norms (F.normalize(x, dim=1) on queries and keys)": _best(dot, k),
        "keys normalised but not the queries: the ranking is right, but each score is ‖q‖ "
        "times the cosine; normalise both sides": Retrieved(
            right.scores * raw_q.norm(dim=1, keepdim=True), right.indices
        ),
        "ties broken to the highest key index: keys of equal score go in key order, lowest "
        "index first (a stable sort, not a reversed one)": Retrieved(
            flipped.scores, n - 1 - flipped.indices
        ),
        "the k least similar keys: an ascending sort; sort with descending=True, best "
        "first": Retrieved(-ascending.scores, ascending.indices),
        "the right k keys in reverse order (worst first): best first, descending": Retrieved(
            right.scores.flip(1), right.indices.flip(1)
        ),
    }
    if q > 1:
        row0 = right.indices[:1].expand(q, k)
        mistakes[
            "row 0's indices used for every row: each query ranks the keys in its own order, "
            "sort along dim=1 and keep each row's own indices"
        ] = Retrieved(sim.gather(1, row0), row0)
    if exclude is not None:
        mistakes[
            "exclude ignored: query i must never retrieve key exclude[i] (its own entry when "
            "the memory retrieves from itself); set S[i, exclude[i]] = −inf first"
        ] = _best(_cosines(queries, keys), k)
        mistakes[
            "exclude = −1 read as the last key (Python's negative index): −1 means exclude "
            "nothing, so mask only the rows with exclude[i] ≥ 0"
        ] = _best(_excluded(_cosines(queries, keys), exclude, minus_one=n - 1), k)
        diagonal = torch.arange(min(q, n))
        mistakes[
            "the diagonal excluded (key i for query i) where exclude[i] belongs: mask "
            "S[i, exclude[i]], which is the diagonal only when the memory retrieves from "
            "itself"
        ] = _best(_drop(_cosines(queries, keys), diagonal, diagonal), k)
    if k + 1 <= n:
        mistakes["k + 1 keys per query: keep the first k columns, [:, :k]"] = _best(sim, k + 1)
    if k > 1:
        mistakes["k − 1 keys per query: keep the first k columns, [:, :k]"] = _best(sim, k - 1)
    return mistakes


def _case(
    check: Check,
    queries: torch.Tensor,
    keys: torch.Tensor,
    k: int,
    what: str,
    exclude: torch.Tensor | None = None,
    hint: str = _RANKING,
) -> None:
    """Three checks: a (scores, indices) pair, the indices exactly, the scores to rounding."""
    extra = {} if exclude is None else {"exclude": exclude}
    got = call(check, queries, keys, k, **extra)
    scores, indices = check.parts(got, ("scores", "indices"))
    q64, k64 = (x.detach().cpu().double() for x in (queries, keys))
    expected = retrieval.top_k(q64, k64, k, None if exclude is None else exclude.cpu())
    wrong = _mistakes(queries, keys, k, exclude)
    check.close(
        indices,
        expected.indices.to(check.device),
        f"indices for {what}",
        atol=0.0,
        rtol=0.0,
        hint=hint,
        dtype_hint=_INDICES_DTYPE,
        alternatives={name: mistake.indices for name, mistake in wrong.items()},
    )
    low = queries.dtype != _F64
    check.close(
        scores,
        expected.scores.to(check.device, queries.dtype),
        f"scores for {what}",
        atol=1e-5 if low else 1e-9,
        rtol=1e-5 if low else 1e-9,
        hint=_SCORES,
        dtype_hint=f"the scores keep the inputs' dtype {queries.dtype}: compute the cosines "
        "without converting the embeddings",
        alternatives={name: mistake.scores for name, mistake in wrong.items()},
    )


def _norms(g: torch.Generator, *shape: int, dtype: torch.dtype = _F64) -> torch.Tensor:
    """Random rows whose norms spread over two orders of magnitude."""
    x = torch.randn(*shape, generator=g, dtype=_F64)
    scale = (1.5 * torch.randn(shape[0], 1, generator=g, dtype=_F64)).exp()
    return (x * scale).to(dtype)


def _different_norms(dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Two queries and six keys whose lengths mislead a dot product: query 0's cosine ranking
    is keys [0, 3, 1], its dot-product ranking [1, 3, 0]; query 1's [4, 3, 1] and [3, 1, 4]."""
    directions = torch.tensor(
        [[1.0, 0, 0], [0.6, 0.8, 0], [0, 1, 0], [0.8, 0, 0.6], [0, 0.6, 0.8], [-1, 0, 0]]
    )
    lengths = torch.tensor([0.5, 5.0, 1.0, 2.0, 0.25, 3.0])[:, None]
    queries = torch.tensor([[1.0, 0.1, 0.0], [0.1, 0.2, 1.0]])
    return queries.double().to(dev), (directions * lengths).double().to(dev)


def _ties(dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys that are power-of-2 multiples of one another have exactly equal cosines: query 0
    ties keys 1, 2, 4 and 6 at the top (k = 3 keeps 1, 2, 4), query 1 ties keys 3 and 5."""
    a, b, c = [1.0, 2.0, -1.0], [0.0, 1.0, 3.0], [2.0, -1.0, 0.5]
    keys = torch.tensor(
        [b, a, [2 * x for x in a], c, [x / 2 for x in a], [2 * x for x in c], [4 * x for x in a]]
    )
    queries = torch.tensor([a, [x / 8 for x in c]])
    return queries.double().to(dev), keys.double().to(dev)


@exercise("12.1", "top-k cosine retrieval", references=(retrieval.top_k,))
def check_top_k(check: Check) -> None:
    """Exercise 12.1: top_k(queries (Q, E), keys (N, E), k, exclude=None) -> (scores (Q, k),
    indices (Q, k)): for each query the k keys of highest cosine similarity, best first, ties
    to the lowest key index; scores in the inputs' dtype, indices int64. exclude (Q,) int64:
    exclude[i] is a key query i must not retrieve, −1 for none. Raises ValueError when the
    memory holds fewer than k keys (N − 1 with exclude; an empty memory too) and when queries
    and keys differ in E."""
    g, dev = seeded(121), check.device
    queries, keys = _different_norms(dev)
    _case(check, queries, keys, 3, "keys of very different norms, k = 3: cosines, not dots")
    _case(check, queries, keys, 6, "the same inputs, k = N = 6: the whole memory ranked")
    _case(check, queries, keys, 1, "the same inputs, k = 1")
    queries, keys = _ties(dev)
    _case(
        check,
        queries,
        keys,
        3,
        "keys with exactly equal cosines, k = 3: ties go to the lowest key index",
        hint=_TIES,
    )
    memory = _norms(g, 8, 4).to(dev)
    own = torch.arange(8, device=dev)
    own[[2, 7]] = -1
    _case(
        check,
        memory.clone(),
        memory,
        3,
        "a memory of 8 retrieving from itself, exclude = [0, 1, −1, 3, 4, 5, 6, −1] (−1: "
        "exclude nothing), k = 3",
        own,
    )
    _case(
        check,
        memory.clone(),
        memory,
        7,
        "the memory retrieving from itself, exclude = arange(8), k = N − 1 = 7",
        torch.arange(8, device=dev),
    )
    queries, keys = _norms(g, 4, 4).to(dev), _norms(g, 10, 4).to(dev)
    best = _best(_cosines(queries, keys), 1).indices[:, 0].to(dev)  # each query's first key
    best[2] = -1
    _case(check, queries, keys, 3, "4 queries, 10 keys, exclude = each query's best key "
          "(−1 for query 2), k = 3", best)  # fmt: skip
    queries, keys = _norms(g, 12, 8).to(dev), _norms(g, 40, 8).to(dev)
    _case(check, queries, keys, 5, "a batch of 12 queries, 40 keys of E = 8, k = 5")
    queries, keys = _norms(g, 5, 6, dtype=torch.float32), _norms(g, 16, 6, dtype=torch.float32)
    exclude = torch.tensor([3, -1, 0, 15, 7], device=dev)
    _case(check, queries.to(dev), keys.to(dev), 4, "float32 embeddings, 5 queries, 16 keys, "
          "k = 4, exclude = [3, −1, 0, 15, 7]: float32 scores", exclude)  # fmt: skip
    _errors(check, g, dev)


def _errors(check: Check, g: torch.Generator, dev: torch.device) -> None:
    queries, keys = torch.randn(3, 4, generator=g).to(dev), torch.randn(6, 4, generator=g).to(dev)
    own = {"exclude": torch.tensor([0, -1, 2], device=dev)}
    cases = [
        ("an empty memory, keys of shape (0, 4), k = 1", (queries, keys[:0], 1), {}),
        ("k = 7 > N = 6 keys", (queries, keys, 7), {}),
        ("k = N = 6 with exclude given: a query may lose one key, N − 1 = 5 remain",
         (queries, keys, 6), own),
        ("queries of E = 5 and keys of E = 4",
         (torch.randn(3, 5, generator=g).to(dev), keys, 2), {}),
    ]  # fmt: skip
    for what, args, kwargs in cases:
        check.raises(ValueError, f"raises ValueError for {what}", *args, hint=_ERRORS, **kwargs)
