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
from collections.abc import Callable, Mapping
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
from hmrnn.analysis.figures import FORMATS, boundary_map, display_char, hidden_norm_map
from hmrnn.progress import progress_bar

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
.meta { color: #444; margin: 0.2em 0; }
.truth .text { border-style: dashed; }
table.scores { border-collapse: collapse; font-size: 0.9em; margin: 0.4em 0 1em; }
table.scores th, table.scores td { border: 1px solid #ccc; padding: 0.15em 0.6em;
                                   text-align: right; }
table.scores th { background: #f2f2f2; }
table.scores td.name { text-align: left; }
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


def _segments_html(chars: str, ends: np.ndarray, tips: list[str], classes: list[str] | None) -> str:
    """``chars`` as runs of alternately coloured segments, each closed where ``ends`` is set;
    every character a span with its hover text and, if given, its class."""
    parts = ['<span class="s0">']
    segment = 0
    steps = len(chars)
    for t, c in enumerate(chars):
        cls = f' class="{classes[t]}"' if classes is not None else ""
        parts.append(f'<span{cls} title="{tips[t]}">{_char_html(c)}</span>')
        if ends[t] and t + 1 < steps:
            segment += 1
            parts.append(f'</span><span class="s{segment % 2}">')
    parts.append("</span>")
    return "".join(parts)


def _computation_html(comp: Mapping[str, Any]) -> str:
    per_layer = ", ".join(str(n) for n in comp.get("updates_per_layer", []))
    return (
        f'<p class="meta"><b>Computation:</b> {comp["total_updates"]:,} layer updates '
        f'({html.escape(per_layer)} per layer, bottom first) against '
        f'{comp["stacked_rnn_updates"]:,} for a standard stacked RNN: '
        f'<b>{comp["saved_fraction"]:.1%} saved</b> (a COPY costs nothing).</p>'
    )


def _scores_html(scores: Mapping[str, Any]) -> str:
    """A table of precision, recall and F1 of every layer against every reference."""
    tolerances = [f"tol{k}" for k in scores["tolerances"]]
    head = "".join(
        f'<th colspan="3">within {k[3:]} step{"" if k == "tol1" else "s"}</th>'
        if k != "tol0" else '<th colspan="3">exactly aligned</th>'
        for k in tolerances
    )
    sub = "<th>P</th><th>R</th><th>F1</th>" * len(tolerances)
    rows = []
    for layer, entry in scores["layers"].items():
        for name, count in scores["reference_counts"].items():
            cells = "".join(
                f"<td>{entry[name][k]['precision']:.3f}</td><td>{entry[name][k]['recall']:.3f}"
                f"</td><td>{entry[name][k]['f1']:.3f}</td>"
                for k in tolerances
            )
            rows.append(
                f'<tr><td class="name">{html.escape(layer)}</td>'
                f'<td class="name">{html.escape(name)} ({count})</td>{cells}</tr>'
            )
    return (
        '<p class="meta"><b>Boundaries against the references</b> (precision, recall, F1; '
        "<code>word_last</code>: a word ends on its last character, "
        "<code>word_separator</code>: on the space after it):</p>"
        '<table class="scores"><tr><th rowspan="2">layer</th><th rowspan="2">reference '
        f"(boundaries)</th>{head}</tr><tr>{sub}</tr>" + "".join(rows) + "</table>"
    )


def html_report(
    chars: str,
    boundary: Any,
    path: str | Path,
    title: str = "HM-LSTM segments",
    ops: Any = None,
    *,
    checkpoint: str | None = None,
    source: str | None = None,
    references: Mapping[str, Any] | None = None,
    segmentation: Mapping[str, Any] | None = None,
    computation: Mapping[str, Any] | None = None,
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
        checkpoint: the name of the checkpoint that read the text, shown under the title.
        source: where the text came from (e.g. ``"synthetic language, seed 1"``), shown
            under the title.
        references: name -> ``(T,)`` bool true boundaries (e.g. the synthetic corpus's
            ``"word"`` and ``"phrase"``): each is shown as segments like a layer's, below
            the layers.
        segmentation: :func:`hmrnn.analysis.boundaries.segmentation_scores` of ``boundary``:
            a table of precision, recall and F1 of every layer against every reference.
        computation: :func:`hmrnn.analysis.boundaries.computation_summary` of ``boundary``:
            the layer updates made against a standard stacked RNN's, and the share saved.

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
        s = stats[layer]
        counts = f"UPDATE {s.update}, COPY {s.copy}, FLUSH {s.flush}"
        if layer == num_layers - 1:
            head = f"Layer {layer + 1} (top, no boundary detector): {counts}"
        else:
            fired = int(b[:, layer].sum())
            mean = "n/a" if s.mean_segment_length is None else f"{s.mean_segment_length:.2f}"
            head = f"Layer {layer + 1}: {fired} boundaries, {mean} steps per boundary; {counts}"
        text = _segments_html(chars, b[:, layer], tips, [_OP_CLASS[int(v)] for v in o[:, layer]])
        sections.append(
            f'<section id="layer{layer + 1}"><h2>{html.escape(head)}</h2>'
            f'<div class="text">{text}</div></section>'
        )
    for name, ref in (references or {}).items():
        flags = np.asarray(ref).astype(bool)
        if flags.shape != (steps,):
            raise ValueError(
                f"reference {name!r} must have shape ({steps},), got {flags.shape}"
            )
        head = f"True {name} boundaries (reference): {int(flags.sum())}"
        text = _segments_html(chars, flags, tips, None)
        sections.append(
            f'<section class="truth" id="truth-{html.escape(str(name), quote=True)}">'
            f'<h2>{html.escape(head)}</h2><div class="text">{text}</div></section>'
        )
    legend = (
        '<p class="legend">Segments alternate <span class="s0">this colour</span>'
        '<span class="s1">and this</span>; <span class="op1">faded</span>: the layer COPYs '
        '(no computation); <span class="op2">red left edge</span>: the layer FLUSHes. '
        "Hover a character for every layer's operation.</p>"
    )
    meta = []
    if checkpoint is not None:
        meta.append(f"Checkpoint: <code>{html.escape(str(checkpoint))}</code>")
    if source is not None:
        meta.append(f"Text: {html.escape(str(source))}")
    meta.append(f"{steps} characters, {num_layers} layers.")
    head_html = "".join(f'<p class="meta">{m}</p>' for m in meta)
    if computation is not None:
        head_html += _computation_html(computation)
    if segmentation is not None and segmentation.get("layers"):
        head_html += _scores_html(segmentation)
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n{head_html}\n{legend}\n" + "\n".join(sections)
        + "\n</body>\n</html>\n"
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
    checkpoint: str | None = None,
    source: str | None = None,
    format: str = "png",
    dpi: int = 200,
    progress: bool = False,
) -> dict[str, Any]:
    """Write the figures, the HTML page and a JSON summary of one read sequence.

    Files written in ``out_dir`` (created if missing): ``boundary_map.png``
    (:func:`hmrnn.analysis.figures.boundary_map`), ``hidden_norms.png``
    (:func:`hmrnn.analysis.figures.hidden_norm_map`; ``.pdf`` / ``.svg`` with ``format``),
    ``segments.html`` (:func:`html_report`, with the checkpoint's name, the text's source,
    the true boundaries when ``references`` gives them, the precision / recall / F1 table
    and the computation saved) and ``summary.json`` (the returned dict).

    Args:
        chars: the text the model read, length T.
        boundary: ``(T, L)`` of 0/1, ``L >= 2``; the top column all 0.
        hidden_norms: ``(T, L)`` L2 norm of each layer's hidden state at each step.
        out_dir: the folder to write into.
        references: name -> ``(T,)`` bool reference boundaries (e.g. the synthetic
            corpus's ``"word"`` and ``"phrase"``), or None.
        initial_boundary: ``(L,)`` of 0/1 carried in from before the text, or None for
            zeros.
        width: characters per row of the figures.
        checkpoint: the checkpoint's name (e.g. its path), shown in the HTML page and
            stored in the summary.
        source: where the text came from (e.g. ``"synthetic language, 270 characters,
            seed 1"`` or a file name), shown in the HTML page and stored in the summary.
        format: ``"png"``, ``"pdf"`` or ``"svg"``: the format of the two figures.
        dpi: dots per inch of PNG figures.
        progress: show a bar of the figures and page written (the figures of a long text
            take a while; :func:`hmrnn.progress.progress_bar`).

    Returns:
        A JSON-ready dict with keys ``steps``, ``layers``, ``initial_boundary``,
        ``operation_counts`` (one dict per layer, bottom first: ``layer`` (from 1) and the
        fields of :class:`hmrnn.analysis.boundaries.LayerStats`), ``computation``
        (:func:`hmrnn.analysis.boundaries.computation_summary`), ``boundary_rates`` (one per layer),
        ``segmentation`` (:func:`hmrnn.analysis.boundaries.segmentation_scores` when the text
        contains a word separator or ``references`` is given, else None), ``warnings``
        (:func:`hmrnn.analysis.boundaries.collapse_warnings` of the layers below the top),
        ``checkpoint`` and ``source`` (as given, or None) and ``files`` (name -> file name
        inside ``out_dir``).
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
    fmt = str(format).lower().lstrip(".")
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    files = {
        "boundary_map": f"boundary_map.{fmt}",
        "hidden_norms": f"hidden_norms.{fmt}",
        "segments": "segments.html",
        "summary": "summary.json",
    }
    computation = computation_summary(b, initial_boundary)
    writers: dict[str, Callable[[Path], Any]] = {
        "boundary_map": lambda path: boundary_map(chars, b, path, width=width, format=fmt,
                                                  dpi=dpi),
        "hidden_norms": lambda path: hidden_norm_map(chars, hidden_norms, b, path, width=width,
                                                     format=fmt, dpi=dpi),
        "segments": lambda path: html_report(
            chars, b, path, ops=ops, checkpoint=checkpoint, source=source,
            references=references, segmentation=segmentation, computation=computation),
    }
    with progress_bar(total=len(writers), desc="inspect", unit="file", enabled=progress,
                      leave=False) as bar:
        for name, write in writers.items():
            bar.set_postfix_str(files[name])
            write(out / files[name])
            bar.update(1)
    z0 = np.zeros(num_layers, dtype=int) if initial_boundary is None else initial_boundary
    summary = {
        "checkpoint": checkpoint,
        "source": source,
        "steps": steps,
        "layers": num_layers,
        "initial_boundary": [int(v) for v in np.asarray(z0)],
        "operation_counts": [{"layer": k + 1, **asdict(s)} for k, s in enumerate(stats)],
        "computation": computation,
        "boundary_rates": rates,
        "segmentation": segmentation,
        "warnings": collapse_warnings(rates[:-1]),
        "files": files,
    }
    (out / files["summary"]).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
