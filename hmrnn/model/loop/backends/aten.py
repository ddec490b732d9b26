"""The ATen step backend (``backend="aten"``): any device, any dtype, every boundary mode.

Each function is the twin of the C function it is named after
(:mod:`hmrnn.model.loop.backends.cpu`, ``csrc/hmlstm_step.c``): the same fields in the
same layouts, read and written alike, so that the loop drivers serve both; each returns
``step(t)``, which runs ATen operations on step ``t``'s views of the fields (see
:mod:`hmrnn.model.loop.workspace` for the three layouts). The backward step recomputes
the mixing coefficients of Eq. 2-3 from ``z`` as the C one does.

UPDATE, COPY and FLUSH are mixed with ``COPY = (1 - z_{t-1}) - UPDATE`` and ``1 - COPY =
UPDATE + FLUSH``, so Eq. 2-3 (docs/model.md) read ``c = c_{t-1} (UPDATE f + COPY) + (1 -
COPY) i g`` and ``h = COPY h_{t-1} + (1 - COPY) o tanh(c)``: the same functions of ``z``
(bit for bit when ``z`` is 0 or 1) in fewer operations. The hard sigmoid's gradient is
taken as 0 at its two kinks themselves (``clamp``'s autograd takes ``a/2`` there; a set
of measure 0).

Shape legend: M rows, H hidden size of the layer, R = 4H + 1 gate rows (4H in the top
layer), K = H + Ha + Hb.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from hmrnn.model.functional import logistic_noise
from hmrnn.model.loop.backends.interface import Step, Term, TermGrad

_sigmoid_backward = torch.ops.aten.sigmoid_backward.grad_input
_tanh_backward = torch.ops.aten.tanh_backward.grad_input
_hardtanh_backward = torch.ops.aten.hardtanh_backward.default
_layer_norm_backward = torch.ops.aten.native_layer_norm_backward.default


class Gates(NamedTuple):
    """Views of a ``(M, R)`` gate tensor: ``fio (M, 3H)``, ``f, i, o, g (M, H)``, ``z (M,
    1)`` (None in the top layer)."""

    fio: Tensor
    f: Tensor
    i: Tensor
    o: Tensor
    g: Tensor
    z: Tensor | None

    @classmethod
    def of(cls, act: Tensor, H: int) -> Gates:
        z = act[:, 4 * H :] if act.shape[-1] > 4 * H else None
        return cls(act[:, : 3 * H], act[:, :H], act[:, H : 2 * H], act[:, 2 * H : 3 * H],
                   act[:, 3 * H : 4 * H], z)


def _at(v: Any) -> Callable[[int], Any]:
    """Step ``t``'s view of a field: ``(S, M, D)`` at index ``t`` (0 when ``S`` is 1); a
    smaller tensor, a number or None as it is; a :class:`Term` field by field."""
    if isinstance(v, Tensor) and v.dim() == 3:
        if v.shape[0] == 1:
            first = v[0]
            return lambda t: first
        return v.unbind(0).__getitem__
    if isinstance(v, (Term, TermGrad)):
        parts, kind = [_at(p) for p in v], type(v)
        return lambda t: kind(*(p(t) for p in parts))
    return lambda t: v


def _bind(fn: Callable[..., None], *fields: Any) -> Step:
    """``fn`` on step ``t``'s views of ``fields``, as ``step(t)``."""
    at = [_at(f) for f in fields]

    def step(t: int) -> None:
        fn(*(a(t) for a in at))

    return step


