"""Chapter 05's recipe: the training data, the training runs and the judge's measure of the
autoregressive models of `mmcourse.ar`.

Shipped weights (float16 files, loaded in float32 by `recipes.load(name)`):

    ar         data/ar_shapes.pt         TRAIN_STEPS steps of the shipped run
    ar_early   data/ar_shapes_early.pt   the same run at EARLY_STEPS: a conditional model that
                                         has not yet sharpened, where guidance matters
    ar_noisy   data/ar_shapes_noisy.pt   the same recipe on pairs of which CAPTION_NOISE carry
                                         another image's caption, as web alt-text often does:
                                         a mixture that guidance sharpens

python -m mmcourse.train ar         # ar and ar_early, one run (≈ 20 min)
python -m mmcourse.train ar_noisy   # ar_noisy (≈ 25 min)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from mmcourse import _validate, ar, distributed
from mmcourse.checkpoints import Weights, cached
from mmcourse.data import ShapesDataset, all_captions
from mmcourse.env import device as default_device
from mmcourse.env import one_thread
from mmcourse.recipes import judge as judge_recipe
from mmcourse.recipes import tokenizer as tokenizer_recipe
from mmcourse.trainer import TrainResult, adamw_cosine, fit
from mmcourse.transformer import GPT, GPTConfig

TRAIN_STEPS = 2400  # the shipped run (batch 64)
EARLY_STEPS = 650  # the early checkpoint of that same run (data/ar_shapes_early.pt)
CAPTION_NOISE = 0.3  # data/ar_shapes_noisy.pt: the fraction of training pairs mismatched


def _gpt(config: dict) -> GPT:
    return GPT(GPTConfig(**config))


_COMMAND = "python -m mmcourse.train ar"
WEIGHTS = {
    "ar": Weights("ar_shapes.pt", GPT, command=_COMMAND, build=_gpt, half=True),
    "ar_early": Weights("ar_shapes_early.pt", GPT, command=_COMMAND, build=_gpt, half=True),
    "ar_noisy": Weights(
        "ar_shapes_noisy.pt",
        GPT,
        command="python -m mmcourse.train ar_noisy",
        build=_gpt,
        half=True,
    ),
}

# ------------------------------------------------------------------------------------- data


def shapes_sequences(
    n: int = 20_000, seed: int = 0, tokenizer: nn.Module | None = None
) -> torch.Tensor:
    """Training sequences (n, SEQ_LEN) of ShapesDataset(n, seed), the images encoded once by the
    shipped tokenizer and cached as data/cache/ar_sequences_{n}_{seed}.pt (git-ignored)."""

    def make() -> torch.Tensor:
        tok = tokenizer
        if tok is None:  # on the host: the same cache on every machine
            tok = tokenizer_recipe.WEIGHTS["tokenizer"].load(device="cpu")
        data = ShapesDataset(n=n, seed=seed)
        return ar.make_sequences(
            ar.encode_captions(data.captions), ar.encode_images(tok, data.images)
        )

    def valid(seqs: object) -> bool:
        return isinstance(seqs, torch.Tensor) and seqs.shape == (n, ar.SEQ_LEN)

    return cached(f"ar_sequences_{n}_{seed}.pt", make, valid)


def mismatch_captions(seqs: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Noisy pairs, as in web alt-text: a fixed random `fraction` of the rows of seqs
    (N, SEQ_LEN) take the caption of a random row instead of their own (the image ids stay; on
    90 captions the borrowed one is the same by chance 1 time in 90). A model trained on them
    learns p(x | c) ≈ (1 − f)·p_true(x | c) + f·p(x), a mixture that classifier-free guidance
    can sharpen back, since p(c | x) still prefers the true caption."""
    seqs = _validate.tensor("seqs", seqs, shape=("N", ar.SEQ_LEN), dtype=torch.long)
    fraction = _validate.number("fraction", fraction, 0, 1)
    g = torch.Generator().manual_seed(seed)
    n = len(seqs)
    rows = torch.randperm(n, generator=g)[: round(fraction * n)]  # (M,) the mismatched rows
    donors = torch.randint(n, (len(rows),), generator=g)  # (M,) whose caption each one gets
    out = seqs.clone()
    out[rows.to(seqs.device), : ar.CAPTION_LEN] = seqs[donors.to(seqs.device), : ar.CAPTION_LEN]
    return out


