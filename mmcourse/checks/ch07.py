"""Checkers of chapter 07 (a unified vocabulary): the BPE merge step, the vocabulary layout,
token types, encoding and decoding interleaved documents, and padding with a loss mask.

Every checker compares the candidate with `mmcourse.bpe` / `mmcourse.vocab` on fixed inputs
built so that each classic bug of unified sequences changes the result: overlapping pairs
("a a a"), ids exactly at the block boundaries, documents holding text, an image and a video,
and rows of different lengths.
"""

from __future__ import annotations

import torch

from mmcourse import bpe, vocab
from mmcourse.checks._contract import call, step_budget
from mmcourse.checks._core import Check, describe, exercise, seeded
from mmcourse.vocab import Segment, Vocabulary

_SMALL = Vocabulary(text_size=10, image_codes=512, video_codes=1024)  # text 0–9, specials 10–16
# Steps of Python a candidate may take (the references take a small fraction): a scanning loop
# that stops advancing fails with a message instead of hanging, or filling memory until the
# kernel dies.
_MERGE_STEPS, _DECODE_STEPS = 20_000, 400_000
# Another layout, so that ids hard-coded from _SMALL show: text 0–29, specials 30–36, …
_OTHER = Vocabulary(text_size=30, image_codes=600, video_codes=700)


def _document(g: torch.Generator, v: Vocabulary, device: torch.device) -> list[Segment]:
    """Text, an image, text, a video: every kind of segment, text between and at the end,
    drawn on the CPU generator `g` and placed on `device`."""
    draws = [
        ("text", torch.randint(v.text_size, (4,), generator=g)),
        ("image", torch.randint(v.image_codes, vocab.IMAGE_GRID, generator=g)),
        ("text", torch.randint(v.text_size, (3,), generator=g)),
        ("video", torch.randint(v.video_codes, vocab.VIDEO_GRID, generator=g)),
        ("text", torch.randint(v.text_size, (2,), generator=g)),
    ]
    return [Segment(kind, tokens.to(device)) for kind, tokens in draws]


# ------------------------------------------------------------------ Exercise 7.1: BPE merge


_SCAN_HINT = (
    "scan left to right; at a match append new_id and skip two ids, otherwise append ids[i] and "
    "move on one"
)
_MERGE_HINT = "return a list of ids, plain Python ints (int(x) around a tensor element)"


def _ids(got: object) -> list[int] | None:
    """`got` as a list of ids when it is a list or tuple of ints, else None."""
    if isinstance(got, list | tuple) and all(type(i) is int for i in got):
        return list(got)
    return None


@exercise("7.1", "one BPE merge", references=(bpe.merge,))
def check_merge(check: Check) -> None:
    """Exercise 7.1: merge(ids, pair, new_id) -> list of ids with every occurrence of pair,
    left to right and non-overlapping, replaced by new_id."""
    cases = [
        ([1, 2, 3, 1, 2, 4], (1, 2), 9, "both occurrences of (1, 2) in [1, 2, 3, 1, 2, 4]", ""),
        ([3, 1, 2], (1, 2), 9, "a pair at the very end of [3, 1, 2]",
         "look at position i and i + 1 while i + 1 < len(ids), up to the last pair"),
        ([2, 1, 2, 1], (1, 2), 9, "order matters: (1, 2) inside [2, 1, 2, 1] only once",
         "the pair is ordered: ids[i] == pair[0] and ids[i + 1] == pair[1]"),
        ([5, 5, 5], (5, 5), 9, "overlapping pairs: (5, 5) in [5, 5, 5] merges once, at the left",
         "after a merge, jump past both merged ids (i += 2): one id cannot take part in two "
         "merges, so [5, 5, 5] → [9, 5]"),
        ([5, 5, 5, 5], (5, 5), 9, "(5, 5) in [5, 5, 5, 5] merges twice", ""),
        ([4, 6, 7], (1, 2), 9, "no occurrence: the ids unchanged", ""),
        ([], (1, 2), 9, "an empty list stays empty", ""),
    ]  # fmt: skip
    for ids, pair, new_id, what, hint in cases:
        original = list(ids)
        with step_budget(check, _MERGE_STEPS):
            got = check.call(ids, pair, new_id)
        check.that(
            _ids(got) == bpe.merge(original, pair, new_id),
            what,
            expected=describe(bpe.merge(original, pair, new_id)),
            got=describe(list(got) if isinstance(got, tuple) else got),
            hint=_MERGE_HINT if _ids(got) is None else hint or _SCAN_HINT,
        )
        check.that(
            ids == original,
            f"{what}: the input list is left as it was",
            expected=describe(original),
            got=describe(ids),
            hint="build a new list instead of editing ids in place",
        )