def _vecdot(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise dot products ``(M, D), (M, D) -> (M, 1)``."""
    return torch.linalg.vecdot(a, b).unsqueeze(1)


def _mix(z_prev: Tensor, z_below: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None,
                                                          Tensor | None]:
    """``(1 - z_prev, UPDATE, COPY, 1 - COPY)`` ``(M, 1)``; the last two None in the
    bottom layer (``z^0 = 1``: UPDATE or FLUSH, never COPY)."""
    not_prev = torch.rsub(z_prev, 1.0)
    if z_below is None:
        return not_prev, not_prev, None, None
    update = not_prev * z_below
    return not_prev, update, not_prev - update, update + z_prev


def _layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
                stats: Tensor) -> Tensor:
    """``LN(x)`` over the last axis, its ``[mean | rstd]`` written into ``stats (M, 2)``."""
    normed, mean, rstd = torch.native_layer_norm(x, (x.shape[-1],), weight, bias, eps)
    stats[:, :1].copy_(mean)
    stats[:, 1:].copy_(rstd)
    return normed


def _ln_backward(grad: Tensor, x: Tensor, stats: Tensor, weight: Tensor) -> Tensor:
    """The gradient of ``LN``'s input ``x`` from its output's ``grad`` (``stats``: its
    ``[mean | rstd]``, made contiguous: the ATen kernel misreads strided ones)."""
    mean, rstd = stats[:, :1].contiguous(), stats[:, 1:].contiguous()
    return _layer_norm_backward(grad, x, (x.shape[-1],), mean, rstd, weight, None,
                                [True, False, False])[0]


def _binarize(u: Tensor, z_tilde: Tensor, out: Tensor, boundary: str,
              generator: torch.Generator | None, rows: tuple[Tensor, int] | None) -> Tensor:
    """The forward value of :func:`hmrnn.model.functional.binarize` of ``z~ = clamp(u, 0,
    1)`` (written into ``z_tilde`` where it is needed) into ``out``. ``rows = (index, N)``
    draws ``"sample"`` boundaries for a subset of a batch of N rows exactly as for the
    whole batch (one uniform draw per row of the batch)."""
    if boundary in ("step", "gumbel"):  # "gumbel": the noise is in u already
        return torch.gt(u, 0.5, out=out)  # z~ > 0.5 exactly when u > 0.5
    torch.clamp(u, 0.0, 1.0, out=z_tilde)  # Eq. 10
    if boundary == "soft":
        return out.copy_(z_tilde)
    if rows is None:
        return torch.bernoulli(z_tilde, generator=generator, out=out)
    index, n = rows
    p = z_tilde.new_zeros(n, 1).index_copy_(0, index, z_tilde)
    return torch.index_select(torch.bernoulli(p, generator=generator), 0, index, out=out)


def hm_forward(
    N: int, H: int, has_z: bool, boundary: str, act: Tensor, h_prev: Tensor,
    c_prev: Tensor, z_prev: Tensor, z_below: Tensor | None, h_out: Tensor,
    c_out: Tensor, z_out: Tensor | None, tanh_c: Tensor, u: Tensor | None,
    zbin: Tensor | None, diff: Tensor | None, zdiff: Tensor | None,
    cell_stats: Tensor | None, ln_w: Tensor | None, ln_b: Tensor | None, slope: float | Tensor,
    eps: float, generator: torch.Generator | None = None,
    sample_rows: tuple[Tensor, int] | None = None,
) -> Step:
    """``hm_forward``: gates, Eq. 2-3, Eq. 8-10 of a step, given ``s`` in ``act (M, R)``.

    The gates are overwritten with ``f, i, o`` (sigmoid), ``g`` (tanh) and, for the
    ``"soft"`` and ``"sample"`` boundaries, ``z~`` (hard sigmoid); ``"gumbel"`` adds its
    logistic noise to ``u``. ``h_out``, ``c_out (M,
    H)``, ``z_out (M, 1)`` (None in the top layer) receive the new state; ``u``, ``zbin``
    ``(M, 1)``, ``tanh_c (M, H)``, ``diff (M, 2H)``, ``zdiff (M, 1)`` and ``cell_stats
    (M, 2)`` what the backward step reads (``diff``, ``zdiff`` where given). ``N`` and
    ``has_z`` are implied by the tensors here.
    """
    return _bind(_forward_step, H, boundary, act, h_prev, c_prev, z_prev, z_below, h_out,
                 c_out, z_out, tanh_c, u, zbin, diff, zdiff, cell_stats, ln_w, ln_b, slope,
                 eps, generator, sample_rows)


def _forward_step(
    H: int, boundary: str, act: Tensor, h_prev: Tensor, c_prev: Tensor, z_prev: Tensor,
    z_below: Tensor | None, h_out: Tensor, c_out: Tensor, z_out: Tensor | None,
    tanh_c: Tensor, u: Tensor | None, zbin: Tensor | None, diff: Tensor | None,
    zdiff: Tensor | None, cell_stats: Tensor | None, ln_w: Tensor | None,
    ln_b: Tensor | None, slope: float | Tensor, eps: float, generator: torch.Generator | None,
    sample_rows: tuple[Tensor, int] | None,
) -> None:
    gates = Gates.of(act, H)
    gates.fio.sigmoid_()
    gates.g.tanh_()
    _, update, copy, not_copy = _mix(z_prev, z_below)
    mix = gates.f * update if copy is None else torch.addcmul(copy, update, gates.f)
    ig = gates.i * gates.g
    torch.mul(c_prev, mix, out=c_out)  # Eq. 2
    if not_copy is None:
        c_out.add_(ig)
    else:
        c_out.addcmul_(ig, not_copy)
    if cell_stats is not None and ln_w is not None:
        torch.tanh(_layer_norm(c_out, ln_w, ln_b, eps, cell_stats), out=tanh_c)
    else:
        torch.tanh(c_out, out=tanh_c)
    oh = gates.o * tanh_c
    if copy is None or not_copy is None:  # Eq. 3
        h_out.copy_(oh)
    else:
        torch.mul(h_prev, copy, out=h_out)
        h_out.addcmul_(oh, not_copy)
    if diff is not None:  # what COPY's coefficient multiplies, for the backward step
        torch.sub(oh, h_prev, out=diff[:, :H])
        torch.sub(ig, c_prev, out=diff[:, H:])
    if z_out is not None and gates.z is not None and u is not None and zbin is not None:
        # u = (a s_z + 1) / 2 exactly as the cell rounds it: halving is exact
        torch.mul(gates.z, 0.5 * slope, out=u).add_(0.5)
        if boundary == "gumbel":  # u at the perturbed point a s_z + noise (hard_sigmoid's)
            if sample_rows is not None:
                raise ValueError('"gumbel" boundaries are drawn on whole batches only')
            u.add_(logistic_noise(u, generator).mul_(0.5))
        _binarize(u, gates.z, zbin, boundary, generator, sample_rows)
        if copy is None or not_copy is None:  # Eq. 8-9
            z_out.copy_(zbin)
        else:
            torch.mul(z_prev, copy, out=z_out)
            z_out.addcmul_(zbin, not_copy)
        if zdiff is not None:
            torch.sub(zbin, z_prev, out=zdiff)


def hm_gather(
    N: int, H: int, Ha: int, Hb: int, x: Tensor, h_prev: Tensor, h_above: Tensor | None,
    z_prev: Tensor, h_below: Tensor | None, z_below: Tensor | None,
) -> Step:
    """``hm_gather``: the fused product's input ``x = [h_prev | z_prev h_above | z_below
    h_below]`` ``(M, K)``."""
    return _bind(_gather_step, H, Ha, x, h_prev, h_above, z_prev, h_below, z_below)


def _gather_step(H: int, Ha: int, x: Tensor, h_prev: Tensor, h_above: Tensor | None,
                 z_prev: Tensor, h_below: Tensor | None, z_below: Tensor | None) -> None:
    x[:, :H].copy_(h_prev)
    if h_above is not None:
        torch.mul(h_above, z_prev, out=x[:, H : H + Ha])
    if h_below is not None and z_below is not None:
        torch.mul(h_below, z_below, out=x[:, H + Ha :])


def hm_terms_forward(
    N: int, R: int, act: Tensor, base: Tensor, z_prev: Tensor, z_below: Tensor | None,
    rec: Term, td: Term | None, bu: Term | None, eps: float,
) -> Step:
    """``hm_terms_forward``: ``act = base + LN(rec.proj) + z_below LN(bu.proj) + z_prev
    LN(td.proj)``, each normalisation's ``[mean | rstd]`` into its ``stats``."""
    return _bind(_terms_forward_step, act, base, z_prev, z_below, rec, td, bu, eps)


