"""The joint vocabulary, interleaved documents, padding and the mixing loader."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmcourse import vocab
from mmcourse.vocab import MixingLoader, Segment, Vocabulary

V = Vocabulary(text_size=97, image_codes=512, video_codes=1024)


def test_layout_is_back_to_back_with_specials_after_text():
    assert vocab.layout(97, 512, 1024) == {
        "text": (0, 97),
        "special": (97, 104),
        "image": (104, 616),
        "video": (616, 1640),
    }
    assert (V.PAD, V.BOS, V.EOS, V.BOI, V.EOI, V.BOV, V.EOV) == tuple(range(97, 104))
    assert V.image_offset == 104 and V.video_offset == 616 and len(V) == V.size == 1640


def test_token_type_at_every_boundary():
    expected = {0: "text", 96: "text", 97: "special", 103: "special", 104: "image",
                615: "image", 616: "video", 1639: "video"}  # fmt: skip
    for i, name in expected.items():
        assert V.token_type(i) == name
    ids = torch.tensor(list(expected))
    assert [vocab.TYPES[t] for t in V.token_types(ids).tolist()] == list(expected.values())
    assert V.special_name(V.BOV) == "BOV"


@pytest.mark.parametrize("bad", [-1, 1640, 10_000])
def test_out_of_range_ids_raise(bad):
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 1640\)"):
        V.token_type(bad)
    with pytest.raises(ValueError, match=rf"in \[0, 1640\); got {bad}"):
        V.token_types(torch.tensor([0, bad]))


def test_offsets_and_their_errors():
    codes = torch.tensor([0, 511])
    assert V.image_ids(codes).tolist() == [104, 615]
    assert V.image_codes_of(V.image_ids(codes)).tolist() == [0, 511]
    assert V.video_codes_of(V.video_ids(torch.tensor([1023]))).tolist() == [1023]
    with pytest.raises(ValueError, match=r"codes must be codes in \[0, 512\)"):
        V.image_ids(torch.tensor([512]))
    with pytest.raises(ValueError, match=r"ids must be image ids in \[104, 616\)"):
        V.image_codes_of(torch.tensor([3]))
    with pytest.raises(TypeError, match="must have dtype torch.int64"):
        V.image_ids(torch.tensor([1.0]))
    with pytest.raises(TypeError, match="text_size must be an int"):
        Vocabulary(text_size=1.5)


def test_table_lists_every_block_and_special():
    table = V.table()
    assert table.splitlines()[0].split() == ["block", "first", "id", "last", "id", "size"]
    for name in (*vocab.SPECIALS, "image codes", "video codes", "text (BPE)"):
        assert name in table
    assert table.splitlines()[-1].split() == ["total", "1640"]


def _doc(g, pattern):
    out = []
    for kind in pattern:
        if kind == "text":
            out.append(Segment("text", torch.randint(97, (int(torch.randint(1, 6, (1,),
                                                                             generator=g)),),
                                                     generator=g)))  # fmt: skip
        elif kind == "image":
            out.append(Segment("image", torch.randint(512, (8, 8), generator=g)))
        else:
            out.append(Segment("video", torch.randint(1024, (2, 8, 8), generator=g)))
    return out


def _merge_text(segments):
    """Consecutive text segments decode as one."""
    out = []
    for s in segments:
        if out and s.kind == "text" and out[-1].kind == "text":
            out[-1] = Segment("text", torch.cat([out[-1].tokens, s.tokens]))
        else:
            out.append(s)
    return out


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["text", "image", "video"]), max_size=6), st.integers(0, 999))
def test_ids_round_trip_exactly(pattern, seed):
    doc = _doc(torch.Generator().manual_seed(seed), pattern)
    ids = vocab.encode_interleaved(doc, V)
    assert ids[0] == V.BOS and ids[-1] == V.EOS
    back = vocab.decode_interleaved(ids, V)
    assert [s.kind for s in back] == [s.kind for s in _merge_text(doc)]
    for a, b in zip(back, _merge_text(doc)):
        assert torch.equal(a.tokens, b.tokens)
    assert torch.equal(vocab.encode_interleaved(back, V), ids)


def test_lengths_and_blocks_of_an_encoded_document():
    doc = _doc(torch.Generator().manual_seed(0), ["text", "image", "video"])
    ids = vocab.encode_interleaved(doc, V)
    assert len(ids) == 1 + len(doc[0].tokens) + 66 + 130 + 1
    types = V.token_types(ids)
    assert int((types == 2).sum()) == 64 and int((types == 3).sum()) == 128


def test_decode_errors_name_the_position():
    doc = _doc(torch.Generator().manual_seed(1), ["text", "image"])
    ids = vocab.encode_interleaved(doc, V)
    with pytest.raises(ValueError, match=r"opens an image with BOI: expected 64 image ids"):
        vocab.decode_interleaved(ids[:-3], V)
    with pytest.raises(ValueError, match=r"ids\[1\] = 101 \(special EOI\) cannot appear here"):
        vocab.decode_interleaved(torch.tensor([V.BOS, V.EOI, V.EOS]), V)
    with pytest.raises(ValueError, match=r"ids\[0\] = 200 \(image\) cannot appear here"):
        vocab.decode_interleaved(torch.tensor([200]), V)
    wrong_block = ids.clone()
    wrong_block[-3] = V.video_offset  # a video id inside an image
    with pytest.raises(ValueError, match=r"must be image ids in \[104, 616\)"):
        vocab.decode_interleaved(wrong_block, V)
    assert vocab.decode_interleaved(torch.tensor([V.BOS, V.EOS]), V) == []


def test_encode_validates_segments():
    with pytest.raises(TypeError, match="segments must be a list of Segment"):
        vocab.encode_interleaved(Segment("text", torch.tensor([1])), V)
    with pytest.raises(TypeError, match=r"segments\[0\] must be a Segment"):
        vocab.encode_interleaved([("audio", torch.tensor([1]))], V)
    with pytest.raises(ValueError, match=r"segments\[0\]\.tokens must have shape \(8, 8\)"):
        vocab.encode_interleaved([Segment("image", torch.zeros(4, 4, dtype=torch.long))], V)
    with pytest.raises(ValueError, match=r"must be text ids in \[0, 97\)"):
        vocab.encode_interleaved([Segment("text", torch.tensor([97]))], V)


def test_positions_are_1d_for_text_2d_for_images_3d_for_video():
    doc = _doc(torch.Generator().manual_seed(2), ["text", "image", "video"])
    ids = vocab.encode_interleaved(doc, V)
    pos = vocab.positions(ids, V)
    assert pos.shape == (len(ids), 4) and torch.equal(pos[:, 0], torch.arange(len(ids)))
    n_text = len(doc[0].tokens)
    assert (pos[: 2 + n_text, 1:] == -1).all()  # BOS, text, BOI
    image = pos[2 + n_text : 2 + n_text + 64]
    assert image[0].tolist()[1:] == [0, 0, 0] and image[9].tolist()[1:] == [0, 1, 1]
    video = pos[2 + n_text + 66 : 2 + n_text + 66 + 128]
    assert video[-1].tolist()[1:] == [1, 7, 7] and video[64].tolist()[1:] == [1, 0, 0]
    assert (pos[-2:, 1:] == -1).all()  # EOV, EOS


def test_pad_batch_uses_pad_and_masks_it():
    seqs = [torch.tensor([V.BOS, 1, V.EOS]), torch.tensor([V.BOS, V.EOS])]
    ids, mask = vocab.pad_batch(seqs, V)
    assert ids.tolist() == [[V.BOS, 1, V.EOS], [V.BOS, V.EOS, V.PAD]]
    assert mask.tolist() == [[True, True, True], [True, True, False]]
    ids, mask = vocab.pad_batch(seqs, V, length=5)
    assert ids.shape == (2, 5) and int(mask.sum()) == 5
    with pytest.raises(ValueError, match="length must be ≥ the longest sequence"):
        vocab.pad_batch(seqs, V, length=2)
    with pytest.raises(TypeError, match="seqs must be a non-empty list"):
        vocab.pad_batch([], V)
    with pytest.raises(ValueError, match=r"seqs\[0\] must be ids of this vocabulary"):
        vocab.pad_batch([torch.tensor([5000])], V)


def _sources():
    g = torch.Generator().manual_seed(0)
    return {kind: [torch.randint(97, (int(n),), generator=g) for n in range(3, 8)]
            for kind in vocab.KINDS}  # fmt: skip


def test_loader_ratios_hold_within_sampling_error():
    ratios = {"text": 1, "caption_image": 4, "image_caption": 3, "interleaved": 1, "video": 1}
    loader = MixingLoader(_sources(), ratios, V, batch_size=50, seed=0)
    measured = vocab.measure_ratios(loader, batches=80)  # 4,000 rows
    for kind, r in loader.ratios.items():
        assert abs(measured[kind] - r) < 4 * math.sqrt(r * (1 - r) / 4000)
    assert sum(loader.ratios.values()) == pytest.approx(1.0)


def test_loader_batches_are_padded_seeded_and_skip_zero_kinds():
    ratios = {"text": 0.0, "caption_image": 1.0, "video": 1.0}
    a = MixingLoader(_sources(), ratios, V, batch_size=8, seed=3).next_batch()
    b = MixingLoader(_sources(), ratios, V, batch_size=8, seed=3).next_batch()
    assert torch.equal(a.ids, b.ids) and a.kinds == b.kinds
    assert set(a.kinds) <= {"caption_image", "video"}
    assert torch.equal(a.ids[~a.loss_mask], torch.full_like(a.ids[~a.loss_mask], V.PAD))


def test_loader_validates_ratios():
    with pytest.raises(ValueError, match="unknown kinds"):
        MixingLoader(_sources(), {"audio": 1}, V)
    with pytest.raises(ValueError, match=r"ratios\['text'\] must be in \[0, inf\)"):
        MixingLoader(_sources(), {"text": -1}, V)
    with pytest.raises(ValueError, match="sources has no 'video' examples"):
        MixingLoader({"text": _sources()["text"]}, {"video": 1}, V)
    with pytest.raises(ValueError, match="at least one kind"):
        MixingLoader(_sources(), {"text": 0}, V)


def test_text_mask_allows_text_and_the_named_specials():
    v = Vocabulary(5, image_codes=3, video_codes=2)
    mask = v.text_mask("EOS")
    assert mask.shape == (v.size,) and mask.dtype == torch.bool
    assert mask.nonzero().flatten().tolist() == [0, 1, 2, 3, 4, v.EOS]
    short = v.text_mask("BOI", "EOS", size=v.image_offset)
    assert short.shape == (v.image_offset,) and short.sum() == 7 and short[v.BOI]
