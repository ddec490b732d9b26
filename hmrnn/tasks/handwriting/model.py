"""The handwriting model of the HM-RNN paper's section 4.2, and how to score and sample it.

Any recurrent stack reads the offsets ``(dx, dy, pen)_t``; the gated output module
(Eq. 11-12) turns all its layers into ``h^e_t``; a mixture density head (Graves 2013)
predicts ``(dx, dy, pen)_{t+1}``::

    output, state = rnn(x_{1:T}, state)            x_t: (N, 3) normalised offsets
    h^e_t = GatedOutput(output.hidden)_t           (Eq. 11-12)
    p(x_{t+1} | x_{<=t}) = MDN(h^e_t)              (Graves 2013, Eq. 17-23)

**The paper's Table 3 measure.** "Average log-likelihood per test sequence" (HM-LSTM
1137, LSTM 1081) is, as computed here, ``sum_t log p(x_{t+1} | x_{<=t})`` in nats over
the ``T_n - 1`` predicted steps of each test sequence (a line of ``P`` points gives
``P - 1`` offsets and ``P - 2`` predictions, see :mod:`hmrnn.tasks.handwriting.data`),
averaged over the sequences. The density is over *normalised* offsets and includes the
pen-up Bernoulli. The paper does not state its convention. Its positive values (about
1.7 nats per step over sequences of 648 points) fit a density over standardised offsets
and Graves's (2013) figures on the same data are of the same size, whereas over raw
whiteboard offsets (standard deviations near 42 and 37 units) the same model scores
``log(std_x * std_y)``, about 7.4 nats, lower at every step, far below zero per
sequence. Both are available: ``include_jacobian=True`` adds the normalisation's
Jacobian, ``-(T_n - 1) log(std_x std_y)``, giving the log-density of the raw offsets.
The first point of a line is never predicted; a different offset convention (e.g. one
extra predicted step per line) shifts the figure by about one step's worth of nats.

Shape legend: T time, N batch, K mixture components, E embedding size, L layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hmrnn.analysis.boundaries import PRF, boundary_prf
from hmrnn.model.output import GatedOutput
from hmrnn.model.registry import build_rnn
from hmrnn.model.types import RNNOutput, check_input
from hmrnn.progress import progress_bar
from hmrnn.tasks.handwriting import mdn
from hmrnn.tasks.handwriting.data import Normalizer, pad_batch, to_offsets
from hmrnn.tasks.handwriting.mdn import MixtureDensityHead, MixtureParams
from hmrnn.training.config import ModelConfig

# The first input of an unprimed sample: no move, pen lifted, "a stroke is about to
# begin" (the convention of the paper's cited plotting code, blog.otoro.net 2015).
_START = (0.0, 0.0, 1.0)


class HandwritingModel(nn.Module):
    """A recurrent stack, the gated output module and a mixture density head.

    Args:
        rnn: any recurrent stack with the hmrnn interface: attribute ``hidden_sizes``
            (one int per layer), ``output, state = rnn(input (T, N, 3), state)`` with
            ``output`` an :class:`hmrnn.model.types.RNNOutput`; time-major (not batch-first).
            E.g. ``HMLSTM(3, 400, 3)`` or ``LSTMStack(3, 400, 3)``.
        embedding_size: ``E``, size of ``h^e`` (400 in the paper).
        num_components: ``K``, Gaussians in the mixture (20, as Graves 2013).

    Inputs: ``inputs, state=None``
        - inputs: ``(T, N, 3)`` normalised offsets ``(dx, dy, pen)``.
        - state: the stack's state, or ``None`` for its initial state.

    Outputs: ``params, output, state``
        - params: :class:`MixtureParams`, fields ``(T, N, K)`` and ``e_hat`` ``(T, N)``,
          the distribution of the *next* offset at every step.
        - output: the stack's :class:`RNNOutput` (hidden ``L x (T, N, H_l)``, boundary
          ``(T, N, L)`` or ``None``).
        - state: the stack's state after the last step.

    Parameters: ``rnn.*`` (the stack's own), ``output.*`` (:class:`GatedOutput`),
    ``head.proj.*`` (:class:`MixtureDensityHead`).

    Example::

        >>> model = HandwritingModel(LSTMStack(3, 16, 2), embedding_size=8, num_components=4)
        >>> params, output, state = model(torch.randn(7, 5, 3))
        >>> params.mu_x.shape, params.e_hat.shape
        (torch.Size([7, 5, 4]), torch.Size([7, 5]))
    """

    def __init__(self, rnn: nn.Module, embedding_size: int = 400, num_components: int = 20) -> None:
        super().__init__()
        if getattr(rnn, "batch_first", False):
            raise ValueError(
                "HandwritingModel needs a time-major recurrent stack; build it with "
                "batch_first=False."
            )
        hidden_sizes = getattr(rnn, "hidden_sizes", None)
        if hidden_sizes is None:
            raise ValueError(
                "The recurrent stack must expose hidden_sizes (one size per layer), as every "
                "hmrnn stack does."
            )
        first = next(rnn.parameters(), None)
        kw: dict[str, Any] = {}
        if first is not None:
            kw = {"device": first.device, "dtype": first.dtype}
        self.rnn = rnn
        self.embedding_size = embedding_size
        self.num_components = num_components
        self.output = GatedOutput(tuple(hidden_sizes), embedding_size, **kw)
        self.head = MixtureDensityHead(embedding_size, num_components, **kw)

    def forward(self, inputs: Tensor, state: Any = None) -> tuple[MixtureParams, RNNOutput, Any]:
        check_input(inputs, 3, "HandwritingModel")
        output, state = self.rnn(inputs, state)
        embedding = self.output(output.hidden)  # (T, N, E)
        return self.head(embedding), output, state


def build_handwriting_model(config: ModelConfig) -> HandwritingModel:
    """The model a :class:`~hmrnn.training.config.ModelConfig` describes.

    The stack ``config.rnn`` (``num_layers`` x ``hidden_size``, ``layer_norm``,
    ``boundary``) reads the three offset features directly: ``config.embedding_size`` is
    not used, because a linear input embedding would only be re-absorbed into the stack's
    first bottom-up weights. ``output_size`` is the size of ``h^e`` and
    ``mixture_components`` the K of the mixture.
    """
    rnn = build_rnn(
        config.rnn, 3, config.hidden_size, config.num_layers,
        layer_norm=config.layer_norm, boundary=config.boundary,
        boundary_grad=config.boundary_grad,
        boundary_ln_gain=config.boundary_ln_gain or None,
    )
    return HandwritingModel(rnn, config.output_size, config.mixture_components)


def _model_tensor(model: nn.Module) -> Tensor:
    first = next(model.parameters(), None)
    if first is None:
        raise ValueError("The model has no parameters to take a device and dtype from.")
    return first


def _score_batch(
    model: HandwritingModel, inputs: Tensor, targets: Tensor, mask: Tensor
) -> tuple[Tensor, RNNOutput]:
    """Per-sequence log-likelihood of a padded batch, and the stack's output.

    Shape:
        inputs, targets ``(T, N, 3)``, mask ``(T, N)`` bool -> ``(N,)`` nats and the
        :class:`RNNOutput` (hidden ``L x (T, N, H_l)``, boundary ``(T, N, L)`` or None).
    """
    if mask.shape != inputs.shape[:2]:
        raise ValueError(f"mask must have shape {tuple(inputs.shape[:2])}, got {tuple(mask.shape)}")
    params, output, _ = model(inputs)
    log_p = mdn.log_density(params, targets)  # (T, N)
    return torch.where(mask, log_p, torch.zeros_like(log_p)).sum(dim=0), output  # (N,)


def sequence_log_likelihood(
    model: HandwritingModel,
    inputs: Tensor,
    targets: Tensor,
    mask: Tensor,
    *,
    include_jacobian: bool = False,
    normalizer: Normalizer | None = None,
) -> Tensor:
    """Log-likelihood of each sequence of a padded batch, summed over its real steps.

    Differentiable; wrap it in ``torch.no_grad()`` to evaluate.

    Args:
        inputs, targets, mask: as :func:`hmrnn.tasks.handwriting.data.pad_batch` returns.
        include_jacobian: add ``-(steps) * log(std_x * std_y)`` per sequence, i.e. score
            the raw (un-normalised) offsets in whiteboard units; needs ``normalizer``.
            Off by default: the paper's Table 3 convention as this module reads it.

    Shape:
        inputs, targets ``(T, N, 3)``, mask ``(T, N)`` bool -> ``(N,)`` nats.
    """
    if include_jacobian and normalizer is None:
        raise ValueError("include_jacobian=True needs the normalizer whose std to use.")
    per_sequence, _ = _score_batch(model, inputs, targets, mask)
    if include_jacobian and normalizer is not None:
        per_sequence = per_sequence - mask.sum(dim=0) * normalizer.log_jacobian()
    return per_sequence


def _prf(tp: int, fp: int, fn: int) -> PRF:
    """Precision, recall and F1 from match counts, with
    :func:`hmrnn.analysis.boundaries.boundary_prf`'s conventions for empty cases (pooled
    counts of many lines give the micro average)."""
    predicted, actual = tp + fp, tp + fn
    both_empty = predicted == 0 and actual == 0
    precision = tp / predicted if predicted else float(both_empty)
    recall = tp / actual if actual else float(both_empty)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return PRF(precision, recall, f1, tp, fp, fn)


@dataclass(frozen=True)
class EvalTotals:
    """Additive sums of an evaluation, so that parts scored apart (by several processes,
    or in pieces) add up to the whole: ``a + b``, and ``to_array`` / ``from_array`` for an
    all-reduce.

    Attributes:
        loglik: nats, summed over every predicted step of every sequence (density of the
            normalised offsets, pen-up Bernoulli included).
        steps: predicted steps (``T_n - 1`` per sequence of ``T_n`` offsets).
        sequences: sequences scored.
        fires: one sum of ``z^l`` over the scored steps per layer below the top (empty for
            stacks without boundary detectors).
        penup: ``(tp, fp, fn)`` of layer 2's boundaries against the pen-ups, counted line
            by line (zeros unless the stack has at least 3 layers with boundaries); see
            :func:`evaluate` for the alignment.
    """

    loglik: float = 0.0
    steps: int = 0
    sequences: int = 0
    fires: tuple[float, ...] = ()
    penup: tuple[int, int, int] = (0, 0, 0)

    def __add__(self, other: EvalTotals) -> EvalTotals:
        if not self.sequences:
            return other
        if not other.sequences:
            return self
        if len(self.fires) != len(other.fires):
            raise ValueError("Cannot add the totals of stacks with different boundary layers.")
        (tp, fp, fn), (tp2, fp2, fn2) = self.penup, other.penup
        return EvalTotals(
            self.loglik + other.loglik,
            self.steps + other.steps,
            self.sequences + other.sequences,
            tuple(a + b for a, b in zip(self.fires, other.fires, strict=True)),
            (tp + tp2, fp + fp2, fn + fn2),
        )

    def to_array(self) -> np.ndarray:
        """float64 ``(6 + len(fires),)``: loglik, steps, sequences, tp, fp, fn, fires."""
        return np.array(
            [self.loglik, self.steps, self.sequences, *self.penup, *self.fires], dtype=np.float64
        )

    @classmethod
    def from_array(cls, values: np.ndarray) -> EvalTotals:
        """The inverse of :meth:`to_array` (counts rounded back to ints)."""
        v = [float(x) for x in np.asarray(values, dtype=np.float64).ravel()]
        if len(v) < 6:
            raise ValueError(f"An EvalTotals array has at least 6 entries, got {len(v)}.")
        tp, fp, fn = (round(x) for x in v[3:6])
        return cls(v[0], round(v[1]), round(v[2]), tuple(v[6:]), (tp, fp, fn))

    def summary(self, normalizer: Normalizer | None = None) -> dict[str, Any]:
        """The figures :func:`evaluate` reports, from these sums."""
        if self.sequences < 1 or self.steps < 1:
            raise ValueError("No sequence was scored.")
        total, steps, count = self.loglik, self.steps, self.sequences
        result: dict[str, Any] = {
            "loglik_per_sequence": total / count,
            "nll_per_sequence": -total / count,
            "nats_per_step": -total / steps,
            "num_sequences": float(count),
            "num_steps": float(steps),
        }
        if normalizer is not None:
            result["loglik_per_sequence_raw"] = (total - steps * normalizer.log_jacobian()) / count
        if self.fires:
            result["boundary_rates"] = [f / steps for f in self.fires]
        if len(self.fires) >= 2:  # layer 2 has a boundary detector
            prf = _prf(*self.penup)
            result.update(
                penup_precision=prf.precision, penup_recall=prf.recall, penup_f1=prf.f1,
                penup_tp=prf.tp, penup_fp=prf.fp, penup_fn=prf.fn,
            )
        return result


def evaluation_totals(
    model: HandwritingModel,
    seqs: Sequence[np.ndarray | Tensor],
    batch_size: int = 32,
    *,
    tolerance: int = 1,
    progress: bool = False,
) -> EvalTotals:
    """The sums behind :func:`evaluate` (see there); add the totals of several parts."""
    if len(seqs) == 0:
        raise ValueError("evaluate needs at least one sequence.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size}")
    ref = _model_tensor(model)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    totals = EvalTotals()
    was_training = model.training
    model.eval()
    bar = progress_bar(total=len(order), desc="evaluate", unit="line", enabled=progress,
                       leave=False)
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                chunk = [seqs[i] for i in order[start : start + batch_size]]
                inputs, targets, mask = pad_batch(chunk)
                inputs = inputs.to(device=ref.device, dtype=ref.dtype)
                targets = targets.to(device=ref.device, dtype=ref.dtype)
                mask = mask.to(ref.device)
                per_sequence, output = _score_batch(model, inputs, targets, mask)
                totals = totals + EvalTotals(
                    float(per_sequence.double().sum()), int(mask.sum()), len(chunk),
                    *_boundary_sums(output.boundary, inputs[..., 2], mask, tolerance),
                )
                bar.update(len(chunk))
    finally:
        bar.close()
        model.train(was_training)
    return totals


def _boundary_sums(
    boundary: Tensor | None, pen: Tensor, mask: Tensor, tolerance: int
) -> tuple[tuple[float, ...], tuple[int, int, int]]:
    """Per-layer sums of z over the real steps, and layer 2's (tp, fp, fn) against pen-ups.

    Shape:
        boundary ``(T, N, L)`` or None; pen ``(T, N)`` the pen bit of each *input* offset;
        mask ``(T, N)``.
    """
    if boundary is None:
        return (), (0, 0, 0)
    z = boundary[..., :-1].double() * mask.unsqueeze(-1)  # (T, N, L - 1)
    fires = tuple(float(x) for x in z.sum(dim=(0, 1)))
    if len(fires) < 2:
        return fires, (0, 0, 0)
    counts = np.zeros(3, dtype=np.int64)
    z2 = (boundary[..., 1] > 0.5).cpu().numpy()  # (T, N)
    pen_up = (pen > 0.5).cpu().numpy()
    for n, steps in enumerate(mask.sum(dim=0).tolist()):
        prf = boundary_prf(z2[:steps, n], pen_up[:steps, n], tolerance)
        counts += (prf.tp, prf.fp, prf.fn)
    tp, fp, fn = (int(c) for c in counts)
    return fires, (tp, fp, fn)


def evaluate(
    model: HandwritingModel,
    seqs: Sequence[np.ndarray | Tensor],
    batch_size: int = 32,
    *,
    normalizer: Normalizer | None = None,
    tolerance: int = 1,
    progress: bool = False,
) -> dict[str, Any]:
    """Score whole offset sequences (the paper's Table 3 measure and per-step figures).

    Runs in evaluation mode without gradients (the model's mode is restored after),
    batching sequences of similar length together.

    **Boundaries against pen-ups.** At step ``s`` the model reads offset ``s``, which
    arrives at point ``s + 1`` and carries that point's pen bit; ``z^2_s`` is compared with
    that pen bit, as :func:`line_boundaries` and
    :func:`hmrnn.tasks.handwriting.plots.boundary_agreement` align them, with one-to-one
    matching within ``tolerance`` steps. Only the steps that are scored are read, so of a
    line of ``P`` points, points ``1 .. P - 2`` take part (the last point, always a
    pen-up, is only ever a target). Counts are pooled over lines (micro average).

    Args:
        seqs: normalised offset sequences ``(T_n, 3)``, ``T_n >= 2``.
        normalizer: when given, also report the log-likelihood of the raw offsets.
        tolerance: the largest distance in steps at which a boundary hits a pen-up.
        progress: show a bar of the lines scored (:func:`hmrnn.progress.progress_bar`).

    Returns:
        ``loglik_per_sequence`` (nats, mean over sequences of the summed log-likelihood,
        normalised offsets: comparable with the paper's Table 3), ``nll_per_sequence``
        (its negative), ``nats_per_step`` (total NLL / total predicted steps),
        ``num_sequences``, ``num_steps``; with a normaliser also
        ``loglik_per_sequence_raw`` (Jacobian included: density of raw whiteboard offsets).
        With boundary detectors: ``boundary_rates`` (fraction of steps each layer below
        the top fired); with a boundary on layer 2 (3 or more layers): ``penup_precision``,
        ``penup_recall``, ``penup_f1`` and the counts ``penup_tp``, ``penup_fp``,
        ``penup_fn``.
    """
    totals = evaluation_totals(model, seqs, batch_size, tolerance=tolerance, progress=progress)
    return totals.summary(normalizer)


def sample_strokes(
    model: HandwritingModel,
    num_steps: int,
    bias: float = 0.0,
    prime: np.ndarray | Tensor | None = None,
    generator: torch.Generator | None = None,
    *,
    num_samples: int = 1,
) -> Tensor:
    """Write ``num_steps`` new offsets, one step at a time with the state carried.

    Each step's sample is the next step's input. With ``prime`` the model first reads a
    real line (its normalised offsets), and the new strokes continue it; without, it
    starts from the input ``(0, 0, 1)`` ("pen lifted, a stroke begins"). Runs without
    gradients in the model's current mode.

    Args:
        num_steps: offsets to generate.
        bias: Graves's sampling bias (:func:`hmrnn.tasks.handwriting.mdn.sample`).
        prime: normalised offsets ``(T_p, 3)`` to read first, or ``None``.
        generator: a ``torch.Generator`` on the model's device, for reproducible samples.
        num_samples: ``N``, independent samples written in parallel.

    Returns:
        ``(num_steps, N, 3)`` normalised offsets with pen in {0., 1.}; the prime is not
        included. ``Normalizer.denormalize`` and ``to_points`` turn them into a drawing.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples}")
    ref = _model_tensor(model)
    if prime is None:
        first = torch.tensor(_START, device=ref.device, dtype=ref.dtype).view(1, 1, 3)
    else:
        first = torch.as_tensor(np.asarray(prime), device=ref.device, dtype=ref.dtype)
        if first.dim() != 2 or first.shape[1] != 3 or first.shape[0] < 1:
            raise ValueError(
                f"prime must be normalised offsets of shape (T, 3), got {tuple(first.shape)}"
            )
        first = first.unsqueeze(1)  # (T_p, 1, 3)
    steps = []
    with torch.no_grad():
        params, _, state = model(first.expand(-1, num_samples, 3).contiguous())
        for t in range(num_steps):
            x = mdn.sample(params.at(-1), bias, generator)  # (N, 3)
            steps.append(x)
            if t + 1 < num_steps:
                params, _, state = model(x.unsqueeze(0), state)
    return torch.stack(steps)  # (num_steps, N, 3)


def line_boundaries(
    model: HandwritingModel, points: np.ndarray, normalizer: Normalizer
) -> np.ndarray:
    """Boundary states of the model reading one line, aligned with the line's points.

    The model reads the line's ``P - 1`` normalised offsets; the offset read at step
    ``s`` arrives at point ``s + 1`` and carries that point's pen bit, so ``z_s`` is
    placed on point ``s + 1`` and a boundary that fires when the model reads a pen-up sits
    on the pen-up point itself. Point 0 is never read and gets 0. This is the input of
    the paper's Figure 5 (:func:`hmrnn.tasks.handwriting.plots.segment_figure`, column 1 for
    ``z^2``). Runs without gradients in the model's current mode.

    Shape:
        points ``(P, 3)`` absolute -> ``(P, L)`` float (0/1 for binary boundaries).

    Raises:
        ValueError: if the stack has no boundary detectors (a baseline LSTM).
    """
    offsets = normalizer.normalize(to_offsets(np.asarray(points, dtype=np.float32)))
    return offset_boundaries(model, offsets)


def offset_boundaries(model: HandwritingModel, offsets: np.ndarray | Tensor) -> np.ndarray:
    """:func:`line_boundaries` of a line given as its normalised offsets.

    Use it when the offsets are at hand (e.g. a split of
    :class:`~hmrnn.tasks.handwriting.data.HandwritingData`): the boundaries of an HM-LSTM are
    discontinuous in its input, and offsets recomputed from points rebuilt in float32
    differ in the last bits, which is enough to move some boundaries.

    Shape:
        offsets ``(P - 1, 3)`` -> ``(P, L)``, row 0 (point 0, never read) all 0.

    Raises:
        ValueError: if the stack has no boundary detectors (a baseline LSTM).
    """
    ref = _model_tensor(model)
    inputs = torch.as_tensor(np.asarray(offsets), device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        _, output, _ = model(inputs.unsqueeze(1))
    if output.boundary is None:
        raise ValueError(
            "This model's recurrent stack has no boundary detectors (RNNOutput.boundary is "
            "None), so there are no boundaries to read; use an HM-LSTM."
        )
    z = output.boundary[:, 0].detach().cpu().double().numpy()  # (P - 1, L)
    return np.concatenate([np.zeros((1, z.shape[1])), z])
