"""A tiny Chameleon (chapter 07): one GPT over the joint text | image | video vocabulary.

Training streams mixed examples from `vocab.MixingLoader`, every one a single id sequence:

    text            [BOS] a red circle in the top left [EOS]
    caption_image   [BOS] caption [BOI] 64 image ids [EOI] [EOS]
    image_caption   [BOS] [BOI] 64 image ids [EOI] caption [EOS]
    interleaved     [BOS] caption₁ [BOI] image₁ [EOI] caption₂ [BOI] image₂ [EOI] [EOS]
    video           [BOS] motion caption [BOV] 128 video ids [EOV] [EOS]   (or video first)

and the loss is next-token cross-entropy on every real token (the loss mask drops PAD). The same
weights then do both directions: caption → image samples 64 ids after [BOS] caption [BOI] with
every id outside the image block masked (`sampling.generate`, allowed = the image range), and
image → caption decodes greedily after [BOS] [BOI] image [EOI], restricted to text ids and
EOS. The judge scores the images; captions must match word for word.

The shipped model is data/unified_shapes.pt, rebuilt from its seed by
`python -m mmcourse.train unified`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmcourse import _validate, checkpoints
from mmcourse.bpe import BPE, course_bpe
from mmcourse.data import MovingShapesDataset, ShapesDataset, all_captions
from mmcourse.env import device as default_device
from mmcourse.env import to_device
from mmcourse.trainer import TrainResult, adamw_cosine, fit
from mmcourse.transformer import GPT, GPTConfig, greedy_decode
from mmcourse.vocab import (
    KINDS,
    MixingLoader,
    Segment,
    Vocabulary,
    course_vocab,
    decode_interleaved,
    encode_interleaved,
    pad_batch,
)

__all__ = [
    "COMMAND",
    "DEFAULT_RATIOS",
    "PATH",
    "CourseData",
    "TrainResult",
    "build_sources",
    "caption_images",
    "course_data",
    "default_config",
    "direction_losses",
    "evaluate",
    "generate_images",
    "lm_loss",
    "load_unified",
    "positions_per_step",
    "rebuild",
    "train_unified",
]

PATH = checkpoints.DATA_DIR / "unified_shapes.pt"
COMMAND = "python -m mmcourse.train unified"
CACHE_DIR = checkpoints.DATA_DIR / "cache"
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
_LONG = 100  # rows longer than this train in their own micro-batch (less padding)


# ------------------------------------------------------------------------------------ data


class CourseData(NamedTuple):
    image_codes: torch.Tensor  # (N, 8, 8) long, the image tokenizer's codes
    captions: list[str]  # N Shapes captions
    video_codes: torch.Tensor  # (M, 2, 8, 8) long, the video tokenizer's codes
    video_captions: list[str]  # M motion captions


def _cached(path: Path, make, check) -> object:
    if path.is_file():
        try:
            value = torch.load(path, weights_only=True)
            if check(value):
                return value
        except Exception:  # a stale or truncated cache is simply rebuilt
            pass
    value = make()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    torch.save(value, path)
    return value


@torch.no_grad()
def course_data(n_images: int = 20_000, n_clips: int = 1_000, seed: int = 0) -> CourseData:
    """Shapes images and moving-shapes clips of `seed`, tokenized once by the shipped
    tokenizers and cached under data/cache/ (git-ignored)."""
    from mmcourse import ar

    n_images = _validate.positive_int("n_images", n_images)
    n_clips = _validate.positive_int("n_clips", n_clips)
    if n_images == 20_000 and seed == 0:  # chapter 05's cached sequences hold the same codes
        seqs = ar.shapes_sequences(n_images, seed)
        image_codes = (seqs[:, ar.CAPTION_LEN + 1 : -1] - ar.IMAGE_OFFSET).view(-1, 8, 8)
        captions = ShapesDataset(n=n_images, seed=seed).captions
    else:
        data = ShapesDataset(n=n_images, seed=seed)
        image_codes = _cached(
            CACHE_DIR / f"unified_images_{n_images}_{seed}.pt",
            lambda: _encode_images(data.images),
            lambda v: isinstance(v, torch.Tensor) and v.shape == (n_images, 8, 8),
        )
        captions = data.captions
    clips = MovingShapesDataset(n=n_clips, seed=seed)
    video_codes = _cached(
        CACHE_DIR / f"unified_clips_{n_clips}_{seed}.pt",
        lambda: _encode_clips(clips.clips),
        lambda v: isinstance(v, torch.Tensor) and v.shape == (n_clips, 2, 8, 8),
    )
    return CourseData(image_codes, captions, video_codes, clips.captions)


def _encode_images(images: torch.Tensor) -> torch.Tensor:
    from mmcourse.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(device="cpu")  # host: the same codes on every machine
    return torch.cat([tokenizer.encode(x) for x in images.split(500)])


def _encode_clips(clips: torch.Tensor) -> torch.Tensor:
    from mmcourse.video import load_video_tokenizer

    tokenizer = load_video_tokenizer(device="cpu")  # host: the same codes on every machine
    return torch.cat([tokenizer.encode(x) for x in clips.split(50)])


def build_sources(
    data: CourseData, vocab: Vocabulary, bpe: BPE | None = None, seed: int = 0
) -> dict[str, list[torch.Tensor]]:
    """The id sequences of every kind of example (see the module docstring), for the loader:
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


