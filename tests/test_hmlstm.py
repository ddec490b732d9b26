"""The HM-LSTM stack against docs/model.md: an independent float64 reference, each operation
on hand-set weights, straight-through gradients, equivalences and argument errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import SLOPE, wide_hmlstm

from hmrnn.model.cell import HMLSTMCell, LayerState
from hmrnn.model.functional import binarize, hard_sigmoid, logistic_noise, slope_schedule
from hmrnn.model.hmlstm import HMLSTM, HMLSTMState
from hmrnn.model.types import detach_state

T, N, D = 7, 3, 2
SIZES = (5, 6, 4)


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def _layer_norm(v: np.ndarray, gain: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mu = v.mean(-1, keepdims=True)
    var = ((v - mu) ** 2).mean(-1, keepdims=True)
    return (v - mu) / np.sqrt(var + 1e-5) * gain + bias


def reference(
    params: dict[str, np.ndarray],
    x: np.ndarray,
    sizes: tuple[int, ...],
    mode: str,
    slope: float,
    layer_norm: bool,
    generator: torch.Generator | None = None,
    given: np.ndarray | None = None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """docs/model.md written out per batch element, in float64, from the parameter layout only.

    Binary modes take the operation as a branch (COPY / UPDATE / FLUSH); the soft mode,
    whose z is not binary, mixes the three with weights as Eq. 2-3 do.
    ``given (T, N, L - 1)``: boundaries taken in place of the detectors' (mode "step").
    Returns every layer's h sequence (T, N, H_l) and z (T, N, L).
    """
    L = len(sizes)
    steps, batch = x.shape[0], x.shape[1]
    h = [np.zeros((batch, s)) for s in sizes]
    c = [np.zeros((batch, s)) for s in sizes]
    z = [np.zeros(batch) for _ in sizes]
    hs = [np.zeros((steps, batch, s)) for s in sizes]
    zs = np.zeros((steps, batch, L))

    def term(name: str, l: int, v: np.ndarray, ln: str) -> np.ndarray:
        out = v @ params[f"layers.{l}.{name}"].T
        if layer_norm:
            gain, bias = params[f"layers.{l}.{ln}.weight"], params[f"layers.{l}.{ln}.bias"]
            out = _layer_norm(out, gain, bias)
        return out

    for t in range(steps):
        z_below = np.ones(batch)
        for l, H in enumerate(sizes):
            below = x[t] if l == 0 else h[l - 1]
            s = term("U", l, h[l], "ln_recurrent") + z_below[:, None] * term(
                "W", l, below, "ln_bottom_up"
            )
            if l < L - 1:
                s = s + z[l][:, None] * term("U_td", l, h[l + 1], "ln_top_down")
            s = s + params[f"layers.{l}.bias"]
            f, i, o = _sigmoid(s[:, :H]), _sigmoid(s[:, H : 2 * H]), _sigmoid(s[:, 2 * H : 3 * H])
            g = np.tanh(s[:, 3 * H : 4 * H])
            z_new = np.zeros(batch)
            if l < L - 1 and given is not None:
                z_new = given[t, :, l]
            elif l < L - 1:
                z_tilde = np.clip((slope * s[:, 4 * H] + 1) / 2, 0, 1)
                if mode == "step":
                    z_new = (z_tilde > 0.5).astype(float)
                elif mode == "sample":
                    z_new = torch.bernoulli(
                        torch.from_numpy(z_tilde)[:, None], generator=generator
                    )[:, 0].numpy()
                elif mode == "gumbel":  # 1[a s_z + L > 0], L logistic: Bernoulli(sigmoid(a s_z))
                    u = torch.rand(batch, 1, generator=generator, dtype=torch.float64)[:, 0]
                    noise = np.log(u.numpy()) - np.log1p(-u.numpy())
                    z_new = (slope * s[:, 4 * H] + noise > 0).astype(float)
                else:
                    z_new = z_tilde

            def out(cell: np.ndarray, o: np.ndarray = o, l: int = l) -> np.ndarray:
                if layer_norm:
                    prefix = f"layers.{l}.ln_cell"
                    cell = _layer_norm(cell, params[f"{prefix}.weight"], params[f"{prefix}.bias"])
                return o * np.tanh(cell)

            if mode == "soft":
                zp, zb = z[l][:, None], z_below[:, None]
                copy, update, flush = (1 - zp) * (1 - zb), (1 - zp) * zb, zp
                c_new = update * (f * c[l] + i * g) + copy * c[l] + flush * (i * g)
                h[l] = copy * h[l] + (1 - copy) * out(c_new)
                c[l] = c_new
                z[l] = copy[:, 0] * z[l] + (1 - copy[:, 0]) * z_new
            else:
                c_new, h_new, zz = c[l].copy(), h[l].copy(), z[l].copy()
                computed = []
                for n in range(batch):
                    if z[l][n] == 1:  # FLUSH
                        c_new[n] = i[n] * g[n]
                    elif z_below[n] == 1:  # UPDATE
                        c_new[n] = f[n] * c[l][n] + i[n] * g[n]
                    else:  # COPY: (h, c, z) stay as they are
                        continue
                    computed.append(n)
                    zz[n] = z_new[n]
                h_new[computed] = out(c_new)[computed]
                c[l], h[l], z[l] = c_new, h_new, zz
            hs[l][t] = h[l]
            zs[t, :, l] = z[l]
            z_below = z[l]
    return hs, zs


def _params(rnn: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in rnn.state_dict().items()}


@pytest.mark.parametrize("layer_norm", [False, True])
@pytest.mark.parametrize("mode", ["step", "sample", "soft", "gumbel"])
def test_matches_float64_reference(mode: str, layer_norm: bool) -> None:
    rnn = wide_hmlstm(D, SIZES, mode, layer_norm)
    x = torch.randn(T, N, D, dtype=torch.float64)
    out, _ = rnn(x, generator=torch.Generator().manual_seed(3))
    hs, zs = reference(_params(rnn), x.numpy(), SIZES, mode, SLOPE, layer_norm,
                       torch.Generator().manual_seed(3))
    for l in range(3):
        np.testing.assert_allclose(out.hidden[l].detach().numpy(), hs[l], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out.boundary.detach().numpy(), zs, rtol=1e-10, atol=1e-12)
    if mode != "soft":  # the test means something only if boundaries both fire and not
        assert 0 < zs[:, :, :2].mean() < 1


def _cell(above: int | None = 3, layer_norm: bool = False) -> HMLSTMCell:
    torch.manual_seed(1)
    return HMLSTMCell(4, 5, above, layer_norm=layer_norm, dtype=torch.float64)


def _state(seed: int, n: int = N, h: int = 5, z: float = 0.0) -> LayerState:
    g = torch.Generator().manual_seed(seed)
    return LayerState(
        torch.randn(n, h, generator=g, dtype=torch.float64),
        torch.randn(n, h, generator=g, dtype=torch.float64),
        torch.full((n, 1), z, dtype=torch.float64),
    )


def _inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N, 21, generator=g, dtype=torch.float64),
            torch.randn(N, 3, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("layer_norm", [False, True])
def test_copy_keeps_state_bit_identical(layer_norm: bool) -> None:
    cell = _cell(layer_norm=layer_norm)
    bottom_up, h_above = _inputs(0)
    state = _state(0, z=0.0)
    zero = torch.zeros(N, 1, dtype=torch.float64)
    new = cell(bottom_up, zero, h_above, state, 1.0)
    for a, b in zip(new, state, strict=True):
        assert torch.equal(a, b)


def test_flush_does_not_depend_on_previous_cell() -> None:
    cell = _cell()
    bottom_up, h_above = _inputs(0)
    one = torch.ones(N, 1, dtype=torch.float64)
    a = _state(0, z=1.0)
    b = LayerState(a.h, a.c * 7.0 + 3.0, a.z)
    for z_below in (one, one * 0):
        new_a = cell(bottom_up, z_below, h_above, a, 1.0)
        new_b = cell(bottom_up, z_below, h_above, b, 1.0)
        assert torch.equal(new_a.c, new_b.c) and torch.equal(new_a.h, new_b.h)
    changed = cell(bottom_up, one, h_above, LayerState(a.h, a.c, a.z * 0), 1.0)
    assert not torch.allclose(changed.c, new_a.c)  # whereas UPDATE does read c_{t-1}


def test_update_equals_an_lstm_step() -> None:
    cell = _cell()
    x = torch.randn(N, 4, dtype=torch.float64)
    state = _state(2, z=0.0)
    one = torch.ones(N, 1, dtype=torch.float64)
    h_above = torch.randn(N, 3, dtype=torch.float64)
    new = cell(cell.bottom_up(x), one, h_above, state, 1.0)
    lstm = torch.nn.LSTMCell(4, 5, dtype=torch.float64)
    H = 5
    torch_order = torch.cat([torch.arange(H, 2 * H), torch.arange(0, H),
                             torch.arange(3 * H, 4 * H), torch.arange(2 * H, 3 * H)])
    with torch.no_grad():
        lstm.weight_ih.copy_(cell.W[torch_order])
        lstm.weight_hh.copy_(cell.U[torch_order])
        lstm.bias_ih.copy_(cell.bias[torch_order])
        lstm.bias_hh.zero_()
    h, c = lstm(x, (state.h, state.c))
    torch.testing.assert_close(new.h, h, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(new.c, c, rtol=1e-12, atol=1e-12)


def test_top_down_input_only_after_own_boundary() -> None:
    cell = _cell()
    bottom_up, h_above = _inputs(4)
    one = torch.ones(N, 1, dtype=torch.float64)
    for z_prev, should_change in ((0.0, False), (1.0, True)):
        state = _state(5, z=z_prev)
        a = cell(bottom_up, one, h_above, state, 1.0)
        b = cell(bottom_up, one, h_above + 1.0, state, 1.0)
        assert torch.equal(a.h, b.h) != should_change


def test_bottom_up_input_only_when_layer_below_fired() -> None:
    cell = _cell()
    bottom_up, h_above = _inputs(6)
    for z_prev in (0.0, 1.0):
        state = _state(7, z=z_prev)
        for z_below, should_change in ((0.0, False), (1.0, True)):
            zb = torch.full((N, 1), z_below, dtype=torch.float64)
            a = cell(bottom_up, zb, h_above, state, 1.0)
            b = cell(bottom_up + 1.0, zb, h_above, state, 1.0)
            assert torch.equal(a.h, b.h) != should_change


def test_top_layer_has_no_boundary() -> None:
    torch.manual_seed(0)
    rnn = HMLSTM(D, SIZES, 3, boundary="soft")
    out, state = rnn(torch.randn(T, N, D))
    assert torch.equal(out.boundary[..., -1], torch.zeros(T, N))
    assert torch.equal(state.z[-1], torch.zeros(N, 1))
    assert rnn.layers[-1].U_td is None and rnn.layers[-1].W.shape == (4 * SIZES[-1], SIZES[1])


def test_boundaries_off_bottom_layer_is_nn_lstm() -> None:
    """With z^1 forced to 0, layer 1 always UPDATEs: it is an LSTM.

    This documents the gate order: docs/model.md rows are f, i, o, g; torch's are i, f, g, o.
    """
    torch.manual_seed(0)
    rnn = HMLSTM(D, SIZES, 3, dtype=torch.float64)
    cell = rnn.layers[0]
    H = SIZES[0]
    with torch.no_grad():
        for p in (cell.W, cell.U, cell.U_td):
            p[4 * H].zero_()
        cell.bias[4 * H] = -10.0
    x = torch.randn(T, N, D, dtype=torch.float64)
    out, _ = rnn(x)
    assert torch.equal(out.boundary[..., 0], torch.zeros(T, N, dtype=torch.float64))
    lstm = torch.nn.LSTM(D, H, dtype=torch.float64)
    order = torch.cat([torch.arange(H, 2 * H), torch.arange(0, H),
                       torch.arange(3 * H, 4 * H), torch.arange(2 * H, 3 * H)])
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(cell.W[order])
        lstm.weight_hh_l0.copy_(cell.U[order])
        lstm.bias_ih_l0.copy_(cell.bias[order])
        lstm.bias_hh_l0.zero_()
    expected, _ = lstm(x)
    torch.testing.assert_close(out.hidden[0], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["step", "sample"])
@pytest.mark.parametrize("slope", [0.5, 1.0, 2.0, 5.0])
def test_straight_through_gradient(mode: str, slope: float) -> None:
    inside = torch.tensor([-0.9, -0.3, 0.0, 0.2, 0.8], dtype=torch.float64) / slope
    outside = torch.tensor([-3.0, -1.5, 1.2, 4.0], dtype=torch.float64) / slope
    s = torch.cat([inside, outside]).requires_grad_()
    upstream = torch.linspace(0.5, 2.0, s.numel(), dtype=torch.float64)
    z = binarize(hard_sigmoid(s, slope), mode, torch.Generator().manual_seed(0))
    assert set(z.detach().tolist()) <= {0.0, 1.0}
    z.backward(upstream)
    expected = torch.cat([upstream[:5] * slope / 2, torch.zeros(4, dtype=torch.float64)])
    torch.testing.assert_close(s.grad, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("slope", [1.0, 5.0])
def test_gumbel_boundaries_draw_sigmoid_and_pass_the_gradient_at_the_noisy_point(
    slope: float,
) -> None:
    """``1[a s + L > 0]`` fires with probability ``sigmoid(a s)``; the straight-through
    gradient is ``a / 2`` where the perturbed point ``a s + L`` is in the linear region."""
    s = torch.tensor([-1.0, -0.2, 0.0, 0.3, 0.8], dtype=torch.float64)
    draws = 40_000
    x = s.repeat(draws, 1).requires_grad_()
    noise = logistic_noise(x, torch.Generator().manual_seed(0))
    z = binarize(hard_sigmoid(x, slope, noise), "gumbel")
    assert set(z.detach().unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(z.detach().mean(0), torch.sigmoid(slope * s), rtol=0, atol=0.01)
    z.sum().backward()
    inside = (slope * x.detach() + noise).abs() < 1
    torch.testing.assert_close(x.grad, inside.double() * slope / 2, rtol=0, atol=0)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_given_boundaries_match_float64_reference(layer_norm: bool) -> None:
    """Boundaries given from outside replace the detectors' in Eq. 8-9 and nothing else:
    COPY still copies z, so a layer's column differs from the given one where it COPYs."""
    rnn = wide_hmlstm(D, SIZES, "step", layer_norm)
    x = torch.randn(T, N, D, dtype=torch.float64)
    given = torch.bernoulli(torch.full((T, N, 2), 0.4, dtype=torch.float64),
                            generator=torch.Generator().manual_seed(5))
    free, _ = rnn(x)
    for fast in (True, False):  # a call with boundaries runs the cell loop either way
        rnn.fast = fast
        out, _ = rnn(x, boundaries=given)
        hs, zs = reference(_params(rnn), x.numpy(), SIZES, "step", SLOPE, layer_norm,
                           given=given.numpy())
        for l in range(3):
            np.testing.assert_allclose(out.hidden[l].detach().numpy(), hs[l], rtol=1e-10,
                                       atol=1e-12)
        np.testing.assert_allclose(out.boundary.detach().numpy(), zs)
    assert torch.equal(out.boundary[:, :, 0], given[:, :, 0])  # layer 1 never COPYs
    assert not torch.equal(out.boundary[:, :, 1], given[:, :, 1])  # layer 2 does
    assert not torch.equal(free.boundary, out.boundary)


