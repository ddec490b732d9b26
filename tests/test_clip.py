"""Gradient clipping (hmrnn.training.trainer.clip_gradients): torch's, with the norm summed
in float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hmrnn.training.trainer import clip_gradients


def _params(scale: float, seed: int = 0) -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    params = [nn.Parameter(torch.zeros(s)) for s in ((30, 20), (20,), (7, 3, 2))]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * scale
    return params


@pytest.mark.parametrize("scale", [1e-3, 1.0, 50.0])
def test_equals_torch_on_ordinary_gradients(scale: float) -> None:
    ours, theirs = _params(scale), _params(scale)
    norm = clip_gradients(ours, 1.0)
    expected = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    assert float(norm) == pytest.approx(float(expected), rel=1e-6)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.grad, b.grad)


def test_finite_gradients_whose_squares_overflow_float32_are_clipped() -> None:
    params = _params(1e20)
    exact = torch.cat([p.grad.double().flatten() for p in params]).norm()
    assert not torch.isfinite(torch.nn.utils.clip_grad_norm_(_params(1e20), 1.0))
    norm = clip_gradients(params, 1.0)
    assert float(norm) == pytest.approx(float(exact), rel=1e-6)
    clipped = torch.cat([p.grad.double().flatten() for p in params]).norm()
    assert float(clipped) == pytest.approx(1.0, rel=1e-5)


def test_no_gradients_and_infinite_gradients() -> None:
    assert float(clip_gradients([nn.Parameter(torch.zeros(3))], 1.0)) == 0.0
    params = _params(1.0)
    params[1].grad[0] = float("inf")
    assert not torch.isfinite(clip_gradients(params, 1.0))  # the trainer then skips the step
