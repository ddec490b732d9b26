"""``hmrnn eval``: bits per character of a checkpoint on a corpus split or a text file,
with its boundary rates, computation saved and segmentation scores."""

from __future__ import annotations

import argparse
import json
from typing import Any

from hmrnn.cli._common import corpus_advice, echo, text_ids
from hmrnn.model.functional import BOUNDARY_MODES


def cmd_eval(args: argparse.Namespace) -> int:
    """Score a checkpoint; print one report (``--json``: as JSON)."""
    import torch

    from hmrnn.analysis.boundaries import computation_summary, format_scores, segmentation_scores
    from hmrnn.data import DataError
    from hmrnn.model.graphed import graph_stacks
    from hmrnn.tasks.charlm.build import corpus_from_config
    from hmrnn.tasks.charlm.task import evaluate_lm, load_charlm
    from hmrnn.training.config import Config, apply_overrides
    from hmrnn.training.distributed import resolve_device

    torch.manual_seed(0)
    device = resolve_device(args.device, "--device")
    model, vocab, config, _ = load_charlm(args.checkpoint, device)
    if args.boundary:
        if not hasattr(model.rnn, "boundary"):
            raise ValueError("--boundary only applies to HM-LSTM models")
        model.rnn.boundary = args.boundary
    refs = None
    if args.file:
        text, ids = text_ids(vocab, args)
        where = args.file
    else:
        data = (apply_overrides(Config(), {"data.corpus": args.corpus}).data if args.corpus
                else config.data)
        name = data.corpus
        with corpus_advice("--data-dir PATH"):
            corpus = corpus_from_config(data, args.data_dir)
        if corpus.vocab != vocab:
            missing = set(corpus.vocab.symbols) - set(vocab.symbols)
            if missing:
                raise DataError(f"corpus {name!r} has characters the model never saw: "
                                f"{sorted(missing)[:10]}")
            ids = vocab.encode(corpus.vocab.decode(corpus.splits[args.split]))
        else:
            ids = corpus.splits[args.split]
        text = vocab.decode(ids)
        where = f"{name} {args.split}"
        if corpus.boundaries is not None:
            refs = {k: v[:-1] for k, v in corpus.boundaries[args.split].items()}
    if len(ids) < 2:
        raise DataError(f"{where} is too short: at least 2 characters are needed to score one")
    # on a GPU the stack's calls replay CUDA graphs (a few kernels' launches per window)
    graphs = graph_stacks(model) if device.type == "cuda" else []
    try:
        result = evaluate_lm(model, ids, batch_size=args.batch_size,
                             seq_len=config.train.seq_len, device=device, progress=True)
    finally:
        for g in graphs:
            g.remove()
    report: dict[str, Any] = {"data": where, "chars": result.chars, "bpc": result.bpc,
                              "nll_nats": result.nll}
    lines = [f"{where}: {result.bpc:.4f} bits per character over {result.chars:,} characters"]
    if result.boundary is not None:
        rates = result.boundary_rates()
        report["boundary_rates"] = rates
        lines.append("boundary rates: " + " ".join(
            f"layer{l + 1}={r:.3f}" for l, r in enumerate(rates)))
        z = result.boundary > 0.5
        computation = computation_summary(z)
        report["computation"] = computation
        lines.append(f"layer updates: {computation['total_updates']:,} against "
                     f"{computation['stacked_rnn_updates']:,} for a standard stacked RNN "
                     f"({computation['saved_fraction']:.1%} saved)")
        scores = segmentation_scores(z, text[:-1], refs)
        report["segmentation"] = scores
        lines.append(format_scores(scores))
    echo(json.dumps(report, indent=2) if args.json else "\n".join(lines))
    return 0


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``eval`` on ``hmrnn``'s subparsers."""
    p = sub.add_parser("eval", help="bits per character of a checkpoint on a split or a file")
    p.add_argument("checkpoint", help="a checkpoint file or a run folder (uses its last.pt)")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"],
                   help="the corpus split to score (not with --file)")
    p.add_argument("--file", help="score this UTF-8 text file instead of a corpus split")
    p.add_argument("--ptb-format", action="store_true",
                   help="the file is space-separated symbols, one line per sentence (as PTB)")
    p.add_argument("--corpus", help="corpus name (default: the one the model was trained on)")
    p.add_argument("--data-dir", help="folder holding the corpus files")
    p.add_argument("--batch-size", type=int, default=64, help="parallel evaluation streams")
    p.add_argument("--boundary", choices=list(BOUNDARY_MODES),
                   help="evaluate an HM-LSTM with this boundary mode instead of its own "
                        "(gumbel evaluates as step)")
    p.add_argument("--device", default="auto",
                   help="auto (a CUDA GPU where there is one), cpu, cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_eval)
    return p