def test_given_boundaries_equal_to_the_detectors_change_nothing_and_pass_no_gradient(
) -> None:
    """Without layer norm (whose statistics read row z too) the detectors' rows get no
    gradient at all."""
    torch.manual_seed(0)
    rnn = HMLSTM(D, SIZES, 3, dtype=torch.float64, batch_first=True)
    x = torch.randn(N, T, D, dtype=torch.float64)
    free, _ = rnn(x)
    given, _ = rnn(x, boundaries=free.boundary[:, :, :2].detach())
    for a, b in zip(free.hidden, given.hidden, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    sum(h.sum() for h in given.hidden).backward()
    for cell in rnn.cells[:2]:  # the detectors' rows, read by nothing
        for p in (cell.W, cell.U, cell.U_td, cell.bias):
            assert p.grad is not None
            assert bool((p.grad[-1] == 0).all()) and p.grad[:-1].abs().sum() > 0


def test_given_boundaries_leave_nan_to_the_detector() -> None:
    """NaN hands a layer back to its detector: layer 1 given as the free run drew it and
    layer 2 free is the free run itself, and only layer 2's detector gets a gradient."""
    torch.manual_seed(0)
    rnn = HMLSTM(D, SIZES, 3, dtype=torch.float64)
    x = torch.randn(T, N, D, dtype=torch.float64)
    free, _ = rnn(x)
    assert 0 < float(free.boundary[:, :, 1].mean()) < 1  # layer 2 decides both ways
    given = free.boundary[:, :, :2].detach().clone()
    given[:, :, 1] = float("nan")
    out, _ = rnn(x, boundaries=given)
    assert torch.equal(out.boundary, free.boundary)
    for a, b in zip(free.hidden, out.hidden, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    rnn.boundary = "soft"  # a straight-through gradient that reaches every detector step
    out, _ = rnn(x, boundaries=given)
    sum(h.sum() for h in out.hidden).backward()
    first, second = rnn.cells[0].bias.grad, rnn.cells[1].bias.grad
    assert first is not None and second is not None
    assert first[-1] == 0 and second[-1] != 0


def test_given_boundaries_of_the_wrong_shape_are_named_as_the_caller_wrote_them() -> None:
    rnn = HMLSTM(D, SIZES, 3, dtype=torch.float64, batch_first=True)
    x = torch.randn(N, T, D, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"\(3, 7, 2\) \(N, T, L - 1\), got \(3, 6, 2\)"):
        rnn(x, boundaries=torch.zeros(N, T - 1, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="got 1"):
        rnn(x, boundaries=1)  # type: ignore[arg-type]


@pytest.mark.parametrize(("shape", "value", "message"), [
    ((T, N, 3), 0.0, "shape"), ((T - 1, N, 2), 0.0, "shape"), ((T, N, 2), 0.5, "0, 1 or NaN")])
def test_given_boundaries_are_checked(shape: tuple[int, ...], value: float,
                                      message: str) -> None:
    rnn = HMLSTM(D, SIZES, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=message):
        rnn(torch.randn(T, N, D, dtype=torch.float64),
            boundaries=torch.full(shape, value, dtype=torch.float64))


def test_gumbel_boundaries_are_steps_in_eval_mode() -> None:
    """Outside training the stack runs ``"step"``: the same outputs, and no draw."""
    torch.manual_seed(0)
    rnn = HMLSTM(D, SIZES, 3, boundary="gumbel", layer_norm=True, dtype=torch.float64)
    x = torch.randn(T, N, D, dtype=torch.float64)
    g = torch.Generator().manual_seed(4)
    for fast in (True, False):
        before = g.get_state()
        rnn.fast = fast
        rnn.boundary = "gumbel"
        rnn.eval()
        evaluated, _ = rnn(x, generator=g)
        assert torch.equal(g.get_state(), before)
        rnn.boundary = "step"
        stepped, _ = rnn(x)
        assert torch.equal(evaluated.boundary, stepped.boundary)
        rnn.boundary = "gumbel"
        rnn.train()
        trained, _ = rnn(x, generator=g)
        assert not torch.equal(g.get_state(), before)
        assert not torch.equal(trained.boundary, stepped.boundary)


def test_soft_variant_gradcheck() -> None:
    torch.manual_seed(0)
    rnn = HMLSTM(2, (3, 4), 2, boundary="soft", layer_norm=True, dtype=torch.float64)
    x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    weight = rnn.layers[1].W.detach().clone().requires_grad_()

    def fn(inp: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out, _ = torch.func.functional_call(rnn, {"layers.1.W": w}, (inp,))
        return (*out.hidden, out.boundary)

    assert torch.autograd.gradcheck(fn, (x, weight))


@pytest.mark.parametrize("mode", ["step", "sample", "soft"])
def test_two_halves_equal_full_sequence(mode: str) -> None:
    torch.manual_seed(0)
    rnn = HMLSTM(D, SIZES, 3, boundary=mode, layer_norm=True, dtype=torch.float64)
    x = torch.randn(T, N, D, dtype=torch.float64)
    full, full_state = rnn(x, generator=torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    first, state = rnn(x[:3], generator=g)
    second, state = rnn(x[3:], detach_state(state), generator=g)
    for l in range(3):
        torch.testing.assert_close(torch.cat([first.hidden[l], second.hidden[l]]),
                                   full.hidden[l], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(torch.cat([first.boundary, second.boundary]), full.boundary)
    for a, b in zip(state, full_state, strict=True):
        for u, v in zip(a, b, strict=True):
            torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-14)


def test_batch_first_equals_time_major() -> None:
    torch.manual_seed(0)
    rnn = HMLSTM(D, SIZES, 3, dtype=torch.float64)
    x = torch.randn(T, N, D, dtype=torch.float64)
    out, state = rnn(x)
    rnn.batch_first = True
    out_bf, state_bf = rnn(x.transpose(0, 1))
    for l in range(3):
        assert torch.equal(out_bf.hidden[l], out.hidden[l].transpose(0, 1))
    assert torch.equal(out_bf.boundary, out.boundary.transpose(0, 1))
    assert all(torch.equal(a, b) for a, b in zip(state.h, state_bf.h, strict=True))


def test_batch_elements_are_independent() -> None:
    torch.manual_seed(0)
    rnn = HMLSTM(D, SIZES, 3, layer_norm=True, dtype=torch.float64)
    x = torch.randn(T, N, D, dtype=torch.float64)
    out, _ = rnn(x)
    y = x.clone()
    y[:, 1] += 5.0
    out2, _ = rnn(y)
    for l in range(3):
        assert torch.equal(out.hidden[l][:, [0, 2]], out2.hidden[l][:, [0, 2]])
        assert not torch.equal(out.hidden[l][:, 1], out2.hidden[l][:, 1])
    single, _ = rnn(x[:, 2:3])
    torch.testing.assert_close(single.hidden[2], out.hidden[2][:, 2:3], rtol=1e-12, atol=1e-12)


def test_slope_is_saved_and_annealed() -> None:
    rnn = HMLSTM(D, SIZES, 3)
    assert rnn.anneal_slope(50.0) == pytest.approx(3.0)
    other = HMLSTM(D, SIZES, 3)
    other.load_state_dict(rnn.state_dict())
    assert other.slope.item() == pytest.approx(3.0)
    assert slope_schedule(0.0) == 1.0 and slope_schedule(1000.0) == 5.0
    assert slope_schedule(10.0, rate=0.0) == 1.0


def test_slope_changes_boundaries() -> None:
    torch.manual_seed(0)
    rnn = HMLSTM(D, SIZES, 3, boundary="soft")
    x = torch.randn(T, N, D)
    a, _ = rnn(x)
    rnn.set_slope(4.0)
    b, _ = rnn(x)
    assert not torch.allclose(a.boundary, b.boundary)


def test_parameter_layout() -> None:
    rnn = HMLSTM(D, SIZES, 3)
    shapes = {k: tuple(v.shape) for k, v in rnn.named_parameters()}
    assert shapes["layers.0.W"] == (21, D)
    assert shapes["layers.0.U"] == (21, 5)
    assert shapes["layers.0.U_td"] == (21, 6)
    assert shapes["layers.1.W"] == (25, 5)
    assert shapes["layers.1.U_td"] == (25, 4)
    assert shapes["layers.2.W"] == (16, 6)
    assert shapes["layers.2.bias"] == (16,)
    assert "layers.2.U_td" not in shapes


def test_under_autocast_the_fused_loop_stays_in_float32() -> None:
    """The fused loop turns autocast off inside: a bfloat16 input is read as float32, and
    values and gradients are those of the same input without autocast. The cell loop
    follows autocast (its products in bfloat16)."""
    torch.manual_seed(0)
    rnn = HMLSTM(D, SIZES, 3, layer_norm=True)
    x = torch.randn(T, N, D).bfloat16()
    runs = []
    for mixed in (True, False):
        rnn.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed):
            out, state = rnn(x if mixed else x.float())
        out.hidden[2].sum().backward()  # outside autocast, as torch.amp recommends
        runs.append((out, state, [p.grad.clone() for p in rnn.parameters()]))
    (out, state, grads), (expected, _, expected_grads) = runs
    assert out.hidden[0].dtype == torch.float32 and state.c[1].dtype == torch.float32
    for a, b in zip([*out.hidden, out.boundary, *grads],
                    [*expected.hidden, expected.boundary, *expected_grads], strict=True):
        assert torch.equal(a, b)
    rnn.fast = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cell, _ = rnn(x)
    assert all(torch.isfinite(h.float()).all() for h in cell.hidden)
    assert set(cell.boundary.float().unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(cell.hidden[0], out.hidden[0])  # bfloat16 products round


def test_float64_forward() -> None:
    rnn = HMLSTM(D, SIZES, 3).double()
    out, state = rnn(torch.randn(T, N, D, dtype=torch.float64))
    assert out.hidden[0].dtype == torch.float64 and rnn.slope.dtype == torch.float64
    assert isinstance(state, HMLSTMState)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_layers": 1}, "num_layers >= 2"),
        ({"hidden_size": 0}, "positive"),
        ({"hidden_size": [4, -1, 3]}, "positive"),
        ({"hidden_size": [4, 4]}, "one size per layer"),
        ({"input_size": 0}, "input_size must be a positive"),
        ({"boundary": "bernoulli"}, "boundary must be one of"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    args = {"input_size": D, "hidden_size": 4, "num_layers": 3} | kwargs
    with pytest.raises(ValueError, match=message):
        HMLSTM(args.pop("input_size"), args.pop("hidden_size"), args.pop("num_layers"), **args)


def test_num_layers_is_inferred_from_one_size_per_layer() -> None:
    """As for nn.LSTM users: ``num_layers`` may be left out when ``hidden_size`` lists
    every layer; given as well, it must agree."""
    rnn = HMLSTM(D, list(SIZES))
    assert rnn.num_layers == 3 and rnn.hidden_sizes == SIZES and len(rnn.cells) == 3
    assert HMLSTM(D, SIZES, 3).hidden_sizes == SIZES
    with pytest.raises(ValueError, match=r"HMLSTM needs num_layers when hidden_size is one int "
                                         r"\(4\); or give hidden_size as one size per layer"):
        HMLSTM(D, 4)
    with pytest.raises(ValueError, match="hidden_size lists 3 sizes but num_layers is 2"):
        HMLSTM(D, SIZES, 2)
    with pytest.raises(ValueError, match=r"num_layers >= 2 .*got hidden_size \[4\], one layer"):
        HMLSTM(D, [4])


def test_sizes_are_attributes_and_in_the_repr() -> None:
    """``hidden_size`` is nn.LSTM's (one int when every layer has it, else the tuple), and
    the repr shows the sizes, as ``LSTM(10, 20, num_layers=2)`` does."""
    same = HMLSTM(D, 5, 3)
    assert (same.input_size, same.hidden_size, same.num_layers) == (D, 5, 3)
    assert same.hidden_sizes == (5, 5, 5)
    assert repr(same) == (
        "HMLSTM(\n  2, 5, num_layers=3\n  (layers): ModuleList(\n"
        "    (0): HMLSTMCell(2, 5, above_size=5)\n    (1): HMLSTMCell(5, 5, above_size=5)\n"
        "    (2): HMLSTMCell(5, 5)\n  )\n)"
    )
    rnn = HMLSTM(D, SIZES, layer_norm=True, batch_first=True, boundary="soft")
    assert rnn.hidden_size == SIZES
    assert repr(rnn).splitlines()[1] == ("  2, (5, 6, 4), num_layers=3, boundary='soft', "
                                         "layer_norm=True, batch_first=True")
    assert "HMLSTMCell(\n      2, 5, above_size=6, layer_norm=True" in repr(rnn)


def test_wrong_input_width() -> None:
    rnn = HMLSTM(D, SIZES, 3)
    with pytest.raises(ValueError, match="input_size=2 but got input of width 5"):
        rnn(torch.randn(T, N, 5))
    with pytest.raises(ValueError, match="3-D input"):
        rnn(torch.randn(T, D))
    with pytest.raises(ValueError, match="slope must be positive"):
        rnn.set_slope(0.0)


def test_slope_value_follows_the_buffer_through_set_and_load() -> None:
    """The fast loop reads ``slope_value`` (no wait on a GPU); it must equal the buffer."""
    rnn = HMLSTM(2, 3, 2)
    rnn.set_slope(1.3)
    assert rnn.slope_value == float(rnn.slope) != 1.3  # the buffer's float32 rounding
    other = HMLSTM(2, 3, 2)
    other.load_state_dict(rnn.state_dict())
    assert other.slope_value == float(other.slope) == rnn.slope_value
    x = torch.randn(4, 2, 2)
    torch.testing.assert_close(other(x)[0].hidden[1], rnn(x)[0].hidden[1])
