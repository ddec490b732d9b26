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
- on the CPU in float32, a large layer's weights are packed once per call for oneDNN
  (:class:`Linear`), whose products of a few rows are faster than ``torch.addmm``'s;
- under autograd the whole sequence is one node, :class:`_HMLSTMFunction`, whose backward
  walks the steps in reverse by hand (the straight-through gradient of DESIGN.md decision
  5 included) and computes each weight's gradient as one matrix product over all steps,
  as cuDNN does, instead of one per step. The hard sigmoid's gradient is taken as 0 at
  its two kinks themselves (``clamp``'s autograd takes ``a/2`` there; a set of measure 0);
- in training, a large layer (CPU) makes a gated term's forward product (without layer
  norm) and its weight gradient only on the rows its boundary lets in: the other rows'
  share is exactly 0. The inference loop computes every row and every term: the dense
  path that :mod:`hmrnn.sparse` is measured against.

The forward step (:func:`preactivation` then :func:`pointwise`) is shared with the sparse
inference paths of :mod:`hmrnn.sparse`, which run it on the rows that are not in COPY.

Shape legend: T time, N batch (M: the rows of a subset), L layers, H hidden size of the
layer, Ha / Hb of the layer above / below, R = 4H + 1 gate rows (4H in the top layer),
K = H + Ha + Hb.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .cell import HMLSTMCell

_sigmoid_backward = torch.ops.aten.sigmoid_backward.default
_tanh_backward = torch.ops.aten.tanh_backward.default
_hardtanh_backward = torch.ops.aten.hardtanh_backward.default
_layer_norm_backward = torch.ops.aten.native_layer_norm_backward.default
try:  # oneDNN's matrix product with a prepacked weight (what inductor's CPU freezing uses)
    _reorder = torch.ops.mkldnn._reorder_linear_weight.default
    _onednn_linear = torch.ops.mkldnn._linear_pointwise.default
    _onednn_linear_add = torch.ops.mkldnn._linear_pointwise.binary
except (AttributeError, RuntimeError):  # a build without oneDNN
    _reorder = None

# Per layer, the cell's tensors the fast loop reads, in the order it passes them on.
_PARAMETER_NAMES = (
    "U", "U_td", "W", "bias",
    "ln_recurrent.weight", "ln_recurrent.bias", "ln_top_down.weight", "ln_top_down.bias",
    "ln_bottom_up.weight", "ln_bottom_up.bias", "ln_cell.weight", "ln_cell.bias",
)
_TERMS = ("U", "U_td", "W")  # recurrent, top-down, bottom-up
_LN_OF = {"U": "recurrent", "U_td": "top_down", "W": "bottom_up"}


# From this many elements (3 x 512: yes; 3 x 128: no) a layer's weights are packed for
# oneDNN (below, copying its output out costs what it saves) and, on the CPU, the gated
# terms' products are made only on the rows their boundaries let in.
_LARGE_WEIGHT = 1 << 19
_PACK_MIN_STEPS = 8  # packing a weight costs about one product with it


class Linear:
    """``x @ weight.T`` (plus a bias or an ``(M, O)`` tensor) for many ``x`` of about
    ``rows`` rows: on CPU in float32 a large weight ``(O, I)`` is packed once for oneDNN,
    whose products of few rows are faster than ``torch.addmm``'s (1.4x at 3 x 512, batch
    64; they round apart, in the last bits); elsewhere, or with ``rows=0`` (too few uses
    to pay for the packing), it is ``torch.addmm``.
    """

    def __init__(self, weight: Tensor, rows: int) -> None:
        self.weight_t = weight.t()
        use = (rows > 0 and _reorder is not None and weight.device.type == "cpu"
               and weight.dtype == torch.float32 and weight.numel() >= _LARGE_WEIGHT
               and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)
        self.packed = _reorder(weight.contiguous(), rows) if use else None

    def __call__(self, x: Tensor, add: Tensor | None = None, out: Tensor | None = None) -> Tensor:
        """``x (M, I) -> (M, O)``, written into ``out`` if given."""
        if self.packed is None:
            if add is None:
                return torch.mm(x, self.weight_t, out=out)
            return torch.addmm(add, x, self.weight_t, out=out)
        if add is None or add.dim() == 1:
            y = _onednn_linear(x, self.packed, add, "none", [], "")
        else:
            y = _onednn_linear_add(x, add, self.packed, None, "add")
        return y if out is None else out.copy_(y)


