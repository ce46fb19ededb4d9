"""Scaling up (chapter 11): data parallelism measured against one process, and the scaling law
fitted on the shipped measurements (`data/scaling_law.json`, `python -m mmcourse.train scaling`).

ddp_grad_max_abs_diff / ddp_weight_max_abs_diff: the largest |difference| of gradients / weights
after one SGD step on `ddp_world_size` = 2 gloo ranks, each on 4 of 8 sequences of 32 random ids,
against one process on all 8 (`distributed.gradient_gap`), chapter 07's model at the smallest
scaling size (d_model 24, 2 layers); fsdp_*: the same with FSDP2 (fully_shard) instead of DDP;
gap_s: both measurements' time (process start-up included).
law_E / law_A / law_alpha / law_B / law_beta: L(N, D) = E + A/N^α + B/D^β fitted (Huber in log
space, L-BFGS) to the held-out loss of the 5 fitted sizes at 4 budgets (`law_points`);
law_heldout_params: N of the held-out size; law_heldout_predicted / law_heldout_measured: its
loss after the largest budget as the fit predicts it and as measured; law_heldout_rel_error =
|predicted − measured| / measured; law_fit_s: the fit's time.
"""

from __future__ import annotations

import functools
import time

import torch

from mmcourse import distributed
from mmcourse.recipes import scaling as scaling_recipe
from mmcourse.transformer import GPT
from mmcourse.unified import lm_loss

ROWS, LENGTH = 8, 32


def run() -> dict[str, float | int]:
    config = scaling_recipe.config(*scaling_recipe.SIZES[0])
    ids = torch.randint(
        config.vocab_size, (ROWS, LENGTH), generator=torch.Generator().manual_seed(0)
    )
    batch = (ids, torch.ones_like(ids, dtype=torch.bool))  # every rank as many targets
    start = time.perf_counter()
    gaps = {
        name: distributed.gradient_gap(functools.partial(GPT, config), lm_loss, batch, fsdp=fsdp)
        for name, fsdp in (("ddp", False), ("fsdp", True))
    }
    gap_s = time.perf_counter() - start
    rows = scaling_recipe.measurements()["rows"]
    start = time.perf_counter()
    report = scaling_recipe.law_report(rows)
    fit_s = time.perf_counter() - start
    law, held = report["law"], report["heldout"][-1]
    results: dict[str, float | int] = {}
    for name, gap in gaps.items():
        results |= {f"{name}_grad_max_abs_diff": gap["grad"],
                    f"{name}_weight_max_abs_diff": gap["weight"]}  # fmt: skip
    return results | {
        "ddp_world_size": gaps["ddp"]["world_size"],
        "gap_s": gap_s,
        "law_E": law.E,
        "law_A": law.A,
        "law_alpha": law.alpha,
        "law_B": law.B,
        "law_beta": law.beta,
        "law_points": len(report["fitted"]),
        "law_heldout_params": held["params"],
        "law_heldout_predicted": held["predicted"],
        "law_heldout_measured": held["measured"],
        "law_heldout_rel_error": held["rel_error"],
        "law_fit_s": fit_s,
    }
