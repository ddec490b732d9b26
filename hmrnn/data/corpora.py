"""Readers for the corpora of the paper and for any text file, and :func:`load_corpus`.

Every reader returns a :class:`Corpus` whose vocabulary is built from the train split;
a valid or test character that is not in it raises :class:`UnknownSymbolError` naming the
split. Corpora without given splits are split by position (train first, then valid, then
test) with fractions :data:`SPLIT_FRACTIONS` of their length, which gives exactly the
paper's 90M / 5M / 5M for the 100M-character text8 and enwik8.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hmrnn.data._corpus import SPLITS, Corpus, describe
from hmrnn.data.download import DEFAULT_CACHE_DIR
from hmrnn.data.download import download as fetch
from hmrnn.data.errors import CorpusNotFoundError, DataError
from hmrnn.data.synthetic import synthetic_corpus
from hmrnn.data.vocab import Vocab

__all__ = [
    "CORPORA",
    "DEFAULT_CACHE_DIR",
    "SPLIT_FRACTIONS",
    "Corpus",
    "describe",
    "load_corpus",
    "read_enwik8",
    "read_ptb",
    "read_text8",
    "read_text_file",
    "split_sizes",
    "synthetic_corpus",
]

SPLIT_FRACTIONS: tuple[float, float, float] = (0.9, 0.05, 0.05)
"""Train / valid / test fractions of a corpus split by position (the paper's 90/5/5)."""

CORPORA: tuple[str, ...] = ("synthetic", "ptb", "text8", "enwik8", "tinyshakespeare")
"""Corpus names :func:`load_corpus` knows, besides ``file:<path>``."""

# The files each named corpus needs, looked for in DIR and in DIR/<name>.
_FILES: dict[str, tuple[str, ...]] = {
    "ptb": tuple(f"ptb.char.{split}.txt" for split in SPLITS),
    "text8": ("text8",),
    "enwik8": ("enwik8",),
    "tinyshakespeare": ("input.txt",),
}
_DOWNLOADABLE = ("ptb", "text8", "enwik8")


def split_sizes(length: int, fractions: Sequence[float] = SPLIT_FRACTIONS) -> tuple[int, int, int]:
    """Sizes of the train, valid and test splits of ``length`` symbols split by position.

    Train and valid get ``round(fraction * length)``, test the rest.

    Raises:
        DataError: if the fractions are not three positive numbers summing to 1 (within
            1e-6), or if a split would be empty.
    """
    fractions = tuple(fractions)
    if len(fractions) != 3 or not all(
        isinstance(f, (int, float)) and not isinstance(f, bool) and f > 0 for f in fractions
    ):
        raise DataError(
            f"split fractions must be three positive numbers (train, valid, test), "
            f"got {fractions!r}"
        )
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise DataError(f"split fractions must sum to 1, got {fractions!r} (sum {sum(fractions)})")
    n_train = round(fractions[0] * length)
    n_valid = round(fractions[1] * length)
    sizes = (n_train, n_valid, length - n_train - n_valid)
    if min(sizes) < 1:
        raise DataError(
            f"{length} symbols are too few to split into train / valid / test with fractions "
            f"{fractions!r}; every split would need at least one symbol"
        )
    return sizes


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    if not path.is_file():
        raise DataError(f"data file {path} is not a regular file")


def _read_bytes(path: Path) -> bytes:
    _check_file(path)
    data = path.read_bytes()
    if not data:
        raise DataError(f"data file {path} is empty")
    return data


def _read_text(path: Path) -> str:
    """Read a UTF-8 text file, refusing empty and binary files with a clear message."""
    data = _read_bytes(path)
    nul = data.find(b"\x00")
    if nul >= 0:
        raise DataError(
            f"{path} looks like a binary file (NUL byte at offset {nul}), not UTF-8 text"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path} is not UTF-8 text: the byte at offset {e.start} cannot be decoded"
        ) from None


def _encode_splits(name: str, texts: dict[str, str]) -> Corpus:
    vocab = Vocab.from_text(texts["train"])
    splits = {
        split: vocab.encode(text, where=f"the {split} split of {name}")
        for split, text in texts.items()
    }
    return Corpus(name, vocab, splits)


