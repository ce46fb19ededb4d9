"""One vocabulary for text, images and video, and interleaved documents in it (chapter 07).

Chameleon's idea: tokenize every modality into discrete ids and give each its own block of one
shared vocabulary, so one transformer reads and writes all of them with one softmax:

    ids 0 … T−1               text (BPE ids)
    T … T+6                   specials PAD, BOS, EOS, BOI, EOI, BOV, EOV
    T+7 … T+7+K_img−1         image code c ↦ c + image_offset
    … + K_vid                 video code c ↦ c + video_offset

A document is a list of segments (text, an image's 8×8 codes, a clip's 2×8×8 codes); as ids

    [BOS] text … [BOI] 64 image ids [EOI] text … [BOV] 128 video ids [EOV] [EOS]

and decoding reads the segments back: the id blocks alone say where each segment starts and
ends, so ids → segments → ids is exact. A batch pads rows with PAD, which is never a real
token, and a loss mask says which targets count. `MixingLoader` samples examples of five kinds
(text only, caption → image, image → caption, interleaved, video) by configurable ratios.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch

from mmcourse import _validate
from mmcourse.bpe import BPE, course_bpe

__all__ = [
    "IMAGE_GRID",
    "KINDS",
    "SPECIALS",
    "TYPES",
    "VIDEO_GRID",
    "MixedBatch",
    "MixingLoader",
    "Segment",
    "Vocabulary",
    "course_vocab",
    "decode_interleaved",
    "encode_interleaved",
    "layout",
    "measure_ratios",
    "pad_batch",
    "positions",
]

SPECIALS: tuple[str, ...] = ("PAD", "BOS", "EOS", "BOI", "EOI", "BOV", "EOV")
TYPES: tuple[str, ...] = ("text", "special", "image", "video")  # token_types() index order
IMAGE_GRID = (8, 8)  # one 32×32 image → 8×8 codes (chapter 02)
VIDEO_GRID = (2, 8, 8)  # one 8×32×32 clip → 2×8×8 codes (chapter 06)
KINDS: tuple[str, ...] = ("text", "caption_image", "image_caption", "interleaved", "video")


# ------------------------------------------------------------------------------ the layout


def layout(text_size: int, image_codes: int, video_codes: int) -> dict[str, tuple[int, int]]:
    """The blocks of the joint vocabulary as half-open ranges [start, end), back to back:
    {"text": (0, T), "special": (T, T + 7), "image": (T + 7, T + 7 + K_img), "video": (…,
    … + K_vid)}. Specials come right after the text ids, so none collides with a text id."""
    sizes = {
        "text": _validate.positive_int("text_size", text_size),
        "special": len(SPECIALS),
        "image": _validate.positive_int("image_codes", image_codes),
        "video": _validate.positive_int("video_codes", video_codes),
    }
    ranges, start = {}, 0
    for name, size in sizes.items():
        ranges[name] = (start, start + size)
        start += size
    return ranges


class Vocabulary:
    """The joint vocabulary: text ids | specials | image codes | video codes.

    `vocab.BOI` etc. are the special ids, `image_offset` / `video_offset` the first image /
    video id, `size` (= len(vocab)) the number of ids. `token_type(i)` names the block of an id;
    ids outside [0, size) raise ValueError."""

    def __init__(self, text_size: int, image_codes: int = 512, video_codes: int = 1024):
        self.ranges = layout(text_size, image_codes, video_codes)
        self.text_size, self.image_codes, self.video_codes = text_size, image_codes, video_codes
        self.image_offset = self.ranges["image"][0]
        self.video_offset = self.ranges["video"][0]
        self.size = self.ranges["video"][1]
        first = self.ranges["special"][0]
        self.specials = {name: first + k for k, name in enumerate(SPECIALS)}
        for name, i in self.specials.items():
            setattr(self, name, i)

    PAD: int
    BOS: int
    EOS: int
    BOI: int
    EOI: int
    BOV: int
    EOV: int

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return (
            f"Vocabulary(text_size={self.text_size}, image_codes={self.image_codes}, "
            f"video_codes={self.video_codes})"
        )

    def config(self) -> dict[str, int]:
        return {
            "text_size": self.text_size,
            "image_codes": self.image_codes,
            "video_codes": self.video_codes,
        }

    def check_ids(self, ids: torch.Tensor, name: str = "ids") -> torch.Tensor:
        """ids must be a long tensor with every id in [0, size)."""
        ids = _validate.tensor(name, ids, dtype=torch.long)
        if ids.numel() and not bool(((ids >= 0) & (ids < self.size)).all()):
            bad = ids[(ids < 0) | (ids >= self.size)][0].item()
            raise ValueError(
                f"{name} must be ids of this vocabulary, in [0, {self.size}); got {bad}"
            )
        return ids

    def text_mask(
        self, *specials: str, size: int | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """(size,) bool, True at the text ids and at the named specials ("EOS", "BOI", …): the
        ids a text decoder may emit. size: the width of the logits (default: `self.size`)."""
        mask = torch.zeros(size or self.size, dtype=torch.bool, device=device)
        mask[: self.text_size] = True
        mask[[self.specials[name] for name in specials]] = True
        return mask

    def token_types(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (…) long → the same shape of type indices into TYPES (0 text, 1 special,
        2 image, 3 video); an id outside [0, size) raises ValueError."""
        ids = self.check_ids(ids)
        bounds = torch.tensor([end for _, end in self.ranges.values()][:-1], device=ids.device)
        return torch.bucketize(ids, bounds, right=True)

    def token_type(self, i: int) -> str:
        """The block of one id: "text", "special", "image" or "video"."""
        _validate.integer("id", i, low=None)
        for name, (start, end) in self.ranges.items():
            if start <= i < end:
                return name
        raise ValueError(f"id {i} is outside the vocabulary [0, {self.size})")

    def special_name(self, i: int) -> str:
        """The name of a special id, e.g. vocab.special_name(vocab.BOI) → "BOI"."""
        if self.token_type(i) != "special":
            raise ValueError(f"id {i} is a {self.token_type(i)} id, not a special")
        return SPECIALS[i - self.ranges["special"][0]]

    def image_ids(self, codes: torch.Tensor) -> torch.Tensor:
        """Image codes in [0, image_codes) → ids (code + image_offset), same shape."""
        return _shift(codes, "codes", self.image_codes, self.image_offset)

    def image_codes_of(self, ids: torch.Tensor) -> torch.Tensor:
        """Image ids → codes in [0, image_codes) (id − image_offset), same shape."""
        return _unshift(ids, "ids", self.ranges["image"], "image")

    def video_ids(self, codes: torch.Tensor) -> torch.Tensor:
        """Video codes in [0, video_codes) → ids (code + video_offset), same shape."""
        return _shift(codes, "codes", self.video_codes, self.video_offset)

    def video_codes_of(self, ids: torch.Tensor) -> torch.Tensor:
        """Video ids → codes in [0, video_codes) (id − video_offset), same shape."""
        return _unshift(ids, "ids", self.ranges["video"], "video")

    def table(self) -> str:
        """The layout as a text table, one row per block and per special."""
        rows = [("text (BPE)", *self.ranges["text"])]
        rows += [(name, i, i + 1) for name, i in self.specials.items()]
        rows += [("image codes", *self.ranges["image"]), ("video codes", *self.ranges["video"])]
        lines = [f"{'block':<12} {'first id':>8} {'last id':>8} {'size':>6}"]
        lines += [f"{name:<12} {lo:>8} {hi - 1:>8} {hi - lo:>6}" for name, lo, hi in rows]
        lines.append(f"{'total':<12} {'':>8} {'':>8} {self.size:>6}")
        return "\n".join(lines)


