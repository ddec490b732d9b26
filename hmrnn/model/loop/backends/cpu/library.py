"""The C step's library: ``csrc/hmlstm_step.c`` compiled, loaded and called.

The loop runs a layer's step as a few matrix products and, between them, some twenty
element-wise ATen operations forward and forty backward, each of which costs more in
dispatch than in arithmetic at the sizes of the paper. ``csrc/hmlstm_step.c`` does that
element-wise work in one pass per step and row: the gates, Eq. 2-3 and 8-10, the layer
norms, and both halves of the backward step. It is compiled with the system's C compiler
on first use (cached under ``$HMRNN_CACHE``, else ``$XDG_CACHE_HOME/hmrnn``, else
``~/.cache/hmrnn``) and called through :mod:`ctypes`; every function takes one struct of
pointers, which :class:`Kernel` packs.

Without a C compiler, or with ``HMRNN_KERNELS=0``, :func:`load` gives None,
:func:`enabled` is False and ``backend="auto"`` runs the same step in ATen operations
(:mod:`hmrnn.model.loop.backends.aten`): the two compute the same functions (tested to
float rounding in ``tests/test_kernels.py``); the C step's exp and tanh are Cephes'
polynomials, not ATen's, so the two round apart in the last bits.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import struct
import subprocess
import tempfile
import warnings
from collections.abc import Callable
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("csrc") / "hmlstm_step.c"
_FLAGS = ("-O3", "-march=native", "-shared", "-fPIC", "-fno-math-errno", "-fno-trapping-math",
          "-fno-signed-zeros", "-fassociative-math")

# The structs of hmlstm_step.c, field by field: "n" an int64, "m" a matrix (pointer, row
# stride), "d" a double; then one int64 step stride per "m". Every field is 8 bytes, so the
# C layout has no padding and "=" packs it exactly.
_LAYOUTS = {
    "hm_forward": "nnnn" + "m" * 16 + "dd",
    "hm_terms_forward": "nn" + "m" * 16 + "d",
    "hm_backward": "nnn" + "m" * 20 + "d",
    "hm_spread": "nnnn" + "m" * 10,
    "hm_terms_backward": "nn" + "m" * 20,
    "hm_gather": "nnnn" + "m" * 6,
}


def _cache_dir() -> Path:
    if "HMRNN_CACHE" in os.environ:
        return Path(os.environ["HMRNN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hmrnn"


def _cpu_model() -> str:
    """The CPU's model line, so that a cache shared between machines keeps one build per
    kind of CPU (``-march=native``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line
    except OSError:
        pass
    return platform.processor()


def _compile() -> ctypes.CDLL | None:
    """Build (once per source, flags and CPU) and load the shared library; None, with a
    warning, if that is not possible here."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return _unavailable("no C compiler (cc, gcc or $CC) was found")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(
        b"\0".join([source, " ".join(_FLAGS).encode(), platform.machine().encode(),
                    _cpu_model().encode()])
    ).hexdigest()[:16]
    target = _cache_dir() / f"hmlstm_step-{key}.so"
    tmp = None
    try:
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
            os.close(fd)
            # built beside the target, then renamed: a reader never sees half a library
            subprocess.run([compiler, *_FLAGS, str(SOURCE), "-o", tmp, "-lm"], check=True,
                           capture_output=True, timeout=120)
            os.replace(tmp, target)
        return ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        detail = getattr(err, "stderr", b"") or str(err).encode()
        return _unavailable(f"it did not compile: {detail.decode(errors='replace').strip()[:300]}")


def _unavailable(why: str) -> ctypes.CDLL | None:
    warnings.warn(f"hmrnn: the C step is off, so the HM-LSTM's CPU loop runs in ATen "
                  f"operations, slower: {why}", RuntimeWarning, stacklevel=4)
    return None


def _matrix(v: Tensor | None) -> tuple[int, int, int]:
    """``(pointer, row stride, step stride)`` of a field: a vector ``(D,)`` is every row's;
    a matrix ``(M, D)`` is every step's; ``(S, M, D)`` holds step ``t`` at index ``t`` (at
    index 0 for every step when ``S`` is 1). A row's elements must be adjacent."""
    if v is None:
        return 0, 0, 0
    if v.stride(-1) != 1 and v.shape[-1] > 1:
        raise ValueError(f"the C step needs a row's elements adjacent, got strides {v.stride()}")
    if v.dim() == 1:
        return v.data_ptr(), 0, 0
    if v.dim() == 2:
        return v.data_ptr(), v.stride(0), 0
    return v.data_ptr(), v.stride(1), v.stride(0) if v.shape[0] > 1 else 0


