"""Checkpoints: state dicts + config + format version, written atomically.

A checkpoint is one ``torch.save`` file holding only tensors and plain Python data
(never a pickled module), so it loads with ``torch.load(weights_only=True)``::

    {"format": "hmrnn", "version": 1, "kind": "charlm", "config": {...},
     "model": state_dict, ...task- and trainer-specific entries...}

Writes go to a temporary file in the same folder, are flushed to disk, and then
atomically renamed over the target: a crash, Ctrl-C or a full disk mid-write leaves
the previous checkpoint intact.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from hmrnn.training.config import Config

FORMAT = "hmrnn"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read (one line, for the CLI)."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Atomically write ``payload`` (plus format and version) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": FORMAT, "version": VERSION, **payload}
    buffer = io.BytesIO()
    torch.save(data, buffer)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
