"""The step backends: the element-wise work of one layer's step, in one module each.

A backend is a module with the six functions of :class:`Backend`, each named as, and
the twin of, one function of ``cpu/csrc/hmlstm_step.c``, taking the same fields in the
same layouts (see :mod:`hmrnn.model.loop.workspace`) and returning ``step(t)``, which
runs it at step ``t``: bound once per sequence, run once per step (``step(0)`` on fields
of 2-D or 1-D tensors runs it once). The matrix products with the weights stay in torch,
in the loop drivers (:mod:`hmrnn.model.loop.forward`, :mod:`hmrnn.model.loop.backward`),
shared by every backend. The backends:

- ``"aten"`` (:mod:`.aten`): ATen operations; any device and dtype, every boundary mode;
- ``"cpu"`` (:mod:`.cpu`): the C step, compiled on first use, for float32 on the CPU; not
  for ``"sample"`` boundaries (they draw from torch's generator).

``"auto"`` (:func:`select`) is the C step where it serves, else ATen. A new backend (a
GPU one, say) is one more module implementing :class:`Backend`, and one more name here.

Shape legend: M rows, H hidden size of the layer, Ha / Hb of the layer above / below,
R = 4H + 1 gate rows (4H in the top layer), K = H + Ha + Hb.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hmrnn.model.loop.backends.interface import Backend, Step, Term, TermGrad

__all__ = ["BACKENDS", "Backend", "Step", "Term", "TermGrad", "check_name", "cpu_serves", "select"]

BACKENDS = ("auto", "aten", "cpu")


def cpu_serves(like: Tensor) -> bool:
    """Whether the C step serves tensors like ``like`` (float32 on the CPU, compiled)."""
    from hmrnn.model.loop.backends.cpu import library

    return library.enabled(like)


def check_name(name: str) -> str:
    """``name`` if it names a backend, else ``ValueError``."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name


def select(name: str, like: Tensor, boundary: str) -> Backend:
    """The backend ``name`` for steps on tensors like ``like`` with boundaries ``boundary``.

    ``"auto"``: the C step (``"cpu"``) for float32 on the CPU where it compiled (not with
    ``HMRNN_KERNELS=0``) and ``boundary != "sample"``, else ATen. ``"cpu"`` where it
    cannot serve raises ``ValueError`` (``"sample"`` boundaries, another device or
    dtype) or ``RuntimeError`` (no library here).
    """
    import hmrnn.model.loop.backends.aten as aten
    import hmrnn.model.loop.backends.cpu as cpu

    check_name(name)
    if name == "auto":
        return cpu if boundary != "sample" and cpu_serves(like) else aten
    if name == "aten":
        return aten
    if boundary == "sample":
        raise ValueError('backend="cpu" cannot draw boundary="sample" (torch\'s generator '
                         'draws them): use backend="aten" or "auto"')
    if like.device.type != "cpu" or like.dtype != torch.float32:
        raise ValueError(f'backend="cpu" runs float32 on the CPU, got {like.dtype} on '
                         f"{like.device}")
    if not cpu_serves(like):
        raise RuntimeError('backend="cpu": the C step is not available here (no compiler, '
                           "or HMRNN_KERNELS=0)")
    return cpu
