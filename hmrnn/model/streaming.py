"""Generation one step at a time at batch size 1, skipping COPY's work (Chung, Ahn &
Bengio 2017, section 3.1; docs/model.md decision 3).

At batch size 1 each layer's operation is known on the host before it runs: a layer in
COPY is skipped, an UPDATE (``z_{t-1} = 0``) leaves out the top-down product, a FLUSH with
a silent layer below the bottom-up one. The step is the dense loop's
(:func:`hmrnn.model.loop.preactivation` and :func:`hmrnn.model.loop.pointwise`, on the
backend ``rnn.backend`` names), so the boundaries are the same and, within float rounding,
the hidden states. Batched evaluation that skips COPY is :mod:`hmrnn.model.sparse`.

Shape legend: L layers, H_l hidden size of layer l.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hmrnn.model.functional import boundary_in_use
from hmrnn.model.hmlstm import HMLSTM, HMLSTMState, check_state
from hmrnn.model.loop import inference_weights, pointwise, preactivation, scratch_slots, select
from hmrnn.model.types import check_like


class StreamingHMLSTM:
    """Run an :class:`HMLSTM` one step at a time at batch size 1, skipping COPY's work.

    The weights are read once, when the stream is made (make a new one after training
    further). Each layer's operation is decided on the host from the boundaries of the
    step before: COPY does nothing, UPDATE leaves the top-down product out, FLUSH with a
    silent layer below leaves the bottom-up product out.

    Args:
        rnn: the stack; its ``boundary`` (``"gumbel"`` runs as ``"step"``, as in eval
            mode), ``slope`` and ``backend`` are used (the backend is chosen once, here).
        state: the state to start from (batch size 1: ``L`` tensors ``(1, H_l)``,
            ``(1, H_l)``, ``(1, 1)`` in the parameters' dtype, on their device), or None for
            zeros; a state that does not fit raises ``ValueError``
            (:func:`hmrnn.model.hmlstm.check_state`).
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
        if state is None:
            state = rnn.initial_state(1)
        else:  # one batch size throughout, then that it is 1
            state = check_state(rnn, state, None, name="StreamingHMLSTM")
            if state.h[0].shape[0] != 1:
                raise ValueError(
                    f"StreamingHMLSTM runs at batch size 1, got a state of batch size "
                    f"{state.h[0].shape[0]}"
                )
        self.rnn = rnn
        self.generator = generator
        self.slope = rnn.slope_value
        self._cells = rnn.cells
        with torch.no_grad():
            self.weights = inference_weights(self._cells, 1)  # packed: a stream runs many steps
        like = self._cells[0].W
        self.boundary = boundary_in_use(rnn.boundary, training=False)
        self.backend = select(rnn.backend, like, self.boundary)
        # term by term (no fused input), so that absent terms are left out
        self._slots = scratch_slots(self.weights, 1, like)
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
            input: ``(1, input_size)``, this step's ``x_t``, in the parameters' dtype and
                on their device (else ``ValueError``).

        Returns:
            ``hidden``: ``L`` tensors ``(1, H_l)``; ``z``: ``(1, L)``, every layer's boundary.
        """
        if not isinstance(input, Tensor) or tuple(input.shape) != (1, self.rnn.input_size):
            got = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
            raise ValueError(f"StreamingHMLSTM.step takes one step's input of shape "
                             f"(1, {self.rnn.input_size}), got {got}")
        check_like(input, self._cells[0].W, "the input", "StreamingHMLSTM")
        w0 = self.weights[0]
        bottom = self._cells[0].bottom_up(input) + w0.bias  # (1, R_1)
        L = len(self.weights)
        for l, w in enumerate(self.weights):
            fired_below = 1.0 if l == 0 else self._z[l - 1]
            flush = self._z[l] != 0.0
            top = l == L - 1
            if not flush and fired_below == 0.0:  # COPY
                if self.boundary == "sample" and not top:  # keep the dense loop's draws
                    torch.bernoulli(self.z[l].new_zeros(1, 1), generator=self.generator)
                continue
            slot = self._slots[l]
            z_below = None if l == 0 else self.z[l - 1]
            h_below = None if l == 0 or fired_below == 0.0 else self.h[l - 1]
            preactivation(w, slot, bottom if l == 0 else w.bias, self.h[l], self.z[l],
                          None if top or not flush else self.h[l + 1], z_below, h_below,
                          self.backend)
            h, c = torch.empty_like(self.h[l]), torch.empty_like(self.c[l])
            z = None if top else torch.empty_like(self.z[l])
            pointwise(w, slot, self.backend, self.h[l], self.c[l], self.z[l], z_below, h, c, z,
                      self.slope, self.boundary, self.generator)
            self.h[l], self.c[l] = h, c
            if z is not None:
                self.z[l] = z
                self._z[l] = float(z)
            self.computed[l] += 1
        return tuple(self.h), torch.cat(self.z, dim=1)
