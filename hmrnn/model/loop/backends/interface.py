"""The interface every step backend implements: :class:`Backend`'s six step functions and
the field types they take. Shape legend as in :mod:`hmrnn.model.loop.backends`."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

Step = Callable[[int], None]  # a step function bound to its fields: run it at step t

class Term(NamedTuple):
    """A layer-normalised term of ``s`` in :meth:`Backend.terms_forward`: ``proj``, the
    product before normalisation ``(M, R)``; ``stats``, where its ``[mean | rstd]`` goes
    ``(M, 2)``; the normalisation's ``weight``, ``bias`` ``(R,)``."""

    proj: Tensor
    stats: Tensor
    weight: Tensor
    bias: Tensor


class TermGrad(NamedTuple):
    """A layer-normalised term in :meth:`Backend.terms_backward`: :class:`Term`'s fields
    and ``g_proj (M, R)``, where the gradient of ``proj`` goes."""

    proj: Tensor
    stats: Tensor
    g_proj: Tensor
    weight: Tensor
    bias: Tensor


class Backend(Protocol):
    """The six step functions. Each returns ``step(t)``; see the C file for the exact
    contract of each, which both backends keep, buffer for buffer."""

    def hm_forward(
        self, N: int, H: int, has_z: bool, boundary: str, act: Tensor, h_prev: Tensor,
        c_prev: Tensor, z_prev: Tensor, z_below: Tensor | None, h_out: Tensor,
        c_out: Tensor, z_out: Tensor | None, tanh_c: Tensor, u: Tensor | None,
        zbin: Tensor | None, diff: Tensor | None, zdiff: Tensor | None,
        cell_stats: Tensor | None, ln_w: Tensor | None, ln_b: Tensor | None, slope: float | Tensor,
        eps: float, generator: torch.Generator | None = None,
        sample_rows: tuple[Tensor, int] | None = None,
    ) -> Step:
        """Gates, Eq. 2-3 and Eq. 8-10 of a step, given ``s`` in ``act (M, R)``."""
        ...

    def hm_gather(
        self, N: int, H: int, Ha: int, Hb: int, x: Tensor, h_prev: Tensor,
        h_above: Tensor | None, z_prev: Tensor, h_below: Tensor | None,
        z_below: Tensor | None,
    ) -> Step:
        """``x = [h_prev | z_prev h_above | z_below h_below]`` ``(M, K)``."""
        ...

    def hm_terms_forward(
        self, N: int, R: int, act: Tensor, base: Tensor, z_prev: Tensor,
        z_below: Tensor | None, rec: Term, td: Term | None, bu: Term | None, eps: float,
    ) -> Step:
        """``act = base + LN(rec) + z_below LN(bu) + z_prev LN(td)``, stats kept."""
        ...

    def hm_backward(
        self, N: int, H: int, has_z: bool, act: Tensor, tanh_c: Tensor, c: Tensor,
        c_prev: Tensor, u: Tensor | None, diff: Tensor | None, zdiff: Tensor | None,
        z_prev: Tensor, z_below: Tensor | None, cell_stats: Tensor | None,
        ln_w: Tensor | None, gh_acc: Tensor, gh_out: Tensor | None, gc_acc: Tensor,
        gz_acc: Tensor, gz_out: Tensor | None, gz_acc_below: Tensor | None, gs: Tensor,
        g_tanh: Tensor, scratch: Tensor, half_slope: float | Tensor,
    ) -> Step:
        """From the gradients of ``h``, ``c``, ``z`` of a step to that of ``s`` (``gs``)."""
        ...

    def hm_spread(
        self, N: int, H: int, Ha: int, Hb: int, gx: Tensor, gh_acc: Tensor,
        h_above: Tensor | None, z_prev: Tensor, gh_acc_above: Tensor | None,
        gz_acc: Tensor, h_below: Tensor | None, z_below: Tensor | None,
        gh_acc_below: Tensor | None, gz_acc_below: Tensor | None,
    ) -> Step:
        """Spread ``gx = dL/dx`` onto ``h_prev``, ``h_above``, ``z_prev``, ``h_below``,
        ``z_below``."""
        ...

    def hm_terms_backward(
        self, N: int, R: int, gs: Tensor, z_prev: Tensor, z_below: Tensor | None,
        gz_acc: Tensor, gz_acc_below: Tensor | None, rec: TermGrad, td: TermGrad | None,
        bu: TermGrad | None,
    ) -> Step:
        """Each layer-normalised term's backward: ``g_proj``, and its gate's gradient."""
        ...
