"""Boundary-rate control and the boundary detectors' instruments (docs/model.md decision 9).

The paper poses "no constraint on the number of boundaries". Left alone, the detectors of
a small model drift to firing at almost every step (every layer UPDATEs, nothing is
saved) or to never firing, and a detector saturated for every input gets no
straight-through gradient to come back (the hard sigmoid is flat outside its linear
region). The options here are not the paper's; each is named, off in the paper's
configs, and measured in docs/hierarchy.md:

- :class:`RateController`: holds each boundary layer's rate at a target by integral
  control of the boundary unit's bias, ``b_z += gain * (target - rate)`` after each
  optimiser step. It acts on the bias directly, not through a gradient, so it revives a
  detector that has saturated at 0 or at 1;
- :func:`ratio_loss`: the H-Net form of a rate loss (a differentiable alternative, which
  only reaches detectors inside the linear region);
- :func:`binomial_prior_loss`: the negative log-probability of each stream's boundary
  count under a binomial prior (Dynamic Token Pooling's form), with the same reach;
- :func:`surprisal_prior_loss`: where a layer fires, not how often: it pushes each
  detector up on the steps after which the next target got harder to predict and down
  elsewhere (boundaries at rises of the predictive uncertainty, as Dynamic Token
  Pooling's entropy spikes and the Byte Latent Transformer's entropy boundaries), with
  the same reach;
- :func:`cap_boundary_rows`: the authors' code caps the norm of each weight's boundary row;
- :func:`cap_boundary_gains`: with layer norm the boundary unit's scale is its layer
  norms' gains (row z of each), which that cap does not reach: this one caps them.
- :func:`calibrate_boundary_biases`: a data-dependent start, each boundary bias set so that
  the layer fires at its target rate on a batch (with small layer-norm gains every
  detector starts as its bias alone, so a layer fires at every step or at none);
- :func:`recentre_boundary_biases`: the same from one forward pass per layer
  (approximately), cheap enough to run after each of a run's first steps;
- :class:`DetectorRelease`: keeps the optimiser off the detectors of the layers above
  the first until a given step (the controller still holds their rates, or, ``silent``,
  those layers do not fire at all), so that they choose where to fire once the layer
  below has found its segments.

Instruments: :func:`boundary_preactivation` recomputes ``s_z`` of every step from a
forward pass's states, :func:`detector_shares` the share of detectors outside the hard
sigmoid's linear region ("dead" at 0 or at 1), :func:`boundary_grad_norms` the norm of
the gradient that reached each detector's parameters.

Shape legend: T time, N batch, L layers (L - 1 of them with a boundary detector), H_l
hidden size of layer l.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from hmrnn.model.cell import HMLSTMCell
from hmrnn.model.hmlstm import HMLSTM, HMLSTMState
from hmrnn.model.types import RNNOutput

LOGIT_FLOOR = 1e-3
"""Rates are clipped to [floor, 1 - floor] before the logit error."""

AUTHORS_ROW_CAP = 1.9365
"""The boundary-row norm cap of the authors' code (with slope annealing)."""


def detector_cells(rnn: HMLSTM) -> list[HMLSTMCell]:
    """The layers with a boundary detector (all but the top one), bottom first."""
    return [cell for cell in rnn.cells if cell.has_boundary]


def _check_targets(rnn: HMLSTM, targets: Sequence[float]) -> tuple[float, ...]:
    targets = tuple(float(t) for t in targets)
    if len(targets) != rnn.num_layers - 1:
        raise ValueError(f"boundary-rate targets: one per layer below the top, "
                         f"{rnn.num_layers - 1} here, got {len(targets)}")
    if not all(0.0 < t < 1.0 for t in targets):
        raise ValueError(f"boundary-rate targets must lie in (0, 1), got {list(targets)}")
    return targets


