"""The data layer: vocabularies, corpora, the synthetic default corpus, batching, downloads.

Typical use::

    corpus = load_corpus("synthetic")              # or "ptb", "text8", "file:notes.txt"
    train = StreamBatcher(corpus.splits["train"], batch_size=64, seq_len=100)
    x, y = train.segment(0)                        # (T, N) inputs and next-symbol targets
    for x, y, mask in eval_batches(corpus.splits["valid"], 64, 100):
        ...                                        # every valid target scored once

The download functions are re-exported as :func:`download_corpus` and :func:`verify_corpus`,
so that ``hmrnn.data.download`` stays the module.
"""

from hmrnn.data._corpus import Corpus, describe
from hmrnn.data.batching import EvalBatches, StreamBatcher, eval_batches
from hmrnn.data.corpora import (
    CORPORA,
    SPLIT_FRACTIONS,
    load_corpus,
    read_enwik8,
    read_ptb,
    read_text8,
    read_text_file,
    split_sizes,
)
from hmrnn.data.download import DEFAULT_CACHE_DIR, SOURCES
from hmrnn.data.download import download as download_corpus
from hmrnn.data.download import verify as verify_corpus
from hmrnn.data.errors import CorpusNotFoundError, DataError, UnknownSymbolError
from hmrnn.data.synthetic import SyntheticText, generate, synthetic_corpus
from hmrnn.data.vocab import Vocab

__all__ = [
    "CORPORA",
    "DEFAULT_CACHE_DIR",
    "SOURCES",
    "SPLIT_FRACTIONS",
    "Corpus",
    "CorpusNotFoundError",
    "DataError",
    "EvalBatches",
    "StreamBatcher",
    "SyntheticText",
    "UnknownSymbolError",
    "Vocab",
    "describe",
    "download_corpus",
    "eval_batches",
    "generate",
    "load_corpus",
    "read_enwik8",
    "read_ptb",
    "read_text8",
    "read_text_file",
    "split_sizes",
    "synthetic_corpus",
    "verify_corpus",
]
