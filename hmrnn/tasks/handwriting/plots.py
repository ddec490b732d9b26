"""Drawings of pen trajectories and the paper's Figure 5 (Chung, Ahn & Bengio 2017).

Figure 5 draws one validation line twice, split into coloured segments: on top the
segments end at the pen-ups (the strokes), at the bottom they end where the HM-LSTM's
second-layer boundary detector ``z^2`` fired. :func:`boundary_agreement` scores how well
the two segmentations agree.

Points are absolute ``(x, y, pen_up)`` in whiteboard units, where y grows downwards, so
every drawing flips the y axis. A line is drawn from point ``t`` to ``t + 1`` unless
``pen_up[t] = 1`` (the pen leaves the board after point ``t``).

matplotlib is imported inside the functions only, through ``matplotlib.figure.Figure``
with an Agg canvas: nothing here touches pyplot or the caller's backend.

Shape legend: T time (points).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from hmrnn.analysis.boundaries import PRF, boundary_prf
from hmrnn.tasks.handwriting.data import to_points

_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
_WIDTH_IN = 10.0  # inches of one drawing's width


def _check_path(path: str | Path) -> tuple[Path, str]:
    p = Path(path)
    fmt = _FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"Cannot tell the image format of {str(p)!r}; give a path ending in .png, .svg or .pdf."
        )
    return p, fmt


def _as_array(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.size and not np.isfinite(a).all():
        raise ValueError(f"{name} holds non-finite values.")
    return a


def _check_points(points: Any, name: str = "points") -> np.ndarray:
    a = _as_array(points, name)
    if a.ndim != 2 or a.shape[1] not in (2, 3) or a.shape[0] < 1:
        raise ValueError(f"{name} must have shape (T, 3) or (T, 2) with T >= 1, got {a.shape}.")
    return a


def _check_flags(flags: Any, steps: int, name: str) -> np.ndarray:
    a = _as_array(flags, name)
    if a.shape != (steps,):
        raise ValueError(f"{name} must have shape ({steps},), one flag per point, got {a.shape}.")
    return a > 0.5


def _segments(xy: np.ndarray, pen_up: np.ndarray) -> list[np.ndarray]:
    """Line pieces, each ``(2, 2)``, from point t to t + 1 for every t with the pen down."""
    keep = ~pen_up[:-1]
    return list(np.stack([xy[:-1][keep], xy[1:][keep]], axis=1))


def _single_points(pen_up: np.ndarray) -> np.ndarray:
    """``(T,)`` bool: the points that are a whole stroke (e.g. some i-dots), which no line
    piece shows, so they are drawn as dots."""
    return pen_up & np.concatenate([[True], pen_up[:-1]])


def _new_figure(xy: np.ndarray, panels: int) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    span = np.ptp(xy, axis=0) if len(xy) else np.ones(2)
    ratio = float(np.clip(span[1] / max(span[0], 1e-9), 0.05, 2.0))
    fig = Figure(
        figsize=(_WIDTH_IN, panels * (_WIDTH_IN * ratio + 0.4)), dpi=100, layout="constrained"
    )
    FigureCanvasAgg(fig)
    return fig


def _dress(ax: Any, xy: np.ndarray) -> None:
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    pad = 0.02 * max(float(np.max(hi - lo)), 1.0)
    ax.set_xlim(lo[0] - pad, hi[0] + pad)
    ax.set_ylim(hi[1] + pad, lo[1] - pad)  # y grows downwards on the whiteboard
    ax.set_aspect("equal")
    ax.set_axis_off()


def draw_strokes(
    points: Any,
    path: str | Path,
    *,
    offsets: bool = False,
    linewidth: float = 1.5,
    title: str | None = None,
) -> Path:
    """Draw one pen trajectory, lifting the pen after every pen-up point.

    Args:
        points: ``(T, 3)`` absolute ``(x, y, pen_up)``, or with ``offsets=True`` ``(T, 3)``
            offsets ``(dx, dy, pen)`` (raw or normalised: only the shape of the drawing
            changes), which are summed from the origin first.
        path: a ``.png``, ``.svg`` or ``.pdf`` file to write (its folder must exist).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    from matplotlib.collections import LineCollection

    p, fmt = _check_path(path)
    a = _check_points(points)
    if a.shape[1] != 3:
        raise ValueError(f"draw_strokes needs (T, 3) points with a pen column, got {a.shape}.")
    if offsets:
        a = to_points(a)
    xy, pen_up = a[:, :2], a[:, 2] > 0.5
    fig = _new_figure(xy, 1)
    ax = fig.subplots()
    ax.add_collection(
        LineCollection(
            _segments(xy, pen_up), colors="black", linewidths=linewidth, capstyle="round"
        )
    )
    dots = xy[_single_points(pen_up)]
    ax.scatter(dots[:, 0], dots[:, 1], s=linewidth**2, c="black")
    _dress(ax, xy)
    if title:
        ax.set_title(title)
    fig.savefig(p, format=fmt)
    return p


