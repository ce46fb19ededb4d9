"""A small byte-pair encoder (BPE) for the course captions (chapter 07).

Text starts as characters of a fixed alphabet (the characters of the training captions), each
one id. Training repeats one step: count every adjacent pair of ids in the corpus, take the most
frequent pair (a, b), give it a new id and replace each occurrence of a b by it:

    "a red circle"  →  a ␣ r e d ␣ c i r c l e      13 ids
    merge (␣, r) → 7, (7, e) → 8, (8, d) → 9, …     " red" becomes one id after 3 merges

Ties between equally frequent pairs go to the smallest pair (a, b), so training is
deterministic. Text is first split into words with their leading space (" ?[^ ]+"), and merges
never cross a word boundary, as in GPT-2. Encoding applies the learned merges in the order they
were learned; decoding concatenates the strings of the ids, so decode(encode(s)) == s for every
s written in the alphabet.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterable, Sequence

from mmcourse import _validate
from mmcourse.data import COLORS, DIRECTIONS, SHAPES, all_captions, make_motion_caption

__all__ = [
    "BPE",
    "course_bpe",
    "course_corpus",
    "merge",
    "pair_counts",
    "pretokenize",
    "train_bpe",
]

NUM_MERGES = 100  # at most; on the course captions training stops after 74 (every word whole)
_WORD = re.compile(r" ?[^ ]+| +")


def pretokenize(text: str) -> list[str]:
    """Split text into words with their leading space: "a red circle" → ["a", " red",
    " circle"]. The pieces concatenate back to the text exactly."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return _WORD.findall(text)


def merge(ids: Sequence[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """One BPE merge: replace every occurrence of `pair` in ids, scanning left to right and
    never overlapping, by `new_id`. merge([5, 5, 5], (5, 5), 9) → [9, 5]."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def pair_counts(words: dict[tuple[int, ...], int]) -> Counter:
    """Occurrences of each adjacent pair in words {ids of one word: how often it occurs}."""
    counts: Counter = Counter()
    for ids, n in words.items():
        for pair in zip(ids, ids[1:]):
            counts[pair] += n
    return counts


class BPE:
    """A trained byte-pair encoder: the alphabet (ids 0 … len(alphabet) − 1) and the merges,
    merge k creating id len(alphabet) + k. `tokens[i]` is the text of id i."""

    def __init__(self, alphabet: str, merges: Sequence[tuple[int, int]]):
        if not isinstance(alphabet, str) or not alphabet or len(set(alphabet)) != len(alphabet):
            raise ValueError(f"alphabet must be a non-empty str of distinct characters, got "
                             f"{alphabet!r}")  # fmt: skip
        self.alphabet = alphabet
        self.merges = [(int(a), int(b)) for a, b in merges]
        self.tokens = list(alphabet)
        for k, (a, b) in enumerate(self.merges):
            if not (0 <= a < len(self.tokens) and 0 <= b < len(self.tokens)):
                raise ValueError(f"merge {k} ({a}, {b}) uses an id that does not exist yet")
            self.tokens.append(self.tokens[a] + self.tokens[b])
        self.ranks = {pair: k for k, pair in enumerate(self.merges)}
        self._char_id = {c: i for i, c in enumerate(alphabet)}

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"BPE(alphabet={len(self.alphabet)} characters, merges={len(self.merges)})"

    @functools.lru_cache(maxsize=4096)  # noqa: B019 (a handful of words, one tokenizer)
    def _encode_word(self, word: str) -> tuple[int, ...]:
        ids = [self._char_id[c] for c in word]
        while len(ids) > 1:
            pair = min(zip(ids, ids[1:]), key=lambda p: self.ranks.get(p, len(self.ranks)))
            if pair not in self.ranks:
                break  # no learned merge applies any more
            ids = merge(ids, pair, len(self.alphabet) + self.ranks[pair])
        return tuple(ids)

    def encode(self, text: str) -> list[int]:
        """Text → ids: split into words, then apply the merges in the order they were learned
        (the earliest learned pair present merges first)."""
        unknown = sorted(set(_check_text(text)) - set(self.alphabet))
        if unknown:
            raise ValueError(
                f"text holds characters outside the tokenizer's alphabet: {unknown} (alphabet "
                f"{self.alphabet!r})"
            )
        return [i for word in pretokenize(text) for i in self._encode_word(word)]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids → text: the concatenated strings of the ids."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids must be in [0, {self.vocab_size}), got {bad[0]}")
        return "".join(self.tokens[i] for i in ids)


def _check_text(text: object) -> str:
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return text


def train_bpe(corpus: Sequence[str], num_merges: int = NUM_MERGES) -> BPE:
    """Learn up to `num_merges` merges on corpus (a list of texts). Each step merges the most
    frequent adjacent pair, ties broken towards the smallest pair (a, b); training stops early
    when no pair occurs twice."""
    if isinstance(corpus, str) or not all(isinstance(t, str) for t in corpus) or not corpus:
        raise TypeError("corpus must be a non-empty list of str")
    _validate.integer("num_merges", num_merges, low=0)
    alphabet = "".join(sorted(set("".join(corpus))))
    char_id = {c: i for i, c in enumerate(alphabet)}
    words = Counter(tuple(char_id[c] for c in w) for text in corpus for w in pretokenize(text))
    merges: list[tuple[int, int]] = []
    for k in range(num_merges):
        counts = pair_counts(words)
        if not counts:
            break
        pair = min(counts, key=lambda p: (-counts[p], p))  # most frequent, then smallest
        if counts[pair] < 2:
            break
        new_id = len(alphabet) + k
        merged: Counter = Counter()
        for ids, n in words.items():
            merged[tuple(merge(ids, pair, new_id))] += n
        words = merged
        merges.append(pair)
    return BPE(alphabet, merges)


def course_corpus() -> list[str]:
    """The captions the course's tokenizer learns from: the 90 Shapes captions and the 72
    moving-shapes captions, each once, in grammar order."""
    motion = [make_motion_caption(c, s, d) for c in COLORS for s in SHAPES for d in DIRECTIONS]
    return all_captions() + motion


@functools.cache
def course_bpe(num_merges: int = NUM_MERGES) -> BPE:
    """The course's text tokenizer: `train_bpe(course_corpus(), num_merges)` (deterministic,
    trained in milliseconds, so it is rebuilt rather than shipped)."""
    return train_bpe(course_corpus(), num_merges)
