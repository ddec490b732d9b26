"""The HM-LSTM stack's fast time loop, and its hand-written backward pass (BPTT).

:class:`hmrnn.model.hmlstm.HMLSTM` runs through this module (unless ``fast=False``). It computes
the equations of :class:`hmrnn.model.cell.HMLSTMCell` (docs/model.md), step by step and layer by
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
- in float32 on the CPU the element-wise work of a step (the gates, Eq. 2-3 and 8-10, the
  layer norms, and both halves of a backward step) runs in C (:mod:`hmrnn.model.loop.kernels`), one
  call per layer and step, on the same buffers (``Slot.kernel``); elsewhere in ATen
  operations. The backward pass then recomputes the mixing coefficients that
  :class:`Saved` keeps for the ATen path;
- on the CPU in float32, a large layer's weights are packed once per call for oneDNN
  (:class:`Linear`), whose products of a few rows are faster than ``torch.addmm``'s;
- under autograd the whole sequence is one node, :class:`_HMLSTMFunction`, whose backward
  walks the steps in reverse by hand (the straight-through gradient of docs/model.md decision
  5 included) and computes each weight's gradient as one matrix product over all steps,
  as cuDNN does, instead of one per step. The hard sigmoid's gradient is taken as 0 at
  its two kinks themselves (``clamp``'s autograd takes ``a/2`` there; a set of measure 0);
- in training, a large layer (CPU) makes a gated term's forward product (without layer
  norm) and its weight gradient only on the rows its boundary lets in: the other rows'
  share is exactly 0. The inference loop computes every row and every term: the dense
  path that :mod:`hmrnn.model.sparse` is measured against.

The forward step (:func:`preactivation` then :func:`pointwise`) is shared with the sparse
inference paths of :mod:`hmrnn.model.sparse`, which run it on the rows that are not in COPY.

Shape legend: T time, N batch (M: the rows of a subset), L layers, H hidden size of the
layer, Ha / Hb of the layer above / below, R = 4H + 1 gate rows (4H in the top layer),
K = H + Ha + Hb.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from hmrnn.model.cell import HMLSTMCell
from hmrnn.model.loop import kernels

_sigmoid_backward = torch.ops.aten.sigmoid_backward.grad_input
_tanh_backward = torch.ops.aten.tanh_backward.grad_input
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
_NORMS = ("recurrent", "top_down", "bottom_up", "cell")


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


class Slot(NamedTuple):
    """The scratch of one layer's step, ``M`` rows: views into a :class:`Workspace`.

    ``act (M, R)``: ``s``, then the gates (``gates`` views it); ``tanh_c (M, H)``; ``u``,
    the hard sigmoid's argument, and ``zbin``, the binarised boundary ``(M, 1)`` (None in
    the top layer); without layer norm ``x``: the fused product's input ``(M, K)`` and its
    three column views (absent ones None); with layer norm, by term (``"U"``, ``"U_td"``,
    ``"W"``) ``proj``, the products before normalisation, and by normalisation
    (``"recurrent"``, ``"top_down"``, ``"bottom_up"``, ``"cell"``), filled as the step
    runs, ``normed`` ``(M, R)`` or ``(M, H)`` and ``stats`` ``(mean, rstd)``, each ``(M,
    1)``. For the backward pass
    of a layer that can copy: ``diff = [o tanh(c) - h_{t-1} | i g - c_{t-1}]`` ``(M, 2H)``
    with its two halves, and ``zdiff = z_bin - z_{t-1}`` ``(M, 1)`` (else None).
    ``kernel``: the step runs in :mod:`hmrnn.model.loop.kernels`' fused C functions, which keep each
    normalisation's ``(mean, rstd)`` in ``lnstats[key]`` ``(M, 2)`` (the ATen path fills
    ``normed`` and ``stats`` instead).
    """

    act: Tensor
    gates: Gates
    tanh_c: Tensor
    u: Tensor | None
    zbin: Tensor | None
    x: tuple[Tensor, Tensor, Tensor | None, Tensor | None] | None
    proj: dict[str, Tensor]
    normed: dict[str, Tensor]
    stats: dict[str, tuple[Tensor, Tensor]]
    diff: tuple[Tensor, Tensor, Tensor] | None
    zdiff: Tensor | None
    kernel: bool
    lnstats: dict[str, Tensor]


def use_kernel(like: Tensor, boundary: str) -> bool:
    """Whether steps on tensors like ``like`` run in :mod:`hmrnn.model.loop.kernels` (float32 on the
    CPU, where it compiled; ``"sample"`` boundaries draw from torch's generator, in ATen)."""
    return boundary != "sample" and kernels.enabled(like)


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

    ``grads=True`` makes only what the backward pass writes (the gradients of ``act``,
    ``tanh_c`` and ``proj``); ``keep=True`` also what it reads beyond the states;
    ``fused=False`` no input for the fused product (:func:`preactivation` then multiplies
    term by term); ``kernel=True``: the steps run in :mod:`hmrnn.model.loop.kernels`.
    """

    def __init__(self, w: LayerWeights, steps: int, rows: int, like: Tensor,
                 grads: bool = False, keep: bool = False, fused: bool = True,
                 kernel: bool = False) -> None:
        H, R = w.hidden_size, w.rows
        boundary = w.U_td is not None and not grads
        copies = w.W is not None and keep  # a layer above the bottom one can copy

        def new(width: int) -> Tensor:
            return like.new_empty(steps, rows, width)

        def each(t: Tensor | None) -> list[Any]:
            return list(t.unbind(0)) if t is not None else [None] * steps

        self.act, self.tanh_c = new(R), new(H)
        self.u = new(1) if boundary else None
        self.zbin = new(1) if boundary else None
        self.x = new(sum(w.widths())) if w.fused is not None and fused and not grads else None
        self.diff = new(2 * H) if copies else None
        self.zdiff = new(1) if copies and boundary else None
        self.proj = {name: new(R) for name in _TERMS if w.ln and w.term(name) is not None}
        self.lnstats = new(2 * len(_NORMS)) if kernel and w.ln and not grads else None
        stats = ({key: each(self.lnstats[:, :, 2 * j : 2 * j + 2]) for j, key in enumerate(_NORMS)}
                 if self.lnstats is not None else {})
        gates = Gates.of(self.act, H).unbind()
        xs = _split(self.x, w.widths()) if self.x is not None else [None] * steps
        diffs = _split(self.diff, (H, H)) if self.diff is not None else [None] * steps
        act, tanh_c, u, zbin, zdiff = (each(t) for t in (self.act, self.tanh_c, self.u,
                                                           self.zbin, self.zdiff))
        proj = {name: each(t) for name, t in self.proj.items()}
        self.slots = [
            Slot(act[k], gates[k], tanh_c[k], u[k], zbin[k], xs[k],  # type: ignore[arg-type]
                 {n: v[k] for n, v in proj.items()}, {}, {}, diffs[k], zdiff[k],  # type: ignore[arg-type]
                 kernel, {key: v[k] for key, v in stats.items()})
            for k in range(steps)
        ]


class Saved(NamedTuple):
    """The small tensors one layer's step leaves for the backward pass.

    ``not_prev = 1 - z_{t-1}``, ``update``, ``copy``, ``not_copy = 1 - COPY`` ``(M, 1)``
    (``copy`` and ``not_copy`` are None in the bottom layer, which never copies);
    ``mix = UPDATE f + COPY`` ``(M, H)``.
    """

    not_prev: Tensor
    update: Tensor
    copy: Tensor | None
    not_copy: Tensor | None
    mix: Tensor


def _layer_norm(w: LayerWeights, key: str, x: Tensor, slot: Slot) -> Tensor:
    """``LN_key(x)``, its output, mean and rstd kept in the slot for the backward pass."""
    normed, mean, rstd = torch.native_layer_norm(x, (x.shape[-1],), *w.ln[key], w.eps)  # type: ignore[index]
    slot.normed[key], slot.stats[key] = normed, (mean, rstd)
    return normed


def _layer_norm_stats(work: Workspace, key: str, x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Mean and rstd over the last axis of normalisation ``key``'s input ``x`` for all
    steps at once, ``(*, D) -> (*, 1)`` each: those the fused steps kept, else computed."""
    kept = _stats(work, key)
    if kept is not None:
        return kept[..., :1].contiguous(), kept[..., 1:].contiguous()
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
    if slot.kernel and w.ln is not None and not gated_rows:
        _terms_kernel(w, slot, base, z_prev, h_prev, h_above, z_below, h_below)
        return
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


def _terms_kernel(
    w: LayerWeights, slot: Slot, base: Tensor, z_prev: Tensor, h_prev: Tensor,
    h_above: Tensor | None, z_below: Tensor | None, h_below: Tensor | None,
) -> None:
    """:func:`preactivation` with layer norm in :mod:`hmrnn.model.loop.kernels`: each present term's
    product into ``slot.proj``, then ``s`` in one pass."""
    present = _term_products(w, slot, h_prev, h_above, h_below)
    args = _ln_term_fields(
        w, {n: (slot.proj[n], slot.lnstats[_LN_OF[n]]) for n in present})
    kernels.library()["hm_terms_forward"](  # type: ignore[index]
        len(h_prev), w.rows, slot.act, base, z_prev, z_below, *args, w.eps)


def _term_products(
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


def _ln_term_fields(
    w: LayerWeights, fields: dict[str, tuple[Tensor | None, ...]]
) -> list[Tensor | None]:
    """The per-term fields of the C layer-norm functions, terms in :data:`_TERMS` order:
    ``fields[name]`` then its normalisation's weight and bias for a term in ``fields``, as
    many Nones for the others."""
    width = len(next(iter(fields.values()))) + 2
    out: list[Tensor | None] = []
    for name in _TERMS:
        out += (*fields[name], *w.ln[_LN_OF[name]]) if name in fields else (None,) * width  # type: ignore[index]
    return out


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


def pointwise(
    w: LayerWeights,
    slot: Slot,
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
    sample_rows: tuple[Tensor, int] | None = None,
) -> Saved | None:
    """Gates, Eq. 2-3 and Eq. 8-10 of one step, given ``s`` in ``slot.act``.

    The gates are overwritten with ``f, i, o`` (sigmoid), ``g`` (tanh) and, for the
    ``"soft"`` and ``"sample"`` boundaries, ``z~`` (hard sigmoid). ``h_out``, ``c_out (M,
    H)`` and ``z_out (M, 1)`` (None in the top layer, whose ``z`` stays 0) receive the new
    state. ``z_below`` is None in the bottom layer (``z^0 = 1``). ``sample_rows = (index,
    N)`` draws ``"sample"`` boundaries for a subset of a batch of N rows exactly as for the
    whole batch (one uniform draw per row of the batch). With ``slot.kernel`` the step
    runs in :mod:`hmrnn.model.loop.kernels` and returns None: its backward pass
    recomputes ``Saved``.
    """
    if slot.kernel:
        cell = w.ln["cell"] if w.ln is not None else (None, None)
        kernels.library()["hm_forward"](  # type: ignore[index]
            len(h_prev), w.hidden_size, z_out is not None, boundary == "soft", slot.act,
            h_prev, c_prev, z_prev, z_below, h_out, c_out, z_out, slot.tanh_c, slot.u,
            slot.zbin, slot.diff[0] if slot.diff is not None else None, slot.zdiff,
            slot.lnstats.get("cell"), *cell, slope, w.eps)
        return None
    gates = slot.gates
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
    torch.tanh(c_out if w.ln is None else _layer_norm(w, "cell", c_out, slot), out=slot.tanh_c)
    oh = gates.o * slot.tanh_c
    if copy is None:  # Eq. 3
        h_out.copy_(oh)
    else:
        torch.mul(h_prev, copy, out=h_out)
        h_out.addcmul_(oh, not_copy)  # type: ignore[arg-type]
    if slot.diff is not None:  # what COPY's coefficient multiplies, for the backward pass
        torch.sub(oh, h_prev, out=slot.diff[1])
        torch.sub(ig, c_prev, out=slot.diff[2])
    if z_out is not None:
        # u = (a s_z + 1) / 2 exactly as the cell rounds it: halving is exact
        u = torch.mul(gates.z, 0.5 * slope, out=slot.u).add_(0.5)  # type: ignore[arg-type]
        zbin = _binarize(u, gates.z, slot.zbin, boundary, generator, sample_rows)  # type: ignore[arg-type]
        if copy is None:  # Eq. 8-9
            z_out.copy_(zbin)
        else:
            torch.mul(z_prev, copy, out=z_out)
            z_out.addcmul_(zbin, not_copy)  # type: ignore[arg-type]
        if slot.zdiff is not None:
            torch.sub(zbin, z_prev, out=slot.zdiff)
    return Saved(not_prev, update, copy, not_copy, mix)


def _binarize(
    u: Tensor, z_tilde: Tensor, out: Tensor, boundary: str, generator: torch.Generator | None,
    rows: tuple[Tensor, int] | None,
) -> Tensor:
    """The forward value of :func:`hmrnn.model.functional.binarize` of ``z~ = clamp(u, 0, 1)``
    (written into ``z_tilde`` where it is needed) into ``out``; the gradient is in
    :func:`run_backward`."""
    if boundary == "step":
        return torch.gt(u, 0.5, out=out)  # z~ > 0.5 exactly when u > 0.5
    torch.clamp(u, 0.0, 1.0, out=z_tilde)  # Eq. 10
    if boundary == "soft":
        return out.copy_(z_tilde)
    if rows is None:
        return torch.bernoulli(z_tilde, generator=generator, out=out)
    index, n = rows  # one draw per row of the whole batch, as the dense loop makes
    p = z_tilde.new_zeros(n, 1).index_copy_(0, index, z_tilde)
    return torch.index_select(torch.bernoulli(p, generator=generator), 0, index, out=out)


class Buffers:
    """The states of one call for all steps, every layer's workspace, and what the
    backward pass reads.

    Per layer: ``h``, ``c`` ``(T+1, N, H)`` (index 0 is the initial state) and a
    :class:`Workspace` of ``T'`` steps; shared: ``z`` ``(T+1, N, L)``. ``T' = T`` when the
    backward pass will run, else 1 (one slot, reused). ``kernel``: the steps run in
    :mod:`hmrnn.model.loop.kernels`.
    """

    def __init__(
        self, weights: list[LayerWeights], h0: tuple[Tensor, ...], c0: tuple[Tensor, ...],
        z0: tuple[Tensor, ...], steps: int, keep: bool, kernel: bool,
    ) -> None:
        N = h0[0].shape[0]
        like = h0[0]
        self.keep, self.kernel = keep, kernel
        self.h = [like.new_empty(steps + 1, N, w.hidden_size) for w in weights]
        self.c = [like.new_empty(steps + 1, N, w.hidden_size) for w in weights]
        self.z = like.new_zeros(steps + 1, N, len(weights))
        for l in range(len(weights)):
            self.h[l][0] = h0[l]
            self.c[l][0] = c0[l]
            self.z[0, :, l : l + 1] = z0[l]
        self.work = [Workspace(w, steps if keep else 1, N, like, keep=keep, kernel=kernel)
                     for w in weights]
        self.saved: list[list[Saved | None]] = [[] for _ in weights]

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
) -> Buffers:
    """The dense loop: every layer, every row, every step.

    Args:
        bottom: ``W x_t + bias`` of the bottom layer for all steps, ``(T, N, R_1)``.
        h0, c0, z0: the initial state, ``L`` tensors each.
        keep: keep what the backward pass needs.
    """
    steps = bottom.shape[0]
    buf = Buffers(weights, h0, c0, z0, steps, keep, use_kernel(bottom, boundary))
    views = buf.step_views()
    bottom_steps = bottom.unbind(0)
    if buf.kernel:
        _fused_forward(weights, buf, views, bottom, slope, boundary)
        return buf
    for t in range(steps):
        for l in range(len(weights)):
            saved = dense_step(weights, buf, views, l, t, bottom_steps[t], slope, boundary,
                               generator)
            if keep:
                buf.saved[l].append(saved)
    return buf


def _layer_tensors(buf: Buffers, l: int) -> dict[str, Tensor | None]:
    """Layer ``l``'s states as ``(T, N, *)`` tensors whose index ``t`` is step ``t``'s
    (what :meth:`Kernel.bind` steps through): ``h_prev``, ``c_prev``, ``z_prev``, ``h``,
    ``c``, ``z`` (None in the top layer); ``h_above`` (``t-1``, None in the top layer),
    ``h_below`` and ``z_below`` (``t``, None in the bottom layer)."""
    L = len(buf.h)
    z = buf.z[:, :, l : l + 1]
    top, bottom = l == L - 1, l == 0
    return {
        "h_prev": buf.h[l][:-1], "c_prev": buf.c[l][:-1], "z_prev": z[:-1],
        "h": buf.h[l][1:], "c": buf.c[l][1:], "z": None if top else z[1:],
        "h_above": None if top else buf.h[l + 1][:-1],
        "h_below": None if bottom else buf.h[l - 1][1:],
        "z_below": None if bottom else buf.z[1:, :, l - 1 : l],
    }


def _fused_forward(
    weights: list[LayerWeights], buf: Buffers, views: list[dict[str, list[Tensor]]],
    bottom: Tensor, slope: float, boundary: str,
) -> None:
    """:func:`run_forward`'s loop on :mod:`hmrnn.model.loop.kernels`: per layer and step the fused
    product's input (one call), the products (torch), the layer norms of the terms (one
    call) and the rest of the step (one call), each call's struct packed once."""
    lib = kernels.library()
    L, N = len(weights), bottom.shape[1]
    fwd, gather, terms = [], [], []
    for l, w in enumerate(weights):
        work, s = buf.work[l], _layer_tensors(buf, l)
        cell = w.ln["cell"] if w.ln is not None else (None, None)
        fwd.append(lib["hm_forward"].bind(  # type: ignore[index]
            N, w.hidden_size, s["z"] is not None, boundary == "soft", work.act, s["h_prev"],
            s["c_prev"], s["z_prev"], s["z_below"], s["h"], s["c"], s["z"], work.tanh_c,
            work.u, work.zbin, work.diff, work.zdiff, _stats(work, "cell"), *cell, slope,
            w.eps))
        if w.ln is None:
            _, Ha, Hb = w.widths()
            gather.append(lib["hm_gather"].bind(  # type: ignore[index]
                N, w.hidden_size, Ha, Hb, work.x, s["h_prev"], s["h_above"], s["z_prev"],
                s["h_below"], s["z_below"]))
            continue
        args = _ln_term_fields(w, {n: (p, _stats(work, _LN_OF[n])) for n, p in work.proj.items()})
        terms.append(lib["hm_terms_forward"].bind(  # type: ignore[index]
            N, w.rows, work.act, bottom if l == 0 else w.bias, s["z_prev"], s["z_below"],
            *args, w.eps))
    for t in range(bottom.shape[0]):
        for l, w in enumerate(weights):
            v, slot = views[l], buf.work[l].slots[t if buf.keep else 0]
            top = l == L - 1
            below = views[l - 1] if l > 0 else None
            base = bottom[t] if l == 0 else w.bias
            if w.ln is not None:
                _term_products(w, slot, v["h"][t], None if top else views[l + 1]["h"][t],
                               below["h"][t + 1] if below is not None else None)
                terms[l](t)
            elif w.skip_gated and buf.keep:  # the gated terms' products on their rows only
                preactivation(w, slot, base, v["h"][t], v["z"][t],
                              None if top else views[l + 1]["h"][t],
                              below["z"][t + 1] if below is not None else None,
                              below["h"][t + 1] if below is not None else None, gated_rows=True)
            else:
                gather[l](t)
                w.product("fused")(slot.x[0], base, out=slot.act)  # type: ignore[index]
            fwd[l](t)


def _stats(work: Workspace, key: str) -> Tensor | None:
    """The ``(S, M, 2)`` mean and rstd of normalisation ``key`` in a fused workspace."""
    if work.lnstats is None:
        return None
    j = _NORMS.index(key)
    return work.lnstats[:, :, 2 * j : 2 * j + 2]


def dense_step(
    weights: list[LayerWeights],
    buf: Buffers,
    views: list[dict[str, list[Tensor]]],
    l: int,
    t: int,
    bottom: Tensor,
    slope: float,
    boundary: str,
    generator: torch.Generator | None,
) -> Saved | None:
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
    # and term computed, which is what hmrnn.model.sparse is measured against.
    preactivation(w, slot, bottom if l == 0 else w.bias, v["h"][t], z_prev,
                  None if top else views[l + 1]["h"][t], z_below,
                  below["h"][t + 1] if below is not None else None,
                  gated_rows=w.skip_gated and buf.keep and w.ln is None)
    return pointwise(w, slot, v["h"][t], v["c"][t], z_prev, z_below, v["h"][t + 1],
                     v["c"][t + 1], None if top else v["z"][t + 1], slope, boundary, generator)


def _vecdot(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise dot products ``(M, D), (M, D) -> (M, 1)``."""
    return torch.linalg.vecdot(a, b).unsqueeze(1)


def _ln_backward(grad: Tensor, w: LayerWeights, key: str, x: Tensor, slot: Slot) -> Tensor:
    """The gradient of ``LN_key``'s input ``x`` from its output's, ``grad``."""
    return _layer_norm_backward(grad, x, (x.shape[-1],), *slot.stats[key], *w.ln[key],  # type: ignore[index]
                                [True, False, False])[0]


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
    gh_acc: list[Tensor] = [like.new_zeros(N, w.hidden_size) for w in weights]
    # the fused steps add into dL/dc in place: not into the caller's tensor
    gc_acc = [(g.clone(memory_format=torch.contiguous_format) if buf.kernel else g)
              if g is not None
              else like.new_zeros(N, w.hidden_size)
              for g, w in zip(grad_c_last, weights, strict=True)]
    grads = [Workspace(w, steps, N, like, grads=True) for w in weights]  # dL/d(what it wrote)
    steps_of = _fused_steps if buf.kernel else _aten_steps
    gz_acc = steps_of(weights, buf, 0.5 * slope, grad_h, grad_z, gh_acc, gc_acc, grads)
    grad_h0 = [g if grad_h[l] is None else g + grad_h[l][0]  # type: ignore[index]
               for l, g in enumerate(gh_acc)]
    grad_z0 = [g if grad_z is None else g + grad_z[0, :, l : l + 1]
               for l, g in enumerate(gz_acc)]
    weight_grads = [_weight_grads(weights, buf, l, grads[l]) for l in range(L)]
    return grads[0].act, grad_h0, gc_acc, grad_z0, weight_grads


def _aten_steps(
    weights: list[LayerWeights], buf: Buffers, half_slope: float,
    grad_h: list[Tensor | None], grad_z: Tensor | None,
    gh_acc: list[Tensor], gc_acc: list[Tensor], grads: list[Workspace],
) -> list[Tensor]:
    """:func:`run_backward`'s steps in ATen operations: they update the running gradients
    ``gh_acc`` and ``gc_acc`` (per layer ``(N, H)``, replaced as they go), fill ``grads``
    and return the gradient of each layer's initial ``z`` ``(N, 1)`` so far."""
    L = len(weights)
    gh_out = [g.unbind(0) if g is not None else None for g in grad_h]
    gz_out = [grad_z[:, :, l : l + 1].unbind(0) if grad_z is not None else None
              for l in range(L)]
    steps = buf.z.shape[0] - 1
    like = buf.h[0]
    N = like.shape[1]
    views = buf.step_views()
    gz_acc = [like.new_zeros(N, 1) for _ in weights]
    # [dL/dh | dL/dc] of the step, beside each other as diff is: one dot product for both
    g_hc = [_split(like.new_empty(1, N, 2 * w.hidden_size), (w.hidden_size,) * 2)[0]
            for w in weights]
    # dL/d[h_prev | z h_above | z_below h_below], two per layer: a step's stays readable
    # while the step before writes the other
    g_x = [_split(like.new_empty(2, N, sum(w.widths())), w.widths()) if w.ln is None else None
           for w in weights]
    for t in range(steps - 1, -1, -1):
        for l in range(L - 1, -1, -1):
            w, v, saved = weights[l], views[l], buf.saved[l][t]
            slot, g_slot = buf.work[l].slots[t], grads[l].slots[t]
            gates, tanh_c, gs = slot.gates, slot.tanh_c, g_slot.gates
            below = views[l - 1] if l > 0 else None
            z_prev = v["z"][t]
            z_below = below["z"][t + 1] if below is not None else None
            copy, not_copy = saved.copy, saved.not_copy
            _, gh, gc = g_hc[l]
            if gh_out[l] is None:
                gh.copy_(gh_acc[l])  # type: ignore[union-attr]
            else:
                torch.add(gh_acc[l], gh_out[l][t + 1], out=gh)  # type: ignore[index]
            gz = gz_acc[l] if gz_out[l] is None else gz_acc[l] + gz_out[l][t + 1]  # type: ignore[index]
            # Eq. 3: h = COPY h_prev + (1 - COPY) o tanh(c)
            gh_new = gh if not_copy is None else gh * not_copy  # type: ignore[operator]
            torch.mul(gh_new, tanh_c, out=gs.o)
            g_tanh = _tanh_backward(gh_new * gates.o, tanh_c, grad_input=g_slot.tanh_c)
            if w.ln is not None:
                g_tanh = _ln_backward(g_tanh, w, "cell", v["c"][t + 1], slot)
            torch.add(g_tanh, gc_acc[l], out=gc)
            # Eq. 2: c = c_prev (UPDATE f + COPY) + (1 - COPY) i g
            gc_cprev = gc * v["c"][t]  # type: ignore[operator]
            torch.mul(gc_cprev, saved.update, out=gs.f)
            gc_acc[l] = gc * saved.mix  # type: ignore[operator]
            g_ig = gc if not_copy is None else gc * not_copy  # type: ignore[operator]
            torch.mul(g_ig, gates.g, out=gs.i)
            torch.mul(g_ig, gates.i, out=gs.g)
            if gs.z is not None:  # Eq. 8-10, straight through: dz/dz~ = 1 (model.md 5)
                g_tilde = gz if not_copy is None else gz * not_copy
                torch.mul(_hardtanh_backward(g_tilde, slot.u, 0.0, 1.0), half_slope, out=gs.z)
            # dL/dUPDATE through f c_prev, and, in a layer that can copy,
            # dL/d(1 - COPY) - dL/dCOPY = <[gh | gc], diff> + gz (z_bin - z_prev)
            g_update = _vecdot(gc_cprev, gates.f)
            g_below = None
            if copy is None:
                g_prev = g_update.neg_()  # UPDATE = 1 - z_prev
            else:
                g_mix = _vecdot(g_hc[l][0], slot.diff[0])  # type: ignore[arg-type, index]
                if gs.z is not None:
                    g_mix.addcmul_(gz, slot.zdiff)  # type: ignore[arg-type]
                # COPY = not_prev - UPDATE, 1 - COPY = UPDATE + z_prev, UPDATE = not_prev z_below
                g_update.add_(g_mix)
                g_prev = torch.addcmul(g_mix, g_update, z_below, value=-1.0)  # type: ignore[arg-type]
                if gs.z is not None:
                    g_prev.addcmul_(gz, copy)
                g_below = g_update.mul_(saved.not_prev)
            _sigmoid_backward(gs.fio, gates.fio, grad_input=gs.fio)
            _tanh_backward(gs.g, gates.g, grad_input=gs.g)
            # s = U h_prev + z_prev U_td h_above + z_below W h_below + b
            g_s = g_slot.act
            g_hprev = gh * copy if copy is not None else None  # type: ignore[operator]
            if w.ln is None:
                gx, gx_h, g_above, g_bu = g_x[l][t % 2]  # type: ignore[index, misc]
                w.product("fused^T")(g_s, out=gx)
                gh_acc[l] = gx_h if g_hprev is None else g_hprev.add_(gx_h)  # type: ignore[assignment, arg-type]
                if g_above is not None:
                    g_prev.add_(_vecdot(g_above, views[l + 1]["h"][t]))
                    gh_acc[l + 1].addcmul_(g_above, z_prev)
                if g_bu is not None:
                    g_below.add_(_vecdot(g_bu, below["h"][t + 1]))  # type: ignore[index, union-attr]
                    gh_acc[l - 1].addcmul_(g_bu, z_below)  # type: ignore[arg-type]
            else:
                g_rec = _ln_backward(g_s, w, "recurrent", slot.proj["U"], slot)
                g_slot.proj["U"].copy_(g_rec)
                g_rec_h = w.product("U^T")(g_rec)
                gh_acc[l] = g_rec_h if g_hprev is None else g_hprev.add_(g_rec_h)
                if w.U_td is not None:
                    g_prev.add_(_vecdot(g_s, slot.normed["top_down"]))
                    g_td = _ln_backward(g_s * z_prev, w, "top_down", slot.proj["U_td"], slot)
                    g_slot.proj["U_td"].copy_(g_td)
                    gh_acc[l + 1].add_(w.product("U_td^T")(g_td))
                if below is not None:
                    g_below.add_(_vecdot(g_s, slot.normed["bottom_up"]))  # type: ignore[union-attr]
                    g_bu = _ln_backward(g_s * z_below, w, "bottom_up", slot.proj["W"], slot)  # type: ignore[operator]
                    g_slot.proj["W"].copy_(g_bu)
                    gh_acc[l - 1].add_(w.product("W^T")(g_bu))
            gz_acc[l] = g_prev
            if g_below is not None:
                gz_acc[l - 1] = gz_acc[l - 1] + g_below
    return gz_acc


def _fused_steps(
    weights: list[LayerWeights], buf: Buffers, half_slope: float,
    grad_h: list[Tensor | None], grad_z: Tensor | None,
    gh_acc: list[Tensor], gc_acc: list[Tensor], grads: list[Workspace],
) -> list[Tensor]:
    """:func:`_aten_steps` on :mod:`hmrnn.model.loop.kernels`: per layer and step, one call from the
    gradients of ``h``, ``c``, ``z`` to that of ``s``, the products with the weights
    (torch), and one call that adds their results into the running gradients (in place);
    each call's struct is packed once."""
    lib = kernels.library()
    L = len(weights)
    N = gh_acc[0].shape[0]
    gz = gh_acc[0].new_zeros(N, L)
    gz_acc = [gz[:, l : l + 1] for l in range(L)]
    g_x = [gh_acc[0].new_empty(N, sum(w.widths())) if w.ln is None else None for w in weights]
    first, second = [], []
    grad_z = grad_z.contiguous() if grad_z is not None else None
    for l, w in enumerate(weights):
        work, g_work, s = buf.work[l], grads[l], _layer_tensors(buf, l)
        top, bottom = l == L - 1, l == 0
        below_acc = (None, None) if bottom else (gh_acc[l - 1], gz_acc[l - 1])
        g_h = grad_h[l].contiguous() if grad_h[l] is not None else None  # (rows adjacent)
        g_z = grad_z[:, :, l : l + 1] if grad_z is not None else None
        first.append(lib["hm_backward"].bind(  # type: ignore[index]
            N, w.hidden_size, not top, work.act, work.tanh_c, s["c"], s["c_prev"], work.u,
            work.diff, work.zdiff, s["z_prev"], s["z_below"], _stats(work, "cell"),
            w.ln["cell"][0] if w.ln is not None else None, gh_acc[l],
            g_h[1:] if g_h is not None else None, gc_acc[l], gz_acc[l],
            g_z[1:] if g_z is not None else None, below_acc[1], g_work.act, g_work.tanh_c,
            gh_acc[l].new_empty(w.hidden_size), half_slope))
        if w.ln is None:
            _, Ha, Hb = w.widths()
            second.append(lib["hm_spread"].bind(  # type: ignore[index]
                N, w.hidden_size, Ha, Hb, g_x[l], gh_acc[l], s["h_above"], s["z_prev"],
                None if top else gh_acc[l + 1], gz_acc[l], s["h_below"], s["z_below"],
                *below_acc))
            continue
        terms = _ln_term_fields(w, {n: (p, _stats(work, _LN_OF[n]), g_work.proj[n])
                                    for n, p in work.proj.items()})
        second.append(lib["hm_terms_backward"].bind(  # type: ignore[index]
            N, w.rows, g_work.act, s["z_prev"], s["z_below"], gz_acc[l], below_acc[1], *terms))
    for t in range(buf.z.shape[0] - 2, -1, -1):
        for l in range(L - 1, -1, -1):
            w, g_slot = weights[l], grads[l].slots[t]
            first[l](t)
            if w.ln is None:  # dL/d[h_prev | z h_above | z_below h_below]
                w.product("fused^T")(g_slot.act, out=g_x[l])
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


def _weight_grads(
    weights: list[LayerWeights], buf: Buffers, l: int, grads: Workspace
) -> dict[str, Tensor]:
    """Each weight's gradient as one product over all steps: ``sum_t g_t^T x_t``.

    ``grads`` holds, step by step, the gradients of ``s`` (``act``), of the products
    before normalisation (``proj``) and of ``tanh``'s input (``tanh_c``: ``LN(c)``'s output).
    """
    w, work = weights[l], buf.work[l]
    R, top = w.rows, len(weights) - 1
    gs = grads.act.reshape(-1, R)
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
        upstream = grads.act if gate is None else grads.act * gate
        _, out[f"ln_{key}.weight"], out[f"ln_{key}.bias"] = _layer_norm_backward(
            upstream, work.proj[name], (R,), *_layer_norm_stats(work, key, work.proj[name], w.eps),
            *w.ln[key],  # type: ignore[index]
            [False, True, True],
        )
    _, out["ln_cell.weight"], out["ln_cell.bias"] = _layer_norm_backward(
        grads.tanh_c, buf.c[l][1:], (w.hidden_size,),
        *_layer_norm_stats(work, "cell", buf.c[l][1:], w.eps),
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
        with torch.autocast(saved[L].device.type, enabled=False):  # as its forward ran
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
    """Run the stack over a sequence: what :meth:`hmrnn.model.hmlstm.HMLSTM.forward` computes.

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
