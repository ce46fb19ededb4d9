"""Chapter 10 checkers: the reference passes; each known-wrong version fails with its message."""

from __future__ import annotations

import inspect
import time

import pytest
import torch
from checker_cases import EXPECTED_AND_GOT, case_id, passes, rejects, stub
from torch.utils._pytree import tree_leaves

from mmcourse import evaluation
from mmcourse.checks import ExerciseFailed, ch10
from mmcourse.evaluation import Gaussian, PrecisionRecall

pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: threads only contend

# --- Exercise 10.1: frechet_distance -----------------------------------------------------------


def _sqrtm(a):
    values, vectors = torch.linalg.eigh(a)  # symmetric: real eigenvalues, orthogonal vectors
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def _terms(p, q):
    """‖μ_p − μ_q‖², tr Σ_p + tr Σ_q and tr (Σ_p^½ Σ_q Σ_p^½)^½, in the inputs' dtype."""
    root = _sqrtm(p.cov)
    middle = root @ q.cov @ root
    cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    return (p.mean - q.mean).pow(2).sum(), p.cov.trace() + q.cov.trace(), cross


def _frechet(p, q):
    mean_sq, traces, cross = _terms(p, q)
    return float(mean_sq + traces - 2 * cross)


def _frechet_tensor(p, q):
    mean_sq, traces, cross = _terms(p, q)
    return (mean_sq + traces - 2 * cross).clamp(min=0)  # a 0-dim tensor is one number too


def _frechet_eig_complex(p, q):
    """The root of the non-symmetric product with complex eigenvalues: right within tolerance."""
    values = torch.linalg.eigvals(p.cov @ q.cov)
    cross = values.sqrt().real.sum()
    return float((p.mean - q.mean).pow(2).sum() + p.cov.trace() + q.cov.trace() - 2 * cross)


def _separate_roots(p, q):
    cross = (_sqrtm(p.cov) @ _sqrtm(q.cov)).trace()  # BUG: right only when Σ_p Σ_q = Σ_q Σ_p
    return float((p.mean - q.mean).pow(2).sum() + p.cov.trace() + q.cov.trace() - 2 * cross)


def _no_factor_two(p, q):
    mean_sq, traces, cross = _terms(p, q)
    return float(mean_sq + traces - cross)  # BUG: − 2 tr(…)^½


def _square_root(p, q):
    return _frechet(p, q) ** 0.5  # BUG: FID is already squared


def _mean_not_squared(p, q):
    mean_sq, traces, cross = _terms(p, q)
    return float(mean_sq.sqrt() + traces - 2 * cross)  # BUG: ‖μ_p − μ_q‖


def _eig_real(p, q):
    values = torch.linalg.eigvals(p.cov @ q.cov)  # non-symmetric product: complex eigenvalues
    cross = values.real.sqrt().sum()  # BUG: tiny negative eigenvalues give NaN
    return float((p.mean - q.mean).pow(2).sum() + p.cov.trace() + q.cov.trace() - 2 * cross)


def _roots_not_clamped(p, q):
    values, vectors = torch.linalg.eigh(p.cov)
    root = (vectors * values.sqrt()) @ vectors.T  # BUG: tiny negative eigenvalues give NaN
    middle = root @ q.cov @ root
    cross = torch.linalg.eigvalsh((middle + middle.T) / 2).sqrt().sum()
    return float((p.mean - q.mean).pow(2).sum() + p.cov.trace() + q.cov.trace() - 2 * cross)


def _float64_only(p, q):
    root = _sqrtm(p.cov.double())  # BUG: float64 meets float32 covariances
    middle = root @ q.cov @ root
    cross = torch.linalg.eigvalsh(middle).clamp(min=0).sqrt().sum()
    return float((p.mean - q.mean).pow(2).sum() + p.cov.trace() + q.cov.trace() - 2 * cross)


def _offset_in_place(p, q):
    p.cov.diagonal().add_(1e-9)  # BUG: the classic ε·I offset, written into the caller's Σ_p
    q.cov.diagonal().add_(1e-9)
    return _frechet(p, q)


