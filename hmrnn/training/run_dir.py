"""Run folders: which folder a run writes to, and a lock that keeps it to one live run.

A run folder holds one run (``last.pt``, ``best.pt``, ``metrics.jsonl``, ``config.toml``,
``tensorboard/``).
``hmrnn train`` continues it only with ``--resume`` and replaces it only with
``--overwrite``; otherwise a new run whose ``run.out_dir`` already holds one writes to
the first free numbered sibling (``runs/default-2``, ``runs/default-3``, ...) and says so.
While a run is live its folder is locked (``.hmrnn.lock``, an ``flock`` the kernel
releases when the process ends, even by ``kill -9``): a second run in the same folder,
fresh or resumed, is refused.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from pathlib import Path

from hmrnn._io import atomic_write
from hmrnn.training.config import Config

CONFIG_NAME = "config.toml"
RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", CONFIG_NAME)
LOCK_NAME = ".hmrnn.lock"


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` holds (part of) an earlier run."""
    return any((folder / name).exists() for name in RUN_FILES)


def _check_writable(folder: Path) -> None:
    """Refuse early a folder that is a file, or whose nearest existing ancestor is not a
    writable folder (OSError naming the path)."""
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "run.out_dir is a file, not a folder",
                                 str(folder))
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(existing))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, "run.out_dir cannot be written here "
                              "(permission denied)", str(existing))


def choose_run_dir(out_dir: str | Path, *, resume: bool, overwrite: bool) -> Path:
    """The folder a run writes to: ``out_dir`` itself when resuming, overwriting or when it
    holds no run, else the first numbered sibling ``out_dir-2``, ``-3``, ... that holds none.
    Nothing is created."""
    folder = Path(out_dir)
    _check_writable(folder)
    if resume or overwrite or not holds_run(folder):
        return folder
    n = 2
    while True:
        candidate = folder.with_name(f"{folder.name}-{n}")
        if not (candidate.exists() and (not candidate.is_dir() or holds_run(candidate))):
            _check_writable(candidate)
            return candidate
        n += 1


class RunInUseError(OSError):
    """Another live process holds the run folder's lock."""


class RunLock:
    """An exclusive lock on a run folder, held until :meth:`release` (or the process ends).

    The lock file is removed on release; acquiring checks that the file it locked is still
    the one at the path (another process may have released and removed it meanwhile).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                os.close(fd)
                raise RunInUseError(
                    errno.EBUSY, "another hmrnn run is writing to this folder"
                    + (f" (pid {owner})" if owner else "")
                    + "; wait for it, or pick another run.out_dir", str(self.folder)) from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # released and removed by its holder meanwhile: take the new one
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # closing releases the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


def clear_run(folder: Path) -> None:
    """Remove an earlier run's files from ``folder`` (``--overwrite``); other files stay."""
    for name in RUN_FILES:
        (folder / name).unlink(missing_ok=True)
    shutil.rmtree(folder / "tensorboard", ignore_errors=True)


def write_config(folder: Path, config: Config) -> Path:
    """Write ``folder/config.toml``, the run's resolved config as TOML, atomically; a
    resumed run writes its own (the checkpoint's config with the overrides it took)."""
    path = folder / CONFIG_NAME
    with atomic_write(path) as f:
        f.write(("# the resolved config of this run (hmrnn writes it at the start of "
                 "training)\n" + config.to_toml()).encode("utf-8"))
    return path