class Kernel:
    """One function of the library. ``kernel.bind(*fields)`` packs its struct once (a
    tensor, or None for an absent one, for an ``m`` field: see :func:`_matrix`) and
    returns ``step(t)``, which runs it at step ``t``; ``kernel(*fields)`` runs it once."""

    def __init__(self, lib: ctypes.CDLL, name: str) -> None:
        layout = _LAYOUTS[name]
        matrices = layout.count("m")
        fmt = "".join({"n": "q", "m": "qq", "d": "d"}[k] for k in layout) + "q" * matrices
        self._struct = struct.Struct("=" + fmt)
        size = ctypes.c_int64.in_dll(lib, f"{name}_size").value
        if size != self._struct.size:
            raise RuntimeError(f"{SOURCE.name}'s {name} takes a struct of {size} bytes, but "
                               f"library.py packs {self._struct.size}: the two disagree")
        self._layout = layout
        self._fn = getattr(lib, name)
        self._fn.argtypes = [ctypes.c_void_p, ctypes.c_int64]
        self._fn.restype = None

    def _pack(self, fields: tuple[int | float | Tensor | None, ...]) -> ctypes.Array:
        values: list[int | float] = []
        steps: list[int] = []
        for kind, v in zip(self._layout, fields, strict=True):
            if kind == "m":
                if not (v is None or isinstance(v, Tensor)):
                    raise TypeError(f"a matrix field takes a tensor or None, got {v!r}")
                pointer, rows, step = _matrix(v)
                values += (pointer, rows)
                steps.append(step)
            else:
                if not isinstance(v, (int, float)):
                    raise TypeError(f"a scalar field takes a number, got {v!r}")
                values.append(v)
        buffer = ctypes.create_string_buffer(self._struct.size)
        self._struct.pack_into(buffer, 0, *values, *steps)
        return buffer

    def bind(self, *fields: int | float | Tensor | None) -> Callable[[int], None]:
        """The kernel on ``fields`` as ``step(t)``, which keeps them alive."""
        return _Bound(self._fn, self._pack(fields), fields)

    def __call__(self, *fields: int | float | Tensor | None) -> None:
        buffer = self._pack(fields)
        self._fn(ctypes.addressof(buffer), 0)


class _Bound:
    """A kernel bound to its packed struct: ``step(t)``. Keeps the struct and the tensors
    it points at alive."""

    def __init__(self, fn: Callable[[int, int], None], buffer: ctypes.Array,
                 fields: tuple[int | float | Tensor | None, ...]) -> None:
        self._fn, self._address = fn, ctypes.addressof(buffer)
        self.keep = (buffer, fields)

    def __call__(self, t: int) -> None:
        self._fn(self._address, t)


@cache
def load() -> dict[str, Kernel] | None:
    """Every kernel by name, or None where the library cannot be built or is switched off."""
    if os.environ.get("HMRNN_KERNELS", "1") == "0":
        return None
    lib = _compile()
    return None if lib is None else {name: Kernel(lib, name) for name in _LAYOUTS}


def enabled(like: Tensor) -> bool:
    """Whether the C step serves tensors like ``like`` (float32 on the CPU, built here)."""
    return like.device.type == "cpu" and like.dtype == torch.float32 and load() is not None
