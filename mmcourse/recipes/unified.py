"""Chapter 07's recipe: the tiny Chameleon's data, training run, evaluation and rebuild.

data      `course_data`: Shapes images and moving-shapes clips tokenized once by the shipped
          tokenizers (cached under data/cache/); `build_sources` turns them into the id
          sequences of the five kinds of example, `make_loader` mixes them (DEFAULT_RATIOS)
training  `train_unified`: next-token cross-entropy (`unified.lm_loss`) on `trainer.fit`
measures  `evaluate` (judge on caption → image, exact captions on held-out images),
          `direction_losses` (teacher-forced), `ratio_sweep` (how the mix moves both)
weights   WEIGHTS["unified"] is data/unified_shapes.pt; `python -m mmcourse.train unified`
          runs `rebuild`
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmcourse import _validate, distributed
from mmcourse import ar as ar_model
from mmcourse.bpe import BPE, course_bpe
from mmcourse.checkpoints import Weights, cached
from mmcourse.data import MovingShapesDataset, ShapesDataset, all_captions
from mmcourse.env import device as default_device
from mmcourse.env import one_thread, to_device
from mmcourse.recipes import ar as ar_recipe
from mmcourse.recipes import judge as judge_recipe
from mmcourse.recipes import tokenizer as tokenizer_recipe
from mmcourse.recipes import video as video_recipe
from mmcourse.trainer import TrainResult, adamw_cosine, fit
from mmcourse.transformer import GPT, GPTConfig
from mmcourse.unified import caption_images, generate_images, lm_loss
from mmcourse.vocab import (
    KINDS,
    MixingLoader,
    Segment,
    Vocabulary,
    course_vocab,
    encode_interleaved,
    pad_batch,
)


def _gpt(config: dict) -> GPT:
    return GPT(GPTConfig(**config))


WEIGHTS = {
    "unified": Weights(
        "unified_shapes.pt", GPT, command="python -m mmcourse.train unified", build=_gpt, half=True
    )
}
DEFAULT_RATIOS = {
    "text": 0.03,
    "caption_image": 0.42,
    "image_caption": 0.35,
    "interleaved": 0.1,
    "video": 0.1,
}
TRAIN_STEPS = 3000  # the shipped run (batch 32)
HELD_OUT_SEED = 1
TEMPERATURE = 1.0  # caption → image sampling temperature of the reported scores
SWEEP_CONFIG = {"n_layer": 2, "n_head": 2, "d_model": 64, "mlp_ratio": 3}
_LONG = 100  # rows longer than this train in their own micro-batch (less padding)


# ------------------------------------------------------------------------------------ data


class CourseData(NamedTuple):
    image_codes: torch.Tensor  # (N, 8, 8) long, the image tokenizer's codes
    captions: list[str]  # N Shapes captions
    video_codes: torch.Tensor  # (M, 2, 8, 8) long, the video tokenizer's codes
    video_captions: list[str]  # M motion captions


@torch.no_grad()
def course_data(n_images: int = 20_000, n_clips: int = 1_000, seed: int = 0) -> CourseData:
    """Shapes images and moving-shapes clips of `seed`, tokenized once by the shipped
    tokenizers and cached under data/cache/ (git-ignored)."""
    n_images = _validate.positive_int("n_images", n_images)
    n_clips = _validate.positive_int("n_clips", n_clips)
    if n_images == 20_000 and seed == 0:  # chapter 05's cached sequences hold the same codes
        seqs = ar_recipe.shapes_sequences(n_images, seed)
        image_codes = (seqs[:, ar_model.CAPTION_LEN + 1 : -1] - ar_model.IMAGE_OFFSET).view(
            -1, 8, 8
        )
        captions = ShapesDataset(n=n_images, seed=seed).captions
    else:
        data = ShapesDataset(n=n_images, seed=seed)
        image_codes = cached(
            f"unified_images_{n_images}_{seed}.pt",
            lambda: _encode_images(data.images),
            lambda v: isinstance(v, torch.Tensor) and v.shape == (n_images, 8, 8),
        )
        captions = data.captions
    clips = MovingShapesDataset(n=n_clips, seed=seed)
    video_codes = cached(
        f"unified_clips_{n_clips}_{seed}.pt",
        lambda: _encode_clips(clips.clips),
        lambda v: isinstance(v, torch.Tensor) and v.shape == (n_clips, 2, 8, 8),
    )
    return CourseData(image_codes, captions, video_codes, clips.captions)


def _encode_images(images: torch.Tensor) -> torch.Tensor:
    tokenizer = tokenizer_recipe.WEIGHTS["tokenizer"].load(device="cpu")  # host: same codes
    return torch.cat([tokenizer.encode(x) for x in images.split(500)])


def _encode_clips(clips: torch.Tensor) -> torch.Tensor:
    tokenizer = video_recipe.WEIGHTS["video"].load(device="cpu")  # host: the same codes
    return torch.cat([tokenizer.encode(x) for x in clips.split(50)])


def build_sources(
    data: CourseData, vocab: Vocabulary, bpe: BPE | None = None, seed: int = 0
) -> dict[str, list[torch.Tensor]]:
    """The id sequences of every kind of example (see `mmcourse.unified`), for the loader:
    text = every distinct caption; caption_image / image_caption = every image with its
    caption; interleaved = image i and a random partner j; video = every clip, caption first
    for even and video first for odd indices."""
    bpe = bpe or course_bpe()
    words = {c: torch.tensor(bpe.encode(c)) for c in dict.fromkeys(data.captions)}
    words |= {c: torch.tensor(bpe.encode(c)) for c in dict.fromkeys(data.video_captions)}
    g = torch.Generator().manual_seed(seed)
    partner = torch.randperm(len(data.captions), generator=g).tolist()

    def text(caption: str) -> Segment:
        return Segment("text", words[caption])

    def image(i: int) -> Segment:
        return Segment("image", data.image_codes[i])

    sources: dict[str, list[torch.Tensor]] = {kind: [] for kind in KINDS}
    sources["text"] = [encode_interleaved([text(c)], vocab) for c in words]
    for i, caption in enumerate(data.captions):
        sources["caption_image"].append(encode_interleaved([text(caption), image(i)], vocab))
        sources["image_caption"].append(encode_interleaved([image(i), text(caption)], vocab))
        j = partner[i]
        doc = [text(caption), image(i), text(data.captions[j]), image(j)]
        sources["interleaved"].append(encode_interleaved(doc, vocab))
    for i, caption in enumerate(data.video_captions):
        clip = Segment("video", data.video_codes[i])
        doc = [text(caption), clip] if i % 2 == 0 else [clip, text(caption)]
        sources["video"].append(encode_interleaved(doc, vocab))
    return sources


def make_loader(
    ratios: Mapping[str, float] | None = None,
    *,
    batch_size: int = 32,
    seed: int = 0,
    data: CourseData | None = None,
) -> MixingLoader:
    """The course's mixing loader over `course_data()` (DEFAULT_RATIOS unless given). Under
    torchrun each rank's loader draws its own batch_size / world_size rows."""
    vocab = course_vocab()
    sources = build_sources(data or course_data(seed=seed), vocab, seed=seed)
    rows, draws = distributed.local_batch(batch_size), distributed.rank_seed(seed)
    return MixingLoader(sources, ratios or DEFAULT_RATIOS, vocab, batch_size=rows, seed=draws)