def _terms_forward_step(act: Tensor, base: Tensor, z_prev: Tensor, z_below: Tensor | None,
                        rec: Term, td: Term | None, bu: Term | None, eps: float) -> None:
    torch.add(_layer_norm(rec.proj, rec.weight, rec.bias, eps, rec.stats), base, out=act)
    for term, gate in ((bu, z_below), (td, z_prev)):
        if term is not None and gate is not None:
            act.addcmul_(_layer_norm(term.proj, term.weight, term.bias, eps, term.stats), gate)


def hm_backward(
    N: int, H: int, has_z: bool, act: Tensor, tanh_c: Tensor, c: Tensor, c_prev: Tensor,
    u: Tensor | None, diff: Tensor | None, zdiff: Tensor | None, z_prev: Tensor,
    z_below: Tensor | None, cell_stats: Tensor | None, ln_w: Tensor | None, gh_acc: Tensor,
    gh_out: Tensor | None, gc_acc: Tensor, gz_acc: Tensor, gz_out: Tensor | None,
    gz_acc_below: Tensor | None, gs: Tensor, g_tanh: Tensor, scratch: Tensor,
    half_slope: float | Tensor,
) -> Step:
    """``hm_backward``: from the gradients of a step's ``h``, ``c``, ``z`` to that of
    ``s``, written into ``gs (M, R)`` (``g_tanh (M, H)``: that of ``tanh``'s input).

    The running gradients are updated in place: ``gh_acc (M, H)`` becomes that of
    ``h_{t-1}`` through COPY (in a layer that can copy; the products add the rest),
    ``gc_acc (M, H)`` that of ``c_{t-1}``, ``gz_acc (M, 1)`` that of ``z_{t-1}`` so far;
    ``gz_acc_below`` receives that of ``z^{below}_t``. ``gh_out``, ``gz_out``: the
    gradients of the step's outputs from outside the loop (None: zero). ``scratch (M,
    2H)`` holds ``[dL/dh | dL/dc]``, beside each other as ``diff`` is.
    """
    return _bind(_backward_step, H, act, tanh_c, c, c_prev, u, diff, zdiff, z_prev, z_below,
                 cell_stats, ln_w, gh_acc, gh_out, gc_acc, gz_acc, gz_out, gz_acc_below, gs,
                 g_tanh, scratch, half_slope)