# ------------------------------------------------------------- Exercise 7.2: vocabulary layout


def _int_pair(value: object) -> bool:
    return (
        isinstance(value, tuple | list) and len(value) == 2 and all(type(x) is int for x in value)
    )


@exercise("7.2", "the vocabulary layout", references=(vocab.layout,))
def check_layout(check: Check) -> None:
    """Exercise 7.2: layout(text_size, image_codes, video_codes) -> {"text": (0, T), "special":
    (T, T + 7), "image": (…), "video": (…)}, half-open ranges back to back."""
    for sizes in [(97, 512, 1024), (10, 4, 6), (1, 1, 1)]:
        got = check.call(*sizes)
        expected = vocab.layout(*sizes)
        check.that(
            isinstance(got, dict) and list(got) == list(expected),
            f"layout{sizes} names the four blocks in order",
            expected=f"a dict with keys {list(expected)}",
            got=describe(got),
            hint="return {'text': (start, end), 'special': …, 'image': …, 'video': …}",
        )
        check.that(
            all(_int_pair(got[k]) for k in expected),
            f"layout{sizes}: each block is a (start, end) pair of ints",
            expected="(start, end) pairs of ints, e.g. 'text': (0, text_size)",
            got=", ".join(f"{k!r}: {describe(got[k])}" for k in expected),
            hint="a half-open range [start, end) is the pair (start, end) of ints, not a "
            "range(...), a list of every id, or one number",
        )
        ranges = {k: tuple(got[k]) for k in expected}
        text, special = ranges["text"], ranges["special"]
        check.that(
            text[0] == 0 and text[1] == sizes[0],
            f"layout{sizes}: text ids are 0 … {sizes[0] - 1}",
            expected=f"text {(0, sizes[0])}",
            got=f"text {text}",
            hint="text comes first and keeps its BPE ids: (0, text_size), end excluded",
        )
        check.that(
            special[0] >= text[1] and special[1] - special[0] == len(vocab.SPECIALS),
            f"layout{sizes}: the 7 specials do not collide with text ids",
            expected=f"special {expected['special']}",
            got=f"special {special}",
            hint="special ids collide with text ids: a special that shares an id with a text "
            "token makes e.g. BOI indistinguishable from a word. Start the specials at "
            "text_size (the first id after the text block), not text_size − 1 or 0"
            if special[0] < text[1]
            else f"the block holds the {len(vocab.SPECIALS)} specials of vocab.SPECIALS: "
            f"(T, T + {len(vocab.SPECIALS)})",
        )
        check.that(
            ranges == expected,
            f"layout{sizes}: image and video blocks follow, each as large as its codebook",
            expected=describe(expected),
            got=describe(ranges),
            hint="each block starts where the previous one ends: image (T + 7, T + 7 + K_img), "
            "video (T + 7 + K_img, … + K_vid)",
        )


# ------------------------------------------------------------------ Exercise 7.3: token types


