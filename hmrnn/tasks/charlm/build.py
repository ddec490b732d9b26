"""The character LM a config describes."""

from __future__ import annotations

from hmrnn.model.charlm import CharLM
from hmrnn.model.registry import build_rnn
from hmrnn.training.config import ModelConfig


def build_charlm(config: ModelConfig, vocab_size: int) -> CharLM:
    """The model a :class:`ModelConfig` describes, for a vocabulary of ``vocab_size``."""
    rnn = build_rnn(
        config.rnn, config.embedding_size, config.hidden_size, config.num_layers,
        layer_norm=config.layer_norm, boundary=config.boundary,
    )
    return CharLM(vocab_size, rnn, config.output_size)
