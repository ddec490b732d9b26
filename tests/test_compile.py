"""``torch.compile`` and ``torch.export`` of the HM-LSTM: the fast loop is two
``torch.library`` operators (hmrnn.model.loop.function), so a whole model compiles with
``fullgraph=True`` and gives eager's values and gradients; the operators pass
``torch.library.opcheck`` (schema, shape functions, autograd, AOT tracing with dynamic
shapes); a new slope needs no recompilation.

Most tests compile with ``backend="aot_eager"`` (Dynamo and AOTAutograd, the operators'
registrations all used, no code generated), one with inductor.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor
from torch._dynamo.testing import CompileCounterWithBackend

from hmrnn.model.hmlstm import HMLSTM
from hmrnn.model.loop.backends import cpu_serves, select
from hmrnn.model.loop.function import _join
from hmrnn.model.loop.weights import cell_tensors, layer_norm_eps

T, N, D = 7, 3, 4
SIZES = (5, 6, 3)  # pairwise distinct
# the C step where it compiled (float32 on the CPU), else ATen
STEP = "cpu" if cpu_serves(torch.zeros(1)) else "aten"


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    """Each test compiles from scratch (and no test fills another's recompilation budget)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _model(layer_norm: bool, boundary: str = "step", backend: str = STEP) -> HMLSTM:
    torch.manual_seed(0)
    rnn = HMLSTM(D, SIZES, boundary=boundary, layer_norm=layer_norm, backend=backend)
    with torch.no_grad():  # wide enough that boundaries both fire and not
        for name, p in rnn.named_parameters():
            if ".ln_" not in name:
                p.uniform_(-1.0, 1.0)
    rnn.set_slope(2.0)
    return rnn


def _loss(rnn: torch.nn.Module, x: Tensor) -> Tensor:
    """A loss that reads every output: each layer's hidden sequence, the boundaries and
    the last state."""
    output, state = rnn(x)
    loss = sum((h * (l + 1)).sum() for l, h in enumerate(output.hidden)) + output.boundary.sum()
    return loss + sum(c.square().sum() for c in state.c) + sum(h.sum() for h in state.h)


def _values_and_grads(rnn: torch.nn.Module, model: HMLSTM, x: Tensor,
                      seed: int = 3) -> tuple[Tensor, list[Tensor]]:
    torch.manual_seed(seed)  # the draws of boundary="sample"
    loss = _loss(rnn, x)
    return loss.detach(), list(torch.autograd.grad(loss, [x, *model.parameters()]))


def _assert_compiled_equals_eager(compiled: torch.nn.Module, rnn: HMLSTM, x: Tensor) -> None:
    """The compiled model's loss and gradients (of the input and every parameter) are
    eager's."""
    loss, grads = _values_and_grads(compiled, rnn, x)
    ref_loss, ref_grads = _values_and_grads(rnn, rnn, x)
    torch.testing.assert_close(loss, ref_loss)
    names = ["input", *(n for n, _ in rnn.named_parameters())]
    for name, a, b in zip(names, grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, msg=f"gradient of {name}")


@pytest.mark.parametrize(("boundary", "backend"),
                         [("step", STEP), ("soft", STEP), ("sample", "aten")])
@pytest.mark.parametrize("layer_norm", [False, True])
def test_compiled_with_fullgraph_equals_eager(layer_norm: bool, boundary: str,
                                              backend: str) -> None:
    rnn = _model(layer_norm, boundary, backend)
    compiled = torch.compile(rnn, backend="aot_eager", fullgraph=True)
    x = torch.randn(T, N, D, requires_grad=True)
    _assert_compiled_equals_eager(compiled, rnn, x)
    with torch.no_grad():  # the inference path (no kept buffers) too
        torch.manual_seed(4)
        hidden = compiled(x)[0].hidden[2]
        torch.manual_seed(4)
        torch.testing.assert_close(hidden, rnn(x)[0].hidden[2])


def test_a_new_slope_or_length_needs_no_new_graph_per_call() -> None:
    """The slope reaches the operator as a tensor on the host: ``set_slope`` is read by the
    compiled model without recompiling (soft boundaries, the hard sigmoid itself, change
    with it: a graph that kept the old slope fails); a new sequence length compiles once
    more, with dynamic shapes, and no more after that."""
    rnn = _model(False, "soft")
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(rnn, backend=counter, fullgraph=True)
    x = torch.randn(T, N, D, requires_grad=True)
    compiled(x)
    graphs = counter.frame_count
    before = rnn(x)[0].boundary
    for slope in (1.5, 3.0, 4.5):
        rnn.set_slope(slope)
        boundary = rnn(x)[0].boundary
        assert not torch.allclose(boundary, before)  # the slope matters here
        torch.testing.assert_close(compiled(x)[0].boundary, boundary)
        _assert_compiled_equals_eager(compiled, rnn, x)  # the backward pass's slope too
        before = boundary
    assert counter.frame_count == graphs
    for steps in (T + 2, T + 5):
        x = torch.randn(steps, N, D, requires_grad=True)
        torch.testing.assert_close(compiled(x)[0].hidden[1], rnn(x)[0].hidden[1])
    assert counter.frame_count == graphs + 1


def test_an_explicit_generator_draws_as_in_eager() -> None:
    """``generator=`` (for ``boundary="sample"``) breaks the graph (Dynamo cannot trace a
    generator's state) but draws what eager draws and advances the generator alike."""
    rnn = _model(False, "sample", "aten")
    compiled = torch.compile(rnn, backend="aot_eager")
    x = torch.randn(T, N, D)
    g, g_ref = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(2):
        z = compiled(x, generator=g)[0].boundary
        z_ref = rnn(x, generator=g_ref)[0].boundary
        torch.testing.assert_close(z, z_ref)
    assert 0 < float(z_ref[..., :-1].detach().mean()) < 1


@pytest.mark.parametrize("keep, boundary_grad", [(False, "chain"), (True, "chain"),
                                                 (True, "local")])
@pytest.mark.parametrize("layer_norm", [False, True])
def test_the_loop_operator_passes_opcheck(layer_norm: bool, keep: bool,
                                          boundary_grad: str) -> None:
    rnn = _model(layer_norm)
    names, params = cell_tensors(rnn.cells)
    x = torch.randn(T, N, D)
    bottom = rnn.cells[0].bottom_up(x).detach().requires_grad_(keep)
    state = rnn.initial_state(N)
    args = (bottom, list(state.h), list(state.c), list(state.z),
            [p.detach().requires_grad_(keep) for p in params], _join(names),
            layer_norm_eps(rnn.cells), torch.tensor(2.0, dtype=torch.float64), "step", STEP,
            keep, None, boundary_grad)
    torch.library.opcheck(torch.ops.hmrnn.hmlstm_loop.default, args)


def test_the_backward_operator_runs_the_backend_the_forward_one_chose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``backend="auto"`` is resolved once, by the forward operator, which hands its choice
    to the backward one (a kept output), so that the two cannot choose differently."""
    from hmrnn.model.loop import function

    selected: list[str] = []

    def spy(name: str, like: Tensor, boundary: str) -> object:
        selected.append(name)
        return select(name, like, boundary)

    monkeypatch.setattr(function, "select", spy)
    rnn = _model(False, backend="auto")
    x = torch.randn(T, N, D, requires_grad=True)
    _values_and_grads(rnn, rnn, x)
    assert selected == [STEP, STEP]  # the forward pass's, then the backward pass's


def test_export_holds_the_loop_as_the_operator() -> None:
    """Exported under ``torch.no_grad()`` (an inference program), the operator keeps
    nothing for a backward pass: its ``keep`` is False, its outputs the loop's own."""
    rnn = _model(True)
    x = torch.randn(T, N, D)
    with torch.no_grad():
        program = torch.export.export(rnn, (x,))
    loops = [node for module in program.graph_module.modules()  # an autocast region's too
             if isinstance(module, torch.fx.GraphModule) for node in module.graph.nodes
             if node.target is torch.ops.hmrnn.hmlstm_loop.default]
    assert len(loops) == 1
    keep = loops[0].args[10]
    assert keep is False
    assert len(loops[0].meta["val"]) == 2 * len(SIZES) + 1  # h per layer, z, c per layer
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x)[0].hidden[2], rnn(x)[0].hidden[2])


def test_inductor_compiles_forward_and_backward() -> None:
    rnn = _model(False)
    compiled = torch.compile(rnn, fullgraph=True)
    _assert_compiled_equals_eager(compiled, rnn, torch.randn(T, N, D, requires_grad=True))
