"""The baselines of the HM-RNN paper's Table 1, behind the HM-LSTM stack's interface.

- :class:`LSTMStack`: a stacked LSTM (Hochreiter & Schmidhuber, 1997) built from PyTorch's
  fused ``nn.LSTM``, one per layer so that every layer's sequence is returned. It is the
  speed reference.
- :class:`LayerNormLSTM`: the layer-normalised LSTM of Ba, Kiros & Hinton, "Layer
  Normalization" (arXiv:1607.06450, 2016), the paper's "LN-LSTM", normalised as docs/model.md
  decision 7 normalises the HM-LSTM.
- :class:`ClockworkRNN`: the clockwork RNN of Koutník, Greff, Gomez & Schmidhuber, "A
  Clockwork RNN" (ICML 2014), layer-normalised by default: the paper's "LN-CW-RNN". Its
  hidden units are split into modules; module i (1-based) has period ``2^(i-1)`` and is
  updated only at the steps t (0-based, counted from the start of the whole sequence)
  with ``t mod 2^(i-1) == 0``, otherwise it keeps its value. An updated module reads the
  input and every module at least as slow as itself::

      h_i,t = tanh( LN(W_i x_t) + LN( sum_{j >= i} U_ij h_j,t-1 ) + b_i )

  The step counter travels in the state, so a sequence cut into pieces is computed
  exactly as the whole.

All three speak the HM-LSTM stack's contract: ``output, state = rnn(input, state=None)``
with ``output`` an :class:`~hmrnn.model.types.RNNOutput` holding every layer's hidden sequence
(``boundary`` is ``None``), and ``state`` a NamedTuple, never batch-first, that continues
the sequence when fed back in. The gated output module (:class:`~hmrnn.model.output.GatedOutput`)
sits on any of them, as it does in the paper.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hmrnn.model.types import RNNOutput, as_sizes, check_input, factory_kwargs


class LSTMState(NamedTuple):
    """State of :class:`LSTMStack` and :class:`LayerNormLSTM` between calls.

    Attributes:
        h: one hidden state per layer, bottom first, each ``(N, H_l)``.
        c: one cell state per layer, bottom first, each ``(N, H_l)``.
    """

    h: tuple[Tensor, ...]
    c: tuple[Tensor, ...]


class ClockworkState(NamedTuple):
    """State of :class:`ClockworkRNN` between calls.

    Attributes:
        h: one hidden state per clock module, fastest first, each ``(N, H_i)``.
        step: the number of steps already run, a 0-dim int64 tensor (a plain ``int`` is
            accepted too); it decides which modules tick on the next call.
    """

    h: tuple[Tensor, ...]
    step: Tensor | int


class _Stack(nn.Module):
    """What the three baselines share: argument checks and the batch-first convention."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int | Sequence[int],
        num_layers: int,
        batch_first: bool,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if not _is_positive_int(num_layers):
            raise ValueError(f"{name} needs num_layers to be an int >= 1, got {num_layers!r}.")
        if not _is_positive_int(input_size):
            raise ValueError(f"{name} needs input_size to be a positive int, got {input_size!r}.")
        self.input_size = input_size
        sizes = hidden_size if isinstance(hidden_size, int) else tuple(hidden_size)
        self.hidden_sizes: tuple[int, ...] = as_sizes(sizes, num_layers)
        self.num_layers = num_layers
        self.batch_first = batch_first

    def _time_major(self, input: Tensor) -> Tensor:
        x = input.transpose(0, 1) if self.batch_first and input.dim() == 3 else input
        check_input(x, self.input_size, type(self).__name__)
        if x.shape[0] == 0:
            raise ValueError(f"{type(self).__name__} needs a sequence of at least one step.")
        return x

    def _check_layers(self, field: str, tensors: Sequence[Tensor], batch_size: int) -> None:
        name = type(self).__name__
        if len(tensors) != self.num_layers:
            raise ValueError(
                f"{name} has {self.num_layers} layers but state.{field} holds "
                f"{len(tensors)} tensors."
            )
        for l, (t, size) in enumerate(zip(tensors, self.hidden_sizes, strict=True)):
            if tuple(t.shape) != (batch_size, size):
                raise ValueError(
                    f"{name} expects state.{field}[{l}] of shape {(batch_size, size)}, "
                    f"got {tuple(t.shape)}."
                )

    def _zeros(self, batch_size: int) -> tuple[Tensor, ...]:
        if not _is_positive_int(batch_size):
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
        p = next(self.parameters())
        return tuple(p.new_zeros(batch_size, h) for h in self.hidden_sizes)


