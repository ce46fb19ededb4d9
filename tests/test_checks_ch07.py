"""Chapter 07 checkers: the references pass; each known-wrong version fails with its message."""

from __future__ import annotations

import pytest
import torch
from checker_cases import WRONG_KINDS, case_id, passes, rejects, rejects_wrong_kind, stub

from mmcourse import bpe, vocab
from mmcourse.checks import ch07
from mmcourse.vocab import SPECIALS, Segment

pytestmark = pytest.mark.usefixtures("one_thread")


# --- Exercise 7.1: the merge step --------------------------------------------------------------


def _merge(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if tuple(ids[i : i + 2]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _merge_overlapping(ids, pair, new_id):
    out = []
    for i, x in enumerate(ids):  # BUG: every position whose pair matches, overlaps included
        if i + 1 < len(ids) and (x, ids[i + 1]) == pair:
            out.append(new_id)
        elif not (i > 0 and (ids[i - 1], x) == pair):
            out.append(x)
    return out


def _merge_unordered(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and {ids[i], ids[i + 1]} == set(pair):  # BUG: (2, 1) matches too
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _merge_tensor_ids(ids, pair, new_id):
    return [torch.tensor(i) for i in _merge(ids, pair, new_id)]  # BUG: a list of tensors


def _merge_misses_last(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids) - 2:  # BUG: never looks at the last pair
        if (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out + list(ids[i:])


def _merge_in_place(ids, pair, new_id):
    i = 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == pair:
            ids[i : i + 2] = [new_id]  # BUG: edits the caller's list
        i += 1
    return ids


def _merge_never_advances(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])  # BUG: i += 1 forgotten: runs (and appends) forever
    return out


def test_merge_references_pass(capsys):
    passes(ch07.check_merge, bpe.merge, capsys, "7.1")
    passes(ch07.check_merge, _merge, capsys, "7.1")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_merge_overlapping, r"overlapping pairs(.|\n)*jump past both"),
        (_merge_unordered, r"order matters(.|\n)*pair is ordered"),
        (_merge_misses_last, r"pair at the very end"),
        (
            _merge_tensor_ids,
            r"failed check 1, (.|\n)*expected: \[9, 3, 9, 4\]\n  got:      \[tensor",
        ),
        (_merge_in_place, r"input list is left as it was(.|\n)*new list"),
        (_merge_never_advances, r"runs on \(\[1, 2, 3(.|\n)*within 20,000 steps(.|\n)*never ends"),
        (stub, r"Exercise 7\.1 \(one BPE merge\): not implemented yet"),
    ],
    ids=case_id,
)
def test_merge_rejects(wrong, message):
    rejects(ch07.check_merge, wrong, message)


# --- Exercise 7.2: the layout ------------------------------------------------------------------


def _layout(text_size, image_codes, video_codes):
    special = text_size + len(SPECIALS)
    return {
        "text": (0, text_size),
        "special": (text_size, special),
        "image": (special, special + image_codes),
        "video": (special + image_codes, special + image_codes + video_codes),
    }


def _layout_off_by_one(text_size, image_codes, video_codes):
    special = text_size - 1  # BUG: the first special is the last text id
    return {
        "text": (0, text_size),
        "special": (special, special + 7),
        "image": (special + 7, special + 7 + image_codes),
        "video": (special + 7 + image_codes, special + 7 + image_codes + video_codes),
    }


def _layout_specials_at_zero(text_size, image_codes, video_codes):
    start = text_size  # BUG: specials numbered 0 … 6, on top of the text ids
    return {
        "text": (0, text_size),
        "special": (0, 7),
        "image": (start, start + image_codes),
        "video": (start + image_codes, start + image_codes + video_codes),
    }


def _layout_video_on_image(text_size, image_codes, video_codes):
    special = text_size + 7
    return {
        "text": (0, text_size),
        "special": (text_size, special),
        "image": (special, special + image_codes),
        "video": (special, special + video_codes),  # BUG: shares the image offset
    }


def _layout_ranges(text_size, image_codes, video_codes):
    return {k: range(*v) for k, v in _layout(text_size, image_codes, video_codes).items()}  # BUG


