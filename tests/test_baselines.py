"""Tests of the baselines: LSTMStack, LayerNormLSTM and ClockworkRNN."""

from __future__ import annotations

import doctest
import io

import pytest
import torch
from torch import Tensor, nn
from torch.autograd import gradcheck
from torch.func import functional_call

from hmrnn.model import baselines
from hmrnn.model.baselines import (
    ClockworkRNN,
    ClockworkState,
    LayerNormLSTM,
    LSTMStack,
    LSTMState,
    build_baseline,
)
from hmrnn.model.hmlstm import HMLSTM
from hmrnn.model.output import GatedOutput
from hmrnn.model.registry import RNN_KINDS, build_rnn
from hmrnn.model.types import RNNOutput, detach_state

# Pairwise-distinct sizes, so that a swapped axis fails.
T, N, I = 7, 3, 2
SIZES = (5, 6, 4)
L = len(SIZES)
CLASSES = (LSTMStack, LayerNormLSTM, ClockworkRNN)
F64 = torch.float64


def make(cls: type[nn.Module], seed: int = 0, **kwargs: bool) -> nn.Module:
    """A float64 stack of ``cls`` with every parameter random (LN gains included)."""
    torch.manual_seed(seed)
    rnn = cls(I, list(SIZES), L, dtype=F64, **kwargs)
    with torch.no_grad():
        for p in rnn.parameters():
            p.uniform_(-0.8, 0.8)
    return rnn


def inputs(seed: int = 1) -> Tensor:
    return torch.randn(T, N, I, dtype=F64, generator=torch.Generator().manual_seed(seed))


