"""The C step backend (``backend="cpu"``): float32 on the CPU.

Each function packs its fields into the struct of the C function it is named after
(``csrc/hmlstm_step.c``, built and loaded by :mod:`.library`) and returns ``step(t)``;
the contract of each is :class:`hmrnn.model.loop.backends.Backend`'s, and its ATen twin
is in :mod:`hmrnn.model.loop.backends.aten`. The fields are handed over by the C struct's
field names, and :class:`.library.Kernel` checks every tensor against the shape the
struct's sizes give it (``N`` rows of ``H``, ...), its dtype, device and strides, before
it packs anything: a mismatch raises ``ValueError`` and never reaches C. The boundaries
that draw (``"sample"``, ``"gumbel"``) are not served here
(:func:`hmrnn.model.loop.backends.select` refuses them).
"""

from __future__ import annotations

import torch
from torch import Tensor

from hmrnn.model.functional import DRAWN_MODES
from hmrnn.model.loop.backends.cpu import library
from hmrnn.model.loop.backends.interface import Step, Term, TermGrad


def _bind(name: str, **fields: library.Value) -> Step:
    """``name``'s kernel bound to ``fields``, given by the C struct's field names (each
    checked against the struct's shape rules first: :class:`library.Kernel`)."""
    lib = library.load()
    if lib is None:
        raise RuntimeError("the C step's library is not available here")
    return lib[name].bind(**fields)


def _term(t: Term | TermGrad | None) -> dict[str, Tensor] | None:
    """A term's fields by the C struct's names (``Term``, ``TermGrad``), or None."""
    if t is None:
        return None
    fields = {"proj": t.proj, "stats": t.stats, "w": t.weight, "b": t.bias}
    if isinstance(t, TermGrad):
        fields["g_proj"] = t.g_proj
    return fields


def hm_forward(
    N: int, H: int, has_z: bool, boundary: str, act: Tensor, h_prev: Tensor,
    c_prev: Tensor, z_prev: Tensor, z_below: Tensor | None, h_out: Tensor,
    c_out: Tensor, z_out: Tensor | None, tanh_c: Tensor, u: Tensor | None,
    zbin: Tensor | None, diff: Tensor | None, zdiff: Tensor | None,
    cell_stats: Tensor | None, ln_w: Tensor | None, ln_b: Tensor | None, slope: float | Tensor,
    eps: float, generator: torch.Generator | None = None,
    sample_rows: tuple[Tensor, int] | None = None,
) -> Step:
    """``hm_forward``: the C function takes ``soft`` where this takes ``boundary``."""
    if boundary in DRAWN_MODES:
        raise ValueError(f'the C step cannot draw boundary="{boundary}": use backend="aten"')
    return _bind("hm_forward", N=N, H=H, has_z=int(has_z), soft=int(boundary == "soft"),
                 act=act, h_prev=h_prev, c_prev=c_prev, z_prev=z_prev, z_below=z_below,
                 h_out=h_out, c_out=c_out, z_out=z_out, tanh_c=tanh_c, u=u, zbin=zbin,
                 diff=diff, zdiff=zdiff, cell_stats=cell_stats, ln_w=ln_w, ln_b=ln_b,
                 slope=float(slope), eps=eps)


def hm_gather(
    N: int, H: int, Ha: int, Hb: int, x: Tensor, h_prev: Tensor, h_above: Tensor | None,
    z_prev: Tensor, h_below: Tensor | None, z_below: Tensor | None,
) -> Step:
    return _bind("hm_gather", N=N, H=H, Ha=Ha, Hb=Hb, x=x, h_prev=h_prev, h_above=h_above,
                 z_prev=z_prev, h_below=h_below, z_below=z_below)


def hm_terms_forward(
    N: int, R: int, act: Tensor, base: Tensor, z_prev: Tensor, z_below: Tensor | None,
    rec: Term, td: Term | None, bu: Term | None, eps: float,
) -> Step:
    return _bind("hm_terms_forward", N=N, R=R, act=act, base=base, z_prev=z_prev,
                 z_below=z_below, rec=_term(rec), td=_term(td), bu=_term(bu), eps=eps)


def hm_backward(
    N: int, H: int, has_z: bool, act: Tensor, tanh_c: Tensor, c: Tensor, c_prev: Tensor,
    u: Tensor | None, diff: Tensor | None, zdiff: Tensor | None, z_prev: Tensor,
    z_below: Tensor | None, cell_stats: Tensor | None, ln_w: Tensor | None, gh_acc: Tensor,
    gh_out: Tensor | None, gc_acc: Tensor, gz_acc: Tensor, gz_out: Tensor | None,
    gz_acc_below: Tensor | None, gs: Tensor, g_tanh: Tensor, scratch: Tensor,
    half_slope: float | Tensor,
) -> Step:
    """``hm_backward``: the C function uses the first ``H`` floats of ``scratch``."""
    return _bind("hm_backward", N=N, H=H, has_z=int(has_z), act=act, tanh_c=tanh_c, c=c,
                 c_prev=c_prev, u=u, diff=diff, zdiff=zdiff, z_prev=z_prev, z_below=z_below,
                 cell_stats=cell_stats, ln_w=ln_w, gh_acc=gh_acc, gh_out=gh_out,
                 gc_acc=gc_acc, gz_acc=gz_acc, gz_out=gz_out, gz_acc_below=gz_acc_below,
                 gs=gs, g_tanh=g_tanh, scratch=scratch, half_slope=float(half_slope))


def hm_spread(
    N: int, H: int, Ha: int, Hb: int, gx: Tensor, gh_acc: Tensor, h_above: Tensor | None,
    z_prev: Tensor, gh_acc_above: Tensor | None, gz_acc: Tensor, h_below: Tensor | None,
    z_below: Tensor | None, gh_acc_below: Tensor | None, gz_acc_below: Tensor | None,
) -> Step:
    return _bind("hm_spread", N=N, H=H, Ha=Ha, Hb=Hb, gx=gx, gh_acc=gh_acc, h_above=h_above,
                 z_prev=z_prev, gh_acc_above=gh_acc_above, gz_acc=gz_acc, h_below=h_below,
                 z_below=z_below, gh_acc_below=gh_acc_below, gz_acc_below=gz_acc_below)


def hm_terms_backward(
    N: int, R: int, gs: Tensor, z_prev: Tensor, z_below: Tensor | None, gz_acc: Tensor,
    gz_acc_below: Tensor | None, rec: TermGrad, td: TermGrad | None, bu: TermGrad | None,
) -> Step:
    return _bind("hm_terms_backward", N=N, R=R, gs=gs, z_prev=z_prev, z_below=z_below,
                 gz_acc=gz_acc, gz_acc_below=gz_acc_below, rec=_term(rec), td=_term(td),
                 bu=_term(bu))