def test_layout_references_pass(capsys):
    passes(ch07.check_layout, vocab.layout, capsys, "7.2")
    passes(ch07.check_layout, _layout, capsys, "7.2")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_layout_off_by_one, r"specials do not collide(.|\n)*special ids collide with text ids"),
        (_layout_specials_at_zero, r"special ids collide with text ids"),
        (_layout_video_on_image, r"image and video blocks follow(.|\n)*each block starts"),
        (
            _layout_ranges,
            r"failed check 2, \"layout\(97, 512, 1024\): each block is a \(start, end\) pair of "
            r"ints(.|\n)*got:      'text': range\(0, 97\)",
        ),
        (stub, r"Exercise 7\.2 \(the vocabulary layout\): not implemented yet"),
    ],
    ids=case_id,
)
def test_layout_rejects(wrong, message):
    rejects(ch07.check_layout, wrong, message)


# --- Exercise 7.3: token types -----------------------------------------------------------------


def _types(ids, v):
    if bool(((ids < 0) | (ids >= v.size)).any()):
        raise ValueError("id out of range")
    out = torch.zeros_like(ids)
    for k, name in enumerate(vocab.TYPES):
        start, end = v.ranges[name]
        out[(ids >= start) & (ids < end)] = k
    return out


def _types_inclusive(ids, v):
    if bool(((ids < 0) | (ids >= v.size)).any()):
        raise ValueError("id out of range")
    out = torch.zeros_like(ids)
    for k, name in reversed(list(enumerate(vocab.TYPES))):
        start, end = v.ranges[name]
        out[(ids >= start) & (ids <= end)] = k  # BUG: the end belongs to the next block
    return out


def _types_no_error(ids, v):
    bounds = torch.tensor([v.ranges[n][1] for n in vocab.TYPES[:-1]], device=ids.device)
    return torch.bucketize(ids, bounds, right=True)  # BUG: anything ≥ size is "video"


def _types_flat(ids, v):
    return v.token_types(ids).flatten()  # BUG: loses the shape


def _types_hard_coded(ids, v):
    if bool(((ids < 0) | (ids >= v.size)).any()):
        raise ValueError("id out of range")
    ends = torch.tensor([10, 17, 529], device=ids.device)  # BUG: one layout's numbers
    return torch.bucketize(ids, ends, right=True)


def test_token_types_references_pass(capsys):
    passes(ch07.check_token_types, lambda ids, v: v.token_types(ids), capsys, "7.3")
    passes(ch07.check_token_types, _types, capsys, "7.3")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (
            _types_inclusive,
            r"block boundaries(.|\n)*looks like: each block's end id(.|\n)*half-open",
        ),
        (_types_no_error, r"outside \[0, \d+\), raises ValueError(.|\n)*no error"),
        (_types_flat, r"keeps its shape(.|\n)*shape \(3, 20\)"),
        (_types_hard_coded, r"another vocabulary(.|\n)*values differ(.|\n)*V\.ranges"),
        (stub, r"Exercise 7\.3 \(token types\): not implemented yet"),
    ],
    ids=case_id,
)
def test_token_types_rejects(wrong, message):
    rejects(ch07.check_token_types, wrong, message)


# --- Exercise 7.4: encode ----------------------------------------------------------------------


def _encode(segments, v, image_offset=None, video_offset=None, brackets=True, order=None):
    image_offset = v.image_offset if image_offset is None else image_offset
    video_offset = v.video_offset if video_offset is None else video_offset
    parts = [[v.BOS]] if brackets else []
    for kind, tokens in segments:
        transpose = order == "transposed" and kind != "text"
        flat = (tokens.transpose(-1, -2) if transpose else tokens).flatten().tolist()
        if kind == "text":
            parts.append(flat)
        elif kind == "image":
            parts.append([v.BOI, *(c + image_offset for c in flat), v.EOI])
        else:
            parts.append([v.BOV, *(c + video_offset for c in flat), v.EOV])
    parts += [[v.EOS]] if brackets else []
    return torch.tensor([i for p in parts for i in p], device=segments[0].tokens.device)


def _encode_no_offset(segments, v):
    return _encode(segments, v, image_offset=0, video_offset=0)  # BUG: codes as ids


def _encode_video_image_offset(segments, v):
    return _encode(segments, v, video_offset=v.image_offset)  # BUG: video in the image block


def _encode_no_brackets(segments, v):
    return _encode(segments, v, brackets=False)  # BUG: no BOS / EOS


