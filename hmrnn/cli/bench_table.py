"""The table ``hmrnn bench`` prints and its targets: one :class:`Row` per model and mode,
ratios against ``nn.LSTM`` (and the dense HM-LSTM), and the issues' targets checked against
them (on CUDA the GPU issue's, elsewhere the CPU ones)."""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass


@dataclass
class Row:
    """One line of the table: ``chars_per_s`` is the median; ``ratio`` this model's speed
    over nn.LSTM's and ``vs_dense`` over the dense HM-LSTM's in the same run (medians of
    the per-repeat ratios; None for the model itself)."""

    model: str
    mode: str
    sizes: str
    batch: int
    chars_per_s: float
    ratio: float | None
    vs_dense: float | None
    copy: list[float] | None
    group: str
    peak_mib: float | None = None  # CUDA train rows: peak GPU memory of a step, MiB


def paired(times: dict[str, list[float]], name: str, reference: str) -> float | None:
    """The median over repeats of ``reference``'s time over ``name``'s: ``name``'s speedup."""
    if name == reference or reference not in times:
        return None
    return statistics.median(r / t for r, t in zip(times[reference], times[name], strict=True))


def rows_of(
    times: dict[str, list[float]], chars: int, mode: str, sizes: str, batch: int,
    copy: dict[str, list[float]], group: str, peaks: dict[str, float] | None = None,
) -> list[Row]:
    """One row per timed model of ``times`` (seconds per call, by model), ``chars`` a call."""
    return [Row(name, mode, sizes, batch, chars / statistics.median(t),
                paired(times, name, "nn.LSTM"),
                paired(times, name, "HM-LSTM") if name.startswith("HM-LSTM ") else None,
                copy.get(name), group, (peaks or {}).get(name))
            for name, t in times.items()]


def format_table(rows: list[Row]) -> str:
    """The table, one row per model and mode, as Markdown (with a column of peak memory
    where any row has one: CUDA)."""
    peaks = any(r.peak_mib is not None for r in rows)
    lines = ["| model | mode | sizes | batch | chars/s | x nn.LSTM | x dense HM-LSTM "
             "| COPY share by layer |" + (" peak MiB |" if peaks else ""),
             "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |" + (" ---: |" if peaks else "")]
    for r in rows:
        ratio = "1 (ref.)" if r.ratio is None else f"{r.ratio:.2f}"
        dense = "" if r.vs_dense is None else f"{r.vs_dense:.2f}"
        copy = " / ".join(f"{c:.0%}" for c in r.copy) if r.copy is not None else ""
        peak = "" if r.peak_mib is None else f"{r.peak_mib:,.0f}"
        lines.append(f"| {r.model} | {r.mode} | {r.sizes} | {r.batch} | "
                     f"{r.chars_per_s:,.0f} | {ratio} | {dense} | {copy} |"
                     + (f" {peak} |" if peaks else ""))
    return "\n".join(lines)


def _find(rows: list[Row], group_prefix: str, mode: str, model: str) -> Row | None:
    return next((r for r in rows if r.group.startswith(group_prefix) and r.mode == mode
                 and r.model == model), None)


def _bounds(hidden: int, cuda: bool) -> dict[str, float]:
    """The targets on time per character over nn.LSTM's, per model: on CUDA the GPU
    issue's (the PTB setting below 1024 units, the text8 setting from 1024), elsewhere
    the CPU ones."""
    if not cuda:
        return {"HM-LSTM": 1.5 if hidden >= 512 else 2.0, "LN-HM-LSTM": 2.0}
    wide = hidden >= 1024
    return {"HM-LSTM": 2.0, "LN-HM-LSTM": 2.0 if wide else 2.5, "LN-LSTM": 2.0}


def targets(rows: list[Row], args: argparse.Namespace, cuda: bool = False) -> list[str]:
    """The issues' targets, each with what this run measured (on CUDA, the GPU issue's:
    also peak memory within 2x nn.LSTM's, and evaluation at least half its speed)."""
    out = []

    def check(text: str, value: float, ok: bool) -> None:
        out.append(f"- [{'x' if ok else ' '}] {text}: {value:.2f}")

    for hidden, batch in args.train:
        group = f"train {args.layers}x{hidden} b{batch}"
        reference = _find(rows, group, "train", "nn.LSTM")
        for model, bound in _bounds(hidden, cuda).items():
            row = _find(rows, group, "train", model)
            if row is not None and row.ratio:
                check(f"{group}: {model} time per char / nn.LSTM's <= {bound}", 1 / row.ratio,
                      1 / row.ratio <= bound)
            if (cuda and row is not None and reference is not None and model != "LN-LSTM"
                    and row.peak_mib is not None and reference.peak_mib):
                share = row.peak_mib / reference.peak_mib
                check(f"{group}: {model} peak memory / nn.LSTM's <= 2", share, share <= 2.0)
    for row in rows:
        if cuda and row.mode == "eval" and row.model == "HM-LSTM" and row.ratio is not None:
            check(f"{row.group}: HM-LSTM chars/s / nn.LSTM's >= 0.5", row.ratio,
                  row.ratio >= 0.5)
        if row.model == "HM-LSTM streaming" and row.ratio is not None:
            check(f"{row.group}: HM-LSTM streaming chars/s / nn.LSTM stepped's >= 1",
                  row.ratio, row.ratio >= 1.0)
        if row.model == "HM-LSTM sparse" and row.vs_dense is not None:
            check(f"{row.group}: sparse chars/s / dense HM-LSTM's >= 1.5", row.vs_dense,
                  row.vs_dense >= 1.5)
    return out


