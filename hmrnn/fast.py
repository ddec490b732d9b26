"""The HM-LSTM stack's fast time loop, and its hand-written backward pass (BPTT).

:class:`hmrnn.hmlstm.HMLSTM` runs through this module (unless ``fast=False``). It computes
the equations of :class:`hmrnn.cell.HMLSTMCell` (DESIGN.md), step by step and layer by
layer, arranged for speed:

- the bottom layer's input term ``W x_t`` (with its layer norm) is computed for all steps
  at once, before the loop, by autograd;
- without layer norm, a layer's three products are one matrix product of the fused
  weight ``[U | U_td | W]`` with ``[h_{t-1} | z_{t-1} h^{above}_{t-1} | z^{below}_t
  h^{below}_t]`` (the boundary scales the input rows instead of the output rows: the
  same product); with layer norm each term is normalised on its own, so they stay apart;
- UPDATE, COPY and FLUSH are mixed with ``COPY = (1 - z_{t-1}) - UPDATE`` and
  ``1 - COPY = UPDATE + FLUSH``, so Eq. 2-3 read ``c = c_{t-1} (UPDATE f + COPY) + (1 -
  COPY) i g`` and ``h = COPY h_{t-1} + (1 - COPY) o tanh(c)``: the same functions of
  ``z`` (bit for bit when ``z`` is 0 or 1) in fewer operations;
- every step writes into buffers made once per call, through views made once per call;
- under autograd the whole sequence is one node, :class:`_HMLSTMFunction`, whose backward
  walks the steps in reverse by hand (the straight-through gradient of DESIGN.md decision
  5 included) and computes each weight's gradient as one matrix product over all steps,
  as cuDNN does, instead of one per step. The hard sigmoid's gradient is taken as 0 at
  its two kinks themselves (``clamp``'s autograd takes ``a/2`` there; a set of measure 0).

The forward step (:func:`preactivation` then :func:`pointwise`) is shared with the sparse
inference paths of :mod:`hmrnn.sparse`, which run it on the rows that are not in COPY.

Shape legend: T time, N batch (M: the rows of a subset), L layers, H hidden size of the
layer, Ha / Hb of the layer above / below, R = 4H + 1 gate rows (4H in the top layer),
K = H + Ha + Hb.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .cell import HMLSTMCell

_sigmoid_backward = torch.ops.aten.sigmoid_backward.grad_input
_tanh_backward = torch.ops.aten.tanh_backward.grad_input
_hardtanh_backward = torch.ops.aten.hardtanh_backward.default
_layer_norm_backward = torch.ops.aten.native_layer_norm_backward.default

# Per layer, the cell's tensors the fast loop reads, in the order it passes them on.
_PARAMETER_NAMES = (
    "U", "U_td", "W", "bias",
    "ln_recurrent.weight", "ln_recurrent.bias", "ln_top_down.weight", "ln_top_down.bias",
    "ln_bottom_up.weight", "ln_bottom_up.bias", "ln_cell.weight", "ln_cell.bias",
)
_TERMS = ("U", "U_td", "W")  # recurrent, top-down, bottom-up
_LN_OF = {"U": "recurrent", "U_td": "top_down", "W": "bottom_up"}


@dataclass(frozen=True)
class LayerWeights:
    """What one layer's step reads, gathered once per call.

    ``U (R, H)``, ``U_td (R, Ha)`` (None in the top layer), ``W (R, Hb)`` (None in the
    bottom layer, whose input term comes precomputed), ``bias (R,)``. Without layer norm
    ``fused (R, K)`` is ``[U | U_td | W]`` and the three are column views of it; with layer
    norm ``ln`` maps ``"recurrent"``, ``"top_down"``, ``"bottom_up"``, ``"cell"`` to the
    ``(weight, bias)`` of each normalisation.
    """

    hidden_size: int
    U: Tensor
    U_td: Tensor | None
    W: Tensor | None
    bias: Tensor
    fused: Tensor | None
    ln: dict[str, tuple[Tensor, Tensor]] | None
    eps: float

    @property
    def rows(self) -> int:
        return self.U.shape[0]

    @property
    def has_boundary(self) -> bool:
        return self.U_td is not None

    def term(self, name: str) -> Tensor | None:
        return getattr(self, name)


def parameter_names(cell: HMLSTMCell, bottom: bool) -> tuple[str, ...]:
    """The names of the cell's tensors the loop reads (the bottom layer's ``W`` and
    ``ln_bottom_up`` are used before the loop, by :meth:`HMLSTMCell.bottom_up`)."""
    present = {name for name, _ in cell.named_parameters()}
    return tuple(
        n for n in _PARAMETER_NAMES
        if n in present and not (bottom and n.startswith(("W", "ln_bottom_up")))
    )


def layer_weights(names: tuple[str, ...], tensors: tuple[Tensor, ...], eps: float) -> LayerWeights:
    """Assemble :class:`LayerWeights` from tensors named as :func:`parameter_names` says."""
    p = dict(zip(names, tensors, strict=True))
    terms = [p.get(name) for name in _TERMS]
    H = terms[0].shape[1]  # type: ignore[union-attr]
    if "ln_recurrent.weight" in p:
        ln = {
            k: (p[f"ln_{k}.weight"], p[f"ln_{k}.bias"])
            for k in ("recurrent", "top_down", "bottom_up", "cell") if f"ln_{k}.weight" in p
        }
        return LayerWeights(H, *terms, p["bias"], None, ln, eps)  # type: ignore[arg-type]
    fused = torch.cat([w for w in terms if w is not None], dim=1)  # (R, K)
    views: list[Tensor | None] = []
    start = 0
    for w in terms:
        views.append(None if w is None else fused[:, start : start + w.shape[1]])
        start += 0 if w is None else w.shape[1]
    return LayerWeights(H, *views, p["bias"], fused, None, eps)  # type: ignore[arg-type]


class Gates(NamedTuple):
    """Views of a ``(*, R)`` gate tensor: ``fio (*, 3H)``, ``f, i, o, g (*, H)``, ``z (*, 1)``
    (None in the top layer)."""

    fio: Tensor
    f: Tensor
    i: Tensor
    o: Tensor
    g: Tensor
    z: Tensor | None

    @classmethod
    def of(cls, act: Tensor, H: int) -> Gates:
        z = act[..., 4 * H :] if act.shape[-1] > 4 * H else None
        return cls(act[..., : 3 * H], act[..., :H], act[..., H : 2 * H],
                   act[..., 2 * H : 3 * H], act[..., 3 * H : 4 * H], z)

    def unbind(self) -> list[Gates]:
        """Per-step views of ``(T, *, R)`` gates."""
        parts = [p.unbind(0) if p is not None else None for p in self]
        steps = len(parts[0])  # type: ignore[arg-type]
        return [Gates(*(p[t] if p is not None else None for p in parts)) for t in range(steps)]


class Saved(NamedTuple):
    """What one layer's step leaves for the backward pass (beyond the buffers).

    ``not_prev = 1 - z_{t-1}``, ``update``, ``copy``, ``not_copy = 1 - COPY`` ``(M, 1)``
    (``copy`` and ``not_copy`` are None in the bottom layer, which never copies);
    ``mix = UPDATE f + COPY``, ``ig = i g``, ``oh = o tanh(c)`` ``(M, H)``; ``zbin``, the
    binarised boundary, and ``u``, the hard sigmoid's argument before clamping ``(M, 1)``;
    ``stats``: the layer norms' ``(mean, rstd)`` and the gated terms' normalised outputs.
    """

    not_prev: Tensor
    update: Tensor
    copy: Tensor | None
    not_copy: Tensor | None
    mix: Tensor
    ig: Tensor
    oh: Tensor
    zbin: Tensor | None
    u: Tensor | None
    stats: dict[str, tuple[Tensor, ...]]


def preactivation(
    w: LayerWeights,
    out: Tensor,
    base: Tensor,
    h_prev: Tensor,
    z_prev: Tensor,
    h_above: Tensor | None,
    z_below: Tensor | None,
    h_below: Tensor | None,
    x: tuple[Tensor, Tensor, Tensor | None, Tensor | None] | None,
    proj: tuple[Tensor | None, Tensor | None, Tensor | None],
    stats: dict[str, tuple[Tensor, ...]],
) -> None:
    """Write ``s`` (Eq. 5-7 plus the bias) into ``out (M, R)``.

    Args:
        base: the bias ``(R,)``, or in the bottom layer ``W x_t + bias (M, R)``.
        h_prev, z_prev: this layer's ``h (M, H)`` and ``z (M, 1)`` at ``t-1``.
        h_above: ``h^{above}_{t-1} (M, Ha)``; None in the top layer, or to leave the
            top-down term out where every row's ``z_{t-1}`` is 0.
        z_below, h_below: ``z^{below}_t (M, 1)``, ``h^{below}_t (M, Hb)``; None in the
            bottom layer, or to leave the bottom-up term out where every ``z^{below}_t`` is 0.
        x: without layer norm, a ``(M, K)`` buffer for the fused product's input and its
            three column views (None: multiply term by term, leaving out absent terms).
        proj: with layer norm, ``(M, R)`` buffers for the products before normalisation
            (recurrent, top-down, bottom-up), or Nones.
        stats: receives, with layer norm, ``(mean, rstd)`` of each normalisation (and the
            normalised output of the gated terms), for the backward pass.
    """
    if w.ln is None:
        if x is not None:  # [U | U_td | W] @ [h | z h^above | z^below h^below]: one product
            whole, x_h, x_a, x_b = x
            x_h.copy_(h_prev)
            if x_a is not None:
                torch.mul(h_above, z_prev, out=x_a)
            if x_b is not None:
                torch.mul(h_below, z_below, out=x_b)
            torch.addmm(base, whole, w.fused.t(), out=out)  # type: ignore[union-attr]
            return
        torch.addmm(base, h_prev, w.U.t(), out=out)
        if h_above is not None:
            out.addmm_(h_above * z_prev, w.U_td.t())  # type: ignore[union-attr]
        if h_below is not None:
            out.addmm_(h_below * z_below, w.W.t())  # type: ignore[operator, union-attr]
        return
    rows = (w.rows,)
    terms = {"U": (h_prev, None), "W": (h_below, z_below), "U_td": (h_above, z_prev)}
    for j, name in ((0, "U"), (2, "W"), (1, "U_td")):  # the cell's order of summation
        h, z = terms[name]
        if h is None:
            continue
        key = _LN_OF[name]
        p = torch.mm(h, w.term(name).t(), out=proj[j])  # type: ignore[union-attr]
        normed, mean, rstd = torch.native_layer_norm(p, rows, *w.ln[key], w.eps)
        if z is None:
            stats[key] = (mean, rstd)
            torch.add(normed, base, out=out)
        else:
            stats[key] = (mean, rstd, normed)
            out.addcmul_(normed, z)


def pointwise(
    w: LayerWeights,
    gates: Gates,
    tanh_c: Tensor,
    h_prev: Tensor,
    c_prev: Tensor,
    z_prev: Tensor,
    z_below: Tensor | None,
    h_out: Tensor,
    c_out: Tensor,
    z_out: Tensor | None,
    slope: float,
    boundary: str,
    generator: torch.Generator | None,
    stats: dict[str, tuple[Tensor, ...]],
    sample_rows: tuple[Tensor, int] | None = None,
) -> Saved:
    """Gates, Eq. 2-3 and Eq. 8-10 of one step, given ``s`` in the gate views' tensor.

    The gates are overwritten with ``f, i, o`` (sigmoid), ``g`` (tanh) and, for the
    ``"soft"`` and ``"sample"`` boundaries, ``z~`` (hard sigmoid). ``tanh_c (M, H)``
    receives ``tanh(c)`` (``tanh(LN(c))`` with layer norm); ``h_out``, ``c_out (M, H)`` and
    ``z_out (M, 1)`` (None in the top layer, whose ``z`` stays 0) the new state.
    ``z_below`` is None in the bottom layer (``z^0 = 1``). ``sample_rows = (index, N)``
    draws ``"sample"`` boundaries for a subset of a batch of N rows exactly as for the
    whole batch (one uniform draw per row of the batch).
    """
    gates.fio.sigmoid_()
    gates.g.tanh_()
    not_prev = torch.rsub(z_prev, 1.0)
    if z_below is None:  # the bottom layer: UPDATE or FLUSH, never COPY
        update, copy, not_copy = not_prev, None, None
        mix = gates.f * update
    else:
        update = not_prev * z_below
        copy = not_prev - update  # (1 - z_{t-1})(1 - z^{below}_t)
        not_copy = update + z_prev  # UPDATE + FLUSH
        mix = torch.addcmul(copy, update, gates.f)
    ig = gates.i * gates.g
    torch.mul(c_prev, mix, out=c_out)  # Eq. 2
    if not_copy is None:
        c_out.add_(ig)
    else:
        c_out.addcmul_(ig, not_copy)
    if w.ln is not None:
        c_norm, mean, rstd = torch.native_layer_norm(c_out, (w.hidden_size,), *w.ln["cell"],
                                                     w.eps)
        stats["cell"] = (mean, rstd)
        torch.tanh(c_norm, out=tanh_c)
    else:
        torch.tanh(c_out, out=tanh_c)
    oh = gates.o * tanh_c
    if copy is None:  # Eq. 3
        h_out.copy_(oh)
    else:
        torch.mul(h_prev, copy, out=h_out)
        h_out.addcmul_(oh, not_copy)  # type: ignore[arg-type]
    zbin = u = None
    if z_out is not None:
        u = gates.z * slope  # type: ignore[operator]
        u.add_(1.0).mul_(0.5)
        zbin = _binarize(u, gates.z, boundary, generator, sample_rows)  # type: ignore[arg-type]
        if copy is None:  # Eq. 8-9
            z_out.copy_(zbin)
        else:
            torch.mul(z_prev, copy, out=z_out)
            z_out.addcmul_(zbin, not_copy)  # type: ignore[arg-type]
    return Saved(not_prev, update, copy, not_copy, mix, ig, oh, zbin, u, stats)


def _binarize(
    u: Tensor, z_tilde: Tensor, boundary: str, generator: torch.Generator | None,
    rows: tuple[Tensor, int] | None,
) -> Tensor:
    """The forward value of :func:`hmrnn.functional.binarize` of ``z~ = clamp(u, 0, 1)``
    (written into ``z_tilde`` where it is needed); the gradient is in :func:`run_backward`."""
    if boundary == "step":
        return (u > 0.5).to(u.dtype)  # z~ > 0.5 exactly when u > 0.5
    torch.clamp(u, 0.0, 1.0, out=z_tilde)  # Eq. 10
    if boundary == "soft":
        return z_tilde
    if rows is None:
        return torch.bernoulli(z_tilde, generator=generator)
    index, n = rows  # one draw per row of the whole batch, as the dense loop makes
    p = z_tilde.new_zeros(n, 1).index_copy_(0, index, z_tilde)
    return torch.bernoulli(p, generator=generator).index_select(0, index)


class Buffers:
    """Everything one call writes: states for all steps, and what the backward reads.

    Per layer: ``h``, ``c`` ``(T+1, N, H)`` (index 0 is the initial state), ``act`` ``(T',
    N, R)``, ``tanh_c`` ``(T', N, H)``; without layer norm ``x`` ``(T', N, K)``, with it
    ``proj``: three ``(T', N, R)`` (or None for an absent term); shared: ``z`` ``(T+1, N,
    L)``. ``T' = T`` when the backward pass will run, else 1 (one slot, reused).
    """

    def __init__(
        self, weights: list[LayerWeights], h0: tuple[Tensor, ...], c0: tuple[Tensor, ...],
        z0: tuple[Tensor, ...], steps: int, keep: bool,
    ) -> None:
        N = h0[0].shape[0]
        like = h0[0]
        kept = steps if keep else 1
        self.keep = keep
        self.h = [like.new_empty(steps + 1, N, w.hidden_size) for w in weights]
        self.c = [like.new_empty(steps + 1, N, w.hidden_size) for w in weights]
        self.z = like.new_zeros(steps + 1, N, len(weights))
        for l in range(len(weights)):
            self.h[l][0] = h0[l]
            self.c[l][0] = c0[l]
            self.z[0, :, l : l + 1] = z0[l]
        self.act = [like.new_empty(kept, N, w.rows) for w in weights]
        self.tanh_c = [like.new_empty(kept, N, w.hidden_size) for w in weights]
        self.x = [like.new_empty(kept, N, w.fused.shape[1]) if w.fused is not None else None
                  for w in weights]
        self.proj = [
            tuple(like.new_empty(kept, N, w.rows) if w.term(name) is not None else None
                  for name in _TERMS)
            if w.ln is not None else (None, None, None)
            for w in weights
        ]
        self.saved: list[list[Saved]] = [[] for _ in weights]

    def step_views(self, weights: list[LayerWeights], l: int) -> dict[str, list[Any]]:
        """Per-step views of layer ``l``'s buffers (``T+1`` or ``T'`` of each), made at once."""
        w = weights[l]
        views: dict[str, list[Any]] = {
            "h": list(self.h[l].unbind(0)),
            "c": list(self.c[l].unbind(0)),
            "z": list(self.z[:, :, l : l + 1].unbind(0)),
            "act": list(self.act[l].unbind(0)),
            "gates": Gates.of(self.act[l], w.hidden_size).unbind(),
            "tanh_c": list(self.tanh_c[l].unbind(0)),
            "proj": list(zip(*(p.unbind(0) if p is not None else [None] * len(self.act[l])
                               for p in self.proj[l]), strict=True)),
        }
        x = self.x[l]
        if x is not None:
            widths = [t.shape[1] if t is not None else 0 for t in (w.U, w.U_td, w.W)]
            cuts = [sum(widths[:j]) for j in range(4)]
            parts = [x[:, :, cuts[j] : cuts[j + 1]].unbind(0) if widths[j] else None
                     for j in range(3)]
            views["x"] = [
                (x[t], *(p[t] if p is not None else None for p in parts))
                for t in range(len(x))
            ]
        else:
            views["x"] = [None] * len(self.act[l])
        return views


def run_forward(
    weights: list[LayerWeights],
    bottom: Tensor,
    h0: tuple[Tensor, ...],
    c0: tuple[Tensor, ...],
    z0: tuple[Tensor, ...],
    slope: float,
    boundary: str,
    generator: torch.Generator | None,
    keep: bool,
) -> Buffers:
    """The dense loop: every layer, every row, every step.

    Args:
        bottom: ``W x_t + bias`` of the bottom layer for all steps, ``(T, N, R_1)``.
        h0, c0, z0: the initial state, ``L`` tensors each.
        keep: keep what the backward pass needs.
    """
    steps = bottom.shape[0]
    buf = Buffers(weights, h0, c0, z0, steps, keep)
    views = [buf.step_views(weights, l) for l in range(len(weights))]
    bottom_steps = bottom.unbind(0)
    for t in range(steps):
        for l in range(len(weights)):
            saved = dense_step(weights, views, l, t, t if keep else 0, bottom_steps[t], slope,
                               boundary, generator)
            if keep:
                buf.saved[l].append(saved)
    return buf


def dense_step(
    weights: list[LayerWeights],
    views: list[dict[str, list[Any]]],
    l: int,
    t: int,
    k: int,
    bottom: Tensor,
    slope: float,
    boundary: str,
    generator: torch.Generator | None,
) -> Saved:
    """Layer ``l``'s step ``t`` on every row, reading and writing :class:`Buffers` through
    ``views`` (:meth:`Buffers.step_views` of every layer); ``k`` is the scratch slot and
    ``bottom (N, R_1)`` the bottom layer's ``W x_t + bias``."""
    w, v = weights[l], views[l]
    top = l == len(weights) - 1
    stats: dict[str, tuple[Tensor, ...]] = {}
    below = views[l - 1] if l > 0 else None
    z_prev = v["z"][t]
    z_below = below["z"][t + 1] if below is not None else None
    preactivation(
        w, v["act"][k], bottom if l == 0 else w.bias, v["h"][t], z_prev,
        None if top else views[l + 1]["h"][t], z_below,
        below["h"][t + 1] if below is not None else None, v["x"][k], v["proj"][k], stats,
    )
    return pointwise(
        w, v["gates"][k], v["tanh_c"][k], v["h"][t], v["c"][t], z_prev, z_below,
        v["h"][t + 1], v["c"][t + 1], None if top else v["z"][t + 1],
        slope, boundary, generator, stats,
    )


