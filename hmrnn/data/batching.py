"""Batches for training with truncated BPTT and for exact evaluation.

Both split a corpus into N contiguous streams that are read in parallel, time-major, so that
the recurrent state of stream j carries from one window to the next (docs/model.md decision 8):

- :class:`StreamBatcher` (training): N equal streams, the tail dropped; segment k is
  ``(x, y)`` with y the next symbol of every x.
- :func:`eval_batches` (evaluation): every target ``ids[1:]`` scored exactly once; streams
  of nearly equal length, padded at their ends, with a mask of the real targets.

Shape legend: S stream length, T window (segment) length, N batch (streams).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from hmrnn.data.errors import DataError


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DataError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _as_ids(ids: object) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(
            f"ids must be a 1-D array of integer ids, got shape {arr.shape} of {arr.dtype}"
        )
    return arr.astype(np.int64, copy=False)


class StreamBatcher:
    """Cut a sequence of ids into N parallel streams and serve fixed-length segments.

    The ids are split into ``N = batch_size`` contiguous streams of ``S = len(ids) // N``
    symbols each (the last ``len(ids) % N`` are dropped); stream j is
    ``ids[j*S:(j+1)*S]``. Segment k holds steps ``k*T`` to ``(k+1)*T`` of every stream as
    inputs and the following symbol of each as targets, so consecutive segments continue
    each other and the caller carries the state of every stream across them.

    Args:
        ids: ``(len,)`` integer ids.
        batch_size: N, the number of streams.
        seq_len: T, the segment length.

    Attributes:
        streams: ``(S, N)`` int64 tensor, column j is stream j.
        num_segments: ``(S - 1) // T``, the number of full segments.

    Raises:
        DataError: if ``len(ids) < N * (T + 1)``, too short for one segment per stream.

    Example:
        >>> b = StreamBatcher(np.arange(20), batch_size=2, seq_len=3)
        >>> x, y = b.segment(0)
        >>> x.T.tolist(), y.T.tolist(), len(b)
        ([[0, 1, 2], [10, 11, 12]], [[1, 2, 3], [11, 12, 13]], 3)
    """

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int):
        ids = _as_ids(ids)
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.seq_len = _positive_int(seq_len, "seq_len")
        needed = self.batch_size * (self.seq_len + 1)
        if len(ids) < needed:
            raise DataError(
                f"data too short: needs at least {needed:,} symbols for one batch of "
                f"{self.batch_size} segments of length {self.seq_len}, has {len(ids):,}"
            )
        self.stream_len = len(ids) // self.batch_size
        used = ids[: self.stream_len * self.batch_size]
        self.streams = torch.from_numpy(used.reshape(self.batch_size, self.stream_len).T.copy())
        self.num_segments = (self.stream_len - 1) // self.seq_len

    def __len__(self) -> int:
        return self.num_segments

    def segment(self, k: int) -> tuple[Tensor, Tensor]:
        """Segment ``k`` (0-based) as ``(x, y)``, each a ``(T, N)`` int64 tensor.

        ``y[t, j]`` is the symbol after ``x[t, j]`` in stream j.
        """
        if not 0 <= k < self.num_segments:
            raise IndexError(f"segment {k} is out of range; there are {self.num_segments}")
        start = k * self.seq_len
        x = self.streams[start : start + self.seq_len]
        y = self.streams[start + 1 : start + self.seq_len + 1]
        return x, y

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        """All segments in order, as from :meth:`segment`."""
        for k in range(self.num_segments):
            yield self.segment(k)

    def rank_slice(self, rank: int, world_size: int) -> slice:
        """The columns (streams) of every segment that belong to ``rank`` of ``world_size``.

        The N streams are cut into ``world_size`` contiguous groups of
        ``N / world_size``; so ``x[:, batcher.rank_slice(r, W)]`` over all ranks r is the
        whole batch, and a W-rank run sees exactly the data of one process.

        Raises:
            DataError: if ``batch_size`` is not divisible by ``world_size``.
            ValueError: if ``rank`` is not in ``[0, world_size)``.
        """
        world_size = _positive_int(world_size, "world_size")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if self.batch_size % world_size:
            raise DataError(
                f"batch_size {self.batch_size} is not divisible by world_size {world_size}; "
                "every rank must get the same number of streams"
            )
        per_rank = self.batch_size // world_size
        return slice(rank * per_rank, (rank + 1) * per_rank)


class EvalBatches:
    """Windows that score every target of a sequence exactly once; made by :func:`eval_batches`.

    The ``P = len(ids) - 1`` pairs ``(ids[i], ids[i+1])`` are split into N contiguous
    streams whose lengths differ by at most one (the first ``P % N`` streams are one longer;
    streams are empty when ``N > P``). Stream j is read in windows of T steps; the shorter
    streams are padded at their ends (with id 0), so the padding never precedes a real step
    of its stream and carrying the state across windows stays exact.

    Iterating yields ``(x, y, mask)``, each ``(T, N)`` (the last window may be shorter in
    T): x and y int64, ``mask`` bool and True where y is a real target. Iterating again
    starts over.

    Attributes:
        num_targets: P, the number of scored targets (the sum of every ``mask``).
        num_windows: the number of windows, also ``len(self)``.
        batch_size, seq_len: N and T.
    """

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int):
        self._ids = _as_ids(ids)
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.seq_len = _positive_int(seq_len, "seq_len")
        if len(self._ids) < 2:
            raise DataError(
                f"data too short: needs at least 2 symbols to score one target, "
                f"has {len(self._ids)}"
            )
        self.num_targets = len(self._ids) - 1
        base, extra = divmod(self.num_targets, self.batch_size)
        stream = np.arange(self.batch_size)
        self._lengths = base + (stream < extra)  # (N,)
        self._starts = stream * base + np.minimum(stream, extra)  # (N,)
        self._steps = int(self._lengths.max())
        self.num_windows = -(-self._steps // self.seq_len)

    def __len__(self) -> int:
        return self.num_windows

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        for pos, real in self.positions():
            x = np.where(real, self._ids[pos], 0)
            y = np.where(real, self._ids[pos + 1], 0)
            yield torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(real)

    def positions(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The windows as ``(pos, real)``, each ``(T, N)``: the index into ``ids`` of each
        input (0 in the padding) and where it is real, in the order of iteration; to read
        something else aligned with ``ids`` alike."""
        for w in range(self.num_windows):
            t = np.arange(w * self.seq_len, min((w + 1) * self.seq_len, self._steps))  # (T,)
            real = t[:, None] < self._lengths[None, :]  # (T, N)
            yield np.where(real, self._starts[None, :] + t[:, None], 0), real


def eval_batches(ids: np.ndarray, batch_size: int, seq_len: int) -> EvalBatches:
    """Evaluation windows over ``ids`` that score every target ``ids[1:]`` exactly once.

    Args:
        ids: ``(len,)`` integer ids, at least 2.
        batch_size: N, the number of parallel streams.
        seq_len: T, the window length.

    Returns:
        An :class:`EvalBatches`: iterate it for ``(x, y, mask)`` windows, each ``(T, N)``
        (the last may be shorter in T); its ``num_targets`` is ``len(ids) - 1``.

    Raises:
        DataError: if ``ids`` has fewer than 2 symbols.

    Example:
        >>> batches = eval_batches(np.arange(8), batch_size=2, seq_len=3)
        >>> [m.sum().item() for _, _, m in batches], batches.num_targets
        ([6, 1], 7)
    """
    return EvalBatches(ids, batch_size, seq_len)