class RateController:
    """Integral control of each boundary layer's rate through its boundary bias.

    After each optimiser step, :meth:`update` moves the bias of layer ``l``'s boundary
    unit (row z of ``layers.{l}.bias``) by ``gain_l * (target_l - rate_l)``, ``rate_l`` the
    share of the step's ``(t, n)`` at which layer ``l`` fired. In steady state the rate
    equals the target; where the detector fires is left to the gradient. Stateless: the
    bias is a parameter, so checkpoints and resume carry the controller with the model.

    With ``own_bias`` the controller alone moves those biases: a gradient hook zeroes
    their gradient, so the optimiser leaves them where the controller put them (except
    for an L2 term the optimiser adds itself, such as Adam's ``weight_decay``). Otherwise
    the optimiser moves them too (Adam: by up to its learning rate a step).

    Args:
        rnn: the HM-LSTM stack.
        targets: one rate in (0, 1) per layer below the top.
        gain: bias change per unit of rate error and step (> 0): one for every layer, or
            one per layer below the top.
        error: ``"linear"``, ``target - rate``; or ``"logit"``,
            ``t (1 - t) (logit(t) - logit(rate))`` (the linear error's gain at the target,
            but a layer dead at 0 is revived about as fast as a saturated one is brought
            down), the rate clipped to ``[LOGIT_FLOOR, 1 - LOGIT_FLOOR]``.
        own_bias: keep the optimiser off the boundary biases.
        warmup: with ``warmup > 0``, the targets of the layers above the first start at the
            first layer's target and reach their own after ``warmup`` steps, linearly in
            log-odds (:meth:`targets_at`): a layer above the first fires at every boundary of
            layer 1 and then has to drop the ones it needs least.
    """

    def __init__(self, rnn: HMLSTM, targets: Sequence[float], gain: float | Sequence[float],
                 error: str = "linear", own_bias: bool = False, warmup: int = 0) -> None:
        if error not in ("linear", "logit"):
            raise ValueError(f"the rate controller's error is linear or logit, got {error!r}")
        self.rnn = rnn
        self.targets = _check_targets(rnn, targets)
        gains = (float(gain),) if isinstance(gain, int | float) else tuple(map(float, gain))
        if len(gains) == 1:
            gains *= len(self.targets)
        if len(gains) != len(self.targets) or not all(g > 0 for g in gains):
            raise ValueError(f"the rate controller's gain: one positive value, or one per "
                             f"layer below the top ({len(self.targets)}), got {gain}")
        self.gains = gains
        if warmup < 0:
            raise ValueError(f"the rate controller's warmup is a number of steps >= 0, "
                             f"got {warmup}")
        self.warmup = int(warmup)
        self.error = error
        if own_bias:
            for cell in detector_cells(rnn):
                cell.bias.register_hook(_without_boundary_row)

    def _error(self, target: float, rate: float) -> float:
        if self.error == "linear":
            return target - rate
        rate = min(max(rate, LOGIT_FLOOR), 1.0 - LOGIT_FLOOR)
        return target * (1 - target) * (_logit(target) - _logit(rate))

    def targets_at(self, step: int) -> tuple[float, ...]:
        """The targets after global step ``step`` (the warmup's; ``targets`` after it)."""
        if step >= self.warmup:
            return self.targets
        done = step / self.warmup
        first = _logit(self.targets[0])
        return tuple(1.0 / (1.0 + math.exp(-((1 - done) * first + done * _logit(t))))
                     for t in self.targets)

    @torch.no_grad()
    def update(self, rates: Sequence[float], step: int | None = None) -> None:
        """Move each boundary bias towards its target; ``rates``: one per boundary layer;
        ``step``: the global step the rates were seen at (None: after any warmup)."""
        targets = self.targets if step is None else self.targets_at(step)
        for cell, target, gain, rate in zip(detector_cells(self.rnn), targets, self.gains,
                                            rates, strict=True):
            cell.bias[-1] += gain * self._error(target, float(rate))


CALIBRATION_RANGE = 8.0
"""Each bias is searched in [-range, range]."""

SILENT_BIAS = -100.0
"""A boundary bias far enough below any pre-activation that the layer never fires."""