@dataclass(frozen=True)
class LayerWeights:
    """What one layer's step reads, gathered once per call.

    ``U (R, H)``, ``U_td (R, Ha)`` (None in the top layer), ``W (R, Hb)`` (None in the
    bottom layer, whose input term comes precomputed), ``bias (R,)``. Without layer norm
    ``fused (R, K)`` is ``[U | U_td | W]`` and the three are column views of it; with layer
    norm ``ln`` maps ``"recurrent"``, ``"top_down"``, ``"bottom_up"``, ``"cell"`` to the
    ``(weight, bias)`` of each normalisation. :meth:`product` gives each product as a
    :class:`Linear` for about ``rows`` rows, made on first use. ``skip_gated``: the
    weights are large enough (on the CPU) that in training the products of a gated term
    are worth making only on the rows its boundary lets in (the others add 0), in the
    forward pass without layer norm and in the weight gradients.
    """

    hidden_size: int
    U: Tensor
    U_td: Tensor | None
    W: Tensor | None
    bias: Tensor
    fused: Tensor | None
    ln: dict[str, tuple[Tensor, Tensor]] | None
    eps: float
    rows_hint: int
    linear: dict[str, Linear]
    skip_gated: bool

    @property
    def rows(self) -> int:
        return self.U.shape[0]

    def term(self, name: str) -> Tensor | None:
        return getattr(self, name)

    def product(self, name: str) -> Linear:
        """``x @ M.T`` for ``M`` = ``"fused"``, ``"U"``, ``"U_td"`` or ``"W"``; a trailing
        ``"^T"`` (e.g. ``"fused^T"``) gives ``g @ M``, the backward pass's product."""
        if name not in self.linear:
            m = self.fused if name.startswith("fused") else self.term(name.removesuffix("^T"))
            self.linear[name] = Linear(m.t() if name.endswith("^T") else m, self.rows_hint)  # type: ignore[union-attr]
        return self.linear[name]

    def widths(self) -> tuple[int, int, int]:
        """Columns of ``U``, ``U_td``, ``W`` (0 for an absent one)."""
        return tuple(w.shape[1] if w is not None else 0 for w in (self.U, self.U_td, self.W))  # type: ignore[return-value]


def parameter_names(cell: HMLSTMCell, bottom: bool) -> tuple[str, ...]:
    """The names of the cell's tensors the loop reads (the bottom layer's ``W`` and
    ``ln_bottom_up`` are used before the loop, by :meth:`HMLSTMCell.bottom_up`)."""
    present = {name for name, _ in cell.named_parameters()}
    return tuple(
        n for n in _PARAMETER_NAMES
        if n in present and not (bottom and n.startswith(("W", "ln_bottom_up")))
    )


def layer_weights(
    names: tuple[str, ...], tensors: tuple[Tensor, ...], eps: float, rows: int
) -> LayerWeights:
    """Assemble :class:`LayerWeights` from tensors named as :func:`parameter_names` says,
    for products of about ``rows`` rows."""
    p = dict(zip(names, tensors, strict=True))
    terms: list[Tensor | None] = [p.get(name) for name in _TERMS]
    H = terms[0].shape[1]  # type: ignore[union-attr]
    fused = ln = None
    if "ln_recurrent.weight" in p:
        ln = {
            k: (p[f"ln_{k}.weight"], p[f"ln_{k}.bias"])
            for k in ("recurrent", "top_down", "bottom_up", "cell") if f"ln_{k}.weight" in p
        }
    else:
        fused = torch.cat([w for w in terms if w is not None], dim=1)  # (R, K)
        start = 0
        for j, w in enumerate(terms):
            if w is not None:
                terms[j] = fused[:, start : start + w.shape[1]]
                start += w.shape[1]
    present = [t for t in terms if t is not None]
    skip = (present[0].device.type == "cpu"  # (a row count on CUDA would wait for the GPU)
            and sum(t.numel() for t in present) >= _LARGE_WEIGHT)
    return LayerWeights(H, *terms, p["bias"], fused, ln, eps, rows, {}, skip)  # type: ignore[arg-type]


class Slot(NamedTuple):
    """The scratch of one layer's step, ``M`` rows: views into a :class:`Workspace`.

    ``act (M, R)``: ``s``; without layer norm ``x``: the fused product's input ``(M, K)``
    and its three column views (absent ones None); with layer norm, by term (``"U"``,
    ``"U_td"``, ``"W"``) ``proj``, the products before normalisation, and by normalisation
    (``"recurrent"``, ``"top_down"``, ``"bottom_up"``), filled as the step runs, ``normed
    (M, R)`` and ``stats`` ``(mean, rstd)``, each ``(M, 1)``.
    """

    act: Tensor
    x: tuple[Tensor, Tensor, Tensor | None, Tensor | None] | None
    proj: dict[str, Tensor]
    normed: dict[str, Tensor]
    stats: dict[str, tuple[Tensor, Tensor]]


def _split(buffer: Tensor, widths: tuple[int, ...]) -> list[tuple[Tensor | None, ...]]:
    """Per step ``k`` of an ``(S, M, sum(widths))`` buffer: ``(buffer[k], *column views)``
    (None for a zero width)."""
    cuts = [0]
    for width in widths:
        cuts.append(cuts[-1] + width)
    parts = [buffer[:, :, a:b].unbind(0) if b > a else [None] * len(buffer)
             for a, b in zip(cuts, cuts[1:], strict=False)]
    return [(whole, *(p[k] for p in parts)) for k, whole in enumerate(buffer.unbind(0))]