# --------------------------------------------------------------------------------- training


def train_ar(
    seqs: torch.Tensor,
    *,
    config: GPTConfig | None = None,
    steps: int = 300,
    batch: int = 64,
    lr: float = 2e-3,
    p_uncond: float = 0.15,
    seed: int = 0,
    progress: bool = True,
    callback: Callable[[int, GPT], None] | None = None,
    device: torch.device | str | None = None,
    fsdp: bool = False,
) -> TrainResult:
    """Train a GPT on sequences (N, SEQ_LEN): captions dropped with probability p_uncond, AdamW
    with warm-up and cosine decay over `steps`, gradient clipping at 1. `callback(step, model)`,
    if given, runs after every optimizer step (step = 1 … steps), e.g. to keep a snapshot of an
    early checkpoint of the same run; it must not change the model.

    The model and the sequences live on `device` (default: the course's), the batches are drawn
    there by a generator of that device (on the CPU, the same draws as always), and the losses
    are read back once, at the end. Under torchrun each rank draws its share of the batch, with
    DDP, or FSDP2 when `fsdp` (see `mmcourse.distributed`); the model that comes back is whole."""
    seqs = _validate.tensor("seqs", seqs, shape=("N", ar.SEQ_LEN), dtype=torch.long)
    steps, batch = _validate.positive_int("steps", steps), _validate.positive_int("batch", batch)
    dev = torch.device(device) if device is not None else default_device()
    torch.manual_seed(seed)
    g = torch.Generator(device=dev).manual_seed(distributed.rank_seed(seed))
    batch = distributed.local_batch(batch)
    model = GPT(config or ar.default_config()).to(dev)
    net = distributed.wrap(model, fsdp=fsdp)  # DDP or FSDP2 under torchrun, else the model
    seqs = seqs.to(dev)
    opt, schedule = adamw_cosine(model, lr, steps)  # after wrap: FSDP2 shards the parameters

    def step_loss(step: int) -> torch.Tensor:
        idx = torch.randint(len(seqs), (batch,), generator=g, device=dev)
        return ar.lm_loss(net, ar.drop_captions(seqs[idx], p_uncond, g))

    callbacks = [lambda step, _: callback(step + 1, model)] if callback is not None else []
    run = fit(
        model,
        step_loss,
        steps=steps,
        optimizer=opt,
        schedule=schedule,
        clip=1.0,
        callbacks=callbacks,
        progress=progress,
        generators=[g],
    )
    return run._replace(model=distributed.full_model(run.model))


# ------------------------------------------------------------------------------- evaluation


