"""Mixture density output for pen offsets (Graves 2013, "Generating Sequences With
Recurrent Neural Networks", section 4.1, Eq. 17-26), as the HM-RNN paper's section 4.2 uses.

From the output embedding ``h^e`` a linear layer gives ``y_hat = (e_hat, pi_hat, mu,
sigma_hat, rho_hat)`` and::

    pi_k    = softmax(pi_hat)_k                  (Eq. 19)
    mu_k    = mu_hat_k                           (Eq. 20)
    sigma_k = exp(sigma_hat_k)                   (Eq. 21)
    rho_k   = tanh(rho_hat_k)                    (Eq. 22)
    e       = sigmoid(e_hat)                     (Eq. 18, the pen-up probability)

    p(x, y, pen) = sum_k pi_k N2(x, y | mu_k, sigma_k, rho_k) * (e if pen else 1 - e)  (Eq. 23)

Graves writes ``e = 1 / (1 + exp(e_hat))``; the sign of ``e_hat`` is a convention and
``sigmoid(e_hat)`` is used here. Everything is computed in log space from the
pre-activations (logsumexp over components, ``log(1 - rho^2)`` from ``rho_hat``), so a
saturated ``tanh`` or a tiny ``pi_k`` never gives ``inf`` or ``nan``.

Shape legend: K mixture components, E embedding size; ``...`` any leading shape,
typically ``(T, N)``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hmrnn.model.types import factory_kwargs

_LOG_2PI = math.log(2.0 * math.pi)
_LOG_2 = math.log(2.0)


class MixtureParams(NamedTuple):
    """Pre-activation parameters of the mixture at every position.

    Attributes:
        pi_hat: ``(..., K)`` mixture logits.
        mu_x, mu_y: ``(..., K)`` component means.
        sigma_hat_x, sigma_hat_y: ``(..., K)`` log standard deviations.
        rho_hat: ``(..., K)`` correlations before ``tanh``.
        e_hat: ``(...)`` pen-up logit.
    """

    pi_hat: Tensor
    mu_x: Tensor
    mu_y: Tensor
    sigma_hat_x: Tensor
    sigma_hat_y: Tensor
    rho_hat: Tensor
    e_hat: Tensor

    @property
    def pi(self) -> Tensor:
        """``(..., K)`` mixture weights (Eq. 19)."""
        return torch.softmax(self.pi_hat, dim=-1)

    @property
    def sigma_x(self) -> Tensor:
        """``(..., K)`` (Eq. 21)."""
        return torch.exp(self.sigma_hat_x)

    @property
    def sigma_y(self) -> Tensor:
        """``(..., K)`` (Eq. 21)."""
        return torch.exp(self.sigma_hat_y)

    @property
    def rho(self) -> Tensor:
        """``(..., K)`` (Eq. 22)."""
        return torch.tanh(self.rho_hat)

    @property
    def e(self) -> Tensor:
        """``(...)`` pen-up probability (Eq. 18)."""
        return torch.sigmoid(self.e_hat)

    def at(self, index: Any) -> MixtureParams:
        """The parameters at ``index`` of the leading dimensions, e.g. ``params.at(-1)``
        for the last time step."""
        return MixtureParams(*(p[index] for p in self))


class MixtureDensityHead(nn.Module):
    """Linear map from the output embedding to the mixture's parameters.

    Args:
        input_size: ``E``, the size of ``h^e``.
        num_components: ``K`` (20 in Graves 2013 and in the paper).

    Shape:
        - input: ``(..., E)``.
        - output: :class:`MixtureParams` with ``(..., K)`` fields and ``e_hat`` ``(...)``.

    Parameters:
        ``proj.weight`` ``(6K + 1, E)`` and ``proj.bias``; rows ordered
        ``pi_hat, mu_x, mu_y, sigma_hat_x, sigma_hat_y, rho_hat`` (K rows each), ``e_hat``.
    """

    def __init__(
        self,
        input_size: int,
        num_components: int = 20,
        *,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if input_size <= 0:
            raise ValueError(f"input_size must be a positive int, got {input_size}")
        if num_components <= 0:
            raise ValueError(f"num_components must be a positive int, got {num_components}")
        self.input_size = input_size
        self.num_components = num_components
        self.proj = nn.Linear(input_size, 6 * num_components + 1, **factory_kwargs(device, dtype))

    def forward(self, embedding: Tensor) -> MixtureParams:
        out = self.proj(embedding)  # (..., 6K + 1)
        K = self.num_components
        pi_hat, mu_x, mu_y, sigma_hat_x, sigma_hat_y, rho_hat = out[..., : 6 * K].split(
            K, dim=-1)  # 6 x (..., K)
        return MixtureParams(
            pi_hat, mu_x, mu_y, sigma_hat_x, sigma_hat_y, rho_hat, out[..., 6 * K])


def _log_one_minus_rho2(rho_hat: Tensor) -> Tensor:
    """``log(1 - tanh(a)^2) = -2 log cosh(a)``, exact for any ``a``."""
    a = rho_hat.abs()
    return -2.0 * (a + F.softplus(-2.0 * a) - _LOG_2)


def log_density(params: MixtureParams, target: Tensor) -> Tensor:
    """Log-likelihood of ``target`` under the mixture (Eq. 23-26), in nats.

    ``log sum_k pi_k N2(x, y | mu_k, sigma_k, rho_k) + log Bernoulli(pen | e)``, with the
    bivariate normal density (Eq. 24-25)::

        N2 = exp(-Z / (2 (1 - rho^2))) / (2 pi sigma_x sigma_y sqrt(1 - rho^2)),
        Z  = zx^2 + zy^2 - 2 rho zx zy,   zx = (x - mu_x) / sigma_x,  zy likewise.

    Shape:
        params: fields ``(..., K)``; target: ``(..., 3)`` as ``(x, y, pen)`` with pen in
        {0, 1}; returns ``(...)``.
    """
    if target.shape[-1] != 3 or target.shape[:-1] != params.e_hat.shape:
        raise ValueError(
            f"target must have shape {(*params.e_hat.shape, 3)} to match the mixture "
            f"parameters, got {tuple(target.shape)}"
        )
    x, y, pen = target[..., 0:1], target[..., 1:2], target[..., 2]
    zx = (x - params.mu_x) * torch.exp(-params.sigma_hat_x)  # (..., K)
    zy = (y - params.mu_y) * torch.exp(-params.sigma_hat_y)
    rho = torch.tanh(params.rho_hat)
    log_1mr2 = _log_one_minus_rho2(params.rho_hat)
    z = zx.square() + zy.square() - 2.0 * rho * zx * zy
    log_n2 = (
        -_LOG_2PI
        - params.sigma_hat_x
        - params.sigma_hat_y
        - 0.5 * log_1mr2
        - 0.5 * z * torch.exp(-log_1mr2)
    )  # (..., K)
    log_mix = torch.logsumexp(torch.log_softmax(params.pi_hat, dim=-1) + log_n2, dim=-1)
    log_pen = -F.binary_cross_entropy_with_logits(params.e_hat, pen, reduction="none")
    return log_mix + log_pen  # (...)


def loss(
    params: MixtureParams,
    target: Tensor,
    mask: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Negative log-likelihood of ``target`` (nats), over the steps where ``mask`` is True.

    Args:
        params, target: as :func:`log_density`, leading shape ``(...)``.
        mask: bool ``(...)``; ``None`` counts every position.
        reduction: ``"mean"`` (per counted step) or ``"sum"`` (total nats). The paper's
            Eq. 10 objective (nats per sequence) is the ``"sum"`` divided by N.

    Returns:
        A scalar.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    nll = -log_density(params, target)
    if mask is not None:
        if mask.shape != nll.shape:
            raise ValueError(f"mask must have shape {tuple(nll.shape)}, got {tuple(mask.shape)}")
        nll = torch.where(mask, nll, torch.zeros_like(nll))
        count = mask.sum()
    else:
        count = torch.tensor(nll.numel(), device=nll.device)
    total = nll.sum()
    return total if reduction == "sum" else total / count.clamp(min=1)


def sample(
    params: MixtureParams,
    bias: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw ``(x, y, pen)`` from the mixture, with Graves's sampling bias (Eq. 61-62).

    The bias ``b >= 0`` sharpens the choice of component, ``pi = softmax(pi_hat (1 + b))``,
    and shrinks every component, ``sigma = exp(sigma_hat - b)``; ``b = 0`` samples the
    model's own distribution and large ``b`` tends to its most likely strokes. The pen
    bit is drawn from ``e`` unbiased, as in Graves.

    Args:
        generator: a ``torch.Generator`` on the parameters' device, for reproducible draws.

    Shape:
        params: fields ``(..., K)``; returns ``(...) + (3,)`` with pen in {0., 1.}.
    """
    if bias < 0:
        raise ValueError(f"The sampling bias must be >= 0, got {bias}")
    K = params.pi_hat.shape[-1]
    lead = params.e_hat.shape
    weights = torch.softmax(params.pi_hat * (1.0 + bias), dim=-1).reshape(-1, K)
    k = torch.multinomial(weights, 1, generator=generator).reshape(*lead, 1)  # (..., 1)

    def pick(t: Tensor) -> Tensor:
        return t.gather(-1, k).squeeze(-1)  # (...)

    mu_x, mu_y = pick(params.mu_x), pick(params.mu_y)
    sigma_x = torch.exp(pick(params.sigma_hat_x) - bias)
    sigma_y = torch.exp(pick(params.sigma_hat_y) - bias)
    rho_hat = pick(params.rho_hat)
    eps = torch.randn(
        (*lead, 2), generator=generator, dtype=mu_x.dtype, device=mu_x.device
    )  # (..., 2)
    x = mu_x + sigma_x * eps[..., 0]
    y = mu_y + sigma_y * (
        torch.tanh(rho_hat) * eps[..., 0]
        + torch.exp(0.5 * _log_one_minus_rho2(rho_hat)) * eps[..., 1]
    )
    pen = torch.bernoulli(torch.sigmoid(params.e_hat), generator=generator)
    return torch.stack([x, y, pen], dim=-1)
