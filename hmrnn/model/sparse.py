"""Inference that skips the work of COPY (Chung, Ahn & Bengio 2017, section 3.1).

In COPY a layer keeps ``(h, c, z)`` exactly as they were (docs/model.md decision 3): "we need
not compute any of these values". The dense loops (:mod:`hmrnn.model.loop`, the cell-by-cell
reference) still compute the layer's gates for every row and let the COPY coefficient
discard them. The two paths here do not:

- :func:`sparse_forward`, batched evaluation: at each step, for each layer above the
  bottom one (which never copies), the rows not in COPY are gathered, stepped, and
  scattered back; the others keep their state without a single operation on them. In
  every layer the top-down product is made only on the rows after a boundary of their
  own (FLUSH), the bottom-up one only where the layer below has just ended a segment.
- :class:`hmrnn.model.streaming.StreamingHMLSTM` (re-exported here), generation at batch
  size 1: each layer's operation is known on the host before it runs, so a layer in COPY
  is skipped, and an UPDATE (``z_{t-1} = 0``) leaves out the top-down product, a FLUSH
  with a silent layer below the bottom-up one.

Both run the same step backend as the dense loop (:func:`hmrnn.model.loop.preactivation`
and :func:`hmrnn.model.loop.pointwise`, the backend chosen as ``rnn.backend`` says) and
give the same boundaries and, within float rounding (a product over fewer rows may sum in
another order), the same hidden states.

Training stays dense where the straight-through estimator needs both branches (docs/model.md
decision 5): its gradient reaches ``z_{t-1}`` and ``z^{below}_t`` of a row in COPY
through the COPY coefficient, which multiplies the difference between the kept state and
the state the gates would have written (``h_{t-1} - o tanh(c)``, ``c_{t-1} - c``), and
through the boundary gates of the top-down and bottom-up terms, which multiply the terms
themselves. So the training loop computes every row's gates, and the backward products
``dL/ds U_td`` and ``dL/ds W`` for every row. What it skips (:mod:`hmrnn.model.loop`, large
layers on the CPU) is only what is exactly 0 and read by nobody: a gated term's forward
product on the rows its gate closes (without layer norm; with it the normalised term
itself is the gradient of its gate) and those rows' share in the weight gradients.

Shape legend: T time, N batch, M rows not in COPY, L layers, H_l hidden size of layer l.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hmrnn.model.functional import boundary_in_use
from hmrnn.model.hmlstm import HMLSTM, HMLSTMState, check_state
from hmrnn.model.loop import (
    Backend,
    Buffers,
    LayerWeights,
    inference_weights,
    packing_rows,
    pointwise,
    preactivation,
    scratch_slots,
    select,
)
from hmrnn.model.streaming import StreamingHMLSTM
from hmrnn.model.types import RNNOutput, check_input

__all__ = ["StreamingHMLSTM", "copy_share", "sparse_forward"]


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


@torch.no_grad()
def sparse_forward(
    rnn: HMLSTM,
    input: Tensor,
    state: HMLSTMState | None = None,
    *,
    generator: torch.Generator | None = None,
) -> tuple[RNNOutput, HMLSTMState]:
    """What ``rnn(input, state, generator=generator)`` returns in eval mode, computing only
    rows not in COPY.

    Args:
        rnn: the stack (its ``batch_first``, ``boundary``, ``slope`` and ``backend`` are
            honoured; ``"gumbel"`` runs as ``"step"``, as in eval mode).
        input: ``(T, N, input_size)`` (``(N, T, input_size)`` if ``rnn.batch_first``).
        state: an :class:`HMLSTMState` (or a plain ``(h, c, z)``), or None for zeros; it
            must fit the input and the stack, in the parameters' dtype and on their device
            (:func:`hmrnn.model.hmlstm.check_state`), as must the input: else ``ValueError``.
        generator: random generator for ``boundary="sample"``; the draws are those of the
            dense loop (one per row of the batch), so the samples are the same too.

    Returns:
        ``(output, state)`` as :meth:`HMLSTM.forward`, without gradients.
    """
    if rnn.batch_first and isinstance(input, Tensor):
        input = input.transpose(0, 1)
    check_input(input, rnn.input_size, "sparse_forward", like=rnn.cells[0].W)
    N = input.shape[1]
    state = (rnn.initial_state(N) if state is None
             else check_state(rnn, state, N, name="sparse_forward"))
    cells = rnn.cells
    weights = inference_weights(cells, packing_rows(N, input.shape[0]))
    slope, boundary = rnn.slope_value, boundary_in_use(rnn.boundary, training=False)
    bottom = cells[0].bottom_up(input) + weights[0].bias  # (T, N, R_1)
    backend = select(rnn.backend, bottom, boundary)  # once for the call
    buf = Buffers(weights, state.h, state.c, state.z, input.shape[0], keep=False)
    views = buf.step_views()
    for t, bottom_t in enumerate(bottom.unbind(0)):
        for l in range(len(weights)):
            _sparse_step(weights, views, l, t, bottom_t, slope, boundary, generator, backend)
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
    backend: Backend,
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
    slot = scratch_slots([w], len(h_prev), h_prev)[0]
    preactivation(w, slot, rows(bottom) if l == 0 else w.bias, h_prev, zp,
                  None if top else rows(views[l + 1]["h"][t]), zb,
                  rows(below["h"][t + 1]) if below is not None else None, backend,
                  gated_rows=True)
    if index is None:
        h, c, z = v["h"][t + 1], v["c"][t + 1], None if top else v["z"][t + 1]
    else:
        h, c = torch.empty_like(h_prev), torch.empty_like(c_prev)
        z = None if top else torch.empty_like(zp)
    pointwise(w, slot, backend, h_prev, c_prev, zp, zb, h, c, z, slope, boundary, generator,
              sample_rows=None if index is None else (index, N))
    if index is not None:
        v["h"][t + 1].index_copy_(0, index, h)
        v["c"][t + 1].index_copy_(0, index, c)
        if z is not None:
            v["z"][t + 1].index_copy_(0, index, z)
