"""A browsable report of the segments an HM-LSTM found in a text, and the ``inspect`` bundle.

:func:`html_report` writes one self-contained HTML page (inline CSS, no scripts, nothing
fetched) that shows the text once per layer, each layer's segments as alternately
coloured runs, and on hover the operation (UPDATE / COPY / FLUSH) every layer applied
at that character. :func:`inspect_sequence` writes that page together with the two
figures of :mod:`hmrnn.analysis.figures` and a JSON summary of the counts and scores of
:mod:`hmrnn.analysis.boundaries`.

Shape legend: T time, L layers.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from hmrnn.analysis.boundaries import (
    DEFAULT_SEPARATORS,
    Op,
    check_boundary,
    collapse_warnings,
    computation_summary,
    operation_counts,
    operations,
    segmentation_scores,
)
from hmrnn.analysis.figures import boundary_map, display_char, hidden_norm_map

_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
.legend span { padding: 0 0.4em; margin-right: 0.6em; }
.text { font-family: "DejaVu Sans Mono", monospace; white-space: pre-wrap;
        line-height: 1.9; font-size: 15px; border: 1px solid #ccc; padding: 0.6em; }
.s0 { background: #cfe6ff; }
.s1 { background: #ffe0b8; }
.op1 { opacity: 0.35; }
.op2 { box-shadow: inset 2px 0 0 #d11; }
h2 { font-size: 1.05em; margin-bottom: 0.3em; }
"""

_OP_CLASS = {int(op): f"op{int(op)}" for op in Op}


def _char_html(c: str) -> str:
    """The escaped content drawn for one character; a newline gets a visible mark."""
    if c == "\n":
        return "\u23ce\n"
    return html.escape(c)


def _check_ops(ops: Any, shape: tuple[int, int]) -> np.ndarray:
    o = np.asarray(ops)
    if o.shape != shape:
        raise ValueError(f"ops must have the shape of boundary {shape}, got {o.shape}")
    if not np.isin(o, [int(op) for op in Op]).all():
        raise ValueError("ops must hold only the codes UPDATE (0), COPY (1) and FLUSH (2)")
    return o.astype(np.int8)


