"""Chapter 10's recipe: every generator of the course sampled once, measured with the metrics of
`mmcourse.evaluation` on features the course owns, and the pitfalls of those metrics measured.

samples    `rebuild_samples` draws PER_CAPTION images of each of the 90 captions from each of
           GENERATORS with the settings its own chapter uses, on one thread, and writes
           data/evaluation_samples.pt (`python -m mmcourse.train evaluation_samples`, ≈ 10 min:
           the 1000 DDPM steps are most of it); `load_samples` reads them back
real data  `real_images`: held-out Shapes (seeds no model trained on), rendered in batches
features   `features(images, extractor)`: the judge's penultimate layer ("judge", 128-d) or
           chapter 03's CLIP image tower ("clip", 64-d), standardized by a real reference set;
           `digit_features` reads digits with chapter 03's ViT
measures   `leaderboard` (FID, KID, precision, recall, CLIPScore, judge faithfulness, each with
           a bootstrap interval; ms per image and parameters), `floors`, `small_n_bias`,
           `mode_dropped`, `rfid` (the tokenizers' reconstructions), `preference_quality`
           (per-sample quality for a simulated human rater)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import cache, lru_cache
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn

from mmcourse import _validate, diffusion, distributed, evaluation
from mmcourse import ar as ar_model
from mmcourse import fusion as fusion_model
from mmcourse import transfusion as transfusion_model
from mmcourse import unified as unified_model
from mmcourse.checkpoints import DATA_DIR, CheckpointError, Weights, digest
from mmcourse.data import ATTRIBUTES, COLORS, DigitsDataset, all_captions, labels_to_caption
from mmcourse.data.shapes import render, sample_labels
from mmcourse.env import cpu_model, one_thread
from mmcourse.recipes import ar as ar_recipe
from mmcourse.recipes import diffusion as diffusion_recipe
from mmcourse.recipes import fusion as fusion_recipe
from mmcourse.recipes import judge as judge_recipe
from mmcourse.recipes import tokenizer as tokenizer_recipe
from mmcourse.recipes import transfusion as transfusion_recipe
from mmcourse.recipes import unified as unified_recipe
from mmcourse.recipes import video as video_recipe
from mmcourse.recipes import vit as vit_recipe

GENERATORS: tuple[str, ...] = (
    "ddpm", "ddim", "latent", "ar", "ar_no_guidance", "chameleon", "transfusion",
)  # fmt: skip
PER_CAPTION = 5  # samples per caption: 450 per generator
N_CAPTIONS = len(all_captions())  # 90
SAMPLES_PATH = DATA_DIR / "evaluation_samples.pt"
COMMAND = "python -m mmcourse.train evaluation_samples"
AR_SCALE = 1.5  # chapter 05's guidance scale (its sampler's default in the notebook)

WEIGHTS: dict[str, Weights] = {}  # no weights of its own: the samples file is checked by digest
_SHIPPED = {
    **diffusion_recipe.WEIGHTS, **ar_recipe.WEIGHTS, **unified_recipe.WEIGHTS,
    **transfusion_recipe.WEIGHTS, **tokenizer_recipe.WEIGHTS,
}  # fmt: skip

# ----------------------------------------------------------------------------------- samples


class Samples(NamedTuple):
    """One generator's shipped samples."""

    images: torch.Tensor  # (450, 3, 32, 32) float in [0, 1] (stored as 8-bit values)
    labels: torch.Tensor  # (450, 3) long: caption_labels(PER_CAPTION), the caption of each image
    seconds_per_image: float  # measured by the rebuild on one CPU thread, decoding included
    params: int  # parameters of the generator's network (a tokenizer decoder not counted)
    settings: str  # how it sampled, in words


_Draw = Callable[[dict[str, nn.Module], torch.Tensor, int], torch.Tensor]
"""(the loaded weights by name, labels (N, 3), seed) → images (N, 3, 32, 32) in [0, 1]"""


class _Sampler(NamedTuple):
    weights: tuple[str, ...]  # the shipped files it uses (their digests go into the samples file)
    settings: str
    draw: _Draw


