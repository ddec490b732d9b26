"""What the commands of ``hmrnn`` share: exit codes, the parser class, printing, the
packaged configs, each command's advice for a corpus not found, reading a text file."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

EXIT_USAGE = 2
EXIT_FAILED = 1
HANDWRITING_CORPUS = "iamondb"  # the data.corpus of handwriting runs and their configs


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: ...)`` to a flag's help, except where the help already says its
    default or there is none to show (None, False, an empty string or list); wraps lines at
    spaces only, so that names such as ``--prime-line`` or ``ptb-lnlstm`` stay whole."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default is False or action.default in (None, "", []):
            return text
        return super()._get_help_string(action)

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(" ".join(text.split()), width, initial_indent=indent,
                             subsequent_indent=indent, break_on_hyphens=False)


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose help shows every default (:class:`HelpFormatter`); its
    subcommands' parsers are of this class too (``add_subparsers`` uses the parent's)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def echo(*args: Any) -> None:
    """Print and flush at once (output is often piped, or read by a test as it comes)."""
    print(*args, flush=True)


def config_list(*, handwriting: bool) -> str:
    """The names of the packaged configs of the character models (or, with ``handwriting``,
    of IAM-OnDB), comma-separated, for a ``--config`` help. A config that cannot be read is
    left out: one broken file must not break every command (using it says what is wrong)."""
    from hmrnn.training.config import ConfigError, config_corpus, config_names

    names = []
    for name in config_names():
        try:
            corpus = config_corpus(name)
        except ConfigError:
            continue
        if (corpus == HANDWRITING_CORPUS) == handwriting:
            names.append(name)
    return ", ".join(names)


@contextmanager
def corpus_advice(folder: str, download: str = "") -> Iterator[None]:
    """Say a corpus not found inside the block (``CorpusNotFoundError``) with this
    command's advice: ``folder``, the flag or override that gives its folder, and for a
    corpus that can be downloaded, ``hmrnn data download NAME`` and ``download``, the
    command's own way to download it (if any); raises ``DataError``."""
    from hmrnn.data import CorpusNotFoundError, DataError

    try:
        yield
    except CorpusNotFoundError as e:
        fix = f"give the folder that holds it ({folder})"
        if e.downloadable:
            also = f" (or {download})" if download else ""
            fix = f"run `hmrnn data download {e.name}`{also}, or {fix}"
        raise DataError(f"{e.missing}; {fix}") from None


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

