"""Chapter 01 checkers: the reference passes; each known-wrong version fails with its message."""

from __future__ import annotations

import pytest
import torch
from checker_cases import case_id, devices_seen, passes, rejects, stub

from mmcourse import vq
from mmcourse.checks import ExerciseFailed, ch01

# --- Exercise 1.1: squared_distances -----------------------------------------------------------


def _row_norm_as_row(z, codebook):
    z_sq = z.pow(2).sum(dim=1)  # BUG: (N,) broadcasts as a row
    return z_sq - 2 * z @ codebook.T + codebook.pow(2).sum(dim=1)


def _transposed(z, codebook):
    return vq.squared_distances(z, codebook).T  # BUG: (K, N)


def _sum_wrong_axis(z, codebook):
    return (z[:, None, :] - codebook[None, :, :]).pow(2).sum(dim=1)  # BUG: sums over the codes


def _no_factor_two(z, codebook):
    z_sq = z.pow(2).sum(dim=1, keepdim=True)
    return z_sq - z @ codebook.T + codebook.pow(2).sum(dim=1)  # BUG: − z·e, not − 2 z·e


def _naive_broadcast(z, codebook):
    if z.shape[1] != codebook.shape[1]:
        raise ValueError("D differs")
    return (z[:, None, :] - codebook[None, :, :]).pow(2).sum(dim=2)  # right, but (N, K, D)


def _float32(z, codebook):
    return vq.squared_distances(z.float(), codebook.float())


def _no_shape_check(z, codebook):
    z_sq = z.pow(2).sum(dim=1, keepdim=True)
    return z_sq - 2 * z @ codebook.T + codebook.pow(2).sum(dim=1)


def _expansion(z, codebook):
    if z.shape[1] != codebook.shape[1]:
        raise ValueError(f"z {tuple(z.shape)} and codebook {tuple(codebook.shape)} differ in D")
    return _no_shape_check(z, codebook)


def _cdist(z, codebook):
    _expansion(z[:0], codebook)  # the shape check
    return torch.cdist(z, codebook).pow(2)


def _cdist_not_squared(z, codebook):
    _expansion(z[:0], codebook)  # the shape check
    return torch.cdist(z, codebook)  # BUG: distances, not squared


def _centres_in_place(z, codebook):
    centre = codebook.mean(dim=0)
    z -= centre  # BUG: centring both keeps every distance, but changes the caller's tensors
    codebook -= centre
    return _expansion(z, codebook)


def test_squared_distances_references_pass(capsys):
    passes(ch01.check_squared_distances, vq.squared_distances, capsys, "1.1")
    passes(ch01.check_squared_distances, _expansion, capsys, "1.1")
    passes(ch01.check_squared_distances, _cdist, capsys, "1.1")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (
            _row_norm_as_row,
            r"failed check 1, \"distances from 4 vectors(.|\n)*looks like: every row holding "
            r"all the ‖z_k‖²: ‖z‖² broadcast as a row \(1, N\) where a column \(N, 1\)",
        ),
        (
            _transposed,
            r"failed check 1, (.|\n)*looks like: every row(.|\n)*or the result transposed",
        ),
        (_sum_wrong_axis, r"failed check 1, (.|\n)*got:      shape \(4, 3\)"),
        (
            _no_factor_two,
            r"failed check 2, \"vectors that are codes(.|\n)*looks like: the cross term without "
            r"its factor 2",
        ),
        (
            _cdist_not_squared,
            r"failed check 1, (.|\n)*looks like: distances, not squared distances: torch\.cdist",
        ),
        (_naive_broadcast, r"builds no \(N, K, D\) tensor(.|\n)*32768 elements(.|\n)*z @ codebook"),
        (_float32, r"keeps dtype float64(.|\n)*got:      dtype torch\.float32"),
        (_no_shape_check, r"raises ValueError when z has D = 3(.|\n)*got:      RuntimeError"),
        (_centres_in_place, r"failed check 2, \"leaves its input z unchanged(.|\n)*clone"),
        (stub, r"Exercise 1\.1 \(squared distances to every code\): not implemented yet"),
    ],
    ids=case_id,
)
def test_squared_distances_rejects(wrong, message):
    rejects(ch01.check_squared_distances, wrong, message)


