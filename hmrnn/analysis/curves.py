"""Training curves of a run: one figure of the panels a run's ``metrics.jsonl`` can fill.

A run folder of ``hmrnn train`` holds ``metrics.jsonl``, one JSON record a line:
``{"kind": "train" | "valid" | "test", "step": int, "time": ..., "wall": ..., ...values}``,
where a value is a number or a list of numbers, one per boundary layer (``"z"``,
``"dead0"``, ``"dead1"``, ``"zgrad"``), and ``{"kind": "event", "step": int, "event":
name, "message": ...}`` records of what happened (learning-rate drops, warnings, resume),
which the panels leave out (:mod:`hmrnn.training.metrics_log`). :func:`read_metrics` reads
it; :func:`plot_curves` draws, each panel only when the records hold its values:

* bits per character (or the loss, for a task without BPC), train and valid (test as a star);
* boundary rates per layer, ``z^1``, ``z^2``, ... (train and valid);
* the gradient norm before clipping (log scale);
* the learning rate;
* the hard sigmoid's slope;
* the detectors' dead shares (``dead0``: at or below 0 of the hard sigmoid, ``dead1``: at
  or above 1) and the gradient norm of each detector's parameters (``zgrad``);
* the word-boundary F1 of layer 1 on the validation split.

matplotlib is imported inside the functions only, through ``matplotlib.figure.Figure``
with an Agg canvas: no pyplot, the caller's backend untouched.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

FORMATS = ("png", "pdf", "svg")
_TRAIN_STYLE = {"linewidth": 1.2, "alpha": 0.75}
_VALID_STYLE = {"linewidth": 1.4, "linestyle": "--", "marker": "o", "markersize": 3.5}


def metrics_file(path: str | Path) -> Path:
    """The ``metrics.jsonl`` that ``path`` names: a run folder's, or the file itself.

    Raises:
        FileNotFoundError: ``path`` does not exist, or is a folder without ``metrics.jsonl``.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
        if not p.is_file():
            raise FileNotFoundError(
                f"{p.parent} holds no metrics.jsonl (is it a run folder of `hmrnn train`?)"
            )
        return p
    if not p.exists():
        raise FileNotFoundError(f"run folder {p} does not exist")
    return p


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl`` (``path``: the run folder or the file).

    A torn last line (a run killed while writing) is skipped; records without ``kind`` or
    ``step`` are skipped.

    Raises:
        FileNotFoundError: see :func:`metrics_file`.
        ValueError: the file is not JSON lines, or holds no record.
    """
    file = metrics_file(path)
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{file} is not a metrics.jsonl of `hmrnn train` (not UTF-8)") from None
    records: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1 and records:
                break  # the last line of a run killed while writing it
            raise ValueError(
                f"{file} line {i + 1} is not JSON; is it a metrics.jsonl of `hmrnn train`?"
            ) from None
        if isinstance(record, dict) and "kind" in record and "step" in record:
            records.append(record)
    if not records:
        raise ValueError(f"{file} holds no metrics records yet")
    return records


def _number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return math.nan
    return float(v) if math.isfinite(v) else math.nan


Records = Sequence[dict[str, Any]]


def _series(records: Records, kind: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of scalar ``key`` over the records of ``kind`` (non-finite: NaN)."""
    rows = [(r["step"], _number(r[key])) for r in records if r["kind"] == kind and key in r]
    if not rows:
        return np.zeros(0), np.zeros(0)
    steps, values = zip(*rows, strict=True)
    return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