class LSTMStack(_Stack):
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

    Args:
        input_size: the number of features ``H_in`` of the input.
        hidden_size: the hidden size, one int or one per layer (bottom first).
        num_layers: the number of layers ``L >= 1``.
        layer_norm: must be ``False``; the fused kernel has no layer normalisation (use
            :class:`LayerNormLSTM`). Accepted so every stack takes the same arguments.
        batch_first: if ``True``, input and hidden sequences are ``(N, T, *)``.
        device, dtype: where and in which precision the parameters are made.

    Inputs: input, state
        - **input**: ``(T, N, H_in)``, or ``(N, T, H_in)`` when ``batch_first``.
        - **state**: an :class:`LSTMState` with ``h[l]`` and ``c[l]`` of shape
          ``(N, H_l)``; zeros when ``None``.

    Outputs: output, state
        - **output**: ``RNNOutput(hidden, boundary=None)``, ``hidden[l]`` of shape
          ``(T, N, H_l)`` (``(N, T, H_l)`` when ``batch_first``).
        - **state**: the :class:`LSTMState` after the last step, each ``(N, H_l)``.

    Where T is the sequence length, N the batch size, L the number of layers, H_in the
    input size and H_l the hidden size of layer l.

    Parameters:
        ``layers.{k}.weight_ih_l0`` ``(4H_k, H_below)``, ``layers.{k}.weight_hh_l0``
        ``(4H_k, H_k)``, ``layers.{k}.bias_ih_l0`` and ``layers.{k}.bias_hh_l0`` ``(4H_k,)``:
        the parameters of layer k's ``nn.LSTM``, gate rows in torch's order i, f, g, o.

    Example::

        >>> rnn = LSTMStack(2, [5, 6, 4], 3)
        >>> output, state = rnn(torch.randn(7, 3, 2))
        >>> [tuple(h.shape) for h in output.hidden]
        [(7, 3, 5), (7, 3, 6), (7, 3, 4)]
        >>> output, state = rnn(torch.randn(7, 3, 2), state)  # continue the sequence
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int | Sequence[int],
        num_layers: int,
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
        if state is None:
            state = self.initial_state(batch_size)
        self._check_layers("h", state.h, batch_size)
        self._check_layers("c", state.c, batch_size)
        x, hidden, hs, cs = input, [], [], []
        for lstm, h0, c0 in zip(self.layers, state.h, state.c, strict=True):
            # Each nn.LSTM is built with this stack's batch_first, so no transposes here.
            x, (h, c) = lstm(x, (h0.unsqueeze(0), c0.unsqueeze(0)))
            hidden.append(x)
            hs.append(h.squeeze(0))
            cs.append(c.squeeze(0))
        return RNNOutput(tuple(hidden), None), LSTMState(tuple(hs), tuple(cs))


