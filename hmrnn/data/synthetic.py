"""The embedded default corpus: a small synthetic language with structure at three levels.

It needs no files, is fully determined by its seed, and is made to be learnable by a small
LSTM in minutes (144 word stems that recur, a four-rule grammar), while its characters,
words, phrases and sentences give a hierarchical model real boundaries to find. The
boundaries are returned with the text, so learned boundary detectors can be scored against
them.

Lexicon. One fixed lexicon, drawn once from ``LEXICON_SEED`` (it does not change with the
``seed`` of :func:`generate`, so every split and every seed share words and vocabulary).
Words are alternating consonant / vowel strings over ``a-z`` without ``q``, ``s``, ``x``
and ``y`` (``s`` only ever appears as the suffix below):

============  =====  =======  ====================================================
category      words  letters  notes
============  =====  =======  ====================================================
DET           6      2-3      2 singular only, 2 plural only, 2 both
ADJ           30     3-8
NOUN          60     3-7      stem; the plural adds ``s`` (so 3-8 letters)
VERB          40     3-7      stem; agreement with a singular subject adds ``s``
PREP          8      2-4
============  =====  =======  ====================================================

Within a category, the word of rank ``r`` (0-based, in lexicon order) is chosen with
probability proportional to ``1 / (r + 1)`` (Zipf-like).

Grammar. ``n`` is the grammatical number (singular or plural, each with probability 1/2),
drawn anew for every noun phrase; the verb agrees with the subject::

    S     -> NP[n] VP[n] PP? "."          PP with probability 1/2
    NP[n] -> DET[n] ADJ? NOUN[n]          ADJ with probability 2/5
    VP[n] -> VERB[n] NP[m]                the object's number m is drawn independently
    PP    -> PREP NP[m]

With ``agreement=False`` the verb's number is drawn apart from the subject's (the same
sentences otherwise), so that no dependency runs across a phrase end.

Rendering. Words are separated by one space (``spaces=True``) or written together
(``spaces=False``, so that word boundaries must be discovered). Each sentence ends with
``"."`` right after its last word, followed by a newline: ``"a red dog sees the cats.\\n"``.

Boundaries. ``word_end``, ``phrase_end`` and ``sentence_end`` are True on the last letter of
each word, of each phrase and of each sentence. The phrases are the constituents of S (the
subject NP, the VP, the optional PP); a VP and its object NP end on the same letter. The
sentence ends on the last letter of its last word, not on the ``"."``: this keeps the levels
nested (every sentence end is a phrase end, every phrase end a word end), like the segments
of a hierarchical multiscale model. Separators (space, ``"."``, newline) are never
boundaries.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from functools import lru_cache
from types import MappingProxyType
from typing import NamedTuple

import numpy as np

from hmrnn.data._corpus import Corpus
from hmrnn.data.errors import DataError
from hmrnn.data.vocab import Vocab

LEXICON_SEED = 2017
"""Seed of the fixed lexicon shared by every split and every text seed."""

_CONSONANTS = "bcdfghjklmnprtvwz"  # no "s": it only ever marks agreement
_VOWELS = "aeiou"
# category: (number of words, shortest, longest)
_CATEGORIES: dict[str, tuple[int, int, int]] = {
    "DET": (6, 2, 3),
    "ADJ": (30, 3, 8),
    "NOUN": (60, 3, 7),
    "VERB": (40, 3, 7),
    "PREP": (8, 2, 4),
}
_P_PLURAL = 0.5
_P_ADJ = 0.4
_P_PP = 0.5
_DRAWS_PER_SENTENCE = 20  # upper bound on the random numbers one sentence uses


class SyntheticText(NamedTuple):
    """Synthetic text and its boundaries.

    Shape:
        ``text`` has S characters; ``word_end``, ``phrase_end`` and ``sentence_end`` are
        ``(S,)`` bool arrays, True on the last letter of each word / phrase / sentence.
    """

    text: str
    word_end: np.ndarray
    phrase_end: np.ndarray
    sentence_end: np.ndarray


def _make_word(rng: np.random.Generator, length: int) -> str:
    start = int(rng.integers(2))
    letters = []
    for k in range(length):
        pool = _CONSONANTS if (k + start) % 2 == 0 else _VOWELS
        letters.append(pool[int(rng.integers(len(pool)))])
    return "".join(letters)


@lru_cache(maxsize=1)
def lexicon() -> Mapping[str, tuple[str, ...]]:
    """The fixed lexicon: category name to its words (noun and verb stems), rank order.

    All words are distinct across categories and none contains ``s``.
    """
    rng = np.random.default_rng(LEXICON_SEED)
    used: set[str] = set()
    result: dict[str, tuple[str, ...]] = {}
    for category, (count, shortest, longest) in _CATEGORIES.items():
        words: list[str] = []
        while len(words) < count:
            word = _make_word(rng, int(rng.integers(shortest, longest + 1)))
            if word not in used:
                used.add(word)
                words.append(word)
        result[category] = tuple(words)
    return MappingProxyType(result)


def alphabet(spaces: bool = True) -> str:
    """Every character the language can produce, sorted (the synthetic vocabulary)."""
    letters = set("".join("".join(words) for words in lexicon().values())) | {"s"}
    return "".join(sorted(letters | {".", "\n"} | ({" "} if spaces else set())))


class _Choice:
    """Zipf-weighted choice among words, driven by one uniform number per draw."""

    def __init__(self, words: tuple[str, ...] | list[str]):
        weights = 1.0 / np.arange(1, len(words) + 1)
        self.words = tuple(words)
        self.cumulative = (np.cumsum(weights) / weights.sum()).tolist()

    def __call__(self, u: float) -> str:
        return self.words[min(bisect.bisect_right(self.cumulative, u), len(self.words) - 1)]


class _Grammar:
    """Draws sentences as lists of (word, ends a phrase) from a stream of uniforms."""

    def __init__(self, agreement: bool = True) -> None:
        self.agreement = agreement
        lex = lexicon()
        det = lex["DET"]
        # Determiners 0-1 are singular only, 2-3 plural only, 4-5 both.
        self.det = {
            False: _Choice([det[0], det[1], det[4], det[5]]),
            True: _Choice([det[2], det[3], det[4], det[5]]),
        }
        self.adj = _Choice(lex["ADJ"])
        self.noun = _Choice(lex["NOUN"])
        self.verb = _Choice(lex["VERB"])
        self.prep = _Choice(lex["PREP"])

    def _noun_phrase(self, u: list[float], plural: bool) -> list[str]:
        words = [self.det[plural](u.pop())]
        adj_u, word_u = u.pop(), u.pop()
        if adj_u < _P_ADJ:
            words.append(self.adj(word_u))
        words.append(self.noun(u.pop()) + ("s" if plural else ""))
        return words

    def sentence(self, u: list[float]) -> list[list[str]]:
        """One sentence as its phrases (lists of words); consumes numbers from ``u``."""
        plural = u.pop() < _P_PLURAL
        subject = self._noun_phrase(u, plural)
        # without agreement the verb's number is the stream's last draw, which no sentence
        # uses otherwise (_DRAWS_PER_SENTENCE), so the sentences stay the same
        verb_plural = plural if self.agreement else u[0] < _P_PLURAL
        verb = self.verb(u.pop()) + ("" if verb_plural else "s")
        verb_phrase = [verb, *self._noun_phrase(u, u.pop() < _P_PLURAL)]
        phrases = [subject, verb_phrase]
        pp_u, prep_u, number_u = u.pop(), u.pop(), u.pop()
        if pp_u < _P_PP:
            phrases.append([self.prep(prep_u), *self._noun_phrase(u, number_u < _P_PLURAL)])
        return phrases


def generate(num_chars: int, *, seed: int = 0, spaces: bool = True,
             agreement: bool = True) -> SyntheticText:
    """Generate exactly ``num_chars`` characters of the synthetic language.

    The text is a run of whole sentences cut off after ``num_chars`` characters (the last
    sentence may be incomplete; an incomplete last word gets no ``word_end``). The same
    ``seed`` always gives the same text, and ``spaces=False`` gives the same sentences as
    ``spaces=True`` with the spaces left out.

    Args:
        num_chars: length S of the text, at least 1.
        seed: seed of the numpy Generator that draws the sentences.
        spaces: separate words with a space (True) or write them together (False).
        agreement: the verb agrees with its subject (True) or takes its own number.

    Returns:
        A :class:`SyntheticText` of S characters with its ``(S,)`` boundary arrays.
    """
    if isinstance(num_chars, bool) or not isinstance(num_chars, int) or num_chars < 1:
        raise DataError(f"num_chars must be a positive int, got {num_chars!r}")
    rng = np.random.default_rng(seed)
    grammar = _Grammar(agreement)
    separator = " " if spaces else ""
    pieces: list[str] = []
    word_ends: list[int] = []
    phrase_ends: list[int] = []
    sentence_ends: list[int] = []
    pos = 0
    while pos < num_chars:
        # Reversed so that pop() takes them in the order drawn.
        u = rng.random(_DRAWS_PER_SENTENCE).tolist()[::-1]
        phrases = grammar.sentence(u)
        for p, phrase in enumerate(phrases):
            for w, word in enumerate(phrase):
                if p or w:
                    pieces.append(separator)
                    pos += len(separator)
                pieces.append(word)
                pos += len(word)
                word_ends.append(pos - 1)
            phrase_ends.append(pos - 1)
        sentence_ends.append(pos - 1)
        pieces.append(".\n")
        pos += 2
    text = "".join(pieces)[:num_chars]
    arrays = []
    for ends in (word_ends, phrase_ends, sentence_ends):
        flags = np.zeros(pos, dtype=bool)
        flags[ends] = True
        arrays.append(flags[:num_chars])
    return SyntheticText(text, *arrays)


def synthetic_corpus(
    train_chars: int = 200_000,
    valid_chars: int = 20_000,
    test_chars: int = 20_000,
    *,
    seed: int = 0,
    spaces: bool = True,
    agreement: bool = True,
) -> Corpus:
    """The synthetic corpus, with boundaries: three splits drawn from independent seeds.

    The split seeds are derived from ``seed`` with ``numpy.random.SeedSequence``. The
    vocabulary is the language's whole :func:`alphabet` (with the default sizes every one of
    its characters occurs in the train split), so small test corpora never miss a symbol.

    Args:
        train_chars, valid_chars, test_chars: the length of each split.
        seed: the corpus seed.
        spaces, agreement: as in :func:`generate`.

    Returns:
        A :class:`Corpus` named ``"synthetic"`` whose ``boundaries`` hold, per split,
        ``"word"``, ``"phrase"`` and ``"sentence"`` bool arrays aligned with the split.
    """
    sizes = {"train": train_chars, "valid": valid_chars, "test": test_chars}
    split_seeds = np.random.SeedSequence(seed).generate_state(len(sizes)).tolist()
    vocab = Vocab(alphabet(spaces))
    splits: dict[str, np.ndarray] = {}
    boundaries: dict[str, dict[str, np.ndarray]] = {}
    for (split, size), split_seed in zip(sizes.items(), split_seeds, strict=True):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise DataError(f"{split}_chars must be a positive int, got {size!r}")
        sample = generate(size, seed=split_seed, spaces=spaces, agreement=agreement)
        splits[split] = vocab.encode(sample.text, where=f"the {split} split of synthetic")
        boundaries[split] = {
            "word": sample.word_end,
            "phrase": sample.phrase_end,
            "sentence": sample.sentence_end,
        }
    return Corpus("synthetic", vocab, splits, boundaries)
