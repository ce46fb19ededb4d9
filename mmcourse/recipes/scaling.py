"""Chapter 11's recipe: a measured scaling law of chapter 07's tiny Chameleon.

runs      `train_size`: one GPT of a given width and depth trained on an even mix of
          caption → image and image → caption documents, at a constant learning rate after the
          warm-up, its held-out losses measured at every budget on the way (one run gives every
          budget D, as in Kaplan et al. 2020)
grid      `measure`: SIZES × BUDGETS (the fit), the HELD_OUT size (the prediction), and each
          size trained on one direction alone with the same documents of that direction as
          the mixed run (the competition or synergy of the two directions)
law       `law_report`: L(N, D) = E + A/N^α + B/D^β fitted on the grid (`mmcourse.scaling`),
          the held-out size's loss predicted before it is read, and the gap
shipped   data/scaling_law.json, written by `python -m mmcourse.train scaling` (`rebuild`,
          ≈ 20 min on one thread); `measurements()` reads it
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from mmcourse import _validate, distributed
from mmcourse.checkpoints import DATA_DIR
from mmcourse.env import cpu_model, one_thread
from mmcourse.recipes import unified as unified_recipe
from mmcourse.scaling import fit_law, non_embedding_params
from mmcourse.transformer import GPTConfig
from mmcourse.vocab import MixingLoader, course_vocab

SIZES = ((24, 2), (32, 2), (48, 2), (64, 3), (96, 3))  # (d_model, n_layer): the fitted sizes
HELD_OUT = (128, 4)  # predicted from the fit, then trained
BUDGETS = (250, 500, 1000, 2000)  # steps at which every run's held-out loss is measured
BATCH = 16
LR = 2e-3
WARMUP = 100  # steps, in every run: the first b steps of a run are a run of b steps
MIXED = {"caption_image": 0.5, "image_caption": 0.5}
ALONE = {"caption_image": {"caption_image": 1.0}, "image_caption": {"image_caption": 1.0}}
HELD_OUT_IMAGES = 500  # Shapes seed 1: each scored as caption → image and as image → caption
FILE = DATA_DIR / "scaling_law.json"
COMMAND = "python -m mmcourse.train scaling"


def config(d_model: int, n_layer: int) -> GPTConfig:
    """Chapter 07's model at width d_model and depth n_layer: heads of 32 dimensions (at least
    2), MLP × 3, block size 160."""
    d_model = _validate.positive_int("d_model", d_model)
    n_layer = _validate.positive_int("n_layer", n_layer)
    return unified_recipe.default_config(
        d_model=d_model, n_layer=n_layer, n_head=max(2, d_model // 32)
    )


def documents(seed: int = 0) -> dict:
    """The id sequences of chapter 07's documents (`unified.build_sources` on `course_data`),
    built once and handed to every run."""
    data = unified_recipe.course_data(seed=seed)
    return unified_recipe.build_sources(data, course_vocab(), seed=seed)


def tokens_per_step(
    ratios: Mapping[str, float], steps: int, *, batch: int = BATCH, seed: int = 0, sources=None
) -> list[int]:
    """The real targets (non-padding ids after the first) in each of the first `steps`
    batches of a loader with these ratios: the D of a run, step by step (every run of a mix
    draws the same batches; under torchrun, this rank's share of them)."""
    loader = _loader(ratios, batch, seed, sources)
    return [int(loader.next_batch().loss_mask[:, 1:].sum()) for _ in range(steps)]


def train_size(
    d_model: int,
    n_layer: int,
    *,
    ratios: Mapping[str, float] = MIXED,
    budgets: Sequence[int] = BUDGETS,
    batch: int = BATCH,
    lr: float = LR,
    seed: int = 0,
    sources=None,
    held=None,
    progress: bool = True,
    device: torch.device | str | None = None,
) -> list[dict]:
    """Train one size on the mix `ratios` for max(budgets) steps at a constant rate after
    WARMUP steps of warm-up (so the run's first b steps are exactly a run of b steps); at each
    budget measure the held-out losses (`unified.direction_losses`: `loss` over every target
    of both directions, `image_loss`, `caption_loss`). One row per budget with the size (N
    non-embedding parameters) and the tokens seen (D)."""
    budgets = sorted({_validate.positive_int("budgets", b) for b in budgets})
    sources = sources if sources is not None else documents(seed)
    held = held if held is not None else unified_recipe.held_out(HELD_OUT_IMAGES)
    mine = torch.tensor(tokens_per_step(ratios, budgets[-1], batch=batch, seed=seed,
                                        sources=sources))  # fmt: skip
    tokens = distributed.sum_over_ranks(mine).cumsum(0).tolist()  # D: every rank's targets
    rows: list[dict] = []

    def measure_at(step: int, model: nn.Module) -> None:
        if step + 1 not in budgets:
            return
        model.eval()
        scores = unified_recipe.direction_losses(model, *held)
        model.train()
        rows.append({"d_model": d_model, "n_layer": n_layer, "params": non_embedding_params(model),
                     "mix": "+".join(sorted(ratios)), "steps": step + 1,
                     "tokens": tokens[step], **scores})  # fmt: skip

    loader = _loader(ratios, batch, seed, sources)
    unified_recipe.train_unified(loader, config=config(d_model, n_layer), steps=budgets[-1],
                                 lr=lr, lr_final=1.0, warmup=WARMUP, seed=seed, progress=progress,
                                 device=device, on_step=measure_at)  # fmt: skip
    return rows


def measure(
    sizes: Sequence[tuple[int, int]] = (*SIZES, HELD_OUT),
    *,
    alone: bool = True,
    budgets: Sequence[int] = BUDGETS,
    seed: int = 0,
    progress: bool = True,
    device: torch.device | str | None = None,
) -> list[dict]:
    """Every run of the experiment: each size on the even mix at every budget, and (`alone`)
    each of SIZES on one direction alone for half the steps, which holds as many documents of
    that direction as the mixed run (the held-out size trains only on the mix)."""
    sources = documents(seed)
    held = unified_recipe.held_out(HELD_OUT_IMAGES)
    rows = []
    for d_model, n_layer in sizes:
        runs = [(MIXED, budgets)]
        if alone and (d_model, n_layer) != HELD_OUT:
            runs += [(r, [b // 2 for b in budgets]) for r in ALONE.values()]
        for ratios, steps in runs:
            rows += train_size(d_model, n_layer, ratios=ratios, budgets=steps, seed=seed,
                               sources=sources, held=held, progress=progress,
                               device=device)  # fmt: skip
    return rows


def law_report(rows: Sequence[Mapping]) -> dict:
    """Fit L(N, D) on the mixed runs of SIZES, predict the HELD_OUT size's loss at every budget
    from the fit alone, and compare with its measured loss: {"law", "fitted" (the rows used),
    "heldout": [{"steps", "tokens", "params", "predicted", "measured", "rel_error"}],
    "rel_error" (at the largest budget)}."""
    mixed = [r for r in rows if r["mix"] == "+".join(sorted(MIXED))]
    fitted = [r for r in mixed if (r["d_model"], r["n_layer"]) in SIZES]
    held = [r for r in mixed if (r["d_model"], r["n_layer"]) == HELD_OUT]
    if not fitted or not held:
        raise ValueError("the rows hold no mixed runs of SIZES or no run of HELD_OUT")
    law = fit_law([r["params"] for r in fitted], [r["tokens"] for r in fitted],
                  [r["loss"] for r in fitted])  # fmt: skip
    heldout = []
    for r in sorted(held, key=lambda r: r["steps"]):
        predicted = law(r["params"], r["tokens"])
        heldout.append({"steps": r["steps"], "tokens": r["tokens"], "params": r["params"],
                        "predicted": predicted, "measured": r["loss"],
                        "rel_error": abs(predicted - r["loss"]) / r["loss"]})  # fmt: skip
    return {"law": law, "fitted": fitted, "heldout": heldout, "rel_error": heldout[-1]["rel_error"]}


def measurements(path: Path | str | None = None) -> dict:
    """The shipped measurements (data/scaling_law.json): {"rows", "machine", "seconds",
    "command"}. A missing or unreadable file names the command that rebuilds it."""
    path = Path(path) if path is not None else FILE
    try:
        found = json.loads(path.read_text())
        if not isinstance(found.get("rows"), list):
            raise ValueError("no rows")
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"scaling measurements {path.name} missing or unreadable in {path.parent} "
            f"({type(err).__name__}); rebuild them with: {COMMAND}"
        ) from None
    return found


def _loader(ratios: Mapping[str, float], batch: int, seed: int, sources=None) -> MixingLoader:
    """The loader of a run; under torchrun each rank draws its share of every batch."""
    sources = sources if sources is not None else documents(seed)
    rows, draws = distributed.local_batch(batch), distributed.rank_seed(seed)
    return MixingLoader(sources, ratios, course_vocab(), batch_size=rows, seed=draws)


def rebuild(seed: int = 0) -> str:
    """Run `measure` on one thread, write data/scaling_law.json, return the law and the
    held-out prediction's gap (`python -m mmcourse.train scaling`)."""
    start = time.perf_counter()
    with one_thread():
        rows = measure(seed=seed, device="cpu")
    if not distributed.is_main():
        return ""
    write(rows, time.perf_counter() - start)
    report = law_report(rows)
    held = report["heldout"][-1]
    law = report["law"]
    return (
        f"wrote {FILE.name}: {len(rows)} measurements; L(N, D) = {law.E:.3f} + "
        f"{law.A:.3g}/N^{law.alpha:.3f} + {law.B:.3g}/D^{law.beta:.3f}; held-out "
        f"N = {held['params']:,}: predicted {held['predicted']:.4f}, measured "
        f"{held['measured']:.4f} ({100 * held['rel_error']:.2f} %)"
    )


def write(rows: Sequence[Mapping], seconds: float, path: Path | str | None = None) -> Path:
    """Write measurements (rows from `measure`) as the shipped JSON file."""
    path = Path(path) if path is not None else FILE
    machine = f"{cpu_model()}, one thread"
    found = {"command": COMMAND, "machine": machine, "seconds": round(seconds),
             "torch": torch.__version__, "rows": list(rows)}  # fmt: skip
    path.write_text(json.dumps(found, indent=1) + "\n")
    return path


WEIGHTS: dict = {}  # measurements, not weights: data/scaling_law.json
REBUILDS = {"scaling": rebuild}
