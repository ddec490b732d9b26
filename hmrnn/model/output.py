"""The gated output module of the HM-RNN paper (Chung, Ahn & Bengio 2017, Eq. 11-12).

Every layer's hidden state reaches the output, each scaled by a scalar gate that reads
all layers at once::

    g^l = sigmoid(w^l . [h^1; ...; h^L])            (Eq. 11, one scalar per layer)
    h^e = ReLU( sum_l g^l * W^e_l h^l )              (Eq. 12)

It sits on top of any stack that returns per-layer hidden sequences (HM-LSTM and the
baselines alike), so every row of the paper's Table 1 shares it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from hmrnn.model.types import factory_kwargs


class GatedOutput(nn.Module):
    """Gated output embedding ``h^e`` from every layer's hidden state.

    Args:
        hidden_sizes: the hidden size of each layer, bottom first (``H_1 .. H_L``).
        output_size: size ``E`` of the output embedding ``h^e``.

    Shape:
        - hidden: a sequence of L tensors ``(*, H_l)`` (any leading shape, e.g. ``(T, N)``).
        - output: ``(*, E)``.

    Parameters:
        ``gate.weight`` ``(L, sum H_l)``: row l is ``w^l`` (no bias, as Eq. 11 has none).
        ``embed.{l}.weight`` ``(E, H_l)``: ``W^e_l`` (no bias, Eq. 12 has none).
    """

    def __init__(
        self,
        hidden_sizes: Sequence[int],
        output_size: int,
        *,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if len(hidden_sizes) < 1 or any(int(h) <= 0 for h in hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive ints, got {list(hidden_sizes)}")
        if output_size <= 0:
            raise ValueError(f"output_size must be a positive int, got {output_size}")
        kw = factory_kwargs(device, dtype)
        self.hidden_sizes = tuple(int(h) for h in hidden_sizes)
        self.output_size = output_size
        self.gate = nn.Linear(sum(self.hidden_sizes), len(self.hidden_sizes), bias=False, **kw)
        self.embed = nn.ModuleList(
            nn.Linear(h, output_size, bias=False, **kw) for h in self.hidden_sizes
        )

    def forward(self, hidden: Sequence[Tensor]) -> Tensor:
        if len(hidden) != len(self.hidden_sizes):
            raise ValueError(
                f"GatedOutput was built for {len(self.hidden_sizes)} layers, got {len(hidden)}"
            )
        gates = torch.sigmoid(self.gate(torch.cat(tuple(hidden), dim=-1)))  # (*, L)  Eq. 11
        total = sum(
            gates[..., l : l + 1] * embed(h)
            for l, (embed, h) in enumerate(zip(self.embed, hidden, strict=True))
        )
        return torch.relu(total)  # (*, E)  Eq. 12