def segment_figure(
    points: Any,
    pen_up: Any,
    boundary_layer2: Any,
    path: str | Path,
    *,
    linewidth: float = 2.0,
) -> Path:
    """The paper's Figure 5: one line drawn twice, coloured by segments.

    Top: a segment ends at every pen-up point (each stroke gets one colour). Bottom: a
    segment ends at every point where ``z^2 = 1``. The piece from point ``t`` to ``t + 1``
    takes the colour of the segment point ``t + 1`` belongs to, so a boundary inside a
    stroke starts the new colour on the next piece; pieces after a pen-up are never drawn.

    Args:
        points: ``(T, 2)`` or ``(T, 3)`` absolute coordinates (only x and y are used).
        pen_up: ``(T,)`` 0/1, the pen-up flag of every point.
        boundary_layer2: ``(T,)`` 0/1 (or probabilities, thresholded at 0.5), the model's
            second-layer boundary on every point, e.g.
            ``line_boundaries(model, points, normalizer)[:, 1]``.
        path: a ``.png``, ``.svg`` or ``.pdf`` file to write.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    from matplotlib import colormaps
    from matplotlib.collections import LineCollection

    p, fmt = _check_path(path)
    xy = _check_points(points)[:, :2]
    pen = _check_flags(pen_up, len(xy), "pen_up")
    z = _check_flags(boundary_layer2, len(xy), "boundary_layer2")
    tab10 = colormaps["tab10"]  # qualitative: tab10(i) is its i-th colour (RGBA)
    palette = [tab10(i) for i in range(tab10.N)]
    fig = _new_figure(xy, 2)
    rows = (("segments ended by pen-ups", pen), ("segments ended by z^2 = 1", z))
    for ax, (label, ends) in zip(fig.subplots(2, 1), rows, strict=True):
        segment = np.concatenate([[0], np.cumsum(ends[:-1])])  # (T,) segment of each point
        keep = ~pen[:-1]
        colours = [palette[s % len(palette)] for s in segment[1:][keep]]
        ax.add_collection(
            LineCollection(
                _segments(xy, pen), colors=colours, linewidths=linewidth, capstyle="round"
            )
        )
        single = _single_points(pen)
        ax.scatter(
            xy[single, 0],
            xy[single, 1],
            s=linewidth**2,
            c=[palette[s % len(palette)] for s in segment[single]],
        )
        _dress(ax, xy)
        ax.set_title(f"{label} ({int(ends.sum())})", fontsize=10)
    fig.savefig(p, format=fmt)
    return p


def boundary_agreement(z: Any, pen_up: Any, tolerance: int = 1) -> PRF:
    """Precision, recall and F1 of the boundaries ``z`` against the pen-ups.

    Both are per point, aligned as :func:`hmrnn.tasks.handwriting.model.line_boundaries`
    aligns them: ``z[t]`` is the boundary the model set when it read the offset arriving
    at point ``t``, which carries ``pen_up[t]``. A boundary that fires on the very step
    that reads a pen-up is a hit at distance 0; one that fires a step later, on reading
    the jump to the next stroke, is at distance 1 (the default tolerance). Matching is
    one to one, as :func:`hmrnn.analysis.boundaries.boundary_prf` does it (this calls it).

    Args:
        z: ``(T,)`` 0/1 boundaries (probabilities are thresholded at 0.5).
        pen_up: ``(T,)`` 0/1 pen-up flags.
        tolerance: the largest distance in points at which a boundary still hits.

    Returns:
        :class:`hmrnn.analysis.boundaries.PRF` ``(precision, recall, f1, tp, fp, fn)``.
    """
    pred = _as_array(z, "z")
    if pred.ndim != 1:
        raise ValueError(f"z must have shape (T,), got {pred.shape}.")
    ref = _check_flags(pen_up, pred.shape[0], "pen_up")
    return boundary_prf((pred > 0.5).astype(np.int8), ref.astype(np.int8), tolerance)
