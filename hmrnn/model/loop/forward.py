"""The forward loop driver, and the step pieces the sparse paths share with it.

Per step and layer (bottom first), the driver makes ``s`` (Eq. 5-7 plus the bias,
docs/model.md) and then runs the backend's :meth:`~hmrnn.model.loop.backends.Backend.hm_forward`:

- without layer norm, the backend's ``hm_gather`` writes ``x = [h_{t-1} | z_{t-1}
  h^{above}_{t-1} | z^{below}_t h^{below}_t]`` and one product with the fused weight
  ``[U | U_td | W]`` makes all three terms (the boundary scales the input rows instead of
  the output rows: the same product); in training a large layer (CPU) makes a gated
  term's product only on the rows its boundary lets in (:func:`gated_products`);
- with layer norm each term is normalised on its own, so the three products are made
  apart (:func:`term_products`) and the backend's ``hm_terms_forward`` normalises and
  adds them.

The products are torch's, here, whatever the backend. The inference loop computes every
row and every term: the dense path that :mod:`hmrnn.model.sparse` is measured against.
:func:`preactivation` and :func:`pointwise` are one step on a :class:`Slot` of any rows,
for the sparse paths.

Shape legend: T time, N batch, M rows, H hidden size of the layer, R = 4H + 1 gate rows
(4H in the top layer), K = H + Ha + Hb.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hmrnn.model.loop.backends import Backend, Step, Term
from hmrnn.model.loop.weights import LN_OF, LayerWeights
from hmrnn.model.loop.workspace import Buffers, Slot, Workspace, layer_tensors


def terms_of(w: LayerWeights, proj: dict[str, Tensor], stats: dict[str, Tensor],
             present: set[str] | None = None) -> tuple[Term, Term | None, Term | None]:
    """The recurrent, top-down and bottom-up :class:`Term` of ``hm_terms_forward`` from
    per-term products and per-normalisation statistics (a term not ``present``: None)."""
    out = []
    for name in ("U", "U_td", "W"):
        key = LN_OF[name]
        ok = name in proj and (present is None or name in present)
        out.append(Term(proj[name], stats[key], *w.norm(key)) if ok else None)
    rec, td, bu = out
    if rec is None:
        raise ValueError("the recurrent term is always present")
    return rec, td, bu


def _cell_norm(w: LayerWeights) -> tuple[Tensor | None, Tensor | None]:
    """The cell normalisation's ``(weight, bias)``, or Nones without layer norm."""
    return w.norm("cell") if w.ln is not None else (None, None)


def run_forward(
    weights: list[LayerWeights],
    bottom: Tensor,
    h0: tuple[Tensor, ...],
    c0: tuple[Tensor, ...],
    z0: tuple[Tensor, ...],
    slope: float | Tensor,
    boundary: str,
    generator: torch.Generator | None,
    keep: bool,
    backend: Backend,
) -> Buffers:
    """The dense loop: every layer, every row, every step.

    Args:
        bottom: ``W x_t + bias`` of the bottom layer for all steps, ``(T, N, R_1)``.
        h0, c0, z0: the initial state, ``L`` tensors ``(N, H_l)``, ``(N, H_l)``, ``(N, 1)``.
        keep: keep what the backward pass needs (every step's workspace).
        backend: the step functions, bound here once per layer.
    """
    steps, N = bottom.shape[:2]
    L = len(weights)
    buf = Buffers(weights, h0, c0, z0, steps, keep)
    views = buf.step_views()
    fwd: list[Step] = []
    before: list[Step] = []  # per layer: hm_gather, or hm_terms_forward
    for l, w in enumerate(weights):
        work, s = buf.work[l], layer_tensors(buf, l)
        ln_w, ln_b = _cell_norm(w)
        fwd.append(backend.hm_forward(
            N, w.hidden_size, s.z is not None, boundary, work.act, s.h_prev, s.c_prev,
            s.z_prev, s.z_below, s.h, s.c, s.z, work.tanh_c, work.u, work.zbin, work.diff,
            work.zdiff, work.stats("cell"), ln_w, ln_b, slope, w.eps, generator))
        if w.ln is None:
            H, Ha, Hb = w.widths()
            if work.x is None:
                raise ValueError("the dense loop needs the fused product's input")
            before.append(backend.hm_gather(N, H, Ha, Hb, work.x, s.h_prev, s.h_above,
                                            s.z_prev, s.h_below, s.z_below))
            continue
        stats = {key: st for key in LN_OF.values() if (st := work.stats(key)) is not None}
        before.append(backend.hm_terms_forward(
            N, w.rows, work.act, bottom if l == 0 else w.bias, s.z_prev, s.z_below,
            *terms_of(w, work.proj, stats), w.eps))
    for t in range(steps):
        for l, w in enumerate(weights):
            v, slot = views[l], buf.work[l].slots[t if keep else 0]
            above = views[l + 1]["h"][t] if l < L - 1 else None
            below = views[l - 1] if l > 0 else None
            if w.ln is not None:
                term_products(w, slot, v["h"][t], above,
                              below["h"][t + 1] if below is not None else None)
                before[l](t)
            else:
                before[l](t)
                base = bottom[t] if l == 0 else w.bias
                if w.skip_gated and keep:  # the gated terms' products on their rows only
                    gated_products(w, slot, base, v["h"][t], v["z"][t],
                                   below["z"][t + 1] if below is not None else None)
                elif slot.x is not None:
                    w.product("fused")(slot.x, base, out=slot.act)  # one product
            fwd[l](t)
    return buf


