"""Autoregressive image generation on Shapes (chapter 05): vocabulary, sequences and training.

One vocabulary holds caption words, four special tokens and the tokenizer's K = 512 image codes,
shifted by IMAGE_OFFSET so that no image id collides with a text or special id:

    ids 0 … 16     caption words ("a", "red", "circle", "top", …)
    17 … 20        PAD, NULL (the unconditional prompt), BOI, EOI
    21 … 532       image code c ↦ c + IMAGE_OFFSET

A training sequence is [caption (7 ids, left-padded)][BOI][64 image ids in raster order][EOI].
Captions are dropped now and then: the 7 caption ids become 7 NULLs, the same length, so the
conditional and unconditional prompts of classifier-free guidance line up position for position.
The loss is next-token cross-entropy on the 64 image ids and EOI only.

The shipped model is data/ar_shapes.pt, rebuilt from its seed by `python -m mmcourse.train ar`;
the same run also writes data/ar_shapes_early.pt, its weights after EARLY_STEPS of the TRAIN_STEPS
steps: a conditional model that has not yet sharpened, where classifier-free guidance matters.
data/ar_shapes_noisy.pt (`python -m mmcourse.train ar_noisy`) is the same recipe trained on pairs
of which CAPTION_NOISE carry another image's caption, as web alt-text often does: its conditional
distribution is a mixture that guidance sharpens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmcourse import _validate, checkpoints
from mmcourse.data import COLORS, POSITIONS, SHAPES, ShapesDataset, parse_caption
from mmcourse.env import device as default_device
from mmcourse.trainer import TrainResult, adamw_cosine, fit
from mmcourse.transformer import GPT, GPTConfig

PATH = checkpoints.DATA_DIR / "ar_shapes.pt"
EARLY_PATH = checkpoints.DATA_DIR / "ar_shapes_early.pt"
NOISY_PATH = checkpoints.DATA_DIR / "ar_shapes_noisy.pt"
COMMAND = "python -m mmcourse.train ar"
NOISY_COMMAND = "python -m mmcourse.train ar_noisy"
CACHE_DIR = checkpoints.DATA_DIR / "cache"

WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(["a", "in", "the", *COLORS, *SHAPES, *(w for p in POSITIONS for w in p.split())])
)
PAD, NULL, BOI, EOI = range(len(WORDS), len(WORDS) + 4)
SPECIALS = {"PAD": PAD, "NULL": NULL, "BOI": BOI, "EOI": EOI}
IMAGE_OFFSET = EOI + 1
CODES = 512  # the shipped tokenizer's codebook size
VOCAB_SIZE = IMAGE_OFFSET + CODES
CAPTION_LEN = 7  # "a red circle in the top left"; shorter captions are left-padded
GRID = 8  # 8×8 image tokens
IMAGE_LEN = GRID * GRID
SEQ_LEN = CAPTION_LEN + 1 + IMAGE_LEN + 1  # caption, BOI, image, EOI = 73
TRAIN_STEPS = 2400  # the shipped run (batch 64)
EARLY_STEPS = 650  # the early checkpoint of that same run (data/ar_shapes_early.pt)
CAPTION_NOISE = 0.3  # data/ar_shapes_noisy.pt: the fraction of training pairs mismatched
_WORD_ID = {w: i for i, w in enumerate(WORDS)}


# ------------------------------------------------------------------------------- vocabulary


def encode_captions(captions: Sequence[str] | str) -> torch.Tensor:
    """Captions of the Shapes grammar → word ids (N, CAPTION_LEN) long, left-padded with PAD."""
    if isinstance(captions, str):
        captions = [captions]
    rows = []
    for caption in captions:
        parse_caption(caption)  # ValueError naming the word outside the grammar
        ids = [_WORD_ID[w] for w in caption.split()]
        rows.append([PAD] * (CAPTION_LEN - len(ids)) + ids)
    return torch.tensor(rows, dtype=torch.long).view(-1, CAPTION_LEN)


def decode_caption(ids: torch.Tensor) -> str:
    """Word ids (CAPTION_LEN,) → the caption ("" for the unconditional prompt)."""
    ids = _validate.tensor("ids", ids, shape=(CAPTION_LEN,), dtype=torch.long)
    return " ".join(WORDS[i] for i in ids.tolist() if i < len(WORDS))


def null_prompt(n: int) -> torch.Tensor:
    """The unconditional caption: (n, CAPTION_LEN) NULL ids, as long as a real caption."""
    return torch.full((_validate.positive_int("n", n), CAPTION_LEN), NULL, dtype=torch.long)


def make_sequences(caption_ids: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
    """caption_ids (N, CAPTION_LEN), image_tokens (N, 8, 8) or (N, 64) codes in [0, 512) →
    sequences (N, SEQ_LEN) = [caption][BOI][codes + IMAGE_OFFSET][EOI]."""
    caption_ids = _validate.tensor(
        "caption_ids", caption_ids, shape=("N", CAPTION_LEN), dtype=torch.long
    )
    image_tokens = _validate.tensor("image_tokens", image_tokens, dtype=torch.long)
    image_tokens = image_tokens.reshape(len(image_tokens), -1)  # raster order (N, 64)
    if image_tokens.shape != (len(caption_ids), IMAGE_LEN):
        raise ValueError(
            f"image_tokens must hold {IMAGE_LEN} codes for each of the {len(caption_ids)} "
            f"captions, got shape {tuple(image_tokens.shape)}"
        )
    n = len(caption_ids)
    boi = torch.full((n, 1), BOI, dtype=torch.long)
    eoi = torch.full((n, 1), EOI, dtype=torch.long)
    return torch.cat([caption_ids, boi, image_tokens + IMAGE_OFFSET, eoi], dim=1)


@torch.no_grad()
def encode_images(tokenizer: nn.Module, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Images (N, 3, 32, 32) in [0, 1] → the tokenizer's codes (N, 8, 8) long, on the CPU."""
    images = _validate.tensor("images", images, shape=("N", 3, 32, 32), floating=True)
    param = next(tokenizer.parameters())
    return torch.cat([tokenizer.encode(x.to(param)).cpu() for x in images.split(batch)])


