"""``hmrnn plot``: draw a run's training curves (BPC, boundary rates, gradient norm, learning
rate, the boundary detectors' instruments) from its ``metrics.jsonl``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hmrnn.cli._common import echo


def cmd_plot(args: argparse.Namespace) -> int:
    """Write ``curves.png`` / ``curves.pdf`` of a run folder (or where ``--out`` says)."""
    from hmrnn.analysis.curves import plot_curves, read_metrics
    from hmrnn.data import DataError

    run = Path(args.run_dir)
    try:
        records = read_metrics(run)
    except FileNotFoundError as e:
        raise DataError(str(e)) from None
    folder = run if run.is_dir() else run.parent
    out = Path(args.out) if args.out else folder / "curves"
    written = plot_curves(records, out, formats=args.format, dpi=args.dpi,
                          title=f"Training curves: {folder.resolve().name}")
    echo(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``plot`` on ``hmrnn``'s subparsers."""
    p = sub.add_parser(
        "plot", help="draw a run's training curves from its metrics.jsonl",
        description="Draw one figure of a run's training curves from RUN_DIR/metrics.jsonl: "
                    "bits per character (train, valid), boundary rates per layer, gradient "
                    "norm (log scale), learning rate and, where logged, the slope, the "
                    "word-boundary F1 and the boundary detectors' dead shares and gradients.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR",
                   help="a run folder of `hmrnn train` (or its metrics.jsonl)")
    p.add_argument("--out", default=None,
                   help="the file to write, without suffix (default: RUN_DIR/curves)")
    p.add_argument("--format", default="png,pdf",
                   help="comma-separated formats among png, pdf, svg (default: png,pdf)")
    p.add_argument("--dpi", type=int, default=150, help="dots per inch of the PNG (default: 150)")
    p.set_defaults(func=cmd_plot)
    return p
