"""The Triton step backend (hmrnn.model.loop.backends.triton) against the float64 cell loop
and the ATen step: forward values, boundaries and every gradient, on the layouts the
loop binds (the dense loop's ``(T, N, D)`` fields, streaming's ``(M, D)`` ones); and that
every kernel compiles for an H100 (Triton's compiler needs no GPU for that).

Skipped where triton does not import (the dev extra installs it, so CI runs it). With a
CUDA GPU the kernels compile and run there. Without one they run in Triton's interpreter
on CPU tensors: triton.jit makes an interpreted kernel when ``TRITON_INTERPRET=1`` is set
as it decorates the kernel, that is when the backend module is first imported, and triton reads the
variable again in the imports it makes at a first launch. So this module sets it for
that import and, through an autouse fixture, while its own tests run, and restores it
after each: the other test modules never see it (the kernels call no function of
``triton.language`` that would need triton itself imported in interpreter mode, see the
kernels' docstring, so the order of imports does not matter either).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from helpers import loop_outputs, outputs_and_grads, random_state, wide_hmlstm

from hmrnn.model.baselines import LayerNormLSTM, LSTMState
from hmrnn.model.hmlstm import HMLSTM, HMLSTMState
from hmrnn.model.loop.backends import BACKENDS, select
from hmrnn.model.sparse import StreamingHMLSTM

GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"


def _import_backend() -> Any:
    if GPU:
        pytest.importorskip("triton")
        import hmrnn.model.loop.backends.triton as module
        return module
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        pytest.importorskip("triton")
        import hmrnn.model.loop.backends.triton as module
    finally:
        if saved is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = saved
    if not module.INTERPRET:
        pytest.skip("the Triton step was imported compiled before this module, and there is "
                    "no GPU: run this file alone", allow_module_level=True)
    return module


tb = _import_backend()


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    """``TRITON_INTERPRET=1`` while a test of this module runs (without a GPU)."""
    if not GPU:
        monkeypatch.setenv("TRITON_INTERPRET", "1")

DEVICE = torch.device("cuda" if GPU else "cpu")
CPU = torch.device("cpu")
T, N, D = 5, 3, 2
SIZES = (5, 6, 4)  # L = 3, pairwise distinct


@pytest.fixture
def launches(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Count the launches of each kernel."""
    count: Counter[str] = Counter()
    run = tb._Launch.__call__

    def counted(self: Any, t: int) -> None:
        count[self.name] += 1
        run(self, t)

    monkeypatch.setattr(tb._Launch, "__call__", counted)
    yield count


def _float32(rnn: HMLSTM, x: torch.Tensor, state: HMLSTMState,
             backend: str) -> tuple[HMLSTM, torch.Tensor, HMLSTMState]:
    leaf = lambda t: t.detach().to(DEVICE, torch.float32).requires_grad_()  # noqa: E731
    rnn32 = copy.deepcopy(rnn).to(DEVICE, torch.float32)
    rnn32.backend = backend
    return rnn32, leaf(x), HMLSTMState(*(tuple(leaf(t) for t in part) for part in state))


def _errors(values: list, grads: list, ref: tuple[list, list]) -> tuple[float, float]:
    """Largest absolute error of the values, largest relative norm error of the gradients."""
    value_err = max(float((a.cpu().double() - b).abs().max())
                    for a, b in zip(values, ref[0], strict=True))
    grad_err = max(float((a.cpu().double() - b).norm() / b.norm().clamp_min(1e-30))
                   for a, b in zip(grads, ref[1], strict=True))
    return value_err, grad_err


@pytest.mark.parametrize(("mode", "layer_norm", "slope"), [
    ("step", False, 1.0), ("step", True, 5.0), ("soft", False, 5.0), ("soft", True, 1.0),
])
def test_triton_step_matches_float64_and_the_aten_step(
    mode: str, layer_norm: bool, slope: float, launches: Counter[str]
) -> None:
    """Every output and every gradient (input, initial state, each parameter) in float32
    against the float64 cell loop: within float32 rounding, no worse than the ATen step's
    (the kernels' exp and tanh differ from ATen's in the last bits), and the same
    boundaries as the ATen step."""
    rnn = wide_hmlstm(D, SIZES, mode, layer_norm)
    rnn.set_slope(slope)
    x = torch.randn(T, N, D, dtype=torch.float64).requires_grad_()
    state = random_state(SIZES, N, 1, CPU)
    with torch.no_grad():
        weights = [torch.randn_like(v) for v in loop_outputs(rnn, x, state)]
    reference = outputs_and_grads(rnn, False, x, state, weights)
    results = {}
    for backend in ("aten", "triton"):
        launches.clear()
        rnn32, x32, state32 = _float32(rnn, x, state, backend)
        results[backend] = outputs_and_grads(rnn32, True, x32, state32,
                                             [w.to(DEVICE, torch.float32) for w in weights])
    steps = T * len(SIZES)
    assert launches["hm_forward"] == steps and launches["hm_backward"] == steps
    if layer_norm:
        assert launches["hm_terms_forward"] == launches["hm_terms_backward"] == steps
        assert launches["hm_gather"] == launches["hm_spread"] == 0
    else:
        assert launches["hm_gather"] == launches["hm_spread"] == steps
    triton_err = _errors(*results["triton"], reference)
    aten_err = _errors(*results["aten"], reference)
    assert triton_err[0] <= 4 * aten_err[0] + 1e-6 and triton_err[0] < 1e-4, triton_err
    assert triton_err[1] <= 4 * aten_err[1] + 1e-6 and triton_err[1] < 1e-4, triton_err
    z_triton, z_aten = results["triton"][0][len(SIZES)], results["aten"][0][len(SIZES)]
    z_ref = reference[0][len(SIZES)]
    assert 0 < float((z_ref[..., :-1] != 0).double().mean()) < 1  # boundaries fire and not
    if mode == "soft":  # continuous boundaries: within the values' error above
        assert torch.equal(z_triton == 0, z_aten == 0)
    else:
        assert torch.equal(z_triton, z_aten)
    for a, t in zip(results["aten"][1], results["triton"][1], strict=True):
        assert float((a - t).norm() / a.norm().clamp_min(1e-30)) < 1e-4