def course_vocab(bpe: BPE | None = None) -> Vocabulary:
    """The course's joint vocabulary: the course BPE's text ids (or `bpe`'s), 7 specials, the
    image tokenizer's 512 codes and the video tokenizer's 1,024 codes."""
    bpe = bpe or course_bpe()
    return Vocabulary(bpe.vocab_size, image_codes=512, video_codes=1024)


def _shift(codes: object, name: str, k: int, offset: int) -> torch.Tensor:
    codes = _validate.tensor(name, codes, dtype=torch.long)
    if codes.numel() and not bool(((codes >= 0) & (codes < k)).all()):
        raise ValueError(
            f"{name} must be codes in [0, {k}), got values in "
            f"[{codes.min().item()}, {codes.max().item()}]"
        )
    return codes + offset


def _unshift(ids: object, name: str, block: tuple[int, int], kind: str) -> torch.Tensor:
    ids = _validate.tensor(name, ids, dtype=torch.long)
    start, end = block
    if ids.numel() and not bool(((ids >= start) & (ids < end)).all()):
        raise ValueError(
            f"{name} must be {kind} ids in [{start}, {end}), got values in "
            f"[{ids.min().item()}, {ids.max().item()}]"
        )
    return ids - start


# -------------------------------------------------------------------- interleaved documents


