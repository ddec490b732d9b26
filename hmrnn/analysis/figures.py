"""Figures of the learned hierarchy, after Figures 3 and 4 of Chung, Ahn & Bengio (2017).

:func:`boundary_map` draws the boundary states ``z`` of every layer that has a boundary
detector while the model reads a text (Figure 3: a filled cell is ``z = 1``, a boundary);
:func:`hidden_norm_map` draws the L2 norm of every layer's hidden state as a heat map
with each layer's boundaries marked (Figure 4). Both carry a title, a legend saying what a
mark means and mathtext layer names (``z^1``, ``z^2``), and wrap long texts into stacked
rows of ``width`` characters (the paper splits 270 characters into three rows of 90) on a
figure no wider than a paper's page (7.5 inches): a wide row gets narrower cells.

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
FORMATS = ("png", "pdf", "svg")
PAGE_WIDTH_IN = 7.5  # the widest figure: a paper's full text width
_MIN_WIDTH_IN = 4.5  # room for the title and legend of a short text
_CELL_IN = 0.17  # inches per character cell, at most (narrower when a row would not fit)
_ROW_IN = 0.2  # inches per layer row
_TICK_IN = 0.22  # inches below each panel for the characters
_LEFT_IN = 0.55  # the row labels
_RIGHT_IN = 0.55  # the position labels right of each row
_HEAD_IN = 0.75  # title and legend
MARK = "#1f3f77"  # a cell where z = 1
BLANK = "#f4f4f4"  # a cell where z = 0
TICK = "#e8202a"  # the boundary ticks of the hidden-norm map


def display_char(c: str) -> str:
    """The visible symbol drawn for character ``c`` (newline, space, tab, control chars)."""
    if c in _VISIBLE:
        return _VISIBLE[c]
    return c if c.isprintable() else "\u00b7"


def _check_path(path: str | Path, format: str | None = None) -> tuple[Path, str]:
    """The file to write and its format: ``format`` when given (the path gets its suffix),
    else the path's suffix."""
    p = Path(path)
    if format is not None:
        fmt = str(format).lower().lstrip(".")
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
        if p.suffix.lower() != f".{fmt}":
            p = p.with_name(p.name + f".{fmt}") if p.suffix.lower().lstrip(".") not in FORMATS \
                else p.with_suffix(f".{fmt}")
        return p, fmt
    fmt = p.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ValueError(
            f"cannot tell the image format of {str(p)!r}; give a path ending in .png, .pdf or "
            ".svg, or a format"
        )
    return p, fmt


def _check_dpi(dpi: int) -> None:
    if isinstance(dpi, bool) or not isinstance(dpi, int) or not 10 <= dpi <= 2400:
        raise ValueError(f"dpi must be an int between 10 and 2400, got {dpi!r}")


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


def _cell_width(width: int, extra_w: float) -> float:
    """Inches per character cell: :data:`_CELL_IN`, narrower when a row would not fit the page."""
    room = PAGE_WIDTH_IN - _LEFT_IN - _RIGHT_IN - extra_w
    return min(_CELL_IN, room / width)


def _new_figure(width: int, rows: int, panels: int, dpi: int, extra_w: float = 0.0) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cell = _cell_width(width, extra_w)
    fig = Figure(
        figsize=(
            max(_MIN_WIDTH_IN, width * cell + _LEFT_IN + _RIGHT_IN + extra_w),
            panels * (rows * _ROW_IN + _TICK_IN) + _HEAD_IN,
        ),
        dpi=dpi,
        layout="constrained",
    )
    FigureCanvasAgg(fig)
    return fig


def _char_fontsize(width: int, extra_w: float = 0.0) -> float:
    """A monospace size whose characters fit their cells (4.5 to 8 points)."""
    return float(np.clip(_cell_width(width, extra_w) * 72 * 1.05, 4.5, 8.0))


