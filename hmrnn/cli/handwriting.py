"""``hmrnn handwriting {train,eval,sample,draw}``: IAM-OnDB handwriting from the command line.

::

    hmrnn handwriting train --data ../shared/data/handwriting --config iamondb
    hmrnn handwriting eval runs/iamondb --data ../shared/data/handwriting --split test
    hmrnn handwriting sample runs/iamondb --out sample.png --bias 0.5 --steps 700
    hmrnn handwriting draw --data ../shared/data/handwriting --line 7 --out line.png
    hmrnn handwriting draw runs/iamondb --line 7 --segments --out fig5.png

A command that has a checkpoint finds the data where training found it unless ``--data``
says otherwise. Every user error raises ``DataError``, ``ValueError``,
``CheckpointError`` or ``FileNotFoundError``, which ``hmrnn``'s main
(:func:`hmrnn.cli.main`) turns into one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hmrnn.cli._common import HANDWRITING_CORPUS, config_list, echo

PAPER_TABLE3 = "paper, Table 3: HM-LSTM 1137, LSTM 1081"


def _data_path(args: argparse.Namespace, config: Any) -> str:
    """``--data``, else the ``data.data_dir`` of the config (or checkpoint)."""
    from hmrnn.data import DataError

    path = args.data or config.data.data_dir
    if not path:
        also = " or data.data_dir=PATH" if "overrides" in args else ""  # train reads overrides
        raise DataError(
            "no handwriting data given: pass --data PATH (iamondb_lines.npz, the lineStrokes "
            f"tar, or a folder holding either){also}"
        )
    return str(path)


def format_evaluation(summary: dict[str, Any], where: str) -> list[str]:
    """Lines describing an evaluation summary (:func:`hmrnn.tasks.handwriting.model.evaluate`)."""
    lines = [
        f"{where}: average log-likelihood {summary['loglik_per_sequence']:.1f} nats per line over "
        f"{int(summary['num_sequences']):,} lines ({PAPER_TABLE3}; normalised offsets, "
        f"pen-up included, no Jacobian)",
        f"  {summary['nats_per_step']:.4f} nats per predicted step over "
        f"{int(summary['num_steps']):,} steps; raw whiteboard offsets (Jacobian included): "
        f"{summary['loglik_per_sequence_raw']:.1f} nats per line",
    ]
    if "boundary_rates" in summary:
        lines.append("  boundary rates: " + " ".join(
            f"layer{l + 1}={r:.3f}" for l, r in enumerate(summary["boundary_rates"])))
    if "penup_f1" in summary:
        lines.append(
            f"  layer-2 boundaries against pen-ups (within 1 step): precision "
            f"{summary['penup_precision']:.3f} recall {summary['penup_recall']:.3f} "
            f"F1 {summary['penup_f1']:.3f} (tp {summary['penup_tp']}, fp {summary['penup_fp']}, "
            f"fn {summary['penup_fn']})"
        )
    return lines


# -- train ----------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    """Train a handwriting model with the generic trainer, then report on the test split."""

    from hmrnn.tasks.handwriting.model import build_handwriting_model
    from hmrnn.tasks.handwriting.task import (
        KIND,
        HandwritingTask,
        load_handwriting_data,
        trainer_metrics,
    )
    from hmrnn.training.checkpoint import load_checkpoint
    from hmrnn.training.config import apply_overrides
    from hmrnn.training.session import run_training
    from hmrnn.training.trainer import seeded_rng

    def adjust(config: Any) -> Any:
        path = Path(_data_path(args, config)).resolve()
        return apply_overrides(config, {"data.corpus": HANDWRITING_CORPUS,
                                        "data.data_dir": str(path)})

    def make_task(config: Any, checkpoint: Any, context: Any, say: Any) -> HandwritingTask:
        path = Path(config.data.data_dir)
        data, split = load_handwriting_data(
            path, config.data.fractions, split=checkpoint["split"] if checkpoint else None
        )
        say(f"data: {len(data.train):,} / {len(data.valid):,} / {len(data.test):,} lines "
            f"(train / valid / test, split seed {split['seed']}) from {path}")
        model = build_handwriting_model(config.model).to(context.device)
        task = HandwritingTask(model, data, config, context, split)
        say(f"model: {sum(p.numel() for p in model.parameters()):,} parameters, "
            f"device {context.device}, {context.world_size} process(es), "
            f"{task.steps_per_epoch} steps per epoch")
        return task

    def report(trainer: Any, task: Any, say: Any) -> None:
        if trainer.best_path.exists():
            task.model.load_state_dict(load_checkpoint(trainer.best_path)["model"])
        with seeded_rng(trainer.config.train.seed, trainer.context.device):
            summary = task.summarize("test")
        trainer.record("test", trainer_metrics(summary))
        for line in format_evaluation(summary, "test (best checkpoint)"):
            say(line)
        say(f"checkpoints: {trainer.best_path} (best), {trainer.last_path} (last)")

    return run_training(args.config, args.overrides, kind=KIND, resume=args.resume,
                        make_task=make_task, report=None if args.no_report else report,
                        adjust_config=adjust, overwrite=args.overwrite,
                        print_config=args.print_config)


# -- eval -----------------------------------------------------------------------------


def cmd_eval(args: argparse.Namespace) -> int:
    """The Table 3 measure and the pen-up agreement of a checkpoint on one split."""
    import torch

    from hmrnn.tasks.handwriting.model import evaluate
    from hmrnn.tasks.handwriting.task import (
        PENUP_TOLERANCE,
        load_handwriting_checkpoint,
        load_handwriting_data,
    )

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    model, normalizer, config, checkpoint = load_handwriting_checkpoint(args.checkpoint)
    data, _ = load_handwriting_data(_data_path(args, config), split=checkpoint["split"])
    torch.manual_seed(0)
    summary = evaluate(model, getattr(data, args.split), args.batch_size,
                       normalizer=normalizer, tolerance=PENUP_TOLERANCE, progress=True)
    if args.json:
        echo(json.dumps({"split": args.split, **summary}, indent=2))
    else:
        echo("\n".join(format_evaluation(summary, args.split)))
    return 0


# -- sample ---------------------------------------------------------------------------


def cmd_sample(args: argparse.Namespace) -> int:
    """Write new handwriting (optionally continuing a real line) and draw it."""
    import numpy as np
    import torch

    from hmrnn.tasks.handwriting.model import sample_strokes
    from hmrnn.tasks.handwriting.plots import draw_strokes
    from hmrnn.tasks.handwriting.task import (
        load_handwriting_checkpoint,
        load_handwriting_data,
        pick_line,
    )

    if args.steps < 1:
        raise ValueError(f"--steps must be positive, got {args.steps}")
    if args.bias < 0:
        raise ValueError(f"--bias must be >= 0, got {args.bias}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)  # a folder that cannot be made: say so first
    model, normalizer, config, checkpoint = load_handwriting_checkpoint(args.checkpoint)
    prime = None
    title = f"sample: {args.steps} steps, bias {args.bias:g}, seed {args.seed}"
    if args.prime_line is not None:
        data, _ = load_handwriting_data(_data_path(args, config), split=checkpoint["split"])
        line_id, prime = pick_line(data, args.split, args.prime_line)
        title += f", primed with {line_id}"
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    new = sample_strokes(model, args.steps, args.bias, prime, generator)[:, 0].numpy()  # (S, 3)
    offsets = new if prime is None else np.concatenate([prime, new])
    draw_strokes(normalizer.denormalize(offsets), out, offsets=True, title=title)
    echo(f"wrote {out}: {title} ({int(new[:, 2].sum())} pen-ups written)")
    return 0


# -- draw -----------------------------------------------------------------------------


def cmd_draw(args: argparse.Namespace) -> int:
    """Draw a real line, or with a checkpoint and ``--segments`` the paper's Figure 5."""
    from hmrnn.tasks.handwriting.data import to_points
    from hmrnn.tasks.handwriting.model import offset_boundaries
    from hmrnn.tasks.handwriting.plots import boundary_agreement, draw_strokes, segment_figure
    from hmrnn.tasks.handwriting.task import (
        PENUP_TOLERANCE,
        load_handwriting_checkpoint,
        load_handwriting_data,
        pick_line,
    )
    from hmrnn.training.config import Config

    if args.segments and not args.checkpoint:
        raise ValueError("--segments draws a model's boundaries: give a checkpoint")
    out = Path(args.out)
    if args.checkpoint:
        model, normalizer, config, checkpoint = load_handwriting_checkpoint(args.checkpoint)
        data, _ = load_handwriting_data(_data_path(args, config), split=checkpoint["split"])
    else:
        data, _ = load_handwriting_data(_data_path(args, Config()))
    line_id, offsets = pick_line(data, args.split, args.line)
    points = to_points(data.normalizer.denormalize(offsets))  # (P, 3), first point at 0
    out.parent.mkdir(parents=True, exist_ok=True)
    if not args.segments:
        draw_strokes(points, out, title=f"{line_id} ({len(points)} points)")
        echo(f"wrote {out}: line {line_id}, {len(points)} points, "
               f"{int(points[:, 2].sum())} strokes")
        return 0
    z = offset_boundaries(model, offsets)  # (P, L), read as evaluation reads it
    if z.shape[1] < 3:
        raise ValueError("layer 2 of a two-layer HM-LSTM has no boundary detector; Figure 5 "
                         "needs three or more layers")
    segment_figure(points, points[:, 2], z[:, 1], out)
    prf = boundary_agreement(z[:, 1], points[:, 2], tolerance=PENUP_TOLERANCE)
    echo(f"wrote {out}: line {line_id}, {len(points)} points, {int(points[:, 2].sum())} "
           f"pen-ups, {int(z[:, 1].sum())} layer-2 boundaries")
    echo(f"layer-2 boundaries against pen-ups (within {PENUP_TOLERANCE} step): precision "
           f"{prf.precision:.3f} recall {prf.recall:.3f} F1 {prf.f1:.3f} "
           f"(tp {prf.tp}, fp {prf.fp}, fn {prf.fn})")
    return 0