def positions_per_step(batches: int = 300, seed: int = 0) -> float:
    """Mean number of real (not padding) ids in a batch of the shipped run's loader (batch 32):
    the compute budget of one training step, to set beside chapter 08's."""
    loader = make_loader(seed=seed)
    batches = _validate.positive_int("batches", batches)
    return sum(int(loader.next_batch()[1].sum()) for _ in range(batches)) / batches


# -------------------------------------------------------------------------------- training


def default_config(vocab: Vocabulary | None = None, **overrides: int | float) -> GPTConfig:
    """The shipped model: d_model 128, 4 layers, 4 heads, MLP ×3 (≈ 0.9 M parameters), block
    size 160 (the longest example, two captions and two images, is 148 ids)."""
    vocab = vocab or course_vocab()
    base = {"vocab_size": vocab.size, "block_size": 160, "n_layer": 4, "n_head": 4}
    return GPTConfig(**(base | {"d_model": 128, "mlp_ratio": 3, "dropout": 0.0} | overrides))


def train_unified(
    loader: MixingLoader,
    *,
    config: GPTConfig | None = None,
    steps: int = 300,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
    device: torch.device | str | None = None,
    fsdp: bool = False,
    lr_final: float = 0.05,
    warmup: int | None = None,
    on_step: Callable[[int, nn.Module], None] | None = None,
) -> TrainResult:
    """Train a GPT on the loader's mixed batches: AdamW with `warmup` steps of warm-up (default
    5 % of `steps`) and cosine decay to lr_final · lr (1: a constant rate after the warm-up),
    gradient clipping at 1; `on_step(step, model)` runs after every step (chapter 11 measures
    the model there). Each batch is split into its short rows and its long rows (> 100 ids),
    each padded only to its own longest row, and the loss is averaged over all real targets.

    The model trains on `device` (default: the course's); the loader's batches are split on the
    CPU and sent over without waiting for the GPU, and the losses are read back once, at the
    end. Under torchrun (DDP, or FSDP2 when `fsdp`) each rank trains on its loader's batch as one
    micro-batch (`_micro_batches`), and the mean is over the real targets of all ranks."""
    if not isinstance(loader, MixingLoader):
        raise TypeError(f"loader must be a MixingLoader, got {type(loader).__name__}")
    steps = _validate.positive_int("steps", steps)
    dev = torch.device(device) if device is not None else default_device()
    torch.manual_seed(seed)
    model = GPT(config or default_config(loader.vocab)).to(dev)
    net = distributed.wrap(model, fsdp=fsdp)  # DDP or FSDP2 under torchrun, else the model
    opt, schedule = adamw_cosine(
        model, lr, steps, final=lr_final, warmup=warmup
    )  # after wrap: FSDP2 shards
    ranks = distributed.world_size()

    def step_loss(step: int) -> Iterator[torch.Tensor]:
        ids, mask, _ = loader.next_batch()  # host: the loader pads on the CPU
        lengths = mask.sum(1)
        total = distributed.sum_over_ranks(mask[:, 1:].sum()).clamp_min(1)  # all ranks' targets
        for rows in _micro_batches(lengths):  # summed in float64
            n = int(lengths[rows].max())
            part_ids, part_mask = to_device(ids[rows, :n], dev), to_device(mask[rows, :n], dev)
            # DDP averages over the ranks: N · (rank's sum) / (all targets) averages to the mean
            yield lm_loss(net, part_ids, part_mask, reduction="sum") / total * ranks

    callbacks = [lambda step, _: on_step(step, model)] if on_step is not None else []
    run = fit(model, step_loss, steps=steps, optimizer=opt, schedule=schedule, clip=1.0,
              callbacks=callbacks, progress=progress, generators=[loader.generator])  # fmt: skip
    return run._replace(model=distributed.full_model(run.model))