def test_a_cdist_answer_gets_no_broadcasting_hint():
    with pytest.raises(ExerciseFailed) as info:
        ch01.check_squared_distances(_cdist_not_squared)
    assert "broadcast" not in str(info.value) and "hint:" not in str(info.value)


# --- Exercise 1.2: vq_losses -------------------------------------------------------------------


def _losses(z_e, e, beta=0.25):
    codebook_loss = (z_e.detach() - e).pow(2).mean()
    commitment_loss = beta * (z_e - e.detach()).pow(2).mean()
    return codebook_loss, commitment_loss


def _beta_on_codebook(z_e, e, beta=0.25):
    codebook_loss = beta * (z_e.detach() - e).pow(2).mean()  # BUG: β on the wrong term
    return codebook_loss, (z_e - e.detach()).pow(2).mean()


def _no_sg_in_codebook_loss(z_e, e, beta=0.25):
    return (z_e - e).pow(2).mean(), _losses(z_e, e, beta)[1]  # BUG: z_e not detached


def _no_sg_in_commitment_loss(z_e, e, beta=0.25):
    return _losses(z_e, e, beta)[0], beta * (z_e - e).pow(2).mean()  # BUG: e not detached


def _no_stop_gradients(z_e, e, beta=0.25):
    return (z_e - e).pow(2).mean(), beta * (z_e - e).pow(2).mean()


def _sums(z_e, e, beta=0.25):
    return (z_e.detach() - e).pow(2).sum(), beta * (z_e - e.detach()).pow(2).sum()


def _sums_over_d(z_e, e, beta=0.25):
    codebook_loss = (z_e.detach() - e).pow(2).sum(dim=1).mean()  # BUG: a sum over D
    return codebook_loss, beta * (z_e - e.detach()).pow(2).sum(dim=1).mean()


def _fixed_beta(z_e, e, beta=0.25):
    return _losses(z_e, e, 0.25)


def _default_beta_one(z_e, e, beta=1.0):
    return _losses(z_e, e, beta)  # BUG: the documented default is 0.25


def _float32_losses(z_e, e, beta=0.25):
    return tuple(loss.float() for loss in _losses(z_e, e, beta))


def test_vq_losses_references_pass(capsys):
    passes(ch01.check_vq_losses, vq.quantize_losses, capsys, "1.2")
    passes(ch01.check_vq_losses, _losses, capsys, "1.2")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (
            _beta_on_codebook,
            r"codebook_loss with beta=0\.25(.|\n)*looks like: β on the codebook term: β "
            r"multiplies only the commitment term",
        ),
        (_no_sg_in_codebook_loss, r"codebook loss gives z_e no gradient(.|\n)*z_e\.detach\(\)"),
        (_no_sg_in_commitment_loss, r"commitment loss gives the codes e no gradient(.|\n)*e\.det"),
        (_no_stop_gradients, r"codebook loss gives z_e no gradient: sg\(z_e\)"),
        (
            _sums,
            r"codebook_loss with beta=0\.25: the mean(.|\n)*values differ(.|\n)*looks like: a "
            r"factor of N·D = 18 too large: a sum over N·D where a mean belongs",
        ),
        (_sums_over_d, r"codebook_loss with(.|\n)*looks like: a factor of D = 3 too large: a sum"),
        (_fixed_beta, r"commitment_loss with beta=2\.0(.|\n)*looks like: β fixed at 0\.25"),
        (_default_beta_one, r"commitment_loss with beta left out(.|\n)*beta=0\.25\)"),
        (_float32_losses, r"float64 and the device \(codebook_loss\)(.|\n)*torch\.float32"),
        (stub, r"Exercise 1\.2 \(codebook and commitment losses\): not implemented yet"),
    ],
    ids=case_id,
)
def test_vq_losses_rejects(wrong, message):
    rejects(ch01.check_vq_losses, wrong, message)


def test_a_sum_over_d_gets_no_beta_hint():
    with pytest.raises(ExerciseFailed) as info:
        ch01.check_vq_losses(_sums_over_d)
    assert "β" not in str(info.value).split("looks like:")[1]
    assert "hint:" not in str(info.value)


# --- Exercise 1.3: vq_forward ------------------------------------------------------------------


def _forward(z_e, codebook, beta=0.25):
    tokens = _expansion(z_e.detach(), codebook.detach()).argmin(dim=1)  # (N,)
    e = codebook[tokens]  # (N, D)
    codebook_loss, commitment_loss = _losses(z_e, e, beta)
    return z_e + (e - z_e).detach(), tokens, codebook_loss, commitment_loss