@exercise("7.3", "token types", references=(Vocabulary.token_types,))
def check_token_types(check: Check) -> None:
    """Exercise 7.3: token_types(ids, vocab) -> tensor of the same shape with 0 text,
    1 special, 2 image, 3 video; ids outside [0, vocab.size) raise ValueError."""
    v, dev = _SMALL, check.device
    edges = [0, 9, 10, 16, 17, 17 + 511, 17 + 512, v.size - 1]  # both sides of each boundary
    ids = torch.tensor(edges, device=dev)
    expected = v.token_types(ids)
    ends = torch.tensor([v.ranges[name][1] for name in vocab.TYPES], device=dev)
    check.equal(
        call(check, ids, v),
        expected,
        f"ids at the block boundaries {edges} (text 0–9, specials 10–16, image 17–528, video "
        f"529–{v.size - 1})",
        hint="ranges are half-open: id i is in a block when start ≤ i < end (compare with <, "
        "not ≤, at the end)",
        alternatives={
            "each block's end id counted in that block: ranges are half-open, id i is in a "
            "block when start ≤ i < end (compare with <, not ≤, at the end)": torch.where(
                torch.isin(ids, ends), expected - 1, expected
            )
        },
    )
    g = seeded(73)
    grid = torch.randint(v.size, (3, 20), generator=g).to(dev)
    expected = v.token_types(grid)
    check.equal(
        call(check, grid, v),
        expected,
        "a (3, 20) batch of random ids keeps its shape",
        hint="work element-wise on the whole tensor (e.g. torch.bucketize or comparisons); "
        "return long type indices, not strings",
    )
    w = _OTHER
    edges = [0, 29, 30, 36, 37, 636, 637, w.size - 1]
    ids = torch.tensor(edges, device=dev)
    expected = w.token_types(ids)
    check.equal(
        call(check, ids, w),
        expected,
        f"another vocabulary (text 0–29, specials 30–36, image 37–636, video 637–"
        f"{w.size - 1}): the ids {edges}",
        hint="read the block boundaries from the vocabulary passed in (V.ranges), not from "
        "numbers of one particular layout",
    )
    for bad in (-1, v.size):
        check.raises(
            ValueError,
            f"id {bad}, outside [0, {v.size}), raises ValueError",
            torch.tensor([3, bad], device=dev),
            v,
            hint="an id outside the vocabulary is a bug upstream: raise a ValueError saying "
            "which id and the valid range, instead of calling it video (or text)",
        )


# ------------------------------------------------------------ Exercise 7.4: encode a document


def _same_ids(
    check: Check,
    got: object,
    expected: torch.Tensor,
    what: str,
    hint: str,
    alternatives: dict[str, torch.Tensor] | None = None,
) -> None:
    check.that(
        isinstance(got, torch.Tensor) and got.shape == expected.shape,
        f"{what}: the length of the sequence",
        expected=f"{len(expected)} ids ({describe(expected)})",
        got=describe(got),
        hint=hint,
    )
    check.equal(got, expected, what, hint=hint, alternatives=alternatives)


def _encode_mistakes(doc: list[Segment], v: Vocabulary) -> dict[str, torch.Tensor]:
    """The ids (L,) of `doc` with video codes in the image block, or grids read column-major."""
    ids = vocab.encode_interleaved(doc, v)
    video = v.token_types(ids) == 3
    transposed = [Segment(k, t if k == "text" else t.transpose(-1, -2)) for k, t in doc]
    return {
        "video codes shifted by the image offset: add vocab.video_offset (not image_offset) "
        "to video codes": torch.where(video, ids - v.video_offset + v.image_offset, ids),
        "the grids flattened column by column: flatten them in raster order (.flatten(): "
        "frame, row, column), no transpose": vocab.encode_interleaved(transposed, v),
    }


