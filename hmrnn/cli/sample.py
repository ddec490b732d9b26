"""``hmrnn sample``: generate text from a checkpoint, streamed as it comes."""

from __future__ import annotations

import argparse
import sys
from typing import Any

SEPARATOR = "---"  # the line between two samples of --num-samples


def cmd_sample(args: argparse.Namespace) -> int:
    """Write ``--num-samples`` samples of ``--length`` characters to stdout as they come."""
    import torch

    from hmrnn.tasks.charlm.task import load_charlm, sample_text

    if args.length < 0:
        raise ValueError(f"--length must be >= 0, got {args.length}")
    if not 0 <= args.temperature < float("inf"):
        raise ValueError(f"--temperature must be a finite number >= 0, got {args.temperature}")
    if args.num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, got {args.num_samples}")
    model, vocab, _, _ = load_charlm(args.checkpoint)
    torch.manual_seed(args.seed)  # for boundary="sample" models' Bernoulli draws
    generator = torch.Generator().manual_seed(args.seed)  # one stream: each sample differs
    for i in range(args.num_samples):
        if i:
            sys.stdout.write(SEPARATOR + "\n")
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
    p.add_argument("checkpoint", help="a checkpoint file or a run folder (uses its last.pt)")
    p.add_argument("--length", type=int, default=500,
                   help="characters to generate after the --prime text")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="divides the logits: below 1 more conservative, above 1 more varied; "
                        "0 is greedy decoding (always the likeliest character)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest (0: all)")
    p.add_argument("--prime", default="", help="text the model reads first (printed first)")
    p.add_argument("--num-samples", type=int, default=1,
                   help=f"samples to write, each starting from --prime, separated by a line "
                        f"{SEPARATOR}")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed: the same seed gives the same samples")
    p.set_defaults(func=cmd_sample)
    return p