@torch.no_grad()
def calibrate_boundary_biases(rnn: HMLSTM, input: Tensor, targets: Sequence[float],
                              state: HMLSTMState | None = None, iterations: int = 30,
                              first: int = 0) -> list[float]:
    """Set each boundary layer's bias (row z) so that on ``input`` it fires at its target.

    Layer by layer from the bottom (a layer's rate depends on the layers below it), the
    bias is found by bisection over ``[-CALIBRATION_RANGE, CALIBRATION_RANGE]``, one
    forward pass of the stack per halving: the share of ``(t, n)`` at which the layer
    fires grows with its bias.

    Args:
        rnn: the HM-LSTM stack.
        input: its input ``(T, N, D)`` (time-major).
        targets: one rate in (0, 1) per layer below the top.
        state: the state the pass starts from (None: zeros).
        iterations: halvings per layer.
        first: the lowest boundary layer (0-based) set; the biases below it are kept.

    Returns:
        The rates reached, one per boundary layer set.
    """
    targets = _check_targets(rnn, targets)
    reached = []
    for l, (cell, target) in enumerate(zip(detector_cells(rnn), targets, strict=True)):
        if l < first:
            continue
        low, high = -CALIBRATION_RANGE, CALIBRATION_RANGE
        rate = 0.0
        for _ in range(iterations):
            bias = (low + high) / 2
            cell.bias[-1] = bias
            output, _ = rnn(input, state)
            assert output.boundary is not None
            rate = float(output.boundary[..., l].float().mean())
            low, high = (low, bias) if rate > target else (bias, high)
        reached.append(rate)
    return reached


@torch.no_grad()
def recentre_boundary_biases(rnn: HMLSTM, input: Tensor, targets: Sequence[float],
                             state: HMLSTMState | None = None) -> None:
    """Move each boundary layer's bias so that on ``input`` it fires at about its target,
    from one forward pass per layer.

    Layer by layer from the bottom, the bias moves by minus the pre-activation ``s_z`` that
    ``target * T * N`` of the layer's steps outside COPY exceed (the midpoint between that
    one and the next), so that just those fire. Approximate where
    :func:`calibrate_boundary_biases` bisects: moving a bias also moves the states after
    it and the layer's own COPY steps. A detector's pre-activations can lie within a few
    thousandths of its bias (layer-norm gains of 0.01), too close for the controller's
    steps (docs/hierarchy.md, the start); this lands between them.

    Args:
        rnn: the HM-LSTM stack.
        input: its input ``(T, N, D)`` (time-major).
        targets: one rate in (0, 1) per layer below the top.
        state: the state the pass starts from (None: zeros).
    """
    targets = _check_targets(rnn, targets)
    T, N = input.shape[0], input.shape[1]
    first = (state if state is not None else rnn.initial_state(N)).z
    for l, (cell, target) in enumerate(zip(detector_cells(rnn), targets, strict=True)):
        output, _ = rnn(input, state)
        z = output.boundary
        assert z is not None
        s = boundary_preactivation(rnn, input, state, output, layers=[l])[..., 0]  # (T, N)
        live = torch.ones_like(s, dtype=torch.bool)  # the bottom layer never copies
        if l > 0:
            live = (_previous(z, first)[..., l] != 0) | (z[..., l - 1] != 0)
        values = s[live].double()
        if values.numel() == 0:
            continue
        wanted = min(max(round(target * T * N), 1), values.numel())
        top = values.topk(min(wanted + 1, values.numel())).values
        edge = (top[wanted - 1] + top[wanted]) / 2 if wanted < len(top) else top[-1] - 1e-3
        cell.bias[-1] -= edge.to(cell.bias.dtype)


