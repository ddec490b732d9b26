"""``hmrnn inspect``: run an HM-LSTM checkpoint over a text and write what it did
(boundary map, hidden norms, HTML segments, operation counts, boundary scores)."""

from __future__ import annotations

import argparse
from typing import Any

from hmrnn.cli._common import echo, text_ids


def cmd_inspect(args: argparse.Namespace) -> int:
    """Trace a text through an HM-LSTM checkpoint; write the figures and print the counts."""
    from hmrnn.analysis.boundaries import format_scores
    from hmrnn.analysis.report import inspect_sequence
    from hmrnn.data import DataError, generate
    from hmrnn.tasks.charlm.task import load_charlm, trace_text

    model, vocab, _, _ = load_charlm(args.checkpoint)
    if model.rnn.__class__.__name__ != "HMLSTM":
        raise ValueError("inspect needs an HM-LSTM checkpoint (baselines have no boundaries)")
    references = None
    if args.synthetic:
        synthetic = generate(args.synthetic, seed=args.seed, spaces=" " in vocab)
        text = synthetic.text
        references = {"word": synthetic.word_end, "phrase": synthetic.phrase_end}
    elif args.file:
        text, _ = text_ids(vocab, args)
    else:
        text = args.text
    if not text:
        raise DataError("nothing to inspect: the text is empty")
    if args.max_chars < 1:
        raise ValueError(f"--max-chars must be >= 1, got {args.max_chars}")
    if not args.synthetic and len(text) > args.max_chars:  # --synthetic says how many itself
        echo(f"note: reading the first {args.max_chars:,} of {len(text):,} characters "
             "(--max-chars)")
        text = text[: args.max_chars]
    boundary, norms = trace_text(model, vocab, text)
    source = (f"synthetic language, {len(text)} characters, seed {args.seed}" if args.synthetic
              else str(args.file) if args.file else "--text")
    summary = inspect_sequence(text, boundary > 0.5, norms, args.out, references=references,
                               width=args.width, checkpoint=str(args.checkpoint), source=source,
                               progress=True)
    counts = summary["operation_counts"]
    for stats in counts:
        rate = ("  (no boundary detector)" if stats is counts[-1]
                else f"  boundary rate {stats['boundary_rate']:.3f}")
        echo(f"layer{stats['layer']}: UPDATE {stats['update']}  COPY {stats['copy']}  "
             f"FLUSH {stats['flush']}{rate}")
    comp = summary["computation"]
    echo(f"layer updates: {comp['total_updates']} against {comp['stacked_rnn_updates']} for a "
           f"standard stacked RNN ({comp['saved_fraction']:.1%} saved)")
    if summary["segmentation"] is not None:
        echo("boundaries against the true segmentation (P/R/F1; tol1 allows one step):")
        echo(format_scores(summary["segmentation"]))
    for warning in summary["warnings"]:
        echo(f"warning: {warning}")
    echo(f"wrote {', '.join(summary['files'].values())} to {args.out}")
    return 0


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``inspect`` on ``hmrnn``'s subparsers."""
    p = sub.add_parser(
        "inspect", help="boundary map, hidden-norm map, HTML segments and counts of a text",
        description="Run an HM-LSTM checkpoint over a text and write what it did: "
                    "boundary_map.png (Figure 3), hidden_norms.png (Figure 4), segments.html "
                    "and summary.json (UPDATE/COPY/FLUSH counts, boundary scores).",
    )
    p.add_argument("checkpoint", help="an HM-LSTM checkpoint file or a run folder (uses its "
                                      "last.pt)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="the text to read")
    source.add_argument("--file", help="a UTF-8 text file to read")
    source.add_argument("--synthetic", type=int, metavar="CHARS",
                        help="exactly this many characters of the synthetic language (no "
                             "--max-chars cut), scored against its true word and phrase "
                             "boundaries")
    p.add_argument("--ptb-format", action="store_true",
                   help="the file is space-separated symbols, one line per sentence (as PTB)")
    p.add_argument("--seed", type=int, default=1, help="seed of the --synthetic text")
    p.add_argument("--out", default="inspect", help="output folder")
    p.add_argument("--width", type=int, default=90, help="characters per row of the figures")
    p.add_argument("--max-chars", type=int, default=2000,
                   help="read at most this many characters of --text or --file")
    p.set_defaults(func=cmd_inspect)
    return p
