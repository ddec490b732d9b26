"""The clockwork RNN of Koutník, Greff, Gomez & Schmidhuber, "A Clockwork RNN" (ICML 2014),
layer-normalised by default: the paper's "LN-CW-RNN" (equations: :class:`ClockworkRNN`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hmrnn.model.baselines._common import StackBase, maybe_layer_norm
from hmrnn.model.types import RNNOutput, factory_kwargs


class ClockworkState(NamedTuple):
    """State of :class:`ClockworkRNN` between calls.

    Attributes:
        h: one hidden state per clock module, fastest first, each ``(N, H_i)``.
        step: the number of steps already run, a 0-dim int64 tensor (a plain ``int`` is
            accepted too); it decides which modules tick on the next call.
    """

    h: tuple[Tensor, ...]
    step: Tensor | int


class ClockworkCell(nn.Module):
    r"""The update of one clock module of a clockwork RNN (Koutník et al., 2014).

    ::

        h_i = tanh( LN_x(W x_t) + LN_h(U [h_i; h_{i+1}; ...; h_L]_{t-1}) + b )

    With ``layer_norm=False`` both ``LN`` are the identity. As in
    :class:`LayerNormLSTMCell`, the input term is split off (:meth:`project`) so that it
    can be computed for every step at once.

    Args:
        input_size: the number of features ``H_in`` of ``x``.
        hidden_size: the size ``H_i`` of this module.
        recurrent_size: the total size ``H_i + ... + H_L`` of this module and the slower
            ones it reads.
        layer_norm: whether to apply ``LN_x`` and ``LN_h``.
        device, dtype: where and in which precision the parameters are made.

    Inputs: wx, h_slower
        - **wx**: ``(N, H_i)``, this step's ``LN_x(W x_t)`` from :meth:`project`.
        - **h_slower**: ``(N, H_i + ... + H_L)``, this module's and the slower modules'
          previous hidden states, concatenated fastest first.

    Outputs: h
        - **h**: this module's new hidden state ``(N, H_i)``.

    Parameters:
        ``W`` ``(H_i, H_in)``, ``U`` ``(H_i, H_i + ... + H_L)`` and ``bias`` ``(H_i,)``,
        initialised uniform in ``(-1/sqrt(H_i), 1/sqrt(H_i))`` as in ``nn.RNN``. With
        ``layer_norm``: ``ln_x`` and ``ln_h`` (``nn.LayerNorm(H_i)``), gains 1, biases 0.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        recurrent_size: int,
        *,
        layer_norm: bool = True,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        kw = factory_kwargs(device, dtype)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.recurrent_size = recurrent_size
        self.layer_norm = layer_norm
        self.W = nn.Parameter(torch.empty(hidden_size, input_size, **kw))
        self.U = nn.Parameter(torch.empty(hidden_size, recurrent_size, **kw))
        self.bias = nn.Parameter(torch.empty(hidden_size, **kw))
        self.ln_x = maybe_layer_norm(hidden_size, layer_norm, kw)
        self.ln_h = maybe_layer_norm(hidden_size, layer_norm, kw)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weights and bias uniform in ``(-1/sqrt(H_i), 1/sqrt(H_i))``; LN gains 1, biases 0."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in (self.W, self.U, self.bias):
            nn.init.uniform_(p, -bound, bound)
        for ln in (self.ln_x, self.ln_h):
            if isinstance(ln, nn.LayerNorm):
                ln.reset_parameters()

    def project(self, input: Tensor) -> Tensor:
        """The input term ``LN_x(W x)`` for any leading shape: ``(*, H_in) -> (*, H_i)``."""
        return self.ln_x(F.linear(input, self.W))

    def forward(self, wx: Tensor, h_slower: Tensor) -> Tensor:
        return torch.tanh(wx + self.ln_h(F.linear(h_slower, self.U)) + self.bias)  # (N, H_i)

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, recurrent_size={self.recurrent_size}, "
            f"layer_norm={self.layer_norm}"
        )