def _micro_batches(lengths: torch.Tensor) -> list[torch.Tensor]:
    """Row masks of a batch's micro-batches, from the rows' lengths (B,): the short rows (≤ 100
    ids) and the long ones, each padded only to its own longest row; empty ones left out. Under
    torchrun all rows at once: every backward is an all-reduce, which every rank must join as
    many times, and one rank's batch may hold no long row when another's does."""
    if distributed.is_distributed():
        return [lengths >= 0]
    return [rows for rows in (lengths <= _LONG, lengths > _LONG) if rows.any()]


# ------------------------------------------------------------------------------ evaluation


@torch.no_grad()
def direction_losses(
    model: nn.Module,
    image_codes: torch.Tensor,
    captions: Sequence[str],
    *,
    vocab: Vocabulary | None = None,
    bpe: BPE | None = None,
) -> dict[str, float]:
    """Teacher-forced scores of both directions, which move long before samples get good:
    `image_loss` = mean cross-entropy of the 64 image ids after [BOS] caption [BOI];
    `caption_loss` = mean cross-entropy of the caption ids and EOS after [BOS] [BOI] image
    [EOI]; `caption_token_acc` = how often the most likely next id is the right caption id;
    `loss` = mean cross-entropy of every real target of both documents (the training
    objective of an even mix of the two directions)."""
    bpe = bpe or course_bpe()
    vocab = vocab or course_vocab(bpe)
    image_codes = _validate.tensor("image_codes", image_codes, shape=("N", 8, 8), dtype=torch.long)
    param = next(model.parameters())
    c2i, i2c = [], []
    for codes, caption in zip(image_codes, captions):
        text = Segment("text", torch.tensor(bpe.encode(caption)))
        image = Segment("image", codes)
        c2i.append(encode_interleaved([text, image], vocab))
        i2c.append(encode_interleaved([image, text], vocab))
    out, every = {}, []
    for name, seqs in (("image", c2i), ("caption", i2c)):
        ids, mask = pad_batch(seqs, vocab)
        types = vocab.token_types(ids)
        if name == "image":
            scored = types == 2  # the 64 image ids
        else:
            scored = (types == 0) | (ids == vocab.EOS)  # caption ids and EOS
            scored[:, :67] = False  # [BOS][BOI] image [EOI] are the prompt
        scored &= mask
        ids, scored = ids.to(param.device), scored.to(param.device)
        logits = model(ids[:, :-1]).float()  # (N, L − 1, V)
        targets = ids[:, 1:]
        keep = scored[:, 1:]
        ce = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (N, L − 1)
        out[f"{name}_loss"] = (ce[keep].mean()).item()
        every.append(ce[mask[:, 1:].to(ce.device)])
        if name == "caption":
            out["caption_token_acc"] = (logits.argmax(-1) == targets)[keep].float().mean().item()
    out["loss"] = torch.cat(every).mean().item()
    return out


