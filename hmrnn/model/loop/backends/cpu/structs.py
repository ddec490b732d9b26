"""The structs of ``csrc/hmlstm_step.c`` in Python, field by field, and their check.

Each :class:`ctypes.Structure` here mirrors one struct of the C file (:data:`LAYOUTS`:
:class:`Forward`, ... and the :class:`M2`, :class:`Term`, :class:`TermGrad` inside them):
the same field names in the same order; :func:`check_layout` compares them with the
offsets and sizes the C file exports, field by field, when the library loads. Each
function's struct also carries ``shapes``: the :class:`Rule` every tensor field must meet,
which :class:`hmrnn.model.loop.backends.cpu.library.Kernel` checks before it packs.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import ClassVar, NamedTuple

SOURCE = Path(__file__).with_name("csrc") / "hmlstm_step.c"

# ---- the structs of hmlstm_step.c, field by field ----
#
# Each ctypes.Structure below mirrors one struct of the C file: the same field names in the
# same order (checked against the offsets and sizes C exports, field by field, by
# check_layout when the library loads). A function's struct also carries `shapes`: for each
# of its tensor fields (a nested struct's as "rec.proj") the Rule its tensor must meet,
# checked by Kernel before anything is packed.

_i64, _f64 = ctypes.c_int64, ctypes.c_double


class Rule(NamedTuple):
    """The tensor a matrix (``M2``) field takes, in the sizes of its struct.

    Attributes:
        rows: ``"N"``: ``(N, width)``, or ``(S, N, width)`` holding step ``t`` at index
            ``t`` (at 0 for every step when ``S`` is 1); ``"V"``: a vector ``(width,)``
            that every row shares; ``"N|V"``: either; ``"1+"``: only the first row is
            read, ``(M, width)`` with ``M >= 1`` (or a vector).
        width: a size of :func:`sizes` (``"H"``, ``"2H"``, ``"G"``, ``"K"``, ``"R"``,
            ``"Ha"``, ``"Hb"``, ``"1"``, ``"2"``), or ``">=H"``: at least that many.
        need: when the C function reads the field, so that it must be given: ``""``
            always, ``None`` never (C tests it for NULL), else the names of scalar fields
            (non-zero) or tensor fields (given) joined by ``"&"``, all of which must hold.
    """

    rows: str
    width: str
    need: str | None = ""


def sizes(ints: Mapping[str, int]) -> dict[str, int]:
    """The sizes the :class:`Rule` widths name, from a struct's int64 fields: those
    fields themselves, ``"1"``, ``"2"``, and where they apply ``"2H"``, ``"G" = 4H +
    has_z`` (a step's gate rows) and ``"K" = H + Ha + Hb`` (the fused product's input)."""
    out = {"1": 1, "2": 2, **ints}
    H = out.get("H")
    if H is not None:
        out["2H"] = 2 * H
        out["G"] = 4 * H + (out.get("has_z", 0) != 0)
        if "Ha" in out and "Hb" in out:
            out["K"] = H + out["Ha"] + out["Hb"]
    return out


class M2(ctypes.Structure):
    """``M2``: a matrix field, its first row's address and the distance between rows in
    floats (0: a vector every row shares; NULL: absent)."""

    c_name: ClassVar[str] = "hm_m2"
    _fields_ = [("p", ctypes.c_void_p), ("s", _i64)]


class Term(ctypes.Structure):
    """``Term``: a layer-normalised term of ``s`` (:class:`~..interface.Term`'s fields)."""

    c_name: ClassVar[str] = "hm_term"
    _fields_ = [("proj", M2), ("stats", M2), ("w", M2), ("b", M2)]


class TermGrad(ctypes.Structure):
    """``TermGrad``: :class:`Term` and ``g_proj`` (:class:`~..interface.TermGrad`'s fields)."""

    c_name: ClassVar[str] = "hm_term_grad"
    _fields_ = [("proj", M2), ("stats", M2), ("g_proj", M2), ("w", M2), ("b", M2)]


def _m2(*names: str) -> list[tuple[str, type[M2]]]:
    return [(name, M2) for name in names]


def _term_rules(name: str, grad: bool, always: bool) -> dict[str, Rule]:
    """The rules of a (nested) Term / TermGrad field ``name``: its ``proj`` is optional
    unless ``always``, and its other fields are needed when ``proj`` is given."""
    need = "" if always else f"{name}.proj"
    rules = {f"{name}.proj": Rule("N", "R", "" if always else None),
             f"{name}.stats": Rule("N", "2", need)}
    if grad:
        rules[f"{name}.g_proj"] = Rule("N", "R", need)
    rules[f"{name}.w"] = Rule("V", "R", need)
    rules[f"{name}.b"] = Rule("V", "R", need)
    return rules


class Forward(ctypes.Structure):
    """``hm_forward``'s struct: gates, Eq. 2-3 and Eq. 8-10 of a step (docs/model.md)."""

    c_name: ClassVar[str] = "hm_forward"
    _fields_ = [
        ("N", _i64), ("H", _i64), ("has_z", _i64), ("soft", _i64),
        *_m2("act", "h_prev", "c_prev", "z_prev", "z_below", "h_out", "c_out", "z_out",
             "tanh_c", "u", "zbin", "diff", "zdiff", "cell_stats", "ln_w", "ln_b"),
        ("slope", _f64), ("eps", _f64), ("ts", _i64 * 16),
    ]
    shapes: ClassVar[dict[str, Rule]] = {
        "act": Rule("N", "G"), "h_prev": Rule("N", "H"), "c_prev": Rule("N", "H"),
        "z_prev": Rule("N", "1"), "z_below": Rule("N", "1", None), "h_out": Rule("N", "H"),
        "c_out": Rule("N", "H"), "z_out": Rule("N", "1", "has_z"), "tanh_c": Rule("N", "H"),
        "u": Rule("N", "1", "has_z"), "zbin": Rule("N", "1", "has_z"),
        "diff": Rule("N", "2H", None), "zdiff": Rule("N", "1", None),
        "cell_stats": Rule("N", "2", "ln_w"), "ln_w": Rule("V", "H", None),
        "ln_b": Rule("V", "H", "ln_w"),
    }


class TermsForward(ctypes.Structure):
    """``hm_terms_forward``'s struct: ``act = base + LN(rec) + z_below LN(bu) + z_prev
    LN(td)``."""

    c_name: ClassVar[str] = "hm_terms_forward"
    _fields_ = [
        ("N", _i64), ("R", _i64),
        *_m2("act", "base", "z_prev", "z_below"),
        ("rec", Term), ("td", Term), ("bu", Term),
        ("eps", _f64), ("ts", _i64 * 16),
    ]
    shapes: ClassVar[dict[str, Rule]] = {
        "act": Rule("N", "R"), "base": Rule("N|V", "R"), "z_prev": Rule("N", "1", "td.proj"),
        "z_below": Rule("N", "1", "bu.proj"), **_term_rules("rec", False, True),
        **_term_rules("td", False, False), **_term_rules("bu", False, False),
    }


class Backward(ctypes.Structure):
    """``hm_backward``'s struct: from the gradients of a step's ``h``, ``c``, ``z`` to
    that of ``s``."""

    c_name: ClassVar[str] = "hm_backward"
    _fields_ = [
        ("N", _i64), ("H", _i64), ("has_z", _i64),
        *_m2("act", "tanh_c", "c", "c_prev", "u", "diff", "zdiff", "z_prev", "z_below",
             "cell_stats", "ln_w"),
        *_m2("gh_acc", "gh_out", "gc_acc", "gz_acc", "gz_out", "gz_acc_below", "gs",
             "g_tanh"),
        *_m2("scratch"),
        ("half_slope", _f64), ("ts", _i64 * 20),
    ]
    shapes: ClassVar[dict[str, Rule]] = {
        "act": Rule("N", "G"), "tanh_c": Rule("N", "H"), "c": Rule("N", "H", "ln_w"),
        "c_prev": Rule("N", "H"), "u": Rule("N", "1", "has_z"),
        "diff": Rule("N", "2H", "z_below"), "zdiff": Rule("N", "1", "z_below&has_z"),
        "z_prev": Rule("N", "1"), "z_below": Rule("N", "1", None),
        "cell_stats": Rule("N", "2", "ln_w"), "ln_w": Rule("V", "H", None),
        "gh_acc": Rule("N", "H"), "gh_out": Rule("N", "H", None), "gc_acc": Rule("N", "H"),
        "gz_acc": Rule("N", "1"), "gz_out": Rule("N", "1", None),
        "gz_acc_below": Rule("N", "1", "z_below"), "gs": Rule("N", "G"),
        "g_tanh": Rule("N", "H"), "scratch": Rule("1+", ">=H"),
    }


class Spread(ctypes.Structure):
    """``hm_spread``'s struct: ``dL/dx = dL/ds [U | U_td | W]`` spread onto the states."""

    c_name: ClassVar[str] = "hm_spread"
    _fields_ = [
        ("N", _i64), ("H", _i64), ("Ha", _i64), ("Hb", _i64),
        *_m2("gx", "gh_acc", "h_above", "z_prev", "gh_acc_above", "gz_acc", "h_below",
             "z_below", "gh_acc_below", "gz_acc_below"),
        ("ts", _i64 * 10),
    ]
    shapes: ClassVar[dict[str, Rule]] = {
        "gx": Rule("N", "K"), "gh_acc": Rule("N", "H"), "h_above": Rule("N", "Ha", "Ha"),
        "z_prev": Rule("N", "1", "Ha"), "gh_acc_above": Rule("N", "Ha", "Ha"),
        "gz_acc": Rule("N", "1", "Ha"), "h_below": Rule("N", "Hb", "Hb"),
        "z_below": Rule("N", "1", "Hb"), "gh_acc_below": Rule("N", "Hb", "Hb"),
        "gz_acc_below": Rule("N", "1", "Hb"),
    }


class TermsBackward(ctypes.Structure):
    """``hm_terms_backward``'s struct: each layer-normalised term's backward."""

    c_name: ClassVar[str] = "hm_terms_backward"
    _fields_ = [
        ("N", _i64), ("R", _i64),
        *_m2("gs", "z_prev", "z_below", "gz_acc", "gz_acc_below"),
        ("rec", TermGrad), ("td", TermGrad), ("bu", TermGrad),
        ("ts", _i64 * 20),
    ]
    shapes: ClassVar[dict[str, Rule]] = {
        "gs": Rule("N", "R"), "z_prev": Rule("N", "1", "td.proj"),
        "z_below": Rule("N", "1", "bu.proj"), "gz_acc": Rule("N", "1", "td.proj"),
        "gz_acc_below": Rule("N", "1", "bu.proj"), **_term_rules("rec", True, True),
        **_term_rules("td", True, False), **_term_rules("bu", True, False),
    }


class Gather(ctypes.Structure):
    """``hm_gather``'s struct: ``x = [h_prev | z_prev h_above | z_below h_below]``."""

    c_name: ClassVar[str] = "hm_gather"
    _fields_ = [
        ("N", _i64), ("H", _i64), ("Ha", _i64), ("Hb", _i64),
        *_m2("x", "h_prev", "h_above", "z_prev", "h_below", "z_below"),
        ("ts", _i64 * 6),
    ]
    shapes: ClassVar[dict[str, Rule]] = {
        "x": Rule("N", "K"), "h_prev": Rule("N", "H"), "h_above": Rule("N", "Ha", "Ha"),
        "z_prev": Rule("N", "1", "Ha"), "h_below": Rule("N", "Hb", "Hb"),
        "z_below": Rule("N", "1", "Hb"),
    }


LAYOUTS: dict[str, type[ctypes.Structure]] = {
    s.c_name: s for s in (Forward, TermsForward, Backward, Spread, TermsBackward, Gather)
}
"""Each C function's struct, by the function's name."""


class _CField(ctypes.Structure):
    """An entry of a ``<name>_fields`` table of the C file."""

    _fields_ = [("name", ctypes.c_char_p), ("offset", _i64), ("size", _i64)]


def check_layout(lib: ctypes.CDLL, layout: type[ctypes.Structure],
                 c_name: str | None = None) -> None:
    """Raise ``RuntimeError`` unless ``layout`` is, field by field, the struct the library
    exports as ``c_name`` (default ``layout.c_name``): the same field names in the same
    order, each at the same byte offset with the same byte size, the same total size; and
    so for every struct nested in it. For a function's struct also: its ``M2`` fields
    (nested ones included) lie one after the other, as many as its step strides ``ts``
    (the C step moves exactly those), and each has a shape rule."""
    name = c_name or getattr(layout, "c_name", None)
    if not isinstance(name, str):
        raise RuntimeError(f"{layout.__name__} names no struct of {SOURCE.name}")

    def disagree(why: str) -> RuntimeError:
        return RuntimeError(f"{SOURCE.name}'s {name} and structs.py's {layout.__name__} "
                            f"disagree: {why}")

    try:
        size = _i64.in_dll(lib, f"{name}_size").value
        count = _i64.in_dll(lib, f"{name}_nfields").value
        table = (_CField * count).in_dll(lib, f"{name}_fields")
    except ValueError as err:  # a symbol the library lacks
        raise disagree(f"the library exports no field table ({err})") from err
    c_fields = {f.name.decode(): (f.offset, f.size) for f in table}
    py_fields = [(f[0], getattr(layout, f[0]).offset, getattr(layout, f[0]).size)
                 for f in layout._fields_]
    for field, offset, nbytes in py_fields:
        if field not in c_fields:
            raise disagree(f"field {field!r} is not in C (C's: {', '.join(c_fields)})")
        if c_fields[field] != (offset, nbytes):
            c_offset, c_size = c_fields[field]
            raise disagree(f"field {field!r} lies at byte {c_offset} ({c_size} bytes) in C "
                           f"but at byte {offset} ({nbytes} bytes) in Python")
    missing = [f for f in c_fields if f not in {p[0] for p in py_fields}]
    if missing:
        raise disagree(f"C's fields {missing} are not in Python")
    if size != ctypes.sizeof(layout):
        raise disagree(f"C's struct is {size} bytes, Python's {ctypes.sizeof(layout)}")
    for f in layout._fields_:
        inner = f[1]
        if isinstance(inner, type) and issubclass(inner, ctypes.Structure):
            check_layout(lib, inner)
    if hasattr(layout, "ts"):
        _check_steps(layout, disagree)


def _check_steps(layout: type[ctypes.Structure],
                 disagree: Callable[[str], RuntimeError]) -> None:
    """A function's struct: adjacent M2 fields, one step stride each, one rule each."""
    every = _leaves(layout)
    if every[-1][1] != "ts":
        raise disagree("the step strides ts are not the last field")
    leaves = [(path, offset) for path, kind, offset in every if kind == "m"]
    ts = next(f[1] for f in layout._fields_ if f[0] == "ts")
    steps = ctypes.sizeof(ts) // ctypes.sizeof(_i64)
    if len(leaves) != steps:
        raise disagree(f"{len(leaves)} M2 fields but {steps} step strides")
    first = leaves[0][1]
    for k, (path, offset) in enumerate(leaves):
        if offset != first + k * ctypes.sizeof(M2):
            raise disagree(f"M2 field {path!r} does not follow the one before it")
    rules = getattr(layout, "shapes", {})
    if set(rules) != {path for path, _ in leaves}:
        raise disagree(f"shape rules for {sorted(rules)}, M2 fields "
                       f"{[path for path, _ in leaves]}")


def _structure(kind: object) -> type[ctypes.Structure]:
    """``kind``, a field's type, as the nested struct it must be."""
    if not (isinstance(kind, type) and issubclass(kind, ctypes.Structure)):
        raise RuntimeError(f"structs.py: a field of type {kind!r} is not a struct")
    return kind


def _leaves(layout: type[ctypes.Structure], prefix: str = "",
            base: int = 0) -> list[tuple[str, str, int]]:
    """``(path, kind, byte offset)`` of every field, nested structs' fields in place
    (paths ``"rec.proj"``): kind ``"m"`` an M2, ``"n"`` an int64, ``"d"`` a double,
    ``"ts"`` the step strides."""
    out: list[tuple[str, str, int]] = []
    for f in layout._fields_:
        name, kind = f[0], f[1]
        offset = base + getattr(layout, name).offset
        if kind is M2:
            out.append((prefix + name, "m", offset))
        elif isinstance(kind, type) and issubclass(kind, ctypes.Structure):
            out += _leaves(kind, f"{prefix}{name}.", offset)
        elif kind is _i64:
            out.append((prefix + name, "n", offset))
        elif kind is _f64:
            out.append((prefix + name, "d", offset))
        elif name == "ts" and isinstance(kind, type) and issubclass(kind, ctypes.Array):
            out.append((prefix + name, "ts", offset))
        else:
            raise RuntimeError(f"structs.py: {layout.__name__}.{name} is of a type no C "
                               f"struct here has ({kind!r})")
    return out