def _package_forward(z_e, codebook, beta=0.25):
    tokens = vq.nearest_code(z_e, codebook)
    e = codebook[tokens]
    return (vq.straight_through(z_e, e), tokens, *vq.quantize_losses(z_e, e, beta))


def _no_straight_through(z_e, codebook, beta=0.25):
    _, tokens, codebook_loss, commitment_loss = _forward(z_e, codebook, beta)
    return codebook[tokens], tokens, codebook_loss, commitment_loss  # BUG: z_q = e


def _straight_through_without_detach(z_e, codebook, beta=0.25):
    _, tokens, codebook_loss, commitment_loss = _forward(z_e, codebook, beta)
    e = codebook[tokens]
    return z_e + (e - z_e), tokens, codebook_loss, commitment_loss  # BUG: z_e cancels out


def _losses_after_straight_through(z_e, codebook, beta=0.25):
    tokens = _expansion(z_e.detach(), codebook.detach()).argmin(dim=1)
    z_q = z_e + (codebook[tokens] - z_e).detach()
    return (z_q, tokens, *_losses(z_e, z_q, beta))  # BUG: z_q's gradient goes to z_e


def _row_norm_as_row_forward(z_e, codebook, beta=0.25):
    tokens = _row_norm_as_row(z_e.detach(), codebook.detach()).argmin(dim=1)
    e = codebook[tokens]
    return (z_e + (e - z_e).detach(), tokens, *_losses(z_e, e, beta))


def _argmin_over_vectors(z_e, codebook, beta=0.25):
    tokens = _expansion(z_e.detach(), codebook.detach()).argmin(dim=0)  # BUG: over dim 0
    e = codebook[tokens]
    return (z_e + (e - z_e).detach(), tokens, *_losses(z_e, e, beta))


def _beta_on_codebook_forward(z_e, codebook, beta=0.25):
    z_q, tokens, _, _ = _forward(z_e, codebook, beta)
    return (z_q, tokens, *_beta_on_codebook(z_e, codebook[tokens], beta))


def _no_sg_forward(z_e, codebook, beta=0.25):
    z_q, tokens, _, _ = _forward(z_e, codebook, beta)
    return (z_q, tokens, *_no_stop_gradients(z_e, codebook[tokens], beta))


def _fixed_beta_forward(z_e, codebook, beta=0.25):
    return _forward(z_e, codebook, 0.25)  # BUG: β hard-coded


def _forward_default_beta(z_e, codebook, beta=0.5):
    return _forward(z_e, codebook, beta)  # BUG: the documented default is 0.25


def _forward_float32_losses(z_e, codebook, beta=0.25):
    z_q, tokens, codebook_loss, commitment_loss = _forward(z_e, codebook, beta)
    return z_q, tokens, codebook_loss.float(), commitment_loss.float()


def test_vq_forward_references_pass(capsys):
    passes(ch01.check_vq_forward, _forward, capsys, "1.3")
    passes(ch01.check_vq_forward, _package_forward, capsys, "1.3")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_no_straight_through, r"reaches z_e unchanged(.|\n)*z_e \+ \(e − z_e\)\.detach\(\)"),
        (_straight_through_without_detach, r"straight-through: the decoder's gradient"),
        (
            _losses_after_straight_through,
            r"codebook loss gives the codebook its(.|\n)*hint:     a common cause is losses "
            r"computed after the straight-through step",
        ),
        (
            _row_norm_as_row_forward,
            r"tokens \(N,\) long for N=8(.|\n)*looks like: the nearest codes by ‖z‖² broadcast "
            r"as a row \(1, N\) where a column \(N, 1\) belongs",
        ),
        (
            _argmin_over_vectors,
            r"tokens \(N,\) long for N=8 (.|\n)*looks like: argmin over the vectors \(dim=0\)",
        ),
        (
            _beta_on_codebook_forward,
            r"codebook_loss \(N=8, K=8, beta=0\.25\)(.|\n)*looks like: β on the codebook term",
        ),
        (
            _fixed_beta_forward,
            r"commitment_loss \(N=10, K=6, beta=2\.0\)(.|\n)*looks like: β fixed at 0\.25",
        ),
        (_forward_default_beta, r"commitment_loss with beta left out(.|\n)*beta=0\.25\)"),
        (_forward_float32_losses, r"float64 and the device for codebook_loss(.|\n)*float32"),
        (_no_sg_forward, r"the codebook loss gives z_e no gradient"),
        (stub, r"Exercise 1\.3 \(the VQ layer's forward pass\): not implemented yet"),
    ],
    ids=case_id,
)
def test_vq_forward_rejects(wrong, message):
    rejects(ch01.check_vq_forward, wrong, message)