def held_out(n: int = 500) -> tuple[torch.Tensor, list[str]]:
    """Held-out Shapes (seed 1): image codes (n, 8, 8) and captions."""
    data = ShapesDataset(n=_validate.positive_int("n", n), seed=HELD_OUT_SEED)
    return _encode_images(data.images), data.captions


def evaluate(
    model: nn.Module,
    *,
    per_caption: int = 2,
    n_captions: int = 500,
    temperature: float = TEMPERATURE,
    top_k: int | None = None,
    seed: int = 0,
    judge: nn.Module | None = None,
    tokenizer: nn.Module | None = None,
    held: tuple[torch.Tensor, list[str]] | None = None,
) -> dict[str, float]:
    """Both directions on held-out data: `caption_to_image_judge` = judge "all" (colour,
    shape and position right) on per_caption images for each of the 90 captions, plus per
    attribute; `image_to_caption_exact` = fraction of n_captions held-out images (seed 1)
    whose greedy caption equals the true caption word for word. The shipped judge and image
    tokenizer are loaded on the model's device unless given."""
    param = next(model.parameters())
    judge = judge or judge_recipe.WEIGHTS["judge"].load(device=param.device)
    tokenizer = tokenizer or tokenizer_recipe.WEIGHTS["tokenizer"].load(device=param.device)
    captions = all_captions() * _validate.positive_int("per_caption", per_caption)
    images, _ = generate_images(
        model, captions, tokenizer=tokenizer, temperature=temperature, top_k=top_k, seed=seed
    )
    scores = judge.score(images.to(next(judge.parameters()).device), captions)
    codes, truth = held or held_out(n_captions)
    got = caption_images(model, codes)
    return {
        "caption_to_image_judge": scores["all"],
        **{f"caption_to_image_{a}": scores[a] for a in ("color", "shape", "position")},
        "image_to_caption_exact": sum(g == t for g, t in zip(got, truth)) / len(truth),
    }


def ratio_sweep(
    shares: Sequence[float] = (0.2, 0.5, 0.8),
    *,
    steps: int = 250,
    batch_size: int = 16,
    seed: int = 0,
    data: CourseData | None = None,
    progress: bool = True,
    device: torch.device | str | None = None,
) -> list[dict[str, float]]:
    """How the mix moves both directions, on a small budget: for each share s, a small GPT
    (SWEEP_CONFIG) trained `steps` steps on a mix whose paired examples are a fraction s
    caption → image and 1 − s image → caption (text, interleaved and video at DEFAULT_RATIOS),
    then scored on 90 captions (one image each) and 200 held-out images (`evaluate`), and by
    the teacher-forced `direction_losses` on the same 200 images. The models train on `device`
    (default: the course's)."""
    for share in shares:
        _validate.number("shares", share, 0, 1)
    data = data or course_data(seed=seed)
    vocab = course_vocab()
    sources = build_sources(data, vocab, seed=seed)
    paired = DEFAULT_RATIOS["caption_image"] + DEFAULT_RATIOS["image_caption"]
    held = held_out(200)
    rows = []
    for share in shares:
        ratios = DEFAULT_RATIOS | {"caption_image": share * paired,
                                   "image_caption": (1 - share) * paired}  # fmt: skip
        loader = MixingLoader(sources, ratios, vocab, batch_size=batch_size, seed=seed)
        config = default_config(vocab, **SWEEP_CONFIG)
        result = train_unified(loader, config=config, steps=steps, lr=3e-3, seed=seed,
                               progress=progress, device=device)  # fmt: skip
        scores = evaluate(result.model, per_caption=1, held=held, seed=seed)
        scores |= direction_losses(result.model, *held, vocab=vocab)
        rows.append({"caption_image_share": share, **scores, "seconds": result.seconds})
    return rows


# ----------------------------------------------------------------------------------- rebuild


def rebuild(seed: int = 0, steps: int = TRAIN_STEPS, fsdp: bool = False) -> str:
    """Train the shipped model from `seed` on one thread, write data/unified_shapes.pt
    (float16), return a summary with both held-out scores (`python -m mmcourse.train
    unified`; `fsdp`: FSDP2 under torchrun)."""
    weights = WEIGHTS["unified"]
    with one_thread():
        loader = make_loader(seed=seed)
        result = train_unified(loader, steps=steps, seed=seed, device="cpu", fsdp=fsdp)
        if not distributed.is_main():
            return ""  # rank 0 writes the file and measures it
        path = weights.save(result.model)
        scores = evaluate(weights.load(path, "cpu"), seed=seed)
    return (
        f"wrote {path.name} in {result.seconds:.0f} s; final loss "
        f"{sum(result.losses[-50:]) / len(result.losses[-50:]):.3f}; held-out "
        + ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
    )


REBUILDS = {"unified": rebuild}
