"""``hmrnn data {download,verify,describe}``: the corpora on disk."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hmrnn.cli._common import EXIT_FAILED, echo


def cmd_data(args: argparse.Namespace) -> int:
    """Download, verify (exit 1 on a problem) or describe a corpus."""
    from hmrnn.data import describe, download_corpus, load_corpus, verify_corpus

    if args.action == "download":
        path = download_corpus(args.name, args.cache_dir or None)
        echo(f"{args.name}: ready in {path}")
    elif args.action == "verify":
        folder = Path(args.data_dir or args.cache_dir or "~/.cache/hmrnn").expanduser()
        sub = folder / args.name
        problems = verify_corpus(args.name, sub if sub.is_dir() else folder)
        if problems:
            for p in problems:
                echo(f"problem: {p}")
            return EXIT_FAILED
        echo(f"{args.name}: all files present and checked")
    else:
        corpus = load_corpus(args.name, args.data_dir or None, cache_dir=args.cache_dir or None)
        echo(describe(corpus))
    return 0


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``data`` on ``hmrnn``'s subparsers."""
    p = sub.add_parser("data", help="download, verify or describe a corpus")
    p.add_argument("action", choices=["download", "verify", "describe"])
    p.add_argument("name", help="ptb, text8, enwik8 (download/verify); any corpus (describe)")
    p.add_argument("--data-dir", help="folder with local copies")
    p.add_argument("--cache-dir", help="download cache (default ~/.cache/hmrnn)")
    p.set_defaults(func=cmd_data)
    return p
