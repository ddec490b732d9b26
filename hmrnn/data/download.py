"""Download the paper's corpora from their public origins, for users outside this project.

Nothing in the package calls this unless asked (``hmrnn data download NAME`` or
``load_corpus(..., download=True)``), and the tests serve the archives from memory.

Each corpus is fetched as one archive into ``cache_dir/<name>/`` (to a temporary file, so an
interrupted download leaves nothing that looks finished), the needed files are extracted
(each to a temporary file, then renamed into place with ``os.replace``), the archive is
removed and the files are checked:

- ``ptb``: Mikolov's ``simple-examples.tgz``; ``data/ptb.char.{train,valid,test}.txt``,
  checked by size and SHA-256 (the sums of ``shared/data/README.md``).
- ``text8``, ``enwik8``: Matt Mahoney's ``text8.zip`` and ``enwik8.zip``; the single member,
  checked by its size, exactly 100,000,000 bytes. No SHA-256 of these files could be
  confirmed from a trusted source, so none is stored; the zip's own CRC-32 of the member is
  still checked while it is extracted.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from hmrnn._io import atomic_write
from hmrnn.data.errors import DataError
from hmrnn.progress import progress_bar

DEFAULT_CACHE_DIR = Path("~/.cache/hmrnn")
"""Where downloaded corpora live unless a ``cache_dir`` is given (``~`` is expanded)."""

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ExpectedFile:
    """What one extracted file must be.

    Attributes:
        member: the archive member, matched exactly or as the end of a path
            (``"data/ptb.char.train.txt"`` matches ``./simple-examples/data/ptb.char.train.txt``).
        size: its size in bytes.
        sha256: its SHA-256 in hex, or ``None`` where no trusted sum is known.
    """

    member: str
    size: int
    sha256: str | None = None


@dataclass(frozen=True)
class Source:
    """A corpus's public origin: the archive URL and the files to take from it.

    Attributes:
        url: the archive's URL; ``.zip`` or a tar format (``.tgz``, ``.tar.gz``, ...).
        files: file name in the cache folder to what it must be.
    """

    url: str
    files: dict[str, ExpectedFile]


SOURCES: dict[str, Source] = {
    "ptb": Source(
        "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz",
        {
            "ptb.char.train.txt": ExpectedFile(
                "data/ptb.char.train.txt",
                10_034_964,
                "e313d91425e06c4f0a8fb6e881dcce0c291f2a0e9f4dda54833069b122f91da9",
            ),
            "ptb.char.valid.txt": ExpectedFile(
                "data/ptb.char.valid.txt",
                786_084,
                "21661f63ec355085879458b6524644d4add5573541b4be14fb52ab2e2e995eb8",
            ),
            "ptb.char.test.txt": ExpectedFile(
                "data/ptb.char.test.txt",
                884_846,
                "1ef5607ac3c463b16e38bfe7900dd3bfc91de5a96e0f21e7eab5188b465b8ebe",
            ),
        },
    ),
    "text8": Source(
        "http://mattmahoney.net/dc/text8.zip",
        {"text8": ExpectedFile("text8", 100_000_000)},
    ),
    "enwik8": Source(
        "http://mattmahoney.net/dc/enwik8.zip",
        {"enwik8": ExpectedFile("enwik8", 100_000_000)},
    ),
}
"""The downloadable corpora: name to origin and expected files."""


def _source(name: str) -> Source:
    if name not in SOURCES:
        raise DataError(f"cannot download {name!r}; downloadable corpora are {', '.join(SOURCES)}")
    return SOURCES[name]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(name: str, directory: str | os.PathLike[str]) -> list[str]:
    """Check the files of corpus ``name`` in ``directory`` against their sizes and sums.

    Returns:
        One line per problem (a missing file, a wrong size, a checksum mismatch); empty
        when every file is as expected.
    """
    directory = Path(directory)
    problems = []
    for filename, expected in _source(name).files.items():
        path = directory / filename
        if not path.is_file():
            problems.append(f"{filename} is missing from {directory}")
            continue
        size = path.stat().st_size
        if size != expected.size:
            problems.append(f"{filename} has {size:,} bytes, expected {expected.size:,}")
            continue
        if expected.sha256 is not None:
            got = _sha256(path)
            if got != expected.sha256:
                problems.append(
                    f"{filename} has SHA-256 {got}, expected {expected.sha256} (checksum mismatch)"
                )
    return problems


def _fetch(url: str, target: Path, desc: str, progress: bool, timeout: float) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, atomic_write(target) as out:
            length = response.headers.get("Content-Length")
            with progress_bar(total=int(length) if length else None, desc=desc, unit="B",
                              enabled=progress, unit_scale=True, unit_divisor=1024) as bar:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as e:
        raise DataError(f"could not download {url}: {e}") from None


def _matches(member: str, wanted: str) -> bool:
    member = member.removeprefix("./")
    return member == wanted or member.endswith("/" + wanted)


def _extract(archive: Path, url: str, files: dict[str, ExpectedFile], folder: Path) -> None:
    """Copy the wanted members of a zip or tar archive into ``folder``, atomically."""
    try:
        if url.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                names = zf.namelist()
                for filename, expected in files.items():
                    member = next((n for n in names if _matches(n, expected.member)), None)
                    if member is None:
                        raise DataError(f"the archive from {url} has no member {expected.member}")
                    with zf.open(member) as src, atomic_write(folder / filename) as dst:
                        shutil.copyfileobj(src, dst, _CHUNK)
        else:
            with tarfile.open(archive, "r:*") as tf:
                members = [m for m in tf.getmembers() if m.isfile()]
                for filename, expected in files.items():
                    info = next((m for m in members if _matches(m.name, expected.member)), None)
                    stream = None if info is None else tf.extractfile(info)
                    if stream is None:
                        raise DataError(f"the archive from {url} has no member {expected.member}")
                    with stream, atomic_write(folder / filename) as dst:
                        shutil.copyfileobj(stream, dst, _CHUNK)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as e:
        raise DataError(f"the archive downloaded from {url} is damaged: {e}") from None


def download(
    name: str,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download corpus ``name`` into ``cache_dir/<name>/`` unless it is already there.

    Args:
        name: ``"ptb"``, ``"text8"`` or ``"enwik8"``.
        cache_dir: the cache folder, :data:`DEFAULT_CACHE_DIR` by default.
        progress: show a progress bar while downloading (on stderr, when it is a terminal:
            :func:`hmrnn.progress.progress_bar`).
        timeout: seconds to wait for the server before giving up.

    Returns:
        The folder holding the verified files.

    Raises:
        DataError: if the download fails, the archive is damaged or lacks a file, or a file
            fails verification (wrong size or checksum mismatch).
    """
    source = _source(name)
    root = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser()
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    if not verify(name, folder):
        return folder
    archive = folder / (".download-" + source.url.rsplit("/", 1)[-1])
    try:
        _fetch(source.url, archive, name, progress, timeout)
        _extract(archive, source.url, source.files, folder)
    finally:
        archive.unlink(missing_ok=True)
    problems = verify(name, folder)
    if problems:
        raise DataError(
            f"the download of {name} from {source.url} failed verification: {'; '.join(problems)}"
        )
    return folder