class Workspace:
    """One layer's scratch for ``S`` steps of ``M`` rows, made at once: ``slots[k]`` views
    step ``k``; the ``(S, M, *)`` buffers themselves serve the weight gradients.

    ``grads=True`` makes only what the backward pass writes (the gradients of ``proj``);
    ``fused=False`` no input for the fused product (:func:`preactivation` then multiplies
    term by term).
    """

    def __init__(self, w: LayerWeights, steps: int, rows: int, like: Tensor,
                 grads: bool = False, fused: bool = True) -> None:
        R = w.rows

        def new(width: int) -> Tensor:
            return like.new_empty(steps, rows, width)

        self.act = new(R)
        self.x = new(sum(w.widths())) if w.fused is not None and fused and not grads else None
        self.proj = {name: new(R) for name in _TERMS if w.ln and w.term(name) is not None}
        act = list(self.act.unbind(0))
        xs = _split(self.x, w.widths()) if self.x is not None else [None] * steps
        proj = {name: list(t.unbind(0)) for name, t in self.proj.items()}
        self.slots = [
            Slot(act[k], xs[k], {n: v[k] for n, v in proj.items()}, {}, {})  # type: ignore[arg-type]
            for k in range(steps)
        ]


class Saved(NamedTuple):
    """One layer's step from ``s`` on (:func:`step_core`): the new state and what the
    backward pass reads.

    ``h``, ``c`` ``(M, H)`` and ``z`` ``(M, 1)`` (None in the top layer, whose ``z`` stays
    0); ``fio (M, 3H)``: ``f, i, o`` (sigmoid); ``g (M, H)`` (tanh); ``tanh_c (M, H)``;
    ``u (M, 1)``, the hard sigmoid's argument (None in the top layer); ``cell_stats``: the
    mean and rstd ``(M, 1)`` of ``LN(c)`` (None without layer norm); ``not_prev = 1 -
    z_{t-1}``, ``update``, ``copy``, ``not_copy = 1 - COPY`` ``(M, 1)`` (``copy`` and
    ``not_copy`` are None in the bottom layer, which never copies); ``mix = UPDATE f +
    COPY (M, H)``; kept for the backward pass of a layer that can copy (else None): ``diff
    = [o tanh(c) - h_{t-1} | i g - c_{t-1}] (M, 2H)`` and ``zdiff = z_bin - z_{t-1} (M,
    1)``.
    """

    h: Tensor
    c: Tensor
    z: Tensor | None
    fio: Tensor
    g: Tensor
    tanh_c: Tensor
    u: Tensor | None
    cell_stats: tuple[Tensor, Tensor] | None
    not_prev: Tensor
    update: Tensor
    copy: Tensor | None
    not_copy: Tensor | None
    mix: Tensor
    diff: Tensor | None
    zdiff: Tensor | None


def _layer_norm(w: LayerWeights, key: str, x: Tensor, slot: Slot) -> Tensor:
    """``LN_key(x)``, its output, mean and rstd kept in the slot for the backward pass."""
    normed, mean, rstd = torch.native_layer_norm(x, (x.shape[-1],), *w.ln[key], w.eps)  # type: ignore[index]
    slot.normed[key], slot.stats[key] = normed, (mean, rstd)
    return normed