class DetectorRelease:
    """Holds the detectors of the layers above the first out of the optimiser's reach
    until the global step ``release``.

    Until then a gradient hook multiplies the boundary entry (row z) of each such
    layer's ``W``, ``U``, ``U_td``, ``bias`` and layer norms (gain and shift) by 0, so the
    layer fires where its initial weights put it and at the rate a :class:`RateController`
    holds; from step ``release`` on the factor is 1. The factor is a tensor on the
    parameters' device, changed in place, so a captured CUDA graph sees the change.

    With ``silent``, those layers do not fire at all before the release: their boundary
    biases are held at :data:`SILENT_BIAS` from the start and, by :meth:`hold_silent`
    after each step, whatever a controller did to them, so each UPDATEs at every
    boundary of the layer below and never FLUSHes, and the layers above them COPY.
    Where they start firing at the release is the caller's to set
    (:func:`calibrate_boundary_biases` with ``first=1``).

    Args:
        rnn: the HM-LSTM stack.
        release: the first step whose gradient reaches those detectors (> 0).
        silent: those layers do not fire before the release.
    """

    def __init__(self, rnn: HMLSTM, release: int, silent: bool = False) -> None:
        if release <= 0:
            raise ValueError(f"the detectors' release is a step > 0, got {release}")
        self.release = int(release)
        self.silent = silent
        self.cells = detector_cells(rnn)[1:]
        self.factor = torch.zeros((), device=rnn.slope.device, dtype=rnn.slope.dtype)
        for cell in self.cells:
            for param in _boundary_rows(cell):
                param.register_hook(self._scaled)
        self.hold_silent(0)

    def _scaled(self, grad: Tensor) -> Tensor:
        grad = grad.clone()
        grad[-1] *= self.factor
        return grad

    @torch.no_grad()
    def at_step(self, step: int) -> None:
        """Before global step ``step``'s backward pass: its gradient reaches the detectors
        if ``step >= release``."""
        self.factor.fill_(float(step >= self.release))

    @torch.no_grad()
    def hold_silent(self, step: int) -> None:
        """Before global step ``step``: with ``silent`` and ``step < release``, the biases
        at :data:`SILENT_BIAS`."""
        if self.silent and step < self.release:
            for cell in self.cells:
                cell.bias[-1] = SILENT_BIAS


def _boundary_rows(cell: HMLSTMCell) -> list[Tensor]:
    """The parameters whose last entry (row z) belongs to ``cell``'s boundary detector."""
    params: list[Tensor] = [p for p in (cell.W, cell.U, cell.U_td, cell.bias) if p is not None]
    if cell.layer_norm:
        for norm in (cell.ln_bottom_up, cell.ln_recurrent, cell.ln_top_down):
            params += [norm.weight, norm.bias]
    return params


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _without_boundary_row(grad: Tensor) -> Tensor:
    """A bias gradient ``(4H + 1,)`` with its boundary entry (the last, row z) zeroed."""
    grad = grad.clone()
    grad[-1] = 0
    return grad


def _weighted_sum(per_layer: Tensor, weights: Sequence[float] | None) -> Tensor:
    """``per_layer (L-1,)`` summed, each layer times its weight (None: 1)."""
    if weights is None:
        return per_layer.sum()
    if len(weights) not in (1, per_layer.numel()):
        raise ValueError(f"a boundary loss's weights: one, or one per boundary layer "
                         f"({per_layer.numel()}), got {len(weights)}")
    return (per_layer * per_layer.new_tensor(list(weights))).sum()


def ratio_loss(boundary: Tensor, targets: Sequence[float],
               weights: Sequence[float] | None = None) -> Tensor:
    """The H-Net ratio loss, summed over the boundary layers (each times its weight in
    ``weights``, one for all or one per layer; None: 1): minimal at each target rate.

    With ``F`` the share of steps a layer fired and ``alpha = 1 / target``::

        alpha / (alpha - 1) * ((alpha - 1) F F' + (1 - F)(1 - F'))

    where ``F'`` is ``F`` without gradient; its gradient in ``F`` is 0 at ``F = target``.
    ``boundary (T, N, L)``; the straight-through gradient carries it to the detectors.
    """
    rates = boundary[..., :-1].float().mean(dim=(0, 1))  # (L-1,)
    alpha = 1.0 / torch.tensor(targets, dtype=rates.dtype, device=rates.device)
    held = rates.detach()
    return _weighted_sum(alpha / (alpha - 1) * ((alpha - 1) * rates * held
                                                + (1 - rates) * (1 - held)), weights)


