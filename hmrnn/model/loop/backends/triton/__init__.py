"""The Triton step backend (``backend="triton"``): float32 on a CUDA GPU, as fused kernels.

Each function is the twin of the C function it is named after (``cpu/csrc/hmlstm_step.c``;
the kernels are in :mod:`.kernels`): the same fields in the same layouts, one kernel launch
per step (one program per block of rows, each row's work in registers); it returns
``step(t)``, which launches the kernel at step ``t`` on arguments packed once per sequence
(each matrix field as base pointer, row stride, step stride, as the C step packs them).
The matrix products stay in torch (cuBLAS), in the loop drivers. The boundaries that
draw (``"sample"``, ``"gumbel"``) are not served (as in the C step;
:func:`hmrnn.model.loop.backends.select` refuses them).

Inputs and outputs are float32 and so is the math; a bf16 variant (autocast) is not
written yet. ``hm_backward``'s ``scratch`` is not used (each row's gradients stay in
registers). Where this module is first imported with ``TRITON_INTERPRET=1``, the kernels
run in Triton's interpreter, on CPU tensors too (:data:`INTERPRET`): that is how
``tests/test_triton.py`` checks them on a machine without a GPU. The block sizes and warp
counts below are first guesses, not tuned on a GPU.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import triton
from torch import Tensor

from hmrnn.model.functional import DRAWN_MODES
from hmrnn.model.loop.backends.interface import Step, Term, TermGrad
from hmrnn.model.loop.backends.triton import kernels

# Whether the kernels were made for Triton's interpreter (decided when they are decorated,
# that is when this module is first imported).
INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def _matrix(v: Tensor | None, dummy: Tensor) -> list[Any]:
    """``[pointer, step stride, row stride]`` of a field, as :mod:`.kernels` takes it: a
    vector ``(D,)`` is every row's; a matrix ``(M, D)`` every step's; ``(S, M, D)`` holds
    step ``t`` at index ``t`` (index 0 for every step when ``S`` is 1). An absent field
    passes ``dummy``, never read."""
    if v is None:
        return [dummy, 0, 0]
    if v.dtype != torch.float32:
        raise ValueError(f'backend="triton" runs float32, got a {v.dtype} field')
    if v.stride(-1) != 1 and v.shape[-1] > 1:
        raise ValueError(f'backend="triton" needs a row\'s elements adjacent, got strides '
                         f"{v.stride()}")
    if v.dim() == 1:
        return [v, 0, 0]
    if v.dim() == 2:
        return [v, 0, v.stride(0)]
    return [v, v.stride(0) if v.shape[0] > 1 else 0, v.stride(1)]


def _vector(v: Tensor | None, dummy: Tensor) -> Tensor:
    """A ``(D,)`` field (a norm's weight or bias): its pointer."""
    if v is None:
        return dummy
    if v.dim() != 1 or v.stride(0) != 1 or v.dtype != torch.float32:
        raise ValueError(f'backend="triton" takes a contiguous float32 vector here, got '
                         f"{v.dtype} {tuple(v.shape)} strides {v.stride()}")
    return v


def _scalar(v: float | Tensor, like: Tensor) -> Tensor:
    """The slope (or its half) as the kernels read it: one float32 on ``like``'s device. A
    tensor (the stack's slope buffer, in place across steps) is read where it lies, when the
    kernel runs; a float is copied there now."""
    if isinstance(v, Tensor):
        return v if v.dtype == torch.float32 else v.to(torch.float32)
    return torch.full((), v, dtype=torch.float32, device=like.device)


def _blocks(N: int, width: int) -> tuple[int, int, int, int]:
    """``(rows per program, columns, programs, warps)`` for rows of ``width`` floats."""
    cols = triton.next_power_of_2(max(width, 1))
    rows = max(1, min(16, 1024 // cols, triton.next_power_of_2(max(N, 1))))
    warps = 4 if rows * cols <= 2048 else 8
    return rows, cols, triton.cdiv(N, rows), warps


class _Launch:
    """A kernel bound to its arguments: ``step(t)`` launches it at step ``t``."""

    def __init__(self, kernel: Any, N: int, width: int, args: list[Any],
                 meta: dict[str, Any], block: str) -> None:
        rows, cols, programs, warps = _blocks(N, width)
        self.name = getattr(getattr(kernel, "fn", kernel), "__name__", "?")
        self.kernel, self.args = kernel, args  # for .compile_check
        self.meta = {**meta, "BM": rows, block: cols, "num_warps": warps}
        self._kernel = kernel[(programs,)]
        self._skip = N == 0

    def __call__(self, t: int) -> None:
        if not self._skip:
            self._kernel(t, *self.args, **self.meta)


def hm_forward(
    N: int, H: int, has_z: bool, boundary: str, act: Tensor, h_prev: Tensor,
    c_prev: Tensor, z_prev: Tensor, z_below: Tensor | None, h_out: Tensor,
    c_out: Tensor, z_out: Tensor | None, tanh_c: Tensor, u: Tensor | None,
    zbin: Tensor | None, diff: Tensor | None, zdiff: Tensor | None,
    cell_stats: Tensor | None, ln_w: Tensor | None, ln_b: Tensor | None,
    slope: float | Tensor, eps: float, generator: torch.Generator | None = None,
    sample_rows: tuple[Tensor, int] | None = None,
) -> Step:
    """``hm_forward``: gates, Eq. 2-3 and Eq. 8-10 of a step, given ``s`` in ``act``."""
    if boundary in DRAWN_MODES:
        raise ValueError(f'the Triton step cannot draw boundary="{boundary}": use '
                         'backend="aten"')
    if has_z and (z_out is None or u is None or zbin is None):
        raise ValueError("hm_forward with a boundary needs z_out, u and zbin")
    ln = cell_stats is not None and ln_w is not None and ln_b is not None
    args = [a for v in (act, h_prev, c_prev, z_prev, z_below, h_out, c_out, z_out, tanh_c,
                        u, zbin, diff, zdiff, cell_stats) for a in _matrix(v, act)]
    args += [_vector(ln_w if ln else None, act), _vector(ln_b if ln else None, act),
             N, H, _scalar(slope, act), eps]
    meta = {"HAS_Z": has_z, "SOFT": boundary == "soft", "BELOW": z_below is not None,
            "LN": ln, "DIFF": diff is not None, "ZDIFF": has_z and zdiff is not None}
    return _Launch(kernels.hm_forward, N, H, args, meta, "BH")


def hm_gather(
    N: int, H: int, Ha: int, Hb: int, x: Tensor, h_prev: Tensor, h_above: Tensor | None,
    z_prev: Tensor, h_below: Tensor | None, z_below: Tensor | None,
) -> Step:
    """``hm_gather``: ``x = [h_prev | z_prev h_above | z_below h_below]``."""
    above, below = Ha > 0 and h_above is not None, Hb > 0 and h_below is not None
    args = [a for v in (x, h_prev, h_above if above else None, z_prev,
                        h_below if below else None, z_below if below else None)
            for a in _matrix(v, x)]
    args += [N, H, Ha, Hb]
    return _Launch(kernels.hm_gather, N, max(H, Ha, Hb), args,
                   {"ABOVE": above, "BELOW": below}, "BK")


def _term(term: Term | TermGrad, dummy: Tensor) -> list[Any]:
    """A term's fields as the kernels take them: its matrices, then weight and bias."""
    out: list[Any] = []
    for v in term[:-2]:
        out += _matrix(v, dummy)
    return [*out, _vector(term[-2], dummy), _vector(term[-1], dummy)]


def _absent(width: int, dummy: Tensor) -> list[Any]:
    """An absent term: ``width`` matrix fields and two vectors, all ``dummy``."""
    return [*[dummy, 0, 0] * width, dummy, dummy]


def hm_terms_forward(
    N: int, R: int, act: Tensor, base: Tensor, z_prev: Tensor, z_below: Tensor | None,
    rec: Term, td: Term | None, bu: Term | None, eps: float,
) -> Step:
    """``hm_terms_forward``: ``act = base + LN(rec) + z_below LN(bu) + z_prev LN(td)``."""
    args = [a for v in (act, base, z_prev, z_below) for a in _matrix(v, act)]
    for term in (rec, td, bu):
        args += _term(term, act) if term is not None else _absent(2, act)
    args += [N, R, eps]
    meta = {"TD": td is not None, "BU": bu is not None and z_below is not None}
    return _Launch(kernels.hm_terms_forward, N, R, args, meta, "BR")


def hm_backward(
    N: int, H: int, has_z: bool, act: Tensor, tanh_c: Tensor, c: Tensor, c_prev: Tensor,
    u: Tensor | None, diff: Tensor | None, zdiff: Tensor | None, z_prev: Tensor,
    z_below: Tensor | None, cell_stats: Tensor | None, ln_w: Tensor | None, gh_acc: Tensor,
    gh_out: Tensor | None, gc_acc: Tensor, gz_acc: Tensor, gz_out: Tensor | None,
    gz_acc_below: Tensor | None, gs: Tensor, g_tanh: Tensor, scratch: Tensor,
    half_slope: float | Tensor,
) -> Step:
    """``hm_backward``: from the gradients of a step's ``h``, ``c``, ``z`` to that of ``s``
    (``scratch`` unused: each row's gradients stay in registers)."""
    below = z_below is not None
    if below and (diff is None or gz_acc_below is None or (has_z and zdiff is None)):
        raise ValueError("hm_backward in a layer that can copy needs diff, gz_acc_below "
                         "and (with a boundary) zdiff")
    if has_z and u is None:
        raise ValueError("hm_backward with a boundary needs u")
    ln = cell_stats is not None and ln_w is not None
    args = [a for v in (act, tanh_c, c, c_prev, u if has_z else None, diff if below else None,
                        zdiff if below and has_z else None, z_prev, z_below,
                        cell_stats if ln else None) for a in _matrix(v, act)]
    args.append(_vector(ln_w if ln else None, act))
    args += [a for v in (gh_acc, gh_out, gc_acc, gz_acc, gz_out, gz_acc_below if below else None,
                         gs, g_tanh) for a in _matrix(v, act)]
    args += [N, H, _scalar(half_slope, act)]
    meta = {"HAS_Z": has_z, "BELOW": below, "LN": ln, "GH_OUT": gh_out is not None,
            "GZ_OUT": gz_out is not None}
    return _Launch(kernels.hm_backward, N, H, args, meta, "BH")


def hm_spread(
    N: int, H: int, Ha: int, Hb: int, gx: Tensor, gh_acc: Tensor, h_above: Tensor | None,
    z_prev: Tensor, gh_acc_above: Tensor | None, gz_acc: Tensor, h_below: Tensor | None,
    z_below: Tensor | None, gh_acc_below: Tensor | None, gz_acc_below: Tensor | None,
) -> Step:
    """``hm_spread``: ``gx`` onto the running gradients of ``h_prev``, ``h_above`` and
    ``z_prev``, ``h_below`` and ``z_below``."""
    above = Ha > 0 and h_above is not None and gh_acc_above is not None
    below = (Hb > 0 and h_below is not None and z_below is not None
             and gh_acc_below is not None and gz_acc_below is not None)
    fields = (gx, gh_acc, h_above, z_prev, gh_acc_above, gz_acc, h_below, z_below,
              gh_acc_below, gz_acc_below)
    keep = (True, True, above, True, above, True, below, below, below, below)
    args = [a for v, k in zip(fields, keep, strict=True) for a in _matrix(v if k else None, gx)]
    args += [N, H, Ha, Hb]
    # the bottom layer (Hb == 0) sets gh_acc, a layer above it adds to it
    return _Launch(kernels.hm_spread, N, max(H, Ha, Hb), args,
                   {"ABOVE": above, "BELOW": below, "COPIES": Hb > 0}, "BK")


def hm_terms_backward(
    N: int, R: int, gs: Tensor, z_prev: Tensor, z_below: Tensor | None, gz_acc: Tensor,
    gz_acc_below: Tensor | None, rec: TermGrad, td: TermGrad | None, bu: TermGrad | None,
) -> Step:
    """``hm_terms_backward``: each term's ``g_proj = LN_bwd(gate gs)``; a gated term adds
    ``<gs, LN(proj)>`` to its gate's running gradient."""
    has_bu = bu is not None and z_below is not None and gz_acc_below is not None
    args = [a for v in (gs, z_prev, z_below if has_bu else None, gz_acc,
                        gz_acc_below if has_bu else None) for a in _matrix(v, gs)]
    for term in (rec, td, bu if has_bu else None):
        args += _term(term, gs) if term is not None else _absent(3, gs)
    args += [N, R]
    return _Launch(kernels.hm_terms_backward, N, R, args, {"TD": td is not None, "BU": has_bu},
                   "BR")