def _diffusion(name: str, steps: int | None, guidance: float) -> _Draw:
    def draw(models: dict[str, nn.Module], labels: torch.Tensor, seed: int) -> torch.Tensor:
        gen = diffusion_recipe.load_generator(name, device="cpu")
        tokenizer = models["tokenizer"] if gen.latent_scale is not None else None
        judge = judge_recipe.WEIGHTS["judge"].load(device="cpu")
        _, images = diffusion_recipe.faithfulness(
            gen, judge, labels, steps=steps, guidance=guidance, seed=seed, tokenizer=tokenizer
        )
        return images

    return draw


def _ar(scale: float) -> _Draw:
    def draw(models: dict[str, nn.Module], labels: torch.Tensor, seed: int) -> torch.Tensor:
        captions = [labels_to_caption(row) for row in labels]
        return ar_model.generate_images(
            models["ar"], models["tokenizer"], captions, scale=scale, temperature=1.0, seed=seed
        )[0]

    return draw


def _chameleon(models: dict[str, nn.Module], labels: torch.Tensor, seed: int) -> torch.Tensor:
    captions = [labels_to_caption(row) for row in labels]
    return unified_model.generate_images(
        models["unified"], captions, tokenizer=models["tokenizer"],
        temperature=unified_recipe.TEMPERATURE, seed=seed,
    )[0]  # fmt: skip


def _transfusion(models: dict[str, nn.Module], labels: torch.Tensor, seed: int) -> torch.Tensor:
    captions = [labels_to_caption(row) for row in labels]
    _, scale = transfusion_recipe.load_with_scale(device="cpu")
    return transfusion_model.generate_images(
        models["transfusion"], captions, steps=transfusion_model.DDIM_STEPS,
        guidance=transfusion_model.GUIDANCE, seed=seed, tokenizer=models["tokenizer"], scale=scale,
    )[0]  # fmt: skip


_T = transfusion_model
_SAMPLERS: dict[str, _Sampler] = {
    "ddpm": _Sampler(
        ("diffusion",), f"pixel U-Net (ch. 04), DDPM {diffusion.T} steps, "
        f"guidance {diffusion_recipe.DDPM_GUIDANCE:g}",
        _diffusion("diffusion", None, diffusion_recipe.DDPM_GUIDANCE),
    ),
    "ddim": _Sampler(
        ("diffusion",), "pixel U-Net (ch. 04), DDIM 50 steps (η = 0), guidance 3",
        _diffusion("diffusion", 50, 3.0),
    ),
    "latent": _Sampler(
        ("diffusion_latent", "tokenizer"),
        "latent U-Net on the tokenizer's 16×8×8 latents (ch. 04), DDIM 50 steps, guidance 3",
        _diffusion("diffusion_latent", 50, 3.0),
    ),
    "ar": _Sampler(
        ("ar", "tokenizer"), f"GPT over 64 image tokens (ch. 05), guidance {AR_SCALE:g}, τ = 1",
        _ar(AR_SCALE),
    ),
    "ar_no_guidance": _Sampler(
        ("ar", "tokenizer"), "the same GPT (ch. 05) without guidance (s = 1), τ = 1", _ar(1.0)
    ),
    "chameleon": _Sampler(
        ("unified", "tokenizer"),
        f"tiny Chameleon, one vocabulary (ch. 07), τ = {unified_recipe.TEMPERATURE:g}, "
        "no guidance",
        _chameleon,
    ),
    "transfusion": _Sampler(
        ("transfusion", "tokenizer"),
        f"Transfusion (ch. 08), DDIM {_T.DDIM_STEPS} steps, guidance {_T.GUIDANCE:g}",
        _transfusion,
    ),
}  # fmt: skip


