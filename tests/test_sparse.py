"""The COPY-skipping inference paths (hmrnn.model.sparse) against the dense stack: the same
boundaries, the same hidden states within rounding, and COPY's work really skipped."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import wide_hmlstm

import hmrnn.model.sparse
from hmrnn.analysis.boundaries import COPY, operations
from hmrnn.model.hmlstm import HMLSTM
from hmrnn.model.sparse import StreamingHMLSTM, copy_share, sparse_forward
from hmrnn.model.types import detach_state

T, N, D = 9, 4, 2
SIZES = (5, 6, 4)


def _model(mode: str, layer_norm: bool, seed: int = 0) -> HMLSTM:
    return wide_hmlstm(D, SIZES, mode, layer_norm, seed).eval()


def _assert_same(dense: tuple, sparse: tuple, mode: str) -> None:
    (out, state), (out_s, state_s) = dense, sparse
    if mode == "soft":  # continuous boundaries: equal within rounding
        torch.testing.assert_close(out_s.boundary, out.boundary, rtol=1e-10, atol=1e-12)
    else:
        assert torch.equal(out_s.boundary, out.boundary)
    for a, b in zip(out_s.hidden, out.hidden, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(state_s, state, strict=True):
        for u, v in zip(a, b, strict=True):
            torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layer_norm", [False, True])
@pytest.mark.parametrize("mode", ["step", "sample", "soft", "gumbel"])
def test_sparse_forward_equals_dense(mode: str, layer_norm: bool, device: torch.device) -> None:
    """In eval mode: there ``"gumbel"`` is ``"step"``, in the dense loop and here."""
    rnn = _model(mode, layer_norm).to(device).eval()
    x = torch.randn(T, N, D, dtype=torch.float64).to(device)
    with torch.no_grad():
        dense = rnn(x, generator=torch.Generator(device).manual_seed(3))
    sparse = sparse_forward(rnn, x, generator=torch.Generator(device).manual_seed(3))
    _assert_same(dense, sparse, mode)
    if mode != "soft":  # the comparison means something only if COPY is common, not total
        share = copy_share(dense[0].boundary).cpu()
        assert share[0] == 0 and share[1:].max() > 0.2 and share[1:].min() < 1


def test_sparse_forward_carries_state_and_batch_first() -> None:
    rnn = _model("step", True, seed=1)
    x = torch.randn(T, N, D, dtype=torch.float64)
    with torch.no_grad():
        first = rnn(x[:4])
        dense = rnn(x[4:], first[1])
    _, state = sparse_forward(rnn, x[:4])
    _assert_same(dense, sparse_forward(rnn, x[4:], state), "step")
    rnn.batch_first = True
    out, _ = sparse_forward(rnn, x[4:].transpose(0, 1), detach_state(first[1]))
    assert torch.equal(out.boundary, dense[0].boundary.transpose(0, 1))


def test_sparse_forward_computes_only_rows_not_in_copy(
    device: torch.device, monkeypatch: pytest.MonkeyPatch
) -> None:
    rnn = _model("step", False).to(device)
    x = torch.randn(T, N, D, dtype=torch.float64).to(device)
    rows = np.zeros(len(SIZES), dtype=int)

    def counting(original):  # noqa: ANN001, ANN202
        def pointwise(w, slot, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            rows[list(SIZES).index(w.hidden_size)] += slot.act.shape[0]
            return original(w, slot, *args, **kwargs)
        return pointwise

    monkeypatch.setattr(hmrnn.model.sparse, "pointwise", counting(hmrnn.model.sparse.pointwise))
    out, _ = sparse_forward(rnn, x)
    ops = np.stack([operations(out.boundary[:, n].cpu().numpy()) for n in range(N)], axis=1)
    not_copy = (ops != COPY).sum(axis=(0, 1))  # (L,)
    assert (ops == COPY).any()
    np.testing.assert_array_equal(rows, not_copy)


@pytest.mark.parametrize("layer_norm", [False, True])
@pytest.mark.parametrize("mode", ["step", "sample", "gumbel"])
def test_streaming_equals_dense(mode: str, layer_norm: bool, device: torch.device) -> None:
    rnn = _model(mode, layer_norm).to(device).eval()
    x = torch.randn(T, 1, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = x.to(device)
    with torch.no_grad():
        out, state = rnn(x, generator=torch.Generator(device).manual_seed(5))
    stream = StreamingHMLSTM(rnn, generator=torch.Generator(device).manual_seed(5))
    for t in range(T):
        hidden, z = stream.step(x[t])
        assert torch.equal(z, out.boundary[t])
        for l, h in enumerate(hidden):
            torch.testing.assert_close(h, out.hidden[l][t], rtol=1e-10, atol=1e-12)
    for a, b in zip(stream.state, state, strict=True):
        for u, v in zip(a, b, strict=True):
            torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12)
    copies = (1.0 - copy_share(out.boundary).cpu()) * T  # steps each layer was not in COPY
    assert stream.computed == [round(float(c)) for c in copies]
    assert stream.computed[0] == T and min(stream.computed[1:]) < T  # COPY skipped


def test_streaming_continues_a_state_and_rejects_batches() -> None:
    rnn = _model("step", False, seed=3)
    x = torch.randn(T, 1, D, dtype=torch.float64)
    with torch.no_grad():
        _, state = rnn(x[:5])
        out, _ = rnn(x[5:], state)
    stream = StreamingHMLSTM(rnn, state)
    for t in range(5, T):
        assert torch.equal(stream.step(x[t])[1], out.boundary[t - 5])
    with pytest.raises(ValueError, match="batch size 1, got a state of batch size 2"):
        StreamingHMLSTM(rnn, rnn.initial_state(2))


def test_copy_share_counts_copy_as_hierarchy_does() -> None:
    z = np.array([[1, 0, 0], [0, 0, 0], [0, 1, 0], [0, 0, 0], [1, 1, 0], [0, 0, 0]])
    share = copy_share(torch.tensor(z, dtype=torch.float64)[:, None]).numpy()
    np.testing.assert_allclose(share, (operations(z) == COPY).mean(axis=0))
    initial = torch.tensor([[0.0, 1.0, 0.0]])
    shifted = copy_share(torch.tensor(z, dtype=torch.float64)[:, None], initial).numpy()
    np.testing.assert_allclose(shifted, (operations(z, [0, 1, 0]) == COPY).mean(axis=0))
