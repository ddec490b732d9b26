"""``hmrnn sample``: generate text from a checkpoint, streamed as it comes."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def cmd_sample(args: argparse.Namespace) -> int:
    """Write ``--length`` sampled characters to stdout as they come."""
    import torch

    from hmrnn.tasks.charlm.task import load_charlm, sample_text

    if args.length < 0:
        raise ValueError(f"--length must be >= 0, got {args.length}")
    if not 0 < args.temperature < float("inf"):
        raise ValueError(f"--temperature must be a finite number > 0, got {args.temperature}")
    model, vocab, _, _ = load_charlm(args.checkpoint)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    if args.prime:
        sys.stdout.write(args.prime)
    for ch in sample_text(model, vocab, length=args.length, temperature=args.temperature,
                          top_k=args.top_k, prime=args.prime, generator=generator):
        sys.stdout.write(ch)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``sample`` on ``hmrnn``'s subparsers."""
    p = sub.add_parser("sample", help="generate text from a checkpoint, streamed as it comes")
    p.add_argument("checkpoint")
    p.add_argument("--length", type=int, default=500)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest (0: all)")
    p.add_argument("--prime", default="", help="text the model reads first")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_sample)
    return p
