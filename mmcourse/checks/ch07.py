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
            isinstance(got, list | tuple) and [int(i) for i in got] == bpe.merge(original, pair,
                                                                                 new_id),
            what,
            expected=describe(bpe.merge(original, pair, new_id)),
            got=describe(list(got) if isinstance(got, tuple) else got),
            hint=hint or "scan left to right; at a match append new_id and skip two ids, "
            "otherwise append ids[i] and move on one",
        )  # fmt: skip
        check.that(
            ids == original,
            f"{what}: the input list is left as it was",
            expected=describe(original),
            got=describe(ids),
            hint="build a new list instead of editing ids in place",
        )


# ------------------------------------------------------------- Exercise 7.2: vocabulary layout


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
        ranges = {k: tuple(int(x) for x in got[k]) for k in expected}
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
            "text_size (the first id after the text block), not text_size − 1 or 0",
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
    check.equal(
        call(check, ids, v),
        expected,
        f"ids at the block boundaries {edges} (text 0–9, specials 10–16, image 17–528, video "
        f"529–{v.size - 1})",
        hint="ranges are half-open: id i is in a block when start ≤ i < end (compare with <, "
        "not ≤, at the end)",
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


def _same_ids(check: Check, got: object, expected: torch.Tensor, what: str, hint: str) -> None:
    check.that(
        isinstance(got, torch.Tensor) and got.shape == expected.shape,
        f"{what}: the length of the sequence",
        expected=f"{len(expected)} ids ({describe(expected)})",
        got=describe(got),
        hint=hint,
    )
    check.equal(got, expected, what, hint=hint)


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
        hint="codes are not ids: add vocab.image_offset to image codes and vocab.video_offset "
        "to video codes, or they collide with text and special ids",
    )
    _same_ids(
        check,
        got,
        expected,
        "text, [BOI] image [EOI], text, [BOV] video [EOV], text",
        hint="image codes + image_offset between BOI and EOI, video codes + video_offset "
        "between BOV and EOV (not the image offset), grids flattened in raster order "
        "(.flatten(): frame, row, column)",
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


def _segments_equal(got: object, expected: list[Segment]) -> tuple[bool, str]:
    if not isinstance(got, list | tuple):
        return False, describe(got)
    kinds = [s[0] if isinstance(s, tuple) and len(s) == 2 else "?" for s in got]
    if kinds != [s.kind for s in expected]:
        return False, f"segments of kinds {kinds}"
    for k, (segment, ref) in enumerate(zip(got, expected)):
        tokens = segment[1]
        if not isinstance(tokens, torch.Tensor) or tokens.shape != ref.tokens.shape:
            return False, f"segment {k} ({ref.kind}) holds {describe(tokens)}"
        if not torch.equal(tokens.to(ref.tokens.device).long(), ref.tokens):
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
    kinds = [s[0] for s in got] if isinstance(got, list | tuple) else []
    check.that(
        kinds.count("video") == 1,
        "the video segment survives decoding",
        expected=f"segments {[s.kind for s in doc]}",
        got=f"segments {kinds}" if isinstance(got, list | tuple) else describe(got),
        hint="video segments lost on decode: handle BOV … EOV like BOI … EOI (128 video ids, "
        "then EOV), instead of skipping them or reading them as text",
    )
    image = next((s for s in got if s[0] == "image"), None)
    codes = image[1] if image is not None else None
    check.that(
        isinstance(codes, torch.Tensor)
        and codes.numel() == 64
        and torch.equal(codes.to(doc[1].tokens.device).long().flatten(), doc[1].tokens.flatten()),
        "image tokens come back as the image's codes in [0, 512)",
        expected=f"codes in [0, {v.image_codes}) that the image tokenizer can decode",
        got=describe(codes) if not isinstance(codes, torch.Tensor)
        else f"values in [{codes.min().item()}, {codes.max().item()}]",
        hint=f"image tokens decoded without removing the offset: subtract vocab.image_offset "
        f"({v.image_offset}) from image ids (and vocab.video_offset from video ids)",
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


def _replaced(ids: torch.Tensor, position: int, value: int) -> torch.Tensor:
    out = ids.clone()
    out[position] = value
    return out


# ---------------------------------------------------------- Exercise 7.6: padding and the mask


@exercise("7.6", "pad a batch with a loss mask", references=(vocab.pad_batch,))
def check_pad_batch(check: Check) -> None:
    """Exercise 7.6: pad_batch(seqs, vocab) -> (ids (B, L) long right-padded with PAD, loss
    mask (B, L) bool, True at real tokens)."""
    v = _SMALL
    rows = ([v.BOS, 1, 2, 3, v.EOS], [v.BOS, 4, v.EOS], [v.BOS, 0, 0, v.EOS])
    seqs = [torch.tensor(row, device=check.device) for row in rows]  # (5,), (3,), (4,)
    ids, mask = vocab.pad_batch(seqs, v)
    got = call(check, seqs, v)
    check.that(
        isinstance(got, tuple) and len(got) == 2,
        "returns (ids, loss_mask)",
        expected="a tuple of two tensors",
        got=describe(got),
        hint="return ids, mask",
    )
    got_ids, got_mask = got
    check.that(
        isinstance(got_ids, torch.Tensor) and got_ids.shape == ids.shape,
        "3 rows padded to the longest (5)",
        expected=f"ids of shape {tuple(ids.shape)}",
        got=describe(got_ids),
        hint="L = the longest sequence; pad the shorter rows on the right",
    )
    n_pad = (got_ids == v.PAD).sum(1).tolist()
    check.that(
        n_pad == (~mask).sum(1).tolist(),
        "padding uses the PAD id",
        expected=f"PAD ({v.PAD}) in every padded position: {(~mask).sum(1).tolist()} per row",
        got=f"{n_pad} PAD ids per row; padded with {got_ids[~mask].unique().tolist()}",
        hint="padding with a real token id (0 is a text id, EOS a real end) teaches the model "
        "to predict it; pad with vocab.PAD, an id no document contains",
    )
    check.equal(got_ids, ids, "the ids: each row, then PAD", hint="right padding: row[:n] = seq")
    check.that(
        isinstance(got_mask, torch.Tensor) and got_mask.dtype == torch.bool,
        "the loss mask is a bool tensor",
        expected="dtype torch.bool",
        got=describe(got_mask),
        hint="torch.zeros(B, L, dtype=torch.bool), then True over each row's real tokens",
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
    got = call(check, seqs, w)
    check.that(
        isinstance(got, tuple) and len(got) == 2 and isinstance(got[0], torch.Tensor),
        "another vocabulary: returns (ids, loss_mask)",
        expected="a tuple of two tensors",
        got=describe(got),
    )
    check.equal(
        got[0],
        ids,
        f"another vocabulary (PAD = {w.PAD}): the ids, each row then PAD",
        hint="pad with the PAD id of the vocabulary passed in, V.PAD",
    )
