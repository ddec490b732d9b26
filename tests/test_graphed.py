"""hmrnn.model.graphed and hmrnn.training.gpu where no GPU is needed: which stacks get a
GraphedStack and how it comes off, that every call off CUDA runs the stack's own forward
unchanged, the flattening a graph's outputs go through, and that a CPU run sets nothing.
The replays themselves are checked on a GPU, in tests/test_cuda.py."""

from __future__ import annotations

import pytest
import torch

from hmrnn.model.baselines import build_baseline
from hmrnn.model.charlm import CharLM
from hmrnn.model.graphed import GraphedStack, _Flat, graph_stacks
from hmrnn.model.hmlstm import HMLSTM
from hmrnn.model.registry import build_rnn
from hmrnn.model.types import RNNOutput, detach_state
from hmrnn.training.config import RunConfig
from hmrnn.training.distributed import DistContext
from hmrnn.training.gpu import gpu_training


@pytest.mark.parametrize(("kind", "layer_norm", "graphed"), [
    ("hmlstm", True, True), ("lstm", False, True), ("lstm", True, True), ("cwrnn", True, False),
])
def test_graph_stacks_installs_on_every_stack_but_the_clockwork_and_comes_off(
    kind: str, layer_norm: bool, graphed: bool,
) -> None:
    model = CharLM(7, build_rnn(kind, 4, [6, 5], 2, layer_norm=layer_norm), 6)
    stacks = graph_stacks(model)
    assert [g.stack for g in stacks] == ([model.rnn] if graphed else [])
    assert isinstance(model.rnn.forward, GraphedStack) == graphed
    assert graph_stacks(model) == []  # never twice
    for g in stacks:
        g.remove()
    assert not isinstance(model.rnn.forward, GraphedStack)
    assert "forward" not in model.rnn.__dict__
    assert sorted(model.state_dict()) == sorted(CharLM(7, build_rnn(
        kind, 4, [6, 5], 2, layer_norm=layer_norm), 6).state_dict())


@pytest.mark.parametrize("kind", ["hmlstm", "ln-lstm"])
def test_off_cuda_a_graphed_stack_runs_the_stack_itself(kind: str) -> None:
    """Same outputs, state and gradients to the bit, in training with autograd on, and no
    replay: graphs are for CUDA only."""
    def make() -> torch.nn.Module:
        torch.manual_seed(0)
        if kind == "hmlstm":
            return HMLSTM(4, [6, 5], 2, layer_norm=True)
        return build_baseline(kind, 4, [6, 5], 2)

    plain, wrapped = make(), make()
    (g,) = graph_stacks(wrapped)
    x = torch.randn(7, 3, 4)
    results = []
    for rnn in (plain, wrapped):
        inp = x.clone().requires_grad_()
        out, state = rnn(inp)
        loss = sum(h.square().sum() for h in out.hidden)
        loss.backward()  # type: ignore[union-attr]
        results.append([*out.hidden, *torch.utils._pytree.tree_leaves(state), inp.grad,
                        *(p.grad for p in rnn.parameters())])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
    assert g.replays == 0 and g.captured == 0 and g.failure is None