def _offset_without_device(p, q):
    eye = torch.eye(len(p.mean), dtype=p.cov.dtype)  # BUG: no device=
    return _frechet(Gaussian(p.mean, p.cov + 1e-12 * eye), q)


def test_frechet_distance_references_pass(capsys):
    passes(ch10.check_frechet_distance, _frechet, capsys, "10.1")
    passes(ch10.check_frechet_distance, _frechet_tensor, capsys, "10.1")
    passes(ch10.check_frechet_distance, _frechet_eig_complex, capsys, "10.1")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (
            _separate_roots,
            r"failed check 4, \"covariances that do not commute \(D = 3\)(.|\n)*looks like: the "
            r"roots taken separately, tr\(Σ_p\^½ Σ_q\^½\): right only when the covariances commute",
        ),
        (_no_factor_two, r"failed check 2, \"diagonal(.|\n)*looks like: the cross term without"),
        (
            _square_root,
            r"failed check 2, (.|\n)*expected 16, got 4 (.|\n)*looks like: the square root of the "
            r"expected distance: the Fréchet distance \(FID\) is already a squared distance",
        ),
        (_mean_not_squared, r"looks like: ‖μ_p − μ_q‖ where its square ‖μ_p − μ_q‖² belongs"),
        (
            _eig_real,
            r"rank-deficient covariances of 6 and 9 samples(.|\n)*got nan(.|\n)*looks like: NaN: "
            r"the square root of slightly negative eigenvalues(.|\n)*non-symmetric product Σ_p Σ_q",
        ),
        (
            _float64_only,
            r"failed check 11, \"runs on Gaussians p, q of D = 8, torch.float32 \(float32"
            r"(.|\n)*hint:     frechet_distance must work on float32 inputs too",
        ),
        (
            _roots_not_clamped,
            r"failed check 7, \"runs on Gaussians p, q of D = 16, torch.float64 \(rank-deficient"
            r"(.|\n)*hint:     a common cause is NaN from the square root of eigenvalues",
        ),
        (_offset_in_place, r"failed check 1, \"leaves its input p unchanged(.|\n)*p\.cov was mod"),
        (_offset_without_device, r"on the device of its inputs(.|\n)*device=x\.device"),
        (stub, r"Exercise 10\.1 \(the Fréchet distance of two Gaussians\): not implemented yet"),
    ],
    ids=case_id,
)
def test_frechet_distance_rejects(wrong, message):
    rejects(ch10.check_frechet_distance, wrong, message)


# --- Exercise 10.2: kid ------------------------------------------------------------------------


def _kernel(a, b, degree=3, per_d=True):
    return (a @ b.T / (a.shape[1] if per_d else 1) + 1) ** degree


def _kid(real, generated, kernel=_kernel, n=None, m=None, cross=2.0):
    n, m = n or len(real), m or len(generated)
    k_rr, k_gg = kernel(real, real), kernel(generated, generated)
    within_r = (k_rr.sum() - k_rr.diagonal().sum()) / (n * (n - 1))
    within_g = (k_gg.sum() - k_gg.diagonal().sum()) / (m * (m - 1))
    return float(within_r + within_g - cross * kernel(real, generated).mean())


def _kid_loops(real, generated):
    """Sums over i ≠ j written out with a mask."""
    n, m = len(real), len(generated)
    off_r = ~torch.eye(n, dtype=torch.bool, device=real.device)
    off_g = ~torch.eye(m, dtype=torch.bool, device=real.device)
    within_r = _kernel(real, real)[off_r].mean()
    within_g = _kernel(generated, generated)[off_g].mean()
    return within_r + within_g - 2 * _kernel(real, generated).mean()


def _biased(real, generated):
    k = _kernel
    return float(
        k(real, real).mean() + k(generated, generated).mean() - 2 * k(real, generated).mean()
    )


def _no_per_d(real, generated):
    return _kid(real, generated, kernel=lambda a, b: _kernel(a, b, per_d=False))


def _degree_two(real, generated):
    return _kid(real, generated, kernel=lambda a, b: _kernel(a, b, degree=2))


def _cross_once(real, generated):
    return _kid(real, generated, cross=1.0)


