"""A stack of PyTorch's fused ``nn.LSTM`` layers (Hochreiter & Schmidhuber, 1997), one per
layer so that every layer's sequence is returned: the speed reference."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from hmrnn.model.baselines._common import StackBase
from hmrnn.model.types import RNNOutput, factory_kwargs


class LSTMState(NamedTuple):
    """State of :class:`LSTMStack` and :class:`LayerNormLSTM` between calls.

    Attributes:
        h: one hidden state per layer, bottom first, each ``(N, H_l)``.
        c: one cell state per layer, bottom first, each ``(N, H_l)``.
    """

    h: tuple[Tensor, ...]
    c: tuple[Tensor, ...]


class LSTMStack(StackBase):
    r"""A stack of LSTM layers on PyTorch's fused ``nn.LSTM``, one per layer.

    Each layer computes (in torch's gate notation)::

        i_t = sigmoid(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi)
        f_t = sigmoid(W_if x_t + b_if + W_hf h_{t-1} + b_hf)
        g_t = tanh(W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)
        o_t = sigmoid(W_io x_t + b_io + W_ho h_{t-1} + b_ho)
        c_t = f_t * c_{t-1} + i_t * g_t
        h_t = o_t * tanh(c_t)

    and layer l+1 reads layer l's hidden sequence as ``x``. Unlike a multi-layer
    ``nn.LSTM`` it returns every layer's sequence and lets sizes differ per layer.

    Arguments, inputs, outputs and attributes are every baseline's
    (:class:`~hmrnn.model.baselines._common.StackBase`); ``layer_norm`` must be ``False``:
    the fused kernel has no layer normalisation (use :class:`LayerNormLSTM`). The state
    is an :class:`LSTMState`.

    Parameters:
        ``layers.{k}.weight_ih_l0`` ``(4H_k, H_below)``, ``layers.{k}.weight_hh_l0``
        ``(4H_k, H_k)``, ``layers.{k}.bias_ih_l0`` and ``layers.{k}.bias_hh_l0`` ``(4H_k,)``:
        the parameters of layer k's ``nn.LSTM``, gate rows in torch's order i, f, g, o.

    Example::

        >>> rnn = LSTMStack(2, [5, 6, 4])  # num_layers=3
        >>> output, state = rnn(torch.randn(7, 3, 2))
        >>> [tuple(h.shape) for h in output.hidden]
        [(7, 3, 5), (7, 3, 6), (7, 3, 4)]
        >>> output, state = rnn(torch.randn(7, 3, 2), state)  # continue the sequence
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int | Sequence[int],
        num_layers: int | None = None,
        *,
        layer_norm: bool = False,
        batch_first: bool = False,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(input_size, hidden_size, num_layers, batch_first)
        if layer_norm:
            raise ValueError(
                "LSTMStack wraps the fused nn.LSTM, which has no layer normalisation; "
                "use LayerNormLSTM for a layer-normalised LSTM."
            )
        kw = factory_kwargs(device, dtype)
        below = (input_size, *self.hidden_sizes[:-1])
        self.layers = nn.ModuleList(
            nn.LSTM(b, h, batch_first=batch_first, **kw)
            for b, h in zip(below, self.hidden_sizes, strict=True)
        )

    def initial_state(self, batch_size: int) -> LSTMState:
        """Zero state for ``batch_size`` sequences, on the module's device and dtype."""
        return LSTMState(self._zeros(batch_size), self._zeros(batch_size))

    def forward(self, input: Tensor, state: LSTMState | None = None) -> tuple[RNNOutput, LSTMState]:
        batch_size = self._time_major(input).shape[1]
        state = self._state(state, LSTMState, batch_size, ("h", "c"))
        x, hidden, hs, cs = input, [], [], []
        for lstm, h0, c0 in zip(self.layers, state.h, state.c, strict=True):
            # Each nn.LSTM is built with this stack's batch_first, so no transposes here.
            x, (h, c) = lstm(x, (h0.unsqueeze(0), c0.unsqueeze(0)))
            hidden.append(x)
            hs.append(h.squeeze(0))
            cs.append(c.squeeze(0))
        return RNNOutput(tuple(hidden), None), LSTMState(tuple(hs), tuple(cs))
