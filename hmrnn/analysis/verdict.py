"""Did a hierarchy form? The boundaries of a whole split, summed up in numbers and words.

:func:`hierarchy_summary` scores each boundary layer against each known segmentation
under both alignment conventions (the boundary on a segment's last character, or on the
step after it, where a left-to-right reader first sees that the segment has ended; see
:func:`hmrnn.analysis.boundaries.text_boundaries`) and keeps the better; with the rates
and the computation saved, :func:`hierarchy_verdict` says in a few sentences whether a
hierarchy formed. Boundaries are ``(T, L)`` of 0/1, the top column all 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hmrnn.analysis.boundaries import boundary_prf, check_boundary, computation_summary

COLLAPSED_BELOW = 0.02
COLLAPSED_ABOVE = 0.98
"""A layer firing at fewer (more) steps than this has collapsed to COPY (UPDATE)."""
MATCHED = 0.5
"""Below this exact F1 against every known segmentation, a layer's segments are not those."""


def _after(ref: np.ndarray) -> np.ndarray:
    """The step after each reference boundary (the separator convention)."""
    shifted = np.zeros_like(ref)
    shifted[1:] = ref[:-1]
    return shifted


def hierarchy_summary(
    boundary: Any, references: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Rates, computation saved and, per layer and reference, the exact F1 of the better
    alignment convention.

    Args:
        boundary: ``(T, L)`` of 0/1.
        references: name -> ``(T,)`` bools, each reference's boundaries on the last
            character of its segments (e.g. the synthetic corpus's ``"word"``, ``"phrase"``).

    Returns:
        ``{"rates": [L-1 floats], "saved_fraction": float, "f1": {"layer1": {"word":
        {"f1": .., "convention": "last" | "separator"}, ...}, ...}}``.
    """
    b = check_boundary(boundary)
    f1: dict[str, dict[str, dict[str, Any]]] = {}
    for l in range(b.shape[1] - 1):
        scores = {}
        for name, ref in (references or {}).items():
            ref = np.asarray(ref, dtype=bool)
            last = boundary_prf(b[:, l], ref).f1
            separator = boundary_prf(b[:, l], _after(ref)).f1
            scores[name] = ({"f1": last, "convention": "last"} if last >= separator
                            else {"f1": separator, "convention": "separator"})
        f1[f"layer{l + 1}"] = scores
    return {
        "rates": [float(r) for r in b[:, :-1].mean(axis=0)],
        "saved_fraction": float(computation_summary(b)["saved_fraction"]),
        "f1": f1,
    }


def hierarchy_verdict(summary: Mapping[str, Any], names: Sequence[str] = ()) -> list[str]:
    """Sentences on :func:`hierarchy_summary`'s result: whether a hierarchy formed (no
    layer collapsed, and each layer fires less often than the one below it, so that it
    segments the segments below), then per layer its rate and best-matching reference
    among ``names`` (all references when empty), and the computation saved."""
    rates: list[float] = list(summary["rates"])
    problems = []
    for l, rate in enumerate(rates):
        if rate < COLLAPSED_BELOW:
            problems.append(f"layer {l + 1} almost never fires ({rate:.1%} of steps): "
                            f"the layers above it barely update")
        elif rate > COLLAPSED_ABOVE:
            problems.append(f"layer {l + 1} fires at {rate:.1%} of steps: it updates the "
                            f"layer above almost every step")
    for l in range(1, len(rates)):
        if rates[l] >= rates[l - 1] and COLLAPSED_BELOW <= rates[l] <= COLLAPSED_ABOVE:
            problems.append(f"layer {l + 1} fires as often as layer {l} "
                            f"({rates[l]:.1%} against {rates[l - 1]:.1%})")
    lines = (["No hierarchy formed: " + "; ".join(problems) + "."] if problems
             else ["A hierarchy formed: each layer fires less often than the one below."])
    best = [max((s["f1"] for k, s in summary["f1"].get(f"layer{l + 1}", {}).items()
                 if not names or k in names), default=None) for l in range(len(rates))]
    if not problems and best and all(f is not None and f < MATCHED for f in best):
        lines[0] += (f" But no layer's boundaries line up with a known segmentation (best "
                     f"exact F1 {max(f for f in best if f is not None):.2f}): the segments are "
                     f"not words or phrases.")
    for l, rate in enumerate(rates):
        scores = summary["f1"].get(f"layer{l + 1}", {})
        picked = {k: v for k, v in scores.items() if not names or k in names}
        line = f"Layer {l + 1} fires at {rate:.1%} of characters"
        if picked:
            best = max(picked, key=lambda k: picked[k]["f1"])
            where = ("on their last character" if picked[best]["convention"] == "last"
                     else "one step after them")
            line += f"; it marks {best} ends best (exact F1 {picked[best]['f1']:.2f}, {where})"

        lines.append(line + ".")
    lines.append(f"{summary['saved_fraction']:.1%} of the layer updates a stacked RNN makes "
                 f"were skipped (COPY).")
    return lines