# -------------------------------------------------------------------------------- training


def lm_loss(
    model: nn.Module, ids: torch.Tensor, loss_mask: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Next-token cross-entropy of ids (B, L): inputs ids[:, :-1], targets ids[:, 1:], and
    only targets where loss_mask[:, 1:] is True count (padding never does). reduction "mean"
    averages over the counted targets, "sum" adds them."""
    ids = _validate.tensor("ids", ids, shape=("B", "L"), dtype=torch.long)
    loss_mask = _validate.tensor("loss_mask", loss_mask, shape=tuple(ids.shape), dtype=torch.bool)
    logits = model(ids[:, :-1])  # (B, L − 1, V)
    targets = ids[:, 1:].masked_fill(~loss_mask[:, 1:], -100)  # ignored where masked
    return F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction=reduction)


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
) -> TrainResult:
    """Train a GPT on the loader's mixed batches: AdamW with warm-up and cosine decay, gradient
    clipping at 1. Each batch is split into its short rows and its long rows (> 100 ids), each
    padded only to its own longest row, and the loss is averaged over all real targets.

    The model trains on `device` (default: the course's); the loader's batches are split on the
    CPU and sent over without waiting for the GPU, and the losses are read back once, at the
    end."""
    if not isinstance(loader, MixingLoader):
        raise TypeError(f"loader must be a MixingLoader, got {type(loader).__name__}")
    steps = _validate.positive_int("steps", steps)
    dev = torch.device(device) if device is not None else default_device()
    torch.manual_seed(seed)
    model = GPT(config or default_config(loader.vocab)).to(dev)
    opt, schedule = adamw_cosine(model, lr, steps)

    def step_loss(step: int) -> Iterator[torch.Tensor]:
        ids, mask, _ = loader.next_batch()  # host: the loader pads on the CPU
        lengths = mask.sum(1)
        total = (mask[:, 1:].sum()).clamp_min(1)
        for rows in (lengths <= _LONG, lengths > _LONG):  # two micro-batches, summed in float64
            if rows.any():
                n = int(lengths[rows].max())
                part_ids, part_mask = to_device(ids[rows, :n], dev), to_device(mask[rows, :n], dev)
                yield lm_loss(model, part_ids, part_mask, reduction="sum") / total

    return fit(
        model, step_loss, steps=steps, optimizer=opt, schedule=schedule, clip=1.0, progress=progress
    )


# ------------------------------------------------------------------------------ generation


@torch.no_grad()
def generate_images(
    model: nn.Module,
    captions: Sequence[str],
    *,
    vocab: Vocabulary | None = None,
    bpe: BPE | None = None,
    tokenizer: nn.Module | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Caption → image: 64 ids sampled after [BOS] caption [BOI], only image ids allowed
    (`sampling.generate` with a KV cache), decoded through the image tokenizer. Captions of the
    same token length run as one batch. → (images (N, 3, 32, 32) in [0, 1] on the CPU, codes
    (N, 8, 8))."""
    from mmcourse.sampling import generate
    from mmcourse.tokenizer import load_tokenizer

    if isinstance(captions, str) or not captions:
        raise TypeError("captions must be a non-empty list of str")
    bpe, param = bpe or course_bpe(), next(model.parameters())
    vocab = vocab or course_vocab(bpe)
    tokenizer = tokenizer or load_tokenizer(device=param.device)
    prompts = [torch.tensor([vocab.BOS, *bpe.encode(c), vocab.BOI]) for c in captions]
    codes = torch.empty(len(captions), 64, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    for length in sorted({len(p) for p in prompts}):
        rows = [i for i, p in enumerate(prompts) if len(p) == length]
        ids = generate(
            model,
            torch.stack([prompts[i] for i in rows]).to(param.device),
            64,
            temperature=temperature,
            top_k=top_k,
            allowed=vocab.ranges["image"],
            generator=generator,
        )
        codes[rows] = vocab.image_codes_of(ids.cpu())  # remove the image offset
    codes = codes.view(-1, 8, 8)
    t_param = next(tokenizer.parameters())
    return tokenizer.decode(codes.to(t_param.device)).cpu(), codes


@torch.no_grad()
def caption_images(
    model: nn.Module,
    image_codes: torch.Tensor,
    *,
    vocab: Vocabulary | None = None,
    bpe: BPE | None = None,
    max_len: int = 12,
) -> list[str]:
    """Image → caption: greedy decoding after [BOS] [BOI] image [EOI], with every id but the
    text ids and EOS masked, until EOS (or max_len tokens). image_codes (N, 8, 8) → N str."""
    bpe, param = bpe or course_bpe(), next(model.parameters())
    vocab = vocab or course_vocab(bpe)
    image_codes = _validate.tensor("image_codes", image_codes, shape=("N", 8, 8), dtype=torch.long)
    n = len(image_codes)
    head = torch.tensor([vocab.BOS, vocab.BOI])
    prompt = torch.cat(
        [head.expand(n, 2), vocab.image_ids(image_codes.cpu().flatten(1)),
         torch.full((n, 1), vocab.EOI)], dim=1,
    ).to(param.device)  # fmt: skip
    allowed = torch.zeros(vocab.size, dtype=torch.bool, device=param.device)
    allowed[: vocab.text_size] = True
    allowed[vocab.EOS] = True
    cache = model.new_cache()
    logits = model(prompt, cache=cache)[:, -1]
    rows = greedy_decode(
        logits, lambda ids: model(ids, cache=cache)[:, -1], allowed, vocab.EOS, max_len
    )
    return [bpe.decode(row) for row in rows]


def decode_document(
    ids: torch.Tensor,
    *,
    vocab: Vocabulary | None = None,
    bpe: BPE | None = None,
    tokenizer: nn.Module | None = None,
    video_tokenizer: nn.Module | None = None,
) -> list[str | torch.Tensor]:
    """ids (L,) → the document's items: str for text, an image (3, 32, 32) or a clip
    (8, 3, 32, 32) decoded by the tokenizers (loaded when not given)."""
    from mmcourse.tokenizer import load_tokenizer
    from mmcourse.video import load_video_tokenizer

    bpe = bpe or course_bpe()
    vocab = vocab or course_vocab(bpe)
    items: list[str | torch.Tensor] = []
    for kind, tokens in decode_interleaved(ids, vocab):
        if kind == "text":
            items.append(bpe.decode(tokens.tolist()))
        elif kind == "image":
            tokenizer = tokenizer or load_tokenizer()
            p = next(tokenizer.parameters())
            items.append(tokenizer.decode(tokens[None].to(p.device))[0].cpu())
        else:
            video_tokenizer = video_tokenizer or load_video_tokenizer()
            p = next(video_tokenizer.parameters())
            items.append(video_tokenizer.decode(tokens[None].to(p.device))[0].cpu())
    return items


def encode_document(
    items: Sequence[str | torch.Tensor],
    *,
    vocab: Vocabulary | None = None,
    bpe: BPE | None = None,
    tokenizer: nn.Module | None = None,
    video_tokenizer: nn.Module | None = None,
) -> torch.Tensor:
    """A document as a list of items (str | image (3, 32, 32) | clip (8, 3, 32, 32) in [0, 1])
    → ids (L,): text through the BPE, images and clips through their tokenizers."""
    from mmcourse.tokenizer import load_tokenizer
    from mmcourse.video import load_video_tokenizer

    bpe = bpe or course_bpe()
    vocab = vocab or course_vocab(bpe)
    segments = []
    for k, item in enumerate(items):
        if isinstance(item, str):
            segments.append(Segment("text", torch.tensor(bpe.encode(item), dtype=torch.long)))
            continue
        item = _validate.tensor(f"items[{k}]", item, floating=True)
        if item.shape == (3, 32, 32):
            tokenizer = tokenizer or load_tokenizer()
            p = next(tokenizer.parameters())
            segments.append(Segment("image", tokenizer.encode(item[None].to(p))[0].cpu()))
        elif item.shape == (8, 3, 32, 32):
            video_tokenizer = video_tokenizer or load_video_tokenizer()
            p = next(video_tokenizer.parameters())
            segments.append(Segment("video", video_tokenizer.encode(item[None].to(p))[0].cpu()))
        else:
            raise ValueError(
                f"items[{k}] must be a str, an image (3, 32, 32) or a clip (8, 3, 32, 32), got "
                f"shape {tuple(item.shape)}"
            )
    return encode_interleaved(segments, vocab)


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
    [EOI]; `caption_token_acc` = how often the most likely next id is the right caption id."""
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
    out = {}
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
        if name == "caption":
            out["caption_token_acc"] = (logits.argmax(-1) == targets)[keep].float().mean().item()
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
    held: tuple[torch.Tensor, list[str]] | None = None,
) -> dict[str, float]:
    """Both directions on held-out data: `caption_to_image_judge` = judge "all" (colour,
    shape and position right) on per_caption images for each of the 90 captions, plus per
    attribute; `image_to_caption_exact` = fraction of n_captions held-out images (seed 1)
    whose greedy caption equals the true caption word for word."""
    from mmcourse import recipes

    param = next(model.parameters())
    judge = judge or recipes.load("judge", device=param.device)
    captions = all_captions() * _validate.positive_int("per_caption", per_caption)
    images, _ = generate_images(model, captions, temperature=temperature, top_k=top_k, seed=seed)
    scores = judge.score(images.to(next(judge.parameters()).device), captions)
    codes, truth = held or held_out(n_captions)
    got = caption_images(model, codes)
    return {
        "caption_to_image_judge": scores["all"],
        **{f"caption_to_image_{a}": scores[a] for a in ("color", "shape", "position")},
        "image_to_caption_exact": sum(g == t for g, t in zip(got, truth)) / len(truth),
    }


# ---------------------------------------------------------------- shipped weights and rebuild


def make_loader(
    ratios: Mapping[str, float] | None = None,
    *,
    batch_size: int = 32,
    seed: int = 0,
    data: CourseData | None = None,
) -> MixingLoader:
    """The course's mixing loader over `course_data()` (DEFAULT_RATIOS unless given)."""
    vocab = course_vocab()
    sources = build_sources(data or course_data(seed=seed), vocab, seed=seed)
    return MixingLoader(sources, ratios or DEFAULT_RATIOS, vocab, batch_size=batch_size, seed=seed)


def positions_per_step(batches: int = 300, seed: int = 0) -> float:
    """Mean number of real (not padding) ids in a batch of the shipped run's loader (batch 32):
    the compute budget of one training step, to set beside chapter 08's."""
    loader = make_loader(seed=seed)
    batches = _validate.positive_int("batches", batches)
    return sum(int(loader.next_batch()[1].sum()) for _ in range(batches)) / batches


SWEEP_CONFIG = {"n_layer": 2, "n_head": 2, "d_model": 64, "mlp_ratio": 3}


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
    bad = [s for s in shares if isinstance(s, bool) or not isinstance(s, int | float)
           or not 0 <= s <= 1]  # fmt: skip
    if bad:
        raise ValueError(f"shares must lie in [0, 1], got {bad[0]!r}")
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


def _build(config: dict) -> GPT:
    return GPT(GPTConfig(**config))


def load_unified(path: Path | str = PATH, device: torch.device | str | None = None) -> GPT:
    """The shipped tiny Chameleon (data/unified_shapes.pt), in eval mode on `device` (default:
    the course's). Weights ship in float16 and load into float32."""
    path = Path(path)
    ckpt = checkpoints.load(path, command=COMMAND)
    state = {k: v.float() for k, v in ckpt["state_dict"].items()}
    model = checkpoints.restore(
        {**ckpt, "state_dict": state}, GPT, path=path, command=COMMAND, build=_build
    )
    return model.to(device or default_device())


def rebuild(seed: int = 0, steps: int = TRAIN_STEPS) -> str:
    """Train the shipped model from `seed` on one thread, write data/unified_shapes.pt
    (float16), return a summary with both held-out scores (`python -m mmcourse.train
    unified`)."""
    from mmcourse.env import one_thread

    with one_thread():
        loader = make_loader(seed=seed)
        result = train_unified(loader, steps=steps, seed=seed, device="cpu")
        half = {k: v.half() for k, v in result.model.state_dict().items()}
        checkpoints.save(PATH, half, config=result.model.config, command=COMMAND)
        scores = evaluate(load_unified(PATH, "cpu"), seed=seed)
    return (
        f"wrote {PATH.name} in {result.seconds:.0f} s; final loss "
        f"{sum(result.losses[-50:]) / len(result.losses[-50:]):.3f}; held-out "
        + ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
    )