# -- parser ---------------------------------------------------------------------------


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``handwriting {train,eval,sample,draw}`` on ``hmrnn``'s subparsers."""
    parser = subparsers.add_parser(
        "handwriting", help="handwriting generation on IAM-OnDB (the paper's section 4.2)",
        description="Handwriting generation on IAM-OnDB with a mixture density output.",
    )
    sub = parser.add_subparsers(dest="action", required=True)

    def data_option(p: argparse.ArgumentParser, note: str) -> None:
        p.add_argument("--data", help="iamondb_lines.npz, the lineStrokes tar.xz, or a folder "
                                      "holding either" + note)

    def split_option(p: argparse.ArgumentParser, line_flag: str) -> None:
        p.add_argument("--split", default="valid", choices=["train", "valid", "test"],
                       help=f"the split {line_flag} counts in")

    p = sub.add_parser(
        "train", help="train an HM-LSTM (or a baseline) with a mixture density output",
        description="Train on IAM-OnDB. Any config field can be overridden as "
                    "section.field=value (e.g. train.max_minutes=30 model.hidden_size=64).",
    )
    data_option(p, " (default: data.data_dir)")
    p.add_argument("--config", default="iamondb",
                   help=f"a packaged config ({config_list(handwriting=True)}) or a .toml path")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (file, --data, overrides; with --resume the "
                        "checkpoint's) as TOML and exit without training")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in run.out_dir from its last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in run.out_dir (without it, a new run goes "
                        "to a numbered folder beside it)")
    p.add_argument("--no-report", action="store_true", help="skip the final test evaluation")
    p.add_argument("overrides", nargs="*", metavar="section.field=value",
                   help="config overrides, e.g. train.seq_len=300 run.out_dir=runs/hw")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="average log-likelihood per line (Table 3) and "
                                    "layer-2 boundaries against pen-ups")
    p.add_argument("checkpoint", help="a checkpoint file or a run folder (uses its last.pt)")
    data_option(p, " (default: where the model was trained)")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"],
                   help="the split to score")
    p.add_argument("--batch-size", type=int, default=32, help="lines scored at once")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("sample", help="write new handwriting and draw it")
    p.add_argument("checkpoint", help="a checkpoint file or a run folder (uses its last.pt)")
    p.add_argument("--out", required=True, help="image to write (.png, .svg or .pdf)")
    p.add_argument("--steps", type=int, default=700, help="pen offsets to write")
    p.add_argument("--bias", type=float, default=0.0,
                   help="Graves's sampling bias >= 0: larger is neater (0: the model's own "
                        "distribution)")
    p.add_argument("--prime-line", metavar="N",
                   help="first read this real line (an index into --split, or a line id)")
    data_option(p, " (for --prime-line; default: where the model was trained)")
    split_option(p, "--prime-line")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed: the same seed writes the same strokes")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("draw", help="draw a real line, or Figure 5: its strokes beside "
                                    "the model's layer-2 segments")
    p.add_argument("checkpoint", nargs="?", help="a handwriting checkpoint (for --segments)")
    data_option(p, " (default: where the model was trained)")
    p.add_argument("--line", required=True, help="an index into --split, or a line id")
    split_option(p, "--line")
    p.add_argument("--segments", action="store_true",
                   help="Figure 5: colour segments by pen-ups and by layer-2 boundaries, and "
                        "print their agreement")
    p.add_argument("--out", required=True, help="image to write (.png, .svg or .pdf)")
    p.set_defaults(func=cmd_draw)
    return parser

