"""Exact cosine retrieval against a brute-force loop: the order, ties to the lowest index,
self-matches excluded, batch independence, dtype and device following the inputs; recall@k by
hand; and every documented error, named."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmcourse import retrieval
from mmcourse.checks._placement import PlacementAudit
from mmcourse.retrieval import Retrieved, recall_at_k, top_k


def _draw(*shape: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _brute_force(queries, keys, k, exclude=None):
    """One query and one key at a time: cos = Σ q·k / (‖q‖ ‖k‖), sorted by (−cos, index)."""
    scores, indices = [], []
    for i, q in enumerate(queries.tolist()):
        ranked = []
        for j, key in enumerate(keys.tolist()):
            if exclude is not None and exclude[i] == j:
                continue
            dot = sum(a * b for a, b in zip(q, key))
            norms = math.sqrt(sum(a * a for a in q)) * math.sqrt(sum(b * b for b in key))
            ranked.append((-dot / norms, j))
        ranked.sort()
        scores.append([-s for s, _ in ranked[:k]])
        indices.append([j for _, j in ranked[:k]])
    return torch.tensor(scores, dtype=torch.float64), torch.tensor(indices)


@pytest.mark.parametrize(("q", "n", "e", "k"), [(1, 1, 3, 1), (5, 9, 4, 3), (7, 30, 16, 30)])
def test_top_k_is_the_brute_force_ranking(q, n, e, k):
    queries, keys = _draw(q, e, seed=1), _draw(n, e, seed=2) * _draw(n, 1, seed=3).exp()
    result = top_k(queries, keys, k)
    scores, indices = _brute_force(queries, keys, k)
    assert isinstance(result, Retrieved) and result.indices.dtype == torch.int64
    assert torch.equal(result.indices, indices)
    torch.testing.assert_close(result.scores, scores, rtol=1e-12, atol=1e-12)
    assert (result.scores[:, :-1] >= result.scores[:, 1:]).all()  # best first


def test_norms_do_not_count_only_directions_do():
    keys = torch.tensor([[1.0, 0.0], [10.0, 10.0], [0.0, 0.5]])
    query = torch.tensor([[1.0, 0.2]])
    # the dot product would rank key 1 first (12); the cosine ranks key 0 (0.98 > 0.83 > 0.20)
    assert top_k(query, keys, 3).indices.tolist() == [[0, 1, 2]]
    torch.testing.assert_close(top_k(query * 100, keys / 7, 3), top_k(query, keys, 3))


def test_ties_go_to_the_lowest_index():
    a, b = torch.tensor([1.0, 2.0, -1.0]), torch.tensor([0.0, 1.0, 3.0])
    keys = torch.stack([b, a, 4 * a, b, 0.5 * a, 2 * b])  # powers of 2: exactly equal cosines
    queries = torch.stack([a, b, a + b])
    result = top_k(queries, keys, 5)
    assert result.indices.tolist() == [[1, 2, 4, 0, 3], [0, 3, 5, 1, 2], [0, 3, 5, 1, 2]]
    assert result.scores[0, 0] == result.scores[0, 1] == result.scores[0, 2]
    assert top_k(torch.zeros(2, 3), keys, 4).indices.tolist() == [[0, 1, 2, 3]] * 2  # all 0


def test_excluded_keys_are_never_retrieved():
    memory = _draw(12, 5, seed=4)
    own = torch.arange(12)
    result = top_k(memory, memory, 11, exclude=own)
    assert not (result.indices == own[:, None]).any()  # no self-match
    scores, indices = _brute_force(memory, memory, 11, exclude=own.tolist())
    assert torch.equal(result.indices, indices)
    torch.testing.assert_close(result.scores, scores)
    assert top_k(memory, memory, 1).indices.squeeze(1).tolist() == own.tolist()  # itself first


def test_minus_one_excludes_nothing():
    memory, queries = _draw(8, 3, seed=5), _draw(4, 3, seed=6)
    exclude = torch.tensor([-1, 2, -1, 7])
    result = top_k(queries, memory, 7, exclude=exclude)
    full = top_k(queries, memory, 7)
    for i in (0, 2):
        assert torch.equal(result.indices[i], full.indices[i])
    for i in (1, 3):
        kept = [j for j in full.indices[i].tolist() if j != exclude[i]]
        assert result.indices[i].tolist()[: len(kept)] == kept[:7]
        assert exclude[i] not in result.indices[i].tolist()


def test_each_query_is_answered_on_its_own():
    queries, keys = _draw(9, 8, seed=7, dtype=torch.float32), _draw(40, 8, seed=8)
    keys = keys.float()
    batch = top_k(queries, keys, 5)
    for i in range(len(queries)):
        alone = top_k(queries[i : i + 1], keys, 5)
        assert torch.equal(alone.indices[0], batch.indices[i])
        torch.testing.assert_close(alone.scores[0], batch.scores[i])
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(9))
    shuffled = top_k(queries[perm], keys, 5)
    assert torch.equal(shuffled.indices, batch.indices[perm])
    empty = top_k(queries[:0], keys, 5)
    assert empty.indices.shape == empty.scores.shape == (0, 5)


def test_inputs_are_left_as_they_came():
    queries, keys, exclude = _draw(3, 4, seed=10), _draw(6, 4, seed=11), torch.tensor([0, -1, 5])
    copies = [t.clone() for t in (queries, keys, exclude)]
    top_k(queries, keys, 4, exclude=exclude)
    assert all(torch.equal(a, b) for a, b in zip(copies, (queries, keys, exclude)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_dtype_and_device_follow_the_inputs(dtype, device):
    queries, keys = _draw(4, 6, seed=12).to(device, dtype), _draw(10, 6, seed=13).to(device, dtype)
    exclude = torch.tensor([1, -1, 3, 9]).to(device)
    with PlacementAudit():  # a tensor made without device= would fail here as on a GPU
        result = top_k(queries, keys, 3, exclude=exclude)
        recall = recall_at_k(result.indices, torch.ones(4, 10, dtype=torch.bool).to(device))
    assert result.scores.dtype == dtype and result.indices.dtype == torch.int64
    assert result.scores.device == result.indices.device == queries.device
    expected = top_k(queries.double().cpu(), keys.double().cpu(), 3, exclude=exclude.cpu())
    assert torch.equal(result.indices.cpu(), expected.indices)
    tol = 2e-3 if dtype == torch.float16 else 1e-6
    torch.testing.assert_close(result.scores.cpu().double(), expected.scores, atol=tol, rtol=tol)
    assert recall == 1.0


def test_recall_at_k_counts_queries_with_a_relevant_key():
    indices = torch.tensor([[3, 1], [0, 2], [2, 3], [1, 0]])
    relevant = torch.zeros(4, 4, dtype=torch.bool)
    relevant[0, 1] = relevant[1, 3] = relevant[2, 2] = relevant[3, 2] = True
    assert recall_at_k(indices, relevant) == 0.5  # queries 0 and 2
    assert recall_at_k(indices[:, :1], relevant) == 0.25  # only query 2 at rank 1
    relevant[0] = True  # several relevant keys still count once
    assert recall_at_k(indices, relevant) == 0.5


def test_recall_at_k_of_retrieving_captions_of_the_same_items():
    # keys are noisy copies of the queries: each query's own key is its relevant one
    queries = _draw(50, 8, seed=14)
    keys = queries + 0.3 * _draw(50, 8, seed=15)
    relevant = torch.eye(50, dtype=torch.bool)
    at_1 = recall_at_k(top_k(queries, keys, 1).indices, relevant)
    at_5 = recall_at_k(top_k(queries, keys, 5).indices, relevant)
    assert 0.5 < at_1 <= at_5 <= 1.0
    assert recall_at_k(top_k(queries, keys, 50).indices, relevant) == 1.0


Z = torch.zeros
Q, K = _draw(2, 3, seed=16, dtype=torch.float32), _draw(5, 3, seed=17, dtype=torch.float32)
BAD = Q.clone()
BAD[1, 2] = math.nan


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: top_k(Q, Z(0, 3), 1), ValueError, r"^keys is empty.*the memory is empty"),
        (lambda: top_k(Q, Z(5, 0), 1), ValueError, r"^keys must have E ≥ 1"),
        (lambda: top_k(Q, K, 6), ValueError, r"^k must be ≤ N = 5, the number of keys.*got 6"),
        (lambda: top_k(Q, K, 0), ValueError, r"^k must be ≥ 1, got 0"),
        (lambda: top_k(Q, K, 2.0), TypeError, r"^k must be an int, got float"),
        (lambda: top_k(Q, K, 5, exclude=torch.tensor([0, -1])), ValueError,
         r"^k must be ≤ N − 1 = 4 when exclude is given"),
        (lambda: top_k(Z(2, 4), K, 1), ValueError,
         r"^queries must have E = 3 features like keys \(5, 3\), got shape \(2, 4\)"),
        (lambda: top_k(Z(3), K, 1), ValueError, r"^queries must have 2 dimensions \(Q, E\)"),
        (lambda: top_k(Q, Z(5), 1), ValueError, r"^keys must have 2 dimensions \(N, E\)"),
        (lambda: top_k(Q.to("meta"), K, 1), ValueError, r"^queries must be on keys' device cpu"),
        (lambda: top_k(Q, K, 1, exclude=torch.tensor([0, 1], device="meta")), ValueError,
         r"^exclude must be on the queries' device cpu"),
        (lambda: top_k(BAD, K, 1), ValueError, r"^queries must be finite"),
        (lambda: top_k(Q, K / 0, 1), ValueError, r"^keys must be finite"),
        (lambda: top_k(Q.long(), K, 1), TypeError, r"^queries must be a floating-point tensor"),
        (lambda: top_k(Q, K.long(), 1), TypeError, r"^keys must be a floating-point tensor"),
        (lambda: top_k(Q.double(), K, 1), TypeError,
         r"^queries must have keys' dtype torch.float32, got torch.float64"),
        (lambda: top_k(Q.tolist(), K, 1), TypeError, r"^queries must be a torch.Tensor, got list"),
        (lambda: top_k(Q, K, 1, exclude=torch.tensor([0, 1], dtype=torch.int32)), TypeError,
         r"^exclude must have dtype torch.int64"),
        (lambda: top_k(Q, K, 1, exclude=torch.tensor([0])), ValueError,
         r"^exclude must have shape \(2\)"),
        (lambda: top_k(Q, K, 1, exclude=torch.tensor([0, 5])), ValueError,
         r"^exclude must hold key indices in \[0, 4\] or −1 for none, got values in \[0, 5\]"),
        (lambda: recall_at_k(torch.tensor([[0]]), Z(2, 3, dtype=torch.bool)), ValueError,
         r"^indices must have shape \(2, k\)"),
        (lambda: recall_at_k(torch.tensor([[0.0]]), Z(1, 3, dtype=torch.bool)), TypeError,
         r"^indices must have dtype torch.int64"),
        (lambda: recall_at_k(torch.tensor([[0]]), Z(1, 3)), TypeError,
         r"^relevant must have dtype torch.bool"),
        (lambda: recall_at_k(torch.tensor([[3]]), Z(1, 3, dtype=torch.bool)), ValueError,
         r"^indices must hold key indices in \[0, 2\]"),
        (lambda: recall_at_k(torch.zeros(0, 1, dtype=torch.long), Z(0, 3, dtype=torch.bool)),
         ValueError, r"^indices must hold at least one query"),
        (lambda: recall_at_k(torch.tensor([[0]], device="meta"), Z(1, 3, dtype=torch.bool)),
         ValueError, r"^indices must be on relevant's device cpu"),
    ],
)  # fmt: skip
def test_bad_input_names_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


DTYPES = [torch.float16, torch.float32, torch.float64, torch.int64, torch.uint8, torch.bool]
SHAPES = st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple)


@settings(max_examples=60, deadline=None)
@given(shape=SHAPES, dtype=st.sampled_from(DTYPES))
def test_keys_of_the_wrong_layout_are_refused(shape, dtype):
    keys = torch.ones(shape, dtype=dtype)
    good = len(shape) == 2 and min(shape) >= 1 and dtype == torch.float32
    if good:
        queries = torch.ones(2, shape[1])
        assert top_k(queries, keys, 1).indices.tolist() == [[0], [0]]
        return
    with pytest.raises((ValueError, TypeError), match="^(keys|queries) (must|is empty)"):
        top_k(torch.ones(2, shape[1] if len(shape) == 2 else 3), keys, 1)


@settings(max_examples=60, deadline=None)
@given(shape=SHAPES, dtype=st.sampled_from(DTYPES), k=st.integers(-2, 6))
def test_queries_of_the_wrong_layout_and_any_k_are_refused_or_answered(shape, dtype, k):
    keys = torch.ones(4, 3)
    queries = torch.ones(shape, dtype=dtype)
    good = len(shape) == 2 and shape[1] == 3 and dtype == torch.float32
    if good and 1 <= k <= 4:
        assert top_k(queries, keys, k).indices.shape == (shape[0], k)
        return
    with pytest.raises((ValueError, TypeError), match="^(queries|k) must"):
        top_k(queries, keys, k)


def test_the_public_names():
    assert set(retrieval.__all__) == {"Retrieved", "recall_at_k", "top_k"}