def _n_squared(real, generated):
    n, m = len(real), len(generated)
    k_rr, k_gg = _kernel(real, real), _kernel(generated, generated)
    within_r = (k_rr.sum() - k_rr.diagonal().sum()) / n**2  # BUG: N(N − 1) pairs
    within_g = (k_gg.sum() - k_gg.diagonal().sum()) / m**2
    return float(within_r + within_g - 2 * _kernel(real, generated).mean())


def _same_size(real, generated):
    n = len(real)
    return _kid(real, generated, n=n, m=n)  # BUG: assumes M = N


def _kid_float64_only(real, generated):
    return _kid(real.double(), generated)  # BUG: float64 meets float32 features


def _kid_scales_in_place(real, generated):
    real /= real.shape[1] ** 0.5  # BUG: the caller's features, rescaled
    generated /= generated.shape[1] ** 0.5
    return _kid(real, generated, kernel=lambda a, b: _kernel(a, b, per_d=False))


def _kid_mask_without_device(real, generated):
    n, m = len(real), len(generated)
    off_r = 1 - torch.eye(n, dtype=real.dtype)  # BUG: no device=
    off_g = 1 - torch.eye(m, dtype=real.dtype)
    within_r = (_kernel(real, real) * off_r).sum() / (n * (n - 1))
    within_g = (_kernel(generated, generated) * off_g).sum() / (m * (m - 1))
    return float(within_r + within_g - 2 * _kernel(real, generated).mean())


def test_kid_references_pass(capsys):
    passes(ch10.check_kid, _kid, capsys, "10.2")
    passes(ch10.check_kid, _kid_loops, capsys, "10.2")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (
            _biased,
            r"failed check 2, \"real \(10, 4\) against generated \(7, 4\): N ≠ M(.|\n)*looks like: "
            r"the biased estimator: the within-set means include the diagonal",
        ),
        (_no_per_d, r"failed check 2, (.|\n)*looks like: the kernel without its /D"),
        (_degree_two, r"failed check 2, (.|\n)*looks like: a kernel of degree 2"),
        (_cross_once, r"failed check 2, (.|\n)*looks like: the cross term without its factor 2"),
        (_n_squared, r"looks like: the diagonal left out but divided by N² and M²"),
        (_same_size, r"N ≠ M(.|\n)*looks like: one set's size used for both"),
        (_kid_float64_only, r"failed check 7, (.|\n)*hint:     kid must work on float32 inputs"),
        (_kid_scales_in_place, r"failed check 1, \"leaves its input real unchanged"),
        (_kid_mask_without_device, r"on the device of its inputs(.|\n)*device=x\.device"),
        (stub, r"Exercise 10\.2 \(the kernel inception distance\): not implemented yet"),
    ],
    ids=case_id,
)
def test_kid_rejects(wrong, message):
    rejects(ch10.check_kid, wrong, message)


# --- Exercise 10.3: precision_recall -----------------------------------------------------------


def _radii(x, k):
    return torch.cdist(x, x).kthvalue(k + 1, dim=1).values  # the (k + 1)-th: itself is first


def _inside(points, centres, radii, strict=False):
    d = torch.cdist(points, centres)
    inside = d < radii if strict else d <= radii
    return inside.any(dim=1).double().mean().item()


def _pr(real, generated, k=3):
    return (
        _inside(generated, real, _radii(real, k)),
        _inside(real, generated, _radii(generated, k)),
    )


def _pr_squared(real, generated, k=3):
    """Squared distances by the expansion, a sort, a PrecisionRecall of 0-dim tensors."""

    def sq(a, b):
        return (a.pow(2).sum(1)[:, None] - 2 * a @ b.T + b.pow(2).sum(1)).clamp(min=0)

    r2 = sq(real, real).sort(dim=1).values[:, k]  # (N,) column 0 is the point itself
    g2 = sq(generated, generated).sort(dim=1).values[:, k]
    precision = (sq(generated, real) <= r2).any(dim=1).double().mean()
    recall = (sq(real, generated) <= g2).any(dim=1).double().mean()
    return PrecisionRecall(precision, recall)


def _counts_itself(real, generated, k=3):
    r = torch.cdist(real, real).kthvalue(k, dim=1).values  # BUG: the point itself is the first
    g = torch.cdist(generated, generated).kthvalue(k, dim=1).values
    return _inside(generated, real, r), _inside(real, generated, g)


