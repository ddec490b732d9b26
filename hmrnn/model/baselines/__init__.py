"""The baselines of the HM-RNN paper's Table 1, behind the HM-LSTM stack's interface.

- :class:`LSTMStack` (``lstm.py``): a stacked LSTM built from PyTorch's fused
  ``nn.LSTM``, one per layer so that every layer's sequence is returned; the speed
  reference.
- :class:`LayerNormLSTM` (``layernorm_lstm.py``): Ba et al.'s layer-normalised LSTM, the
  paper's "LN-LSTM".
- :class:`ClockworkRNN` (``clockwork.py``): Koutník et al.'s clockwork RNN,
  layer-normalised by default, the paper's "LN-CW-RNN".

All three speak the HM-LSTM stack's contract: the same constructor arguments
(``input_size``, ``hidden_size``, ``num_layers``, ``layer_norm``, ``batch_first``,
``device``, ``dtype``), ``output, state = rnn(input, state=None)`` with ``output`` an
:class:`~hmrnn.model.types.RNNOutput` holding every layer's hidden sequence (``boundary``
is ``None``), and ``state`` a NamedTuple, never batch-first, that continues the sequence
when fed back in. The gated output module (:class:`~hmrnn.model.output.GatedOutput`) sits
on any of them, as it does in the paper. What the three share, documentation included,
is :class:`~hmrnn.model.baselines._common.StackBase` (``_common.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from hmrnn.model.baselines.clockwork import ClockworkCell, ClockworkRNN, ClockworkState
from hmrnn.model.baselines.layernorm_lstm import LayerNormLSTM, LayerNormLSTMCell
from hmrnn.model.baselines.lstm import LSTMStack, LSTMState

__all__ = [
    "ClockworkCell",
    "ClockworkRNN",
    "ClockworkState",
    "LSTMState",
    "LSTMStack",
    "LayerNormLSTM",
    "LayerNormLSTMCell",
    "build_baseline",
]

# doctest.testmod(baselines) also runs the examples of the classes defined in the modules.
__test__ = {
    "LSTMStack": LSTMStack,
    "LayerNormLSTMCell": LayerNormLSTMCell,
    "LayerNormLSTM": LayerNormLSTM,
    "ClockworkRNN": ClockworkRNN,
}


_BASELINES: dict[str, tuple[Callable[..., nn.Module], bool]] = {
    "lstm": (LSTMStack, False),
    "ln-lstm": (LayerNormLSTM, True),
    "cw-rnn": (ClockworkRNN, False),
    "ln-cw-rnn": (ClockworkRNN, True),
}


def build_baseline(
    name: str,
    input_size: int,
    hidden_size: int | Sequence[int],
    num_layers: int | None = None,
    *,
    batch_first: bool = False,
    device: Any = None,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """Build a baseline stack by its name in the paper's Table 1.

    Args:
        name: ``"lstm"`` (:class:`LSTMStack`), ``"ln-lstm"`` (:class:`LayerNormLSTM`),
            ``"cw-rnn"`` or ``"ln-cw-rnn"`` (:class:`ClockworkRNN` without or with layer
            normalisation).
        input_size, hidden_size, num_layers, batch_first, device, dtype: passed on to the
            class.

    Example::

        >>> build_baseline("ln-cw-rnn", 2, 5, 3).layer_norm
        True
    """
    if name not in _BASELINES:
        raise ValueError(
            f"Unknown baseline {name!r}; choose one of {', '.join(map(repr, _BASELINES))}."
        )
    cls, layer_norm = _BASELINES[name]
    return cls(
        input_size,
        hidden_size,
        num_layers,
        layer_norm=layer_norm,
        batch_first=batch_first,
        device=device,
        dtype=dtype,
    )
