"""The ``hmrnn`` command line: train, eval, sample, inspect, data, bench, handwriting.

One module per command (``train.py``, ``evaluate.py``, ``sample.py``, ``inspect.py``,
``data.py``, ``bench.py``, ``handwriting.py``), each registering its flags; this one holds
the parser and :func:`main`, which maps every user error to one line on stderr and a
non-zero exit, never a stack trace.
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Sequence

from hmrnn.cli import data, evaluate, handwriting, inspect, sample, train
from hmrnn.cli._common import EXIT_FAILED, EXIT_USAGE, Parser

__all__ = ["EXIT_FAILED", "EXIT_USAGE", "build_parser", "main", "version"]


def version() -> str:
    """The installed package's version (its metadata), else ``hmrnn.__version__``."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("hmrnn")
    except PackageNotFoundError:  # run from a source tree that is not installed
        import hmrnn

        return hmrnn.__version__


def build_parser() -> argparse.ArgumentParser:
    """``hmrnn`` and its subcommands, each registered by its module; every help shows the
    flags' defaults (:class:`hmrnn.cli._common.Parser`)."""
    parser = Parser(
        prog="hmrnn",
        description="Hierarchical Multiscale LSTMs (Chung, Ahn & Bengio, ICLR 2017).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    train.add_parser(sub)
    evaluate.add_parser(sub)
    sample.add_parser(sub)
    inspect.add_parser(sub)
    data.add_parser(sub)
    from hmrnn.cli import plot

    plot.add_parser(sub)

    from hmrnn.cli.bench import add_arguments as add_bench_arguments
    from hmrnn.cli.bench import run as run_bench

    p = sub.add_parser("bench", help="speed against PyTorch's fused LSTM, side by side",
                       description="Time training steps and inference of the HM-LSTM and "
                                   "an nn.LSTM model of the same sizes; print one table.")
    add_bench_arguments(p)
    p.set_defaults(func=run_bench)

    handwriting.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hmrnn`` on ``argv`` (default: the process's); returns the exit status: 0, 2 for a
    user error (bad data, config, checkpoint, file or value; a path that cannot be written),
    1 when training cannot go on (also a full disk), 130 when interrupted."""
    from hmrnn.data import DataError
    from hmrnn.training.checkpoint import CheckpointError
    from hmrnn.training.config import ConfigError
    from hmrnn.training.trainer import TrainingError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # overrides may come before or after the flags of `train`
        if args.command != "train" or any(not a.lstrip("-").count("=") for a in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    name = " ".join(["hmrnn", args.command, *([args.action] if "action" in args else [])])
    try:
        return int(args.func(args))
    except BrokenPipeError:
        return 0
    except OSError as e:  # an output (or input) path that cannot be used: say which, and why
        print(f"{name}: error: {_os_error(e)}", file=sys.stderr)
        return EXIT_FAILED if e.errno in (errno.ENOSPC, errno.EDQUOT) else EXIT_USAGE
    except (DataError, ConfigError, CheckpointError, ValueError) as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingError as e:
        print(f"{name}: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130


def _os_error(e: OSError) -> str:
    """``PATH: reason`` of an OSError (``str(e)`` when it names no path)."""
    if e.filename is None or not e.strerror:
        return " ".join(str(e).split())
    return f"{e.filename}: {e.strerror}"


if __name__ == "__main__":
    sys.exit(main())
