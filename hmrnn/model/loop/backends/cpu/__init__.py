"""The C step backend (``backend="cpu"``): float32 on the CPU.

Each function packs its fields into the struct of the C function it is named after
(``csrc/hmlstm_step.c``, built and loaded by :mod:`.library`) and returns ``step(t)``;
the contract of each is :class:`hmrnn.model.loop.backends.Backend`'s, and its ATen twin
is in :mod:`hmrnn.model.loop.backends.aten`. ``"sample"`` boundaries are not served here
(:func:`hmrnn.model.loop.backends.select` refuses them).
"""

from __future__ import annotations

import torch
from torch import Tensor

from hmrnn.model.loop.backends.cpu import library
from hmrnn.model.loop.backends.interface import Step, Term, TermGrad

_Field = int | float | Tensor | None


def _bind(name: str, *fields: _Field) -> Step:
    lib = library.load()
    if lib is None:
        raise RuntimeError("the C step's library is not available here")
    return lib[name].bind(*fields)


def _terms(*terms: Term | TermGrad | None, width: int) -> list[_Field]:
    """The terms' fields, flat, as the C structs lay them out (Nones for an absent one)."""
    out: list[_Field] = []
    for t in terms:
        out += list(t) if t is not None else [None] * width
    return out


def hm_forward(
    N: int, H: int, has_z: bool, boundary: str, act: Tensor, h_prev: Tensor,
    c_prev: Tensor, z_prev: Tensor, z_below: Tensor | None, h_out: Tensor,
    c_out: Tensor, z_out: Tensor | None, tanh_c: Tensor, u: Tensor | None,
    zbin: Tensor | None, diff: Tensor | None, zdiff: Tensor | None,
    cell_stats: Tensor | None, ln_w: Tensor | None, ln_b: Tensor | None, slope: float,
    eps: float, generator: torch.Generator | None = None,
    sample_rows: tuple[Tensor, int] | None = None,
) -> Step:
    """``hm_forward``: the C function takes ``soft`` where this takes ``boundary``."""
    if boundary == "sample":
        raise ValueError('the C step cannot draw boundary="sample": use backend="aten"')
    return _bind("hm_forward", N, H, has_z, boundary == "soft", act, h_prev, c_prev, z_prev,
                 z_below, h_out, c_out, z_out, tanh_c, u, zbin, diff, zdiff, cell_stats,
                 ln_w, ln_b, slope, eps)


def hm_gather(
    N: int, H: int, Ha: int, Hb: int, x: Tensor, h_prev: Tensor, h_above: Tensor | None,
    z_prev: Tensor, h_below: Tensor | None, z_below: Tensor | None,
) -> Step:
    return _bind("hm_gather", N, H, Ha, Hb, x, h_prev, h_above, z_prev, h_below, z_below)


def hm_terms_forward(
    N: int, R: int, act: Tensor, base: Tensor, z_prev: Tensor, z_below: Tensor | None,
    rec: Term, td: Term | None, bu: Term | None, eps: float,
) -> Step:
    return _bind("hm_terms_forward", N, R, act, base, z_prev, z_below,
                 *_terms(rec, td, bu, width=4), eps)


def hm_backward(
    N: int, H: int, has_z: bool, act: Tensor, tanh_c: Tensor, c: Tensor, c_prev: Tensor,
    u: Tensor | None, diff: Tensor | None, zdiff: Tensor | None, z_prev: Tensor,
    z_below: Tensor | None, cell_stats: Tensor | None, ln_w: Tensor | None, gh_acc: Tensor,
    gh_out: Tensor | None, gc_acc: Tensor, gz_acc: Tensor, gz_out: Tensor | None,
    gz_acc_below: Tensor | None, gs: Tensor, g_tanh: Tensor, scratch: Tensor,
    half_slope: float,
) -> Step:
    """``hm_backward``: the C function uses the first ``H`` floats of ``scratch``."""
    return _bind("hm_backward", N, H, has_z, act, tanh_c, c, c_prev, u, diff, zdiff, z_prev,
                 z_below, cell_stats, ln_w, gh_acc, gh_out, gc_acc, gz_acc, gz_out,
                 gz_acc_below, gs, g_tanh, scratch, half_slope)


def hm_spread(
    N: int, H: int, Ha: int, Hb: int, gx: Tensor, gh_acc: Tensor, h_above: Tensor | None,
    z_prev: Tensor, gh_acc_above: Tensor | None, gz_acc: Tensor, h_below: Tensor | None,
    z_below: Tensor | None, gh_acc_below: Tensor | None, gz_acc_below: Tensor | None,
) -> Step:
    return _bind("hm_spread", N, H, Ha, Hb, gx, gh_acc, h_above, z_prev, gh_acc_above,
                 gz_acc, h_below, z_below, gh_acc_below, gz_acc_below)


def hm_terms_backward(
    N: int, R: int, gs: Tensor, z_prev: Tensor, z_below: Tensor | None, gz_acc: Tensor,
    gz_acc_below: Tensor | None, rec: TermGrad, td: TermGrad | None, bu: TermGrad | None,
) -> Step:
    return _bind("hm_terms_backward", N, R, gs, z_prev, z_below, gz_acc, gz_acc_below,
                 *_terms(rec, td, bu, width=5))