# --- Exercise 1.4: codebook_usage --------------------------------------------------------------


def _usage(tokens, num_codes):
    return vq.code_usage(tokens, num_codes), vq.perplexity(tokens, num_codes)


def _nan_for_unused_codes(tokens, num_codes):
    counts = torch.bincount(tokens.flatten(), minlength=num_codes)
    p = counts / counts.sum()
    return (counts > 0).float().mean().item(), torch.exp(-(p * p.log()).sum()).item()  # BUG


def _usage_over_tokens(tokens, num_codes):
    usage = len(tokens.unique()) / tokens.numel()  # BUG: a fraction of the tokens
    return usage, vq.perplexity(tokens, num_codes)


def _no_minlength(tokens, num_codes):
    counts = torch.bincount(tokens.flatten())  # BUG: only up to the largest token
    return (counts > 0).float().mean().item(), vq.perplexity(tokens, num_codes)


def _entropy_not_perplexity(tokens, num_codes):
    p = torch.bincount(tokens.flatten(), minlength=num_codes).float() / tokens.numel()
    return vq.code_usage(tokens, num_codes), -torch.special.xlogy(p, p).sum().item()


def _usage_as_vector(tokens, num_codes):
    counts = torch.bincount(tokens.flatten(), minlength=num_codes)
    return (counts > 0).float(), vq.perplexity(tokens, num_codes)  # BUG: not averaged


def _usage_only(tokens, num_codes):
    return vq.code_usage(tokens, num_codes)  # BUG: perplexity missing


def test_codebook_usage_reference_passes(capsys):
    passes(ch01.check_codebook_usage, _usage, capsys, "1.4")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (
            _nan_for_unused_codes,
            r"perplexity for one code used 10 times(.|\n)*got:      nan(.|\n)*xlogy",
        ),
        (_usage_over_tokens, r"usage for one code used 10 times(.|\n)*not over the tokens"),
        (_no_minlength, r"usage for one code used 10(.|\n)*got:      0\.333333(.|\n)*minlength"),
        (
            _entropy_not_perplexity,
            r"perplexity for one code(.|\n)*got:      -0\n(.|\n)*exp of the entropy",
        ),
        (
            _usage_as_vector,
            r"\"usage for one code used 10 times of K=4 is one number\":\n  expected: one number "
            r"\(a float, or a tensor of shape \(\)\)\n  got:      tensor of shape \(4,\)",
        ),
        (
            _usage_only,
            r"\"returns a tuple \(usage, perplexity\)\":\n  expected: a tuple of 2 values\n  got:"
            r"      0\.25\n  hint:     end with `return usage, perplexity`",
        ),
        (stub, r"Exercise 1\.4 \(codebook usage and perplexity\): not implemented yet"),
    ],
    ids=case_id,
)
def test_codebook_usage_rejects(wrong, message):
    rejects(ch01.check_codebook_usage, wrong, message)


# --- Exercise 1.5: restart_dead_codes ----------------------------------------------------------


def _restart(codebook, counts, z, threshold=1.0, generator=None):
    codebook = codebook.clone()
    vq.restart_dead_codes(codebook, counts, z, threshold=threshold, generator=generator)
    return codebook


def _rows(n, k, generator):
    if k <= n:
        return torch.randperm(n, generator=generator)[:k]
    return torch.randint(n, (k,), generator=generator)


def _restart_by_hand(codebook, counts, z, threshold=1.0, generator=None):
    codebook, dead = codebook.clone(), counts < threshold
    codebook[dead] = z[_rows(len(z), int(dead.sum()), generator).to(z.device)]
    return codebook


def _restarts_every_code(codebook, counts, z, threshold=1.0, generator=None):
    return _restart(codebook, torch.zeros_like(counts), z, threshold, generator)  # BUG


