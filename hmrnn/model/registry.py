"""Build any recurrent stack of the paper's Table 1 by name, behind one interface."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from hmrnn.model.baselines import build_baseline
from hmrnn.model.hmlstm import HMLSTM

RNN_KINDS = ("hmlstm", "lstm", "cwrnn")


def build_rnn(
    kind: str,
    input_size: int,
    hidden_size: int | Sequence[int],
    num_layers: int | None = None,
    *,
    layer_norm: bool = False,
    boundary: str = "step",
    boundary_grad: str = "chain",
    boundary_ln_gain: float | None = None,
    device: Any = None,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """A recurrent stack: ``"hmlstm"``, ``"lstm"`` or ``"cwrnn"`` (clockwork RNN).

    ``layer_norm`` picks the LayerNorm variant of each (``lstm`` without it is PyTorch's
    fused ``nn.LSTM``); ``boundary``, ``boundary_grad`` and ``boundary_ln_gain`` only apply
    to the HM-LSTM. A
    ``hidden_size`` of one element is used for every layer; ``num_layers`` left out is
    inferred from a ``hidden_size`` that lists one size per layer (as each stack's
    constructor does).
    """
    sizes = hidden_size
    if not isinstance(hidden_size, int) and len(hidden_size) == 1 and num_layers is not None:
        sizes = hidden_size[0]  # one size for every layer
    if kind == "hmlstm":
        return HMLSTM(input_size, sizes, num_layers, boundary=boundary,
                      boundary_grad=boundary_grad, layer_norm=layer_norm,
                      boundary_ln_gain=boundary_ln_gain, device=device, dtype=dtype)
    if kind == "lstm":
        name = "ln-lstm" if layer_norm else "lstm"
    elif kind == "cwrnn":
        name = "ln-cw-rnn" if layer_norm else "cw-rnn"
    else:
        raise ValueError(f"model.rnn must be one of {', '.join(RNN_KINDS)}, got {kind!r}")
    return build_baseline(name, input_size, sizes, num_layers, device=device, dtype=dtype)

