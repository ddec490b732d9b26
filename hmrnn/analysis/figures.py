"""Figures of the learned hierarchy, after Figures 3 and 4 of Chung, Ahn & Bengio (2017).

:func:`boundary_map` draws the boundary states ``z`` of every layer that has a boundary
detector while the model reads a text (Figure 3: lit cells are ``z = 1``);
:func:`hidden_norm_map` draws the L2 norm of every layer's hidden state as a heat map
with each layer's boundaries marked (Figure 4). Long texts are wrapped into stacked
panels of ``width`` characters, as the paper splits 270 characters into three rows of 90.

matplotlib is imported inside the functions only, and only through
``matplotlib.figure.Figure`` with an Agg canvas: nothing here touches pyplot or the
caller's backend, and no figure is left registered anywhere.

Shape legend: T time, L layers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hmrnn.analysis.boundaries import check_boundary

# Characters that would be invisible or break the layout, shown as visible symbols.
_VISIBLE = {"\n": "\u23ce", " ": "\u2423", "\t": "\u21e5"}
_FORMATS = {".png": "png", ".svg": "svg"}
_CELL_IN = 0.17  # inches per character cell
_ROW_IN = 0.24  # inches per layer row
_TICK_IN = 0.32  # inches below each panel for the characters


def display_char(c: str) -> str:
    """The visible symbol drawn for character ``c`` (newline, space, tab, control chars)."""
    if c in _VISIBLE:
        return _VISIBLE[c]
    return c if c.isprintable() else "\u00b7"


def _check_path(path: str | Path) -> tuple[Path, str]:
    p = Path(path)
    fmt = _FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"cannot tell the image format of {str(p)!r}; give a path ending in .png or .svg"
        )
    return p, fmt


def _check_chars(chars: str, steps: int) -> None:
    if len(chars) != steps:
        raise ValueError(
            f"chars has {len(chars)} characters but the arrays have {steps} steps; they must match"
        )


def _check_width(width: int) -> None:
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive int (characters per row), got {width!r}")


def _panels(steps: int, width: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each wrapped row of at most ``width`` steps."""
    return [(s, min(s + width, steps)) for s in range(0, steps, width)]


def _new_figure(width: int, rows: int, panels: int, extra_w: float = 0.0) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(
        figsize=(width * _CELL_IN + 1.0 + extra_w, panels * (rows * _ROW_IN + _TICK_IN) + 0.2),
        dpi=150,
        layout="constrained",
    )
    FigureCanvasAgg(fig)
    return fig