def html_report(
    chars: str,
    boundary: Any,
    path: str | Path,
    title: str = "HM-LSTM segments",
    ops: Any = None,
) -> Path:
    """Write a self-contained HTML page of every layer's segments of ``chars``.

    The text appears once per layer, top layer first. A segment of layer l is a run of
    characters ending at a boundary ``z^l = 1`` (the text's end closes the last one);
    consecutive segments alternate between two background colours, so the top layer,
    which has no boundary detector, is one segment. Within a layer, characters at which
    that layer COPYs are faded and characters at which it FLUSHes carry a red left edge.
    Hovering a character shows its step and the operation of every layer there (the
    ``title`` attribute). Every character is HTML-escaped; a newline is drawn as ``⏎``
    followed by a line break.

    Args:
        chars: the text the model read, length T.
        boundary: ``(T, L)`` of 0/1; the top column all 0.
        path: the ``.html`` file to write.
        title: the page title and heading.
        ops: ``(T, L)`` operation codes from :func:`hmrnn.analysis.boundaries.operations`, or None
            to compute them from ``boundary`` with a zero initial boundary.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    b = check_boundary(boundary)
    steps, num_layers = b.shape
    if len(chars) != steps:
        raise ValueError(
            f"chars has {len(chars)} characters but boundary has {steps} steps; they must match"
        )
    o = operations(b) if ops is None else _check_ops(ops, b.shape)
    tips = [
        html.escape(
            f"step {t} {display_char(c)}\n"
            + "\n".join(f"layer {k + 1}: {Op(int(o[t, k])).name}" for k in range(num_layers)),
            quote=True,
        )
        for t, c in enumerate(chars)
    ]
    stats = operation_counts(b)
    sections = []
    for layer in reversed(range(num_layers)):
        parts = []
        segment = 0
        parts.append('<span class="s0">')
        for t, c in enumerate(chars):
            parts.append(
                f'<span class="{_OP_CLASS[int(o[t, layer])]}" title="{tips[t]}">'
                f"{_char_html(c)}</span>"
            )
            if b[t, layer] and t + 1 < steps:
                segment += 1
                parts.append(f'</span><span class="s{segment % 2}">')
        parts.append("</span>")
        s = stats[layer]
        counts = f"UPDATE {s.update}, COPY {s.copy}, FLUSH {s.flush}"
        if layer == num_layers - 1:
            head = f"Layer {layer + 1} (top, no boundary detector): {counts}"
        else:
            fired = int(b[:, layer].sum())
            mean = "n/a" if s.mean_segment_length is None else f"{s.mean_segment_length:.2f}"
            head = f"Layer {layer + 1}: {fired} boundaries, {mean} steps per boundary; {counts}"
        sections.append(
            f'<section id="layer{layer + 1}"><h2>{html.escape(head)}</h2>'
            f'<div class="text">{"".join(parts)}</div></section>'
        )
    legend = (
        '<p class="legend">Segments alternate <span class="s0">this colour</span>'
        '<span class="s1">and this</span>; <span class="op1">faded</span>: the layer COPYs '
        '(no computation); <span class="op2">red left edge</span>: the layer FLUSHes. '
        "Hover a character for every layer's operation.</p>"
    )
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n{legend}\n" + "\n".join(sections) + "\n</body>\n</html>\n"
    )
    out = Path(path)
    out.write_text(page, encoding="utf-8")
    return out


def inspect_sequence(
    chars: str,
    boundary: Any,
    hidden_norms: Any,
    out_dir: str | Path,
    *,
    references: Mapping[str, Any] | None = None,
    initial_boundary: Any = None,
    width: int = 90,
) -> dict[str, Any]:
    """Write the figures, the HTML page and a JSON summary of one read sequence.

    Files written in ``out_dir`` (created if missing): ``boundary_map.png``
    (:func:`hmrnn.analysis.figures.boundary_map`), ``hidden_norms.png``
    (:func:`hmrnn.analysis.figures.hidden_norm_map`), ``segments.html`` (:func:`html_report`) and
    ``summary.json`` (the returned dict).

    Args:
        chars: the text the model read, length T.
        boundary: ``(T, L)`` of 0/1, ``L >= 2``; the top column all 0.
        hidden_norms: ``(T, L)`` L2 norm of each layer's hidden state at each step.
        out_dir: the folder to write into.
        references: name -> ``(T,)`` bool reference boundaries (e.g. the synthetic
            corpus's ``"word"`` and ``"phrase"``), or None.
        initial_boundary: ``(L,)`` of 0/1 carried in from before the text, or None for
            zeros.
        width: characters per panel of the figures.

    Returns:
        A JSON-ready dict with keys ``steps``, ``layers``, ``initial_boundary``,
        ``operation_counts`` (one dict per layer, bottom first: ``layer`` (from 1) and the
        fields of :class:`hmrnn.analysis.boundaries.LayerStats`), ``computation``
        (:func:`hmrnn.analysis.boundaries.computation_summary`), ``boundary_rates`` (one per layer),
        ``segmentation`` (:func:`hmrnn.analysis.boundaries.segmentation_scores` when the text
        contains a word separator or ``references`` is given, else None), ``warnings``
        (:func:`hmrnn.analysis.boundaries.collapse_warnings` of the layers below the top) and
        ``files`` (name -> file name inside ``out_dir``).
    """
    b = check_boundary(boundary)
    steps, num_layers = b.shape
    if num_layers < 2:
        raise ValueError(
            "inspect_sequence needs at least 2 layers; a 1-layer HM-LSTM has no boundary detector"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ops = operations(b, initial_boundary)
    stats = operation_counts(b, initial_boundary)
    rates = [s.boundary_rate for s in stats]
    has_separator = any(c in DEFAULT_SEPARATORS for c in chars)
    segmentation = (
        segmentation_scores(b, text=chars, references=references)
        if has_separator or references
        else None
    )
    files = {
        "boundary_map": "boundary_map.png",
        "hidden_norms": "hidden_norms.png",
        "segments": "segments.html",
        "summary": "summary.json",
    }
    boundary_map(chars, b, out / files["boundary_map"], width=width)
    hidden_norm_map(chars, hidden_norms, b, out / files["hidden_norms"], width=width)
    html_report(chars, b, out / files["segments"], ops=ops)
    z0 = np.zeros(num_layers, dtype=int) if initial_boundary is None else initial_boundary
    summary = {
        "steps": steps,
        "layers": num_layers,
        "initial_boundary": [int(v) for v in np.asarray(z0)],
        "operation_counts": [{"layer": k + 1, **asdict(s)} for k, s in enumerate(stats)],
        "computation": computation_summary(b, initial_boundary),
        "boundary_rates": rates,
        "segmentation": segmentation,
        "warnings": collapse_warnings(rates[:-1]),
        "files": files,
    }
    (out / files["summary"]).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