@pytest.mark.parametrize("layer_norm", [True, False])
def test_the_ln_lstm_baseline_runs_on_the_triton_step(
    layer_norm: bool, launches: Counter[str],
) -> None:
    """LayerNormLSTM's fused loop on the Triton step (each layer an HM-LSTM top layer that
    UPDATEs at every step): outputs, final state and every gradient in float32 within
    float32 rounding of its float64 cells, one forward and one backward launch per layer
    and step."""
    torch.manual_seed(0)
    rnn = LayerNormLSTM(D, list(SIZES), layer_norm=layer_norm, dtype=torch.float64)
    with torch.no_grad():
        for p in rnn.parameters():
            p.uniform_(-0.8, 0.8)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, N, D, dtype=torch.float64, generator=g)
    state = [torch.rand(N, h, dtype=torch.float64, generator=g) * 2 - 1 for h in SIZES * 2]

    def run(model: LayerNormLSTM, dtype: torch.dtype) -> list[torch.Tensor]:
        leaves = [t.to(DEVICE, dtype).requires_grad_() for t in (x, *state)]
        out, final = model(leaves[0], LSTMState(tuple(leaves[1:4]), tuple(leaves[4:])))
        values = [*out.hidden, *final.h, *final.c]
        loss = sum((v * torch.cos(v + k)).sum() for k, v in enumerate(values))
        grads = torch.autograd.grad(loss, [*leaves, *model.parameters()])
        return [t.detach().cpu().double() for t in (*values, *grads)]

    rnn.fast = False
    reference = run(rnn, torch.float64)
    rnn32 = copy.deepcopy(rnn).to(DEVICE, torch.float32)
    rnn32.fast, rnn32.backend = True, "triton"
    launches.clear()
    result = run(rnn32, torch.float32)
    assert launches["hm_forward"] == launches["hm_backward"] == T * len(SIZES)
    for a, b in zip(result, reference, strict=True):
        assert float((a - b).norm() / b.norm().clamp_min(1e-30)) < 1e-5


def test_streaming_inference_on_the_triton_step_equals_the_dense_loop(
    launches: Counter[str],
) -> None:
    """Streaming binds ``(M, D)`` fields and, with layer norm, a ``(R,)`` bias as
    ``hm_terms_forward``'s base, each run once (``step(0)``). Against the dense loop on
    ATen."""
    rnn = wide_hmlstm(D, SIZES, "step", layer_norm=True).to(DEVICE, torch.float32).eval()
    x = torch.randn(T, 1, D).to(DEVICE)
    with torch.no_grad():
        rnn.backend = "aten"
        dense, _ = rnn(x)
        rnn.backend = "triton"
        stream = StreamingHMLSTM(rnn)
        steps = [stream.step(x[t]) for t in range(len(x))]
    assert launches["hm_forward"] > 0 and launches["hm_terms_forward"] > 0
    assert torch.equal(torch.cat([z for _, z in steps]), dense.boundary[:, 0])
    for l, h in enumerate(dense.hidden):
        torch.testing.assert_close(torch.cat([s[0][l] for s in steps]), h[:, 0],
                                   rtol=1e-4, atol=1e-4)


def test_every_kernel_compiles_for_an_h100_without_one() -> None:
    """The interpreter checks what the kernels compute, not that Triton's compiler takes
    them: lower each (every optional field present, and none) to a cubin for sm_90, in a
    process where the kernels are compiled-mode ones."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-m", "hmrnn.model.loop.backends.triton.compile_check", "90"],
        env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 12 and all("cubin" in line for line in lines), done.stdout


def test_select_names_and_refuses_where_triton_cannot_serve(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert "triton" in BACKENDS
    like = torch.zeros(1, device=DEVICE)
    assert select("triton", like, "soft") is tb
    with pytest.raises(ValueError, match='backend="triton" cannot draw boundary="sample"'):
        select("triton", like, "sample")
    with pytest.raises(ValueError, match='backend="triton" runs float32'):
        select("triton", like.double(), "step")
    assert select("auto", torch.zeros(1), "step") is not tb  # the CPU: never auto
    assert select("auto", like, "sample") is not tb
    if GPU:  # the default on a GPU; HMRNN_TRITON=0 opts out
        monkeypatch.delenv("HMRNN_TRITON", raising=False)
        assert select("auto", like, "step") is tb
        monkeypatch.setenv("HMRNN_TRITON", "0")
        assert select("auto", like, "step") is not tb