def _split_codes(name: str, codes: np.ndarray, fractions: Sequence[float]) -> Corpus:
    """Split an array of code points by position and encode it with the train vocabulary."""
    n_train, n_valid, _ = split_sizes(len(codes), fractions)
    parts = {
        "train": codes[:n_train],
        "valid": codes[n_train : n_train + n_valid],
        "test": codes[n_train + n_valid :],
    }
    present = np.flatnonzero(np.bincount(parts["train"], minlength=256))
    vocab = Vocab([chr(c) for c in present.tolist()])
    splits = {
        split: vocab.encode_code_points(part, where=f"the {split} split of {name}")
        for split, part in parts.items()
    }
    return Corpus(name, vocab, splits)


def read_ptb(data_dir: str | os.PathLike[str]) -> Corpus:
    """Read Mikolov's character-level Penn Treebank, ``ptb.char.{train,valid,test}.txt``.

    Each line's symbols are its whitespace-separated tokens, followed by one end-of-line
    symbol ``"\\n"``; ``_`` is the word boundary. The unterminated whitespace after the
    files' last newline is not a line.

    Args:
        data_dir: the folder holding the three files (or a folder with a ``ptb/`` holding
            them).

    Raises:
        DataError: if a file is missing, empty or binary, or a token is longer than one
            character (e.g. a word-level file).
    """
    folder = _find_folder(Path(data_dir), "ptb")
    texts = {}
    for split in SPLITS:
        path = folder / f"ptb.char.{split}.txt"
        lines = _read_text(path).split("\n")
        if not lines[-1].strip():
            lines.pop()  # the tail after the last newline, not a line
        parts = []
        for number, line in enumerate(lines, start=1):
            tokens = line.split()
            joined = "".join(tokens)
            if len(joined) != len(tokens):
                long = next(t for t in tokens if len(t) > 1)
                raise DataError(
                    f"{path} line {number} has the token {long!r} of more than one character; "
                    "is this the word-level file rather than ptb.char.*.txt?"
                )
            parts.append(joined)
        texts[split] = "\n".join(parts) + "\n"
    return _encode_splits("ptb", texts)


def _read_byte_codes(path: Path) -> np.ndarray:
    _check_file(path)
    codes = np.fromfile(path, dtype=np.uint8)
    if codes.size == 0:
        raise DataError(f"data file {path} is empty")
    return codes


def read_text8(
    data_dir: str | os.PathLike[str], fractions: Sequence[float] = SPLIT_FRACTIONS
) -> Corpus:
    """Read text8 (100M characters, ``a-z`` and space) and split it by position.

    Args:
        data_dir: the folder holding the file ``text8`` (or ``text8/text8``).
        fractions: train / valid / test fractions (the paper's 90M / 5M / 5M by default).

    Raises:
        DataError: if the file is missing, empty, or not ASCII text.
    """
    path = _find_folder(Path(data_dir), "text8") / "text8"
    codes = _read_byte_codes(path)
    bad = (codes == 0) | (codes >= 128)
    if bad.any():
        raise DataError(
            f"{path} is not text8: byte 0x{int(codes[np.argmax(bad)]):02x} at offset "
            f"{int(np.argmax(bad))} is not ASCII text"
        )
    return _split_codes("text8", codes, fractions)


def read_enwik8(
    data_dir: str | os.PathLike[str], fractions: Sequence[float] = SPLIT_FRACTIONS
) -> Corpus:
    """Read enwik8 (the first 100M bytes of a Wikipedia dump) byte by byte.

    Byte ``b`` is the symbol ``chr(b)`` (latin-1), so multi-byte UTF-8 characters are
    several symbols, as in the paper.

    Args:
        data_dir: the folder holding the file ``enwik8`` (or ``enwik8/enwik8``).
        fractions: train / valid / test fractions (the paper's 90M / 5M / 5M by default).

    Raises:
        DataError: if the file is missing or empty.
    """
    path = _find_folder(Path(data_dir), "enwik8") / "enwik8"
    return _split_codes("enwik8", _read_byte_codes(path), fractions)