def binomial_prior_loss(boundary: Tensor, targets: Sequence[float],
                        weights: Sequence[float] | None = None) -> Tensor:
    """Per boundary layer, ``-log Binomial(k; T, p) / T`` averaged over the streams, summed
    (each layer times its weight, as in :func:`ratio_loss`).

    ``k`` is the number of boundaries a stream's segment of ``T`` steps holds (a real
    number through the straight-through estimator; the binomial coefficient through
    ``lgamma``), ``p`` the layer's target. Per step it is minimal near ``k = T p``; it
    penalises a count far from ``T p`` more than one near it, unlike :func:`ratio_loss`,
    which is linear in the batch's rate. ``boundary (T, N, L)``.
    """
    T = boundary.shape[0]
    k = boundary[..., :-1].double().sum(dim=0)  # (N, L-1): boundaries per stream and layer
    p = torch.tensor(targets, dtype=k.dtype, device=k.device)
    log_prob = (math.lgamma(T + 1) - torch.lgamma(k + 1) - torch.lgamma(T - k + 1)
                + k * torch.log(p) + (T - k) * torch.log1p(-p))
    return _weighted_sum(-log_prob.mean(dim=0) / T, weights).to(boundary.dtype)


def surprisal_prior_loss(boundary: Tensor, surprisal: Tensor, weights: Sequence[float],
                         mask: Tensor | None = None) -> Tensor:
    """Per boundary layer ``-mean(z_t u_t)`` over the counted steps but the first, summed
    (each layer times its weight in ``weights``, one for all or one per layer, as in
    :func:`ratio_loss`).

    ``u_t`` is the rise of the surprisal from the step before, ``s_t - s_{t-1}``
    (``surprisal``: each step's negative log-likelihood of its next target, held without
    gradient), standardised over the counted steps: mean 0, standard deviation 1. Its
    gradient raises a detector on the steps after which the model was more surprised than
    it had just been, and lowers it elsewhere: a layer fires where prediction gets hard
    (after a word's end, where the next word's first character comes) and not on the steps
    after, which are as hard but less so than the step before; the Byte Latent
    Transformer's boundaries at rises of the entropy. It sets where, not how often, and
    leaves the rate to a controller. It reaches only detectors inside the hard sigmoid's
    linear region; in expectation over the next targets it is the same loss with the
    predictive entropy in place of the surprisal.

    Args:
        boundary: ``(T, N, L)``; the straight-through gradient carries the loss to the
            detectors.
        surprisal: ``(T, N)``.
        weights: one weight for every boundary layer, or one per layer.
        mask: bool ``(T, N)``, the steps counted (None: all); a rise is counted where its
            step and the step before are.
    """
    s = surprisal.detach().double()
    rise = s[1:] - s[:-1]  # (T-1, N)
    counted = torch.ones_like(rise, dtype=torch.bool) if mask is None else mask[1:] & mask[:-1]
    values = rise[counted]
    if values.numel() < 2:
        return boundary.new_zeros(())
    u = torch.where(counted, (rise - values.mean()) / values.std().clamp_min(1e-12), 0.0)
    z = boundary[1:, :, :-1].double()  # (T-1, N, L-1)
    per_layer = -(z * u.unsqueeze(-1)).sum(dim=(0, 1)) / values.numel()
    return _weighted_sum(per_layer, weights).to(boundary.dtype)


@torch.no_grad()
def cap_boundary_rows(rnn: HMLSTM, max_norm: float) -> None:
    """Scale the boundary row (row z) of each ``W``, ``U``, ``U_td`` to a norm of at most
    ``max_norm``, as the authors' code does after each update."""
    for cell in detector_cells(rnn):
        for weight in (cell.W, cell.U, cell.U_td):
            if weight is not None:
                row = weight[-1]
                norm = float(row.norm())
                if norm > max_norm:
                    row.mul_(max_norm / norm)


