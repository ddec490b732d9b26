"""The loop as one call: the backend chosen, the autograd node, :func:`hmlstm_loop`.

:func:`hmlstm_loop` computes what :class:`hmrnn.model.hmlstm.HMLSTM` does over a sequence
(the equations of :class:`hmrnn.model.cell.HMLSTMCell`, docs/model.md), arranged for
speed: the bottom layer's input term ``W x_t`` (with its layer norm) is computed for all
steps at once, before the loop, by autograd; the step backend is chosen once
(:func:`hmrnn.model.loop.backends.select`); under autograd the whole sequence is one node,
:class:`HMLSTMFunction`, whose backward is :func:`hmrnn.model.loop.backward.run_backward`.

Shape legend: T time, N batch, L layers, D input size, H_l hidden size of layer l,
R_1 = 4 H_1 + 1 gate rows of the bottom layer.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from hmrnn.model.cell import HMLSTMCell
from hmrnn.model.loop.backends import Backend, select
from hmrnn.model.loop.backward import run_backward
from hmrnn.model.loop.forward import run_forward
from hmrnn.model.loop.weights import cell_tensors, layer_norm_eps, packing_rows, weights_of


class Spec(NamedTuple):
    """The non-tensor arguments of one call: per-layer tensor names, the step's knobs, and
    the backend chosen for the call."""

    names: tuple[tuple[str, ...], ...]
    eps: float
    slope: float
    boundary: str
    generator: torch.Generator | None
    backend: Backend


class HMLSTMFunction(torch.autograd.Function):
    """The whole sequence as one autograd node: :func:`run_forward`, :func:`run_backward`.

    Inputs: ``spec, bottom (T, N, R_1), *h0, *c0, *z0, *params`` (``bottom`` is the bottom
    layer's ``W x`` without its bias). Outputs: ``L`` tensors ``h (T+1, N, H_l)`` (index 0
    the initial state), ``z (T+1, N, L)``, and the last ``c`` of each layer ``(N, H_l)``.
    """

    @staticmethod
    def forward(ctx: Any, spec: Spec, bottom: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:
        L = len(spec.names)
        h0, c0, z0 = tensors[:L], tensors[L : 2 * L], tensors[2 * L : 3 * L]
        weights = weights_of(spec.names, tensors[3 * L :], spec.eps,
                             packing_rows(bottom.shape[1], bottom.shape[0]))
        buf = run_forward(weights, bottom + weights[0].bias, h0, c0, z0, spec.slope,
                          spec.boundary, spec.generator, keep=True, backend=spec.backend)
        ctx.set_materialize_grads(False)
        ctx.spec, ctx.weights, ctx.buf = spec, weights, buf
        ctx.save_for_backward(*buf.h, buf.z)  # outputs: saved this way, not on ctx (a cycle)
        h, z = buf.h, buf.z
        buf.h, buf.z = [], z.new_empty(0)
        return (*h, z, *(c[-1].clone() for c in buf.c))

    @staticmethod
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        if torch.is_grad_enabled():  # create_graph=True: the hand-written backward has no graph
            raise RuntimeError(
                "the fast HM-LSTM loop is differentiable once only; for higher-order "
                "gradients set the HMLSTM's fast = False"
            )
        spec, weights, buf = ctx.spec, ctx.weights, ctx.buf
        L = len(spec.names)
        saved = [t.detach() for t in ctx.saved_tensors]  # views of these are made cheaply
        buf.h, buf.z = saved[:L], saved[L]
        with torch.autocast(saved[L].device.type, enabled=False):  # as its forward ran
            g_bottom, g_h0, g_c0, g_z0, g_weights = run_backward(
                weights, buf, spec.slope, list(grads[:L]), grads[L], list(grads[L + 1 :]),
                spec.backend,
            )
        g_params = [g[name] for names, g in zip(spec.names, g_weights, strict=True)
                    for name in names]
        return (None, g_bottom, *g_h0, *g_c0, *g_z0, *g_params)


def hmlstm_loop(
    cells: list[HMLSTMCell],
    input: Tensor,
    h0: tuple[Tensor, ...],
    c0: tuple[Tensor, ...],
    z0: tuple[Tensor, ...],
    slope: float,
    boundary: str,
    generator: torch.Generator | None = None,
    backend: str = "auto",
) -> tuple[tuple[Tensor, ...], Tensor, tuple[Tensor, ...], tuple[Tensor, ...], tuple[Tensor, ...]]:
    """Run the stack over a sequence: what :meth:`hmrnn.model.hmlstm.HMLSTM.forward` computes.

    Args:
        cells: the stack's layers, bottom first.
        input: ``(T, N, D)``.
        h0, c0, z0: the initial state, ``L`` tensors ``(N, H_l)``, ``(N, H_l)``, ``(N, 1)``.
        slope: the hard sigmoid's slope ``a``.
        boundary: ``"step"``, ``"sample"`` or ``"soft"``.
        generator: random generator for ``boundary="sample"``.
        backend: the step backend, ``"auto"``, ``"aten"`` or ``"cpu"``
            (:func:`hmrnn.model.loop.backends.select`), chosen here for the whole call.

    Returns:
        ``hidden`` (``L`` tensors ``(T, N, H_l)``), ``boundary (T, N, L)``, and the last
        ``h``, ``c``, ``z`` of every layer. Differentiable in the input, the initial state
        and every parameter when autograd is on, once: a backward pass with
        ``create_graph=True`` raises ``RuntimeError``.
    """
    names, params = cell_tensors(cells)
    bottom = cells[0].bottom_up(input)  # (T, N, R_1): the input is known in advance
    spec = Spec(names, layer_norm_eps(cells), slope, boundary, generator,
                select(backend, bottom, boundary))
    L = len(cells)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (bottom, *h0, *c0, *z0, *params)):
        out = HMLSTMFunction.apply(spec, bottom, *h0, *c0, *z0, *params)
        h_all, z_all, c_last = out[:L], out[L], out[L + 1 :]
    else:
        with torch.no_grad():
            weights = weights_of(names, params, spec.eps, packing_rows(*input.shape[1::-1]))
            buf = run_forward(weights, bottom + weights[0].bias, h0, c0, z0, slope, boundary,
                              generator, keep=False, backend=spec.backend)
        h_all, z_all, c_last = buf.h, buf.z, tuple(c[-1].clone() for c in buf.c)
    hidden = tuple(h[1:] for h in h_all)
    h_last = tuple(h[-1].clone() for h in h_all)
    z_last = tuple(z_all[-1, :, l : l + 1].clone() for l in range(L))
    return hidden, z_all[1:], h_last, tuple(c_last), z_last
