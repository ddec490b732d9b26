"""Reading the learned hierarchy off an HM-LSTM's boundary sequence (pure numpy).

Chung, Ahn & Bengio, "Hierarchical Multiscale Recurrent Neural Networks" (ICLR 2017),
Section 4.1 ("Visualizing learned hierarchical multiscale structure"): substituting the
boundary states into Eq. 2 tells which operation (UPDATE, COPY or FLUSH) each layer
applied at each step, and counting UPDATE and FLUSH gives the update frequency of every
layer ("335 updates against 810" for a standard stacked RNN in Figure 4). This module
does that counting, and scores the boundaries against reference segmentations (word
ends in text, or the synthetic corpus's word and phrase ends).

Shape legend: T time, L layers. Every array here is indexed ``[t, l]`` with ``l = 0`` the
bottom layer; printed names count layers from 1, like the paper's ``z^1, z^2``.

Inputs:
    boundary: ``(T, L)`` of 0/1, the boundary state ``z`` of layers 1..L at every step.
        The top layer has no boundary detector, so its column must be all 0
        (docs/model.md decision 2).
    initial_boundary: ``(L,)`` of 0/1, the ``z`` carried in from before the first step
        (default zeros, docs/model.md decision 4).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NamedTuple

import numpy as np


class Op(IntEnum):
    """The operation a layer applies at one step (Eq. 2 of the paper, docs/model.md)."""

    UPDATE = 0
    COPY = 1
    FLUSH = 2


UPDATE: int = int(Op.UPDATE)
COPY: int = int(Op.COPY)
FLUSH: int = int(Op.FLUSH)

DEFAULT_SEPARATORS = " _\n"


def check_boundary(boundary: Any, name: str = "boundary") -> np.ndarray:
    """Return ``boundary`` as an ``(T, L)`` int8 array of 0/1, or raise ``ValueError``.

    Accepts any array-like of bools, ints or floats whose values are all 0 or 1 and whose
    last column (the top layer) is all 0.
    """
    b = np.asarray(boundary)
    if b.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (time, layers), got shape {b.shape}")
    if b.shape[0] == 0 or b.shape[1] == 0:
        raise ValueError(f"{name} must have at least one step and one layer, got shape {b.shape}")
    if not np.isin(b, (0, 1)).all():
        raise ValueError(
            f"{name} must hold only 0 and 1; threshold soft boundaries first (z > 0.5)"
        )
    b = b.astype(np.int8)
    if b[:, -1].any():
        raise ValueError(
            f"the top layer of {name} (its last column) must be all 0 because the top layer "
            "has no boundary detector; check that the array is (time, layers)"
        )
    return b


def _check_initial(initial_boundary: Any, num_layers: int) -> np.ndarray:
    if initial_boundary is None:
        return np.zeros(num_layers, dtype=np.int8)
    z0 = np.asarray(initial_boundary)
    if z0.shape != (num_layers,):
        raise ValueError(
            f"initial_boundary must have shape ({num_layers},), one value per layer, got {z0.shape}"
        )
    if not np.isin(z0, (0, 1)).all():
        raise ValueError("initial_boundary must hold only 0 and 1")
    z0 = z0.astype(np.int8)
    if z0[-1]:
        raise ValueError(
            "initial_boundary of the top layer must be 0 (it has no boundary detector)"
        )
    return z0


def operations(boundary: Any, initial_boundary: Any = None) -> np.ndarray:
    """The operation every layer applies at every step.

    For layer ``l`` at step ``t`` (docs/model.md, Eq. 2 of the paper)::

        z_below = 1                  for the bottom layer (z^0_t = 1), else boundary[t, l-1]
        z_prev  = boundary[t-1, l]   (initial_boundary[l] at t = 0)
        op      = FLUSH if z_prev = 1, else UPDATE if z_below = 1, else COPY

    Consequences: the bottom layer never COPYs and the top layer never FLUSHes.

    Args:
        boundary: ``(T, L)`` of 0/1; the top column all 0.
        initial_boundary: ``(L,)`` of 0/1, or None for zeros.

    Returns:
        ``(T, L)`` int8 array of ``UPDATE`` (0), ``COPY`` (1) and ``FLUSH`` (2).

    Example:
        >>> operations(np.array([[1, 0], [0, 0], [1, 0]]))[:, 1].tolist()
        [0, 1, 0]
    """
    b = check_boundary(boundary)
    z0 = _check_initial(initial_boundary, b.shape[1])
    z_below = np.ones_like(b)  # (T, L)
    z_below[:, 1:] = b[:, :-1]
    z_prev = np.concatenate([z0[None, :], b[:-1]], axis=0)  # (T, L)
    ops = np.where(z_below == 1, UPDATE, COPY)
    ops = np.where(z_prev == 1, FLUSH, ops)
    return ops.astype(np.int8)


@dataclass(frozen=True)
class LayerStats:
    """Operation counts and boundary statistics of one layer over a sequence.

    Attributes:
        update: number of UPDATE steps.
        copy: number of COPY steps (no computation, Section 3.1 of the paper).
        flush: number of FLUSH steps.
        boundary_rate: fraction of steps with ``z = 1`` in this layer (0.0 for the top).
        mean_segment_length: steps per boundary of this layer, ``T / (number of z = 1)``;
            the unfinished segment after the last boundary counts in the steps. None when
            the layer has no boundary in the sequence (always for the top layer).
    """

    update: int
    copy: int
    flush: int
    boundary_rate: float
    mean_segment_length: float | None

    @property
    def computed(self) -> int:
        """Steps at which the layer computed its state: UPDATE + FLUSH."""
        return self.update + self.flush


def operation_counts(boundary: Any, initial_boundary: Any = None) -> list[LayerStats]:
    """Per-layer operation counts and boundary statistics, bottom layer first.

    Args:
        boundary: ``(T, L)`` of 0/1; the top column all 0.
        initial_boundary: ``(L,)`` of 0/1, or None for zeros.

    Returns:
        ``L`` :class:`LayerStats`; in each, ``update + copy + flush == T``.
    """
    b = check_boundary(boundary)
    ops = operations(b, initial_boundary)
    steps = b.shape[0]
    stats = []
    for layer in range(b.shape[1]):
        fired = int(b[:, layer].sum())
        stats.append(
            LayerStats(
                update=int((ops[:, layer] == UPDATE).sum()),
                copy=int((ops[:, layer] == COPY).sum()),
                flush=int((ops[:, layer] == FLUSH).sum()),
                boundary_rate=fired / steps,
                mean_segment_length=steps / fired if fired else None,
            )
        )
    return stats


def computation_summary(boundary: Any, initial_boundary: Any = None) -> dict[str, Any]:
    """Layer updates made by the HM-LSTM against those of a standard stacked RNN.

    A layer computes its state at UPDATE and FLUSH steps; a COPY costs nothing. A
    standard stacked RNN updates every layer at every step, ``L * T`` updates. The paper's
    Figure 4 reports 270 + 56 + 9 = 335 updates against 3 * 270 = 810.

    Args:
        boundary: ``(T, L)`` of 0/1; the top column all 0.
        initial_boundary: ``(L,)`` of 0/1, or None for zeros.

    Returns:
        A JSON-ready dict with keys ``steps`` (T), ``layers`` (L), ``updates_per_layer``
        (list of L ints, bottom first), ``total_updates``, ``stacked_rnn_updates``
        (``L * T``) and ``saved_fraction`` (``1 - total_updates / stacked_rnn_updates``).
    """
    b = check_boundary(boundary)
    stats = operation_counts(b, initial_boundary)
    per_layer = [s.computed for s in stats]
    total = int(sum(per_layer))
    dense = b.shape[0] * b.shape[1]
    return {
        "steps": int(b.shape[0]),
        "layers": int(b.shape[1]),
        "updates_per_layer": per_layer,
        "total_updates": total,
        "stacked_rnn_updates": dense,
        "saved_fraction": 1.0 - total / dense,
    }


def text_boundaries(
    text: str, separators: str = DEFAULT_SEPARATORS, convention: str = "last"
) -> np.ndarray:
    """Reference word boundaries of ``text``, one flag per character.

    Two conventions, because a boundary ``z_t = 1`` means "the segment ends after the
    character read at step ``t``" (the layer FLUSHes at ``t + 1``):

    - ``"last"``: True on the last character of each word, i.e. a non-separator followed
      by a separator or by the end of the text. This is the segmentation "each word is a
      segment, the separators start the next one", the literal reading of ``z``; a model
      can only hit it by anticipating the separator it has not read yet (a language model
      predicts it, so it can).
    - ``"separator"``: True on every separator character itself: a segment ends once its
      separator has been read. This is where a causal detector can see that a word ended,
      and where the paper's first layer often fires ("when it sees a space").

    Scoring with tolerance 1 (:func:`boundary_prf`) accepts either.

    Args:
        text: the characters, length T.
        separators: the characters that separate words (default space, underscore,
            newline).
        convention: ``"last"`` or ``"separator"``.

    Returns:
        ``(T,)`` bool array.

    Example:
        >>> text_boundaries("ab c").tolist()
        [False, True, False, True]
        >>> text_boundaries("ab c", convention="separator").tolist()
        [False, False, True, False]
    """
    if not separators:
        raise ValueError("separators must name at least one character")
    is_sep = np.fromiter((c in separators for c in text), dtype=bool, count=len(text))
    if convention == "separator":
        return is_sep
    if convention == "last":
        next_is_sep = np.append(is_sep[1:], True)  # the end of the text closes a word
        return ~is_sep & next_is_sep
    raise ValueError(f"convention must be 'last' or 'separator', got {convention!r}")


def after_word_boundaries(text: str) -> np.ndarray:
    """``(T,)`` bool: True on each character that follows a word (a run of letters and
    digits) and is not part of one: the separator or punctuation after each word, where
    a causal detector can see that the word ended (``"separator"``'s place, with the
    punctuation that ends a word counted as its separator).

    Example:
        >>> after_word_boundaries("ab c.\n").tolist()
        [False, False, True, False, True, False]
    """
    in_word = np.fromiter((c.isalnum() for c in text), dtype=bool, count=len(text))
    return ~in_word & np.concatenate([[False], in_word[:-1]])


class PRF(NamedTuple):
    """Precision, recall and F1 of predicted against reference boundaries, with counts."""

    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int


def _as_flags(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of boundary flags, got shape {a.shape}")
    if not np.isin(a, (0, 1)).all():
        raise ValueError(f"{name} must hold only booleans or 0/1")
    return a.astype(bool)


def boundary_prf(pred: Any, ref: Any, tolerance: int = 0) -> PRF:
    """Score predicted boundaries against reference boundaries.

    With ``tolerance = 0`` a prediction counts as a hit only on a reference step. With
    ``tolerance = k`` predictions and references are matched one to one: predictions are
    taken in time order and each is matched to the earliest still unmatched reference
    within ``k`` steps of it. Because every window has the same width, this greedy
    matching is a maximum matching. Hits are true positives (``tp``); unmatched
    predictions are ``fp``, unmatched references ``fn``.

    Empty cases, without division warnings: precision is ``tp / (tp + fp)`` and recall
    ``tp / (tp + fn)`` when their denominators are positive. When there are no predictions
    precision is 1.0 if there are no references either and 0.0 otherwise; symmetrically,
    recall is 1.0 when there are no references and no predictions and 0.0 when there are
    none to find but some predicted. So an empty prediction scores P = R = F1 = 1 only
    against an empty reference, and 0 against anything else. F1 is the harmonic mean, 0.0
    when P + R = 0.

    Args:
        pred: ``(T,)`` bools (or 0/1), the predicted boundaries.
        ref: ``(T,)`` bools (or 0/1), the reference boundaries.
        tolerance: the largest distance in steps at which a prediction still hits.

    Returns:
        :class:`PRF`.

    Example:
        >>> boundary_prf([0, 1, 0, 0], [0, 0, 1, 0], tolerance=1).f1
        1.0
    """
    p = _as_flags(pred, "pred")
    r = _as_flags(ref, "ref")
    if p.shape != r.shape:
        raise ValueError(
            f"pred and ref must have the same length, got {p.shape[0]} and {r.shape[0]}"
        )
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, np.integer)) or tolerance < 0:
        raise ValueError(f"tolerance must be a non-negative int, got {tolerance!r}")
    pred_t = np.flatnonzero(p)
    ref_t = np.flatnonzero(r)
    tp = 0
    j = 0  # first reference not yet matched or passed
    for t in pred_t:
        while j < len(ref_t) and ref_t[j] < t - tolerance:
            j += 1
        if j < len(ref_t) and ref_t[j] <= t + tolerance:
            tp += 1
            j += 1
    fp = len(pred_t) - tp
    fn = len(ref_t) - tp
    both_empty = len(pred_t) == 0 and len(ref_t) == 0
    precision = tp / len(pred_t) if len(pred_t) else float(both_empty)
    recall = tp / len(ref_t) if len(ref_t) else float(both_empty)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return PRF(float(precision), float(recall), float(f1), int(tp), int(fp), int(fn))


def segmentation_scores(
    boundary: Any,
    text: str | None = None,
    references: Mapping[str, Any] | None = None,
    tolerance: int | Sequence[int] = (0, 1),
    separators: str = DEFAULT_SEPARATORS,
) -> dict[str, Any]:
    """Score every layer's boundaries against every reference segmentation.

    References: when ``text`` is given and contains a separator, its word boundaries
    under both conventions of :func:`text_boundaries` (named ``"word_last"`` and
    ``"word_separator"``); then every entry of ``references`` (e.g. the synthetic
    corpus's ``"word"`` and ``"phrase"``), each a ``(T,)`` bool array.

    Args:
        boundary: ``(T, L)`` of 0/1; the top column all 0. Layers 1..L-1 are scored.
        text: the characters read, length T, or None.
        references: name -> ``(T,)`` bool reference boundaries, or None.
        tolerance: one int or a sequence of ints, see :func:`boundary_prf`.
        separators: word separators for the text references.

    Returns:
        A JSON-ready dict::

            {"tolerances": [0, 1],
             "reference_counts": {"word_last": 48, ...},        # boundaries per reference
             "layers": {"layer1": {"boundaries": 61,
                                   "word_last": {"tol0": {"precision": .., "recall": ..,
                                                          "f1": .., "tp": .., "fp": ..,
                                                          "fn": ..},
                                                 "tol1": {...}},
                                   ...},
                        "layer2": {...}}}

        ``layers`` has no entry for the top layer, and is empty when there are no
        references.
    """
    b = check_boundary(boundary)
    steps = b.shape[0]
    tolerances = [tolerance] if isinstance(tolerance, (int, np.integer)) else list(tolerance)
    if not tolerances:
        raise ValueError("tolerance must name at least one tolerance")
    refs: dict[str, np.ndarray] = {}
    if text is not None:
        if len(text) != steps:
            raise ValueError(
                f"text has {len(text)} characters but boundary has {steps} steps; they must match"
            )
        if any(c in separators for c in text):
            refs["word_last"] = text_boundaries(text, separators, "last")
            refs["word_separator"] = text_boundaries(text, separators, "separator")
    for name, ref in (references or {}).items():
        flags = _as_flags(ref, f"reference {name!r}")
        if flags.shape[0] != steps:
            raise ValueError(
                f"reference {name!r} has {flags.shape[0]} steps but boundary has {steps}"
            )
        refs[name] = flags
    layers: dict[str, Any] = {}
    if refs:
        for layer in range(b.shape[1] - 1):
            entry: dict[str, Any] = {"boundaries": int(b[:, layer].sum())}
            for name, ref in refs.items():
                entry[name] = {
                    f"tol{k}": boundary_prf(b[:, layer], ref, int(k))._asdict() for k in tolerances
                }
            layers[f"layer{layer + 1}"] = entry
    return {
        "tolerances": [int(k) for k in tolerances],
        "reference_counts": {name: int(ref.sum()) for name, ref in refs.items()},
        "layers": layers,
    }


def format_scores(scores: Mapping[str, Any]) -> str:
    """Render :func:`segmentation_scores` output as a fixed-width table, one line a pair.

    Example line: ``layer1  word_last       tol0  P 0.512  R 0.604  F1 0.554``.
    """
    lines = []
    for layer, entry in scores["layers"].items():
        for name in scores["reference_counts"]:
            for tol, prf in entry[name].items():
                lines.append(
                    f"{layer:<7} {name:<15} {tol:<5} P {prf['precision']:.3f}  "
                    f"R {prf['recall']:.3f}  F1 {prf['f1']:.3f}"
                )
    return "\n".join(lines)


def collapse_warnings(
    boundary_rates: Sequence[float], low: float = 0.01, high: float = 0.99
) -> list[str]:
    """Messages for layers whose boundary rate has collapsed toward 0 or 1.

    Args:
        boundary_rates: the boundary rate of each layer that has a boundary detector,
            bottom first (layers 1..L-1: leave out the top layer, whose rate is always 0).
        low: a rate at or below this has collapsed toward 0: the layer (almost) never
            fires, so the layer above it (almost) never receives input.
        high: a rate at or above this has collapsed toward 1: the layer fires (almost)
            every step, so it is flushed every step and the layer above runs at the
            same timescale: no hierarchy.

    Returns:
        One full-sentence message per collapsed layer (empty when none has collapsed).
    """
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"need 0 <= low < high <= 1, got low={low} and high={high}")
    messages = []
    for layer, rate in enumerate(boundary_rates, start=1):
        if rate <= low:
            messages.append(
                f"Layer {layer} fires on {rate:.1%} of steps (at most {low:.1%}): its boundary "
                f"detector has collapsed toward 0, so layer {layer + 1} above it is starved "
                "of input and mostly COPYs."
            )
        elif rate >= high:
            messages.append(
                f"Layer {layer} fires on {rate:.1%} of steps (at least {high:.1%}): its "
                f"boundary detector has collapsed toward 1, so layer {layer} is flushed "
                f"every step and layer {layer + 1} updates every step: no hierarchy."
            )
    return messages