def _layer_norm_stats(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Mean and rstd over the last axis, for all steps at once: ``(*, D) -> (*, 1)`` each."""
    _, mean, rstd = torch.native_layer_norm(x, (x.shape[-1],), None, None, eps)
    return mean, rstd


def preactivation(
    w: LayerWeights,
    slot: Slot,
    base: Tensor,
    h_prev: Tensor,
    z_prev: Tensor,
    h_above: Tensor | None,
    z_below: Tensor | None,
    h_below: Tensor | None,
    gated_rows: bool = False,
) -> None:
    """Write ``s`` (Eq. 5-7 plus the bias) into ``slot.act (M, R)``.

    Args:
        base: the bias ``(R,)``, or in the bottom layer ``W x_t + bias (M, R)``.
        h_prev, z_prev: this layer's ``h (M, H)`` and ``z (M, 1)`` at ``t-1``.
        h_above: ``h^{above}_{t-1} (M, Ha)``; None in the top layer, or to leave the
            top-down term out where every row's ``z_{t-1}`` is 0.
        z_below, h_below: ``z^{below}_t (M, 1)``, ``h^{below}_t (M, Hb)``; None in the
            bottom layer, or (``h_below``) to leave the bottom-up term out where every
            ``z^{below}_t`` is 0.
        gated_rows: compute the top-down and bottom-up terms only on the rows whose
            boundary lets them in (the others add 0), gathering those rows.

    Without layer norm, a slot with ``x`` makes one product of the fused weight (every
    term, every row) unless ``gated_rows``; one without multiplies term by term.
    """
    out = slot.act
    gated_input = w.ln is None and slot.x is not None
    if gated_input:  # [U | U_td | W] @ [h | z h^above | z^below h^below]
        whole, x_h, x_a, x_b = slot.x  # type: ignore[misc]
        x_h.copy_(h_prev)
        if x_a is not None:
            torch.mul(h_above, z_prev, out=x_a)
        if x_b is not None:
            torch.mul(h_below, z_below, out=x_b)
        if not gated_rows:
            w.product("fused")(whole, base, out=out)  # one product
            return
        h_above, h_below = x_a, x_b  # the gated terms, already gated
    if w.ln is None:
        w.product("U")(h_prev, base, out=out)
    else:
        torch.add(_term(w, "U", h_prev, slot), base, out=out)
    for name, h, z in (("W", h_below, z_below), ("U_td", h_above, z_prev)):  # Eq. 7, Eq. 6
        if h is None:
            continue
        if gated_rows:
            rows = z.view(-1).nonzero().view(-1)  # type: ignore[union-attr]
            if len(rows) < len(h):
                if len(rows):
                    term = _term(w, name, h.index_select(0, rows))
                    if not gated_input:
                        term.mul_(z.index_select(0, rows))  # type: ignore[union-attr]
                    out.index_add_(0, rows, term)
                continue
        if gated_input:
            out.add_(_term(w, name, h))
        else:
            out.addcmul_(_term(w, name, h, slot), z)  # type: ignore[arg-type]


def _term(w: LayerWeights, name: str, h: Tensor, slot: Slot | None = None) -> Tensor:
    """One term of ``s`` before its boundary gate: ``M h``, layer-normalised with layer
    norm; with a ``slot`` the product goes into its buffer and the normalisation's
    statistics into its dicts, for the backward pass."""
    p = w.product(name)(h, out=slot.proj.get(name) if slot is not None else None)
    if w.ln is None:
        return p
    key = _LN_OF[name]
    if slot is None:
        return torch.native_layer_norm(p, (p.shape[-1],), *w.ln[key], w.eps)[0]
    return _layer_norm(w, key, p, slot)


def step_core(
    act: Tensor,
    h_prev: Tensor,
    c_prev: Tensor,
    z_prev: Tensor,
    z_below: Tensor | None,
    half_slope: Tensor,
    ln_cell: tuple[Tensor, Tensor] | None,
    eps: float,
    boundary: str,
    zbin: Tensor | None,
    keep: bool,
) -> Saved:
    """Gates, Eq. 2-3 and Eq. 8-10 of one step, given ``s`` (``act (M, R)``, not written).

    A pure function of tensors (what :func:`torch.compile` fuses into one kernel).
    ``z_below`` is None in the bottom layer (``z^0 = 1``); ``half_slope``: ``a / 2``, a
    0-dim tensor; ``ln_cell``: ``LN(c)``'s ``(weight, bias)``, or None; ``zbin``: the
    boundary already drawn (``"sample"``: :func:`draw_boundary`), else None; ``keep``:
    make ``diff`` and ``zdiff``.
    """
    H = h_prev.shape[1]
    fio = torch.sigmoid(act[:, : 3 * H])
    g = torch.tanh(act[:, 3 * H : 4 * H])
    f, i, o = fio[:, :H], fio[:, H : 2 * H], fio[:, 2 * H :]
    not_prev = torch.rsub(z_prev, 1.0)
    if z_below is None:  # the bottom layer: UPDATE or FLUSH, never COPY
        update, copy, not_copy = not_prev, None, None
        mix = f * update
    else:
        update = not_prev * z_below
        copy = not_prev - update  # (1 - z_{t-1})(1 - z^{below}_t)
        not_copy = update + z_prev  # UPDATE + FLUSH
        mix = torch.addcmul(copy, update, f)
    ig = i * g
    c = c_prev * mix  # Eq. 2
    c = c + ig if not_copy is None else torch.addcmul(c, ig, not_copy)
    stats = None
    if ln_cell is None:
        tanh_c = torch.tanh(c)
    else:
        normed, mean, rstd = torch.native_layer_norm(c, (H,), ln_cell[0], ln_cell[1], eps)
        tanh_c, stats = torch.tanh(normed), (mean, rstd)
    oh = o * tanh_c
    h = oh if copy is None else torch.addcmul(h_prev * copy, oh, not_copy)  # type: ignore[arg-type]  # Eq. 3
    diff = zdiff = z = u = None
    if keep and copy is not None:  # what COPY's coefficient multiplies, for the backward pass
        diff = torch.cat([oh - h_prev, ig - c_prev], dim=1)
    if act.shape[1] > 4 * H:
        # u = (a s_z + 1) / 2 exactly as the cell rounds it: halving is exact
        u = act[:, 4 * H :] * half_slope + 0.5
        if zbin is None:
            zbin = (u > 0.5).to(u.dtype) if boundary == "step" else torch.clamp(u, 0.0, 1.0)
        z = zbin if copy is None else torch.addcmul(z_prev * copy, zbin, not_copy)  # type: ignore[arg-type]  # Eq. 8-9
        if keep and copy is not None:
            zdiff = zbin - z_prev
    return Saved(h, c, z, fio, g, tanh_c, u, stats, not_prev, update, copy, not_copy, mix,
                 diff, zdiff)


def draw_boundary(
    act: Tensor, H: int, half_slope: Tensor, generator: torch.Generator | None,
    rows: tuple[Tensor, int] | None = None,
) -> Tensor:
    """``"sample"``'s ``z ~ Bernoulli(z~)`` (Eq. 10) from ``s`` in ``act (M, R)``: ``(M, 1)``.

    ``rows = (index, N)`` draws for a subset of a batch of N rows exactly as for the whole
    batch (one uniform draw per row of the batch). The gradient is in :func:`backward_core`.
    """
    z_tilde = torch.clamp(act[:, 4 * H :] * half_slope + 0.5, 0.0, 1.0)
    if rows is None:
        return torch.bernoulli(z_tilde, generator=generator)
    index, n = rows  # one draw per row of the whole batch, as the dense loop makes
    p = z_tilde.new_zeros(n, 1).index_copy_(0, index, z_tilde)
    return torch.bernoulli(p, generator=generator).index_select(0, index)


def pointwise(
    w: LayerWeights,
    act: Tensor,
    h_prev: Tensor,
    c_prev: Tensor,
    z_prev: Tensor,
    z_below: Tensor | None,
    half_slope: Tensor,
    boundary: str,
    generator: torch.Generator | None,
    keep: bool = False,
    sample_rows: tuple[Tensor, int] | None = None,
    core: Callable[..., Saved] = step_core,
) -> Saved:
    """``core`` (:func:`step_core` or its compiled form) of layer ``w`` on ``s`` in
    ``act``, drawing ``"sample"`` boundaries first (``sample_rows``: see
    :func:`draw_boundary`)."""
    zbin = None
    if boundary == "sample" and act.shape[1] > 4 * w.hidden_size:
        zbin = draw_boundary(act, w.hidden_size, half_slope, generator, sample_rows)
    ln_cell = w.ln["cell"] if w.ln is not None else None
    return core(act, h_prev, c_prev, z_prev, z_below, half_slope, ln_cell, w.eps,
                         boundary, zbin, keep)


class Buffers:
    """The states of one call for all steps, every layer's workspace, and what the
    backward pass reads.

    Per layer: ``h``, ``c`` ``(T+1, N, H)`` (index 0 is the initial state) and a
    :class:`Workspace` of ``T'`` steps; shared: ``z`` ``(T+1, N, L)``. ``T' = T`` when the
    backward pass will run, else 1 (one slot, reused).
    """

    def __init__(
        self, weights: list[LayerWeights], h0: tuple[Tensor, ...], c0: tuple[Tensor, ...],
        z0: tuple[Tensor, ...], steps: int, keep: bool,
    ) -> None:
        N = h0[0].shape[0]
        like = h0[0]
        self.keep = keep
        self.h = [like.new_empty(steps + 1, N, w.hidden_size) for w in weights]
        self.c = [like.new_empty(steps + 1, N, w.hidden_size) for w in weights]
        self.z = like.new_zeros(steps + 1, N, len(weights))
        for l in range(len(weights)):
            self.h[l][0] = h0[l]
            self.c[l][0] = c0[l]
            self.z[0, :, l : l + 1] = z0[l]
        self.work = [Workspace(w, steps if keep else 1, N, like) for w in weights]
        self.saved: list[list[Saved]] = [[] for _ in weights]

    def step_views(self) -> list[dict[str, list[Tensor]]]:
        """Per layer, per-step views of ``h``, ``c`` (``T+1``) and ``z`` (``T+1``, ``(N, 1)``)."""
        return [{"h": list(self.h[l].unbind(0)), "c": list(self.c[l].unbind(0)),
                 "z": list(self.z[:, :, l : l + 1].unbind(0))} for l in range(len(self.h))]


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
    core: Callable[..., Saved] = step_core,
) -> Buffers:
    """The dense loop: every layer, every row, every step.

    Args:
        bottom: ``W x_t + bias`` of the bottom layer for all steps, ``(T, N, R_1)``.
        h0, c0, z0: the initial state, ``L`` tensors each.
        keep: keep what the backward pass needs.
        core: :func:`step_core` or its compiled form.
    """
    steps = bottom.shape[0]
    buf = Buffers(weights, h0, c0, z0, steps, keep)
    views = buf.step_views()
    bottom_steps = bottom.unbind(0)
    half_slope = bottom.new_tensor(0.5 * slope)
    for t in range(steps):
        for l in range(len(weights)):
            saved = dense_step(weights, buf, views, l, t, bottom_steps[t], half_slope,
                               boundary, generator, core)
            if keep:
                buf.saved[l].append(saved)
    return buf


def dense_step(
    weights: list[LayerWeights],
    buf: Buffers,
    views: list[dict[str, list[Tensor]]],
    l: int,
    t: int,
    bottom: Tensor,
    half_slope: Tensor,
    boundary: str,
    generator: torch.Generator | None,
    core: Callable[..., Saved] = step_core,
) -> Saved:
    """Layer ``l``'s step ``t`` on every row, reading and writing ``buf`` through ``views``
    (:meth:`Buffers.step_views`); ``bottom (N, R_1)`` is the bottom layer's ``W x_t + b``."""
    w, v = weights[l], views[l]
    slot = buf.work[l].slots[t if buf.keep else 0]
    top = l == len(weights) - 1
    below = views[l - 1] if l > 0 else None
    z_prev = v["z"][t]
    z_below = below["z"][t + 1] if below is not None else None
    # Training may skip the products that are exactly 0 (without layer norm: with it the
    # normalised term is its gate's gradient); the inference loop stays dense, every row
    # and term computed, which is what hmrnn.sparse is measured against.
    preactivation(w, slot, bottom if l == 0 else w.bias, v["h"][t], z_prev,
                  None if top else views[l + 1]["h"][t], z_below,
                  below["h"][t + 1] if below is not None else None,
                  gated_rows=w.skip_gated and buf.keep and w.ln is None)
    saved = pointwise(w, slot.act, v["h"][t], v["c"][t], z_prev, z_below, half_slope,
                      boundary, generator, keep=buf.keep, core=core)
    v["h"][t + 1].copy_(saved.h)
    v["c"][t + 1].copy_(saved.c)
    if saved.z is not None:
        v["z"][t + 1].copy_(saved.z)
    return saved


def _vecdot(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise dot products ``(M, D), (M, D) -> (M, 1)``."""
    return torch.linalg.vecdot(a, b).unsqueeze(1)


def _ln_backward(grad: Tensor, w: LayerWeights, key: str, x: Tensor, slot: Slot) -> Tensor:
    """The gradient of ``LN_key``'s input ``x`` from its output's, ``grad``."""
    return _layer_norm_backward(grad, x, (x.shape[-1],), *slot.stats[key], *w.ln[key],  # type: ignore[index]
                                [True, False, False])[0]


class StepGrads(NamedTuple):
    """What :func:`backward_core` gives for one layer's step (``M`` rows).

    ``g_s (M, R)``: the gradient of ``s``; ``g_norm (M, H)``: of ``LN(c)``'s output (for
    its weights; None without layer norm); ``gc_prev (M, H)``: of ``c_{t-1}``;
    ``gz_prev (M, 1)``: of ``z_{t-1}`` but for the top-down term's share; ``gz_below (M,
    1)``: of ``z^{below}_t`` but for the bottom-up term's share (None in the bottom
    layer); ``gh_copy (M, H)``: of ``h_{t-1}`` through COPY (None in the bottom layer).
    """

    g_s: Tensor
    g_norm: Tensor | None
    gc_prev: Tensor
    gz_prev: Tensor
    gz_below: Tensor | None
    gh_copy: Tensor | None


def backward_core(
    gh: Tensor,
    gh_out: Tensor | None,
    gz: Tensor,
    gz_out: Tensor | None,
    gc_next: Tensor,
    s: Saved,
    c_prev: Tensor,
    c: Tensor,
    z_below: Tensor | None,
    half_slope: Tensor,
    ln_cell: tuple[Tensor, Tensor] | None,
) -> StepGrads:
    """One layer's step of :func:`step_core` in reverse, from the gradients of its outputs:
    ``h`` (``gh``, plus ``gh_out`` if not None), ``z`` (``gz`` plus ``gz_out``) and ``c``
    (``gc_next``). ``c_prev``, ``c (M, H)``: the cell before and after the step. A pure
    function of tensors, as :func:`step_core`.

    The straight-through gradient (DESIGN.md decision 5) is ``dz/dz~ = 1``; the hard
    sigmoid's gradient is taken as 0 at its two kinks themselves (``clamp``'s autograd
    takes ``a/2`` there; a set of measure 0).
    """
    if gh_out is not None:
        gh = gh + gh_out
    if gz_out is not None:
        gz = gz + gz_out
    H = gh.shape[1]
    f, i, o = s.fio[:, :H], s.fio[:, H : 2 * H], s.fio[:, 2 * H :]
    not_copy = s.not_copy
    # Eq. 3: h = COPY h_prev + (1 - COPY) o tanh(c)
    gh_new = gh if not_copy is None else gh * not_copy
    g_o = gh_new * s.tanh_c
    g_norm = _tanh_backward(gh_new * o, s.tanh_c)
    g_tanh = g_norm
    if ln_cell is not None:
        g_tanh = _layer_norm_backward(g_norm, c, (H,), *s.cell_stats, *ln_cell,  # type: ignore[misc]
                                      [True, False, False])[0]
    gc = g_tanh + gc_next
    # Eq. 2: c = c_prev (UPDATE f + COPY) + (1 - COPY) i g
    gc_cprev = gc * c_prev
    g_f = gc_cprev * s.update
    g_ig = gc if not_copy is None else gc * not_copy
    g_i, g_g = g_ig * s.g, g_ig * i
    # dL/dUPDATE through f c_prev, and, in a layer that can copy,
    # dL/d(1 - COPY) - dL/dCOPY = <[gh | gc], diff> + gz (z_bin - z_prev)
    g_update = _vecdot(gc_cprev, f)
    g_below = None
    if s.copy is None:
        g_prev = g_update.neg()  # UPDATE = 1 - z_prev
    else:
        g_mix = _vecdot(torch.cat([gh, gc], dim=1), s.diff)  # type: ignore[arg-type]
        if s.u is not None:
            g_mix = torch.addcmul(g_mix, gz, s.zdiff)  # type: ignore[arg-type]
        # COPY = not_prev - UPDATE, 1 - COPY = UPDATE + z_prev, UPDATE = not_prev z_below
        g_update = g_update + g_mix
        g_prev = torch.addcmul(g_mix, g_update, z_below, value=-1.0)  # type: ignore[arg-type]
        if s.u is not None:
            g_prev = torch.addcmul(g_prev, gz, s.copy)
        g_below = g_update * s.not_prev
    parts = [_sigmoid_backward(torch.cat([g_f, g_i, g_o], dim=1), s.fio),
             _tanh_backward(g_g, s.g)]
    if s.u is not None:  # Eq. 8-10, straight through: dz/dz~ = 1 (DESIGN.md 5)
        g_tilde = gz if not_copy is None else gz * not_copy
        parts.append(_hardtanh_backward(g_tilde, s.u, 0.0, 1.0) * half_slope)
    g_s = torch.cat(parts, dim=1)
    gh_copy = gh * s.copy if s.copy is not None else None
    return StepGrads(g_s, g_norm if ln_cell is not None else None, gc * s.mix, g_prev,
                     g_below, gh_copy)


def run_backward(
    weights: list[LayerWeights],
    buf: Buffers,
    slope: float,
    grad_h: list[Tensor | None],
    grad_z: Tensor | None,
    grad_c_last: list[Tensor | None],
    core: Callable[..., StepGrads] = backward_core,
) -> tuple[Tensor, list[Tensor], list[Tensor], list[Tensor], list[dict[str, Tensor]]]:
    """BPTT through :func:`run_forward`'s steps, in reverse.

    Args:
        grad_h: per layer, the gradient of ``buf.h`` ``(T+1, N, H)`` (None: zero).
        grad_z: the gradient of ``buf.z`` ``(T+1, N, L)`` (None: zero).
        grad_c_last: per layer, the gradient of the last ``c`` ``(N, H)`` (None: zero).
        core: :func:`backward_core` or its compiled form.

    Returns:
        ``(grad_bottom (T, N, R_1), grad_h0, grad_c0, grad_z0, grad_weights)``: one
        ``(N, H)`` / ``(N, 1)`` tensor per layer for the initial state, and per layer the
        gradient of every tensor :func:`layer_weights` read, by its name.
    """
    L = len(weights)
    steps = buf.z.shape[0] - 1
    like = buf.h[0]
    N = like.shape[1]
    half_slope = like.new_tensor(0.5 * slope)
    views = buf.step_views()
    gh_acc: list[Tensor] = [like.new_zeros(N, w.hidden_size) for w in weights]
    gc_acc = [g if g is not None else like.new_zeros(N, w.hidden_size)
              for g, w in zip(grad_c_last, weights, strict=True)]
    gz_acc = [like.new_zeros(N, 1) for _ in weights]
    grads = [Workspace(w, steps, N, like, grads=True) for w in weights]  # dL/d(what it wrote)
    g_act: list[list[Tensor]] = [[like] * steps for _ in weights]  # dL/ds, step by step
    g_norm: list[list[Tensor]] = [[like] * steps for _ in weights]  # dL/dLN(c)
    gh_out = [g.unbind(0) if g is not None else None for g in grad_h]
    gz_out = [grad_z[:, :, l : l + 1].unbind(0) if grad_z is not None else None
              for l in range(L)]
    for t in range(steps - 1, -1, -1):
        for l in range(L - 1, -1, -1):
            w, v, s = weights[l], views[l], buf.saved[l][t]
            slot, g_slot = buf.work[l].slots[t], grads[l].slots[t]
            below = views[l - 1] if l > 0 else None
            z_prev = v["z"][t]
            z_below = below["z"][t + 1] if below is not None else None
            sg = core(
                gh_acc[l], gh_out[l][t + 1] if gh_out[l] is not None else None,  # type: ignore[index]
                gz_acc[l], gz_out[l][t + 1] if gz_out[l] is not None else None,  # type: ignore[index]
                gc_acc[l], s, v["c"][t], v["c"][t + 1], z_below, half_slope,
                w.ln["cell"] if w.ln is not None else None,
            )
            g_s, g_prev, g_below = sg.g_s, sg.gz_prev, sg.gz_below
            g_act[l][t], gc_acc[l] = g_s, sg.gc_prev
            if sg.g_norm is not None:
                g_norm[l][t] = sg.g_norm
            # s = U h_prev + z_prev U_td h_above + z_below W h_below + b
            if w.ln is None:
                H, Ha, _ = w.widths()
                gx = w.product("fused^T")(g_s)  # dL/d[h_prev | z h_above | z_below h_below]
                gx_h = gx[:, :H]
                gh_acc[l] = gx_h if sg.gh_copy is None else sg.gh_copy + gx_h
                if w.U_td is not None:
                    g_above = gx[:, H : H + Ha]
                    g_prev = g_prev + _vecdot(g_above, views[l + 1]["h"][t])
                    gh_acc[l + 1] = torch.addcmul(gh_acc[l + 1], g_above, z_prev)
                if below is not None:
                    g_bu = gx[:, H + Ha :]
                    g_below = g_below + _vecdot(g_bu, below["h"][t + 1])  # type: ignore[operator]
                    gh_acc[l - 1] = torch.addcmul(gh_acc[l - 1], g_bu, z_below)  # type: ignore[arg-type]
            else:
                g_rec = _ln_backward(g_s, w, "recurrent", slot.proj["U"], slot)
                g_slot.proj["U"].copy_(g_rec)
                g_rec_h = w.product("U^T")(g_rec)
                gh_acc[l] = g_rec_h if sg.gh_copy is None else sg.gh_copy + g_rec_h
                if w.U_td is not None:
                    g_prev = g_prev + _vecdot(g_s, slot.normed["top_down"])
                    g_td = _ln_backward(g_s * z_prev, w, "top_down", slot.proj["U_td"], slot)
                    g_slot.proj["U_td"].copy_(g_td)
                    gh_acc[l + 1] = gh_acc[l + 1] + w.product("U_td^T")(g_td)
                if below is not None:
                    g_below = g_below + _vecdot(g_s, slot.normed["bottom_up"])  # type: ignore[operator]
                    g_bu = _ln_backward(g_s * z_below, w, "bottom_up", slot.proj["W"], slot)  # type: ignore[operator]
                    g_slot.proj["W"].copy_(g_bu)
                    gh_acc[l - 1] = gh_acc[l - 1] + w.product("W^T")(g_bu)
            gz_acc[l] = g_prev
            if g_below is not None:
                gz_acc[l - 1] = gz_acc[l - 1] + g_below
    grad_h0 = [g if gh_out[l] is None else g + gh_out[l][0]  # type: ignore[index]
               for l, g in enumerate(gh_acc)]
    grad_z0 = [g if gz_out[l] is None else g + gz_out[l][0]  # type: ignore[index]
               for l, g in enumerate(gz_acc)]
    g_acts = [torch.stack(g) for g in g_act]  # (T, N, R) per layer
    weight_grads = [
        _weight_grads(weights, buf, l, g_acts[l], grads[l],
                      torch.stack(g_norm[l]) if w.ln is not None else None)
        for l, w in enumerate(weights)
    ]
    return g_acts[0], grad_h0, gc_acc, grad_z0, weight_grads


def _weight_grads(
    weights: list[LayerWeights], buf: Buffers, l: int, g_act: Tensor, grads: Workspace,
    g_norm: Tensor | None,
) -> dict[str, Tensor]:
    """Each weight's gradient as one product over all steps: ``sum_t g_t^T x_t``.

    ``g_act (T, N, R)``: the gradients of ``s``; ``grads`` holds, step by step, those of
    the products before normalisation (``proj``); ``g_norm (T, N, H)``: of ``LN(c)``'s
    output (None without layer norm).
    """
    w, work = weights[l], buf.work[l]
    R, top = w.rows, len(weights) - 1
    gs = g_act.reshape(-1, R)
    out = {"bias": gs.sum(0)}
    gates = {"U": None, "U_td": buf.z[:-1, :, l : l + 1],  # z_{t-1}, z^{below}_t
             "W": buf.z[1:, :, l - 1 : l] if l > 0 else None}
    if w.ln is None:
        H, Ha, _ = w.widths()
        x = work.x.reshape(-1, work.x.shape[2])  # type: ignore[union-attr]  (T N, K)
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
    for name, h in hidden.items():
        if h is None:
            continue
        gate = gates[name]
        g_proj = grads.proj[name].reshape(-1, R)
        out[name] = _gated_outer(g_proj, h.reshape(-1, h.shape[2]),
                                 gate if w.skip_gated else None)
        key = _LN_OF[name]
        upstream = g_act if gate is None else g_act * gate
        _, out[f"ln_{key}.weight"], out[f"ln_{key}.bias"] = _layer_norm_backward(
            upstream, work.proj[name], (R,), *_layer_norm_stats(work.proj[name], w.eps),
            *w.ln[key],  # type: ignore[index]
            [False, True, True],
        )
    _, out["ln_cell.weight"], out["ln_cell.bias"] = _layer_norm_backward(
        g_norm, buf.c[l][1:], (w.hidden_size,), *_layer_norm_stats(buf.c[l][1:], w.eps),
        *w.ln["cell"],  # type: ignore[index]
        [False, True, True],
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


def packing_rows(rows: int, steps: int) -> int:
    """``rows`` for :class:`Linear` where a weight serves enough products (``steps``) to pay
    for packing it, else 0."""
    return rows if steps >= _PACK_MIN_STEPS else 0


def weights_of(
    names: tuple[tuple[str, ...], ...], params: tuple[Tensor, ...], eps: float, rows: int
) -> list[LayerWeights]:
    """Every layer's :class:`LayerWeights` from :func:`cell_tensors`'s names and tensors,
    for products of about ``rows`` rows (0: unpacked, see :class:`Linear`)."""
    out, start = [], 0
    for layer in names:
        out.append(layer_weights(layer, params[start : start + len(layer)], eps, rows))
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
        weights = weights_of(spec.names, tensors[3 * L :], spec.eps,
                             packing_rows(bottom.shape[1], bottom.shape[0]))
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
        saved = [t.detach() for t in ctx.saved_tensors]  # views of these are made cheaply
        buf.h, buf.z = saved[:L], saved[L]
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
            weights = weights_of(names, params, spec.eps, packing_rows(*input.shape[1::-1]))
            buf = run_forward(weights, bottom + weights[0].bias, h0, c0, z0, slope, boundary,
                              generator, keep=False)
        h_all, z_all, c_last = buf.h, buf.z, tuple(c[-1].clone() for c in buf.c)
    hidden = tuple(h[1:] for h in h_all)
    h_last = tuple(h[-1].clone() for h in h_all)
    z_last = tuple(z_all[-1, :, l : l + 1].clone() for l in range(L))
    return hidden, z_all[1:], h_last, tuple(c_last), z_last