def _encode_transposed(segments, v):
    return _encode(segments, v, order="transposed")  # BUG: column-major grids


def _encode_hard_coded_specials(segments, v):
    ids = _encode(segments, v)
    shift = 10 - v.text_size  # BUG: specials and offsets of the 10-word layout
    return torch.where(ids >= v.text_size, ids + shift, ids)


def _encode_shifts_in_place(segments, v):
    for kind, tokens in segments:
        if kind == "image":
            tokens += v.image_offset  # BUG: the caller's image codes become ids
        elif kind == "video":
            tokens += v.video_offset
    shifted = [Segment(k, t - (v.image_offset if k == "image" else v.video_offset if k == "video"
                              else 0)) for k, t in segments]  # fmt: skip
    return _encode(shifted, v)


def test_encode_references_pass(capsys):
    passes(ch07.check_encode_interleaved, vocab.encode_interleaved, capsys, "7.4")
    passes(ch07.check_encode_interleaved, _encode, capsys, "7.4")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_encode_no_offset, r"become image / video ids(.|\n)*a common cause is codes used as ids"),
        (
            _encode_video_image_offset,
            r"text, \[BOI\] image(.|\n)*looks like: video codes shifted by the image offset",
        ),
        (_encode_no_brackets, r"starts with BOS and ends with EOS"),
        (_encode_transposed, r"text, \[BOI\] image(.|\n)*looks like: the grids flattened column"),
        (
            _encode_shifts_in_place,
            r"failed check 1, \"leaves its input segments(.|\n)*segments\[1\]\.tokens was modified",
        ),
        (_encode_hard_coded_specials, r"another vocabulary(.|\n)*V\.BOS, V\.image_offset"),
        (stub, r"Exercise 7\.4 \(encode an interleaved document\): not implemented yet"),
    ],
    ids=case_id,
)
def test_encode_rejects(wrong, message):
    rejects(ch07.check_encode_interleaved, wrong, message)


# --- Exercise 7.5: decode ----------------------------------------------------------------------


def _decode_skipping_video(ids, v):
    segments = vocab.decode_interleaved(ids, v)
    return [s for s in segments if s.kind != "video"]  # BUG: video segments lost


def _decode_keeping_offset(ids, v):
    out = []
    for kind, tokens in vocab.decode_interleaved(ids, v):
        if kind == "image":
            tokens = tokens + v.image_offset  # BUG: ids, not codes
        out.append(Segment(kind, tokens))
    return out


def _decode_flat(ids, v):
    return [Segment(k, t.flatten()) for k, t in vocab.decode_interleaved(ids, v)]  # BUG


def _decode_video_as_text(ids, v):
    values, out, text, i = ids.tolist(), [], [], 0
    values = values[1:] if values[0] == v.BOS else values
    values = values[:-1] if values[-1] == v.EOS else values
    while i < len(values):
        if values[i] == v.BOI:
            codes = torch.tensor(values[i + 1 : i + 65], device=ids.device) - v.image_offset
            if text:
                out.append(Segment("text", torch.tensor(text, device=ids.device)))
                text = []
            out.append(Segment("image", codes.view(8, 8)))
            i += 66
        else:
            text.append(values[i])  # BUG: BOV, video ids and EOV read as text
            i += 1
    if text:
        out.append(Segment("text", torch.tensor(text, device=ids.device)))
    return out


def _decode(ids, v, *, strays=True, closers=True, ranges=True, stuck=False):
    """The decoder, with switches that leave out one of its checks."""
    values = ids.tolist()
    values = values[1:] if values and values[0] == v.BOS else values
    values = values[:-1] if values and values[-1] == v.EOS else values
    blocks = {v.BOI: ("image", v.EOI, v.image_offset, (8, 8), v.image_codes),
              v.BOV: ("video", v.EOV, v.video_offset, (2, 8, 8), v.video_codes)}  # fmt: skip
    out, text, i = [], [], 0
    while i < len(values):
        if values[i] < v.text_size:
            text.append(values[i])
            i += 1
            continue
        if text:
            out.append(Segment("text", torch.tensor(text, device=ids.device)))
            text = []
        if values[i] not in blocks:
            if strays:
                raise ValueError(f"id {values[i]} cannot stand at {i}")
            if stuck:
                continue  # BUG when stuck=True: i never moves past the stray id
            i += 1  # BUG when strays=False: skipped silently
            continue
        kind, close, offset, grid, size = blocks[values[i]]
        n = 64 if kind == "image" else 128
        block = torch.tensor(values[i + 1 : i + 1 + n], device=ids.device) - offset
        if len(block) < n or (closers and (i + 1 + n >= len(values) or values[i + 1 + n] != close)):
            raise ValueError(f"{kind} at {i} is not {n} ids and its end marker")
        if ranges and bool(((block < 0) | (block >= size)).any()):
            raise ValueError(f"{kind} at {i} holds ids of another block")
        out.append(Segment(kind, block.view(grid)))
        i += n + 2
    if text:
        out.append(Segment("text", torch.tensor(text, device=ids.device)))
    return out