@exercise("7.4", "encode an interleaved document", references=(vocab.encode_interleaved,))
def check_encode_interleaved(check: Check) -> None:
    """Exercise 7.4: encode_interleaved(segments, vocab) -> ids (L,) long: [BOS], text ids,
    [BOI] image ids [EOI], [BOV] video ids [EOV], [EOS]."""
    v, g = _SMALL, seeded(74)
    doc = _document(g, v, check.device)
    expected = vocab.encode_interleaved(doc, v)
    got = call(check, doc, v)
    check.that(
        isinstance(got, torch.Tensor) and got.dim() == 1 and got.dtype == torch.long,
        "returns one 1-D long tensor",
        expected="a (L,) torch.long tensor",
        got=describe(got),
        hint="torch.cat the pieces; build the special ids with torch.tensor([...])",
    )
    check.that(
        len(got) > 1 and got[0].item() == v.BOS and got[-1].item() == v.EOS,
        "the sequence starts with BOS and ends with EOS",
        expected=f"BOS ({v.BOS}) first and EOS ({v.EOS}) last",
        got=f"{got[0].item()} first and {got[-1].item()} last" if len(got) else "empty",
        hint="wrap the document: [BOS] … [EOS]",
    )
    types = v.token_types(got.cpu().clamp(0, v.size - 1))
    image_like = int(((types == 2) | (types == 3)).sum())
    check.that(
        image_like == 64 + 128,
        "the 64 image and 128 video codes become image / video ids",
        expected="64 + 128 = 192 ids in the image and video blocks",
        got=f"{image_like}",
        hint="a common cause is codes used as ids: add vocab.image_offset to image codes and "
        "vocab.video_offset to video codes, or they collide with text and special ids",
    )
    _same_ids(
        check,
        got,
        expected,
        "text, [BOI] image [EOI], text, [BOV] video [EOV], text",
        hint="image codes + image_offset between BOI and EOI, video codes + video_offset "
        "between BOV and EOV (not the image offset), grids flattened in raster order "
        "(.flatten(): frame, row, column)",
        alternatives=_encode_mistakes(doc, v),
    )
    text_only = [Segment("text", torch.tensor([1, 2, 3], device=check.device))]
    _same_ids(
        check,
        call(check, text_only, v),
        vocab.encode_interleaved(text_only, v),
        "a text-only document is [BOS] text [EOS]",
        hint="text ids go in unchanged",
    )
    other = _document(g, _OTHER, check.device)
    _same_ids(
        check,
        call(check, other, _OTHER),
        vocab.encode_interleaved(other, _OTHER),
        "the same kind of document in another vocabulary (text 0–29, specials 30–36, …)",
        hint="take every special id and offset from the vocabulary passed in (V.BOS, "
        "V.image_offset, …), not from numbers of one particular layout",
    )


# ------------------------------------------------------------ Exercise 7.5: decode a document


_SEGMENTS = "a list of Segment(kind, tokens), tokens long tensors"


def _not_segments(got: object) -> str:
    """'' when `got` is a list (or tuple) of (kind, tokens) pairs with long tensors for tokens
    (a Segment is such a pair), else what it is instead."""
    if not isinstance(got, list | tuple):
        return describe(got)
    for k, item in enumerate(got):
        if isinstance(item, dict):
            return f"item {k} is a dict with keys {list(item)}"
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            return f"item {k} is {_outline(item)}"
        tokens = item[1]
        if not (isinstance(tokens, torch.Tensor) and tokens.dtype == torch.long):
            return f"item {k} ({item[0]}) holds {describe(tokens)}"
    return ""


def _outline(item: object) -> str:
    """A list or tuple by its length, anything else as `describe` puts it."""
    if isinstance(item, list | tuple):
        return f"a {type(item).__name__} of {len(item)} values"
    return describe(item)


def _segments_hint(got: object) -> str:
    if isinstance(got, list | tuple) and any(isinstance(item, dict) for item in got):
        return (
            "a dict {'kind': …, 'tokens': …} is not a Segment: build each segment as "
            "vocab.Segment(kind, tokens), a named pair that unpacks as kind, tokens"
        )
    return (
        "return a list of vocab.Segment(kind, tokens), one per segment, its tokens long "
        "tensors: text ids (n,), image codes (8, 8), video codes (2, 8, 8)"
    )


def _segments_equal(got: object, expected: list[Segment]) -> tuple[bool, str]:
    if problem := _not_segments(got):
        return False, problem
    kinds = [s[0] for s in got]
    if kinds != [s.kind for s in expected]:
        return False, f"segments of kinds {kinds}"
    for k, (segment, ref) in enumerate(zip(got, expected)):
        tokens = segment[1]
        if tokens.shape != ref.tokens.shape:
            return False, f"segment {k} ({ref.kind}) holds {describe(tokens)}"
        if not torch.equal(tokens.to(ref.tokens.device), ref.tokens):
            return False, f"segment {k} ({ref.kind}) holds other values: {describe(tokens)}"
    return True, "the same segments"


@exercise("7.5", "decode an interleaved document", references=(vocab.decode_interleaved,))
def check_decode_interleaved(check: Check) -> None:
    """Exercise 7.5: decode_interleaved(ids (L,), vocab) -> list of Segment(kind, tokens): text
    ids (n,), image codes (8, 8), video codes (2, 8, 8), offsets removed."""
    with step_budget(check, _DECODE_STEPS):  # a loop that stops advancing must not hang
        _check_decode(check)


