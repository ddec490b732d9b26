"""What the commands of ``hmrnn`` share: exit codes, printing, reading a text file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

EXIT_USAGE = 2
EXIT_FAILED = 1


def echo(*args: Any) -> None:
    """Print and flush at once (output is often piped, or read by a test as it comes)."""
    print(*args, flush=True)


def text_ids(vocab: Any, args: argparse.Namespace) -> tuple[str, Any]:
    """The text of ``args.file`` (``--ptb-format`` joins each line's symbols) and its ids in
    ``vocab``; a missing, binary or non-UTF-8 file raises ``DataError``."""
    from hmrnn.data import DataError

    path = Path(args.file)
    if not path.is_file():
        raise DataError(f"file {path} does not exist")
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise DataError(f"{path} looks binary (it contains NUL bytes); give a text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start})") from None
    if args.ptb_format:
        text = "".join("".join(line.split()) + "\n" for line in text.splitlines())
    return text, vocab.encode(text, where=str(path))