def test_flat_returns_tensors_only_and_unflattens_to_output_and_state() -> None:
    """make_graphed_callables takes tensors only: the Nones (a baseline's boundary) are
    left out and put back."""
    torch.manual_seed(0)
    rnn = build_baseline("ln-lstm", 4, [6, 5], 2)
    state = rnn.initial_state(3)
    leaves, spec = torch.utils._pytree.tree_flatten(state)
    flat = _Flat(rnn, rnn.forward, spec)
    x = torch.randn(7, 3, 4)
    tensors = flat(x, *leaves)
    assert all(isinstance(t, torch.Tensor) for t in tensors) and len(tensors) == 2 + 4
    out, new_state = flat.unflatten(tensors)
    expected, expected_state = rnn(x, state)
    assert isinstance(out, RNNOutput) and out.boundary is None
    assert type(new_state) is type(expected_state)
    for a, b in zip(torch.utils._pytree.tree_leaves((out, new_state)),
                    torch.utils._pytree.tree_leaves((expected, expected_state)), strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    assert list(flat.parameters()) == list(rnn.parameters())


def test_a_cpu_run_sets_nothing() -> None:
    model = CharLM(7, HMLSTM(4, [6, 5], 2), 6)
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    def never() -> list[GraphedStack]:
        raise AssertionError("no graphs off CUDA")

    with gpu_training(never, RunConfig(tf32=not flags[0]), DistContext()) as gpu:
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == flags
        assert gpu.graphs == [] and gpu.report() is None
        assert not isinstance(model.rnn.forward, GraphedStack)


def test_the_replay_plumbing_with_an_eager_stand_in_for_the_graphs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Everything around make_graphed_callables, on the CPU: a stand-in that returns the
    flattened stack itself. Training calls of one signature capture once and replay after;
    the state comes back as the stack's own type, copied; a call of another signature or
    in evaluation runs eagerly; outputs and gradients are the plain stack's."""
    captures: list[tuple[torch.Tensor, ...]] = []

    def stand_in(flat: torch.nn.Module, samples: tuple[torch.Tensor, ...],
                 **_: object) -> torch.nn.Module:
        captures.append(samples)
        return flat

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", stand_in)
    torch.manual_seed(0)
    plain, wrapped = HMLSTM(4, [6, 5], 2, layer_norm=True), HMLSTM(4, [6, 5], 2, layer_norm=True)
    wrapped.load_state_dict(plain.state_dict())
    (g,) = graph_stacks(wrapped)
    g.device_type = "cpu"
    states: list[object] = [None, None]
    for step in range(3):
        x = torch.randn(7, 3, 4, requires_grad=True)
        results = []
        for i, rnn in enumerate((plain, wrapped)):
            out, state = rnn(x, states[i])
            (sum(h.sum() for h in out.hidden) + out.boundary.sum()).backward()  # type: ignore[union-attr]
            states[i] = detach_state(state)
            results.append([*out.hidden, out.boundary, *torch.utils._pytree.tree_leaves(state)])
        for a, b in zip(*results, strict=True):
            assert torch.equal(a, b)
        assert type(states[1]) is type(states[0])
        assert g.captured == 1 and g.replays == step + 1
    assert len(captures) == 1 and captures[0][0].requires_grad  # the input's copy
    assert not any(t.requires_grad for t in captures[0][1:])  # the initial zeros
    for a, b in zip(plain.parameters(), wrapped.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad)  # type: ignore[arg-type]
    wrapped(torch.randn(5, 3, 4))  # another length: a second signature
    assert g.captured == 2
    wrapped(torch.randn(6, 3, 4))  # a third: past the limit, eager
    wrapped.eval()
    wrapped(torch.randn(7, 3, 4))
    assert g.captured == 2 and g.replays == 4


def test_evaluation_calls_replay_a_forward_graph_and_hand_out_copies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Calls without autograd capture the forward pass alone (here an eager stand-in for
    capture_forward, whose replays hand out the same output tensors every time): each
    call's outputs are copies, so boundaries collected over windows are each window's own;
    windows of another length get a graph of their own, and a call with autograd none of
    these."""
    from hmrnn.model import graphed

    def stand_in(fn: object, samples: tuple[torch.Tensor, ...]) -> object:
        kept: list[tuple[torch.Tensor, ...]] = []

        def replay(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = fn(*tensors)  # type: ignore[operator]
            if not kept:
                kept.append(out)
            for static, t in zip(kept[0], out, strict=True):
                static.copy_(t)  # one set of buffers, as a graph's
            return kept[0]
        return replay

    monkeypatch.setattr(graphed, "capture_forward", stand_in)
    torch.manual_seed(0)
    plain, wrapped = HMLSTM(4, [6, 5], 2), HMLSTM(4, [6, 5], 2)
    wrapped.load_state_dict(plain.state_dict())
    (g,) = graph_stacks(wrapped)
    g.device_type = "cpu"
    text = torch.randn(25, 2, 4)
    results = []
    with torch.no_grad():
        for rnn in (plain.eval(), wrapped.eval()):
            state, zs = None, []
            for window in text.split(10):  # 10, 10, 5
                out, state = rnn(window, state)
                zs.append(out.boundary)
            results.append(torch.cat(zs))
    assert torch.equal(results[0], results[1])
    assert g.captured == 2 and g.replays == 3
