"""What every task tells the trainer besides its losses: the per-step slope annealing of
an HM-LSTM stack, and the boundary options, instruments and warnings (boundary collapse)
of its training (:class:`BoundaryTraining`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from hmrnn.analysis.boundaries import collapse_warnings
from hmrnn.analysis.verdict import COLLAPSED_ABOVE, COLLAPSED_BELOW
from hmrnn.model.boundary_control import (
    DetectorRelease,
    RateController,
    binomial_prior_loss,
    boundary_grad_norms,
    boundary_preactivation,
    calibrate_boundary_biases,
    cap_boundary_gains,
    cap_boundary_rows,
    detector_cells,
    detector_shares,
    ratio_loss,
    recentre_boundary_biases,
    surprisal_prior_loss,
)
from hmrnn.model.hmlstm import HMLSTM, HMLSTMState
from hmrnn.model.types import RNNOutput, detach_state
from hmrnn.training.config import TrainConfig
from hmrnn.training.distributed import DistContext


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


RATE_LOSSES: dict[str, Callable[[Tensor, Sequence[float], Sequence[float]], Tensor]] = {
    "loss": ratio_loss, "prior": binomial_prior_loss}
"""The rate losses by ``train.rate_control``."""


class BoundaryTraining:
    """A task's share of the boundary options and instruments of an HM-LSTM stack
    (docs/model.md decision 9; :mod:`hmrnn.model.boundary_control`), from ``train``.

    :meth:`loss` is added to the task's loss (the ratio loss when ``rate_control`` is
    ``"loss"``, the binomial prior when it is ``"prior"``, and the surprisal prior with
    ``surprisal_prior``); :meth:`observe` is told each
    step's shown ``stats`` (and holds the detectors above layer 1 still before
    ``boundary_release``) and, on the steps the trainer logs, what :meth:`instruments`
    needs; :meth:`end_step` then runs the bias controller and the caps after an
    accepted step (the rates averaged over every process; after the first, with
    ``rate_calibrate``, sets the boundary biases on its batch; after each of the first
    ``rate_recentre``, recentres them on its batch in place of the controller) and adds
    the detectors'
    instruments (dead shares, gradient norms) to those ``stats``; ``last`` keeps the
    latest instruments. A stack without boundaries gets none of it.
    """

    def __init__(self, rnn: nn.Module, train: TrainConfig, context: DistContext) -> None:
        self.rnn = rnn if isinstance(rnn, HMLSTM) else None
        self.train = train
        self.context = context
        self.last: dict[str, list[float]] = {}
        self._stats: dict[str, Any] = {}
        self._step: int | None = None  # the global step observe() saw
        self._probe: tuple[Tensor, HMLSTMState | None, RNNOutput] | None = None
        self._batch: tuple[Tensor, HMLSTMState | None] | None = None  # to set biases on
        self.controller = None
        if self.rnn is not None and train.rate_control != "none":
            if train.rate_control == "bias":
                self.controller = RateController(
                    self.rnn, train.boundary_rate, train.rate_gain, train.rate_error,
                    own_bias=not train.rate_bias_gradient, warmup=train.rate_warmup)
            else:  # validated like the controller's targets
                RateController(self.rnn, train.boundary_rate, 1.0)
        self.release = (DetectorRelease(self.rnn, train.boundary_release, train.release_silent)
                        if self.rnn is not None and train.boundary_release > 0 else None)

    @property
    def uses_surprisal(self) -> bool:
        """Whether :meth:`loss` needs each step's surprisal (``surprisal_prior``)."""
        return self.rnn is not None and any(self.train.surprisal_prior)

    def warnings(self, metrics: Mapping[str, Any]) -> list[str]:
        """Collapse warnings for the boundary rates ``metrics["z"]`` (none without them),
        but for the layers that ``release_silent`` holds silent at the latest step."""
        rates = list(metrics.get("z", []))
        release = self.release
        if release is not None and release.silent and self._step is not None \
                and self._step + 1 < release.release:
            rates = rates[:1]
        return collapse_warnings(rates, low=COLLAPSED_BELOW, high=COLLAPSED_ABOVE)

    def loss(self, boundary: Tensor | None, surprisal: Tensor | None = None,
             mask: Tensor | None = None) -> Tensor | None:
        """The boundary losses to add for a step's ``boundary (T, N, L)``, or None: the rate
        loss of ``rate_control`` and, with ``surprisal_prior``, the surprisal prior on the
        step's ``surprisal (T, N)`` (each step's negative log-likelihood; the steps counted:
        bool ``mask (T, N)``, None: all)."""
        train = self.train
        if self.rnn is None or boundary is None:
            return None
        losses = []
        if train.rate_control in RATE_LOSSES:
            losses.append(RATE_LOSSES[train.rate_control](boundary, train.boundary_rate,
                                                          train.rate_gain))
        if self.uses_surprisal:
            if surprisal is None:
                raise ValueError("train.surprisal_prior needs each step's surprisal")
            losses.append(surprisal_prior_loss(boundary, surprisal, train.surprisal_prior,
                                               mask))
        return sum(losses[1:], losses[0]) if losses else None

    def observe(self, step: int, stats: dict[str, Any], input: Callable[[], Tensor],
                state: HMLSTMState | None, output: RNNOutput) -> None:
        """Global step ``step`` showed ``stats`` (its ``"z"``: this process's rates); on a
        step the trainer logs, keep the stack's input (``input()``, made only then), initial
        ``state`` and ``output`` (detached) for :meth:`instruments`."""
        self._stats = stats
        self._step = step
        self._probe = None
        if self.release is not None:
            self.release.at_step(step)
        calibrate, recentre = self._bias_setting(step)
        if calibrate is not None or recentre:
            with torch.no_grad():
                self._batch = (input(), state)
        if (step + 1) % self.train.log_every == 0:
            with torch.no_grad():
                self._probe = (input(), state, detach_state(output))

    def end_step(self, accepted: bool) -> None:
        """After the optimiser step of the step :meth:`observe` saw."""
        if accepted:
            self.after_step(self._stats.get("z", []))
        if self._probe is not None and self.rnn is not None:
            self.last = self.instruments(*self._probe)
            self._stats.update(self.last)
        self._probe = None

    def after_step(self, rates: Sequence[float]) -> None:
        """After an accepted step whose boundary rates (this process's) were ``rates``."""
        if self.rnn is None:
            return
        calibrate, recentre = self._bias_setting(self._step)
        if self.controller is not None and not recentre:
            mean = self.context.all_reduce_sum(
                torch.tensor(list(rates), dtype=torch.float64, device=self.context.device))
            self.controller.update((mean / self.context.world_size).tolist(), self._step)
        if self._batch is not None:
            self._set_biases(*self._batch, calibrate, recentre)
            self._batch = None
        if self.release is not None and self._step is not None:
            self.release.hold_silent(self._step + 1)
        if self.train.boundary_cap > 0:
            cap_boundary_rows(self.rnn, self.train.boundary_cap)
        if self.train.boundary_gain_cap > 0:
            cap_boundary_gains(self.rnn, self.train.boundary_gain_cap)

    def _bias_setting(self, step: int | None) -> tuple[int | None, bool]:
        """How the biases are set on global step ``step``'s batch after it: bisected from
        the returned boundary layer up (``rate_calibrate``: every layer after the first
        step; ``release_silent``: the released layers after the step before the release;
        None: not bisected), recentred (``rate_recentre``, the first steps, in place of
        the controller)."""
        if step is None or self.rnn is None:
            return None, False
        train = self.train
        calibrate = None
        if step == 0 and train.rate_calibrate:
            calibrate = 0
        if train.release_silent and step == train.boundary_release - 1:
            calibrate = 1 if calibrate is None else calibrate
        return calibrate, step < train.rate_recentre

    @torch.no_grad()
    def _set_biases(self, input: Tensor, state: HMLSTMState | None, calibrate: int | None,
                    recentre: bool) -> None:
        """The boundary biases set on the step's batch (each process's), bisected from
        boundary layer ``calibrate`` up and/or (after it) recentred, then averaged over
        the processes."""
        assert self.rnn is not None
        targets = self.train.boundary_rate
        if calibrate is not None:
            calibrate_boundary_biases(self.rnn, input, targets, state, first=calibrate)
        if recentre:
            recentre_boundary_biases(self.rnn, input, targets, state)
        cells = detector_cells(self.rnn)
        biases = torch.stack([cell.bias[-1] for cell in cells]).double()
        biases = self.context.all_reduce_sum(biases) / self.context.world_size
        for cell, bias in zip(cells, biases, strict=True):
            cell.bias[-1] = bias

    def instruments(
        self, input: Tensor, state: HMLSTMState | None, output: RNNOutput
    ) -> dict[str, list[float]]:
        """``dead0`` / ``dead1``: per boundary layer, the share of the step's detectors at or
        below 0 / at or above 1 of the hard sigmoid; ``zgrad``: the norm of the gradient
        (after clipping) held by each detector's parameters. Call after the step."""
        if self.rnn is None:
            return {}
        s_z = boundary_preactivation(self.rnn, input, state, output)
        dead0, dead1 = detector_shares(s_z, self.rnn.slope_value)
        return {"dead0": dead0, "dead1": dead1, "zgrad": boundary_grad_norms(self.rnn)}