def _at_or_below_threshold(codebook, counts, z, threshold=1.0, generator=None):
    codebook, dead = codebook.clone(), counts <= threshold  # BUG: ≤ instead of <
    codebook[dead] = z[_rows(len(z), int(dead.sum()), generator).to(z.device)]
    return codebook


def _from_noise(codebook, counts, z, threshold=1.0, generator=None):
    codebook, dead = codebook.clone(), counts < threshold
    noise = torch.randn(int(dead.sum()), z.shape[1], generator=generator)  # BUG: not data
    codebook[dead] = noise.to(z.device, z.dtype)
    return codebook


def _one_row_for_all(codebook, counts, z, threshold=1.0, generator=None):
    codebook, dead = codebook.clone(), counts < threshold
    codebook[dead] = z[torch.randint(len(z), (1,), generator=generator).to(z.device)]  # BUG
    return codebook


def _global_rng(codebook, counts, z, threshold=1.0, generator=None):
    return _restart_by_hand(codebook, counts, z, threshold, None)  # BUG: ignores generator


def _in_place(codebook, counts, z, threshold=1.0, generator=None):
    vq.restart_dead_codes(codebook, counts, z, threshold=threshold, generator=generator)
    return codebook  # BUG: the caller's codebook changed


def _randperm_only(codebook, counts, z, threshold=1.0, generator=None):
    codebook, dead = codebook.clone(), counts < threshold
    rows = torch.randperm(len(z), generator=generator)[: int(dead.sum())]  # BUG: short if N small
    codebook[dead] = z[rows.to(z.device)]
    return codebook


def _with_replacement(codebook, counts, z, threshold=1.0, generator=None):
    codebook, dead = codebook.clone(), counts < threshold
    rows = torch.randint(len(z), (int(dead.sum()),), generator=generator)  # BUG: repeats rows
    codebook[dead] = z[rows.to(z.device)]
    return codebook


def _first_rows(codebook, counts, z, threshold=1.0, generator=None):
    codebook, dead = codebook.clone(), counts < threshold
    n_dead = int(dead.sum())
    rows = torch.arange(n_dead) % len(z)  # BUG: always the first rows of z, no randomness
    codebook[dead] = z[rows.to(z.device)]
    return codebook


def _all_but_last_row(codebook, counts, z, threshold=1.0, generator=None):
    codebook, dead = codebook.clone(), counts < threshold
    n_dead = int(dead.sum())
    rows = torch.randperm(max(len(z) - 1, 1), generator=generator)  # BUG: never the last row
    rows = rows[:n_dead] if n_dead <= len(rows) else torch.randint(len(z), (n_dead,))
    codebook[dead] = z[rows.to(z.device)]
    return codebook


def _redraw_until_distinct(codebook, counts, z, threshold=1.0, generator=None):
    codebook, dead = codebook.clone(), counts < threshold
    n_dead = int(dead.sum())
    rows = torch.randint(len(z), (n_dead,), generator=generator)
    while len(rows.unique()) < n_dead:  # BUG: never ends when there are fewer rows than codes
        rows = torch.randint(len(z), (n_dead,), generator=generator)
    codebook[dead] = z[rows.to(z.device)]
    return codebook


def _default_threshold_two(codebook, counts, z, threshold=2.0, generator=None):
    return _restart_by_hand(codebook, counts, z, threshold, generator)  # BUG: default 1.0


def _needs_a_generator(codebook, counts, z, threshold=1.0, generator=None):
    generator = torch.Generator().manual_seed(generator.initial_seed())  # BUG: fails on None
    return _restart_by_hand(codebook, counts, z, threshold, generator)


def _restart_multinomial(codebook, counts, z, threshold=1.0, generator=None):
    codebook, dead = codebook.clone(), counts < threshold
    n_dead = int(dead.sum())
    if n_dead == 0:
        return codebook
    weights = torch.ones(len(z))
    rows = torch.multinomial(weights, n_dead, replacement=n_dead > len(z), generator=generator)
    codebook[dead] = z[rows.to(z.device)]
    return codebook