class LayerNormLSTMCell(nn.Module):
    r"""One step of Ba et al.'s layer-normalised LSTM (docs/model.md decision 7).

    ::

        s_t = LN_x(W x_t) + LN_h(U h_{t-1}) + b        (each LN over the whole 4H row)
        f_t, i_t, o_t = sigmoid(s_f), sigmoid(s_i), sigmoid(s_o);   g_t = tanh(s_g)
        c_t = f_t * c_{t-1} + i_t * g_t
        h_t = o_t * tanh(LN_c(c_t))

    With ``layer_norm=False`` every ``LN`` is the identity: a plain LSTM.

    The input term is split off (:meth:`project`) so that a time loop can compute it for
    every step at once; :meth:`forward` then takes one step from its result.

    Args:
        input_size: the number of features ``H_in`` of ``x``.
        hidden_size: the hidden size ``H``.
        layer_norm: whether to apply ``LN_x``, ``LN_h`` and ``LN_c``.
        device, dtype: where and in which precision the parameters are made.

    Inputs: wx, state
        - **wx**: ``(N, 4H)``, this step's ``LN_x(W x_t)`` from :meth:`project`.
        - **state**: ``(h, c)``, each ``(N, H)``.

    Outputs: (h, c)
        - **h**, **c**: the new hidden and cell states, each ``(N, H)``.

    Parameters:
        ``W`` ``(4H, H_in)``, ``U`` ``(4H, H)`` and ``bias`` ``(4H,)``, rows ordered f, i,
        o, g, initialised uniform in ``(-1/sqrt(H), 1/sqrt(H))`` as in ``nn.LSTM``. With
        ``layer_norm``: ``ln_x`` and ``ln_h`` (``nn.LayerNorm(4H)``) and ``ln_c``
        (``nn.LayerNorm(H)``), gains 1 and biases 0 at the start.

    Example::

        >>> cell = LayerNormLSTMCell(2, 5)
        >>> wx = cell.project(torch.randn(7, 3, 2))  # all steps at once
        >>> h, c = cell(wx[0], (torch.zeros(3, 5), torch.zeros(3, 5)))
        >>> tuple(h.shape), tuple(c.shape)
        ((3, 5), (3, 5))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        layer_norm: bool = True,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        kw = factory_kwargs(device, dtype)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.layer_norm = layer_norm
        self.W = nn.Parameter(torch.empty(4 * hidden_size, input_size, **kw))
        self.U = nn.Parameter(torch.empty(4 * hidden_size, hidden_size, **kw))
        self.bias = nn.Parameter(torch.empty(4 * hidden_size, **kw))
        self.ln_x = _layer_norm(4 * hidden_size, layer_norm, kw)
        self.ln_h = _layer_norm(4 * hidden_size, layer_norm, kw)
        self.ln_c = _layer_norm(hidden_size, layer_norm, kw)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weights and bias uniform in ``(-1/sqrt(H), 1/sqrt(H))``; LN gains 1, biases 0."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in (self.W, self.U, self.bias):
            nn.init.uniform_(p, -bound, bound)
        for ln in (self.ln_x, self.ln_h, self.ln_c):
            if isinstance(ln, nn.LayerNorm):
                ln.reset_parameters()

    def project(self, input: Tensor) -> Tensor:
        """The input term ``LN_x(W x)`` for any leading shape: ``(*, H_in) -> (*, 4H)``."""
        return self.ln_x(F.linear(input, self.W))

    def forward(self, wx: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        h, c = state
        H = self.hidden_size
        s = wx + self.ln_h(F.linear(h, self.U)) + self.bias  # (N, 4H), rows f, i, o, g
        gates = torch.sigmoid(s[:, : 3 * H])  # (N, 3H): f, i, o
        f, i, o = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H :]
        c = f * c + i * torch.tanh(s[:, 3 * H :])  # (N, H)
        h = o * torch.tanh(self.ln_c(c))  # (N, H)
        return h, c

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, layer_norm={self.layer_norm}"


class LayerNormLSTM(_Stack):
    r"""A stack of layer-normalised LSTM layers (Ba et al., 2016): the paper's LN-LSTM.

    Each layer runs :class:`LayerNormLSTMCell`::

        s_t = LN_x(W x_t) + LN_h(U h_{t-1}) + b        (each LN over the whole 4H row)
        f_t, i_t, o_t = sigmoid(s_f), sigmoid(s_i), sigmoid(s_o);   g_t = tanh(s_g)
        c_t = f_t * c_{t-1} + i_t * g_t
        h_t = o_t * tanh(LN_c(c_t))

    and layer l+1 reads layer l's hidden sequence as ``x``. Each layer's input term is
    computed for all steps in one matrix product before its time loop.

    Args:
        input_size: the number of features ``H_in`` of the input.
        hidden_size: the hidden size, one int or one per layer (bottom first).
        num_layers: the number of layers ``L >= 1``.
        layer_norm: if ``False``, every ``LN`` is the identity: a plain LSTM with the same
            parameter layout (it equals ``nn.LSTM`` once the gate rows are reordered).
        batch_first: if ``True``, input and hidden sequences are ``(N, T, *)``.
        device, dtype: where and in which precision the parameters are made.

    Inputs: input, state
        - **input**: ``(T, N, H_in)``, or ``(N, T, H_in)`` when ``batch_first``.
        - **state**: an :class:`LSTMState` with ``h[l]`` and ``c[l]`` of shape
          ``(N, H_l)``; zeros when ``None``.

    Outputs: output, state
        - **output**: ``RNNOutput(hidden, boundary=None)``, ``hidden[l]`` of shape
          ``(T, N, H_l)`` (``(N, T, H_l)`` when ``batch_first``).
        - **state**: the :class:`LSTMState` after the last step, each ``(N, H_l)``.

    Where T is the sequence length, N the batch size, L the number of layers, H_in the
    input size and H_l the hidden size of layer l.

    Parameters:
        ``layers.{k}.W`` ``(4H_k, H_below)``, ``layers.{k}.U`` ``(4H_k, H_k)`` and
        ``layers.{k}.bias`` ``(4H_k,)``, gate rows ordered f, i, o, g (docs/model.md's layout;
        torch's ``nn.LSTM`` orders them i, f, g, o). With ``layer_norm``:
        ``layers.{k}.ln_x.{weight,bias}`` and ``layers.{k}.ln_h.{weight,bias}`` ``(4H_k,)``,
        ``layers.{k}.ln_c.{weight,bias}`` ``(H_k,)``.

    Example::

        >>> rnn = LayerNormLSTM(2, [5, 6, 4], 3, batch_first=True)
        >>> output, state = rnn(torch.randn(3, 7, 2))
        >>> [tuple(h.shape) for h in output.hidden]
        [(3, 7, 5), (3, 7, 6), (3, 7, 4)]
        >>> [tuple(c.shape) for c in state.c]
        [(3, 5), (3, 6), (3, 4)]
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int | Sequence[int],
        num_layers: int,
        *,
        layer_norm: bool = True,
        batch_first: bool = False,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(input_size, hidden_size, num_layers, batch_first)
        self.layer_norm = layer_norm
        below = (input_size, *self.hidden_sizes[:-1])
        self.layers = nn.ModuleList(
            LayerNormLSTMCell(b, h, layer_norm=layer_norm, device=device, dtype=dtype)
            for b, h in zip(below, self.hidden_sizes, strict=True)
        )

    def initial_state(self, batch_size: int) -> LSTMState:
        """Zero state for ``batch_size`` sequences, on the module's device and dtype."""
        return LSTMState(self._zeros(batch_size), self._zeros(batch_size))

    def forward(self, input: Tensor, state: LSTMState | None = None) -> tuple[RNNOutput, LSTMState]:
        x = self._time_major(input)  # (T, N, H_in)
        if state is None:
            state = self.initial_state(x.shape[1])
        self._check_layers("h", state.h, x.shape[1])
        self._check_layers("c", state.c, x.shape[1])
        hidden, hs, cs = [], [], []
        for cell, h, c in zip(self.layers, state.h, state.c, strict=True):
            wx = cell.project(x)  # (T, N, 4H): the input term of every step in one matmul
            steps = []
            for wx_t in wx:
                h, c = cell(wx_t, (h, c))
                steps.append(h)
            x = torch.stack(steps)  # (T, N, H): the next layer's input
            hidden.append(x.transpose(0, 1) if self.batch_first else x)
            hs.append(h)
            cs.append(c)
        return RNNOutput(tuple(hidden), None), LSTMState(tuple(hs), tuple(cs))


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
        self.ln_x = _layer_norm(hidden_size, layer_norm, kw)
        self.ln_h = _layer_norm(hidden_size, layer_norm, kw)
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


class ClockworkRNN(_Stack):
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

    Args:
        input_size: the number of features ``H_in`` of the input.
        hidden_size: the size of the modules, one int or one per module (fastest first).
        num_layers: the number of modules ``L >= 1``.
        layer_norm: if ``False``, both ``LN`` are the identity (the plain CW-RNN).
        batch_first: if ``True``, input and hidden sequences are ``(N, T, *)``.
        device, dtype: where and in which precision the parameters are made.

    Inputs: input, state
        - **input**: ``(T, N, H_in)``, or ``(N, T, H_in)`` when ``batch_first``.
        - **state**: a :class:`ClockworkState` with ``h[i]`` of shape ``(N, H_i)`` and
          ``step`` the number of steps already run; zeros and step 0 when ``None``.

    Outputs: output, state
        - **output**: ``RNNOutput(hidden, boundary=None)``, ``hidden[i]`` of shape
          ``(T, N, H_i)`` (``(N, T, H_i)`` when ``batch_first``).
        - **state**: the :class:`ClockworkState` after the last step, ``step`` advanced
          by T.

    Where T is the sequence length, N the batch size, L the number of modules, H_in the
    input size and H_i the size of module i.

    Parameters:
        ``layers.{k}.W`` ``(H_k, H_in)``, ``layers.{k}.U`` ``(H_k, H_k + ... + H_L)``
        (the blocks ``U_kj`` side by side, fastest first) and ``layers.{k}.bias``
        ``(H_k,)``. With ``layer_norm``: ``layers.{k}.ln_x.{weight,bias}`` and
        ``layers.{k}.ln_h.{weight,bias}`` ``(H_k,)``.

    Attributes:
        periods: the period of each module, ``(1, 2, 4, ..., 2^(L-1))``.

    Example::

        >>> rnn = ClockworkRNN(2, [5, 6, 4], 3)
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
        num_layers: int,
        *,
        layer_norm: bool = True,
        batch_first: bool = False,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(input_size, hidden_size, num_layers, batch_first)
        self.layer_norm = layer_norm
        self.periods = tuple(2**i for i in range(num_layers))
        self._offsets = tuple(sum(self.hidden_sizes[:i]) for i in range(num_layers))
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
        if state is None:
            state = self.initial_state(x.shape[1])
        self._check_layers("h", state.h, x.shape[1])
        start = int(state.step)
        if start < 0:
            raise ValueError(f"ClockworkRNN needs state.step >= 0, got {start}.")
        wx = [cell.project(x) for cell in self.layers]  # L x (T, N, H_i), all steps at once
        h = list(state.h)
        steps: list[list[Tensor]] = [[] for _ in self.layers]
        for t in range(x.shape[0]):
            # The periods divide one another, so the modules that tick form a prefix.
            ticking = sum((start + t) % p == 0 for p in self.periods)
            h_prev = torch.cat(h, dim=-1)  # (N, H_1 + ... + H_L), all from step t-1
            for i in range(ticking):
                h[i] = self.layers[i](wx[i][t], h_prev[:, self._offsets[i] :])
            for i, h_i in enumerate(h):
                steps[i].append(h_i)
        hidden = tuple(torch.stack(s, dim=1 if self.batch_first else 0) for s in steps)
        step = torch.tensor(start + x.shape[0], dtype=torch.int64, device=x.device)
        return RNNOutput(hidden, None), ClockworkState(tuple(h), step)


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
    num_layers: int,
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


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _layer_norm(size: int, enabled: bool, kw: dict[str, Any]) -> nn.Module:
    return nn.LayerNorm(size, **kw) if enabled else nn.Identity()
