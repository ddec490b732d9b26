"""The character LM and the corpus a config describes."""

from __future__ import annotations

from typing import Any

from hmrnn.data import Corpus, load_corpus
from hmrnn.model.charlm import CharLM
from hmrnn.model.registry import build_rnn
from hmrnn.training.config import DataConfig, ModelConfig


def build_charlm(config: ModelConfig, vocab_size: int) -> CharLM:
    """The model a :class:`ModelConfig` describes, for a vocabulary of ``vocab_size``."""
    rnn = build_rnn(
        config.rnn, config.embedding_size, config.hidden_size, config.num_layers,
        layer_norm=config.layer_norm, boundary=config.boundary,
        boundary_grad=config.boundary_grad,
        boundary_ln_gain=config.boundary_ln_gain or None,
    )
    return CharLM(vocab_size, rnn, config.output_size)


def corpus_from_config(data: DataConfig, data_dir: str | None = None) -> Corpus:
    """The corpus a :class:`DataConfig` names, read as training reads it (the synthetic
    corpus's sizes, seed, spaces and agreement; a text's split fractions); ``data_dir`` replaces
    ``data.data_dir`` when given.

    Raises:
        DataError: as :func:`hmrnn.data.load_corpus` (``CorpusNotFoundError`` where the
            files are not found).
    """
    options: dict[str, Any] = {}
    if data.corpus == "synthetic":
        options = {"train_chars": data.synthetic_chars, "valid_chars": data.synthetic_chars // 10,
                   "test_chars": data.synthetic_chars // 10, "seed": data.seed,
                   "spaces": data.spaces, "agreement": data.agreement}
    elif data.corpus != "ptb":  # ptb has its own splits
        options = {"fractions": data.fractions}
    return load_corpus(data.corpus, data_dir or data.data_dir or None,
                       cache_dir=data.cache_dir or None, download=data.download, **options)
