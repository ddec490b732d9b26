"""The fast loop (hmrnn.model.loop) against the cell-by-cell reference loop: forward values and
every gradient, in float64, for each boundary mode, with and without layer norm; and the
choice of its step backend."""

from __future__ import annotations

import pytest
import torch
from helpers import loop_outputs, outputs_and_grads, random_state, wide_hmlstm

import hmrnn.model.loop.weights
from hmrnn.model.hmlstm import HMLSTM, HMLSTMState
from hmrnn.model.loop import select
from hmrnn.model.loop.backends import aten
from hmrnn.model.loop.backends.cpu import library
from hmrnn.model.sparse import StreamingHMLSTM, sparse_forward

T, N, D = 7, 3, 2
SIZES = (5, 6, 4)


@pytest.mark.parametrize("skip_gated", [False, True])
@pytest.mark.parametrize("layer_norm", [False, True])
@pytest.mark.parametrize("mode, boundary_grad", [("step", "chain"), ("sample", "chain"),
                                                 ("soft", "chain"), ("step", "hold"),
                                                 ("step", "local"), ("soft", "local"),
                                                 ("gumbel", "chain"), ("gumbel", "local")])
@pytest.mark.parametrize("sizes", [SIZES, (4, 3)])
def test_fast_equals_reference_forward_and_gradients(
    mode: str, boundary_grad: str, layer_norm: bool, sizes: tuple[int, ...],
    skip_gated: bool, device: torch.device, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``skip_gated``: the gated terms' products only on the rows let in (large weights);
    ``boundary_grad``: the reference detaches COPY's share of ``z`` ("hold", "local") and
    recomputes ``s_z`` from detached states ("local")."""
    if skip_gated:
        monkeypatch.setattr(hmrnn.model.loop.weights, "LARGE_WEIGHT", 0)
    rnn = wide_hmlstm(D, sizes, mode, layer_norm).to(device)
    rnn.boundary_grad = boundary_grad
    x = torch.randn(T, N, D, dtype=torch.float64).to(device).requires_grad_()
    state = random_state(sizes, N, 1, device)
    with torch.no_grad():
        shapes = [v.shape for v in loop_outputs(rnn, x, state)]
    g = torch.Generator().manual_seed(2)
    weights = [torch.randn(s, generator=g, dtype=torch.float64).to(device) for s in shapes]
    fast_values, fast_grads = outputs_and_grads(rnn, True, x, state, weights)
    ref_values, ref_grads = outputs_and_grads(rnn, False, x, state, weights)
    for a, b in zip(fast_values, ref_values, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    names = ["input"] + [f"state.{k}[{l}]" for k in "hcz" for l in range(len(sizes))]
    names += [n for n, _ in rnn.named_parameters()]
    for name, a, b in zip(names, fast_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=f"gradient of {name}")
    boundary = ref_values[len(sizes)][..., :-1]
    if mode != "soft":  # the test means something only if boundaries both fire and not
        assert 0 < boundary.mean() < 1


@pytest.mark.parametrize("layer_norm", [False, True])
def test_inference_path_equals_training_path(layer_norm: bool, device: torch.device) -> None:
    """Without autograd the fast loop keeps one scratch slot instead of all steps."""
    rnn = wide_hmlstm(D, SIZES, "step", layer_norm).to(device)
    x = torch.randn(T, N, D, dtype=torch.float64).to(device)
    trained, state = rnn(x)
    with torch.no_grad():
        inferred, state_ng = rnn(x)
    assert trained.hidden[0].grad_fn is not None and inferred.hidden[0].grad_fn is None
    for a, b in zip(trained.hidden, inferred.hidden, strict=True):  # (BLAS may round apart)
        torch.testing.assert_close(a.detach(), b, rtol=1e-12, atol=1e-14)
        assert b.is_contiguous() and b.shape[:2] == (T, N)
    assert torch.equal(trained.boundary.detach(), inferred.boundary)
    for a, b in zip(state, state_ng, strict=True):
        for u, v in zip(a, b, strict=True):
            torch.testing.assert_close(u.detach(), v, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("boundary_grad", ["chain", "hold", "local"])
@pytest.mark.parametrize("layer_norm", [False, True])
def test_float32_training_step_matches_reference(
    layer_norm: bool, boundary_grad: str, device: torch.device,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In float32 the large-weight path (oneDNN products where available) is taken, and
    on the CPU the C step where it compiled."""
    monkeypatch.setattr(hmrnn.model.loop.weights, "LARGE_WEIGHT", 0)
    torch.manual_seed(0)
    rnn = HMLSTM(3, 8, 3, layer_norm=layer_norm, boundary_grad=boundary_grad).to(device)
    x = torch.randn(5, 4, 3).to(device)
    losses = {}
    for fast in (True, False):
        rnn.fast = fast
        rnn.zero_grad()
        out, _ = rnn(x)
        loss = sum(h.square().sum() for h in out.hidden)
        loss.backward()
        losses[fast] = (loss.item(), [p.grad.clone() for p in rnn.parameters()])
    assert losses[True][0] == pytest.approx(losses[False][0], rel=1e-5)
    for a, b in zip(losses[True][1], losses[False][1], strict=True):  # (per-term LN amplifies
        assert float((a - b).norm() / b.norm()) < 1e-4                # rounding elementwise)


@pytest.mark.parametrize("layer_norm", [False, True])
@pytest.mark.parametrize("boundary_grad", ["hold", "local"])
def test_held_and_local_straight_through_keep_the_forward_and_the_detectors_gradient(
    boundary_grad: str, layer_norm: bool,
) -> None:
    """``boundary_grad`` changes only where the boundary's gradient goes: the same
    outputs; the detectors' weights still learn; the initial state's gradient differs."""
    rnn = wide_hmlstm(D, SIZES, "step", layer_norm)
    x = torch.randn(T, N, D, dtype=torch.float64, requires_grad=True)
    state = random_state(SIZES, N, 1, torch.device("cpu"))
    with torch.no_grad():
        shapes = [v.shape for v in loop_outputs(rnn, x, state)]
    g = torch.Generator().manual_seed(2)
    weights = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    chain_values, chain_grads = outputs_and_grads(rnn, True, x, state, weights)
    rnn.boundary_grad = boundary_grad
    values, grads = outputs_and_grads(rnn, True, x, state, weights)
    for a, b in zip(chain_values, values, strict=True):
        assert torch.equal(a, b)
    names = ["input"] + [f"state.{k}[{l}]" for k in "hcz" for l in range(len(SIZES))]
    names += [n for n, _ in rnn.named_parameters()]
    by_name = dict(zip(names, zip(chain_grads, grads, strict=True), strict=True))
    assert not all(torch.allclose(*by_name[f"state.{k}[0]"]) for k in "hz")
    assert float(by_name["layers.0.U"][1][-1].norm()) > 0  # the detector's row still learns


@pytest.mark.parametrize("fast", [True, False])
def test_the_chained_gradient_doubles_through_each_copy_that_holding_passes_once(
    fast: bool,
) -> None:
    """The exploding hop (docs/model.md decision 9): a layer that COPYs while its
    detector would fire (``z_{t-1} = 0``, ``z_new = 1``) passes ``z``'s gradient through
    ``z = COPY z_{t-1} + (1 - COPY) z_new`` with the factor ``1 + z_new = 2``; holding the
    COPY share passes it with 1, as COPY passes ``z`` itself. The detectors here are
    saturated, so no straight-through gradient adds to it."""
    steps = 12
    rnn = HMLSTM(2, 4, 3, dtype=torch.float64, fast=fast)
    with torch.no_grad():
        rnn.cells[0].bias[-1] = -100.0  # layer 1 never ends a segment: layer 2 COPYs
        rnn.cells[1].bias[-1] = 100.0  # while its own detector would fire
    x = torch.randn(steps, 1, 2, dtype=torch.float64)
    grads = {}
    for mode in ("chain", "hold"):
        rnn.boundary_grad = mode
        state = rnn.initial_state(1)
        z0 = state.z[1].clone().requires_grad_()
        out, _ = rnn(x, HMLSTMState(state.h, state.c, (state.z[0], z0, state.z[2])))
        assert float(out.boundary[..., 1].sum()) == 0  # z stays 0: COPY throughout
        (grads[mode],) = torch.autograd.grad(out.boundary[-1, 0, 1], z0)
    assert float(grads["chain"]) == 2.0**steps
    assert float(grads["hold"]) == 1.0


def test_second_derivatives_are_refused() -> None:
    rnn = wide_hmlstm(D, SIZES, "soft")
    x = torch.randn(T, N, D, dtype=torch.float64, requires_grad=True)
    out, _ = rnn(x)
    with pytest.raises(RuntimeError, match="differentiable once only.*fast = False"):
        torch.autograd.grad(out.hidden[2].sum(), x, create_graph=True)
    rnn.fast = False  # the reference loop has them
    out, _ = rnn(x)
    (g,) = torch.autograd.grad(out.hidden[2].sum(), x, create_graph=True)
    g.sum().backward()
    assert x.grad is not None


def test_unknown_backends_are_refused() -> None:
    with pytest.raises(ValueError, match="backend must be one of"):
        HMLSTM(D, 4, 2, backend="gpu")
    rnn = HMLSTM(D, 4, 2)
    with pytest.raises(ValueError, match="backend must be one of"):
        rnn.backend = "fused"
    assert rnn.backend == "auto"
    with pytest.raises(ValueError, match="backend must be one of"):
        select("C", torch.zeros(1), "step")


def test_the_c_backend_refuses_sampled_boundaries() -> None:
    rnn = HMLSTM(D, 4, 2, boundary="sample", backend="cpu")
    with pytest.raises(ValueError, match='backend="cpu" cannot draw boundary="sample"'):
        rnn(torch.randn(T, N, D))
    with pytest.raises(ValueError, match="cannot draw"):
        StreamingHMLSTM(rnn)
    with pytest.raises(ValueError, match='backend="cpu" runs float32 on the CPU'):
        select("cpu", torch.zeros(1, dtype=torch.float64), "step")
    assert select("auto", torch.zeros(1), "sample") is aten  # auto: ATen draws them
    assert select("auto", torch.zeros(1), "gumbel") is aten
    rnn.boundary = "gumbel"
    with pytest.raises(ValueError, match='backend="cpu" cannot draw boundary="gumbel"'):
        rnn(torch.randn(T, N, D))
    rnn.eval()  # "gumbel" is "step" in eval mode, which the C step serves
    assert rnn(torch.randn(T, N, D))[0].boundary.shape == (T, N, 2)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_the_aten_backend_never_loads_the_c_step(
    layer_norm: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``backend="aten"`` on float32 CPU tensors, where "auto" would take the C step."""
    def refuse() -> None:
        raise AssertionError("the C library was asked for")

    monkeypatch.setattr(library, "load", refuse)
    rnn = HMLSTM(D, 4, 3, layer_norm=layer_norm, backend="aten")
    x = torch.randn(T, N, D, requires_grad=True)
    out, _ = rnn(x)
    sum(h.sum() for h in out.hidden).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with torch.no_grad():
        rnn(x)
        sparse_forward(rnn.eval(), x)
        StreamingHMLSTM(rnn).step(x[0, :1])
    rnn.backend = "auto"
    with pytest.raises(AssertionError, match="the C library was asked for"):
        rnn(x)