def test_restart_dead_codes_references_pass(capsys):
    passes(ch01.check_restart_dead_codes, _restart, capsys, "1.5")
    passes(ch01.check_restart_dead_codes, _restart_by_hand, capsys, "1.5")
    passes(ch01.check_restart_dead_codes, _restart_multinomial, capsys, "1.5")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_restarts_every_code, r"keeps every code with count ≥ threshold=1\.0(.|\n)*\[0, 2, 5\]"),
        (_at_or_below_threshold, r"count ≥ threshold=1\.0 as it was(.|\n)*codes \[5\] changed"),
        (_from_noise, r"moves every dead code onto a vector of z(.|\n)*3 of 3 are not rows"),
        (_one_row_for_all, r"different dead codes different rows(.|\n)*1 distinct"),
        (_global_rng, r"from `generator` only(.|\n)*generator=generator"),
        (_in_place, r"leaves its input codebook unchanged(.|\n)*clone"),
        (_with_replacement, r"draws 6 distinct rows of z(.|\n)*seed \d+ gave rows(.|\n)*randint"),
        (_first_rows, r"every row of z is picked sometimes(.|\n)*rows \[6, 7\] never picked"),
        (_all_but_last_row, r"every row of z is picked sometimes(.|\n)*rows \[7\] never"),
        (
            _redraw_until_distinct,
            r"runs on \(tensor of shape \(4, 3\)(.|\n)*never ends(.|\n)*randint",
        ),
        (_default_threshold_two, r"threshold left out(.|\n)*threshold=1\.0"),
        (_needs_a_generator, r"runs on(.|\n)*AttributeError(.|\n)*generator defaults to None"),
        (_randperm_only, r"runs on \(tensor of shape \(4, 3\)(.|\n)*it raised"),
        (stub, r"Exercise 1\.5 \(restart dead codes\): not implemented yet"),
    ],
    ids=case_id,
)
def test_restart_dead_codes_rejects(wrong, message):
    rejects(ch01.check_restart_dead_codes, wrong, message)


# --- Exercise 1.6: rvq_encode ------------------------------------------------------------------


def _rvq(z, codebooks):
    residual, z_q, tokens = z, torch.zeros_like(z), []
    for codebook in codebooks:
        k = vq.nearest_code(residual, codebook)  # (N,)
        residual, z_q = residual - codebook[k], z_q + codebook[k]
        tokens.append(k)
    return torch.stack(tokens, dim=1), z_q


def _quantizes_z_every_stage(z, codebooks):
    tokens = [vq.nearest_code(z, codebook) for codebook in codebooks]  # BUG: no residual
    z_q = sum(codebook[k] for codebook, k in zip(codebooks, tokens))
    return torch.stack(tokens, dim=1), z_q


def _residual_wrong_sign(z, codebooks):
    residual, z_q, tokens = z, torch.zeros_like(z), []
    for codebook in codebooks:
        k = vq.nearest_code(residual, codebook)
        residual, z_q = residual + codebook[k], z_q + codebook[k]  # BUG: + instead of −
        tokens.append(k)
    return torch.stack(tokens, dim=1), z_q


def _last_stage_only(z, codebooks):
    tokens, _ = _rvq(z, codebooks)
    return tokens, codebooks[-1][tokens[:, -1]]  # BUG: the finest stage alone


def _stage_major_tokens(z, codebooks):
    tokens, z_q = _rvq(z, codebooks)
    return tokens.T, z_q  # BUG: (S, N)


def test_rvq_encode_reference_passes(capsys):
    passes(ch01.check_rvq_encode, _rvq, capsys, "1.6")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (
            _quantizes_z_every_stage,
            r"three stages: stage s quantizes the residual(.|\n)*looks like: every stage "
            r"quantizing z itself where its residual belongs",
        ),
        (
            _residual_wrong_sign,
            r"three stages: stage s quantizes the residual(.|\n)*looks like: the residual "
            r"updated with \+ where − belongs",
        ),
        (
            _last_stage_only,
            r"z_q is the sum of the codes of all stages(.|\n)*looks like: the last stage's codes",
        ),
        (_stage_major_tokens, r"one stage is plain VQ(.|\n)*got:      shape \(1, 20\)"),
        (stub, r"Exercise 1\.6 \(residual VQ encoding\): not implemented yet"),
    ],
    ids=case_id,
)
def test_rvq_encode_rejects(wrong, message):
    rejects(ch01.check_rvq_encode, wrong, message)


# --- Exercise 1.7: fsq_quantize ----------------------------------------------------------------