def shapes_sequences(
    n: int = 20_000, seed: int = 0, tokenizer: nn.Module | None = None
) -> torch.Tensor:
    """Training sequences (n, SEQ_LEN) of ShapesDataset(n, seed), the images encoded once by the
    shipped tokenizer and cached under data/cache/ (git-ignored)."""
    path = CACHE_DIR / f"ar_sequences_{n}_{seed}.pt"
    if path.is_file():
        try:
            seqs = torch.load(path, weights_only=True)
            if isinstance(seqs, torch.Tensor) and seqs.shape == (n, SEQ_LEN):
                return seqs
        except Exception:  # a stale or truncated cache is simply rebuilt
            pass
    if tokenizer is None:
        from mmcourse.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(device="cpu")  # host: the same cache on every machine
    data = ShapesDataset(n=n, seed=seed)
    seqs = make_sequences(encode_captions(data.captions), encode_images(tokenizer, data.images))
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    torch.save(seqs, path)
    return seqs


# -------------------------------------------------------------------------------- training


def mismatch_captions(seqs: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Noisy pairs, as in web alt-text: a fixed random `fraction` of the rows of seqs
    (N, SEQ_LEN) take the caption of a random row instead of their own (the image ids stay; on
    90 captions the borrowed one is the same by chance 1 time in 90). A model trained on them
    learns p(x | c) ≈ (1 − f)·p_true(x | c) + f·p(x), a mixture that classifier-free guidance
    can sharpen back, since p(c | x) still prefers the true caption."""
    seqs = _validate.tensor("seqs", seqs, shape=("N", SEQ_LEN), dtype=torch.long)
    number = isinstance(fraction, int | float) and not isinstance(fraction, bool)
    if not number or not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be a number in [0, 1], got {fraction!r}")
    g = torch.Generator().manual_seed(seed)
    n = len(seqs)
    rows = torch.randperm(n, generator=g)[: round(fraction * n)]  # (M,) the mismatched rows
    donors = torch.randint(n, (len(rows),), generator=g)  # (M,) whose caption each one gets
    out = seqs.clone()
    out[rows.to(seqs.device), :CAPTION_LEN] = seqs[donors.to(seqs.device), :CAPTION_LEN]
    return out


def drop_captions(seqs: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Caption dropout: each row's caption ids become NULL with probability p (same length).
    The draws come from `generator`, on its device."""
    seqs = _validate.tensor("seqs", seqs, shape=("B", SEQ_LEN), dtype=torch.long)
    drop = torch.rand(len(seqs), generator=generator, device=generator.device) < p  # (B,)
    drop = drop.to(seqs.device)
    out = seqs.clone()
    out[:, :CAPTION_LEN] = torch.where(drop[:, None], NULL, seqs[:, :CAPTION_LEN])  # no sync
    return out


def lm_loss(model: nn.Module, seqs: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy on the image ids and EOI of seqs (B, SEQ_LEN): the input is
    seqs[:, :-1], the targets seqs[:, 1:], and caption/BOI targets are not scored."""
    logits = model(seqs[:, :-1])  # (B, SEQ_LEN − 1, V)
    targets = seqs[:, 1:].clone()
    targets[:, :CAPTION_LEN] = -100  # position CAPTION_LEN reads BOI and predicts image token 0
    return F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100)


def default_config(**overrides: int | float) -> GPTConfig:
    """The shipped model's configuration (d_model 128, 4 layers, 4 heads), with overrides."""
    base = {"vocab_size": VOCAB_SIZE, "block_size": SEQ_LEN - 1, "n_layer": 4, "n_head": 4}
    return GPTConfig(**(base | {"d_model": 128, "dropout": 0.0} | overrides))


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
) -> TrainResult:
    """Train a GPT on sequences (N, SEQ_LEN): captions dropped with probability p_uncond, AdamW
    with warm-up and cosine decay over `steps`, gradient clipping at 1. `callback(step, model)`,
    if given, runs after every optimizer step (step = 1 … steps), e.g. to keep a snapshot of an
    early checkpoint of the same run; it must not change the model.

    The model and the sequences live on `device` (default: the course's), the batches are drawn
    there by a generator of that device (on the CPU, the same draws as always), and the losses
    are read back once, at the end."""
    seqs = _validate.tensor("seqs", seqs, shape=("N", SEQ_LEN), dtype=torch.long)
    steps, batch = _validate.positive_int("steps", steps), _validate.positive_int("batch", batch)
    dev = torch.device(device) if device is not None else default_device()
    torch.manual_seed(seed)
    g = torch.Generator(device=dev).manual_seed(seed)
    model = GPT(config or default_config()).to(dev)
    seqs = seqs.to(dev)
    opt, schedule = adamw_cosine(model, lr, steps)

    def step_loss(step: int) -> torch.Tensor:
        idx = torch.randint(len(seqs), (batch,), generator=g, device=dev)
        return lm_loss(model, drop_captions(seqs[idx], p_uncond, g))

    callbacks = [lambda step, _: callback(step + 1, model)] if callback is not None else []
    return fit(
        model,
        step_loss,
        steps=steps,
        optimizer=opt,
        schedule=schedule,
        clip=1.0,
        callbacks=callbacks,
        progress=progress,
    )


# ---------------------------------------------------------------- shipped weights and rebuild


def _build(config: dict) -> GPT:
    return GPT(GPTConfig(**config))


def _command(path: Path) -> str:
    return NOISY_COMMAND if path.name == NOISY_PATH.name else COMMAND


def _save_half(path: Path, model: GPT) -> None:
    half = {k: v.detach().half() for k, v in model.state_dict().items()}  # a copy, in float16
    checkpoints.save(path, half, config=model.config, command=_command(path))


def load_ar(path: Path | str = PATH, device: torch.device | str | None = None) -> GPT:
    """The shipped caption → image-token model (data/ar_shapes.pt; `path=EARLY_PATH` for the
    early checkpoint of the same run, `path=NOISY_PATH` for the model trained on noisy captions),
    in eval mode on `device` (default: the course's). Weights ship in float16, load as float32."""
    path = Path(path)
    command = _command(path)
    ckpt = checkpoints.load(path, command=command)
    state = {k: v.float() for k, v in ckpt["state_dict"].items()}
    model = checkpoints.restore(
        {**ckpt, "state_dict": state}, GPT, path=path, command=command, build=_build
    )
    return model.to(device or default_device())


_SUMMARY_SCALES = (1.0, 1.5, 2.0, 3.0, 5.0)


def _summary_line(path: Path, steps: int, losses: list[float], seed: int) -> str:
    """Judge faithfulness against the guidance scale for the weights at `path` (180 samples)."""
    from mmcourse import recipes
    from mmcourse.sampling import faithfulness
    from mmcourse.tokenizer import load_tokenizer

    model, judge = load_ar(path, "cpu"), recipes.load("judge", device="cpu")
    tokenizer = load_tokenizer(device="cpu")
    scores = {
        s: faithfulness(model, tokenizer, judge, per_caption=2, scale=s, seed=seed)["all"]
        for s in _SUMMARY_SCALES
    }
    window = losses[max(steps - 50, 0) : steps]  # the last 50 steps before it
    return (
        f"{path.name} (step {steps}, loss {sum(window) / len(window):.3f}): judge faithfulness "
        "(180 samples, temperature 1) " + ", ".join(f"s {s:g}: {v:.3f}" for s, v in scores.items())
    )


def rebuild(seed: int = 0) -> str:
    """Train the shipped model from `seed` on one thread, write data/ar_shapes.pt (float16) and,
    from the same run after EARLY_STEPS steps, data/ar_shapes_early.pt (float16), and return a
    summary with judge faithfulness against the guidance scale for both (the
    `python -m mmcourse.train ar` target)."""
    from mmcourse.env import one_thread
    from mmcourse.tokenizer import load_tokenizer

    with one_thread():
        seqs = shapes_sequences(seed=seed, tokenizer=load_tokenizer(device="cpu"))
        early_steps = EARLY_STEPS  # read once: the snapshot and the summary agree
        if not 1 <= early_steps <= TRAIN_STEPS:
            raise ValueError(f"EARLY_STEPS must be in [1, {TRAIN_STEPS}], got {early_steps}")

        def snapshot(step: int, model: GPT) -> None:
            if step == early_steps:
                _save_half(EARLY_PATH, model)

        result = train_ar(seqs, steps=TRAIN_STEPS, seed=seed, callback=snapshot, device="cpu")
        _save_half(PATH, result.model)
        lines = [f"wrote {PATH.name} and {EARLY_PATH.name} in {result.seconds:.0f} s"]
        for path, steps in ((EARLY_PATH, early_steps), (PATH, TRAIN_STEPS)):
            lines.append(_summary_line(path, steps, result.losses, seed))
    return "\n".join(lines)


def rebuild_noisy(seed: int = 0) -> str:
    """The shipped recipe (same model, steps and seed) on the same sequences with CAPTION_NOISE
    of the captions mismatched (`mismatch_captions`): writes data/ar_shapes_noisy.pt (float16)
    and returns its judge summary (the `python -m mmcourse.train ar_noisy` target)."""
    from mmcourse.env import one_thread
    from mmcourse.tokenizer import load_tokenizer

    with one_thread():
        seqs = shapes_sequences(seed=seed, tokenizer=load_tokenizer(device="cpu"))
        noisy = mismatch_captions(seqs, CAPTION_NOISE, seed)
        result = train_ar(noisy, steps=TRAIN_STEPS, seed=seed, device="cpu")
        _save_half(NOISY_PATH, result.model)
        return "\n".join([
            f"wrote {NOISY_PATH.name} ({CAPTION_NOISE:.0%} of captions mismatched) in "
            f"{result.seconds:.0f} s",
            _summary_line(NOISY_PATH, TRAIN_STEPS, result.losses, seed),
        ])  # fmt: skip
