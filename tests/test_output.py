"""The gated output module against Eq. 11-12 written out in float64."""

from __future__ import annotations

import pytest
import torch

from hmrnn.model.output import GatedOutput


def test_matches_equations() -> None:
    torch.manual_seed(0)
    sizes = (5, 6, 4)
    module = GatedOutput(sizes, 7, dtype=torch.float64)
    hidden = [torch.randn(3, 2, h, dtype=torch.float64) for h in sizes]
    out = module(hidden)
    w = module.gate.weight  # (L, sum H)
    concat = torch.cat(hidden, dim=-1)
    expected = torch.zeros(3, 2, 7, dtype=torch.float64)
    for l, h in enumerate(hidden):
        gate = torch.sigmoid(concat @ w[l])  # (3, 2): one scalar per layer, Eq. 11
        expected += gate[..., None] * (h @ module.embed[l].weight.T)
    torch.testing.assert_close(out, torch.relu(expected), rtol=1e-12, atol=1e-12)  # Eq. 12
    assert module.gate.bias is None


def test_errors() -> None:
    with pytest.raises(ValueError, match="positive"):
        GatedOutput([3, 0], 4)
    with pytest.raises(ValueError, match="built for 2 layers"):
        GatedOutput([3, 4], 5)([torch.zeros(1, 3)])