def term_products(
    w: LayerWeights, slot: Slot, h_prev: Tensor, h_above: Tensor | None,
    h_below: Tensor | None,
) -> set[str]:
    """Each layer-normalised term's product before normalisation into ``slot.proj``, for
    the terms with an input (None: the term is left out); returns their names."""
    present = set()
    for name, h in (("U", h_prev), ("U_td", h_above), ("W", h_below)):
        if h is not None and w.term(name) is not None:
            w.product(name)(h, out=slot.proj[name])
            present.add(name)
    return present


def gated_products(w: LayerWeights, slot: Slot, base: Tensor, h_prev: Tensor,
                   z_prev: Tensor, z_below: Tensor | None) -> None:
    """``s`` into ``slot.act`` from the gathered input ``slot.xs`` (without layer norm),
    the gated terms' products made only on the rows their boundaries let in (the other
    rows' share is exactly 0)."""
    if slot.xs is None:
        raise ValueError("gated_products reads the gathered input of a slot with one")
    _, x_a, x_b = slot.xs
    out = slot.act
    w.product("U")(h_prev, base, out=out)
    for name, x, z in (("W", x_b, z_below), ("U_td", x_a, z_prev)):  # Eq. 7, Eq. 6
        if x is None or z is None:
            continue
        rows = z.view(-1).nonzero().view(-1)
        if len(rows) < len(x):
            if len(rows):
                out.index_add_(0, rows, w.product(name)(x.index_select(0, rows)))
        else:
            out.add_(w.product(name)(x))


def _term(w: LayerWeights, name: str, h: Tensor) -> Tensor:
    """One term of ``s`` before its boundary gate: ``M h``, layer-normalised with layer
    norm (torch's, on a row subset: nothing of it is kept)."""
    p = w.product(name)(h)
    if w.ln is None:
        return p
    return torch.native_layer_norm(p, (p.shape[-1],), *w.norm(LN_OF[name]), w.eps)[0]


def preactivation(
    w: LayerWeights,
    slot: Slot,
    base: Tensor,
    h_prev: Tensor,
    z_prev: Tensor,
    h_above: Tensor | None,
    z_below: Tensor | None,
    h_below: Tensor | None,
    backend: Backend,
    gated_rows: bool = False,
) -> None:
    """Write ``s`` (Eq. 5-7 plus the bias) into ``slot.act (M, R)``, term by term.

    Args:
        base: the bias ``(R,)``, or in the bottom layer ``W x_t + bias (M, R)``.
        h_prev, z_prev: this layer's ``h (M, H)`` and ``z (M, 1)`` at ``t-1``.
        h_above: ``h^{above}_{t-1} (M, Ha)``; None in the top layer, or to leave the
            top-down term out where every row's ``z_{t-1}`` is 0.
        z_below, h_below: ``z^{below}_t (M, 1)``, ``h^{below}_t (M, Hb)``; None in the
            bottom layer, or (``h_below``) to leave the bottom-up term out where every
            ``z^{below}_t`` is 0.
        backend: with layer norm and not ``gated_rows``, its ``hm_terms_forward`` adds
            the normalised terms.
        gated_rows: compute the top-down and bottom-up terms only on the rows whose
            boundary lets them in (the others add 0), gathering those rows.
    """
    if w.ln is not None and not gated_rows:
        present = term_products(w, slot, h_prev, h_above, h_below)
        backend.hm_terms_forward(len(h_prev), w.rows, slot.act, base, z_prev, z_below,
                                 *terms_of(w, slot.proj, slot.stats, present), w.eps)(0)
        return
    out = slot.act
    if w.ln is None:
        w.product("U")(h_prev, base, out=out)
    else:
        torch.add(_term(w, "U", h_prev), base, out=out)
    for name, h, z in (("W", h_below, z_below), ("U_td", h_above, z_prev)):  # Eq. 7, Eq. 6
        if h is None or z is None:
            continue
        if gated_rows:
            rows = z.view(-1).nonzero().view(-1)
            if len(rows) < len(h):
                if len(rows):
                    term = _term(w, name, h.index_select(0, rows))
                    out.index_add_(0, rows, term.mul_(z.index_select(0, rows)))
                continue
        out.addcmul_(_term(w, name, h), z)


def pointwise(
    w: LayerWeights,
    slot: Slot,
    backend: Backend,
    h_prev: Tensor,
    c_prev: Tensor,
    z_prev: Tensor,
    z_below: Tensor | None,
    h_out: Tensor,
    c_out: Tensor,
    z_out: Tensor | None,
    slope: float | Tensor,
    boundary: str,
    generator: torch.Generator | None,
    sample_rows: tuple[Tensor, int] | None = None,
) -> None:
    """The backend's ``hm_forward`` once on one slot (``M`` rows): gates, Eq. 2-3 and
    Eq. 8-10, given ``s`` in ``slot.act``; the new state into ``h_out``, ``c_out (M, H)``,
    ``z_out (M, 1)`` (None in the top layer). ``sample_rows = (index, N)`` draws
    ``"sample"`` boundaries for a subset of a batch of N rows as for the whole batch."""
    ln_w, ln_b = _cell_norm(w)
    backend.hm_forward(
        len(h_prev), w.hidden_size, z_out is not None, boundary, slot.act, h_prev, c_prev,
        z_prev, z_below, h_out, c_out, z_out, slot.tanh_c, slot.u, slot.zbin, slot.diff,
        slot.zdiff, slot.stats.get("cell"), ln_w, ln_b, slope, w.eps, generator,
        sample_rows)(0)


def scratch_slots(weights: list[LayerWeights], rows: int, like: Tensor) -> list[Slot]:
    """One scratch :class:`Slot` of ``rows`` rows per layer, without the fused product's
    input (the sparse paths make their products term by term)."""
    return [Workspace(w, 1, rows, like, fused=False).slots[0] for w in weights]