def _dress_axes(
    ax: Any, chars: str, start: int, stop: int, width: int, labels: list[str],
    fontsize: float,
) -> None:
    """Characters along the bottom, layer labels on the left, a thin grid between cells, the
    positions of the row's first and last characters on the right."""
    n = stop - start
    ax.set_xlim(-0.5, width - 0.5)  # a short last row keeps the cell size of the others
    ax.set_ylim(-0.5, len(labels) - 0.5)
    ax.set_xticks(range(n))
    ax.set_xticklabels(
        [display_char(c) for c in chars[start:stop]], fontfamily="DejaVu Sans Mono",
        fontsize=fontsize,
    )
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xticks(np.arange(n + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(len(labels) + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="#9a9a9a", linewidth=0.3)
    ax.tick_params(which="both", length=0, pad=1.5)
    ax.text(
        1.004, 0.5, f"$t$ = {start}\u2013{stop - 1}", transform=ax.transAxes,
        fontsize=6, va="center", ha="left", color="#555555",
    )
    for side in ax.spines.values():
        side.set_visible(False)


def _wrap(text: str, width_in: float, fontsize: float) -> str:
    """``text`` broken into lines that fit ``width_in`` inches at ``fontsize`` points."""
    import textwrap

    return "\n".join(textwrap.wrap(text, max(20, int(width_in * 72 / (fontsize * 0.55)))))


def _caption(fig: Any, top: Any, title: str, handles: list[Any], note: str) -> None:
    """The title above, the legend just above the first row ``top``, the note below."""
    width_in = fig.get_figwidth()
    fig.suptitle(_wrap(title, width_in, 10), fontsize=10)
    top.legend(
        handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0),
        ncols=len(handles) if width_in >= 6 else 1, fontsize=7, frameon=False,
        handlelength=1.2, columnspacing=1.5, borderaxespad=0.2,
    )
    fig.supxlabel(_wrap(note, width_in, 6.5), fontsize=6.5, color="#444444")


def boundary_map(
    chars: str,
    boundary: Any,
    path: str | Path,
    width: int = 90,
    *,
    format: str | None = None,
    dpi: int = 200,
    title: str | None = None,
) -> Path:
    """Draw the boundary states like the paper's Figure 3 and save the image.

    One row of cells per layer with a boundary detector (``z^1`` at the bottom; the top
    layer has none and is left out, as in the paper), one column per character, a cell
    filled dark where ``z^l_t = 1`` (a boundary: layer l's segment ends at that character,
    the layer above UPDATEs and layer l FLUSHes at the next step) and light where
    ``z^l_t = 0``; the characters along the bottom (newline as ``⏎``, space as ``␣``). A
    title and a legend say so. Texts longer than ``width`` are wrapped into stacked rows;
    right of each row, ``t = a–b``: the positions of its first and last characters.

    Args:
        chars: the text the model read, length T.
        boundary: ``(T, L)`` of 0/1, ``L >= 2``; the top column all 0.
        path: where to write; its suffix (``.png``, ``.pdf``, ``.svg``) picks the format
            unless ``format`` is given.
        width: characters per row (90 fits a page: cells narrow to keep the figure within
            7.5 inches).
        format: ``"png"``, ``"pdf"`` or ``"svg"``; the written path gets that suffix.
        dpi: dots per inch of a PNG.
        title: the figure's title (default: says what is drawn).

    Returns:
        The written path as a :class:`~pathlib.Path`.
    """
    from matplotlib.patches import Patch

    b = check_boundary(boundary)
    out, fmt = _check_path(path, format)
    _check_chars(chars, b.shape[0])
    _check_width(width)
    _check_dpi(dpi)
    rows = b.shape[1] - 1
    if rows < 1:
        raise ValueError(
            "boundary_map needs at least 2 layers; a 1-layer HM-LSTM has no boundary detector"
        )
    from matplotlib.colors import ListedColormap

    panels = _panels(b.shape[0], width)
    fig = _new_figure(width, rows, len(panels), dpi)
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    labels = [f"$z^{{{layer}}}$" for layer in range(1, rows + 1)]
    cmap = ListedColormap([BLANK, MARK])
    fontsize = _char_fontsize(width)
    for ax, (start, stop) in zip(axes, panels, strict=True):
        ax.imshow(
            b[start:stop, :rows].T,  # (L-1, n): row 0 (layer 1) drawn at the bottom
            cmap=cmap,
            vmin=0,
            vmax=1,
            origin="lower",
            aspect="auto",
            interpolation="nearest",
        )
        _dress_axes(ax, chars, start, stop, width, labels, fontsize)
    _caption(
        fig,
        axes[0],
        title or "Boundary detectors: where each layer ends a segment",
        [
            Patch(facecolor=MARK, edgecolor="#9a9a9a", linewidth=0.3,
                  label="$z^l_t = 1$: boundary, layer $l$'s segment ends with this character"),
            Patch(facecolor=BLANK, edgecolor="#9a9a9a", linewidth=0.3,
                  label="$z^l_t = 0$: no boundary"),
        ],
        f"rows: layers 1\u2013{rows} (the top layer has no detector); "
        "\u2423 space, \u23ce newline; $t$: positions in the text",
    )
    fig.savefig(out, format=fmt, dpi=dpi)
    return out


def hidden_norm_map(
    chars: str,
    hidden_norms: Any,
    boundary: Any,
    path: str | Path,
    width: int = 90,
    *,
    format: str | None = None,
    dpi: int = 200,
    title: str | None = None,
) -> Path:
    """Draw the hidden-state norms like the paper's Figure 4 and save the image.

    One heat-map row per layer (layer 1 at the bottom) coloured by ``||h^l_t||_2`` on one
    colour scale shared by all layers (colour bar on the right), with a red tick on the
    right edge of the cell of every step where that layer's boundary ``z^l_t = 1``: the
    segment of layer l ends after that character. Within a segment of the layer below,
    layer l COPYs, so its colour stays constant. A title and a legend say so; characters
    along the bottom, wrapped into rows of ``width`` like :func:`boundary_map`.

    Args:
        chars: the text the model read, length T.
        hidden_norms: ``(T, L)`` finite L2 norms of each layer's hidden state.
        boundary: ``(T, L)`` of 0/1; the top column all 0.
        path: where to write; its suffix (``.png``, ``.pdf``, ``.svg``) picks the format
            unless ``format`` is given.
        width: characters per row.
        format: ``"png"``, ``"pdf"`` or ``"svg"``; the written path gets that suffix.
        dpi: dots per inch of a PNG.
        title: the figure's title (default: says what is drawn).

    Returns:
        The written path as a :class:`~pathlib.Path`.
    """
    from matplotlib.lines import Line2D

    b = check_boundary(boundary)
    norms = np.asarray(hidden_norms, dtype=float)
    if norms.shape != b.shape:
        raise ValueError(
            f"hidden_norms must have the shape of boundary {b.shape} (time, layers), "
            f"got {norms.shape}"
        )
    if not np.isfinite(norms).all():
        raise ValueError("hidden_norms must be finite; the model produced NaN or inf")
    out, fmt = _check_path(path, format)
    _check_chars(chars, b.shape[0])
    _check_width(width)
    _check_dpi(dpi)
    num_layers = b.shape[1]
    panels = _panels(b.shape[0], width)
    colorbar_w = 0.7
    fig = _new_figure(width, num_layers, len(panels), dpi, extra_w=colorbar_w)
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    labels = [f"$\\|h^{{{layer}}}\\|$" for layer in range(1, num_layers + 1)]
    vmin, vmax = float(norms.min()), float(norms.max())
    if vmax == vmin:
        vmax = vmin + 1.0
    fontsize = _char_fontsize(width, colorbar_w)
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
            ax.vlines(ends, layer - 0.5, layer + 0.5, colors=TICK, linewidth=1.4)
        _dress_axes(ax, chars, start, stop, width, labels, fontsize)
    bar = fig.colorbar(image, ax=list(axes), fraction=0.02, pad=0.01, aspect=30)
    bar.set_label("$\\|h^l_t\\|_2$, norm of layer $l$'s hidden state", fontsize=7)
    bar.ax.tick_params(labelsize=6.5)
    _caption(
        fig,
        axes[0],
        title or "Hidden-state norms of each layer, with its boundaries",
        [Line2D([], [], color=TICK, linewidth=1.4,
                label="$z^l_t = 1$: layer $l$'s segment ends with this character")],
        f"rows: layers 1\u2013{num_layers}, colour: $\\|h^l_t\\|_2$; a colour constant "
        "within a segment of the layer below: layer $l$ COPYs (no computation)",
    )
    fig.savefig(out, format=fmt, dpi=dpi)
    return out
