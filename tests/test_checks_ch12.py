"""Chapter 12 checker: the references pass (a loop over the queries too); each known-wrong
version fails with its message."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from checker_cases import (
    WRONG_KINDS,
    case_id,
    devices_seen,
    passes,
    rejects,
    rejects_wrong_kind,
    stub,
)

from mmcourse import retrieval
from mmcourse.checks import ExerciseFailed, ch12

pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: threads only contend


def _validate(queries, keys, k, exclude):
    n = len(keys)
    if queries.shape[1] != keys.shape[1]:
        raise ValueError(f"queries have E = {queries.shape[1]}, keys E = {keys.shape[1]}")
    if k > n - (exclude is not None):
        raise ValueError(f"k = {k} is more than the memory's {n} keys can give")


def _masked(sim, exclude):
    """sim (Q, N) with −inf at (i, exclude[i]) where exclude[i] ≥ 0."""
    if exclude is None:
        return sim
    own = exclude[:, None]
    drop = torch.zeros_like(sim, dtype=torch.bool).scatter(1, own.clamp(min=0), own >= 0)
    return sim.masked_fill(drop, -torch.inf)


def _top_k(queries, keys, k, exclude=None):
    _validate(queries, keys, k, exclude)
    sim = F.normalize(queries, dim=1) @ F.normalize(keys, dim=1).T  # (Q, N)
    scores, indices = _masked(sim, exclude).sort(dim=1, descending=True, stable=True)
    return scores[:, :k], indices[:, :k]


def _top_k_loop(queries, keys, k, exclude=None):
    """One query at a time, cosine_similarity and argsort: slower, and just as right."""
    _validate(queries, keys, k, exclude)
    scores, indices = [], []
    for i, q in enumerate(queries):
        sim = F.cosine_similarity(q[None, :], keys, dim=1)  # (N,)
        if exclude is not None and exclude[i] >= 0:
            sim = sim.clone()
            sim[exclude[i]] = -torch.inf
        order = (-sim).argsort(stable=True)[:k]  # ascending −cos: best first, ties in order
        scores.append(sim[order])
        indices.append(order)
    return torch.stack(scores), torch.stack(indices)


def _top_k_named(queries, keys, k, exclude=None):
    """A named tuple, as torch.sort returns: (values, indices) is a pair too."""
    _validate(queries, keys, k, exclude)
    sim = F.normalize(queries, dim=1) @ F.normalize(keys, dim=1).T
    result = _masked(sim, exclude).sort(dim=1, descending=True, stable=True)
    return type(result)((result.values[:, :k], result.indices[:, :k]))


def test_references_pass(capsys):
    passes(ch12.check_top_k, _top_k, capsys, "12.1")
    passes(ch12.check_top_k, _top_k_loop, capsys, "12.1")
    passes(ch12.check_top_k, _top_k_named, capsys, "12.1")


# --- the known-wrong versions ------------------------------------------------------------------


def _ranked(sim, k, exclude=None, descending=True):
    scores, indices = _masked(sim, exclude).sort(dim=1, descending=descending, stable=True)
    return scores[:, :k], indices[:, :k]


def _cos(queries, keys):
    return F.normalize(queries, dim=1) @ F.normalize(keys, dim=1).T


def _dot(queries, keys, k, exclude=None):
    _validate(queries, keys, k, exclude)
    return _ranked(queries @ keys.T, k, exclude)  # BUG: not normalised


def _queries_not_normalised(queries, keys, k, exclude=None):
    _validate(queries, keys, k, exclude)
    return _ranked(queries @ F.normalize(keys, dim=1).T, k, exclude)  # BUG: ‖q‖ · cos


def _highest_index_first(queries, keys, k, exclude=None):
    _validate(queries, keys, k, exclude)
    n = len(keys)
    scores, indices = _ranked(_cos(queries, keys).flip(1), k, None)  # BUG: ties to the highest
    indices = n - 1 - indices
    if exclude is not None:  # excluded afterwards on the flipped order: only ties matter here
        return _top_k(queries, keys, k, exclude)
    return scores, indices


def _topk(queries, keys, k, exclude=None):
    _validate(queries, keys, k, exclude)
    result = _masked(_cos(queries, keys), exclude).topk(k, dim=1)  # BUG: ties in any order
    return result.values, result.indices


def _ascending(queries, keys, k, exclude=None):
    _validate(queries, keys, k, exclude)
    return _ranked(_cos(queries, keys), k, exclude, descending=False)  # BUG: least similar


def _worst_first(queries, keys, k, exclude=None):
    scores, indices = _top_k(queries, keys, k, exclude)
    return scores.flip(1), indices.flip(1)  # BUG: best last


def _row0(queries, keys, k, exclude=None):
    _validate(queries, keys, k, exclude)
    sim = _masked(_cos(queries, keys), exclude)
    order = sim.sort(dim=1, descending=True, stable=True).indices
    indices = order[:1, :k].expand(len(queries), k)  # BUG: row 0's ranking for every row
    return sim.gather(1, indices), indices


def _k_plus_one(queries, keys, k, exclude=None):
    _validate(queries, keys, k, exclude)
    return _ranked(_cos(queries, keys), k + 1, exclude)  # BUG: index k included


def _k_minus_one(queries, keys, k, exclude=None):
    _validate(queries, keys, k, exclude)
    return _ranked(_cos(queries, keys), k - 1, exclude)  # BUG: [:, :k - 1]


def _exclude_ignored(queries, keys, k, exclude=None):
    return _top_k(queries, keys, k)  # BUG: exclude never used


def _minus_one_is_the_last_key(queries, keys, k, exclude=None):
    _validate(queries, keys, k, exclude)
    sim = _cos(queries, keys)
    if exclude is not None:
        rows = torch.arange(len(queries), device=queries.device)
        sim[rows, exclude] = -torch.inf  # BUG: exclude = −1 masks key N − 1
    return _ranked(sim, k)


def _diagonal(queries, keys, k, exclude=None):
    _validate(queries, keys, k, exclude)
    sim = _cos(queries, keys)
    if exclude is not None:
        sim.fill_diagonal_(-torch.inf)  # BUG: key i for query i, whatever exclude says
    return _ranked(sim, k)


def _mask_without_device(queries, keys, k, exclude=None):
    _validate(queries, keys, k, exclude)
    sim = _cos(queries, keys)
    if exclude is not None:
        drop = torch.zeros(sim.shape, dtype=torch.bool)  # BUG: no device=
        for i, j in enumerate(exclude.tolist()):
            if j >= 0:
                drop[i, j] = True
        sim = sim.masked_fill(drop, -torch.inf)
    return _ranked(sim, k)


def _normalised_in_place(queries, keys, k, exclude=None):
    _validate(queries, keys, k, exclude)
    queries /= queries.norm(dim=1, keepdim=True)  # BUG: the caller's queries
    return _ranked(queries @ F.normalize(keys, dim=1).T, k, exclude)


def _float64_scores(queries, keys, k, exclude=None):
    scores, indices = _top_k(queries.double(), keys.double(), k, exclude)
    return scores, indices  # BUG: float32 inputs, float64 scores


def _swapped(queries, keys, k, exclude=None):
    scores, indices = _top_k(queries, keys, k, exclude)
    return indices, scores  # BUG: the documented order is (scores, indices)


def _no_value_errors(queries, keys, k, exclude=None):
    sim = _masked(_cos(queries, keys), exclude)  # BUG: k > N and E ≠ E are never checked
    return _ranked(sim, k)


def _k_checked_without_exclude(queries, keys, k, exclude=None):
    if queries.shape[1] != keys.shape[1] or k > len(keys):
        raise ValueError("bad sizes")
    sim = _masked(_cos(queries, keys), exclude)  # BUG: k = N with exclude returns −inf
    return _ranked(sim, k)


def _results_on_the_host(queries, keys, k, exclude=None):
    scores, indices = _top_k(queries, keys, k, exclude)
    return scores.cpu(), indices.cpu()  # BUG on a GPU: the results leave its device


NORMS = r"\"indices for keys of very different norms, k = 3: cosines, not dots\""
SELF = r"\"indices for a memory of 8 retrieving from itself"


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_dot, rf"failed check 2, {NORMS}(.|\n)*looks like: the embeddings not normalised: a "
         r"dot product ranks the long keys first"),
        (_queries_not_normalised, r"failed check 3, \"scores for keys of very different norms"
         r"(.|\n)*looks like: keys normalised but not the queries"),
        (_highest_index_first, r"failed check 11, \"indices for keys with exactly equal cosines"
         r"(.|\n)*looks like: ties broken to the highest key index"),
        (_ascending, rf"failed check 2, {NORMS}(.|\n)*looks like: the k least similar keys"),
        (_worst_first, r"failed check 2, (.|\n)*looks like: the right k keys in reverse order"),
        (_row0, rf"failed check 2, {NORMS}(.|\n)*looks like: row 0's indices used for every row"),
        (_k_plus_one, rf"failed check 2, {NORMS}:\n  expected: shape \(2, 3\)\n  got:      shape"
         r" \(2, 4\)\n  looks like: k \+ 1 keys per query"),
        (_k_minus_one, r"failed check 2, (.|\n)*looks like: k − 1 keys per query"),
        (_exclude_ignored, rf"failed check 14, {SELF}(.|\n)*looks like: exclude ignored"),
        (_minus_one_is_the_last_key, rf"failed check 14, {SELF}(.|\n)*looks like: exclude = −1 "
         r"read as the last key \(Python's negative index\)"),
        (_diagonal, rf"failed check 14, {SELF}(.|\n)*looks like: the diagonal excluded"),
        (_mask_without_device, r"on the device of its inputs(.|\n)*device=x\.device"),
        (_normalised_in_place, r"failed check 1, \"leaves its input queries unchanged"),
        (_float64_scores, r"\"scores for float32 embeddings(.|\n)*expected: dtype torch\.float32"
         r"\n  got:      dtype torch\.float64(.|\n)*keep the inputs' dtype"),
        (_swapped, rf"failed check 2, {NORMS}:\n  expected: dtype torch\.int64\n  got:      dtype "
         r"torch\.float64\n  hint:     (.|\n)*returning \(indices, scores\)"),
        (_no_value_errors, r"\"raises ValueError for an empty memory, keys of shape \(0, 4\), "
         r"k = 1\":\n  expected: ValueError\n  got:      no error"),
        (_k_checked_without_exclude, r"\"raises ValueError for k = N = 6 with exclude given"
         r"(.|\n)*got:      no error(.|\n)*check the sizes first"),
        (_results_on_the_host, r"returns its tensors on the device of its inputs"),
        (stub, r"Exercise 12\.1 \(top-k cosine retrieval\): not implemented yet"),
    ],
    ids=case_id,
)  # fmt: skip
def test_top_k_rejects(wrong, message):
    rejects(ch12.check_top_k, wrong, message)


def test_topk_with_ties_in_any_order_is_caught():
    # torch.topk's order among equal values is unspecified (on the CPU: keys 1, 6, 4 here)
    with pytest.raises(ExerciseFailed) as failed:
        ch12.check_top_k(_topk, device="cpu")
    message = str(failed.value)
    assert 'failed check 11, "indices for keys with exactly equal cosines' in message, message
    assert "hint:     torch.topk and an unstable sort return keys of equal score" in message


@pytest.mark.parametrize("kind", WRONG_KINDS)
def test_a_wrong_kind_of_result_gets_expected_and_got(kind):
    rejects_wrong_kind(ch12.check_top_k, _top_k, kind)


def test_the_check_runs_on_the_chosen_device(device, capsys):
    assert devices_seen(ch12.check_top_k, _top_k, device, capsys) == {torch.device(device)}


def test_the_check_is_fast(capsys):
    start = time.perf_counter()
    ch12.check_top_k(_top_k_loop)
    assert time.perf_counter() - start < 2.0


def test_the_package_reference_passes_with_a_note_and_fails_graded(capsys, monkeypatch):
    ch12.check_top_k(retrieval.top_k)
    assert "but it calls mmcourse.retrieval.top_k" in capsys.readouterr().out
    monkeypatch.setenv("MMCOURSE_GRADED", "1")
    with pytest.raises(ExerciseFailed, match="delegates to mmcourse.retrieval.top_k"):
        ch12.check_top_k(retrieval.top_k)
