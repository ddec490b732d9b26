"""Pure functions of the HM-LSTM: hard sigmoid, boundary binarisers, slope schedule.

These are the paper's Eq. 9-10 and section 3.3 (straight-through estimator, slope
annealing); see docs/model.md decisions 5 and 6.
"""

from __future__ import annotations

import torch
from torch import Tensor

BOUNDARY_MODES = ("step", "sample", "soft", "gumbel")
DRAWN_MODES = ("sample", "gumbel")
"""The boundary modes that draw from a random generator (in training, for ``"gumbel"``)."""
BOUNDARY_GRADS = ("chain", "hold", "local")
"""How far the straight-through gradient of a boundary reaches (docs/model.md decision 9)."""


def hard_sigmoid(x: Tensor, slope: Tensor | float, noise: Tensor | None = None) -> Tensor:
    """``clamp((a * x + 1) / 2, 0, 1)``: the boundary detector's activation (Eq. 10).

    Its gradient is ``a / 2`` inside the linear region ``|x| < 1 / a`` and 0 outside, which
    is exactly the straight-through gradient docs/model.md decision 5 asks for. With
    ``noise`` (``"gumbel"`` boundaries): ``clamp((a * x + 1) / 2 + noise / 2, 0, 1)``, the
    activation at the perturbed point ``a * x + noise``.
    """
    u = (slope * x + 1.0) * 0.5
    return torch.clamp(u if noise is None else u + 0.5 * noise, 0.0, 1.0)


def logistic_noise(like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``log U - log(1 - U)``, ``U`` uniform: standard logistic draws (the difference of two
    Gumbel draws) of ``like``'s shape, dtype and device, for ``"gumbel"`` boundaries:
    ``1[a s_z + noise > 0]`` is then ``Bernoulli(sigmoid(a s_z))``."""
    u = torch.rand(like.shape, generator=generator, dtype=like.dtype, device=like.device)
    u.clamp_(min=torch.finfo(like.dtype).tiny)
    return torch.log(u) - torch.log1p(-u)


def boundary_in_use(mode: str, training: bool) -> str:
    """The mode a call runs: ``"gumbel"`` draws only in training and is ``"step"`` (its
    most likely value) otherwise; every other mode is itself."""
    return "step" if mode == "gumbel" and not training else mode


def binarize(
    z_tilde: Tensor, mode: str, generator: torch.Generator | None = None
) -> Tensor:
    """Turn the boundary probability ``z~`` into the boundary state ``z`` (Eq. 9).

    Args:
        z_tilde: ``hard_sigmoid_a(s_z)``, values in [0, 1], any shape.
        mode: ``"step"`` forward ``1[z~ > 0.5]``; ``"sample"`` forward ``Bernoulli(z~)``
            drawn with ``generator``; ``"soft"`` ``z = z~``; ``"gumbel"`` as ``"step"``
            (its noise is in ``z~`` already: :func:`hard_sigmoid`).
        generator: random generator for ``"sample"`` (reproducible runs); ``"gumbel"``
            draws its noise before (:func:`logistic_noise`).

    For ``"step"``, ``"sample"`` and ``"gumbel"`` the backward pass is straight-through:
    ``dz/dz~ = 1``, so the gradient reaching ``s_z`` is the hard sigmoid's (``a/2`` or 0).
    The forward value is written ``hard + (z~ - z~.detach())`` so that it is *exactly* 0
    or 1 (``z~ + (hard - z~)`` would not be, in floating point), which COPY's
    bit-identity relies on.
    """
    if mode == "soft":
        return z_tilde
    if mode in ("step", "gumbel"):
        hard = (z_tilde > 0.5).to(z_tilde.dtype)
    elif mode == "sample":
        hard = torch.bernoulli(z_tilde.detach(), generator=generator)
    else:
        raise ValueError(f"boundary must be one of {BOUNDARY_MODES}, got {mode!r}")
    return hard + (z_tilde - z_tilde.detach())


def slope_schedule(epoch: float, rate: float = 0.04, max_slope: float = 5.0) -> float:
    """The paper's slope annealing: ``a = min(a_max, 1 + rate * epoch)`` (docs/model.md decision 6).

    Args:
        epoch: fractional number of epochs done so far (>= 0).
        rate: slope increase per epoch (paper, PTB: 0.04); 0 keeps ``a = 1``.
        max_slope: the cap ``a_max`` (paper: 5).
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    return min(max_slope, 1.0 + rate * epoch)
