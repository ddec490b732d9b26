"""The C step backend (hmrnn.model.loop.backends.cpu) against the ATen backend and the
float64 cell loop: forward values and every gradient, the sparse paths on it, saturated gates,
and the fall-back to ATen where no C compiler is found."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from helpers import loop_outputs, outputs_and_grads, random_state, wide_hmlstm

import hmrnn.model.loop.weights
from hmrnn.model.hmlstm import HMLSTM, HMLSTMState
from hmrnn.model.loop.backends.cpu import library
from hmrnn.model.sparse import StreamingHMLSTM, sparse_forward

T, N, D = 7, 3, 2
CPU = torch.device("cpu")

pytestmark = pytest.mark.skipif(library.load() is None, reason="no C compiler here")


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Count the runs of each C function (a bound one's by step)."""
    count: Counter[str] = Counter()
    lib = library.load()
    assert lib is not None

    class Counting:
        def __init__(self, name: str, kernel: library.Kernel) -> None:
            self.name, self.kernel = name, kernel

        def __call__(self, *fields: library.Value, **named: library.Value) -> None:
            count[self.name] += 1
            self.kernel(*fields, **named)

        def bind(self, *fields: library.Value, **named: library.Value) -> Callable[[int], None]:
            step = self.kernel.bind(*fields, **named)

            def counted(t: int) -> None:
                count[self.name] += 1
                step(t)
            return counted

    wrapped = {name: Counting(name, kernel) for name, kernel in lib.items()}
    monkeypatch.setattr(library, "load", lambda: wrapped)
    yield count


def _float32(rnn: HMLSTM, x: torch.Tensor, state: HMLSTMState) -> tuple:
    leaf = lambda t: t.detach().float().requires_grad_()  # noqa: E731
    return (copy.deepcopy(rnn).float(), leaf(x),
            HMLSTMState(*(tuple(leaf(t) for t in part) for part in state)))


def _errors(values: list, grads: list, ref: tuple[list, list]) -> tuple[float, float]:
    """Largest absolute error of the values, largest relative norm error of the gradients."""
    value_err = max(float((a.double() - b).abs().max())
                    for a, b in zip(values, ref[0], strict=True))
    grad_err = max(float((a.double() - b).norm() / b.norm().clamp_min(1e-30))
                   for a, b in zip(grads, ref[1], strict=True))
    return value_err, grad_err


