"""Builders shared by several test modules (pytest puts this folder on ``sys.path``)."""

from __future__ import annotations

import torch

from hmrnn.hmlstm import HMLSTM

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
