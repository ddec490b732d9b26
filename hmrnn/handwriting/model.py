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
``P - 1`` offsets and ``P - 2`` predictions, see :mod:`hmrnn.handwriting.data`),
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
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..output import GatedOutput
from ..types import RNNOutput, check_input
from . import mdn
from .data import Normalizer, pad_batch, to_offsets
from .mdn import MixtureDensityHead, MixtureParams

# The first input of an unprimed sample: no move, pen lifted, "a stroke is about to
# begin" (the convention of the paper's cited plotting code, blog.otoro.net 2015).
_START = (0.0, 0.0, 1.0)


class HandwritingModel(nn.Module):
    """A recurrent stack, the gated output module and a mixture density head.

    Args:
        rnn: any recurrent stack with the hmrnn interface: attribute ``hidden_sizes``
            (one int per layer), ``output, state = rnn(input (T, N, 3), state)`` with
            ``output`` an :class:`hmrnn.types.RNNOutput`; time-major (not batch-first).
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


def _model_tensor(model: nn.Module) -> Tensor:
    first = next(model.parameters(), None)
    if first is None:
        raise ValueError("The model has no parameters to take a device and dtype from.")
    return first


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
        inputs, targets, mask: as :func:`hmrnn.handwriting.data.pad_batch` returns.
        include_jacobian: add ``-(steps) * log(std_x * std_y)`` per sequence, i.e. score
            the raw (un-normalised) offsets in whiteboard units; needs ``normalizer``.
            Off by default: the paper's Table 3 convention as this module reads it.

    Shape:
        inputs, targets ``(T, N, 3)``, mask ``(T, N)`` bool -> ``(N,)`` nats.
    """
    if include_jacobian and normalizer is None:
        raise ValueError("include_jacobian=True needs the normalizer whose std to use.")
    if mask.shape != inputs.shape[:2]:
        raise ValueError(f"mask must have shape {tuple(inputs.shape[:2])}, got {tuple(mask.shape)}")
    params, _, _ = model(inputs)
    log_p = mdn.log_density(params, targets)  # (T, N)
    per_sequence = torch.where(mask, log_p, torch.zeros_like(log_p)).sum(dim=0)  # (N,)
    if include_jacobian and normalizer is not None:
        per_sequence = per_sequence - mask.sum(dim=0) * normalizer.log_jacobian()
    return per_sequence


def evaluate(
    model: HandwritingModel,
    seqs: Sequence[np.ndarray | Tensor],
    batch_size: int = 32,
    *,
    normalizer: Normalizer | None = None,
) -> dict[str, float]:
    """Score whole offset sequences (the paper's Table 3 measure and per-step figures).

    Runs in evaluation mode without gradients (the model's mode is restored after),
    batching sequences of similar length together.

    Args:
        seqs: normalised offset sequences ``(T_n, 3)``, ``T_n >= 2``.
        normalizer: when given, also report the log-likelihood of the raw offsets.

    Returns:
        ``loglik_per_sequence`` (nats, mean over sequences of the summed log-likelihood,
        normalised offsets: comparable with the paper's Table 3), ``nll_per_sequence``
        (its negative), ``nats_per_step`` (total NLL / total predicted steps),
        ``num_sequences``, ``num_steps``; with a normaliser also
        ``loglik_per_sequence_raw`` (Jacobian included: density of raw whiteboard offsets).
    """
    if len(seqs) == 0:
        raise ValueError("evaluate needs at least one sequence.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size}")
    ref = _model_tensor(model)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    total = 0.0
    steps = 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                chunk = [seqs[i] for i in order[start : start + batch_size]]
                inputs, targets, mask = pad_batch(chunk)
                inputs = inputs.to(device=ref.device, dtype=ref.dtype)
                targets = targets.to(device=ref.device, dtype=ref.dtype)
                mask = mask.to(ref.device)
                total += float(sequence_log_likelihood(model, inputs, targets, mask).sum())
                steps += int(mask.sum())
    finally:
        model.train(was_training)
    count = len(seqs)
    result = {
        "loglik_per_sequence": total / count,
        "nll_per_sequence": -total / count,
        "nats_per_step": -total / steps,
        "num_sequences": float(count),
        "num_steps": float(steps),
    }
    if normalizer is not None:
        result["loglik_per_sequence_raw"] = (total - steps * normalizer.log_jacobian()) / count
    return result


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
        bias: Graves's sampling bias (:func:`hmrnn.handwriting.mdn.sample`).
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
    the paper's Figure 5 (:func:`hmrnn.handwriting.plots.segment_figure`, column 1 for
    ``z^2``). Runs without gradients in the model's current mode.

    Shape:
        points ``(P, 3)`` absolute -> ``(P, L)`` float (0/1 for binary boundaries).

    Raises:
        ValueError: if the stack has no boundary detectors (a baseline LSTM).
    """
    ref = _model_tensor(model)
    offsets = normalizer.normalize(to_offsets(np.asarray(points, dtype=np.float32)))
    inputs = torch.as_tensor(offsets, device=ref.device, dtype=ref.dtype).unsqueeze(1)
    with torch.no_grad():
        _, output, _ = model(inputs)
    if output.boundary is None:
        raise ValueError(
            "This model's recurrent stack has no boundary detectors (RNNOutput.boundary is "
            "None), so there are no boundaries to read; use an HM-LSTM."
        )
    z = output.boundary[:, 0].detach().cpu().double().numpy()  # (P - 1, L)
    return np.concatenate([np.zeros((1, z.shape[1])), z])