class Segment(NamedTuple):
    """One piece of a document: kind "text" with tokens (n,) text ids, "image" with (8, 8)
    codes, or "video" with (2, 8, 8) codes (codes, not ids: no vocabulary offset)."""

    kind: str
    tokens: torch.Tensor


_GRIDS = {"image": IMAGE_GRID, "video": VIDEO_GRID}


def _check_segment(k: int, segment: object, vocab: Vocabulary) -> Segment:
    if not (isinstance(segment, tuple) and len(segment) == 2 and segment[0] in ("text", *_GRIDS)):
        raise TypeError(
            f"segments[{k}] must be a Segment(kind, tokens) with kind 'text', 'image' or "
            f"'video', got {segment!r:.80}"
        )
    kind, tokens = segment
    name = f"segments[{k}].tokens"
    if kind == "text":
        tokens = _validate.tensor(name, tokens, shape=("n",), dtype=torch.long)
        if tokens.numel() and not bool(((tokens >= 0) & (tokens < vocab.text_size)).all()):
            raise ValueError(f"{name} must be text ids in [0, {vocab.text_size})")
    else:
        tokens = _validate.tensor(name, tokens, shape=_GRIDS[kind], dtype=torch.long)
    return Segment(kind, tokens)


def encode_interleaved(segments: Sequence[Segment], vocab: Vocabulary) -> torch.Tensor:
    """A document → one id sequence (L,) long:

        [BOS] then per segment: text ids | [BOI] image codes + image_offset [EOI]
                               | [BOV] video codes + video_offset [EOV], then [EOS]

    Image and video codes are flattened in raster order (frame, row, column). The ids are on
    the device of the first segment's tokens (the CPU for a document without segments)."""
    if isinstance(segments, Segment | str | torch.Tensor):
        raise TypeError("segments must be a list of Segment, got a single item")
    checked = [_check_segment(k, segment, vocab) for k, segment in enumerate(segments)]
    device = checked[0][1].device if checked else torch.device("cpu")

    def special(token: int) -> torch.Tensor:  # (1,)
        return torch.tensor([token], device=device)

    parts = [special(vocab.BOS)]
    for kind, tokens in checked:
        tokens = tokens.to(device)
        if kind == "text":
            parts.append(tokens)
        elif kind == "image":
            ids = vocab.image_ids(tokens.flatten())  # c ↦ c + image_offset
            parts += [special(vocab.BOI), ids, special(vocab.EOI)]
        else:
            ids = vocab.video_ids(tokens.flatten())  # c ↦ c + video_offset
            parts += [special(vocab.BOV), ids, special(vocab.EOV)]
    parts.append(special(vocab.EOS))
    return torch.cat(parts)