def _check_decode(check: Check) -> None:
    v, g = _SMALL, seeded(75)
    doc = _document(g, v, check.device)
    ids = vocab.encode_interleaved(doc, v)
    got = call(check, ids, v)
    problem = _not_segments(got)
    check.that(
        not problem,
        "returns the document's segments",
        expected=_SEGMENTS,
        got=problem,
        hint=_segments_hint(got),
    )
    kinds = [s[0] for s in got]
    check.that(
        kinds.count("video") == 1,
        "the video segment survives decoding",
        expected=f"segments {[s.kind for s in doc]}",
        got=f"segments {kinds}",
        hint="video segments lost on decode: handle BOV … EOV like BOI … EOI (128 video ids, "
        "then EOV), instead of skipping them or reading them as text"
        if "video" not in kinds
        else "one clip, one video segment: BOV, 128 video ids, EOV",
    )
    image = next((s[1] for s in got if s[0] == "image"), None)
    codes = doc[1].tokens.flatten()  # (64,)
    flat = image.to(codes.device).flatten() if image is not None else codes.new_empty(0)
    check.that(
        flat.shape == codes.shape and torch.equal(flat, codes),
        "image tokens come back as the image's codes in [0, 512)",
        expected=f"codes in [0, {v.image_codes}) that the image tokenizer can decode",
        got=describe(image) if flat.shape != codes.shape
        else f"values in [{flat.min().item()}, {flat.max().item()}]",
        hint=_image_codes_hint(flat, codes, v),
    )  # fmt: skip
    ok, what = _segments_equal(got, doc)
    check.that(
        ok,
        "text, image, text, video, text come back exactly",
        expected=f"{len(doc)} segments with grids (8, 8) and (2, 8, 8)",
        got=what,
        hint="drop BOS and EOS, collect consecutive text ids into one text segment, and reshape "
        "image codes to (8, 8), video codes to (2, 8, 8)",
    )
    ok, what = _segments_equal(call(check, ids[1:-1], v), doc)
    check.that(
        ok,
        "the same document without BOS and EOS (a sequence still being generated)",
        expected="the same segments",
        got=what,
        hint="BOS at the start and EOS at the end are optional",
    )
    other = _document(g, _OTHER, check.device)
    ok, what = _segments_equal(call(check, vocab.encode_interleaved(other, _OTHER), _OTHER), other)
    check.that(
        ok,
        "the same kind of document in another vocabulary (text 0–29, specials 30–36, …)",
        expected="the same segments",
        got=what,
        hint="take every special id and offset from the vocabulary passed in (V.BOI, "
        "V.image_offset, …), not from numbers of one particular layout",
    )
    # ids: BOS 0, text 1–4, BOI 5, image 6–69, EOI 70, text 71–73, BOV 74, video 75–202,
    # EOV 203, text 204–205, EOS 206
    malformed = [
        (_replaced(ids, 2, v.EOI), "a stray special id: EOI among the text ids"),
        (_replaced(ids, 72, v.PAD), "a stray special id: PAD among the text ids"),
        (_replaced(ids, 2, v.image_offset + 3), "an image id among the text ids"),
        (_replaced(ids, 70, 3), "an image without its end marker (a text id where EOI belongs)"),
        (_replaced(ids, 70, v.EOV), "an image closed by EOV instead of EOI"),
        (_replaced(ids, 30, v.video_offset + 5), "an image holding a video id"),
        (_replaced(ids, 100, 4), "a clip holding a text id"),
        (torch.cat([ids[:10], ids.new_tensor([v.EOS])]), "an image cut short (BOI, then "
         "fewer than 64 image ids)"),
        (torch.cat([ids[:150], ids.new_tensor([v.EOS])]), "a clip cut short (BOV, then "
         "fewer than 128 video ids)"),
    ]  # fmt: skip
    for bad, what in malformed:
        check.raises(
            ValueError,
            f"{what} raises ValueError",
            bad,
            v,
            hint="after BOI expect exactly 64 image ids and then EOI, after BOV 128 video ids "
            "and then EOV; outside them only text ids, BOI and BOV (BOS first and EOS last "
            "are optional); anything else is a malformed sequence: raise ValueError",
        )


