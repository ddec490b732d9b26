"""Builders shared by several test modules (pytest puts this folder on ``sys.path``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from hmrnn.charlm import build_charlm
from hmrnn.config import load_config
from hmrnn.data import read_text_file
from hmrnn.distributed import DistContext
from hmrnn.hmlstm import HMLSTM
from hmrnn.lm import CharLMTask
from hmrnn.trainer import Trainer

SLOPE = 1.7  # the slope of wide_hmlstm's models


def wide_hmlstm(
    input_size: int, sizes: tuple[int, ...], mode: str = "step", layer_norm: bool = False,
    seed: int = 0,
) -> HMLSTM:
    """A float64 HM-LSTM whose parameters are wide enough that boundaries both fire and
    not, so that every layer does UPDATE, COPY and FLUSH: layer-norm gains uniform in
    [0.5, 1.5] and biases in [-0.5, 0.5], every other parameter in [-1, 1]; slope SLOPE."""
    torch.manual_seed(seed)
    rnn = HMLSTM(input_size, sizes, len(sizes), boundary=mode, layer_norm=layer_norm,
                 dtype=torch.float64)
    with torch.no_grad():
        for name, p in rnn.named_parameters():
            if ".ln_" in name:
                p.uniform_(0.5, 1.5) if name.endswith("weight") else p.uniform_(-0.5, 0.5)
            else:
                p.uniform_(-1.0, 1.0)
    rnn.set_slope(SLOPE)
    return rnn


def write_words(folder: Path, words: int = 120) -> Path:
    """Write ``folder/text.txt``: ``words`` words drawn (seed 1) from five of a, b, c, d."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    vocab = ["ab", "cab", "bad", "dab", "abc"]
    path = folder / "text.txt"
    path.write_text(" ".join(vocab[i] for i in rng.integers(0, 5, size=words)))
    return path


def tiny_trainer(
    folder: Path, settings: dict[str, str], fractions: tuple[float, float, float],
    context: DistContext | None = None, echo: Callable[[str], None] = lambda _m: None,
) -> Trainer:
    """A trainer of a character LM configured by ``settings`` on ``folder/text.txt`` (split
    by ``fractions``), its model built after ``torch.manual_seed(0)`` on the context's
    device."""
    config = load_config(None, settings)
    corpus = read_text_file(folder / "text.txt", fractions=fractions)
    torch.manual_seed(0)
    model = build_charlm(config.model, len(corpus.vocab)).to((context or DistContext()).device)
    return Trainer(CharLMTask(model, corpus, config, context), config, context, echo=echo)