def _fsq(z, levels, eps=1e-3):
    if z.shape[-1] != len(levels):
        raise ValueError(f"z has {z.shape[-1]} channels, levels {len(levels)}")
    n = z.new_tensor(levels)  # (D,)
    half = (n - 1) * (1 + eps) / 2
    offset = (n % 2 == 0).to(z.dtype) / 2
    bounded = torch.tanh(z + torch.atanh(offset / half)) * half - offset
    return (bounded + (bounded.round() - bounded).detach()) / (n // 2)


def _package_fsq(z, levels, eps=1e-3):
    return vq.FSQ(tuple(levels), eps=eps).quantize(z)


def _no_straight_through_fsq(z, levels, eps=1e-3):
    bounded = vq.FSQ(tuple(levels), eps=eps).bound(z)
    return bounded.round() / z.new_tensor([n // 2 for n in levels])  # BUG: zero gradient


def _no_bound(z, levels, eps=1e-3):
    half = z.new_tensor([n // 2 for n in levels])
    return (z + (z.round() - z).detach()) / half  # BUG: unbounded


def _even_levels_unshifted(z, levels, eps=1e-3):
    n = z.new_tensor(levels)
    bounded = torch.tanh(z) * (n - 1) * (1 + eps) / 2  # BUG: no offset for even L
    return (bounded + (bounded.round() - bounded).detach()) / (n // 2)


def _divide_by_levels_minus_one(z, levels, eps=1e-3):
    bounded = vq.FSQ(tuple(levels), eps=eps).bound(z)
    rounded = bounded + (bounded.round() - bounded).detach()
    return rounded / (z.new_tensor(levels) - 1)  # BUG: the grid is scaled by ⌊L/2⌋


def _gradient_skips_tanh(z, levels, eps=1e-3):
    fsq = vq.FSQ(tuple(levels), eps=eps)
    return fsq.quantize(z).detach() + z - z.detach()  # BUG: gradient 1, not tanh's slope


def _no_channel_check(z, levels, eps=1e-3):
    return vq.FSQ(tuple(levels), eps=eps).quantize(z[..., : len(levels)])


def _fixed_eps(z, levels, eps=1e-3):
    return _fsq(z, levels)  # BUG: ignores the eps argument


def _no_eps_parameter(z, levels):
    return _fsq(z, levels)  # BUG: the documented eps parameter is missing


def test_fsq_quantize_references_pass(capsys):
    passes(ch01.check_fsq_quantize, _fsq, capsys, "1.7")
    passes(ch01.check_fsq_quantize, _package_fsq, capsys, "1.7")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_no_straight_through_fsq, r"gradient: straight through the rounding(.|\n)*b \+ sg"),
        (_no_bound, r"values for levels \(5, 5\)(.|\n)*tanh\(z \+ s\)"),
        (_even_levels_unshifted, r"values for levels \(8, 5, 5, 5\)"),
        (
            _divide_by_levels_minus_one,
            r"values for levels \(5, 5\)(.|\n)*looks like: the grid divided by L − 1 where "
            r"⌊L/2⌋ belongs",
        ),
        (_gradient_skips_tanh, r"gradient: straight through(.|\n)*tanh's slope"),
        (_no_channel_check, r"raises ValueError when z has 3 channels(.|\n)*no error"),
        (_fixed_eps, r"uses the eps argument: eps = 0\.1(.|\n)*values differ"),
        (_no_eps_parameter, r"eps=0\.1\)(.|\n)*unexpected keyword(.|\n)*docstring's signature"),
        (stub, r"Exercise 1\.7 \(finite scalar quantization\): not implemented yet"),
    ],
    ids=case_id,
)
def test_fsq_quantize_rejects(wrong, message):
    rejects(ch01.check_fsq_quantize, wrong, message)


# --- every checker on the course device --------------------------------------------------------

REFERENCES = [
    (ch01.check_squared_distances, _expansion),
    (ch01.check_vq_losses, _losses),
    (ch01.check_vq_forward, _forward),
    (ch01.check_codebook_usage, _usage),
    (ch01.check_restart_dead_codes, _restart_by_hand),
    (ch01.check_rvq_encode, _rvq),
    (ch01.check_fsq_quantize, _fsq),
]


@pytest.mark.parametrize(("checker", "reference"), REFERENCES, ids=lambda v: v.__name__)
def test_checks_run_on_the_chosen_device(checker, reference, device, capsys):
    seen = devices_seen(checker, reference, device, capsys)
    assert seen == {torch.device(device)}
