"""The C step's library: ``csrc/hmlstm_step.c`` compiled, loaded and called.

The loop runs a layer's step as a few matrix products and, between them, some twenty
element-wise ATen operations forward and forty backward, each of which costs more in
dispatch than in arithmetic at the sizes of the paper. ``csrc/hmlstm_step.c`` does that
element-wise work in one pass per step and row: the gates, Eq. 2-3 and 8-10, the layer
norms, and both halves of the backward step. It is compiled with the system's C compiler
on first use (cached under ``$HMRNN_CACHE``, else ``$XDG_CACHE_HOME/hmrnn``, else
``~/.cache/hmrnn``) and called through :mod:`ctypes`; every function takes one struct of
pointers, which :class:`Kernel` packs.

C reads and writes through those pointers whatever they point at, so nothing reaches it
unchecked:

- each struct is described, by field name, in :mod:`.structs` as a :class:`ctypes.Structure`
  (:data:`LAYOUTS`: :class:`Forward`, ... and the :class:`M2`, :class:`Term`,
  :class:`TermGrad` inside them) whose fields are the C file's, in its order; the C file
  exports, next to each struct's size, every field's name, byte offset and byte size
  (``<name>_fields``), and :func:`check_layout` compares the two field by field when the
  library loads (two swapped fields of one size included), and that the ``M2`` fields
  lie one after the other, one step stride each, as the C step walks them;
- each tensor field carries a :class:`Rule` (its rows and width in the struct's sizes,
  ``(N, H)``, ``(N, 4H + has_z)``, ``(R,)``, ...; when C reads it), and
  :meth:`Kernel.bind` checks every tensor against it, its dtype (float32), device (the
  CPU) and strides, before it packs anything: ``ValueError`` naming the function, the
  field and both shapes; ``step(t)`` refuses a step beyond those its ``(S, M, D)``
  fields hold. The struct is still packed once per sequence and ``step(t)`` is one
  ctypes call.

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
import sys
import tempfile
import warnings
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import NoReturn

import torch
from torch import Tensor

from hmrnn.model.loop.backends.cpu.structs import (  # the structs are named from here too
    LAYOUTS,
    M2,
    SOURCE,
    Rule,
    _f64,
    _i64,
    _leaves,
    _structure,
    check_layout,
    sizes,
)

_FLAGS = ("-O3", "-march=native", "-shared", "-fPIC", "-fno-math-errno", "-fno-trapping-math",
          "-fno-signed-zeros", "-fassociative-math")

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


# ---- packing and calling: every tensor checked against its field's Rule first ----

Value = int | float | Tensor | tuple[Tensor | None, ...] | Mapping[str, Tensor] | None
"""What a field of :meth:`Kernel.bind` takes (see there)."""
_INT_MAX = 2**62  # an int64 field beyond this is no size


def _expected(rule: Rule, dims: Mapping[str, int]) -> str:
    """What ``rule`` asks for, in symbols and in numbers."""
    at_least = rule.width.startswith(">=")
    sym = rule.width[2:] if at_least else rule.width
    width = f"{'>=' if at_least else ''}{dims[sym]}"
    N = dims.get("N", "?")
    forms = []
    if "N" in rule.rows:
        forms.append(f"(N, {sym}) = ({N}, {width}), or (S, {N}, {width}) by step")
    if rule.rows == "1+":
        forms.append(f"(M, {sym}) = (M >= 1, {width})")
    if "V" in rule.rows or rule.rows == "1+":
        forms.append(f"({sym},) = ({width},)")
    return " or ".join(forms)


_F32, _STRIDED = torch.float32, torch.strided


def _refuse(fn: str, path: str, v: object, why: str, expected: str = "") -> NoReturn:
    """Raise the error of a tensor field that :meth:`Kernel._pack` refuses: ``TypeError``
    for what is not a tensor, else ``ValueError`` naming ``fn``, ``path`` and, for a
    shape, both shapes."""
    if not isinstance(v, Tensor):
        raise TypeError(f"{fn}: field {path} takes a tensor or None, got {type(v).__name__}")
    if why == "kind":
        raise ValueError(f"{fn}: field {path} must be a float32 (strided) tensor on the CPU, "
                         f"got {v.dtype} on {v.device} ({v.layout})")
    if why == "stride":
        raise ValueError(f"{fn}: field {path}: the C step needs a row's elements adjacent, "
                         f"got strides {v.stride()}")
    raise ValueError(f"{fn}: field {path} has shape {tuple(v.shape)}; expected {expected}")


def _plan(rule: Rule | None) -> tuple[str, str, bool, tuple[str, ...] | None] | None:
    """``rule`` as :meth:`Kernel._pack` reads it: ``(rows, width symbol, at least?, the
    names its need joins (None: never needed; empty: always))``."""
    if rule is None:
        return None
    at_least = rule.width.startswith(">=")
    need = None if rule.need is None else tuple(k for k in rule.need.split("&") if k)
    return rule.rows, rule.width[2:] if at_least else rule.width, at_least, need


def _format(layout: type[ctypes.Structure]) -> struct.Struct:
    """A :class:`struct.Struct` that writes ``layout``'s fields at their ctypes offsets,
    in :func:`_leaves` order: an int64 ``q``, a double ``d``, an M2 ``qq`` (pointer, row
    stride), the step strides ``q`` each; any gap as padding."""
    fmt, at = "=", 0
    codes = {"n": "q", "d": "d", "m": "qq"}
    for _, kind, offset in sorted(_leaves(layout), key=lambda leaf: leaf[2]):
        if offset < at:
            raise RuntimeError(f"library.py: {layout.__name__}'s fields overlap")
        fmt += f"{offset - at}x" if offset > at else ""
        if kind == "ts":
            ts = next(f[1] for f in layout._fields_ if f[0] == "ts")
            code = "q" * (ctypes.sizeof(ts) // 8)
        else:
            code = codes[kind]
        fmt += code
        at = offset + struct.calcsize("=" + code)
    fmt += f"{ctypes.sizeof(layout) - at}x" if ctypes.sizeof(layout) > at else ""
    packer = struct.Struct(fmt)
    if packer.size != ctypes.sizeof(layout):
        raise RuntimeError(f"library.py: {layout.__name__} packs {packer.size} bytes, not "
                           f"{ctypes.sizeof(layout)}")
    return packer


class Kernel:
    """One function of the library, with its struct ``layout`` (:data:`LAYOUTS`' by
    default), which :func:`check_layout` checks against the library's, field by field.

    ``kernel.bind(*fields, **named)`` takes the struct's fields (all but ``ts``) in the C
    order or by their C names: an int or float for a scalar, a tensor or None (absent)
    for an ``M2``, and for a nested struct (``rec``) None, a tuple of its tensors in the C
    order or a mapping by its C field names. Before packing, every tensor is checked
    against its field's :class:`Rule` (the rows and width the struct's sizes give it,
    float32, the CPU, adjacent elements) and every field the function will read is
    present: ``ValueError`` naming the function, the field and both shapes otherwise;
    ``TypeError`` for a field of the wrong type, missing or unknown. The struct is packed
    once (at the offsets of ``layout``) and ``step(t)`` returned: one ctypes call, which
    refuses a step beyond those its ``(S, M, D)`` fields hold. ``kernel(*fields,
    **named)`` runs it once, at step 0.
    """

    def __init__(self, lib: ctypes.CDLL, name: str,
                 layout: type[ctypes.Structure] | None = None) -> None:
        self.name, self.lib = name, lib
        self.layout = LAYOUTS[name] if layout is None else layout
        check_layout(lib, self.layout, name)
        self._fields = [(f[0], f[1]) for f in self.layout._fields_ if f[0] != "ts"]
        self._names = [name for name, _ in self._fields]
        self._name_set = frozenset(self._names)
        self._nested = {name: [f[0] for f in _structure(kind)._fields_]
                        for name, kind in self._fields
                        if kind is not M2 and kind is not _i64 and kind is not _f64}
        self._ints = [name for name, kind in self._fields if kind is _i64]
        self._floats = [name for name, kind in self._fields if kind is _f64]
        self._matrices = [name for name, kind in self._fields if kind is M2]
        rules: dict[str, Rule] = getattr(self.layout, "shapes", {})
        self._leaves = [(path, kind, rules.get(path), _plan(rules.get(path)))
                        for path, kind, _ in _leaves(self.layout)]
        self._struct = _format(self.layout)
        self._fn = getattr(lib, name)
        self._fn.argtypes = [ctypes.c_void_p, ctypes.c_int64]
        self._fn.restype = None

    def _collect(self, args: tuple[Value, ...], named: Mapping[str, Value]) -> dict[str, Value]:
        if not args and named.keys() == self._name_set:
            return dict(named)
        if len(args) > len(self._names):
            raise TypeError(f"{self.name} takes {len(self._names)} fields, got {len(args)}")
        values = dict(zip(self._names, args, strict=False))
        for key, v in named.items():
            if key not in self._names:
                raise TypeError(f"{self.name} has no field {key!r}")
            if key in values:
                raise TypeError(f"{self.name}: field {key!r} given twice")
            values[key] = v
        missing = [name for name in self._names if name not in values]
        if missing:
            raise TypeError(f"{self.name}: fields {missing} not given")
        return values

    def _pack(self, args: tuple[Value, ...],
              named: Mapping[str, Value]) -> tuple[ctypes.Structure, int]:
        """The checked, packed struct and the steps ``t`` it may run (see the class)."""
        values = self._collect(args, named)
        ints: dict[str, int] = {}
        for name in self._ints:
            v = values[name]
            if not isinstance(v, int) or not 0 <= v < _INT_MAX:
                raise TypeError(f"{self.name}: field {name} takes a size (an int >= 0), "
                                f"got {v!r}")
            ints[name] = int(v)
        scalars: dict[str, int | float] = dict(ints)
        for name in self._floats:
            v = values[name]
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise TypeError(f"{self.name}: field {name} takes a number, got {v!r}")
            scalars[name] = float(v)
        tensors: dict[str, object] = {name: values[name] for name in self._matrices}
        for name, sub in self._nested.items():
            v = values[name]
            parts: list[object]
            if v is None:
                parts = [None] * len(sub)
            elif isinstance(v, Mapping):
                if set(v) != set(sub):
                    raise TypeError(f"{self.name}: field {name} takes {sub}, got {list(v)}")
                parts = [v[s] for s in sub]
            elif isinstance(v, tuple) and len(v) == len(sub):
                parts = list(v)
            else:
                raise TypeError(f"{self.name}: field {name} takes None or the tensors "
                                f"{sub}, got {v!r}")
            tensors.update((f"{name}.{s}", p) for s, p in zip(sub, parts, strict=True))
        dims = sizes(ints)
        packed: list[int | float] = []
        steps: list[int] = []
        limit = sys.maxsize
        N = dims.get("N", 0)
        for path, kind, rule, plan in self._leaves:
            if kind != "m":
                if kind != "ts":
                    packed.append(scalars[path])
                continue
            field = tensors[path]
            if rule is None or plan is None:  # check_layout: every M2 field has a rule
                raise RuntimeError(f"{self.name}: field {path} has no shape rule")
            rows, width, at_least, need = plan
            if field is None:
                if need is not None and all(
                        (scalars[k] != 0) if k in scalars else tensors.get(k) is not None
                        for k in need):
                    when = f" when {' and '.join(need)}" if need else ""
                    raise ValueError(f"{self.name}: field {path} is None, but the C function "
                                     f"reads it{when}: it must be given here")
                packed += (0, 0)
                steps.append(0)
                continue
            # the tensor: float32, strided, on the CPU, of the rule's shape, a row's elements
            # adjacent; a vector (D,) is every row's, a matrix (M, D) every step's, and
            # (S, M, D) holds step t at index t (at index 0 for every step when S is 1)
            if (not isinstance(field, Tensor) or field.dtype is not _F32 or not field.is_cpu
                    or field.layout is not _STRIDED):
                _refuse(self.name, path, field, "kind")
            shape = field.shape
            d, size, last = len(shape), dims[width], shape[-1] if shape else 0
            if d == 2 or d == 3:
                ok = shape[-2] == N if rows[0] == "N" else rows == "1+" and shape[-2] >= 1
                ok = ok and (d == 2 or shape[0] >= 1)
            else:
                ok = d == 1 and rows != "N"
            if not ok or not (last >= size if at_least else last == size):
                _refuse(self.name, path, field, "shape", _expected(rule, dims))
            stride = field.stride()
            if stride[-1] != 1 and last > 1:
                _refuse(self.name, path, field, "stride")
            if d == 1:
                packed += (field.data_ptr(), 0)
                steps.append(0)
            elif d == 2:
                packed += (field.data_ptr(), stride[0])
                steps.append(0)
            else:
                packed += (field.data_ptr(), stride[1])
                steps.append(stride[0] if shape[0] > 1 else 0)
                if 1 < shape[0] < limit:
                    limit = shape[0]
        out = self.layout()
        self._struct.pack_into(out, 0, *packed, *steps)
        return out, limit

    def bind(self, *fields: Value, **named: Value) -> Callable[[int], None]:
        """The kernel on ``fields`` as ``step(t)``, which keeps them alive."""
        struct_, limit = self._pack(fields, named)
        return _Bound(self.name, self._fn, struct_, limit, (fields, named))

    def __call__(self, *fields: Value, **named: Value) -> None:
        struct_, _ = self._pack(fields, named)
        self._fn(ctypes.addressof(struct_), 0)


class _Bound:
    """A kernel bound to its packed struct: ``step(t)`` for ``0 <= t < steps``. Keeps the
    struct and the tensors it points at alive."""

    __slots__ = ("_address", "_fn", "keep", "name", "steps")

    def __init__(self, name: str, fn: Callable[[int, int], None], struct: ctypes.Structure,
                 steps: int, fields: object) -> None:
        self.name, self._fn, self.steps = name, fn, steps
        self._address = ctypes.addressof(struct)
        self.keep = (struct, fields)

    def __call__(self, t: int) -> None:
        if not 0 <= t < self.steps:
            raise ValueError(f"{self.name}: step {t} is outside the {self.steps} steps its "
                             f"fields hold")
        self._fn(self._address, t)

@cache
def load() -> dict[str, Kernel] | None:
    """Every kernel by name, or None where the library cannot be built or is switched off."""
    if os.environ.get("HMRNN_KERNELS", "1") == "0":
        return None
    lib = _compile()
    return None if lib is None else {name: Kernel(lib, name) for name in LAYOUTS}


def enabled(like: Tensor) -> bool:
    """Whether the C step serves tensors like ``like`` (float32 on the CPU, built here)."""
    return like.device.type == "cpu" and like.dtype == torch.float32 and load() is not None
