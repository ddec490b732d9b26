"""The layer-normalised LSTM of Ba, Kiros & Hinton, "Layer Normalization" (arXiv:1607.06450,
2016), the paper's "LN-LSTM", normalised as docs/model.md decision 7 normalises the HM-LSTM."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hmrnn.model.baselines._common import StackBase, maybe_layer_norm
from hmrnn.model.baselines.lstm import LSTMState
from hmrnn.model.cell import HMLSTMCell
from hmrnn.model.loop import check_name, hmlstm_loop
from hmrnn.model.types import RNNOutput, factory_kwargs


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
        self.ln_x = maybe_layer_norm(4 * hidden_size, layer_norm, kw)
        self.ln_h = maybe_layer_norm(4 * hidden_size, layer_norm, kw)
        self.ln_c = maybe_layer_norm(hidden_size, layer_norm, kw)
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

    def as_hmlstm_cell(self) -> HMLSTMCell:
        """This cell as an :class:`HMLSTMCell` of the top-layer kind (no boundary detector,
        no top-down term) whose tensors are this cell's own (``W``, ``U``, ``bias``; ``ln_x``
        as ``ln_bottom_up``, ``ln_h`` as ``ln_recurrent``, ``ln_c`` as ``ln_cell``; the gate
        rows are ordered alike). As the bottom layer of a stack, with ``z`` 0, it UPDATEs at
        every step: Eq. 2-3 are then this cell's equations, so the HM-LSTM's fused loop
        (:func:`hmrnn.model.loop.hmlstm_loop`) runs it, and its gradients reach this cell's
        parameters."""
        view = HMLSTMCell(self.input_size, self.hidden_size, None, layer_norm=self.layer_norm,
                          device="meta")
        for name in ("W", "U", "bias"):  # a tensor, not a Parameter, under functional_call
            view._parameters[name] = getattr(self, name)
        if self.layer_norm:
            norms = cast("tuple[nn.LayerNorm, ...]", (self.ln_x, self.ln_h, self.ln_c))
            view.ln_bottom_up, view.ln_recurrent, view.ln_cell = norms
        return view


class LayerNormLSTM(StackBase):
    r"""A stack of layer-normalised LSTM layers (Ba et al., 2016): the paper's LN-LSTM.

    Each layer runs :class:`LayerNormLSTMCell` (its equations) over the sequence, and
    layer l+1 reads layer l's hidden sequence as ``x``. Each layer's input term is
    computed for all steps in one matrix product before its time loop. With ``fast``
    (the default; not under autocast) each layer's time loop is the HM-LSTM's fused loop
    on :meth:`LayerNormLSTMCell.as_hmlstm_cell` (the C step on the CPU, the Triton step
    on a GPU: ``backend`` as :class:`hmrnn.model.hmlstm.HMLSTM`'s); ``fast = False`` runs
    the cells step by step, the readable reference.

    Arguments, inputs, outputs and attributes are every baseline's
    (:class:`~hmrnn.model.baselines._common.StackBase`); ``layer_norm=False`` makes every
    ``LN`` the identity: a plain LSTM with the same parameter layout (it equals
    ``nn.LSTM`` once the gate rows are reordered). The state is an :class:`LSTMState`.

    Parameters:
        ``layers.{k}.W`` ``(4H_k, H_below)``, ``layers.{k}.U`` ``(4H_k, H_k)`` and
        ``layers.{k}.bias`` ``(4H_k,)``, gate rows ordered f, i, o, g (docs/model.md's layout;
        torch's ``nn.LSTM`` orders them i, f, g, o). With ``layer_norm``:
        ``layers.{k}.ln_x.{weight,bias}`` and ``layers.{k}.ln_h.{weight,bias}`` ``(4H_k,)``,
        ``layers.{k}.ln_c.{weight,bias}`` ``(H_k,)``.

    Example::

        >>> rnn = LayerNormLSTM(2, [5, 6, 4], batch_first=True)
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
        num_layers: int | None = None,
        *,
        layer_norm: bool = True,
        batch_first: bool = False,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(input_size, hidden_size, num_layers, batch_first)
        self.layer_norm = layer_norm
        self.fast = True
        self.backend = "auto"
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
        state = self._state(state, LSTMState, x.shape[1], ("h", "c"))
        hidden, hs, cs = [], [], []
        cells = cast("Sequence[LayerNormLSTMCell]", self.layers)
        fast = self.fast and not torch.is_autocast_enabled(x.device.type)
        if fast:
            check_name(self.backend)
            z0 = (x.new_zeros(x.shape[1], 1),)
        for cell, h, c in zip(cells, state.h, state.c, strict=True):
            if fast:  # (T, N, H): the next layer's input
                (x,), _, (h,), (c,), _ = hmlstm_loop([cell.as_hmlstm_cell()], x, (h,), (c,),
                                                     z0, 1.0, "step", backend=self.backend)
            else:
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
