"""What every task tells the trainer besides its losses: the per-step slope annealing of
an HM-LSTM stack and the warnings an evaluation deserves (boundary collapse)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from hmrnn.analysis.boundaries import collapse_warnings
from hmrnn.model.hmlstm import HMLSTM
from hmrnn.training.config import TrainConfig

COLLAPSE_LOW = 0.02
COLLAPSE_HIGH = 0.98
"""A layer whose boundary rate is at most (at least) this has collapsed to COPY (UPDATE)."""


def anneal_slope(rnn: nn.Module, epoch: float, train: TrainConfig) -> dict[str, float]:
    """Set an HM-LSTM's hard-sigmoid slope for ``epoch`` and return ``{"slope": a}``.

    With ``train.slope_rate > 0`` the slope follows the paper's schedule
    (:meth:`hmrnn.model.hmlstm.HMLSTM.anneal_slope`, capped at ``train.slope_max``);
    with 0 it is left as it is and only reported. A stack without boundaries: ``{}``.
    """
    if not isinstance(rnn, HMLSTM):
        return {}
    if train.slope_rate > 0:
        return {"slope": rnn.anneal_slope(epoch, train.slope_rate, train.slope_max)}
    return {"slope": float(rnn.slope_value)}


def boundary_warnings(metrics: Mapping[str, Any]) -> list[str]:
    """Collapse warnings for the boundary rates ``metrics["z"]`` (none without them)."""
    return collapse_warnings(metrics.get("z", []), low=COLLAPSE_LOW, high=COLLAPSE_HIGH)