def read_text_file(
    path: str | os.PathLike[str],
    fractions: Sequence[float] = SPLIT_FRACTIONS,
    *,
    name: str | None = None,
) -> Corpus:
    """Read any UTF-8 text file and split its characters by position.

    Args:
        path: the text file.
        fractions: train / valid / test fractions, positive and summing to 1.
        name: the corpus name; ``"file:<path>"`` by default.

    Raises:
        DataError: if the file is missing, empty, binary or not UTF-8, the fractions are
            invalid, or a valid / test character is not in the train split.
    """
    path = Path(path)
    text = _read_text(path)
    n_train, n_valid, _ = split_sizes(len(text), fractions)
    texts = {
        "train": text[:n_train],
        "valid": text[n_train : n_train + n_valid],
        "test": text[n_train + n_valid :],
    }
    return _encode_splits(name or f"file:{path}", texts)


def _has_files(folder: Path, name: str) -> bool:
    return all((folder / f).is_file() for f in _FILES[name])


def _find_folder(directory: Path, name: str) -> Path:
    """``directory`` or ``directory/<name>``, whichever holds the corpus (else ``directory``)."""
    if not _has_files(directory, name) and _has_files(directory / name, name):
        return directory / name
    return directory


def _locate(name: str, data_dir: Path | None, cache_dir: Path, download: bool) -> Path:
    """Find (or download) the folder holding corpus ``name``."""
    if data_dir is not None:
        folder = _find_folder(data_dir, name)
        if _has_files(folder, name):
            return folder
        looked = f"{data_dir} and {data_dir / name}"
    else:
        folder = cache_dir / name
        if _has_files(folder, name):
            return folder
        if download and name in _DOWNLOADABLE:
            return fetch(name, cache_dir)
        looked = str(folder)
    raise CorpusNotFoundError(name, _FILES[name], looked, name in _DOWNLOADABLE)


def load_corpus(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    fractions: Sequence[float] = SPLIT_FRACTIONS,
    **synthetic_options: Any,
) -> Corpus:
    """Load a corpus by name.

    Args:
        name: ``"synthetic"`` (the default corpus; needs no files), ``"ptb"``, ``"text8"``,
            ``"enwik8"``, ``"tinyshakespeare"`` (its ``input.txt``), or ``"file:<path>"`` /
            the path of an existing UTF-8 text file.
        data_dir: the folder holding the corpus files (or a parent folder with a
            ``<name>/`` sub-folder holding them). When not given, named corpora are looked
            for in ``cache_dir/<name>``.
        cache_dir: the download cache, :data:`DEFAULT_CACHE_DIR` by default.
        download: download ptb, text8 or enwik8 into the cache when it is not there.
        fractions: train / valid / test fractions for corpora split by position (all but
            ptb and synthetic, which have their own splits).
        **synthetic_options: keyword arguments of :func:`synthetic_corpus`.

    Raises:
        CorpusNotFoundError: a named corpus whose files are not found (a DataError).
        DataError: for an unknown name, options that do not apply to the corpus, and every
            problem of the readers.
    """
    if synthetic_options and name != "synthetic":
        raise DataError(
            f"options {sorted(synthetic_options)} only apply to the synthetic corpus, "
            f"not to {name!r}"
        )
    if tuple(fractions) != SPLIT_FRACTIONS and name in ("synthetic", "ptb"):
        raise DataError(f"corpus {name!r} has its own splits; split fractions do not apply to it")
    if name == "synthetic":
        return synthetic_corpus(**synthetic_options)
    if name.startswith("file:"):
        return read_text_file(name[len("file:") :], fractions)
    if name not in CORPORA:
        if Path(name).is_file():
            return read_text_file(name, fractions)
        if "/" in name or os.sep in name or Path(name).suffix:
            raise DataError(f"file {name} does not exist")
        close = difflib.get_close_matches(name, CORPORA, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise DataError(
            f"unknown corpus {name!r}; {hint}valid names are {', '.join(CORPORA)}, or "
            "file:<path> / the path of a text file"
        )
    folder = _locate(
        name,
        None if data_dir is None else Path(data_dir),
        Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser(),
        download,
    )
    if name == "ptb":
        return read_ptb(folder)
    if name == "text8":
        return read_text8(folder, fractions)
    if name == "enwik8":
        return read_enwik8(folder, fractions)
    return read_text_file(folder / "input.txt", fractions, name="tinyshakespeare")
