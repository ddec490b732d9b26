"""``hmrnn data {download,verify,describe}``: the corpora on disk."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hmrnn.cli._common import corpus_advice, echo


def cmd_data(args: argparse.Namespace) -> int:
    """Download, verify (a problem is bad input: exit 2) or describe a corpus."""
    from hmrnn.data import DataError, describe, download_corpus, verify_corpus
    from hmrnn.tasks.charlm.build import corpus_from_config
    from hmrnn.training.config import Config, apply_overrides

    if args.action == "download":
        path = download_corpus(args.name, args.cache_dir or None)
        echo(f"{args.name}: ready in {path}")
    elif args.action == "verify":
        folder = Path(args.data_dir or args.cache_dir or "~/.cache/hmrnn").expanduser()
        sub = folder / args.name
        problems = verify_corpus(args.name, sub if sub.is_dir() else folder)
        if problems:
            raise DataError(f"{args.name} failed verification: {'; '.join(problems)}")
        echo(f"{args.name}: all files present and checked")
    else:  # the corpus as `hmrnn train data.corpus=NAME` reads it (the synthetic one's sizes)
        data = apply_overrides(Config(), {"data.corpus": args.name,
                                          "data.cache_dir": args.cache_dir or ""}).data
        with corpus_advice("--data-dir PATH"):
            corpus = corpus_from_config(data, args.data_dir)
        echo(describe(corpus))
    return 0


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``data`` on ``hmrnn``'s subparsers."""
    p = sub.add_parser("data", help="download, verify or describe a corpus")
    p.add_argument("action", choices=["download", "verify", "describe"],
                   help="download into the cache; verify the files' sizes and checksums; "
                        "describe the splits and vocabulary as `hmrnn train` reads them")
    p.add_argument("name", help="ptb, text8, enwik8 (download/verify); any corpus (describe)")
    p.add_argument("--data-dir", help="folder with local copies")
    p.add_argument("--cache-dir", help="download cache (default: ~/.cache/hmrnn)")
    p.set_defaults(func=cmd_data)
    return p
