"""Files written atomically, one rule for every writer (checkpoints, a run's config and
metrics, downloaded corpora): the bytes go to a temporary file in the target's folder,
are flushed to disk, and the file is then renamed over the target, so that a crash,
Ctrl-C or a full disk mid-write leaves the earlier file (or none) and never half of one.

Every layer may use this module; it imports nothing of hmrnn.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

_TEMPORARY = re.compile(r"\.(.+)\.(\d+)\.[0-9a-f]{8}(\.[a-z]+)?\.tmp")  # .NAME.PID.RANDOM.tmp


def temporary_name(path: Path, tag: str = "") -> Path:
    """``.NAME.PID.RANDOM{tag}.tmp`` beside ``path`` (``tag``: empty, or a dot and lower-case
    letters): the pid tells a later run whether the writer is still alive
    (:func:`temporary_writer`)."""
    return path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{tag}.tmp"


def temporary_writer(name: str) -> int | None:
    """The pid of the process that made the file named ``name`` with :func:`temporary_name`,
    or None when the name is not one of its."""
    match = _TEMPORARY.fullmatch(name)
    return None if match is None else int(match.group(2))


@contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary file that appears at ``path`` only once it has been written in full.

    Writes go to :func:`temporary_name` of ``path`` (in the same folder, so that the rename
    is atomic; created with the mode the umask gives a new file, as ``open`` would); when
    the block ends, the file is flushed and fsync'ed, then renamed over ``path`` with
    ``os.replace``. Any exception (``KeyboardInterrupt`` included) removes the temporary
    file and leaves an earlier ``path`` as it was; an ``OSError`` of those steps (a
    read-only folder, a full disk) names ``path`` as its ``filename``.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
    except OSError as e:
        raise _naming(e, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            try:
                f.flush()
                os.fsync(f.fileno())
                os.replace(tmp, path)
            except OSError as e:
                raise _naming(e, path) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _naming(error: OSError, path: Path) -> OSError:
    """``error`` said of ``path`` (not of the temporary file, or of no file)."""
    return OSError(error.errno, error.strerror or str(error), str(path))
