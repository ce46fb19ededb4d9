"""Evaluating generators (chapter 10): the metrics' floors and pitfalls on real data, and one
leaderboard of every course generator (`mmcourse.recipes.evaluation`). Features: the judge's
penultimate layer ("judge", 128-d), standardized by the real reference statistics, computed
by the recipe on the CPU (the leaderboard on one thread, its fastest setting).

fid_real_halves / kid_real_halves: FID and KID between two disjoint sets of 450 held-out real
Shapes (the leaderboard's size: what a perfect generator scores); fid_noise: 450 uniform-noise
images against real ones (the other end of the scale).
fid_small_n_bias: FID real vs real at N = SMALL_N minus the same at N = LARGE_N (> 0: FID's
bias at small N; kid_small_n_bias the same for KID, ≈ 0: it is unbiased).
precision_mode_dropped / recall_mode_dropped / fid_mode_dropped: 1,000 real images against
1,000 real images of only half the colours (a generator that dropped modes): precision stays
high, recall falls.
leaderboard_rows: generators on the leaderboard (recipes.evaluation.GENERATORS, samples from
data/evaluation_samples.pt); fid_<name> and judge_<name> (judge faithfulness: colour, shape and
position all right) of each, the point estimates of the leaderboard's bootstrap intervals
(LEADERBOARD_ROUNDS rounds); fid_judge_tau: Kendall's τ between the order by FID (lower first)
and by the judge (higher first); leaderboard_s: the leaderboard's wall time, intervals included.
arena_judge_tau / arena_fid_tau: a simulated arena (`evaluation.simulate_comparisons`,
COMPARISONS pairwise votes of a rater preferring the sample with the higher judge
log-probability of its caption, noise RATER_NOISE) ranked by Bradley–Terry strengths
(`evaluation.bradley_terry`), and Kendall's τ of that ranking with the judge's and FID's.
"""

from __future__ import annotations

import warnings

import torch
from _timing import timed

import mmcourse
from mmcourse import evaluation
from mmcourse.env import compute_threads
from mmcourse.recipes import evaluation as evaluation_recipe

SMALL_N, LARGE_N = 100, 2000
LEADERBOARD_ROUNDS = 100  # the recipe's default: leaderboard_s is what the notebook waits
COMPARISONS, RATER_NOISE = 20_000, 1.0  # the simulated arena's pairwise votes


def _pitfalls() -> dict[str, float]:
    floors = evaluation_recipe.floors()
    with warnings.catch_warnings():  # N = 100 < D = 128: the rank-deficient fit is the point
        warnings.filterwarnings("ignore", message=".*rank-deficient", category=UserWarning)
        bias = evaluation_recipe.small_n_bias(ns=(SMALL_N, LARGE_N))
    dropped = evaluation_recipe.mode_dropped()
    small, large = bias[SMALL_N], bias[LARGE_N]  # each: (mean, lowest, highest) over draws
    return {
        "fid_real_halves": floors["real_fid"][0],
        "kid_real_halves": floors["real_kid"][0],
        "fid_noise": floors["noise_fid"][0],
        "fid_small_n_bias": small.fid[0] - large.fid[0],
        "kid_small_n_bias": small.kid[0] - large.kid[0],
        "recall_mode_dropped": dropped["recall"][0],
        "precision_mode_dropped": dropped["precision"][0],
        "fid_mode_dropped": dropped["fid"][0],
    }


def _leaderboard() -> dict[str, float | int]:
    samples = evaluation_recipe.load_samples()
    rows, seconds = timed(lambda: evaluation_recipe.leaderboard(samples, rounds=LEADERBOARD_ROUNDS))
    results: dict[str, float | int] = {"leaderboard_rows": len(rows)}
    for row in rows:
        results[f"fid_{row.name}"] = row.fid[0]
        results[f"judge_{row.name}"] = row.judge[0]
    fid = torch.tensor([row.fid[0] for row in rows], dtype=torch.float64)
    judge = torch.tensor([row.judge[0] for row in rows], dtype=torch.float64)
    results["fid_judge_tau"] = evaluation.kendall_tau(-fid, judge)  # both: better is higher
    results["leaderboard_s"] = seconds
    quality = evaluation_recipe.preference_quality(samples, rater="judge")  # (G, C, S)
    wins = evaluation.simulate_comparisons(quality, COMPARISONS, RATER_NOISE, seed=0)
    strengths = evaluation.bradley_terry(wins)  # (G,) the arena's log-strengths
    results["arena_judge_tau"] = evaluation.kendall_tau(strengths, judge)
    results["arena_fid_tau"] = evaluation.kendall_tau(strengths, -fid)
    return results


def run() -> dict[str, float | int]:
    with compute_threads(mmcourse.device()):
        return {**_pitfalls(), **_leaderboard()}