def faithfulness(
    model: nn.Module,
    tokenizer: nn.Module,
    judge: nn.Module,
    *,
    per_caption: int = 2,
    scale: float = 3.0,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    plausibility: float | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Judge faithfulness of `per_caption` images for each of the 90 captions → {"color",
    "shape", "position", "all"} in [0, 1], plus "diversity" (see `diversity`)."""
    per_caption = _validate.positive_int("per_caption", per_caption)
    captions = all_captions() * per_caption  # caption-major blocks of 90
    images, _ = ar.generate_images(
        model, tokenizer, captions, scale=scale, temperature=temperature, top_k=top_k,
        top_p=top_p, plausibility=plausibility, seed=seed,
    )  # fmt: skip
    scores = judge.score(images.to(next(judge.parameters()).device), captions)
    if per_caption > 1:
        scores["diversity"] = diversity(images, per_caption)
    return scores


def diversity(images: torch.Tensor, per_caption: int) -> float:
    """Mean pairwise RMS pixel distance between images of the same caption; images (R·C, 3, H, W)
    hold R = per_caption repeats of the same C captions (caption i at rows i, C + i, …). 0 means
    every caption always gives the same image."""
    images = _validate.tensor("images", images, shape=("N", 3, None, None), floating=True)
    per_caption = _validate.positive_int("per_caption", per_caption)
    if per_caption < 2 or len(images) % per_caption:
        raise ValueError(
            f"need ≥ 2 images per caption and N divisible by per_caption, got N = {len(images)}, "
            f"per_caption = {per_caption}"
        )
    x = images.reshape(per_caption, len(images) // per_caption, -1).transpose(0, 1)  # (C, R, P)
    d = torch.cdist(x.float(), x.float()) / x.shape[-1] ** 0.5  # (C, R, R) RMS distances
    pairs = per_caption * (per_caption - 1)
    return (d.sum() / (len(x) * pairs)).item()


_SUMMARY_SCALES = (1.0, 1.5, 2.0, 3.0, 5.0)


def _summary_line(name: str, steps: int, losses: list[float], seed: int) -> str:
    """Judge faithfulness against the guidance scale for the weights `name` (180 samples)."""
    weights = WEIGHTS[name]
    model = weights.load(device="cpu")
    judge = judge_recipe.WEIGHTS["judge"].load(device="cpu")
    tokenizer = tokenizer_recipe.WEIGHTS["tokenizer"].load(device="cpu")
    scores = {
        s: faithfulness(model, tokenizer, judge, per_caption=2, scale=s, seed=seed)["all"]
        for s in _SUMMARY_SCALES
    }
    window = losses[max(steps - 50, 0) : steps]  # the last 50 steps before it
    return (
        f"{weights.path.name} (step {steps}, loss {sum(window) / len(window):.3f}): judge "
        "faithfulness (180 samples, temperature 1) "
        + ", ".join(f"s {s:g}: {v:.3f}" for s, v in scores.items())
    )


# ---------------------------------------------------------------------------------- rebuild


def rebuild(seed: int = 0, fsdp: bool = False) -> str:
    """Train the shipped model from `seed` on one thread, write data/ar_shapes.pt (float16) and,
    from the same run after EARLY_STEPS steps, data/ar_shapes_early.pt (float16), and return a
    summary with judge faithfulness against the guidance scale for both (the
    `python -m mmcourse.train ar` target; `fsdp`: FSDP2 under torchrun)."""
    with one_thread():
        tokenizer = tokenizer_recipe.WEIGHTS["tokenizer"].load(device="cpu")
        seqs = shapes_sequences(seed=seed, tokenizer=tokenizer)
        early_steps = EARLY_STEPS  # read once: the snapshot and the summary agree
        if not 1 <= early_steps <= TRAIN_STEPS:
            raise ValueError(f"EARLY_STEPS must be in [1, {TRAIN_STEPS}], got {early_steps}")

        def snapshot(step: int, model: GPT) -> None:
            if step == early_steps:
                whole = distributed.full_model(model)  # FSDP2: gathered by every rank
                if distributed.is_main():
                    WEIGHTS["ar_early"].save(whole)

        result = train_ar(
            seqs, steps=TRAIN_STEPS, seed=seed, callback=snapshot, device="cpu", fsdp=fsdp
        )
        if not distributed.is_main():
            return ""  # rank 0 writes the files and measures them
        WEIGHTS["ar"].save(result.model)
        files = f"{WEIGHTS['ar'].path.name} and {WEIGHTS['ar_early'].path.name}"
        lines = [f"wrote {files} in {result.seconds:.0f} s"]
        for name, steps in (("ar_early", early_steps), ("ar", TRAIN_STEPS)):
            lines.append(_summary_line(name, steps, result.losses, seed))
    return "\n".join(lines)


def rebuild_noisy(seed: int = 0, fsdp: bool = False) -> str:
    """The shipped recipe (same model, steps and seed) on the same sequences with CAPTION_NOISE
    of the captions mismatched (`mismatch_captions`): writes data/ar_shapes_noisy.pt (float16)
    and returns its judge summary (the `python -m mmcourse.train ar_noisy` target; `fsdp`:
    FSDP2 under torchrun)."""
    with one_thread():
        tokenizer = tokenizer_recipe.WEIGHTS["tokenizer"].load(device="cpu")
        seqs = shapes_sequences(seed=seed, tokenizer=tokenizer)
        noisy = mismatch_captions(seqs, CAPTION_NOISE, seed)
        result = train_ar(noisy, steps=TRAIN_STEPS, seed=seed, device="cpu", fsdp=fsdp)
        if not distributed.is_main():
            return ""  # rank 0 writes the file and measures it
        WEIGHTS["ar_noisy"].save(result.model)
        return "\n".join([
            f"wrote {WEIGHTS['ar_noisy'].path.name} ({CAPTION_NOISE:.0%} of captions mismatched)"
            f" in {result.seconds:.0f} s",
            _summary_line("ar_noisy", TRAIN_STEPS, result.losses, seed),
        ])  # fmt: skip


REBUILDS = {"ar": rebuild, "ar_noisy": rebuild_noisy}