def decode_interleaved(ids: torch.Tensor, vocab: Vocabulary) -> list[Segment]:
    """An id sequence (L,) → its segments, so that encode_interleaved(segments) gives the ids
    back. A leading BOS and a final EOS are optional (a sequence being generated has no EOS
    yet). Consecutive text ids form one text segment; BOI must be followed by 64 image ids and
    EOI, BOV by 128 video ids and EOV; image and video codes come back without their offset, in
    their grids (8, 8) and (2, 8, 8), on the device of `ids`. Anything else raises ValueError
    naming the position."""
    ids = vocab.check_ids(_validate.tensor("ids", ids, shape=("L",), dtype=torch.long))
    values = ids.tolist()  # one copy to the host: the parse below reads Python ints
    start, end = 0, len(values)
    if values and values[0] == vocab.BOS:
        start = 1
    if end > start and values[-1] == vocab.EOS:
        end -= 1
    segments: list[Segment] = []
    text: list[int] = []
    i = start
    while i < end:
        v = values[i]
        if v < vocab.text_size:
            text.append(v)
            i += 1
            continue
        if text:
            segments.append(Segment("text", torch.tensor(text, device=ids.device)))
            text = []
        if v in (vocab.BOI, vocab.BOV):
            kind = "image" if v == vocab.BOI else "video"
            grid, close = _GRIDS[kind], vocab.EOI if kind == "image" else vocab.EOV
            n = math.prod(grid)
            block = ids[i + 1 : i + 1 + n]
            if i + 1 + n >= len(values) or values[i + 1 + n] != close:
                raise ValueError(
                    f"ids[{i}] opens {'an image' if kind == 'image' else 'a video'} with "
                    f"{vocab.special_name(v)}: expected {n} {kind} ids and then "
                    f"{vocab.special_name(close)} at position {i + 1 + n}"
                )
            if kind == "image":
                codes = vocab.image_codes_of(block)  # id − image_offset
            else:
                codes = vocab.video_codes_of(block)  # id − video_offset
            segments.append(Segment(kind, codes.view(grid)))
            i += n + 2
            continue
        raise ValueError(
            f"ids[{i}] = {v} ({vocab.token_type(v)}"
            + (f" {vocab.special_name(v)}" if vocab.token_type(v) == "special" else "")
            + ") cannot appear here: outside an image or video only text ids, BOI and BOV"
        )
    if text:
        segments.append(Segment("text", torch.tensor(text, device=ids.device)))
    return segments