class ClockworkRNN(StackBase):
    r"""A clockwork RNN (Koutník et al., 2014), layer-normalised by default: LN-CW-RNN.

    The "layers" of the stack interface are the clock modules, fastest first. Module i
    (1-based) has period ``2^(i-1)``; at step t (0-based, counted from the start of the
    whole sequence, carried in the state)::

        if t mod 2^(i-1) == 0:
            h_i,t = tanh( LN_x(W_i x_t) + LN_h( sum_{j >= i} U_ij h_j,t-1 ) + b_i )
        else:
            h_i,t = h_i,t-1

    so slower modules feed faster ones and the input reaches every module. Each
    module's input term is computed for all steps in one matrix product before the
    time loop.

    Arguments, inputs, outputs and attributes are every baseline's
    (:class:`~hmrnn.model.baselines._common.StackBase`), a module standing for a layer
    (``H_i`` for ``H_l``); ``layer_norm=False`` makes both ``LN`` the identity (the plain
    CW-RNN). The state is a :class:`ClockworkState`, with ``h[i]`` ``(N, H_i)`` and
    ``step``, the number of steps already run (0 when ``state`` is ``None``; advanced by
    T).

    Parameters:
        ``layers.{k}.W`` ``(H_k, H_in)``, ``layers.{k}.U`` ``(H_k, H_k + ... + H_L)``
        (the blocks ``U_kj`` side by side, fastest first) and ``layers.{k}.bias``
        ``(H_k,)``. With ``layer_norm``: ``layers.{k}.ln_x.{weight,bias}`` and
        ``layers.{k}.ln_h.{weight,bias}`` ``(H_k,)``.

    Attributes:
        periods: the period of each module, ``(1, 2, 4, ..., 2^(L-1))``.

    Example::

        >>> rnn = ClockworkRNN(2, [5, 6, 4])  # num_layers=3
        >>> rnn.periods
        (1, 2, 4)
        >>> output, state = rnn(torch.randn(7, 3, 2))
        >>> [tuple(h.shape) for h in output.hidden]
        [(7, 3, 5), (7, 3, 6), (7, 3, 4)]
        >>> int(state.step)
        7
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int | Sequence[int],
        num_layers: int | None = None,
        *,
        layer_norm: bool = True,
        batch_first: bool = False,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(input_size, hidden_size, num_layers, batch_first)
        self.layer_norm = layer_norm
        self.periods = tuple(2**i for i in range(self.num_layers))
        self._offsets = tuple(sum(self.hidden_sizes[:i]) for i in range(self.num_layers))
        total = sum(self.hidden_sizes)
        self.layers = nn.ModuleList(
            ClockworkCell(
                input_size, h, total - off, layer_norm=layer_norm, device=device, dtype=dtype
            )
            for h, off in zip(self.hidden_sizes, self._offsets, strict=True)
        )

    def initial_state(self, batch_size: int) -> ClockworkState:
        """Zero state at step 0 for ``batch_size`` sequences, on the module's device."""
        h = self._zeros(batch_size)
        return ClockworkState(h, torch.zeros((), dtype=torch.int64, device=h[0].device))

    def forward(
        self, input: Tensor, state: ClockworkState | None = None
    ) -> tuple[RNNOutput, ClockworkState]:
        x = self._time_major(input)  # (T, N, H_in)
        state = self._state(state, ClockworkState, x.shape[1], ("h",))
        start = int(state.step)
        if start < 0:
            raise ValueError(f"ClockworkRNN needs state.step >= 0, got {start}.")
        cells = cast("Sequence[ClockworkCell]", self.layers)
        wx = [cell.project(x) for cell in cells]  # L x (T, N, H_i), all steps at once
        h = list(state.h)
        steps: list[list[Tensor]] = [[] for _ in self.layers]
        for t in range(x.shape[0]):
            # The periods divide one another, so the modules that tick form a prefix.
            ticking = sum((start + t) % p == 0 for p in self.periods)
            h_prev = torch.cat(h, dim=-1)  # (N, H_1 + ... + H_L), all from step t-1
            for i in range(ticking):
                h[i] = cells[i](wx[i][t], h_prev[:, self._offsets[i] :])
            for i, h_i in enumerate(h):
                steps[i].append(h_i)
        hidden = tuple(torch.stack(s, dim=1 if self.batch_first else 0) for s in steps)
        step = torch.tensor(start + x.shape[0], dtype=torch.int64, device=x.device)
        return RNNOutput(hidden, None), ClockworkState(tuple(h), step)