def _swapped(real, generated, k=3):
    precision, recall = _pr(real, generated, k)
    return recall, precision  # BUG


def _strict(real, generated, k=3):
    return (
        _inside(generated, real, _radii(real, k), strict=True),  # BUG: < where ≤ belongs
        _inside(real, generated, _radii(generated, k), strict=True),
    )


def _wrong_radii(real, generated, k=3):
    return (
        _inside(generated, real, _radii(generated, k)),  # BUG: generated radii on real balls
        _inside(real, generated, _radii(real, k)),
    )


def _k_ignored(real, generated, k=3):
    return _pr(real, generated)  # BUG: k = 3 whatever was passed


def _pr_float64_only(real, generated, k=3):
    return _pr(real.double(), generated, k)  # BUG: float64 meets float32 features


def _centres_in_place(real, generated, k=3):
    centre = real.mean(dim=0)
    real -= centre  # BUG: distances do not change, the caller's tensors do
    generated -= centre
    return _pr(real, generated, k)


def _self_masked_without_device(real, generated, k=3):
    def radii(x):
        own = torch.diag(torch.full((len(x),), float("inf"), dtype=x.dtype))  # BUG: no device=
        return (torch.cdist(x, x) + own).kthvalue(k, dim=1).values

    return (
        _inside(generated, real, radii(real)),
        _inside(real, generated, radii(generated)),
    )


def _one_number(real, generated, k=3):
    precision, recall = _pr(real, generated, k)
    return (precision + recall) / 2  # BUG: one number, not the pair


def test_precision_recall_references_pass(capsys):
    passes(ch10.check_precision_recall, _pr, capsys, "10.3")
    passes(ch10.check_precision_recall, _pr_squared, capsys, "10.3")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (
            _counts_itself,
            r"failed check 4, \"\(precision, recall\) for 4 real modes(.|\n)*looks like: radii "
            r"one neighbour short: the k-th smallest distance counts the point itself",
        ),
        (
            _swapped,
            r"failed check 4, (.|\n)*looks like: precision and recall swapped",
        ),
        (
            _strict,
            r"failed check 8, \"\(precision, recall\) for a 4 × 4 grid of real points, k = 1: "
            r"ties(.|\n)*looks like: strict < where ≤ belongs",
        ),
        (_wrong_radii, r"failed check 4, (.|\n)*looks like: radii taken from the wrong set"),
        (
            _k_ignored,
            r"failed check 12, \"\(precision, recall\) for real \(30, 4\), generated \(22, 4\), "
            r"k = 2(.|\n)*looks like: k ignored: the result of k = 3",
        ),
        (
            _pr_float64_only,
            r"float32(.|\n)*it raised RuntimeError(.|\n)*hint:     precision_recall must work on",
        ),
        (_centres_in_place, r"failed check 1, \"leaves its input real unchanged"),
        (_self_masked_without_device, r"on the device of its inputs(.|\n)*device=x\.device"),
        (_one_number, r"returns a tuple \(precision, recall\)(.|\n)*expected: a tuple of 2 values"),
        (stub, r"Exercise 10\.3 \(precision and recall\): not implemented yet"),
    ],
    ids=case_id,
)
def test_precision_recall_rejects(wrong, message):
    rejects(ch10.check_precision_recall, wrong, message)


# --- Exercise 10.4: clip_score -----------------------------------------------------------------


def _clip(image_emb, text_emb, w=2.5):
    a = image_emb / image_emb.norm(dim=1, keepdim=True)
    b = text_emb / text_emb.norm(dim=1, keepdim=True)
    return w * (a * b).sum(dim=1).clamp(min=0)  # (N,) in the inputs' dtype


def _clip_float64(image_emb, text_emb, w=2.5):
    cos = torch.nn.functional.cosine_similarity(image_emb.double(), text_emb.double(), dim=1)
    return w * torch.relu(cos)


def _no_clamp(image_emb, text_emb, w=2.5):
    a = image_emb / image_emb.norm(dim=1, keepdim=True)
    b = text_emb / text_emb.norm(dim=1, keepdim=True)
    return w * (a * b).sum(dim=1)  # BUG: negative cosines stay negative