def _layered(
    records: Sequence[dict[str, Any]], kind: str, key: str
) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values (n, layers))`` of per-layer ``key`` (a scalar is one layer)."""
    rows = []
    for r in records:
        if r["kind"] != kind or key not in r or r[key] is None:
            continue
        v = r[key] if isinstance(r[key], list | tuple) else [r[key]]
        rows.append((r["step"], [_number(x) for x in v]))
    if not rows:
        return np.zeros(0), np.zeros((0, 0))
    width = max(len(v) for _, v in rows)
    values = np.full((len(rows), width), np.nan)
    for i, (_, v) in enumerate(rows):
        values[i, : len(v)] = v
    return np.asarray([s for s, _ in rows], dtype=float), values


def _has(records: Records, key: str, kinds: Iterable[str] = ("train", "valid")) -> bool:
    wanted = set(kinds)
    return any(r["kind"] in wanted and key in r and r[key] is not None for r in records)


def _log_scale(ax: Any, values: np.ndarray) -> None:
    """A log y axis when every value is positive; plain tick labels when it spans less than
    two decades (``1.5`` rather than ``1.5 x 10^0``)."""
    finite = values[np.isfinite(values)]
    if not finite.size or finite.min() <= 0:
        return
    ax.set_yscale("log")
    if finite.max() / finite.min() < 100:
        from matplotlib.ticker import StrMethodFormatter

        ax.yaxis.set_major_formatter(StrMethodFormatter("{x:.3g}"))
        ax.yaxis.set_minor_formatter(StrMethodFormatter("{x:.2g}"))


def _layer_name(layer: int) -> str:
    return f"$z^{{{layer + 1}}}$"


def _colour(layer: int) -> str:
    return f"C{layer % 10}"


def _finish(ax: Any, title: str, ylabel: str, legend: bool = True) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.grid(True, linewidth=0.4, alpha=0.5)
    handles, _ = ax.get_legend_handles_labels()
    if legend and handles:
        ax.legend(fontsize=7.5, loc="best", framealpha=0.8)


def _panel_loss(ax: Any, records: Sequence[dict[str, Any]]) -> None:
    key = "bpc" if _has(records, "bpc", ("train", "valid", "test")) else "loss"
    for kind, style, colour in (("train", _TRAIN_STYLE, "C0"), ("valid", _VALID_STYLE, "C3")):
        steps, values = _series(records, kind, key)
        if steps.size:
            ax.plot(steps, values, color=colour, label=kind, **style)
    steps, values = _series(records, "test", key)
    if steps.size:
        ax.plot(steps, values, "*", color="k", markersize=9, label="test")
    if key == "bpc":
        _finish(ax, "Bits per character", "BPC (bits / character)")
    else:
        _finish(ax, "Loss", "loss")


def _panel_rates(ax: Any, records: Sequence[dict[str, Any]]) -> None:
    for kind, style in (("train", _TRAIN_STYLE), ("valid", _VALID_STYLE)):
        steps, values = _layered(records, kind, "z")
        for layer in range(values.shape[1]):
            ax.plot(steps, values[:, layer], color=_colour(layer),
                    label=f"{_layer_name(layer)} {kind}", **style)
    ax.set_ylim(-0.02, 1.02)
    _finish(ax, "Boundary rates per layer", "fraction of steps with $z^l = 1$")


def _panel_grad(ax: Any, records: Sequence[dict[str, Any]]) -> None:
    steps, values = _series(records, "train", "grad_norm")
    ax.plot(steps, values, color="C2", label="train", **_TRAIN_STYLE)
    _log_scale(ax, values)
    _finish(ax, "Gradient norm (before clipping)", r"$\|\nabla\|_2$", legend=False)


def _panel_lr(ax: Any, records: Sequence[dict[str, Any]]) -> None:
    steps, values = _series(records, "train", "lr")
    ax.plot(steps, values, color="C4", drawstyle="steps-post", **_TRAIN_STYLE)
    finite = values[np.isfinite(values)]
    if finite.size and finite.min() > 0 and finite.max() / finite.min() > 10:
        ax.set_yscale("log")
    else:
        from matplotlib.ticker import StrMethodFormatter

        ax.yaxis.set_major_formatter(StrMethodFormatter("{x:.3g}"))
    _finish(ax, "Learning rate", "learning rate", legend=False)


def _panel_slope(ax: Any, records: Sequence[dict[str, Any]]) -> None:
    steps, values = _series(records, "train", "slope")
    ax.plot(steps, values, color="C5", **_TRAIN_STYLE)
    _finish(ax, "Slope $a$ of the hard sigmoid", "slope $a$", legend=False)


def _instrument_kind(records: Sequence[dict[str, Any]], key: str) -> str:
    # valid records repeat the instruments last measured in training: read the train ones
    return "train" if _has(records, key, ("train",)) else "valid"


def _panel_dead(ax: Any, records: Sequence[dict[str, Any]]) -> None:
    for key, style, what in (("dead0", "-", r"$\leq 0$"), ("dead1", ":", r"$\geq 1$")):
        steps, values = _layered(records, _instrument_kind(records, key), key)
        for layer in range(values.shape[1]):
            ax.plot(steps, values[:, layer], color=_colour(layer), linestyle=style,
                    linewidth=1.3, label=f"{_layer_name(layer)}: {what}")
    ax.set_ylim(-0.02, 1.02)
    _finish(ax, "Saturated boundary detectors (hard sigmoid flat, no gradient)",
            "share of detectors")


def _panel_zgrad(ax: Any, records: Sequence[dict[str, Any]]) -> None:
    steps, values = _layered(records, _instrument_kind(records, "zgrad"), "zgrad")
    for layer in range(values.shape[1]):
        ax.plot(steps, values[:, layer], color=_colour(layer), label=_layer_name(layer),
                **_TRAIN_STYLE)
    _log_scale(ax, values)
    _finish(ax, "Gradient norm of each boundary detector", r"$\|\nabla_{\mathrm{detector}}\|_2$")


def _panel_f1(ax: Any, records: Sequence[dict[str, Any]]) -> None:
    steps, values = _series(records, "valid", "f1_word")
    ax.plot(steps, values, color="C1", label=f"{_layer_name(0)} valid", **_VALID_STYLE)
    ax.set_ylim(-0.02, 1.02)
    _finish(ax, "Word-boundary F1 of $z^1$ (tolerance 1)", "F1")


_PANELS: list[tuple[str, Callable[[Any, Sequence[dict[str, Any]]], None]]] = [
    ("loss", _panel_loss),
    ("z", _panel_rates),
    ("grad_norm", _panel_grad),
    ("lr", _panel_lr),
    ("slope", _panel_slope),
    ("f1_word", _panel_f1),
    ("dead0", _panel_dead),
    ("zgrad", _panel_zgrad),
]


def _check_formats(formats: str | Sequence[str]) -> list[str]:
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    out = []
    for f in items:
        f = f.strip().lower().lstrip(".")
        if f not in FORMATS:
            raise ValueError(
                f"unknown figure format {f!r}; choose among {', '.join(FORMATS)}"
            )
        if f not in out:
            out.append(f)
    if not out:
        raise ValueError(f"give at least one figure format ({', '.join(FORMATS)})")
    return out


def plot_curves(
    records: str | Path | Sequence[dict[str, Any]],
    out: str | Path,
    *,
    formats: str | Sequence[str] = ("png", "pdf"),
    dpi: int = 150,
    title: str | None = None,
) -> list[Path]:
    """Draw a run's training curves into one figure and save it in every format asked.

    Args:
        records: a run folder, its ``metrics.jsonl``, or the records of :func:`read_metrics`.
        out: the file to write, without suffix (``runs/x/curves`` writes ``curves.png``,
            ``curves.pdf``); a suffix that names a format is replaced.
        formats: ``"png"``, ``"pdf"``, ``"svg"``, a comma-separated string or a sequence.
        dpi: dots per inch of the PNG.
        title: the figure's title (default: "Training curves" and the run folder's name).

    Returns:
        The written paths, one per format.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if isinstance(records, str | Path):
        run = Path(records)
        title = title or f"Training curves: {(run if run.is_dir() else run.parent).name}"
        records = read_metrics(records)
    if not records:
        raise ValueError("no metrics records to plot")
    if isinstance(dpi, bool) or not isinstance(dpi, int) or not 10 <= dpi <= 2400:
        raise ValueError(f"dpi must be an int between 10 and 2400, got {dpi!r}")
    kinds = _check_formats(formats)
    panels = [
        draw for key, draw in _PANELS
        if (key == "loss" and (_has(records, "bpc", ("train", "valid", "test"))
                               or _has(records, "loss", ("train", "valid", "test"))))
        or (key in ("grad_norm", "lr", "slope") and _has(records, key, ("train",)))
        or (key == "f1_word" and _has(records, key, ("valid",)))
        or (key not in ("loss", "grad_norm", "lr", "slope", "f1_word") and _has(records, key))
    ]
    if not panels:
        raise ValueError("the metrics records hold nothing to plot (no loss, bpc or z)")
    cols = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(5.2 * cols, 3.0 * rows + 0.4), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, draw in zip(axes, panels, strict=False):
        draw(ax, records)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    last = max(int(r["step"]) for r in records)
    fig.suptitle(f"{title or 'Training curves'} (to step {last:,})", fontsize=12)
    base = Path(out)
    if base.suffix.lower().lstrip(".") in FORMATS:
        base = base.with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in kinds:
        path = base.with_name(f"{base.name}.{kind}")
        fig.savefig(path, format=kind, dpi=dpi)
        written.append(path)
    return written
