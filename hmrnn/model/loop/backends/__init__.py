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
  for the boundaries that draw (``"sample"``, ``"gumbel"``: they draw from torch's
  generator);
- ``"triton"`` (:mod:`.triton`): fused Triton kernels for float32 on a CUDA GPU (the
  optional ``gpu`` extra installs triton); not for the boundaries that draw. Where its
  kernels run in Triton's interpreter (``TRITON_INTERPRET=1`` when it is first imported)
  it takes CPU tensors too: that is how it is tested without a GPU.

``"auto"`` (:func:`select`) is the Triton step for float32 on a CUDA GPU where triton
imports (``HMRNN_TRITON=0`` opts out), the C step where it
serves, else ATen. A new backend is one more module
implementing :class:`Backend`, and one more name here.

Shape legend: M rows, H hidden size of the layer, Ha / Hb of the layer above / below,
R = 4H + 1 gate rows (4H in the top layer), K = H + Ha + Hb.
"""

from __future__ import annotations

import os
from functools import cache
from types import ModuleType

import torch
from torch import Tensor

from hmrnn.model.functional import DRAWN_MODES
from hmrnn.model.loop.backends.interface import Backend, Step, Term, TermGrad

__all__ = ["BACKENDS", "Backend", "Step", "Term", "TermGrad", "check_name", "cpu_serves", "resolve",
           "select", "triton_serves"]

BACKENDS = ("auto", "aten", "cpu", "triton")


def cpu_serves(like: Tensor) -> bool:
    """Whether the C step serves tensors like ``like`` (float32 on the CPU, compiled)."""
    from hmrnn.model.loop.backends.cpu import library

    return library.enabled(like)


@cache
def _triton() -> ModuleType | None:
    """The Triton step's module, or None where triton does not import (or is broken)."""
    try:
        import hmrnn.model.loop.backends.triton as module
    except Exception:  # an ImportError, or whatever a broken triton install raises
        return None
    return module


def triton_serves(like: Tensor) -> bool:
    """Whether ``"auto"`` takes the Triton step for tensors like ``like``: float32 on a CUDA
    device where triton imports, unless ``HMRNN_TRITON=0`` (then ATen's step, the
    comparison docs/benchmarks.md makes)."""
    return (like.device.type == "cuda" and like.dtype == torch.float32
            and os.environ.get("HMRNN_TRITON", "1") != "0" and _triton() is not None)


def check_name(name: str) -> str:
    """``name`` if it names a backend, else ``ValueError``."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name


def select(name: str, like: Tensor, boundary: str) -> Backend:
    """The backend ``name`` for steps on tensors like ``like`` with boundaries ``boundary``:
    the module of :func:`resolve`'s name."""
    import hmrnn.model.loop.backends.aten as aten
    import hmrnn.model.loop.backends.cpu as cpu

    chosen = resolve(name, like, boundary)
    if chosen == "triton":
        return _triton() or aten  # resolve() found it importable
    return cpu if chosen == "cpu" else aten


def resolve(name: str, like: Tensor, boundary: str) -> str:
    """The step backend ``name`` stands for on tensors like ``like`` with boundaries
    ``boundary``: ``"aten"``, ``"cpu"`` or ``"triton"``.

    ``"auto"``, where ``boundary`` does not draw (``DRAWN_MODES``): the Triton step for
    float32 on a CUDA device where triton imports (not with ``HMRNN_TRITON=0``); the C
    step (``"cpu"``) for float32 on the CPU where it compiled (not with
    ``HMRNN_KERNELS=0``); else ATen.
    ``"cpu"`` or ``"triton"`` where it cannot serve raises ``ValueError`` (boundaries
    that draw, another device or dtype) or ``RuntimeError`` (no library, or no triton,
    here). ``"triton"`` takes CPU tensors where its kernels run in Triton's interpreter.
    """
    check_name(name)
    if name == "auto":
        drawn = boundary in DRAWN_MODES
        if not drawn and triton_serves(like):
            return "triton"
        return "cpu" if not drawn and cpu_serves(like) else "aten"
    if name == "triton":
        _check_triton(like, boundary)
    elif name == "cpu":
        if boundary in DRAWN_MODES:
            raise ValueError(f'backend="cpu" cannot draw boundary="{boundary}" (torch\'s '
                             'generator draws them): use backend="aten" or "auto"')
        if like.device.type != "cpu" or like.dtype != torch.float32:
            raise ValueError(f'backend="cpu" runs float32 on the CPU, got {like.dtype} on '
                             f"{like.device}")
        if not cpu_serves(like):
            raise RuntimeError('backend="cpu": the C step is not available here (no compiler, '
                               "or HMRNN_KERNELS=0)")
    return name


def _check_triton(like: Tensor, boundary: str) -> None:
    """Why the Triton step cannot serve (``ValueError`` or ``RuntimeError``), if it cannot."""
    if boundary in DRAWN_MODES:
        raise ValueError(f'backend="triton" cannot draw boundary="{boundary}" (torch\'s '
                         'generator draws them): use backend="aten" or "auto"')
    module = _triton()
    if module is None:
        raise RuntimeError('backend="triton": triton is not installed here (pip install '
                           "'hmrnn[gpu]', or triton>=3)")
    interpreted = bool(module.INTERPRET)
    if like.dtype != torch.float32 or (like.device.type != "cuda" and not interpreted):
        raise ValueError(f'backend="triton" runs float32 on a CUDA device (or on the CPU in '
                         f"Triton's interpreter, TRITON_INTERPRET=1), got {like.dtype} on "
                         f"{like.device}")