def _decode_skips_strays(ids, v):
    return _decode(ids, v, strays=False)


def _decode_stuck_on_strays(ids, v):
    return _decode(ids, v, strays=False, stuck=True)


def _decode_no_end_marker_check(ids, v):
    return _decode(ids, v, closers=False)


def _decode_no_block_check(ids, v):
    return _decode(ids, v, ranges=False)


def _decode_dicts(ids, v):
    return [{"kind": k, "tokens": t} for k, t in vocab.decode_interleaved(ids, v)]  # BUG


def _decode_float(ids, v):
    return [Segment(k, t.float()) for k, t in vocab.decode_interleaved(ids, v)]  # BUG: not long


def _decode_pairs_of_lists(ids, v):
    return [(k, t.tolist()) for k, t in vocab.decode_interleaved(ids, v)]  # BUG: lists of ids


def _decode_empty_image(ids, v):
    segments = vocab.decode_interleaved(ids, v)
    return [Segment(k, t[:0, 0] if k == "image" else t) for k, t in segments]  # BUG: no codes


def _decode_lenient(ids, v):
    try:
        return vocab.decode_interleaved(ids, v)
    except ValueError:
        return []  # BUG: a broken sequence passes silently


def test_decode_references_pass(capsys):
    passes(ch07.check_decode_interleaved, vocab.decode_interleaved, capsys, "7.5")
    passes(ch07.check_decode_interleaved, _decode, capsys, "7.5")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_decode_skipping_video, r"video segment survives(.|\n)*video segments lost on decode"),
        (_decode_video_as_text, r"video segment survives(.|\n)*video segments lost on decode"),
        (
            _decode_keeping_offset,
            r"failed check 3, (.|\n)*got:      values in \[17, 508\]\n  hint:     these are the "
            r"image's ids, decoded without removing the offset: subtract vocab\.image_offset",
        ),
        (
            _decode_dicts,
            r"failed check 1, \"returns the document's segments\":\n  expected: a list(.|\n)*"
            r"got:      item 0 is a dict with keys \['kind', 'tokens'\](.|\n)*vocab\.Segment",
        ),
        (
            _decode_float,
            r"failed check 1, (.|\n)*got:      item 0 \(text\) holds tensor of shape "
            r"\(4,\), dtype torch\.float32",
        ),
        (_decode_pairs_of_lists, r"failed check 1, (.|\n)*got:      item 0 \(text\) holds \[\d+, "),
        (
            _decode_empty_image,
            r"failed check 3, (.|\n)*got:      tensor of shape \(0,\)(.|\n)*a "
            r"common cause is image ids decoded without removing the offset",
        ),
        (_decode_flat, r"come back exactly(.|\n)*reshape image codes"),
        (_decode_lenient, r"a stray special id: EOI among the text ids(.|\n)*no error"),
        (_decode_skips_strays, r"a stray special id: EOI(.|\n)*no error(.|\n)*only text ids"),
        (_decode_stuck_on_strays, r"a stray special id: EOI(.|\n)*steps of Python(.|\n)*advances"),
        (_decode_no_end_marker_check, r"an image without its end marker(.|\n)*no error"),
        (_decode_no_block_check, r"an image holding a video id raises(.|\n)*no error"),
        (stub, r"Exercise 7\.5 \(decode an interleaved document\): not implemented yet"),
    ],
    ids=case_id,
)
def test_decode_rejects(wrong, message):
    rejects(ch07.check_decode_interleaved, wrong, message)


# --- Exercise 7.6: padding and the loss mask ---------------------------------------------------


