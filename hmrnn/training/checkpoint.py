"""Checkpoints: state dicts + config + format version, written atomically.

A checkpoint is one ``torch.save`` file holding only tensors and plain Python data
(never a pickled module), so it loads with ``torch.load(weights_only=True)``::

    {"format": "hmrnn", "version": 1, "kind": "charlm", "config": {...},
     "model": state_dict, ...task- and trainer-specific entries...}

Writes go to a temporary file in the same folder (``.NAME.PID.RANDOM.tmp``, with the mode
the umask gives), are flushed to disk, and then atomically renamed over the target
(:func:`hmrnn._io.atomic_write`): a crash, Ctrl-C or a full disk mid-write leaves the
previous checkpoint intact and removes the temporary file; one left by a killed process is
removed by the next run in the folder (:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from hmrnn._io import atomic_write, temporary_writer
from hmrnn.training.config import Config

FORMAT = "hmrnn"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read (one line, for the CLI)."""


def serialize_checkpoint(payload: dict[str, Any]) -> bytes:
    """The bytes :func:`save_checkpoint` writes for ``payload`` (plus format and version)."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **payload}, buffer)
    return buffer.getvalue()


def save_checkpoint(path: str | Path, payload: dict[str, Any] | bytes) -> Path:
    """Atomically write ``payload`` (a dict, plus format and version; or the bytes of
    :func:`serialize_checkpoint`) to ``path``.

    The file gets the mode the umask gives a new file (as ``open`` would). Any failure
    (a full disk, a read-only folder) removes the temporary file, leaves an earlier
    ``path`` untouched and raises ``OSError`` whose ``filename`` is ``path``.
    """
    path = Path(path)
    data = payload if isinstance(payload, bytes) else serialize_checkpoint(payload)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as f:
            f.write(data)
    except OSError as e:
        raise OSError(e.errno, f"cannot write checkpoint: {e.strerror or e}", str(path)) from None
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


_LEGACY = re.compile(r"\.(last|best)\.pt\.\w{8}\.tmp")  # mkstemp's, before pids


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files in ``folder`` left by writers that died (``kill -9``, a
    crash, a power cut); returns what was removed.

    A file named ``.NAME.PID.RANDOM.tmp`` is removed when its pid is not alive (or is this
    process's, which keeps none between writes); an older checkpoint temporary without a
    pid (``.last.pt.XXXXXXXX.tmp``, from hmrnn versions that used ``mkstemp``) always is.
    """
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for tmp in folder.glob(".*.tmp"):
        pid = temporary_writer(tmp.name)
        if pid is not None:
            stale = pid == os.getpid() or not _pid_alive(pid)
        else:
            stale = _LEGACY.fullmatch(tmp.name) is not None
        if stale:
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def nonfinite_tensors(tree: Any, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in a nested dict / list that hold NaN or inf."""
    if isinstance(tree, torch.Tensor):
        if tree.is_floating_point() or tree.is_complex():
            finite = bool(torch.isfinite(tree).all())
            return [] if finite else [prefix.rstrip(".") or "tensor"]
        return []
    if isinstance(tree, dict):
        return [n for k, v in tree.items() for n in nonfinite_tensors(v, f"{prefix}{k}.")]
    if isinstance(tree, list | tuple):
        return [n for i, v in enumerate(tree) for n in nonfinite_tensors(v, f"{prefix}{i}.")]
    return []


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, or raise CheckpointError."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # any failure to unpickle a file means it is damaged
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt and cannot be read ({type(e).__name__})"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an hmrnn checkpoint")
    if data.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {data.get('version')!r}; this hmrnn reads "
            f"version {VERSION}"
        )
    return data


M = TypeVar("M", bound=nn.Module)


def load_model(
    path: str | Path,
    kind: str,
    build: Callable[[Config, dict[str, Any]], M],
    device: torch.device | str = "cpu",
) -> tuple[M, Config, dict[str, Any]]:
    """Rebuild a trained model of ``kind`` from a checkpoint (file or run folder).

    Args:
        build: makes the untrained model from the checkpoint's :class:`hmrnn.training.config.Config`
            and the checkpoint itself (e.g. its vocabulary).

    Returns:
        ``(model, config, checkpoint)``, the model in evaluation mode on ``device``.

    Raises:
        CheckpointError: unreadable, of another kind, or from an incompatible version.
    """
    checkpoint = load_checkpoint(path, map_location=device)
    if checkpoint.get("kind") != kind:
        raise CheckpointError(f"{path} holds a {checkpoint.get('kind')!r} model, not {kind!r}")
    try:
        config = Config.from_dict(checkpoint["config"])
        model = build(config, checkpoint)
        model.load_state_dict(checkpoint["model"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {path} does not match this version of hmrnn: {str(e).splitlines()[0]}"
        ) from None
    model.to(device).eval()
    return model, config, checkpoint
