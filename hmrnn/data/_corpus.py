"""The :class:`Corpus` container, kept apart so that the readers and the synthetic
generator can both build one without importing each other."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hmrnn.data.vocab import Vocab

SPLITS: tuple[str, str, str] = ("train", "valid", "test")


@dataclass
class Corpus:
    """A character-level corpus: a vocabulary and three encoded splits.

    Attributes:
        name: the corpus name, e.g. ``"ptb"`` or ``"file:notes.txt"``.
        vocab: the vocabulary, built from the train split.
        splits: ``{"train", "valid", "test"}`` to ``(S,)`` int64 arrays of ids.
        boundaries: for corpora with known structure (the synthetic one), per split a dict
            of ``(S,)`` bool arrays aligned with that split, True on the last character of
            each unit (keys ``"word"``, ``"phrase"``, ``"sentence"``); ``None`` otherwise.
    """

    name: str
    vocab: Vocab
    splits: dict[str, np.ndarray]
    boundaries: dict[str, dict[str, np.ndarray]] | None = None


def describe(corpus: Corpus, sample_chars: int = 60) -> str:
    """Summarise a corpus in a few lines: name, vocabulary size, split sizes and a sample.

    Args:
        corpus: the corpus to describe.
        sample_chars: how many characters of the train split to show (as a Python repr, so
            newlines and spaces stay visible).
    """
    lines = [f"corpus: {corpus.name}", f"vocabulary: {len(corpus.vocab)} symbols"]
    width = max(len(f"{len(ids):,}") for ids in corpus.splits.values())
    for split, ids in corpus.splits.items():
        lines.append(f"{split + ':':6} {len(ids):>{width},} symbols")
    if corpus.boundaries is not None:
        kinds = ", ".join(next(iter(corpus.boundaries.values())))
        lines.append(f"boundaries: {kinds}")
    sample = corpus.vocab.decode(corpus.splits["train"][:sample_chars])
    lines.append(f"sample: {sample!r}")
    return "\n".join(lines)
