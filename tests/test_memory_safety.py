"""Nothing reaches the C step that does not fit it.

Two lines of defence: every entry to the loop (``HMLSTM.forward``, ``sparse_forward``,
``StreamingHMLSTM``) checks the state against the input and the stack
(:func:`hmrnn.model.hmlstm.check_state`), so that a bad state raises ``ValueError``
before any buffer is made; and every C function checks each tensor it is bound to
against the sizes its struct declares (:class:`hmrnn.model.loop.backends.cpu.library.Kernel`),
its Python description of the struct being checked, field by field, against the one C
exports. Tiny sizes throughout.
"""

from __future__ import annotations

import ctypes
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import torch

import hmrnn.model.loop.backends.cpu as cpu
from hmrnn.model.hmlstm import HMLSTM, HMLSTMState
from hmrnn.model.loop import workspace
from hmrnn.model.loop.backends.cpu import library, structs
from hmrnn.model.sparse import StreamingHMLSTM, sparse_forward

T, N, D = 5, 4, 3
SIZES = (5, 4, 6)
HAS_C = library.load() is not None
needs_c = pytest.mark.skipif(not HAS_C, reason="no C compiler here")
BACKENDS = [pytest.param("cpu", marks=needs_c), "aten"]


def _model(backend: str, layer_norm: bool = False) -> HMLSTM:
    torch.manual_seed(0)
    return HMLSTM(D, list(SIZES), len(SIZES), layer_norm=layer_norm, backend=backend)


def _replace(state: HMLSTMState, part: str, layer: int, value: Any) -> HMLSTMState:
    parts = {"h": list(state.h), "c": list(state.c), "z": list(state.z)}
    parts[part][layer] = value
    return HMLSTMState(*(tuple(parts[p]) for p in "hcz"))


def _bad_states(rnn: HMLSTM, batch: int) -> list[tuple[str, Any, str]]:
    """``(what, state, the message it must raise)`` for a batch of ``batch``: every kind of
    misfit."""
    good = rnn.initial_state(batch)
    other = 2 if batch == 1 else 1
    return [
        ("batch", rnn.initial_state(other),
         f"state.h[0] has shape ({other}, 5); expected ({batch}, 5) for a batch of {batch} "
         "and hidden size 5"),
        ("hidden size", _replace(good, "h", 1, torch.zeros(batch, 7)),
         f"state.h[1] has shape ({batch}, 7); expected ({batch}, 4) for a batch of {batch} "
         "and hidden size 4"),
        ("cell size", _replace(good, "c", 2, torch.zeros(batch, 5)),
         f"state.c[2] has shape ({batch}, 5); expected ({batch}, 6)"),
        ("one layer short", HMLSTMState(good.h[:2], good.c[:2], good.z[:2]),
         "state.h holds 2 tensors; expected 3, one per layer"),
        ("one layer more", HMLSTMState(good.h, good.c, (*good.z, good.z[0])),
         "state.z holds 4 tensors; expected 3"),
        ("z width", _replace(good, "z", 0, torch.zeros(batch, 2)),
         f"state.z[0] has shape ({batch}, 2); expected ({batch}, 1)"),
        ("z as a vector", _replace(good, "z", 1, torch.zeros(batch)),
         f"state.z[1] has shape ({batch},); expected ({batch}, 1)"),
        ("dtype", _replace(good, "c", 1, torch.zeros(batch, 4, dtype=torch.float64)),
         "state.c[1] has dtype torch.float64; expected torch.float32"),
        ("device", _replace(good, "h", 2, torch.zeros(batch, 6, device="meta")),
         "state.h[2] is on meta; expected cpu"),
        ("not a tensor", _replace(good, "z", 1, [0.0] * batch),
         "state.z[1] is a list, not a tensor"),
        ("part not a tuple", HMLSTMState(good.h, good.c, torch.zeros(3, batch, 1)),
         "state.z must be a tuple of 3 tensors"),
        ("not a state", (good.h, good.c), "must be an HMLSTMState (h, c, z)"),
        ("a tensor", torch.zeros(batch, 5), "must be an HMLSTMState (h, c, z)"),
    ]