def _pad(seqs, v, pad_id=None, mask_all=False, left=False):
    n, dev = max(len(s) for s in seqs), seqs[0].device
    ids = torch.full((len(seqs), n), v.PAD if pad_id is None else pad_id, dtype=torch.long,
                     device=dev)  # fmt: skip
    mask = torch.zeros(len(seqs), n, dtype=torch.bool, device=dev)
    for row, s in enumerate(seqs):
        cols = slice(n - len(s), n) if left else slice(0, len(s))
        ids[row, cols] = s
        mask[row, cols] = True
    return ids, torch.ones_like(mask) if mask_all else mask


def _pad_zero_no_mask(seqs, v):
    return _pad(seqs, v, pad_id=0, mask_all=True)  # BUG: a real text id, everything scored


def _pad_eos(seqs, v):
    return _pad(seqs, v, pad_id=v.EOS)  # BUG: EOS is a real token


def _pad_no_mask(seqs, v):
    return _pad(seqs, v, mask_all=True)  # BUG: padding in the loss


def _pad_left(seqs, v):
    return _pad(seqs, v, left=True)  # BUG: left padding shifts every position


def _pad_float_mask(seqs, v):
    ids, mask = _pad(seqs, v)
    return ids, mask.float()


def _pad_float_ids(seqs, v):
    ids, mask = _pad(seqs, v)
    return ids.float(), mask  # BUG: ids are long


def _pad_mask_flat(seqs, v):
    ids, mask = _pad(seqs, v)
    return ids, mask.flatten()  # BUG: one long row


def _pad_list_pair(seqs, v):
    ids, mask = _pad(seqs, v)
    return ids, mask, mask.sum(1)  # BUG: (ids, mask) and the lengths


def _pad_hard_coded(seqs, v):
    return _pad(seqs, v, pad_id=10)  # BUG: the PAD id of one layout


def _pad_sorts_the_list(seqs, v):
    ids, mask = _pad(seqs, v)
    seqs.sort(key=len)  # BUG: reorders the caller's list (to find the longest, say)
    return ids, mask


def test_pad_references_pass(capsys):
    passes(ch07.check_pad_batch, vocab.pad_batch, capsys, "7.6")
    passes(ch07.check_pad_batch, _pad, capsys, "7.6")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_pad_zero_no_mask, r"padding uses the PAD id(.|\n)*padding with real token ids \(\[0\]\)"),
        (_pad_eos, r"padding uses the PAD id(.|\n)*padding with real token ids \(\[12\]\)"),
        (_pad_float_ids, r"failed check 3, \"the ids are long(.|\n)*dtype torch\.float32"),
        (_pad_mask_flat, r"the loss mask is a bool tensor like the ids(.|\n)*shape \(3, 5\)"),
        (_pad_list_pair, r"failed check 1, \"returns a tuple \(ids, loss_mask\)(.|\n)*3 values"),
        (_pad_no_mask, r"False at every padded position(.|\n)*without a loss mask"),
        (_pad_left, r"the ids: each row, then PAD"),
        (_pad_float_mask, r"bool tensor"),
        (_pad_sorts_the_list, r"failed check 1, \"leaves its input seqs unchanged(.|\n)*seqs\[0\]"),
        (_pad_hard_coded, r"another vocabulary \(PAD = 30\)(.|\n)*V\.PAD"),
        (stub, r"Exercise 7\.6 \(pad a batch with a loss mask\): not implemented yet"),
    ],
    ids=case_id,
)
def test_pad_rejects(wrong, message):
    rejects(ch07.check_pad_batch, wrong, message)


# --- every checker: whatever comes back, the failure says what was expected and what came ------


@pytest.mark.parametrize("kind", WRONG_KINDS)
@pytest.mark.parametrize(
    ("checker", "reference"),
    [
        (ch07.check_merge, bpe.merge),
        (ch07.check_layout, vocab.layout),
        (ch07.check_token_types, lambda ids, v: v.token_types(ids)),
        (ch07.check_encode_interleaved, vocab.encode_interleaved),
        (ch07.check_decode_interleaved, vocab.decode_interleaved),
        (ch07.check_pad_batch, vocab.pad_batch),
    ],
    ids=case_id,
)
def test_a_wrong_kind_of_result_gets_expected_and_got(checker, reference, kind):
    rejects_wrong_kind(checker, reference, kind)