def _vecdot(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise dot products ``(M, D), (M, D) -> (M, 1)``."""
    return torch.linalg.vecdot(a, b).unsqueeze(1)


def run_backward(
    weights: list[LayerWeights],
    buf: Buffers,
    slope: float,
    grad_h: list[Tensor | None],
    grad_z: Tensor | None,
    grad_c_last: list[Tensor | None],
) -> tuple[Tensor, list[Tensor], list[Tensor], list[Tensor], list[dict[str, Tensor]]]:
    """BPTT through :func:`run_forward`'s steps, in reverse.

    Args:
        grad_h: per layer, the gradient of ``buf.h`` ``(T+1, N, H)`` (None: zero).
        grad_z: the gradient of ``buf.z`` ``(T+1, N, L)`` (None: zero).
        grad_c_last: per layer, the gradient of the last ``c`` ``(N, H)`` (None: zero).

    Returns:
        ``(grad_bottom (T, N, R_1), grad_h0, grad_c0, grad_z0, grad_weights)``: one
        ``(N, H)`` / ``(N, 1)`` tensor per layer for the initial state, and per layer the
        gradient of every tensor :func:`layer_weights` read, by its name.
    """
    L = len(weights)
    steps = buf.z.shape[0] - 1
    like = buf.h[0]
    N = like.shape[1]
    half_slope = 0.5 * slope
    views = [buf.step_views(weights, l) for l in range(L)]
    gh_acc: list[Tensor] = [like.new_zeros(N, w.hidden_size) for w in weights]
    gc_acc = [g if g is not None else like.new_zeros(N, w.hidden_size)
              for g, w in zip(grad_c_last, weights, strict=True)]
    gz_acc = [like.new_zeros(N, 1) for _ in weights]
    gs_all = [like.new_empty(steps, N, w.rows) for w in weights]  # dL/ds, every step
    gs_steps = [Gates.of(gs, w.hidden_size).unbind() for gs, w in zip(gs_all, weights,
                                                                       strict=True)]
    gh_out = [g.unbind(0) if g is not None else None for g in grad_h]
    gz_out = [grad_z[:, :, l : l + 1].unbind(0) if grad_z is not None else None
              for l in range(L)]
    gproj: list[dict[str, list[Tensor]]] = [{} for _ in weights]  # dL/d(pre-LN products)
    gcell: list[list[Tensor]] = [[] for _ in weights]  # dL/d(LN(c)), with layer norm
    for t in range(steps - 1, -1, -1):
        for l in range(L - 1, -1, -1):
            w, v, saved = weights[l], views[l], buf.saved[l][t]
            gates, tanh_c, gs = v["gates"][t], v["tanh_c"][t], gs_steps[l][t]
            h_prev, c_prev, z_prev = v["h"][t], v["c"][t], v["z"][t]
            below = views[l - 1] if l > 0 else None
            z_below = below["z"][t + 1] if below is not None else None
            copy, not_copy = saved.copy, saved.not_copy
            gh = gh_acc[l] if gh_out[l] is None else gh_acc[l] + gh_out[l][t + 1]  # type: ignore[index]
            gz = gz_acc[l] if gz_out[l] is None else gz_acc[l] + gz_out[l][t + 1]  # type: ignore[index]
            # Eq. 3: h = COPY h_prev + (1 - COPY) o tanh(c)
            gh_new = gh if not_copy is None else gh * not_copy
            torch.mul(gh_new, tanh_c, out=gs.o)
            g_tanh = gh_new * gates.o
            _tanh_backward(g_tanh, tanh_c, grad_input=g_tanh)
            if w.ln is not None:
                gcell[l].append(g_tanh)
                g_tanh = _layer_norm_backward(
                    g_tanh, v["c"][t + 1], (w.hidden_size,), *saved.stats["cell"],
                    *w.ln["cell"], [True, False, False],
                )[0]
            gc = g_tanh.add_(gc_acc[l])
            # Eq. 2: c = c_prev (UPDATE f + COPY) + (1 - COPY) i g
            gc_cprev = gc * c_prev
            torch.mul(gc_cprev, saved.update, out=gs.f)
            gc_acc[l] = gc * saved.mix
            g_ig = gc if not_copy is None else gc * not_copy
            torch.mul(g_ig, gates.g, out=gs.i)
            torch.mul(g_ig, gates.i, out=gs.g)
            g_update = _vecdot(gc_cprev, gates.f)
            g_below = None
            if gs.z is not None:  # Eq. 8-10, straight through: dz/dz~ = 1 (DESIGN.md 5)
                g_tilde = gz if not_copy is None else gz * not_copy
                torch.mul(_hardtanh_backward(g_tilde, saved.u, 0.0, 1.0), half_slope, out=gs.z)
            if copy is None:
                g_prev = g_update.neg_()  # UPDATE = 1 - z_prev
            else:
                g_copy = _vecdot(gc, c_prev).add_(_vecdot(gh, h_prev))
                g_not_copy = _vecdot(gc, saved.ig).add_(_vecdot(gh, saved.oh))
                if gs.z is not None:
                    g_copy.addcmul_(gz, z_prev)
                    g_not_copy.addcmul_(gz, saved.zbin)  # type: ignore[arg-type]
                # COPY = not_prev - UPDATE, 1 - COPY = UPDATE + z_prev, UPDATE = not_prev z_below
                g_update.add_(g_not_copy).sub_(g_copy)
                g_prev = g_not_copy.sub_(g_copy).sub_(g_update * z_below)
                if gs.z is not None:
                    g_prev.addcmul_(gz, copy)
                g_below = g_update.mul_(saved.not_prev)
            _sigmoid_backward(gs.fio, gates.fio, grad_input=gs.fio)
            _tanh_backward(gs.g, gates.g, grad_input=gs.g)
            # s = U h_prev + z_prev U_td h_above + z_below W h_below + b
            g_hprev = gh * copy if copy is not None else None  # COPY's path to h_prev
            g_s = gs_all[l][t]
            if w.ln is None:
                gx = torch.mm(g_s, w.fused)  # type: ignore[arg-type]  (N, K)
                H = w.hidden_size
                gh_acc[l] = gx[:, :H] if g_hprev is None else g_hprev.add_(gx[:, :H])
                if w.U_td is not None:
                    g_above = gx[:, H : H + weights[l + 1].hidden_size]
                    g_prev.add_(_vecdot(g_above, views[l + 1]["h"][t]))
                    gh_acc[l + 1].addcmul_(g_above, z_prev)
                if below is not None:
                    g_bu = gx[:, gx.shape[1] - weights[l - 1].hidden_size :]
                    g_below.add_(_vecdot(g_bu, below["h"][t + 1]))  # type: ignore[union-attr]
                    gh_acc[l - 1].addcmul_(g_bu, z_below)  # type: ignore[arg-type]
            else:
                proj, R, ln = v["proj"][t], w.rows, w.ln
                g_rec = _layer_norm_backward(g_s, proj[0], (R,), *saved.stats["recurrent"],
                                             *ln["recurrent"], [True, False, False])[0]
                gproj[l].setdefault("U", []).append(g_rec)
                gh_acc[l] = (torch.mm(g_rec, w.U) if g_hprev is None
                             else g_hprev.addmm_(g_rec, w.U))
                if w.U_td is not None:
                    mean, rstd, d = saved.stats["top_down"]
                    g_prev.add_(_vecdot(g_s, d))
                    g_td = _layer_norm_backward(g_s * z_prev, proj[1], (R,), mean, rstd,
                                                *ln["top_down"], [True, False, False])[0]
                    gproj[l].setdefault("U_td", []).append(g_td)
                    gh_acc[l + 1].addmm_(g_td, w.U_td)
                if below is not None:
                    mean, rstd, b = saved.stats["bottom_up"]
                    g_below.add_(_vecdot(g_s, b))  # type: ignore[union-attr]
                    g_bu = _layer_norm_backward(g_s * z_below, proj[2], (R,), mean, rstd,
                                                *ln["bottom_up"], [True, False, False])[0]
                    gproj[l].setdefault("W", []).append(g_bu)
                    gh_acc[l - 1].addmm_(g_bu, w.W)  # type: ignore[arg-type]
            gz_acc[l] = g_prev
            if g_below is not None:
                gz_acc[l - 1] = gz_acc[l - 1] + g_below
    grad_h0 = [g if gh_out[l] is None else g + gh_out[l][0]  # type: ignore[index]
               for l, g in enumerate(gh_acc)]
    grad_z0 = [g if gz_out[l] is None else g + gz_out[l][0]  # type: ignore[index]
               for l, g in enumerate(gz_acc)]
    grads = [_weight_grads(weights, buf, l, gs_all[l], gproj[l], gcell[l]) for l in range(L)]
    return gs_all[0], grad_h0, gc_acc, grad_z0, grads


def _weight_grads(
    weights: list[LayerWeights], buf: Buffers, l: int, gs: Tensor,
    gproj: dict[str, list[Tensor]], gcell: list[Tensor],
) -> dict[str, Tensor]:
    """Each weight's gradient as one product over all steps: ``sum_t g_t^T x_t``."""
    w = weights[l]
    R, top = w.rows, len(weights) - 1
    flat = gs.reshape(-1, R)
    grads = {"bias": flat.sum(0)}
    inputs = {
        "U": buf.h[l][:-1],  # h_{t-1}
        "U_td": buf.h[l + 1][:-1] if l < top else None,  # h^{above}_{t-1}
        "W": buf.h[l - 1][1:] if l > 0 else None,  # h^{below}_t
    }
    if w.ln is None:
        x = buf.x[l]
        g_fused = flat.t().mm(x.reshape(-1, x.shape[2]))  # type: ignore[union-attr]  (R, K)
        start = 0
        for name in _TERMS:
            h = inputs[name]
            if h is not None:
                grads[name] = g_fused[:, start : start + h.shape[2]]
                start += h.shape[2]
        return grads
    gates = {"U": None, "U_td": buf.z[:-1, :, l : l + 1],
             "W": buf.z[1:, :, l - 1 : l] if l > 0 else None}
    for j, name in enumerate(_TERMS):
        h = inputs[name]
        if name not in gproj or h is None:
            continue
        g = torch.stack(gproj[name][::-1]).reshape(-1, R)  # collected in reverse time
        grads[name] = g.t().mm(h.reshape(-1, h.shape[2]))
        key = _LN_OF[name]
        mean = torch.stack([s.stats[key][0] for s in buf.saved[l]])
        rstd = torch.stack([s.stats[key][1] for s in buf.saved[l]])
        gate = gates[name]
        upstream = gs if gate is None else gs * gate
        _, grads[f"ln_{key}.weight"], grads[f"ln_{key}.bias"] = _layer_norm_backward(
            upstream, buf.proj[l][j], (R,), mean, rstd, *w.ln[key], [False, True, True]  # type: ignore[index]
        )
    mean = torch.stack([s.stats["cell"][0] for s in buf.saved[l]])
    rstd = torch.stack([s.stats["cell"][1] for s in buf.saved[l]])
    _, grads["ln_cell.weight"], grads["ln_cell.bias"] = _layer_norm_backward(
        torch.stack(gcell[::-1]), buf.c[l][1:], (w.hidden_size,), mean, rstd, *w.ln["cell"],
        [False, True, True],
    )
    return grads


def weights_of(
    names: tuple[tuple[str, ...], ...], params: tuple[Tensor, ...], eps: float
) -> list[LayerWeights]:
    """Every layer's :class:`LayerWeights` from :func:`cell_tensors`'s names and tensors."""
    out, start = [], 0
    for layer in names:
        out.append(layer_weights(layer, params[start : start + len(layer)], eps))
        start += len(layer)
    return out


class _Spec(NamedTuple):
    """The non-tensor arguments of one call: per-layer tensor names, and the step's knobs."""

    names: tuple[tuple[str, ...], ...]
    eps: float
    slope: float
    boundary: str
    generator: torch.Generator | None


class _HMLSTMFunction(torch.autograd.Function):
    """The whole sequence as one autograd node: :func:`run_forward`, :func:`run_backward`.

    Inputs: ``spec, bottom (T, N, R_1), *h0, *c0, *z0, *params`` (``bottom`` is the bottom
    layer's ``W x`` without its bias). Outputs: ``L`` tensors ``h (T+1, N, H_l)`` (index 0
    the initial state), ``z (T+1, N, L)``, and the last ``c`` of each layer ``(N, H_l)``.
    """

    @staticmethod
    def forward(ctx: Any, spec: _Spec, bottom: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:
        L = len(spec.names)
        h0, c0, z0 = tensors[:L], tensors[L : 2 * L], tensors[2 * L : 3 * L]
        weights = weights_of(spec.names, tensors[3 * L :], spec.eps)
        buf = run_forward(weights, bottom + weights[0].bias, h0, c0, z0, spec.slope,
                          spec.boundary, spec.generator, keep=True)
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
        saved = ctx.saved_tensors
        buf.h, buf.z = list(saved[:L]), saved[L]
        g_bottom, g_h0, g_c0, g_z0, g_weights = run_backward(
            weights, buf, spec.slope, list(grads[:L]), grads[L], list(grads[L + 1 :])
        )
        g_params = [g[name] for names, g in zip(spec.names, g_weights, strict=True)
                    for name in names]
        return (None, g_bottom, *g_h0, *g_c0, *g_z0, *g_params)


def cell_tensors(cells: list[HMLSTMCell]) -> tuple[tuple[tuple[str, ...], ...], tuple[Tensor, ...]]:
    """The names (per layer) and the tensors, flat, that the loop reads from the cells."""
    names = tuple(parameter_names(c, l == 0) for l, c in enumerate(cells))
    tensors = tuple(
        getattr(c.get_submodule(module) if module else c, attr)
        for c, layer in zip(cells, names, strict=True)
        for module, _, attr in (n.rpartition(".") for n in layer)
    )
    return names, tensors


def layer_norm_eps(cells: list[HMLSTMCell]) -> float:
    return cells[0].ln_cell.eps if cells[0].layer_norm else 1e-5


def hmlstm_loop(
    cells: list[HMLSTMCell],
    input: Tensor,
    h0: tuple[Tensor, ...],
    c0: tuple[Tensor, ...],
    z0: tuple[Tensor, ...],
    slope: float,
    boundary: str,
    generator: torch.Generator | None = None,
) -> tuple[tuple[Tensor, ...], Tensor, tuple[Tensor, ...], tuple[Tensor, ...], tuple[Tensor, ...]]:
    """Run the stack over a sequence: what :meth:`hmrnn.hmlstm.HMLSTM.forward` computes.

    Args:
        cells: the stack's layers, bottom first.
        input: ``(T, N, D)``.
        h0, c0, z0: the initial state, ``L`` tensors ``(N, H_l)``, ``(N, H_l)``, ``(N, 1)``.
        slope: the hard sigmoid's slope ``a``.

    Returns:
        ``hidden`` (``L`` tensors ``(T, N, H_l)``), ``boundary (T, N, L)``, and the last
        ``h``, ``c``, ``z`` of every layer. Differentiable in the input, the initial state
        and every parameter when autograd is on, once: a backward pass with
        ``create_graph=True`` raises ``RuntimeError``.
    """
    names, params = cell_tensors(cells)
    spec = _Spec(names, layer_norm_eps(cells), slope, boundary, generator)
    bottom = cells[0].bottom_up(input)  # (T, N, R_1): the input is known in advance
    L = len(cells)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (bottom, *h0, *c0, *z0, *params)):
        out = _HMLSTMFunction.apply(spec, bottom, *h0, *c0, *z0, *params)
        h_all, z_all, c_last = out[:L], out[L], out[L + 1 :]
    else:
        with torch.no_grad():
            weights = weights_of(names, params, spec.eps)
            buf = run_forward(weights, bottom + weights[0].bias, h0, c0, z0, slope, boundary,
                              generator, keep=False)
        h_all, z_all, c_last = buf.h, buf.z, tuple(c[-1].clone() for c in buf.c)
    hidden = tuple(h[1:] for h in h_all)
    h_last = tuple(h[-1].clone() for h in h_all)
    z_last = tuple(z_all[-1, :, l : l + 1].clone() for l in range(L))
    return hidden, z_all[1:], h_last, tuple(c_last), z_last