@pytest.fixture
def no_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything reaches C or makes the loop's buffers."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a bad state reached the loop")

    monkeypatch.setattr(library.Kernel, "bind", refuse)
    monkeypatch.setattr(library.Kernel, "__call__", refuse)
    monkeypatch.setattr(workspace.Buffers, "__init__", refuse)
    monkeypatch.setattr(workspace.Workspace, "__init__", refuse)


def _cases(batch: int) -> list[Any]:
    rnn = _model("aten")
    return [pytest.param(what, id=what) for what, _, _ in _bad_states(rnn, batch)]


def _expect(rnn: HMLSTM, batch: int, what: str) -> tuple[Any, str]:
    return next((state, message) for w, state, message in _bad_states(rnn, batch) if w == what)


@pytest.mark.parametrize("what", _cases(N))
@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_hmlstm_refuses_every_bad_state_before_the_loop(
    backend: str, fast: bool, what: str, no_loop: None
) -> None:
    rnn = _model(backend)
    rnn.fast = fast
    state, message = _expect(rnn, N, what)
    with pytest.raises(ValueError, match=re.escape(message)):
        rnn(torch.randn(T, N, D), state)


@pytest.mark.parametrize("what", _cases(N))
@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_forward_refuses_every_bad_state_before_the_loop(
    backend: str, what: str, no_loop: None
) -> None:
    rnn = _model(backend).eval()
    state, message = _expect(rnn, N, what)
    with pytest.raises(ValueError, match=re.escape(message)):
        sparse_forward(rnn, torch.randn(T, N, D), state)


