"""The backward loop driver (BPTT by hand) and the weight gradients.

:func:`run_backward` walks :func:`hmrnn.model.loop.forward.run_forward`'s steps in
reverse, the straight-through gradient of docs/model.md decision 5 included. Per step
and layer (top first) the backend's ``hm_backward`` takes the gradients of the step's
``h``, ``c``, ``z`` to that of ``s``; torch makes the products with the weights; then the
backend's ``hm_spread`` (without layer norm: ``dL/ds [U | U_td | W]``, one product with
the fused weight) or ``hm_terms_backward`` (with layer norm: each term's normalisation
backward, then one product per term) adds their results into the running gradients, in
place. Each weight's gradient is then one matrix product over all steps
(:func:`weight_grads`), as cuDNN does, instead of one per step; in training a large layer
(CPU) makes a gated term's share only on the rows its boundary let in.

The HMLSTM's ``boundary_grad`` (docs/model.md decision 9) needs no backend of its own.
``"hold"``: ``z = COPY z_{t-1} + (1 - COPY) z_bin`` holds its COPY share constant, so the
backend steps read a zero ``z_bin - z_{t-1}``. ``"local"``: held, and each step's
gradient of ``s_z`` is held apart before it is spread: the states and the boundary gates
it would reach get none of it (as if ``s_z`` read constants), and the weight gradients
get all of it (:func:`_weight_grads` adds the boundary row's share of each normalised
term, which the spread left out).

Shape legend: T time, N batch, L layers, H hidden size of the layer, R = 4H + 1 gate rows
(4H in the top layer), K = H + Ha + Hb.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hmrnn.model.loop.backends import Backend, Step, TermGrad
from hmrnn.model.loop.weights import LN_OF, LayerWeights
from hmrnn.model.loop.workspace import Buffers, Workspace, layer_tensors

_layer_norm_backward = torch.ops.aten.native_layer_norm_backward.default


def run_backward(
    weights: list[LayerWeights],
    buf: Buffers,
    slope: float | Tensor,
    grad_h: list[Tensor | None],
    grad_z: Tensor | None,
    grad_c_last: list[Tensor | None],
    backend: Backend,
    *,
    boundary_grad: str = "chain",
) -> tuple[Tensor, list[Tensor], list[Tensor], list[Tensor], list[dict[str, Tensor]]]:
    """BPTT through :func:`hmrnn.model.loop.forward.run_forward`'s steps, in reverse.

    Args:
        buf: what the forward loop kept (``keep=True``), with its ``h`` and ``z``.
        grad_h: per layer, the gradient of ``buf.h`` ``(T+1, N, H)`` (None: zero).
        grad_z: the gradient of ``buf.z`` ``(T+1, N, L)`` (None: zero).
        grad_c_last: per layer, the gradient of the last ``c`` ``(N, H)`` (None: zero).
        backend: the step functions (those the forward loop ran).
        boundary_grad: ``"chain"``, ``"hold"`` or ``"local"`` (above; with ``"local"``
            the bottom layer's detector reaches its input through ``grad_bottom``).

    Returns:
        ``(grad_bottom (T, N, R_1), grad_h0, grad_c0, grad_z0, grad_weights)``: one
        ``(N, H)`` / ``(N, 1)`` tensor per layer for the initial state, and per layer the
        gradient of every tensor :func:`hmrnn.model.loop.weights.layer_weights` read, by
        its name.
    """
    L = len(weights)
    steps = buf.z.shape[0] - 1
    like = buf.h[0]
    N = like.shape[1]
    gh_acc = [like.new_zeros(N, w.hidden_size) for w in weights]
    # the steps add into dL/dc in place: not into the caller's tensor
    gc_acc = [g.clone(memory_format=torch.contiguous_format) if g is not None
              else like.new_zeros(N, w.hidden_size)
              for g, w in zip(grad_c_last, weights, strict=True)]
    grads = [Workspace(w, steps, N, like, grads=True) for w in weights]  # dL/d(what it wrote)
    # with local: per layer with a detector, dL/ds_z of every step (T, N, 1), held apart
    local = boundary_grad == "local"
    held = [like.new_empty(steps, N, 1) if local and l < L - 1 else None for l in range(L)]
    gz_acc = _backward_loop(weights, buf, 0.5 * slope, grad_h, grad_z, gh_acc, gc_acc, grads,
                            backend, boundary_grad != "chain", held)
    for g, kept in zip(grads, held, strict=True):
        if kept is not None:
            g.act[..., -1:] = kept
    grad_h0 = [g if (gh := grad_h[l]) is None else g + gh[0] for l, g in enumerate(gh_acc)]
    grad_z0 = [g if grad_z is None else g + grad_z[0, :, l : l + 1]
               for l, g in enumerate(gz_acc)]
    weight_grads = [_weight_grads(weights, buf, l, grads[l], held[l]) for l in range(L)]
    return grads[0].act, grad_h0, gc_acc, grad_z0, weight_grads


def _backward_loop(
    weights: list[LayerWeights], buf: Buffers, half_slope: float | Tensor,
    grad_h: list[Tensor | None], grad_z: Tensor | None,
    gh_acc: list[Tensor], gc_acc: list[Tensor], grads: list[Workspace], backend: Backend,
    hold: bool, held: list[Tensor | None],
) -> list[Tensor]:
    """:func:`run_backward`'s steps: they update the running gradients ``gh_acc`` and
    ``gc_acc`` (per layer ``(N, H)``) in place, fill ``grads`` and return the gradient of
    each layer's initial ``z`` ``(N, 1)`` so far. Each step function is bound once. With
    ``hold`` the steps read a zero ``z_bin - z_{t-1}``. Where ``held[l]`` is given, each
    step moves its ``dL/ds_z`` there before spreading ``dL/ds`` (``grads[l].act`` then
    holds 0 in that row)."""
    L = len(weights)
    N = gh_acc[0].shape[0]
    gz_acc = [gh_acc[0].new_zeros(N, 1) for _ in range(L)]  # apart: each is returned
    g_x = [gh_acc[0].new_empty(N, sum(w.widths())) if w.ln is None else None for w in weights]
    first: list[Step] = []
    second: list[Step] = []
    grad_z = grad_z.contiguous() if grad_z is not None else None
    for l, w in enumerate(weights):
        work, g_work, s = buf.work[l], grads[l], layer_tensors(buf, l)
        top, bottom = l == L - 1, l == 0
        gh_below, gz_below = (None, None) if bottom else (gh_acc[l - 1], gz_acc[l - 1])
        gh = grad_h[l]
        g_h = gh.contiguous() if gh is not None else None  # (rows adjacent)
        g_z = grad_z[:, :, l : l + 1] if grad_z is not None else None
        H = w.hidden_size
        zdiff = torch.zeros_like(work.zdiff) if hold and work.zdiff is not None else work.zdiff
        first.append(backend.hm_backward(
            N, H, not top, work.act, work.tanh_c, s.c, s.c_prev, work.u, work.diff,
            zdiff, s.z_prev, s.z_below, work.stats("cell"),
            w.norm("cell")[0] if w.ln is not None else None, gh_acc[l],
            g_h[1:] if g_h is not None else None, gc_acc[l], gz_acc[l],
            g_z[1:] if g_z is not None else None, gz_below, g_work.act, g_work.tanh_c,
            gh_acc[l].new_empty(N, 2 * H), half_slope))
        gx = g_x[l]
        if gx is not None:
            _, Ha, Hb = w.widths()
            second.append(backend.hm_spread(
                N, H, Ha, Hb, gx, gh_acc[l], s.h_above, s.z_prev,
                None if top else gh_acc[l + 1], gz_acc[l], s.h_below, s.z_below,
                gh_below, gz_below))
            continue
        terms = []
        for name in ("U", "U_td", "W"):
            key, proj = LN_OF[name], work.proj.get(name)
            stats = work.stats(key)
            terms.append(None if proj is None or stats is None else
                         TermGrad(proj, stats, g_work.proj[name], *w.norm(key)))
        rec, td, bu = terms
        if rec is None:
            raise ValueError("the recurrent term is always present")
        second.append(backend.hm_terms_backward(N, w.rows, g_work.act, s.z_prev, s.z_below,
                                                gz_acc[l], gz_below, rec, td, bu))
    for t in range(buf.z.shape[0] - 2, -1, -1):
        for l in range(L - 1, -1, -1):
            w, g_slot, gx, kept = weights[l], grads[l].slots[t], g_x[l], held[l]
            first[l](t)
            if kept is not None:
                kept[t].copy_(g_slot.act[:, -1:])
                g_slot.act[:, -1:].zero_()
            if gx is not None:  # dL/d[h_prev | z h_above | z_below h_below]
                w.product("fused^T")(g_slot.act, out=gx)
                second[l](t)
                continue
            second[l](t)
            # gh_acc of a layer that can copy holds dL/dh_prev through COPY already
            w.product("U^T")(g_slot.proj["U"], None if l == 0 else gh_acc[l], out=gh_acc[l])
            if l < L - 1:
                w.product("U_td^T")(g_slot.proj["U_td"], gh_acc[l + 1], out=gh_acc[l + 1])
            if l > 0:
                w.product("W^T")(g_slot.proj["W"], gh_acc[l - 1], out=gh_acc[l - 1])
    return gz_acc


def _layer_norm_stats(work: Workspace, key: str) -> tuple[Tensor, Tensor]:
    """Mean and rstd ``(T, N, 1)`` each of normalisation ``key`` for all steps, as the
    forward steps kept them."""
    kept = work.stats(key)
    if kept is None:
        raise ValueError("the forward loop kept no layer-norm statistics")
    return kept[..., :1].contiguous(), kept[..., 1:].contiguous()


def _weight_grads(
    weights: list[LayerWeights], buf: Buffers, l: int, grads: Workspace,
    held: Tensor | None = None,
) -> dict[str, Tensor]:
    """Each weight's gradient as one product over all steps: ``sum_t g_t^T x_t``.

    ``grads`` holds, step by step, the gradients of ``s`` (``act``), of the products
    before normalisation (``proj``) and of ``tanh``'s input (``tanh_c``: ``LN(c)``'s output).
    ``held (T, N, 1)``: the ``dL/ds_z`` the spread left out of ``proj`` (local
    straight-through), whose share each normalised term's weight gets here.
    """
    w, work = weights[l], buf.work[l]
    R, top = w.rows, len(weights) - 1
    gs = grads.act.reshape(-1, R)
    out = {"bias": gs.sum(0)}
    gates = {"U": None, "U_td": buf.z[:-1, :, l : l + 1],  # z_{t-1}, z^{below}_t
             "W": buf.z[1:, :, l - 1 : l] if l > 0 else None}
    if w.ln is None:
        if work.x is None:
            raise ValueError("the forward loop kept no input of the fused product")
        H, Ha, _ = w.widths()
        x = work.x.reshape(-1, work.x.shape[2])  # (T N, K)
        g_fused = None if w.skip_gated else gs.t().mm(x)  # (R, K): one product
        for name, cols in (("U", slice(0, H)), ("U_td", slice(H, H + Ha)),
                           ("W", slice(H + Ha, None))):
            if w.term(name) is not None:
                out[name] = (g_fused[:, cols] if g_fused is not None
                             else _gated_outer(gs, x[:, cols], gates[name]))
        return out
    hidden = {"U": buf.h[l][:-1],  # h_{t-1}
              "U_td": buf.h[l + 1][:-1] if l < top else None,  # h^{above}_{t-1}
              "W": buf.h[l - 1][1:] if l > 0 else None}  # h^{below}_t
    # with held: dL/ds_z in the boundary row, zeros elsewhere (each term gates its copy)
    upstream_z = torch.zeros_like(grads.act) if held is not None else None
    for name, h in hidden.items():
        if h is None:
            continue
        gate = gates[name]
        g_proj = grads.proj[name].reshape(-1, R)
        key = LN_OF[name]
        if held is not None and upstream_z is not None:  # the boundary row's share
            upstream_z[..., -1:] = held if gate is None else held * gate
            g_z, _, _ = _layer_norm_backward(
                upstream_z, work.proj[name], (R,), *_layer_norm_stats(work, key),
                *w.norm(key), [True, False, False])
            g_proj = g_proj + g_z.reshape(-1, R)
        out[name] = _gated_outer(g_proj, h.reshape(-1, h.shape[2]),
                                 gate if w.skip_gated else None)
        upstream = grads.act if gate is None else grads.act * gate
        _, out[f"ln_{key}.weight"], out[f"ln_{key}.bias"] = _layer_norm_backward(
            upstream, work.proj[name], (R,), *_layer_norm_stats(work, key), *w.norm(key),
            [False, True, True],
        )
    _, out["ln_cell.weight"], out["ln_cell.bias"] = _layer_norm_backward(
        grads.tanh_c, buf.c[l][1:], (w.hidden_size,), *_layer_norm_stats(work, "cell"),
        *w.norm("cell"), [False, True, True],
    )
    return out


def _gated_outer(g: Tensor, x: Tensor, gate: Tensor | None) -> Tensor:
    """``sum_n g_n^T x_n`` ``(P, D)`` over ``(M, P)`` and ``(M, D)``, over only the rows
    where ``gate (T, N, 1)`` is not 0 when it is given (those rows of ``g`` or ``x`` are 0
    where it is: a gated term's input or gradient)."""
    if gate is not None:
        rows = gate.reshape(-1).nonzero().view(-1)
        if len(rows) < len(g):
            g, x = g.index_select(0, rows), x.index_select(0, rows)
    return g.t().mm(x)