def layer_norm(v: Tensor, gain: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    mean = v.mean(-1, keepdim=True)
    var = ((v - mean) ** 2).mean(-1, keepdim=True)
    return (v - mean) / torch.sqrt(var + eps) * gain + bias


def flat(state: tuple) -> list[Tensor]:
    out = []
    for field in state:
        out.extend(field if isinstance(field, tuple) else [torch.as_tensor(field)])
    return out


# --- the shared interface ----------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES)
def test_output_shapes_and_types(cls: type[nn.Module]) -> None:
    rnn = make(cls)
    output, state = rnn(inputs())
    assert isinstance(output, RNNOutput)
    assert output.boundary is None
    assert rnn.hidden_sizes == SIZES and rnn.num_layers == L and rnn.input_size == I
    assert [tuple(h.shape) for h in output.hidden] == [(T, N, H) for H in SIZES]
    assert [tuple(h.shape) for h in state.h] == [(N, H) for H in SIZES]
    if cls is ClockworkRNN:
        assert isinstance(state, ClockworkState)
        assert state.step.dtype == torch.int64 and state.step.dim() == 0
        assert int(state.step) == T
    else:
        assert isinstance(state, LSTMState)
        assert [tuple(c.shape) for c in state.c] == [(N, H) for H in SIZES]
    # The last step of each layer's sequence is its final hidden state.
    for seq, h in zip(output.hidden, state.h, strict=True):
        assert torch.equal(seq[-1], h)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("cut", [3, 4])
def test_whole_sequence_equals_two_halves(cls: type[nn.Module], cut: int) -> None:
    rnn, x = make(cls), inputs()
    whole, end = rnn(x)
    first, mid = rnn(x[:cut])
    second, end2 = rnn(x[cut:], detach_state(mid))
    for w, a, b in zip(whole.hidden, first.hidden, second.hidden, strict=True):
        torch.testing.assert_close(w, torch.cat([a, b]), rtol=1e-12, atol=1e-12)
    for a, b in zip(flat(end), flat(end2), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls", CLASSES)
def test_batch_first_equals_time_major_transposed(cls: type[nn.Module]) -> None:
    rnn, x = make(cls), inputs()
    rnn_bf = cls(I, list(SIZES), L, batch_first=True, dtype=F64)
    rnn_bf.load_state_dict(rnn.state_dict())
    out, state = rnn(x)
    out_bf, state_bf = rnn_bf(x.transpose(0, 1))
    for h, h_bf in zip(out.hidden, out_bf.hidden, strict=True):
        assert h_bf.shape == (N, T, h.shape[-1])
        torch.testing.assert_close(h_bf.transpose(0, 1), h, rtol=1e-12, atol=1e-12)
    for a, b in zip(flat(state), flat(state_bf), strict=True):  # states are never batch-first
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls", CLASSES)
def test_batch_elements_are_independent(cls: type[nn.Module]) -> None:
    rnn, x = make(cls), inputs()
    y = x.clone()
    y[2:, 1] += 1.0
    out_x, _ = rnn(x)
    out_y, _ = rnn(y)
    for hx, hy in zip(out_x.hidden, out_y.hidden, strict=True):
        torch.testing.assert_close(hx[:, [0, 2]], hy[:, [0, 2]], rtol=1e-13, atol=1e-13)
        assert torch.equal(hx[:2, 1], hy[:2, 1])  # the past does not see the future
    assert not torch.allclose(out_x.hidden[0][2:, 1], out_y.hidden[0][2:, 1])


@pytest.mark.parametrize("cls", CLASSES)
def test_gated_output_reads_every_layer(cls: type[nn.Module]) -> None:
    rnn = make(cls)
    output, _ = rnn(inputs())
    head = GatedOutput(rnn.hidden_sizes, 8, dtype=F64)
    emb = head(output.hidden)
    assert emb.shape == (T, N, 8)
    emb.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in rnn.parameters())


@pytest.mark.parametrize("cls", CLASSES)
def test_initial_state_is_zeros_on_module_dtype(cls: type[nn.Module]) -> None:
    state = make(cls).initial_state(N)
    assert all(h.dtype == F64 and not h.any() for h in state.h)
    assert [tuple(h.shape) for h in state.h] == [(N, H) for H in SIZES]
    # Passing the zero state explicitly is the same as passing none.
    rnn, x = make(cls), inputs()
    assert all(
        torch.equal(a, b)
        for a, b in zip(rnn(x)[0].hidden, rnn(x, rnn.initial_state(N))[0].hidden, strict=True)
    )


@pytest.mark.parametrize("cls", CLASSES)
def test_num_layers_is_inferred_as_nn_lstm_users_expect(cls: type[nn.Module]) -> None:
    """``num_layers`` left out: as many layers as ``hidden_size`` lists, or 1 (nn.LSTM's
    default) for one int; given with a list, it must agree."""
    rnn = cls(I, list(SIZES))
    assert rnn.num_layers == L and rnn.hidden_sizes == SIZES and len(rnn.layers) == L
    assert cls(I, 5).hidden_sizes == (5,)
    with pytest.raises(ValueError, match=r"hidden_size lists 3 sizes but num_layers is 2"):
        cls(I, list(SIZES), 2)


@pytest.mark.parametrize("cls", CLASSES)
def test_sizes_are_attributes_and_in_the_repr(cls: type[nn.Module]) -> None:
    """``hidden_size`` is nn.LSTM's: one int when every layer has it, else the tuple."""
    same = cls(I, 5, 2, batch_first=True)
    assert (same.input_size, same.hidden_size, same.num_layers) == (I, 5, 2)
    layer_norm = {LSTMStack: "", LayerNormLSTM: ", layer_norm=True",
                  ClockworkRNN: ", layer_norm=True"}[cls]
    assert repr(same).splitlines()[:2] == [
        f"{cls.__name__}(", f"  2, 5, num_layers=2{layer_norm}, batch_first=True"]
    rnn = cls(I, list(SIZES))
    assert rnn.hidden_size == SIZES
    assert repr(rnn).splitlines()[1] == f"  2, (5, 6, 4), num_layers=3{layer_norm}"


@pytest.mark.parametrize("cls", CLASSES)
def test_a_plain_tuple_state_is_taken(cls: type[nn.Module]) -> None:
    rnn, x = make(cls), inputs()
    _, state = rnn(x[:3])
    expected, end = rnn(x[3:], state)
    for plain in (tuple(state), list(state)):
        out, end2 = rnn(x[3:], plain)
        assert type(end2) is type(end)
        for a, b in zip(out.hidden, expected.hidden, strict=True):
            assert torch.equal(a, b)
    kind = type(state).__name__
    fields = ", ".join(state._fields)
    with pytest.raises(ValueError, match=rf"{cls.__name__} takes a {kind} \({fields}\) as its "
                                         rf"state, got a tuple of {len(state) + 1}"):
        rnn(x, (*state, state[0]))
    with pytest.raises(ValueError, match=rf"expects state\.h to be a tuple of {L} tensors, one "
                                         r"per layer, got a Tensor"):
        rnn(x, state._replace(h=torch.zeros(L, N, 5, dtype=F64)))


@pytest.mark.parametrize("cls", CLASSES)
def test_another_dtype_is_named_before_torch_sees_it(cls: type[nn.Module]) -> None:
    """A float64 input (or state) to a float32 stack: one sentence naming both dtypes,
    instead of torch's ``expected m1 and m2 to have the same dtype``."""
    rnn = cls(I, list(SIZES))
    x = torch.randn(T, N, I, dtype=F64)
    with pytest.raises(ValueError, match=rf"{cls.__name__}: the input has dtype torch\.float64; "
                                         r"expected torch\.float32, its parameters' dtype"):
        rnn(x)
    state = rnn.initial_state(N)
    bad = state._replace(h=(state.h[0].double(), *state.h[1:]))
    with pytest.raises(ValueError, match=r"state\.h\[0\] has dtype torch\.float64; expected "
                                         r"torch\.float32"):
        rnn(x.float(), bad)


@pytest.mark.parametrize("cls", [HMLSTM, *CLASSES])
def test_every_stack_takes_the_same_arguments(cls: type[nn.Module]) -> None:
    """What the README says: the HM-LSTM and the baselines take the same torch arguments
    and return the same types."""
    rnn = cls(input_size=I, hidden_size=list(SIZES), num_layers=L, layer_norm=False,
              batch_first=True, device="cpu", dtype=F64)
    assert (rnn.input_size, rnn.hidden_size, rnn.num_layers, rnn.batch_first) == (
        I, SIZES, L, True)
    assert next(rnn.parameters()).dtype == F64
    output, state = rnn(torch.randn(N, T, I, dtype=F64))
    assert isinstance(output, RNNOutput) and isinstance(state, tuple)
    assert [tuple(h.shape) for h in output.hidden] == [(N, T, H) for H in SIZES]


@pytest.mark.parametrize("kind", RNN_KINDS)
def test_build_rnn_infers_num_layers(kind: str) -> None:
    rnn = build_rnn(kind, I, list(SIZES))
    assert rnn.num_layers == L and rnn.hidden_sizes == SIZES
    assert build_rnn(kind, I, [5], 2).hidden_sizes == (5, 5)  # one size for every layer


def test_docstring_examples_run() -> None:
    result = doctest.testmod(baselines)
    assert result.attempted >= 10 and result.failed == 0


# --- LSTMStack and LayerNormLSTM against nn.LSTM ------------------------------------------


def torch_rows_to_fiog(w: Tensor) -> Tensor:
    """Reorder gate rows from torch's i, f, g, o to hmrnn's f, i, o, g."""
    i, f, g, o = w.chunk(4, dim=0)
    return torch.cat([f, i, o, g])


def test_lstm_stack_equals_multilayer_nn_lstm() -> None:
    torch.manual_seed(0)
    control = nn.LSTM(I, 5, num_layers=L, dtype=F64)
    rnn = LSTMStack(I, 5, L, dtype=F64)
    with torch.no_grad():
        for k, layer in enumerate(rnn.layers):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(layer, f"{name}_l0").copy_(getattr(control, f"{name}_l{k}"))
    h0 = torch.randn(L, N, 5, dtype=F64)
    c0 = torch.randn(L, N, 5, dtype=F64)
    expected, (h_n, c_n) = control(inputs(), (h0, c0))
    output, state = rnn(inputs(), LSTMState(tuple(h0), tuple(c0)))
    torch.testing.assert_close(output.hidden[-1], expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.stack(state.h), h_n, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.stack(state.c), c_n, rtol=1e-12, atol=1e-12)


def test_plain_layer_norm_lstm_equals_nn_lstm_with_gates_reordered() -> None:
    """LayerNormLSTM(layer_norm=False) is nn.LSTM with rows f, i, o, g instead of i, f, g, o."""
    rnn = LayerNormLSTM(I, list(SIZES), L, layer_norm=False, dtype=F64)
    assert not any("ln_" in name for name, _ in rnn.named_parameters())
    torch.manual_seed(0)
    below = (I, *SIZES[:-1])
    controls = [nn.LSTM(b, h, dtype=F64) for b, h in zip(below, SIZES, strict=True)]
    with torch.no_grad():
        for cell, lstm in zip(rnn.layers, controls, strict=True):
            cell.W.copy_(torch_rows_to_fiog(lstm.weight_ih_l0))
            cell.U.copy_(torch_rows_to_fiog(lstm.weight_hh_l0))
            cell.bias.copy_(torch_rows_to_fiog(lstm.bias_ih_l0 + lstm.bias_hh_l0))
    state = LSTMState(
        tuple(torch.randn(N, h, dtype=F64) for h in SIZES),
        tuple(torch.randn(N, h, dtype=F64) for h in SIZES),
    )
    output, final = rnn(inputs(), state)
    x = inputs()
    for k, lstm in enumerate(controls):
        x, (h, c) = lstm(x, (state.h[k][None], state.c[k][None]))
        torch.testing.assert_close(output.hidden[k], x, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(final.h[k], h[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(final.c[k], c[0], rtol=1e-12, atol=1e-12)


def test_layer_norm_lstm_matches_reference_loop() -> None:
    rnn, x = make(LayerNormLSTM), inputs()
    p = {name: v.detach() for name, v in rnn.named_parameters()}
    h = [torch.full((N, H), 0.1, dtype=F64) for H in SIZES]
    c = [torch.full((N, H), -0.2, dtype=F64) for H in SIZES]
    output, final = rnn(x, LSTMState(tuple(h), tuple(c)))
    expected: list[list[Tensor]] = [[] for _ in SIZES]
    for t in range(T):
        below = x[t]
        for k, H in enumerate(SIZES):
            q = {n.split(".", 2)[2]: v for n, v in p.items() if n.startswith(f"layers.{k}.")}
            s = (
                layer_norm(below @ q["W"].T, q["ln_x.weight"], q["ln_x.bias"])
                + layer_norm(h[k] @ q["U"].T, q["ln_h.weight"], q["ln_h.bias"])
                + q["bias"]
            )
            f, i, o = (torch.sigmoid(s[:, j * H : (j + 1) * H]) for j in range(3))
            g = torch.tanh(s[:, 3 * H :])
            c[k] = f * c[k] + i * g
            h[k] = o * torch.tanh(layer_norm(c[k], q["ln_c.weight"], q["ln_c.bias"]))
            expected[k].append(h[k])
            below = h[k]
    for k in range(L):
        torch.testing.assert_close(output.hidden[k], torch.stack(expected[k]))
        torch.testing.assert_close(final.h[k], h[k])
        torch.testing.assert_close(final.c[k], c[k])


@pytest.mark.parametrize("layer_norm", [True, False])
def test_layer_norm_lstm_fused_loop_equals_its_cells(layer_norm: bool) -> None:
    """The HM-LSTM's fused loop on each layer (``fast``, every step an UPDATE) computes
    what the cells step by step do: outputs, the final state and every gradient (input,
    initial state, each parameter), float64."""
    rnn = make(LayerNormLSTM, layer_norm=layer_norm)
    x = inputs().requires_grad_()
    g = torch.Generator().manual_seed(2)
    state = LSTMState(*(tuple((torch.rand(N, H, generator=g, dtype=F64) * 2 - 1).requires_grad_()
                              for H in SIZES) for _ in range(2)))
    results = []
    for fast in (True, False):
        rnn.fast = fast
        out, final = rnn(x, state)
        values = [*out.hidden, *final.h, *final.c]
        loss = sum((v * torch.cos(v + k)).sum() for k, v in enumerate(values))
        grads = torch.autograd.grad(loss, [x, *state.h, *state.c, *rnn.parameters()])
        results.append([*values, *grads])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


def test_layer_norm_parameters_start_at_identity() -> None:
    rnn = LayerNormLSTM(I, list(SIZES), L)
    shapes = {name: tuple(v.shape) for name, v in rnn.named_parameters()}
    assert shapes["layers.1.W"] == (24, 5)
    assert shapes["layers.1.U"] == (24, 6)
    assert shapes["layers.1.bias"] == (24,)
    assert shapes["layers.1.ln_x.weight"] == shapes["layers.1.ln_h.bias"] == (24,)
    assert shapes["layers.1.ln_c.weight"] == (6,)
    for name, v in rnn.named_parameters():
        if ".ln_" in name:
            assert torch.equal(v, torch.ones_like(v) if name.endswith("weight") else v * 0)


# --- ClockworkRNN -------------------------------------------------------------------------


def test_clockwork_modules_change_only_on_their_ticks() -> None:
    rnn, x = make(ClockworkRNN), inputs()
    output, _ = rnn(x)
    assert rnn.periods == (1, 2, 4)
    for i, (seq, period) in enumerate(zip(output.hidden, rnn.periods, strict=True)):
        previous = torch.zeros(N, SIZES[i], dtype=F64)
        for t in range(T):
            if t % period == 0:
                assert not torch.isclose(seq[t], previous).any(), (i, t)
            else:
                assert torch.equal(seq[t], previous), (i, t)
            previous = seq[t]


def test_clockwork_matches_reference_loop() -> None:
    rnn, x = make(ClockworkRNN), inputs()
    start = 5  # not a multiple of 2 or 4: the carried step decides who ticks
    p = {name: v.detach() for name, v in rnn.named_parameters()}
    h = [torch.randn(N, H, dtype=F64, generator=torch.Generator().manual_seed(H)) for H in SIZES]
    output, final = rnn(x, ClockworkState(tuple(h), torch.tensor(start)))
    expected: list[list[Tensor]] = [[] for _ in SIZES]
    for t in range(start, start + T):
        old = list(h)
        for i in range(L):
            if t % 2**i == 0:
                q = {n.split(".", 2)[2]: v for n, v in p.items() if n.startswith(f"layers.{i}.")}
                # U_i is the blocks U_ij (j >= i) side by side.
                blocks = torch.split(q["U"], SIZES[i:], dim=1)
                rec = sum(old[j] @ u.T for j, u in zip(range(i, L), blocks, strict=True))
                h[i] = torch.tanh(
                    layer_norm(x[t - start] @ q["W"].T, q["ln_x.weight"], q["ln_x.bias"])
                    + layer_norm(rec, q["ln_h.weight"], q["ln_h.bias"])
                    + q["bias"]
                )
            expected[i].append(h[i])
    for i in range(L):
        torch.testing.assert_close(output.hidden[i], torch.stack(expected[i]))
        torch.testing.assert_close(final.h[i], h[i])
    assert int(final.step) == start + T


def test_plain_clockwork_has_no_layer_norm() -> None:
    rnn = make(ClockworkRNN, layer_norm=False)
    assert not any("ln_" in name for name, _ in rnn.named_parameters())
    x = inputs()
    cell = rnn.layers[2]
    h_all = torch.zeros(N, sum(SIZES), dtype=F64)
    # Module 3 ticks at step 0 from a zero state: tanh(W x_0 + b).
    expected = torch.tanh(x[0] @ cell.W.T + cell.bias)
    torch.testing.assert_close(rnn(x)[0].hidden[2][0], expected)
    torch.testing.assert_close(cell(cell.project(x[0]), h_all[:, sum(SIZES[:2]) :]), expected)


def test_clockwork_state_survives_detach_and_save() -> None:
    rnn, x = make(ClockworkRNN), inputs()
    _, mid = rnn(x[:3])
    buffer = io.BytesIO()
    torch.save(detach_state(mid)._asdict(), buffer)
    buffer.seek(0)
    loaded = ClockworkState(**torch.load(buffer))
    assert isinstance(detach_state(mid).step, Tensor) and int(loaded.step) == 3
    # An int step works as well as a tensor.
    as_int = ClockworkState(loaded.h, int(loaded.step))
    a, _ = rnn(x[3:], loaded)
    b, _ = rnn(x[3:], as_int)
    whole, _ = rnn(x)
    for w, ha, hb in zip(whole.hidden, a.hidden, b.hidden, strict=True):
        assert torch.equal(ha, hb)
        torch.testing.assert_close(w[3:], ha, rtol=1e-12, atol=1e-12)


# --- gradients ----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [LayerNormLSTM, ClockworkRNN])
def test_gradcheck(cls: type[nn.Module]) -> None:
    torch.manual_seed(0)
    rnn = cls(2, [3, 2], 2, dtype=F64)
    with torch.no_grad():
        for p in rnn.parameters():
            p.uniform_(-0.8, 0.8)
    names = [name for name, _ in rnn.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in rnn.parameters())
    x = torch.randn(3, 2, 2, dtype=F64, requires_grad=True)
    copies = 2 if cls is LayerNormLSTM else 1  # (h, c) or h
    start = tuple(torch.randn(2, h, dtype=F64, requires_grad=True) for h in (3, 2) * copies)

    def run(x: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:
        h, ps = tensors[:2], tensors[2 * copies :]
        state = LSTMState(h, tensors[2:4]) if cls is LayerNormLSTM else ClockworkState(h, 1)
        output, final = functional_call(rnn, dict(zip(names, ps, strict=True)), (x, state))
        return (*output.hidden, *flat(final)[: 2 * copies])

    assert gradcheck(run, (x, *start, *params), fast_mode=True)


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES)
def test_bad_arguments_raise(cls: type[nn.Module]) -> None:
    with pytest.raises(ValueError, match=r"needs num_layers to be an int >= 1, got 0"):
        cls(I, 5, 0)
    with pytest.raises(ValueError, match=r"every hidden size must be a positive int, got 0"):
        cls(I, [5, 0, 4], 3)
    with pytest.raises(ValueError, match=r"every hidden size must be a positive int, got -1"):
        cls(I, -1, 2)
    with pytest.raises(ValueError, match=r"hidden_size lists 2 sizes but num_layers is 3"):
        cls(I, [5, 6], 3)
    with pytest.raises(ValueError, match=r"needs input_size to be a positive int, got 0"):
        cls(0, 5, 3)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("batch_first", [False, True])
def test_bad_inputs_raise(cls: type[nn.Module], batch_first: bool) -> None:
    rnn = cls(I, list(SIZES), L, batch_first=batch_first)
    x = torch.randn(N, T, I) if batch_first else torch.randn(T, N, I)
    with pytest.raises(ValueError, match=r"built for input_size=2 but got input of width 3"):
        rnn(x[..., :1].repeat(1, 1, 3))
    with pytest.raises(ValueError, match=r"expects a 3-D input"):
        rnn(torch.randn(T, I))
    with pytest.raises(ValueError, match=r"needs a sequence of at least one step"):
        rnn(torch.randn(0, N, I) if not batch_first else torch.randn(N, 0, I))
    bad = rnn.initial_state(N + 1)
    with pytest.raises(ValueError, match=r"expects state\.h\[0\] of shape \(3, 5\), got \(4, 5\)"):
        rnn(x, bad)
    short = rnn.initial_state(N)._replace(h=rnn.initial_state(N).h[:2])
    with pytest.raises(ValueError, match=r"has 3 layers but state\.h holds 2 tensors"):
        rnn(x, short)
    with pytest.raises(ValueError, match=r"batch_size must be a positive int, got 0"):
        rnn.initial_state(0)


def test_class_specific_errors() -> None:
    with pytest.raises(ValueError, match=r"LSTMStack wraps the fused nn\.LSTM.*LayerNormLSTM"):
        LSTMStack(I, 5, 3, layer_norm=True)
    rnn = ClockworkRNN(I, 5, 3)
    with pytest.raises(ValueError, match=r"needs state\.step >= 0, got -1"):
        rnn(torch.randn(T, N, I), rnn.initial_state(N)._replace(step=-1))


# --- factory ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls", "layer_norm"),
    [
        ("lstm", LSTMStack, None),
        ("ln-lstm", LayerNormLSTM, True),
        ("cw-rnn", ClockworkRNN, False),
        ("ln-cw-rnn", ClockworkRNN, True),
    ],
)
def test_build_baseline(name: str, cls: type[nn.Module], layer_norm: bool | None) -> None:
    rnn = build_baseline(name, I, list(SIZES), L, batch_first=True, dtype=F64)
    assert type(rnn) is cls and rnn.batch_first and rnn.hidden_sizes == SIZES
    assert getattr(rnn, "layer_norm", None) == layer_norm
    assert next(rnn.parameters()).dtype == F64
    assert any(".ln_" in n for n, _ in rnn.named_parameters()) == bool(layer_norm)


def test_build_baseline_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match=r"Unknown baseline 'hm-lstm'; choose one of 'lstm'"):
        build_baseline("hm-lstm", I, 5, 3)