def _no_w(image_emb, text_emb, w=2.5):
    return _clip(image_emb, text_emb, 1.0)  # BUG: w forgotten


def _w_fixed(image_emb, text_emb, w=2.5):
    return _clip(image_emb, text_emb)  # BUG: always 2.5


def _dot(image_emb, text_emb, w=2.5):
    return w * (image_emb * text_emb).sum(dim=1).clamp(min=0)  # BUG: not normalised


def _all_pairs(image_emb, text_emb, w=2.5):
    a = image_emb / image_emb.norm(dim=1, keepdim=True)
    b = text_emb / text_emb.norm(dim=1, keepdim=True)
    return w * (a @ b.T).clamp(min=0)  # BUG: (N, N), every image with every caption


def _clip_float32(image_emb, text_emb, w=2.5):
    return _clip(image_emb.float(), text_emb.float(), w)  # BUG: float64 inputs, float32 scores


def _normalised_in_place(image_emb, text_emb, w=2.5):
    image_emb /= image_emb.norm(dim=1, keepdim=True)  # BUG: the caller's embeddings
    text_emb /= text_emb.norm(dim=1, keepdim=True)
    return w * (image_emb * text_emb).sum(dim=1).clamp(min=0)


def _zeros_without_device(image_emb, text_emb, w=2.5):
    cos = torch.nn.functional.cosine_similarity(image_emb, text_emb, dim=1)
    return w * torch.maximum(cos, torch.zeros(len(cos), dtype=cos.dtype))  # BUG: no device=


def _scores_on_the_host(image_emb, text_emb, w=2.5):
    return _clip(image_emb, text_emb, w).cpu()  # BUG on a GPU: the scores leave its device


def test_clip_score_references_pass(capsys):
    passes(ch10.check_clip_score, _clip, capsys, "10.4")
    passes(ch10.check_clip_score, _clip_float64, capsys, "10.4")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (
            _no_clamp,
            r"failed check 2, \"6 matched pairs \(3 with negative cosines\)(.|\n)*looks like: no "
            r"clamp at 0: a negative cosine must give 0",
        ),
        (_no_w, r"failed check 2, (.|\n)*looks like: w forgotten: the cosines without their "
         r"factor w = 2\.5"),
        (_w_fixed, r"failed check 4, \"7 matched pairs, w = 1\.0(.|\n)*looks like: w fixed at 2"),
        (_dot, r"failed check 2, (.|\n)*looks like: the embeddings not normalised: a dot product"),
        (
            _all_pairs,
            r"failed check 1, (.|\n)*expected: a tensor of shape \(6,\)\n  got:      tensor of "
            r"shape \(6, 6\)(.|\n)*matched pairs: multiply row by row",
        ),
        (_clip_float32, r"failed check 2, (.|\n)*expected: dtype torch\.float64\n  got:      dty"),
        (_normalised_in_place, r"failed check 1, \"leaves its input image_emb unchanged"),
        (_zeros_without_device, r"on the device of its inputs(.|\n)*device=x\.device"),
        (stub, r"Exercise 10\.4 \(CLIPScore\): not implemented yet"),
    ],
    ids=case_id,
)  # fmt: skip
def test_clip_score_rejects(wrong, message):
    rejects(ch10.check_clip_score, wrong, message)


def test_clip_scores_left_on_the_host_are_named():
    with pytest.raises(ExerciseFailed, match="returns its tensors on the device of its inputs"):
        ch10.check_clip_score(_scores_on_the_host)


# --- every checker -----------------------------------------------------------------------------

REFERENCES = [
    (ch10.check_frechet_distance, _frechet),
    (ch10.check_kid, _kid),
    (ch10.check_precision_recall, _pr),
    (ch10.check_clip_score, _clip),
]


@pytest.mark.parametrize(("checker", "reference"), REFERENCES, ids=case_id)
def test_checks_run_on_the_chosen_device(checker, reference, device, capsys):
    seen = set()

    def spy(*args, **kwargs):  # Gaussians hold their tensors inside: look at every leaf
        seen.update(x.device for x in tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor))
        return reference(*args, **kwargs)

    spy.__signature__ = inspect.signature(reference)
    checker(spy, device=device)
    assert "✓" in capsys.readouterr().out
    assert seen == {torch.device(device)}