def _dress_axes(ax: Any, chars: str, start: int, stop: int, width: int, labels: list[str]) -> None:
    """Characters along the bottom, layer labels on the left, a thin grid between cells."""
    n = stop - start
    ax.set_xlim(-0.5, width - 0.5)  # a short last row keeps the cell size of the others
    ax.set_ylim(-0.5, len(labels) - 0.5)
    ax.set_xticks(range(n))
    ax.set_xticklabels(
        [display_char(c) for c in chars[start:stop]], fontfamily="DejaVu Sans Mono", fontsize=8
    )
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xticks(np.arange(n + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(len(labels) + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="#777777", linewidth=0.4)
    ax.tick_params(which="both", length=0, pad=2)
    ax.text(
        1.002, 0.5, f"{start}", transform=ax.transAxes, fontsize=6, va="center", color="#555555"
    )
    for side in ax.spines.values():
        side.set_visible(False)


def boundary_map(chars: str, boundary: Any, path: str | Path, width: int = 90) -> Path:
    """Draw the boundary states like the paper's Figure 3 and save the image.

    One row of cells per layer with a boundary detector (layers 1..L-1, bottom layer at
    the bottom; the top layer has none and is left out, as in the paper), one column per
    character, a cell white where ``z = 1`` and black where ``z = 0``, the characters
    along the bottom (newline as ``⏎``, space as ``␣``). Texts longer than ``width`` are
    wrapped into stacked panels; the small number right of each panel is the step of its
    first character.

    Args:
        chars: the text the model read, length T.
        boundary: ``(T, L)`` of 0/1, ``L >= 2``; the top column all 0.
        path: where to write; ``.png`` writes a PNG, ``.svg`` an SVG.
        width: characters per panel.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    b = check_boundary(boundary)
    out, fmt = _check_path(path)
    _check_chars(chars, b.shape[0])
    _check_width(width)
    rows = b.shape[1] - 1
    if rows < 1:
        raise ValueError(
            "boundary_map needs at least 2 layers; a 1-layer HM-LSTM has no boundary detector"
        )
    panels = _panels(b.shape[0], width)
    fig = _new_figure(width, rows, len(panels))
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    labels = [f"$z^{{{layer}}}$" for layer in range(1, rows + 1)]
    for ax, (start, stop) in zip(axes, panels, strict=True):
        ax.imshow(
            b[start:stop, :rows].T,  # (L-1, n): row 0 (layer 1) drawn at the bottom
            cmap="gray",
            vmin=0,
            vmax=1,
            origin="lower",
            aspect="auto",
            interpolation="nearest",
        )
        _dress_axes(ax, chars, start, stop, width, labels)
    fig.savefig(out, format=fmt)
    return out


def hidden_norm_map(
    chars: str, hidden_norms: Any, boundary: Any, path: str | Path, width: int = 90
) -> Path:
    """Draw the hidden-state norms like the paper's Figure 4 and save the image.

    One heat-map row per layer (bottom layer at the bottom) coloured by ``||h^l_t||_2``
    on one colour scale shared by all layers (colorbar on the right), with a red tick on
    the right edge of the cell of every step where that layer's boundary ``z^l_t = 1``:
    the segment of layer l ends after that character. Within a segment of the layer
    below, layer l COPYs, so its colour stays constant. Characters along the bottom,
    wrapped into panels of ``width`` like :func:`boundary_map`.

    Args:
        chars: the text the model read, length T.
        hidden_norms: ``(T, L)`` finite L2 norms of each layer's hidden state.
        boundary: ``(T, L)`` of 0/1; the top column all 0.
        path: where to write; ``.png`` writes a PNG, ``.svg`` an SVG.
        width: characters per panel.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    b = check_boundary(boundary)
    norms = np.asarray(hidden_norms, dtype=float)
    if norms.shape != b.shape:
        raise ValueError(
            f"hidden_norms must have the shape of boundary {b.shape} (time, layers), "
            f"got {norms.shape}"
        )
    if not np.isfinite(norms).all():
        raise ValueError("hidden_norms must be finite; the model produced NaN or inf")
    out, fmt = _check_path(path)
    _check_chars(chars, b.shape[0])
    _check_width(width)
    num_layers = b.shape[1]
    panels = _panels(b.shape[0], width)
    fig = _new_figure(width, num_layers, len(panels), extra_w=0.8)
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    labels = [f"$\\|h^{{{layer}}}\\|$" for layer in range(1, num_layers + 1)]
    vmin, vmax = float(norms.min()), float(norms.max())
    if vmax == vmin:
        vmax = vmin + 1.0
    image = None
    for ax, (start, stop) in zip(axes, panels, strict=True):
        image = ax.imshow(
            norms[start:stop].T,  # (L, n)
            cmap="viridis",
            vmin=vmin,
            vmax=vmax,
            origin="lower",
            aspect="auto",
            interpolation="nearest",
        )
        for layer in range(num_layers - 1):
            ends = np.flatnonzero(b[start:stop, layer]) + 0.5
            ax.vlines(ends, layer - 0.5, layer + 0.5, colors="#ff2a2a", linewidth=2.0)
        _dress_axes(ax, chars, start, stop, width, labels)
    fig.colorbar(image, ax=list(axes), fraction=0.015, pad=0.01, label="$\\|h\\|_2$")
    fig.savefig(out, format=fmt)
    return out