def positions(ids: torch.Tensor, vocab: Vocabulary) -> torch.Tensor:
    """Positions of every token of a sequence (L,) → (L, 4) long: column 0 the 1-D position in
    the sequence; columns 1–3 (frame, row, column) inside its image (frame 0) or video, −1 for
    text and special tokens. The 2-D/3-D indices are what a factorised position embedding
    would read; the course's GPT uses the 1-D position only."""
    ids = vocab.check_ids(_validate.tensor("ids", ids, shape=("L",), dtype=torch.long))
    out = torch.full((len(ids), 4), -1, dtype=torch.long, device=ids.device)
    out[:, 0] = torch.arange(len(ids), device=ids.device)
    values = ids.tolist()
    i = 0
    while i < len(values):
        if values[i] in (vocab.BOI, vocab.BOV):
            grid = IMAGE_GRID if values[i] == vocab.BOI else VIDEO_GRID
            f, h, w = (1, *grid) if len(grid) == 2 else grid
            n = f * h * w
            k = torch.arange(min(n, len(values) - i - 1), device=ids.device)
            out[i + 1 : i + 1 + len(k), 1:] = torch.stack([k // (h * w), k // w % h, k % w], 1)
            i += n + 1
        else:
            i += 1
    return out


# ---------------------------------------------------------------------- batches and masks


def pad_batch(
    seqs: Sequence[torch.Tensor], vocab: Vocabulary, length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences of different lengths → ids (B, L) long, right-padded with PAD, and the loss
    mask (B, L) bool, True at real tokens and False at padding. L = the longest sequence, or
    `length` if given. PAD is a special id, never a real token, and the mask keeps it out of
    the loss either way. The batch is on the device of the sequences."""
    if isinstance(seqs, torch.Tensor) or not seqs:
        raise TypeError("seqs must be a non-empty list of 1-D id tensors")
    seqs = [vocab.check_ids(_validate.tensor(f"seqs[{k}]", s, shape=("L",)), f"seqs[{k}]")
            for k, s in enumerate(seqs)]  # fmt: skip
    longest = max(len(s) for s in seqs)
    if length is None:
        length = longest
    elif _validate.positive_int("length", length) < longest:
        raise ValueError(f"length must be ≥ the longest sequence ({longest}), got {length}")
    device = seqs[0].device
    if any(s.device != device for s in seqs):
        found = sorted({str(s.device) for s in seqs})
        raise ValueError(f"seqs must all be on one device, got tensors on {', '.join(found)}")
    ids = torch.full((len(seqs), length), vocab.PAD, dtype=torch.long, device=device)
    mask = torch.zeros(len(seqs), length, dtype=torch.bool, device=device)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = s
        mask[row, : len(s)] = True
    return ids, mask


class MixedBatch(NamedTuple):
    ids: torch.Tensor  # (B, L) long, PAD after each row's end
    loss_mask: torch.Tensor  # (B, L) bool, True at real tokens
    kinds: list[str]  # the kind of each row


class MixingLoader:
    """Endless batches mixing example kinds by ratio.

    sources: {kind: list of id sequences (1-D long tensors)} for kinds in KINDS; ratios: {kind:
    weight ≥ 0} (normalised; kinds with weight 0 may lack a source). Every row of a batch draws
    its kind with probability ratio / sum, then a uniformly random example of that kind. Seeded:
    the same seed gives the same batches."""

    def __init__(
        self,
        sources: Mapping[str, Sequence[torch.Tensor]],
        ratios: Mapping[str, float],
        vocab: Vocabulary,
        *,
        batch_size: int = 32,
        seed: int = 0,
    ):
        unknown = set(ratios) - set(KINDS)
        if unknown:
            raise ValueError(f"ratios has unknown kinds {sorted(unknown)}; kinds are {KINDS}")
        weights = {}
        for kind, w in ratios.items():
            _validate.number(f"ratios[{kind!r}]", w, low=0)
            if w > 0 and not sources.get(kind):
                raise ValueError(f"ratios[{kind!r}] = {w} but sources has no {kind!r} examples")
            if w > 0:
                weights[kind] = float(w)
        if not weights:
            raise ValueError("ratios must give at least one kind a weight > 0")
        total = sum(weights.values())
        self.kinds = list(weights)
        self.ratios = {k: w / total for k, w in weights.items()}
        self.sources = {k: list(sources[k]) for k in self.kinds}
        self.vocab = vocab
        self.batch_size = _validate.positive_int("batch_size", batch_size)
        self.generator = torch.Generator().manual_seed(seed)
        self._probs = torch.tensor([self.ratios[k] for k in self.kinds])

    def sample_kinds(self, n: int) -> list[str]:
        """n kinds drawn independently with the loader's ratios."""
        picks = torch.multinomial(self._probs, n, replacement=True, generator=self.generator)
        return [self.kinds[i] for i in picks.tolist()]

    def next_batch(self) -> MixedBatch:
        kinds = self.sample_kinds(self.batch_size)
        seqs = []
        for kind in kinds:
            pool = self.sources[kind]
            seqs.append(pool[int(torch.randint(len(pool), (1,), generator=self.generator))])
        ids, mask = pad_batch(seqs, self.vocab)
        return MixedBatch(ids, mask, kinds)

    def __iter__(self):
        while True:
            yield self.next_batch()


def measure_ratios(loader: MixingLoader, batches: int = 100) -> dict[str, float]:
    """The fraction of rows of each kind over `batches` batches of the loader (compare with
    loader.ratios: with n rows the gap is about √(r (1 − r) / n))."""
    counts = dict.fromkeys(loader.kinds, 0)
    for _ in range(_validate.positive_int("batches", batches)):
        for kind in loader.next_batch().kinds:
            counts[kind] += 1
    n = batches * loader.batch_size
    return {k: c / n for k, c in counts.items()}