@pytest.mark.parametrize("skip_gated", [False, True])
@pytest.mark.parametrize("layer_norm", [False, True])
@pytest.mark.parametrize("mode", ["step", "soft"])
@pytest.mark.parametrize("sizes", [(5, 6, 4), (4, 3)])
def test_c_step_is_as_close_to_float64_as_the_aten_step(
    mode: str, layer_norm: bool, sizes: tuple[int, ...], skip_gated: bool,
    calls: Counter[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In float32 both steps round; the C one must round no worse (its exp and tanh
    are polynomials, its sums run in another order) and give the same boundaries."""
    if skip_gated:
        monkeypatch.setattr(hmrnn.model.loop.weights, "LARGE_WEIGHT", 0)
    rnn = wide_hmlstm(D, sizes, mode, layer_norm)
    x = torch.randn(T, N, D, dtype=torch.float64).requires_grad_()
    state = random_state(sizes, N, 1, CPU)
    with torch.no_grad():
        weights = [torch.randn_like(v) for v in loop_outputs(rnn, x, state)]
    reference = outputs_and_grads(rnn, False, x, state, weights)
    rnn32, x32, state32 = _float32(rnn, x, state)
    weights32 = [w.float() for w in weights]
    c_step = outputs_and_grads(rnn32, True, x32, state32, weights32)
    assert calls["hm_forward"] == T * len(sizes) and calls["hm_backward"] == T * len(sizes)
    assert calls["hm_terms_backward" if layer_norm else "hm_spread"] == T * len(sizes)
    with monkeypatch.context() as m:
        m.setattr(library, "load", lambda: None)
        aten = outputs_and_grads(rnn32, True, x32, state32, weights32)
    c_err, aten_err = _errors(*c_step, reference), _errors(*aten, reference)
    assert c_err[0] <= 4 * aten_err[0] + 1e-6
    assert c_err[1] <= 4 * aten_err[1] + 1e-6
    boundary = len(sizes)
    if mode == "soft":  # continuous boundaries: within the values' error above
        assert (c_step[0][boundary] == 0).equal(aten[0][boundary] == 0)
    else:
        assert torch.equal(c_step[0][boundary], aten[0][boundary])


@pytest.mark.parametrize("layer_norm", [False, True])
def test_saturated_gates_stay_finite_and_match_aten(
    layer_norm: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Weights x 50 push every gate far into saturation (exp's clamped range)."""
    rnn = wide_hmlstm(D, (6, 5, 4), "step", layer_norm).float()
    with torch.no_grad():
        for p in rnn.parameters():
            p.mul_(50.0)
    x = torch.randn(T, N, D) * 10
    c_step = loop_outputs(rnn, x, random_state((6, 5, 4), N, 2, CPU, torch.float32))
    monkeypatch.setattr(library, "load", lambda: None)
    aten = loop_outputs(rnn, x, random_state((6, 5, 4), N, 2, CPU, torch.float32))
    for a, b in zip(c_step, aten, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_sparse_paths_on_the_c_step_equal_the_dense_loop(
    layer_norm: bool, calls: Counter[str]
) -> None:
    rnn = wide_hmlstm(D, (5, 6, 4), "step", layer_norm).float().eval()
    x = torch.randn(11, 4, D)
    with torch.no_grad():
        dense, _ = rnn(x)
        sparse, _ = sparse_forward(rnn, x)
        stream = StreamingHMLSTM(rnn)
        steps = [stream.step(x[t, :1]) for t in range(len(x))]
    assert calls["hm_forward"] > 0 and (calls["hm_terms_forward"] > 0) == layer_norm
    assert torch.equal(sparse.boundary, dense.boundary)
    assert torch.equal(torch.cat([z for _, z in steps]), dense.boundary[:, 0])
    for l, h in enumerate(dense.hidden):
        # the sparse paths gather rows, so their products round apart; per-term layer
        # norm amplifies that to about 2e-5 here, on the ATen step as on this one
        torch.testing.assert_close(sparse.hidden[l], h, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(torch.cat([s[0][l] for s in steps]), h[:, 0],
                                   rtol=1e-4, atol=1e-4)


def test_without_a_compiler_the_aten_step_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HMRNN_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    library.load.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="C step is off"):
            assert library.load() is None
        assert not library.enabled(torch.zeros(1))
        rnn = HMLSTM(D, 4, 2)
        out, _ = rnn(torch.randn(T, N, D))
        assert torch.isfinite(out.hidden[1]).all()
        assert list(tmp_path.iterdir()) == []  # no half-built library left behind
    finally:
        library.load.cache_clear()


def test_the_library_is_built_once_into_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HMRNN_CACHE", str(tmp_path))
    library.load.cache_clear()
    try:
        assert library.load() is not None
        built = list(tmp_path.glob("hmlstm_step-*.so"))
        assert len(built) == 1
        stamp = built[0].stat().st_mtime_ns
        library.load.cache_clear()
        monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))  # not needed again
        assert library.load() is not None
        assert built[0].stat().st_mtime_ns == stamp
    finally:
        library.load.cache_clear()


def test_switched_off_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HMRNN_KERNELS", "0")
    library.load.cache_clear()
    try:
        assert library.load() is None and not library.enabled(torch.zeros(1))
    finally:
        library.load.cache_clear()


@pytest.mark.parametrize("layer_norm", [False, True])
@pytest.mark.parametrize("mode", ["step", "soft"])
def test_the_backends_agree_within_float32_rounding(mode: str, layer_norm: bool,
                                                    calls: Counter[str]) -> None:
    """``backend="cpu"`` and ``backend="aten"``: the same outputs and gradients, each
    backend running alone (the C one called at every step, the ATen one never)."""
    sizes = (5, 6, 4)
    rnn = wide_hmlstm(D, sizes, mode, layer_norm).float()
    x = torch.randn(T, N, D).requires_grad_()
    state = random_state(sizes, N, 1, CPU, torch.float32)
    with torch.no_grad():
        weights = [torch.randn_like(v) for v in loop_outputs(rnn, x, state)]
    results = {}
    for backend in ("aten", "cpu"):
        calls.clear()
        rnn.backend = backend
        results[backend] = outputs_and_grads(rnn, True, x, state, weights)
        assert (calls["hm_forward"] == T * len(sizes)) == (backend == "cpu")
        assert (calls["hm_backward"] == T * len(sizes)) == (backend == "cpu")
        assert backend == "cpu" or not calls
    (values_a, grads_a), (values_c, grads_c) = results["aten"], results["cpu"]
    assert torch.equal(values_a[len(sizes)] == 0, values_c[len(sizes)] == 0)
    for a, c in zip(values_a, values_c, strict=True):
        torch.testing.assert_close(c, a, rtol=1e-4, atol=1e-5)
    for a, c in zip(grads_a, grads_c, strict=True):
        assert float((a - c).norm() / a.norm().clamp_min(1e-30)) < 1e-4