@pytest.mark.parametrize("what", [c for c in _cases(1) if c.values[0] != "batch"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_streaming_refuses_every_bad_state_before_the_loop(
    backend: str, what: str, no_loop: None
) -> None:
    rnn = _model(backend).eval()
    state, message = _expect(rnn, 1, what)
    with pytest.raises(ValueError, match=re.escape(message)):
        StreamingHMLSTM(rnn, state)


@pytest.mark.parametrize("backend", BACKENDS)
def test_streaming_refuses_a_batch_and_a_bad_input(backend: str) -> None:
    rnn = _model(backend).eval()
    with pytest.raises(ValueError, match="batch size 1, got a state of batch size 2"):
        StreamingHMLSTM(rnn, rnn.initial_state(2))
    stream = StreamingHMLSTM(rnn)
    with pytest.raises(ValueError, match=re.escape("input of shape (1, 3), got (2, 3)")):
        stream.step(torch.randn(2, D))
    with pytest.raises(ValueError, match="the input has dtype torch.float64; expected "
                                         "torch.float32"):
        stream.step(torch.randn(1, D, dtype=torch.float64))
    hidden, z = stream.step(torch.randn(1, D))
    assert [tuple(h.shape) for h in hidden] == [(1, s) for s in SIZES] and z.shape == (1, 3)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_input_of_another_dtype_or_device_is_named(backend: str, fast: bool,
                                                   no_loop: None) -> None:
    rnn = _model(backend)
    rnn.fast = fast
    with pytest.raises(ValueError, match="HMLSTM: the input has dtype torch.float64; "
                                         "expected torch.float32"):
        rnn(torch.randn(T, N, D, dtype=torch.float64))
    with pytest.raises(ValueError, match="the input is on meta; expected cpu"):
        rnn(torch.randn(T, N, D, device="meta"))
    with pytest.raises(ValueError, match="sparse_forward: the input has dtype torch.float64"):
        sparse_forward(rnn, torch.randn(T, N, D, dtype=torch.float64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_plain_tuple_state_is_taken(backend: str) -> None:
    rnn = _model(backend)
    x = torch.randn(T, N, D)
    _, state = rnn(x)
    plain = (list(state.h), tuple(state.c), tuple(state.z))
    out, last = rnn(x, plain)
    ref, ref_last = rnn(x, state)
    assert isinstance(last, HMLSTMState)
    for a, b in zip((*out.hidden, out.boundary), (*ref.hidden, ref.boundary), strict=True):
        assert torch.equal(a, b)
    with torch.no_grad():
        sparse, _ = sparse_forward(rnn.eval(), x, plain)
    assert torch.equal(sparse.boundary, ref.boundary)


def test_under_autocast_the_state_may_be_of_another_float_dtype() -> None:
    """Autocast makes the input bfloat16 and may leave the state so; the fast loop casts
    both to the parameters' dtype."""
    rnn = _model("aten")
    state = HMLSTMState(*(tuple(t.bfloat16() for t in part) for part in rnn.initial_state(N)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, last = rnn(torch.randn(T, N, D), state)
    assert out.hidden[0].dtype == torch.float32 and last.h[0].shape == (N, 5)


# ---- the second line: every C function checks its fields ----


def _kernels() -> dict[str, library.Kernel]:
    lib = library.load()
    assert lib is not None
    return lib


def _gather_fields(S: int = 1, M: int = N) -> dict[str, Any]:
    H, Ha, Hb = 4, 6, 5
    steps = (S,) if S > 1 else ()
    return {"N": M, "H": H, "Ha": Ha, "Hb": Hb, "x": torch.zeros(*steps, M, H + Ha + Hb),
            "h_prev": torch.zeros(*steps, M, H), "h_above": torch.zeros(M, Ha),
            "z_prev": torch.zeros(*steps, M, 1), "h_below": torch.zeros(*steps, M, Hb),
            "z_below": torch.zeros(*steps, M, 1)}


@needs_c
def test_a_well_shaped_bind_runs() -> None:
    fields = _gather_fields()
    fields["h_prev"].fill_(1.0)
    fields["z_prev"].fill_(1.0)
    fields["h_above"].fill_(2.0)
    _kernels()["hm_gather"].bind(**fields)(0)
    assert torch.equal(fields["x"][:, :10], torch.cat([torch.ones(N, 4), 2 * torch.ones(N, 6)], 1))
    assert torch.equal(fields["x"][:, 10:], torch.zeros(N, 5))


def _bad(**change: Any) -> dict[str, Any]:
    fields = _gather_fields()
    fields.update(change)
    return fields


@needs_c
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (_bad(h_prev=torch.zeros(N + 3, 4)),
         "hm_gather: field h_prev has shape (7, 4); expected (N, H) = (4, 4)"),
        (_bad(h_above=torch.zeros(N, 7)),
         "hm_gather: field h_above has shape (4, 7); expected (N, Ha) = (4, 6)"),
        (_bad(x=torch.zeros(N, 14)),
         "hm_gather: field x has shape (4, 14); expected (N, K) = (4, 15)"),
        (_bad(z_below=torch.zeros(N, 2)),
         "hm_gather: field z_below has shape (4, 2); expected (N, 1) = (4, 1)"),
        (_bad(z_prev=torch.zeros(N)),
         "hm_gather: field z_prev has shape (4,); expected (N, 1) = (4, 1)"),
        (_bad(h_below=torch.zeros(0, N, 5)),
         "hm_gather: field h_below has shape (0, 4, 5)"),
        (_bad(h_prev=torch.zeros(N, 4, dtype=torch.float64)),
         "hm_gather: field h_prev must be a float32 (strided) tensor on the CPU, got "
         "torch.float64"),
        (_bad(h_prev=torch.zeros(N, 4, device="meta")),
         "hm_gather: field h_prev must be a float32 (strided) tensor on the CPU, got "
         "torch.float32 on meta"),
        (_bad(h_prev=torch.zeros(4, N).t()),
         "hm_gather: field h_prev: the C step needs a row's elements adjacent"),
        (_bad(h_above=None),
         "hm_gather: field h_above is None, but the C function reads it when Ha"),
        (_bad(N=N + 1), "hm_gather: field x has shape (4, 15); expected (N, K) = (5, 15)"),
    ],
)
def test_a_misshapen_field_never_reaches_c(fields: dict[str, Any], message: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = _kernels()["hm_gather"]

    def refuse(*args: object) -> None:
        raise AssertionError("the C function was called")

    monkeypatch.setattr(kernel, "_fn", refuse)
    with pytest.raises(ValueError, match=re.escape(message)):
        kernel.bind(**fields)
    with pytest.raises(ValueError, match=re.escape(message)):
        kernel(**fields)


@needs_c
def test_fields_of_the_wrong_type_or_count_are_refused() -> None:
    kernel = _kernels()["hm_gather"]
    with pytest.raises(TypeError, match="takes a tensor or None, got list"):
        kernel.bind(**_bad(h_prev=[[0.0] * 4] * N))
    with pytest.raises(TypeError, match="takes a size"):
        kernel.bind(**_bad(H=-1))
    with pytest.raises(TypeError, match="has no field 'y'"):
        kernel.bind(**_gather_fields(), y=1)
    fields = _gather_fields()
    del fields["x"]
    with pytest.raises(TypeError, match=re.escape("fields ['x'] not given")):
        kernel.bind(**fields)


@needs_c
def test_a_needed_field_left_out_is_refused() -> None:
    """``hm_forward`` writes ``z_out`` whenever ``has_z``: None there is refused."""
    H = 3
    z = torch.zeros
    with pytest.raises(ValueError, match="hm_forward: field z_out is None, but the C function "
                                         "reads it when has_z"):
        cpu.hm_forward(N, H, True, "step", z(N, 4 * H + 1), z(N, H), z(N, H), z(N, 1), None,
                       z(N, H), z(N, H), None, z(N, H), z(N, 1), z(N, 1), None, None, None,
                       None, None, 1.0, 1e-5)
    with pytest.raises(ValueError, match=re.escape(
            "hm_forward: field act has shape (4, 12); expected (N, G) = (4, 13)")):
        cpu.hm_forward(N, H, True, "step", z(N, 4 * H), z(N, H), z(N, H), z(N, 1), None,
                       z(N, H), z(N, H), z(N, 1), z(N, H), z(N, 1), z(N, 1), None, None,
                       None, None, None, 1.0, 1e-5)


@needs_c
def test_a_step_beyond_the_fields_is_refused() -> None:
    step = _kernels()["hm_gather"].bind(**_gather_fields(S=3))
    for t in range(3):
        step(t)
    for t in (3, 10, -1):
        with pytest.raises(ValueError, match=f"hm_gather: step {t} is outside the 3 steps"):
            step(t)


@needs_c
def test_the_terms_are_checked_field_by_field() -> None:
    """A nested struct's fields (``rec.stats``) have rules of their own."""
    R = 9
    z = torch.zeros
    term = {"proj": z(N, R), "stats": z(N, 2), "w": z(R), "b": z(R)}
    _kernels()["hm_terms_forward"].bind(N=N, R=R, act=z(N, R), base=z(R), z_prev=z(N, 1),
                                        z_below=None, rec=term, td=None, bu=None, eps=1e-5)(0)
    with pytest.raises(ValueError, match=re.escape(
            "hm_terms_forward: field rec.stats has shape (4, 8); expected (N, 2) = (4, 2)")):
        _kernels()["hm_terms_forward"].bind(
            N=N, R=R, act=z(N, R), base=z(R), z_prev=z(N, 1), z_below=None,
            rec=term | {"stats": z(N, 8)}, td=None, bu=None, eps=1e-5)
    with pytest.raises(ValueError, match="field z_below is None, but the C function reads "
                                         "it when bu.proj"):
        _kernels()["hm_terms_forward"].bind(N=N, R=R, act=z(N, R), base=z(R), z_prev=z(N, 1),
                                            z_below=None, rec=term, td=None, bu=term, eps=1e-5)


@needs_c
@pytest.mark.parametrize("layer_norm", [False, True])
@pytest.mark.parametrize("grad", [False, True])
def test_the_loop_entered_below_the_state_check_still_never_reaches_c(
    layer_norm: bool, grad: bool
) -> None:
    """The loop itself (:func:`hmrnn.model.loop.hmlstm_loop`) sizes its buffers from the
    state and binds the C step with ``N`` from the input: the fields' check stops it."""
    from hmrnn.model.loop import hmlstm_loop

    rnn = _model("cpu", layer_norm)
    state = rnn.initial_state(1)
    x = torch.randn(T, N, D, requires_grad=grad)
    with pytest.raises(ValueError, match=rf"hm_\w+: field \w+ has shape \({T}, 1, \d+\); "
                                         rf"expected \(N, \w+\) = \({N}, \d+\)"):
        hmlstm_loop(rnn.cells, x, state.h, state.c, state.z, 1.0, "step", None, "cpu")


# ---- the Python description of each struct against the C one ----


def _fields_of(layout: type[ctypes.Structure]) -> list[tuple[Any, ...]]:
    return [tuple(f) for f in layout._fields_]


def _variant(layout: type[ctypes.Structure], edit: Callable[[list[tuple[Any, ...]]], None],
             ) -> type[ctypes.Structure]:
    fields = _fields_of(layout)
    edit(fields)
    return type(f"Edited{layout.__name__}", (ctypes.Structure,),
                {"_fields_": fields, "c_name": getattr(layout, "c_name"),  # noqa: B009
                 "shapes": getattr(layout, "shapes", {})})


def _swap(a: str, b: str) -> Callable[[list[tuple[Any, ...]]], None]:
    def edit(fields: list[tuple[Any, ...]]) -> None:
        names = [f[0] for f in fields]
        i, j = names.index(a), names.index(b)
        fields[i], fields[j] = fields[j], fields[i]
    return edit


@needs_c
def test_every_struct_matches_the_c_file_field_by_field() -> None:
    kernels = _kernels()
    assert set(kernels) == set(structs.LAYOUTS)
    for name, kernel in kernels.items():
        structs.check_layout(kernel.lib, structs.LAYOUTS[name])
    lib = kernels["hm_forward"].lib
    for nested in (structs.M2, structs.Term, structs.TermGrad):
        structs.check_layout(lib, nested)


@needs_c
@pytest.mark.parametrize(
    ("name", "edit", "message"),
    [
        # two M2 fields of the same size swapped: the total size cannot see it
        ("hm_gather", _swap("h_prev", "h_above"), "field 'h_above' lies at byte"),
        ("hm_forward", _swap("h_out", "c_out"), "field 'c_out' lies at byte"),
        ("hm_spread", _swap("Ha", "Hb"), "field 'Hb' lies at byte"),
        ("hm_forward", _swap("slope", "eps"), "field 'eps' lies at byte"),
        ("hm_terms_backward", _swap("td", "bu"), "field 'bu' lies at byte"),
        # a field renamed, dropped, or a step stride short
        ("hm_gather", lambda f: f.__setitem__(4, ("xx", structs.M2)), "field 'xx' is not in C"),
        ("hm_backward", lambda f: f.pop(3), "lies at byte"),
        ("hm_gather", lambda f: f.__setitem__(-1, ("ts", ctypes.c_int64 * 5)),
         "'ts' lies at byte 128 (48 bytes) in C but at byte 128 (40 bytes)"),
    ],
)
def test_a_struct_that_differs_from_c_is_caught(
    name: str, edit: Callable[[list[tuple[Any, ...]]], None], message: str
) -> None:
    lib = _kernels()[name].lib
    layout = _variant(structs.LAYOUTS[name], edit)
    with pytest.raises(RuntimeError, match=re.escape(message)):
        library.Kernel(lib, name, layout)


@needs_c
def test_a_nested_struct_that_differs_from_c_is_caught() -> None:
    lib = _kernels()["hm_terms_forward"].lib
    swapped = _variant(structs.Term, _swap("w", "b"))
    layout = _variant(structs.TermsForward, lambda f: f.__setitem__(
        [x[0] for x in f].index("td"), ("td", swapped)))
    with pytest.raises(RuntimeError, match=re.escape("hm_term and structs.py's EditedTerm "
                                                     "disagree: field 'b' lies at byte")):
        library.Kernel(lib, "hm_terms_forward", layout)


@needs_c
def test_a_struct_without_a_rule_for_a_field_is_caught() -> None:
    lib = _kernels()["hm_gather"].lib
    rules = {k: v for k, v in structs.Gather.shapes.items() if k != "x"}
    layout = type("NoRuleGather", (ctypes.Structure,), {
        "_fields_": _fields_of(structs.Gather), "c_name": "hm_gather", "shapes": rules})
    with pytest.raises(RuntimeError, match="shape rules for"):
        library.Kernel(lib, "hm_gather", layout)


# ---- the reproduction ----

REPRO = """
import torch
from hmrnn import HMLSTM
rnn = HMLSTM(4, 32, 3)
rnn(torch.randn(7, 64, 4), rnn.initial_state(1))
"""


def test_the_reproduction_raises_instead_of_corrupting_memory() -> None:
    done = subprocess.run([sys.executable, "-c", REPRO], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert "ValueError: HMLSTM: state.h[0] has shape (1, 32); expected (64, 32) for a batch " \
           "of 64 and hidden size 32" in done.stderr
