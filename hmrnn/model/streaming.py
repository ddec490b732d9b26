"""Inference that skips the work of COPY (Chung, Ahn & Bengio 2017, section 3.1).

In COPY a layer keeps ``(h, c, z)`` exactly as they were (docs/model.md decision 3): "we need
not compute any of these values". The dense loops (:mod:`hmrnn.model.loop.fast`, the cell-by-cell
reference) still compute the layer's gates for every row and let the COPY coefficient
discard them. The two paths here do not:

- :func:`sparse_forward`, batched evaluation: at each step, for each layer above the
  bottom one (which never copies), the rows not in COPY are gathered, stepped, and
  scattered back; the others keep their state without a single operation on them. In
  every layer the top-down product is made only on the rows after a boundary of their
  own (FLUSH), the bottom-up one only where the layer below has just ended a segment.
- :class:`StreamingHMLSTM`, generation at batch size 1: each layer's operation is known
  on the host before it runs, so a layer in COPY is skipped, and an UPDATE (``z_{t-1} =
  0``) leaves out the top-down product, a FLUSH with a silent layer below the bottom-up one.

Both run the same step code as the dense loop (:func:`hmrnn.model.loop.fast.preactivation` and
:func:`hmrnn.model.loop.fast.pointwise`) and give the same boundaries and, within float rounding
(a product over fewer rows may sum in another order), the same hidden states.

Training stays dense where the straight-through estimator needs both branches (docs/model.md
decision 5): its gradient reaches ``z_{t-1}`` and ``z^{below}_t`` of a row in COPY
through the COPY coefficient, which multiplies the difference between the kept state and
the state the gates would have written (``h_{t-1} - o tanh(c)``, ``c_{t-1} - c``), and
through the boundary gates of the top-down and bottom-up terms, which multiply the terms
themselves. So the training loop computes every row's gates, and the backward products
``dL/ds U_td`` and ``dL/ds W`` for every row. What it skips (:mod:`hmrnn.model.loop.fast`, large
layers on the CPU) is only what is exactly 0 and read by nobody: a gated term's forward
product on the rows its gate closes (without layer norm; with it the normalised term
itself is the gradient of its gate) and those rows' share in the weight gradients.

Shape legend: T time, N batch, M rows not in COPY, L layers, H_l hidden size of layer l.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hmrnn.model.hmlstm import HMLSTM, HMLSTMState
from hmrnn.model.loop.fast import (
    Buffers,
    LayerWeights,
    Workspace,
    cell_tensors,
    layer_norm_eps,
    packing_rows,
    pointwise,
    preactivation,
    use_kernel,
    weights_of,
)
from hmrnn.model.types import RNNOutput, check_input


def copy_share(boundary: Tensor, initial: Tensor | None = None) -> Tensor:
    """The share of (step, row) pairs each layer spent in COPY: the work skipped.

    Args:
        boundary: ``(T, N, L)`` boundaries ``z`` of a time-major run (``output.boundary``).
        initial: ``(N, L)`` the boundaries carried in (None: zeros, docs/model.md decision 4).

    Returns:
        ``(L,)``: the mean over steps and rows of ``COPY = (1 - z^l_{t-1})(1 - z^{l-1}_t)``
        (a fraction for ``"soft"`` boundaries); the bottom layer's is 0.
    """
    T, N, L = boundary.shape
    z = boundary.float()
    first = z.new_zeros(1, N, L) if initial is None else initial.float()[None]
    z_prev = torch.cat([first, z[:-1]])
    z_below = torch.cat([z.new_ones(T, N, 1), z[..., :-1]], dim=2)
    return ((1.0 - z_prev) * (1.0 - z_below)).mean(dim=(0, 1))


def _weights(rnn: HMLSTM, rows: int) -> list[LayerWeights]:
    cells = list(rnn.layers)
    names, params = cell_tensors(cells)  # type: ignore[arg-type]
    detached = tuple(p.detach() for p in params)
    return weights_of(names, detached, layer_norm_eps(cells), rows)  # type: ignore[arg-type]


@torch.no_grad()
def sparse_forward(
    rnn: HMLSTM,
    input: Tensor,
    state: HMLSTMState | None = None,
    *,
    generator: torch.Generator | None = None,
) -> tuple[RNNOutput, HMLSTMState]:
    """What ``rnn(input, state, generator=generator)`` returns, computing only rows not in COPY.

    Args:
        rnn: the stack (its ``batch_first``, ``boundary`` and ``slope`` are honoured).
        input: ``(T, N, input_size)`` (``(N, T, input_size)`` if ``rnn.batch_first``).
        state: an :class:`HMLSTMState`, or None for zeros.
        generator: random generator for ``boundary="sample"``; the draws are those of the
            dense loop (one per row of the batch), so the samples are the same too.

    Returns:
        ``(output, state)`` as :meth:`HMLSTM.forward`, without gradients.
    """
    if rnn.batch_first:
        input = input.transpose(0, 1)
    check_input(input, rnn.input_size, "HMLSTM")
    N = input.shape[1]
    if state is None:
        state = rnn.initial_state(N)
    weights = _weights(rnn, packing_rows(N, input.shape[0]))
    slope, boundary = rnn.slope_value, rnn.boundary
    bottom = rnn.layers[0].bottom_up(input) + weights[0].bias  # (T, N, R_1)
    buf = Buffers(weights, state.h, state.c, state.z, input.shape[0], keep=False,
                  kernel=use_kernel(bottom, boundary))
    views = buf.step_views()
    for t, bottom_t in enumerate(bottom.unbind(0)):
        for l in range(len(weights)):
            _sparse_step(weights, views, l, t, bottom_t, slope, boundary, generator)
    hidden = tuple(h[1:] for h in buf.h)
    boundaries = buf.z[1:]
    if rnn.batch_first:
        hidden = tuple(h.transpose(0, 1) for h in hidden)
        boundaries = boundaries.transpose(0, 1)
    last = HMLSTMState(
        tuple(h[-1].clone() for h in buf.h), tuple(c[-1].clone() for c in buf.c),
        tuple(buf.z[-1, :, l : l + 1].clone() for l in range(len(weights))),
    )
    return RNNOutput(hidden, boundaries), last


def _sparse_step(
    weights: list[LayerWeights], views: list[dict[str, list[Tensor]]], l: int, t: int,
    bottom: Tensor, slope: float, boundary: str, generator: torch.Generator | None,
) -> None:
    """Layer ``l``'s step ``t`` on the rows not in COPY (the others keep their state), its
    top-down and bottom-up products on the rows whose boundaries let them in."""
    w, v = weights[l], views[l]
    below = views[l - 1] if l > 0 else None
    top = l == len(weights) - 1
    z_prev = v["z"][t]  # (N, 1)
    z_below = below["z"][t + 1] if below is not None else None
    N = z_prev.shape[0]
    index = None  # all rows: the bottom layer never copies
    if z_below is not None:
        index = ((z_prev != 0) | (z_below != 0)).view(-1).nonzero().view(-1)  # (M,)
        if len(index) == N:
            index = None
        else:
            for name in ("h", "c", "z"):  # COPY keeps the state as it is (docs/model.md decision 3)
                v[name][t + 1].copy_(v[name][t])
            if len(index) == 0:
                if boundary == "sample" and not top:  # the dense loop's draws, to keep in step
                    torch.bernoulli(z_prev.new_zeros(N, 1), generator=generator)
                return

    def rows(x: Tensor) -> Tensor:
        return x if index is None else x.index_select(0, index)

    h_prev, c_prev, zp = rows(v["h"][t]), rows(v["c"][t]), rows(z_prev)
    zb = rows(z_below) if z_below is not None else None
    slot = Workspace(w, 1, len(h_prev), h_prev, fused=False,
                     kernel=use_kernel(h_prev, boundary)).slots[0]
    preactivation(w, slot, rows(bottom) if l == 0 else w.bias, h_prev, zp,
                  None if top else rows(views[l + 1]["h"][t]), zb,
                  rows(below["h"][t + 1]) if below is not None else None, gated_rows=True)
    if index is None:
        h, c, z = v["h"][t + 1], v["c"][t + 1], None if top else v["z"][t + 1]
    else:
        h, c = torch.empty_like(h_prev), torch.empty_like(c_prev)
        z = None if top else torch.empty_like(zp)
    pointwise(w, slot, h_prev, c_prev, zp, zb, h, c, z, slope, boundary, generator,
              sample_rows=None if index is None else (index, N))
    if index is not None:
        v["h"][t + 1].index_copy_(0, index, h)
        v["c"][t + 1].index_copy_(0, index, c)
        if z is not None:
            v["z"][t + 1].index_copy_(0, index, z)


class StreamingHMLSTM:
    """Run an :class:`HMLSTM` one step at a time at batch size 1, skipping COPY's work.

    The weights are read once, when the stream is made (make a new one after training
    further). Each layer's operation is decided on the host from the boundaries of the
    step before: COPY does nothing, UPDATE leaves the top-down product out, FLUSH with a
    silent layer below leaves the bottom-up product out.

    Args:
        rnn: the stack; its ``boundary`` and ``slope`` are used.
        state: the state to start from (batch size 1), or None for zeros.
        generator: random generator for ``boundary="sample"``.

    Example::

        >>> rnn = HMLSTM(input_size=16, hidden_size=[32, 32, 24], num_layers=3).eval()
        >>> stream = StreamingHMLSTM(rnn)
        >>> hidden, z = stream.step(torch.randn(1, 16))
        >>> [tuple(h.shape) for h in hidden], tuple(z.shape)
        ([(1, 32), (1, 32), (1, 24)], (1, 3))
    """

    def __init__(
        self,
        rnn: HMLSTM,
        state: HMLSTMState | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        self.rnn = rnn
        self.generator = generator
        self.slope = rnn.slope_value
        with torch.no_grad():
            self.weights = _weights(rnn, 1)  # packed: a stream runs many steps
        like = rnn.layers[0].W
        # term by term (no fused input), so that absent terms are left out
        kernel = use_kernel(like, rnn.boundary)
        self._slots = [Workspace(w, 1, 1, like, fused=False, kernel=kernel).slots[0]
                       for w in self.weights]
        state = state if state is not None else rnn.initial_state(1)
        if state.h[0].shape[0] != 1:
            raise ValueError(
                f"StreamingHMLSTM runs at batch size 1, got a state of batch size "
                f"{state.h[0].shape[0]}"
            )
        self.h, self.c, self.z = list(state.h), list(state.c), list(state.z)
        self._z = [float(z) for z in state.z]  # on the host: which operation comes next
        self.computed = [0] * rnn.num_layers  # steps each layer was not in COPY

    @property
    def state(self) -> HMLSTMState:
        """The current state, as :meth:`HMLSTM.forward` would return it."""
        return HMLSTMState(tuple(self.h), tuple(self.c), tuple(self.z))

    @torch.no_grad()
    def step(self, input: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
        """One step.

        Args:
            input: ``(1, input_size)``, this step's ``x_t``.

        Returns:
            ``hidden``: ``L`` tensors ``(1, H_l)``; ``z``: ``(1, L)``, every layer's boundary.
        """
        w0 = self.weights[0]
        bottom = self.rnn.layers[0].bottom_up(input) + w0.bias  # (1, R_1)
        L = len(self.weights)
        for l, w in enumerate(self.weights):
            fired_below = 1.0 if l == 0 else self._z[l - 1]
            flush = self._z[l] != 0.0
            top = l == L - 1
            if not flush and fired_below == 0.0:  # COPY
                if self.rnn.boundary == "sample" and not top:  # keep the dense loop's draws
                    torch.bernoulli(self.z[l].new_zeros(1, 1), generator=self.generator)
                continue
            slot = self._slots[l]
            z_below = None if l == 0 else self.z[l - 1]
            h_below = None if l == 0 or fired_below == 0.0 else self.h[l - 1]
            preactivation(w, slot, bottom if l == 0 else w.bias, self.h[l], self.z[l],
                          None if top or not flush else self.h[l + 1], z_below, h_below)
            h, c = torch.empty_like(self.h[l]), torch.empty_like(self.c[l])
            z = None if top else torch.empty_like(self.z[l])
            pointwise(w, slot, self.h[l], self.c[l], self.z[l], z_below, h, c, z, self.slope,
                      self.rnn.boundary, self.generator)
            self.h[l], self.c[l] = h, c
            if z is not None:
                self.z[l] = z
                self._z[l] = float(z)
            self.computed[l] += 1
        return tuple(self.h), torch.cat(self.z, dim=1)