def _backward_step(
    H: int, act: Tensor, tanh_c: Tensor, c: Tensor, c_prev: Tensor, u: Tensor | None,
    diff: Tensor | None, zdiff: Tensor | None, z_prev: Tensor, z_below: Tensor | None,
    cell_stats: Tensor | None, ln_w: Tensor | None, gh_acc: Tensor, gh_out: Tensor | None,
    gc_acc: Tensor, gz_acc: Tensor, gz_out: Tensor | None, gz_acc_below: Tensor | None,
    gs: Tensor, g_tanh: Tensor, scratch: Tensor, half_slope: float | Tensor,
) -> None:
    gates, g_gates = Gates.of(act, H), Gates.of(gs, H)
    not_prev, update, copy, not_copy = _mix(z_prev, z_below)
    gh, gc = scratch[:, :H], scratch[:, H:]
    if gh_out is None:
        gh.copy_(gh_acc)
    else:
        torch.add(gh_acc, gh_out, out=gh)
    gz = gz_acc if gz_out is None else gz_acc + gz_out
    # Eq. 3: h = COPY h_prev + (1 - COPY) o tanh(c)
    gh_new = gh if not_copy is None else gh * not_copy
    torch.mul(gh_new, tanh_c, out=g_gates.o)
    g_c = _tanh_backward(gh_new * gates.o, tanh_c, grad_input=g_tanh)
    if cell_stats is not None and ln_w is not None:
        g_c = _ln_backward(g_c, c, cell_stats, ln_w)
    if copy is not None:  # dL/dh_prev through COPY; the products add theirs
        torch.mul(gh, copy, out=gh_acc)
    # Eq. 2: c = c_prev (UPDATE f + COPY) + (1 - COPY) i g
    torch.add(g_c, gc_acc, out=gc)
    gc_cprev = gc * c_prev
    torch.mul(gc_cprev, update, out=g_gates.f)
    mix = gates.f * update if copy is None else torch.addcmul(copy, update, gates.f)
    torch.mul(gc, mix, out=gc_acc)
    g_ig = gc if not_copy is None else gc * not_copy
    torch.mul(g_ig, gates.g, out=g_gates.i)
    torch.mul(g_ig, gates.i, out=g_gates.g)
    if g_gates.z is not None and u is not None:  # Eq. 8-10, straight through (model.md 5)
        g_tilde = gz if not_copy is None else gz * not_copy
        torch.mul(_hardtanh_backward(g_tilde, u, 0.0, 1.0), half_slope, out=g_gates.z)
    # dL/dUPDATE through f c_prev, and, in a layer that can copy,
    # dL/d(1 - COPY) - dL/dCOPY = <[gh | gc], diff> + gz (z_bin - z_prev)
    g_update = _vecdot(gc_cprev, gates.f)
    if copy is None or z_below is None or diff is None or gz_acc_below is None:
        g_prev = g_update.neg_()  # UPDATE = 1 - z_prev
    else:
        g_mix = _vecdot(scratch, diff)
        if g_gates.z is not None and zdiff is not None:
            g_mix.addcmul_(gz, zdiff)
        # COPY = not_prev - UPDATE, 1 - COPY = UPDATE + z_prev, UPDATE = not_prev z_below
        g_update.add_(g_mix)
        g_prev = torch.addcmul(g_mix, g_update, z_below, value=-1.0)
        if g_gates.z is not None:
            g_prev.addcmul_(gz, copy)
        gz_acc_below.addcmul_(g_update, not_prev)
    _sigmoid_backward(g_gates.fio, gates.fio, grad_input=g_gates.fio)
    _tanh_backward(g_gates.g, gates.g, grad_input=g_gates.g)
    gz_acc.copy_(g_prev)