def _image_codes_hint(got: torch.Tensor, codes: torch.Tensor, v: Vocabulary) -> str:
    """Say so when the image came back as ids, its offset still on."""
    fix = (
        f"subtract vocab.image_offset ({v.image_offset}) from image ids (and "
        "vocab.video_offset from video ids)"
    )
    if got.shape == codes.shape and torch.equal(got, codes + v.image_offset):
        return f"these are the image's ids, decoded without removing the offset: {fix}"
    return f"a common cause is image ids decoded without removing the offset: {fix}"


def _replaced(ids: torch.Tensor, position: int, value: int) -> torch.Tensor:
    out = ids.clone()
    out[position] = value
    return out


# ---------------------------------------------------------- Exercise 7.6: padding and the mask


def _padding_hint(used: list[int], v: Vocabulary) -> str:
    """What padding with the ids `used` does, when they are real tokens."""
    real = [i for i in used if 0 <= i < v.size and i != v.PAD]
    fix = "pad with vocab.PAD, an id no document contains"
    if real:
        return f"padding with real token ids ({real}) teaches the model to predict them: {fix}"
    return fix


@exercise("7.6", "pad a batch with a loss mask", references=(vocab.pad_batch,))
def check_pad_batch(check: Check) -> None:
    """Exercise 7.6: pad_batch(seqs, vocab) -> (ids (B, L) long right-padded with PAD, loss
    mask (B, L) bool, True at real tokens)."""
    v = _SMALL
    rows = ([v.BOS, 1, 2, 3, v.EOS], [v.BOS, 4, v.EOS], [v.BOS, 0, 0, v.EOS])
    seqs = [torch.tensor(row, device=check.device) for row in rows]  # (5,), (3,), (4,)
    ids, mask = vocab.pad_batch(seqs, v)
    got_ids, got_mask = check.parts(call(check, seqs, v), ("ids", "loss_mask"))
    check.tensor(
        got_ids,
        "3 rows padded to the longest (5)",
        shape=ids.shape,
        hint="L = the longest sequence; pad the shorter rows on the right",
    )
    check.tensor(
        got_ids,
        "the ids are long, like the sequences",
        dtype=torch.long,
        dtype_hint="start from torch.full((B, L), vocab.PAD, dtype=torch.long) and copy each row "
        "in",
    )
    n_pad = (got_ids == v.PAD).sum(1).tolist()
    used = got_ids[~mask].unique().tolist()
    check.that(
        n_pad == (~mask).sum(1).tolist(),
        "padding uses the PAD id",
        expected=f"PAD ({v.PAD}) in every padded position: {(~mask).sum(1).tolist()} per row",
        got=f"{n_pad} PAD ids per row; padded with {used}",
        hint=_padding_hint(used, v),
    )
    check.equal(got_ids, ids, "the ids: each row, then PAD", hint="right padding: row[:n] = seq")
    mask_hint = "torch.zeros(B, L, dtype=torch.bool), then True over each row's real tokens"
    check.tensor(
        got_mask,
        "the loss mask is a bool tensor like the ids",
        shape=ids.shape,
        dtype=torch.bool,
        hint=mask_hint,
        dtype_hint=mask_hint,
    )
    check.that(
        not bool(got_mask[~mask].any()),
        "the loss mask is False at every padded position",
        expected="no padded position in the loss",
        got=f"{int(got_mask[~mask].sum())} padded positions with mask True",
        hint="without a loss mask the padding is scored as if it were text: mask it out",
    )
    check.equal(got_mask, mask, "the loss mask is True at every real token")
    w = _OTHER
    rows = ([w.BOS, 1, 2, w.EOS], [w.BOS, 28, 29, 5, 6, 7, w.EOS])
    seqs = [torch.tensor(row, device=check.device) for row in rows]
    ids, mask = vocab.pad_batch(seqs, w)
    got_ids, _ = check.parts(call(check, seqs, w), ("ids", "loss_mask"))
    check.equal(
        got_ids,
        ids,
        f"another vocabulary (PAD = {w.PAD}): the ids, each row then PAD",
        hint="pad with the PAD id of the vocabulary passed in, V.PAD",
    )