@torch.no_grad()
def cap_boundary_gains(rnn: HMLSTM, max_gain: float) -> None:
    """Clamp the boundary entry (row z) of each layer-normalised term's gain to
    ``[-max_gain, max_gain]`` (a stack without layer norm is left as it is)."""
    for cell in detector_cells(rnn):
        if cell.layer_norm:
            for norm in (cell.ln_recurrent, cell.ln_top_down, cell.ln_bottom_up):
                norm.weight[-1].clamp_(-max_gain, max_gain)


def _previous(z: Tensor, first: Sequence[Tensor]) -> Tensor:
    """``z_{t-1}`` of every layer, ``(T, N, L)``: a pass's boundaries ``z (T, N, L)``
    shifted one step, the state's ``first`` (``L`` tensors ``(N, 1)``) in front."""
    return torch.cat([torch.cat(list(first), dim=1)[None], z[:-1]])


@torch.no_grad()
def boundary_preactivation(
    rnn: HMLSTM, input: Tensor, state: HMLSTMState | None, output: RNNOutput,
    layers: Sequence[int] | None = None,
) -> Tensor:
    """``s_z`` of every boundary layer (or of ``layers``) at every step, recomputed from a
    forward pass.

    Args:
        input: the stack's input ``(T, N, D)`` (time-major).
        state: the state the pass started from (None: zeros).
        output: what the pass returned (time-major).
        layers: the boundary layers to compute, bottom first from 0 (None: all).

    Returns:
        ``(T, N, L - 1)`` (``(T, N, len(layers))``): the boundary unit's pre-activation
        (Eq. 4-7 with the bias, layer-normalised terms where the stack uses layer norm).
    """
    T, N = input.shape[0], input.shape[1]
    state = state if state is not None else rnn.initial_state(N)
    z = output.boundary
    assert z is not None
    z_prev = _previous(z, state.z)
    h_prev = [torch.cat([h0[None], h[:-1]]) for h0, h in zip(state.h, output.hidden, strict=True)]
    columns = []
    for l, cell in enumerate(detector_cells(rnn)):
        if layers is not None and l not in layers:
            continue
        below = input if l == 0 else output.hidden[l - 1]
        z_below = 1.0 if l == 0 else z[..., l - 1 : l]
        assert cell.U_td is not None  # a layer with a detector has a layer above
        recurrent = F.linear(h_prev[l], cell.U)
        top_down = F.linear(h_prev[l + 1], cell.U_td)
        if cell.layer_norm:
            recurrent, top_down = cell.ln_recurrent(recurrent), cell.ln_top_down(top_down)
        s = (recurrent + z_prev[..., l : l + 1] * top_down
             + z_below * cell.bottom_up(below) + cell.bias)
        columns.append(s[..., -1])
    return torch.stack(columns, dim=-1).reshape(T, N, -1)


def detector_shares(preactivation: Tensor, slope: float) -> tuple[list[float], list[float]]:
    """Per boundary layer, the share of ``(t, n)`` whose hard sigmoid ``(a s_z + 1) / 2``
    lies at or below 0 and at or above 1: outside its linear region, where the
    straight-through gradient is 0 ("dead" at 0 and at 1). ``preactivation (T, N, L-1)``."""
    u = (slope * preactivation.double() + 1) / 2
    return ((u <= 0).double().mean(dim=(0, 1)).tolist(),
            (u >= 1).double().mean(dim=(0, 1)).tolist())


def boundary_grad_norms(rnn: HMLSTM) -> list[float]:
    """Per boundary layer, the norm of the gradient held by its detector's parameters (row
    z of ``W``, ``U``, ``U_td`` and ``bias``); 0 where there is none."""
    norms = []
    for cell in detector_cells(rnn):
        rows = [p.grad[-1].reshape(-1) for p in (cell.W, cell.U, cell.U_td, cell.bias)
                if p is not None and p.grad is not None]
        norms.append(float(torch.cat(rows).norm()) if rows else 0.0)
    return norms