def hm_spread(
    N: int, H: int, Ha: int, Hb: int, gx: Tensor, gh_acc: Tensor, h_above: Tensor | None,
    z_prev: Tensor, gh_acc_above: Tensor | None, gz_acc: Tensor, h_below: Tensor | None,
    z_below: Tensor | None, gh_acc_below: Tensor | None, gz_acc_below: Tensor | None,
) -> Step:
    """``hm_spread``: ``gx = dL/d[h_prev | z_prev h_above | z_below h_below]`` ``(M, K)``
    added onto the running gradients of ``h_prev`` (set, in the bottom layer, which has no
    COPY share), ``h_above`` and ``z_prev``, ``h_below`` and ``z_below``."""
    return _bind(_spread_step, H, Ha, Hb, gx, gh_acc, h_above, z_prev, gh_acc_above, gz_acc,
                 h_below, z_below, gh_acc_below, gz_acc_below)


def _spread_step(
    H: int, Ha: int, Hb: int, gx: Tensor, gh_acc: Tensor, h_above: Tensor | None,
    z_prev: Tensor, gh_acc_above: Tensor | None, gz_acc: Tensor, h_below: Tensor | None,
    z_below: Tensor | None, gh_acc_below: Tensor | None, gz_acc_below: Tensor | None,
) -> None:
    if Hb > 0:  # a layer above the bottom one: gh_acc holds dL/dh_prev through COPY
        gh_acc.add_(gx[:, :H])
    else:
        gh_acc.copy_(gx[:, :H])
    for g, h, z, gh_other, gz_other in (
        (gx[:, H : H + Ha], h_above, z_prev, gh_acc_above, gz_acc),
        (gx[:, H + Ha :], h_below, z_below, gh_acc_below, gz_acc_below),
    ):
        if h is not None and z is not None and gh_other is not None and gz_other is not None:
            gz_other.add_(_vecdot(g, h))
            gh_other.addcmul_(g, z)


def hm_terms_backward(
    N: int, R: int, gs: Tensor, z_prev: Tensor, z_below: Tensor | None, gz_acc: Tensor,
    gz_acc_below: Tensor | None, rec: TermGrad, td: TermGrad | None, bu: TermGrad | None,
) -> Step:
    """``hm_terms_backward``: each layer-normalised term's ``g_proj = LN_bwd(gate gs)``; a
    gated term also adds ``<gs, LN(proj)>`` to its gate's running gradient (``gz_acc``
    for the top-down term, ``gz_acc_below`` for the bottom-up one)."""
    return _bind(_terms_backward_step, gs, z_prev, z_below, gz_acc, gz_acc_below, rec, td, bu)


def _terms_backward_step(gs: Tensor, z_prev: Tensor, z_below: Tensor | None, gz_acc: Tensor,
                         gz_acc_below: Tensor | None, rec: TermGrad, td: TermGrad | None,
                         bu: TermGrad | None) -> None:
    rec.g_proj.copy_(_ln_backward(gs, rec.proj, rec.stats, rec.weight))
    for term, gate, g_gate in ((td, z_prev, gz_acc), (bu, z_below, gz_acc_below)):
        if term is None or gate is None or g_gate is None:
            continue
        mean, rstd = term.stats[:, :1], term.stats[:, 1:]
        normed = torch.addcmul(term.bias, (term.proj - mean) * rstd, term.weight)
        g_gate.add_(_vecdot(gs, normed))
        term.g_proj.copy_(_ln_backward(gs * gate, term.proj, term.stats, term.weight))
