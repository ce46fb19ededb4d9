"""The byte-pair encoder: merge step, deterministic training, lossless round trip."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmcourse import bpe
from mmcourse.data import all_captions


def test_merge_is_left_to_right_and_non_overlapping():
    assert bpe.merge([5, 5, 5], (5, 5), 9) == [9, 5]
    assert bpe.merge([5, 5, 5, 5], (5, 5), 9) == [9, 9]
    assert bpe.merge([1, 2, 3, 1, 2], (1, 2), 7) == [7, 3, 7]
    assert bpe.merge([2, 1], (1, 2), 7) == [2, 1]
    assert bpe.merge([], (1, 2), 7) == []


def test_pair_counts_weights_by_word_frequency():
    counts = bpe.pair_counts({(1, 2, 3): 2, (1, 2): 5})
    assert counts == {(1, 2): 7, (2, 3): 2}


def test_pretokenize_keeps_leading_spaces_and_concatenates_back():
    assert bpe.pretokenize("a red circle") == ["a", " red", " circle"]
    for text in ["", " a  b ", "a", "  "]:
        assert "".join(bpe.pretokenize(text)) == text


def test_training_merges_most_frequent_then_smallest_pair():
    tok = bpe.train_bpe(["ab ab ab", "cd cd"], num_merges=10)
    # alphabet " abcd": ids 0 1 2 3 4; (a, b) occurs 3 times: the first merge
    assert tok.alphabet == " abcd"
    assert tok.merges[0] == (1, 2)
    # ties: (' ', ab) 2×, (' ', c) 1×, (c, d) 2× → the smaller pair (0, 5) before (3, 4)
    assert tok.merges[1] == (0, 5)
    assert tok.merges == bpe.train_bpe(["ab ab ab", "cd cd"], num_merges=10).merges


def test_training_stops_when_no_pair_repeats():
    tok = bpe.train_bpe(["abc"], num_merges=10)
    assert tok.merges == []


def test_course_tokenizer_makes_every_word_one_token():
    tok = bpe.course_bpe()
    assert len(tok.merges) == 74 and tok.vocab_size == 97
    for caption in bpe.course_corpus():
        ids = tok.encode(caption)
        assert len(ids) == len(caption.split())
        assert tok.decode(ids) == caption
    assert bpe.course_bpe() is tok  # cached


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="abcdefghilmnoprstuvwy ", max_size=40))
def test_round_trip_for_any_text_in_the_alphabet(text):
    tok = bpe.course_bpe()
    assert tok.decode(tok.encode(text)) == text


def test_fewer_merges_give_subword_pieces():
    tok = bpe.train_bpe(all_captions(), num_merges=20)
    ids = tok.encode("a purple triangle in the center")
    assert len(ids) > 6 and tok.decode(ids) == "a purple triangle in the center"


def test_bad_inputs_raise_clear_errors():
    tok = bpe.course_bpe()
    with pytest.raises(ValueError, match=r"outside the tokenizer's alphabet: \['Z'\]"):
        tok.encode("a Zebra")
    with pytest.raises(TypeError, match="text must be a str"):
        tok.encode(3)
    with pytest.raises(ValueError, match=r"ids must be in \[0, 97\), got 97"):
        tok.decode([1, 97])
    with pytest.raises(TypeError, match="corpus must be a non-empty list of str"):
        bpe.train_bpe("abc")
    with pytest.raises(ValueError, match="num_merges must be ≥ 0, got -1"):
        bpe.train_bpe(["ab"], num_merges=-1)
    with pytest.raises(ValueError, match="uses an id that does not exist"):
        bpe.BPE("ab", [(0, 5)])