@torch.no_grad()
def sample(name: str, labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Fresh samples of the generator `name` (one of GENERATORS) for labels (N, 3), with the
    settings of its chapter (those of the shipped samples), on the CPU, every noise from CPU
    generators seeded `seed` → images (N, 3, 32, 32) in [0, 1]."""
    if name not in _SAMPLERS:
        raise ValueError(f"unknown generator {name!r}; the generators are {GENERATORS}")
    labels = _validate.tensor("labels", labels, shape=("N", 3), dtype=torch.long).cpu()
    sampler = _SAMPLERS[name]
    models = {w: _SHIPPED[w].load(device="cpu") for w in sampler.weights}
    return sampler.draw(models, labels, _validate.integer("seed", seed))


def _main_weights(name: str) -> str:
    return _SAMPLERS[name].weights[0]


def rebuild_samples(seed: int = 0) -> str:
    """Draw PER_CAPTION samples of every caption from each of GENERATORS on one CPU thread,
    every noise from CPU generators seeded `seed`, timing each generator; write
    data/evaluation_samples.pt (8-bit images, labels, seconds per image, parameters, settings
    and the digest of every weight file used) and return a summary (the
    `python -m mmcourse.train evaluation_samples` target). Nothing trains here: under torchrun
    rank 0 alone samples and writes, the other ranks return at once."""
    if not distributed.is_main():
        return ""
    labels = diffusion_recipe.caption_labels(PER_CAPTION)  # (450, 3)
    stored, lines = {}, []
    with one_thread():
        models = {k: w.load(device="cpu") for k, w in _SHIPPED.items() if k in _used()}
        for name in GENERATORS:
            sampler = _SAMPLERS[name]
            start = time.perf_counter()
            images = sampler.draw(models, labels, seed)  # (450, 3, 32, 32) in [0, 1]
            took = time.perf_counter() - start
            params = sum(p.numel() for p in models[_main_weights(name)].parameters())
            stored[name] = {
                "images": (images.clamp(0, 1) * 255).round().to(torch.uint8),
                "labels": labels.clone(),
                "seconds_per_image": took / len(labels),
                "params": params,
                "settings": sampler.settings,
                "weights": {w: digest(models[w]) for w in sampler.weights},
            }
            lines.append(
                f"{name}: {1000 * took / len(labels):.1f} ms per image, {sampler.settings}"
            )
    SAMPLES_PATH.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"generators": stored, "seed": seed, "machine": cpu_model(), "command": COMMAND},
        SAMPLES_PATH,
    )
    size = SAMPLES_PATH.stat().st_size / 2**20
    return "\n".join([f"wrote {SAMPLES_PATH.name} ({size:.1f} MiB)", *lines])


def _used() -> set[str]:
    return {w for s in _SAMPLERS.values() for w in s.weights}


def load_samples(path: Path | str = SAMPLES_PATH) -> dict[str, Samples]:
    """The shipped samples of every generator, by name (GENERATORS order). A missing or
    unreadable file, or samples drawn from weights other than the shipped ones, raise an error
    naming the command that rebuilds it."""
    path, rebuild_it = Path(path), f"rebuild it with: {COMMAND}"
    if not path.is_file():
        raise FileNotFoundError(f"{path.name} not found in {path.parent}; {rebuild_it}")
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)["generators"]
        out = {
            name: Samples(
                stored[name]["images"].float() / 255,
                stored[name]["labels"],
                float(stored[name]["seconds_per_image"]),
                int(stored[name]["params"]),
                str(stored[name]["settings"]),
            )  # fmt: skip
            for name in GENERATORS
        }
        recorded = [(w, d) for name in GENERATORS for w, d in stored[name]["weights"].items()]
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(
            f"{path.name} could not be read ({type(err).__name__}); {rebuild_it}"
        ) from None
    for w, d in recorded:
        if w not in _SHIPPED:
            raise CheckpointError(f"{path.name} names unknown weights {w!r}; {rebuild_it}")
        if d != _shipped_digest(w):
            raise CheckpointError(
                f"{path.name} was sampled from other weights than the shipped "
                f"{_SHIPPED[w].path.name}; {rebuild_it}"
            )
    return out


@cache
def _shipped_digest_of(w: str, mtime: float) -> str:
    return digest(_SHIPPED[w].load(device="cpu"))


def _shipped_digest(w: str) -> str:
    """The digest of the shipped weight file `w` (cached while the file is unchanged; a missing
    one raises the error naming its own rebuild command)."""
    path = _SHIPPED[w].path
    return _shipped_digest_of(w, path.stat().st_mtime if path.is_file() else -1.0)


# --------------------------------------------------------------------------------- real data

REFERENCE_SEED = 10  # real_images(REFERENCE, REFERENCE_SEED): the statistics features are scaled by
REFERENCE = 2000
POOL_SEED = 11  # real_images(POOL, POOL_SEED): the real side of every comparison
POOL = 10_000  # two disjoint halves of 5,000: small_n_bias compares up to 5,000 per side
EXTRACTORS: tuple[str, ...] = ("judge", "clip")
_RENDER_BATCH = 1000


def real_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out real Shapes → (images (n, 3, 32, 32) in [0, 1], labels (n, 3)): every caption
    equally likely, drawn by a CPU generator seeded `seed` (the course trains on seeds 0 and
    100 and evaluates on 1, so chapter 10 uses seeds ≥ 10), rendered in batches."""
    n = _validate.positive_int("n", n)
    seed = _validate.integer("seed", seed)
    g = torch.Generator().manual_seed(seed)
    labels = sample_labels(n, g)  # (n, 3)
    images = torch.cat([render(chunk, g) for chunk in labels.split(_RENDER_BATCH)])
    return images, labels


@lru_cache(maxsize=1)
def _pool() -> tuple[torch.Tensor, torch.Tensor]:
    return real_images(POOL, POOL_SEED)  # computed once per process, never handed out


# ---------------------------------------------------------------------------------- features


def _check_extractor(extractor: str) -> str:
    if extractor not in EXTRACTORS:
        raise ValueError(f"unknown extractor {extractor!r}; the extractors are {EXTRACTORS}")
    return extractor


@lru_cache(maxsize=4)
def _network(name: str, device: str) -> nn.Module:
    """The shipped network of an extractor or rater ("judge", "clip", "vit"), on `device`."""
    weights = {**judge_recipe.WEIGHTS, **fusion_recipe.WEIGHTS, **vit_recipe.WEIGHTS}[name]
    return weights.load(device=device)


@torch.no_grad()
def _raw_features(images: torch.Tensor, extractor: str, device: torch.device) -> torch.Tensor:
    """Unscaled features (N, D) float32 on `device`, computed in batches of 256."""
    net = _network(extractor, str(device))
    if extractor == "judge":
        embed = net.embed  # (b, 128): the judge's penultimate layer
    else:
        embed = net.image_encoder  # (b, 64): CLIP's image embedding, before normalisation
    return torch.cat([embed(chunk.to(device)) for chunk in images.split(256)]).float()


@lru_cache(maxsize=4)
def _reference(extractor: str, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, _ = real_images(REFERENCE, REFERENCE_SEED)
    f = _raw_features(images, extractor, torch.device(device))  # (REFERENCE, D)
    return f.mean(0), _scale(f.std(0))  # (D,), (D,)


def _scale(std: torch.Tensor) -> torch.Tensor:
    """Per-feature scales (D,): the reference's std, except that a unit the reference never
    moves (a dead ReLU: 31 of the judge's 128) takes the median scale, instead of a near-zero
    one that would blow up on the rare image that wakes it."""
    median = std.median()
    return torch.where(std > 1e-3 * median, std, median)


def reference_stats(extractor: str = "judge") -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (D,), std (D,)) of an extractor's features of the real reference set
    real_images(REFERENCE, REFERENCE_SEED), on the CPU: what `features` standardizes by."""
    mean, std = _reference(_check_extractor(extractor), "cpu")
    return mean.clone(), std.clone()


def features(
    images: torch.Tensor, extractor: str = "judge", device: torch.device | str | None = None
) -> torch.Tensor:
    """Images (N, 3, 32, 32) in [0, 1] → standardized features (N, D) float32 on the images'
    device, computed on `device` (default: the images' device).

    extractor: "judge" (the judge's penultimate layer, D = 128) or "clip" (chapter 03's CLIP
    image tower, D = 64). Each feature is standardized, (f − μ_ref) / σ_ref, by the real
    reference set (`reference_stats`): KID's cubic kernel (aᵀb / D + 1)³ assumes features of
    unit scale (raw judge features have mean ≈ 9 and std ≈ 13, so aᵀb / D would be in the
    hundreds and its cube swamped by the mean), while FID only changes by that one fixed
    linear map, the same for every generator, so rankings compare like with like."""
    extractor = _check_extractor(extractor)
    images = _validate.tensor(
        "images", images, shape=("N", 3, 32, 32), floating=True, value_range=(0, 1)
    )
    dev = torch.device(device) if device is not None else images.device
    mean, std = _reference(extractor, str(dev))
    return ((_raw_features(images, extractor, dev) - mean) / std).to(images.device)  # (N, D)


@lru_cache(maxsize=4)
def _pool_features(extractor: str) -> torch.Tensor:
    return features(_pool()[0], extractor)  # (POOL, D), cached for the process


@lru_cache(maxsize=2)
def _digit_reference(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    f = _network("vit", device).embed(DigitsDataset("train").images.to(device))  # (1437, 64)
    return f.mean(0), _scale(f.std(0))


@torch.no_grad()
def digit_features(images: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """Digits (N, 1, 8, 8) in [0, 1] → chapter 03's ViT's pooled penultimate features (N, 64)
    float32 (`ViT.embed`), standardized by those of the training digits, on the images'
    device (computed on `device`, default the images')."""
    images = _validate.tensor(
        "images", images, shape=("N", 1, 8, 8), floating=True, value_range=(0, 1)
    )
    dev = torch.device(device) if device is not None else images.device
    net, (mean, std) = _network("vit", str(dev)), _digit_reference(str(dev))
    f = torch.cat([net.embed(chunk.to(dev)) for chunk in images.split(256)])  # (N, 64)
    return ((f - mean) / std).to(images.device)


# ----------------------------------------------------------------------------- leaderboard

Interval = tuple[float, float, float]  # (value, low, high): a 95 % bootstrap interval


class Row(NamedTuple):
    """One generator on the leaderboard; every measure is (value, low, high)."""

    name: str
    fid: Interval  # ↓ against the real pool's first LEADERBOARD_REAL images
    kid: Interval  # ↓ unbiased, ≈ 0 for a perfect generator
    precision: Interval  # ↑ fidelity: generated samples inside the real manifold
    recall: Interval  # ↑ coverage: real samples inside the generated manifold
    clip_score: Interval  # ↑ CLIPScore of each image with its caption (chapter 03's CLIP)
    judge: Interval  # ↑ judge faithfulness: colour, shape and position all right
    ms_per_image: float  # one CPU thread, measured by the rebuild
    params: int


LEADERBOARD_REAL = 450  # real images per comparison: as many as each generator has samples
LEVEL = 0.95  # of every interval


def _set_metrics(real: torch.Tensor, generated: torch.Tensor) -> tuple[float, ...]:
    """(FID, KID, precision, recall) of two feature sets (N, D), (M, D)."""
    pr = evaluation.precision_recall(real, generated)
    return evaluation.fid(real, generated), evaluation.kid(real, generated), *pr


def _intervals(
    metric: Callable[..., tuple[float, ...]], *sets: torch.Tensor, rounds: int, seed: int
) -> list[Interval]:
    """A bootstrap interval for each number metric(*sets) returns, all read off the same
    resamples of one `evaluation.bootstrap_interval` pass (it calls the metric on each of the
    `rounds` resamples, then on the sets themselves).

    Resampling with replacement repeats rows: a set of N holds only ≈ 0.63 N distinct ones,
    which inflates FID's small-N bias and shrinks the k-NN balls of precision/recall, so the
    resampled values sit off the value itself (for FID, above it). Each percentile interval is
    therefore shifted by that offset, (median of the resamples − value): a bias-corrected
    interval around the value."""
    seen: list[tuple[float, ...]] = []

    def first(*resampled: torch.Tensor) -> float:
        seen.append(tuple(metric(*resampled)))
        return seen[-1][0]

    evaluation.bootstrap_interval(first, *sets, rounds=rounds, level=LEVEL, seed=seed)
    boot = torch.tensor(seen[:rounds], dtype=torch.float64)  # (rounds, K)
    value = torch.tensor(seen[rounds], dtype=torch.float64)  # (K,)
    q = torch.tensor([(1 - LEVEL) / 2, 0.5, (1 + LEVEL) / 2], dtype=torch.float64)
    low, median, high = boot.quantile(q, dim=0)  # each (K,)
    shift = median - value
    return list(zip(value.tolist(), (low - shift).tolist(), (high - shift).tolist()))


def _clamped(interval: Interval, low: float, high: float = float("inf")) -> Interval:
    return tuple(min(max(x, low), high) for x in interval)


def _mean(x: torch.Tensor) -> tuple[float]:
    return (float(x.double().mean()),)


def _check_samples(samples: object) -> dict[str, Samples]:
    if not isinstance(samples, dict) or not samples:
        raise TypeError(f"samples must be a non-empty dict name → Samples, got {type(samples)}")
    for name, s in samples.items():
        if not isinstance(s, Samples):
            raise TypeError(f"samples[{name!r}] must be a Samples, got {type(s).__name__}")
    return samples


@torch.no_grad()
def _caption_scores(s: Samples) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample (N,) float64: judge faithfulness (1 when all three attributes are read back
    right) and CLIPScore with its caption."""
    judge, clip = _network("judge", "cpu"), _network("clip", "cpu")
    hits = (judge.read(s.images) == s.labels).all(dim=1).double()  # (N,)
    captions = [labels_to_caption(row) for row in s.labels]
    image_emb = clip.encode_image(s.images)  # (N, 64)
    text_emb = clip.encode_text(fusion_model.encode_captions(captions))  # (N, 64)
    return hits, evaluation.clip_score(image_emb, text_emb)


def leaderboard(
    samples: dict[str, Samples] | None = None,
    extractor: str = "judge",
    rounds: int = 100,
    seed: int = 0,
) -> list[Row]:
    """Every generator of `samples` (default: the shipped ones, `load_samples()`) measured
    against LEADERBOARD_REAL real images on `extractor` features, in the order of `samples`:
    each measure with a 95 % bootstrap interval over `rounds` resamplings of both sets
    (`evaluation.bootstrap_interval`, bias-corrected: see `_intervals`)."""
    extractor = _check_extractor(extractor)
    samples = _check_samples(samples if samples is not None else load_samples())
    rounds = _validate.positive_int("rounds", rounds)
    real = _pool_features(extractor)[:LEADERBOARD_REAL]  # (450, D)
    rows = []
    with one_thread():  # the fastest setting for these small matrices
        for name, s in samples.items():
            gen = features(s.images, extractor)  # (N, D)
            hits, clip = _caption_scores(s)
            fid, kid, precision, recall = _intervals(
                _set_metrics, real, gen, rounds=rounds, seed=seed
            )
            (clip,) = _intervals(_mean, clip, rounds=rounds, seed=seed)
            (judge,) = _intervals(_mean, hits, rounds=rounds, seed=seed)
            rows.append(Row(
                name, _clamped(fid, 0.0), kid, _clamped(precision, 0.0, 1.0),
                _clamped(recall, 0.0, 1.0), _clamped(clip, 0.0, 2.5), _clamped(judge, 0.0, 1.0),
                1000 * s.seconds_per_image, s.params,
            ))  # fmt: skip
    return rows


# -------------------------------------------------------------------------------- pitfalls


def _fid_kid(real: torch.Tensor, generated: torch.Tensor) -> tuple[float, float]:
    return evaluation.fid(real, generated), evaluation.kid(real, generated)


class SmallN(NamedTuple):
    """FID and KID of real against real at one n: (mean, lowest, highest) over `draws`
    independent pairs of disjoint real sets."""

    fid: Interval
    kid: Interval
    draws: int


def _spread(values: list[float]) -> Interval:
    x = torch.tensor(values, dtype=torch.float64)
    return float(x.mean()), float(x.min()), float(x.max())


def small_n_bias(
    ns: tuple[int, ...] = (100, 200, 500, 1000, 2000, 5000),
    extractor: str = "judge",
    seed: int = 0,
    draws: int = 10,
) -> dict[int, SmallN]:
    """FID and KID of real against real: n images from each of the real pool's two disjoint
    halves, for each n in `ns` (≤ POOL / 2), repeated on min(draws, POOL / 2 // n) disjoint
    slices of the halves → {n: SmallN(fid, kid, draws)}, each (mean, lowest, highest). Both
    sets come from one distribution, so the true value of both is 0: FID's estimate is biased
    upward, by more the smaller n (≈ tr Σ-sized terms over n), while KID's is unbiased and
    scatters around 0. The rows are drawn from each half by a permutation seeded `seed`."""
    extractor = _check_extractor(extractor)
    draws = _validate.positive_int("draws", draws)
    half = POOL // 2
    for n in ns:
        if _validate.positive_int("ns", n) > half or n < 2:
            raise ValueError(f"each n must be in [2, {half}], got {n}")
    f = _pool_features(extractor)
    g = torch.Generator().manual_seed(seed)
    a, b = f[:half][torch.randperm(half, generator=g)], f[half:][torch.randperm(half, generator=g)]
    out = {}
    for n in ns:
        k = min(draws, half // n)  # disjoint slices: independent draws
        pairs = [_fid_kid(a[i * n : (i + 1) * n], b[i * n : (i + 1) * n]) for i in range(k)]
        out[n] = SmallN(_spread([p[0] for p in pairs]), _spread([p[1] for p in pairs]), k)
    return out


def floors(
    n: int = LEADERBOARD_REAL, extractor: str = "judge", seed: int = 0, rounds: int = 100
) -> dict[str, int | Interval]:
    """The two ends of the scale at the leaderboard's size: FID and KID of two disjoint real
    sets of n (what a perfect generator scores: `real_fid`, `real_kid`) and of uniform noise
    images (each pixel U(0, 1), drawn by a CPU generator seeded `seed`) against real
    (`noise_fid`, `noise_kid`), each (value, low, high) with a bootstrap interval over
    `rounds` resamplings (`_intervals`), and "n"."""
    extractor = _check_extractor(extractor)
    n = _validate.positive_int("n", n)
    if not 2 <= n <= POOL // 2:
        raise ValueError(f"n must be in [2, {POOL // 2}], got {n}")
    f = _pool_features(extractor)
    real_a, real_b = f[:n], f[POOL // 2 : POOL // 2 + n]
    noise = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    rounds = _validate.positive_int("rounds", rounds)
    with one_thread():
        real_fid, real_kid = _intervals(_fid_kid, real_a, real_b, rounds=rounds, seed=seed)
        noise_fid, noise_kid = _intervals(
            _fid_kid, real_a, features(noise, extractor), rounds=rounds, seed=seed
        )
    return {"n": n, "real_fid": _clamped(real_fid, 0.0), "real_kid": real_kid,
            "noise_fid": _clamped(noise_fid, 0.0), "noise_kid": noise_kid}  # fmt: skip


def mode_dropped(
    n: int = 1000, extractor: str = "judge", rounds: int = 100, seed: int = 0
) -> dict[str, Interval]:
    """A generator that drops modes, played by real images: n real images against n real
    images of only the first half of the colours (3 of 6), each set from its own half of the
    pool → {"fid", "kid", "precision", "recall"}, each (value, low, high) with a bootstrap
    interval over `rounds` resamplings. Every image it makes is perfect, so precision stays
    high, but half the real data is never covered: recall falls."""
    extractor = _check_extractor(extractor)
    n = _validate.positive_int("n", n)
    half = POOL // 2
    f, labels = _pool_features(extractor), _pool()[1]
    kept = (labels[half:, 0] < len(COLORS) // 2).nonzero().flatten() + half  # half the colours
    if not 4 <= n <= len(kept):
        raise ValueError(f"n must be in [4, {len(kept)}], got {n}")
    real, dropped = f[:n], f[kept[:n]]
    rounds = _validate.positive_int("rounds", rounds)
    with one_thread():
        fid, kid, precision, recall = _intervals(
            _set_metrics, real, dropped, rounds=rounds, seed=seed
        )
    precision, recall = _clamped(precision, 0.0, 1.0), _clamped(recall, 0.0, 1.0)
    return {"fid": _clamped(fid, 0.0), "kid": kid, "precision": precision, "recall": recall}


@torch.no_grad()
def rfid(n: int = 1000, extractor: str = "judge") -> dict[str, float]:
    """Reconstruction FID of the course's tokenizers on `extractor` features: chapter 02's
    image tokenizer (n real pool images against their reconstructions) and chapter 06's video
    tokenizer (every frame of n // 8 held-out clips against the frames of their
    reconstructions) → {"tokenizer", "video", "n", "video_frames"}, and chapter 02's tokenizer
    on real digits read by chapter 03's ViT → {"tokenizer_digits", "digits_train_vs_test",
    "digits"} (`_digits_rfid`). A tokenizer's rFID bounds what any generator decoding through
    it can reach."""
    extractor = _check_extractor(extractor)
    n = _validate.positive_int("n", n)
    if not 8 <= n <= POOL // 2:
        raise ValueError(f"n must be in [8, {POOL // 2}], got {n}")
    tokenizer = tokenizer_recipe.WEIGHTS["tokenizer"].load(device="cpu")
    images = _pool()[0][:n]
    recon = torch.cat([tokenizer.decode(tokenizer.encode(x)) for x in images.split(256)])
    video = video_recipe.WEIGHTS["video"].load(device="cpu")
    clips = video_recipe.held_out_clips(n // 8)  # (n/8, 8, 3, 32, 32)
    clips_hat = torch.cat([video.decode(video.encode(x)) for x in clips.split(32)])
    frames, frames_hat = clips.flatten(0, 1), clips_hat.flatten(0, 1).clamp(0, 1)
    return {
        "tokenizer": evaluation.fid(
            _pool_features(extractor)[:n], features(recon.clamp(0, 1), extractor)
        ),
        "video": evaluation.fid(features(frames, extractor), features(frames_hat, extractor)),
        "n": n,
        "video_frames": len(frames),
        **_digits_rfid(tokenizer),
    }


def _digits_rfid(tokenizer: nn.Module) -> dict[str, float]:
    """rFID of chapter 02's tokenizer on the 360 held-out real digits, read by chapter 03's ViT:
    each digit goes up to 32×32 (bilinear, in three equal channels), through the tokenizer,
    back to grey and down to 8×8 (area); the reference is the same resampling without the
    tokenizer. The floor beside it: 360 training digits against the 360 held-out ones."""
    up = DigitsDataset("test", size=32).images  # (360, 1, 32, 32)
    recon = torch.cat(
        [tokenizer.decode(tokenizer.encode(x.repeat(1, 3, 1, 1))) for x in up.split(120)]
    )

    def down(x: torch.Tensor) -> torch.Tensor:  # (N, C, 32, 32) → (N, 1, 8, 8) grey
        return nn.functional.interpolate(x.mean(1, keepdim=True), size=(8, 8), mode="area")

    held_out = digit_features(down(up))
    train = DigitsDataset("train").images[
        torch.randperm(1437, generator=torch.Generator().manual_seed(0))[:360]
    ]
    return {
        "tokenizer_digits": evaluation.fid(held_out, digit_features(down(recon.clamp(0, 1)))),
        "digits_train_vs_test": evaluation.fid(digit_features(train), held_out),
        "digits": len(up),
    }


# ------------------------------------------------------------------------------ preference

RATERS: tuple[str, ...] = ("judge", "clip_score")


@torch.no_grad()
def preference_quality(
    samples: dict[str, Samples] | None = None, rater: str = "judge"
) -> torch.Tensor:
    """Per-sample quality (G, C, S) float64 for `evaluation.simulate_comparisons`: G generators
    (the order of `samples`, default the shipped ones), C = 90 captions (all_captions() order),
    S samples of each. rater "judge": log p(colour) + log p(shape) + log p(position) of the
    caption's attributes under the judge (0 is certain and right); "clip_score": CLIPScore of
    each image with its caption."""
    if rater not in RATERS:
        raise ValueError(f"unknown rater {rater!r}; the raters are {RATERS}")
    samples = _check_samples(samples if samples is not None else load_samples())
    out = []
    for name, s in samples.items():
        if len(s.labels) % N_CAPTIONS:
            raise ValueError(f"samples[{name!r}] must hold every caption equally often")
        if rater == "judge":
            logits = _network("judge", "cpu")(s.images)  # {"color": (N, 6), ...}
            q = sum(
                logits[a].log_softmax(-1).gather(1, s.labels[:, i : i + 1]).squeeze(1)
                for i, a in enumerate(ATTRIBUTES)
            ).double()  # (N,)
        else:
            q = _caption_scores(s)[1]  # (N,)
        out.append(q.view(-1, N_CAPTIONS).T)  # (C, S): row r · 90 + c is caption c
    if len({q.shape for q in out}) > 1:
        raise ValueError("every generator needs the same number of samples per caption")
    return torch.stack(out)  # (G, C, S)


REBUILDS = {"evaluation_samples": rebuild_samples}