@pytest.mark.parametrize(("checker", "reference"), REFERENCES, ids=case_id)
def test_checks_are_fast(checker, reference, capsys):
    start = time.perf_counter()
    checker(reference)
    assert time.perf_counter() - start < 2.0


WRONG_KINDS = {  # a scalar metric's right value, returned as something else
    "None": lambda result: None,
    "a 1-tuple": lambda result: (result,),
    "a tensor of shape (1,)": lambda result: torch.tensor([float(result)]),
}


def _device_of(args):
    return next(x.device for x in tree_leaves(args) if isinstance(x, torch.Tensor))


SCALARS = REFERENCES[:2]  # FID and KID: one number each


@pytest.mark.parametrize("kind", WRONG_KINDS)
@pytest.mark.parametrize(("checker", "reference"), SCALARS, ids=case_id)
def test_a_wrong_kind_of_number_gets_expected_and_got(checker, reference, kind):
    def wrong(*args, **kwargs):
        result = WRONG_KINDS[kind](reference(*args, **kwargs))
        return result.to(_device_of(args)) if isinstance(result, torch.Tensor) else result

    rejects(checker, wrong, EXPECTED_AND_GOT + r"(.|\n)*one number")


@pytest.mark.parametrize(
    "wrong",
    [
        lambda real, generated, k=3: None,
        lambda real, generated, k=3: (_pr(real, generated, k),),
        lambda real, generated, k=3: dict(zip(("precision", "recall"), _pr(real, generated, k))),
        lambda real, generated, k=3: (torch.tensor(_pr(real, generated, k)), 1.0),
    ],
    ids=["None", "a 1-tuple", "a dict", "a tensor of two in a pair"],
)
def test_precision_recall_of_a_wrong_kind_gets_expected_and_got(wrong):
    rejects(ch10.check_precision_recall, wrong, EXPECTED_AND_GOT)


@pytest.mark.parametrize(
    "wrong",
    [
        lambda image_emb, text_emb, w=2.5: None,
        lambda image_emb, text_emb, w=2.5: (_clip(image_emb, text_emb, w),),
        lambda image_emb, text_emb, w=2.5: _clip(image_emb, text_emb, w).tolist(),
        lambda image_emb, text_emb, w=2.5: _clip(image_emb, text_emb, w)[None],
        lambda image_emb, text_emb, w=2.5: _clip(image_emb, text_emb, w).mean(),
    ],
    ids=["None", "a 1-tuple", "a list", "an extra dim", "the mean"],
)
def test_clip_score_of_a_wrong_kind_gets_expected_and_got(wrong):
    rejects(ch10.check_clip_score, wrong, EXPECTED_AND_GOT)


def _frechet_with_package_root(p, q):
    root = evaluation.sqrtm_psd(p.cov)  # the exercise's own matrix square root, borrowed
    middle = root @ q.cov @ root
    cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    return float((p.mean - q.mean).pow(2).sum() + p.cov.trace() + q.cov.trace() - 2 * cross)


def _kid_on_package_gaussians(real, generated):
    evaluation.gaussian(real)  # a package function of no exercise here: fine to use
    return _kid(real, generated)


def test_the_package_square_root_is_part_of_the_answer(capsys, monkeypatch):
    ch10.check_frechet_distance(_frechet_with_package_root)
    assert "but it calls mmcourse.evaluation.sqrtm_psd" in capsys.readouterr().out
    monkeypatch.setenv("MMCOURSE_GRADED", "1")
    with pytest.raises(ExerciseFailed, match="delegates to mmcourse.evaluation.sqrtm_psd"):
        ch10.check_frechet_distance(_frechet_with_package_root)


def test_other_package_functions_are_free_to_use(capsys, monkeypatch):
    monkeypatch.setenv("MMCOURSE_GRADED", "1")
    ch10.check_kid(_kid_on_package_gaussians)
    assert "but it calls" not in capsys.readouterr().out
