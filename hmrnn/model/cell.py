"""One step of one HM-LSTM layer: the equations of docs/model.md, and nothing else.

The time loop (``hmrnn.model.hmlstm``) and any faster loop call this cell; none of them
re-writes its arithmetic.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from hmrnn.model.functional import binarize, hard_sigmoid, logistic_noise
from hmrnn.model.types import factory_kwargs


class LayerState(NamedTuple):
    """State of one layer: ``h (N, H)``, ``c (N, H)``, ``z (N, 1)``."""

    h: Tensor
    c: Tensor
    z: Tensor


# Initial layer-norm gains (docs/model.md decision 7). With gains 1 the gradient at
# initialisation grows by a factor of about 20-100 per step along the loops through the
# normalised terms (LN's Jacobian is gain / std of its input, and the unnormalised terms are
# 0.01-0.06 at initialisation): 1e14-1e22 times the no-LN model's at T = 100. With the
# terms' gains at 0.01 it stays within 1.6-3.3x for every draw measured
# (scripts/ln_init_study.py); the boundary units then start close to their biases, where
# boundary-rate control (decision 9) steers them best (docs/hierarchy.md).
LN_GAINS = {"recurrent": 0.01, "top_down": 0.01, "bottom_up": 0.01, "cell": 1.0}


class HMLSTMCell(nn.Module):
    r"""One HM-LSTM layer for one time step (Chung et al. 2017, Eq. 2-10; docs/model.md).

    .. math::
        s = U h_{t-1} + z_{t-1} U_{td} h^{above}_{t-1} + z^{below}_t W h^{below}_t + b

        f, i, o = \sigma(s_f, s_i, s_o), \quad g = \tanh(s_g), \quad
        \tilde z = \mathrm{hardsigm}_a(s_z)

    and UPDATE / COPY / FLUSH selected by ``z_{t-1}`` and ``z^{below}_t``:
    ``COPY = (1-z_{t-1})(1-z^{below}_t)``, ``UPDATE = (1-z_{t-1}) z^{below}_t``,
    ``FLUSH = z_{t-1}``; COPY keeps ``(h, c, z)`` as they are (docs/model.md decision 3).

    Args:
        input_size: ``Hb``, size of the layer below (the embedding for the bottom layer).
        hidden_size: ``H``.
        above_size: ``Ha``, size of the layer above; ``None`` for the top layer, which has
            no top-down input and no boundary detector (its ``z`` is always 0).
        layer_norm: normalise each of the three terms of ``s`` over its whole row vector,
            and ``c`` before the output ``tanh`` (docs/model.md decision 7).
        boundary_ln_gain: with layer norm, the initial gain of row z in the three terms'
            norms (None: :data:`LN_GAINS`' 0.01, as every row): a spread of the boundary
            detector's pre-activation from the first step (docs/model.md decision 9).

    Parameters (rows ordered f, i, o, g, z; ``R = 4H + 1``, or ``4H`` in the top layer):
        ``W (R, Hb)``, ``U (R, H)``, ``U_td (R, Ha)`` (not in the top layer), ``bias (R,)``;
        with layer norm, ``ln_bottom_up``, ``ln_recurrent``, ``ln_top_down`` (each over R)
        and ``ln_cell`` (over H).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        above_size: int | None,
        *,
        layer_norm: bool = False,
        boundary_ln_gain: float | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        kw = factory_kwargs(device, dtype)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.above_size = above_size
        self.has_boundary = above_size is not None
        self.layer_norm = layer_norm
        if boundary_ln_gain is not None and not (layer_norm and boundary_ln_gain > 0):
            raise ValueError(f"boundary_ln_gain needs layer_norm=True and a gain > 0, got "
                             f"{boundary_ln_gain!r} with layer_norm={layer_norm}")
        self.boundary_ln_gain = boundary_ln_gain
        rows = 4 * hidden_size + (1 if self.has_boundary else 0)
        self.W = nn.Parameter(torch.empty(rows, input_size, **kw))
        self.U = nn.Parameter(torch.empty(rows, hidden_size, **kw))
        self.U_td = (
            nn.Parameter(torch.empty(rows, above_size, **kw)) if above_size is not None else None
        )
        self.bias = nn.Parameter(torch.empty(rows, **kw))
        if layer_norm:
            self.ln_bottom_up = nn.LayerNorm(rows, **kw)
            self.ln_recurrent = nn.LayerNorm(rows, **kw)
            if self.has_boundary:
                self.ln_top_down = nn.LayerNorm(rows, **kw)
            self.ln_cell = nn.LayerNorm(hidden_size, **kw)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform(-1/sqrt(H), 1/sqrt(H)) for every weight and bias, as torch's LSTM does;
        layer-norm biases 0 and gains from :data:`LN_GAINS` (docs/model.md decision 7), row
        z of the terms' gains ``boundary_ln_gain`` where given."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for name in ("W", "U", "U_td", "bias"):
            p = getattr(self, name)
            if p is not None:
                nn.init.uniform_(p, -bound, bound)
        if self.layer_norm:
            for key, gain in LN_GAINS.items():
                norm = getattr(self, f"ln_{key}", None)
                if norm is not None:
                    nn.init.constant_(norm.weight, gain)
                    nn.init.zeros_(norm.bias)
                    if key != "cell" and self.has_boundary and self.boundary_ln_gain:
                        with torch.no_grad():  # row z: the detector's spread (decision 9)
                            norm.weight[-1] = self.boundary_ln_gain

    def extra_repr(self) -> str:
        """``input_size, hidden_size``, then ``above_size`` (absent in the top layer) and
        ``layer_norm`` when on."""
        s = f"{self.input_size}, {self.hidden_size}"
        s += f", above_size={self.above_size}" if self.above_size is not None else ""
        return s + (", layer_norm=True" if self.layer_norm else "")

    def _preactivation(self, bottom_up: Tensor, z_below: Tensor, h_above: Tensor | None,
                       h_prev: Tensor, z_prev: Tensor) -> Tensor:
        """``s`` of Eq. 5-7 with the bias, ``(N, R)``."""
        recurrent = F.linear(h_prev, self.U)
        if self.layer_norm:
            recurrent = self.ln_recurrent(recurrent)
        s = recurrent + z_below * bottom_up  # Eq. 5 + Eq. 7
        if self.U_td is not None:
            assert h_above is not None
            top_down = F.linear(h_above, self.U_td)
            if self.layer_norm:
                top_down = self.ln_top_down(top_down)
            s = s + z_prev * top_down  # Eq. 6: only after this layer's own boundary
        return s + self.bias

    def bottom_up(self, h_below: Tensor) -> Tensor:
        """``W h^{below}`` (normalised when ``layer_norm``): ``(*, Hb) -> (*, R)``.

        Separate from :meth:`forward` so that a loop can compute it for the whole
        sequence at once in the bottom layer, whose input is known in advance.
        """
        s = F.linear(h_below, self.W)
        return self.ln_bottom_up(s) if self.layer_norm else s

    def forward(
        self,
        bottom_up: Tensor,
        z_below: Tensor,
        h_above: Tensor | None,
        state: LayerState,
        slope: Tensor | float,
        boundary: str = "step",
        generator: torch.Generator | None = None,
        detector_input: Tensor | None = None,
        hold_copy: bool = False,
        given: Tensor | None = None,
    ) -> LayerState:
        """One step.

        Args:
            bottom_up: ``W h^{below}_t`` from :meth:`bottom_up`, ``(N, R)``.
            z_below: ``z^{below}_t``, ``(N, 1)`` (ones for the bottom layer).
            h_above: ``h^{above}_{t-1}``, ``(N, Ha)``; ``None`` in the top layer.
            state: this layer's ``(h, c, z)`` at ``t-1``.
            slope: the hard sigmoid's slope ``a``.
            boundary: ``"step"``, ``"sample"``, ``"soft"`` or ``"gumbel"`` (docs/model.md
                decision 5; the cell draws ``"gumbel"``'s noise whenever it is asked to).
            generator: random generator for ``"sample"`` and ``"gumbel"``.
            detector_input: ``boundary_grad="local"`` (docs/model.md decision 9):
                ``bottom_up`` computed from a detached ``h^{below}`` (in the bottom layer,
                ``bottom_up`` itself). The boundary unit's ``s_z`` is then recomputed from
                detached states (``h``, ``z`` of this layer and the ones beside it), so
                that its gradient reaches the detector's weights but no earlier state.
            hold_copy: ``boundary_grad="hold"`` or ``"local"``: ``z = COPY z_{t-1} + (1 -
                COPY) z_new`` holds its COPY share constant, so that COPY passes ``z``'s
                gradient on as it passes ``z``.
            given: ``(N, 1)`` of 0, 1 or NaN: a boundary given from outside, taken in
                place of the detector's where it is not NaN (``z = COPY z_{t-1} + (1 -
                COPY) given``); there the detector is not read, so it gets no gradient.

        Returns:
            the layer's ``(h, c, z)`` at ``t``.
        """
        h_prev, c_prev, z_prev = state
        s = self._preactivation(bottom_up, z_below, h_above, h_prev, z_prev)  # (N, R)
        if detector_input is not None and self.has_boundary:
            assert h_above is not None
            s_z = self._preactivation(detector_input, z_below.detach(), h_above.detach(),
                                      h_prev.detach(), z_prev.detach())[:, -1:]
            s = torch.cat([s[:, :-1], s_z], dim=1)
        H = self.hidden_size
        f = torch.sigmoid(s[:, :H])
        i = torch.sigmoid(s[:, H : 2 * H])
        o = torch.sigmoid(s[:, 2 * H : 3 * H])
        g = torch.tanh(s[:, 3 * H : 4 * H])

        copy = (1.0 - z_prev) * (1.0 - z_below)  # (N, 1)
        update = (1.0 - z_prev) * z_below
        flush = z_prev
        ig = i * g
        c = update * (f * c_prev + ig) + copy * c_prev + flush * ig  # Eq. 2
        c_out = self.ln_cell(c) if self.layer_norm else c
        h = copy * h_prev + (1.0 - copy) * (o * torch.tanh(c_out))  # Eq. 3
        if self.has_boundary:
            s_z = s[:, 4 * H :]  # (N, 1)
            noise = logistic_noise(s_z, generator) if boundary == "gumbel" else None
            z_tilde = hard_sigmoid(s_z, slope, noise)  # Eq. 10
            z_new = binarize(z_tilde, boundary, generator)
            if given is not None:
                z_new = torch.where(given.isnan(), z_new, given)
            kept = copy.detach() if hold_copy else copy
            z = kept * z_prev + (1.0 - kept) * z_new
        else:
            z = torch.zeros_like(z_prev)  # docs/model.md decision 2
        return LayerState(h, c, z)
