"""IAM-OnDB online handwriting for the HM-RNN paper's section 4.2.

The data set (Liwicki & Bunke, ICDAR 2005) holds one pen trajectory per written text
line. This module reads it, keeps the lines the paper keeps, splits them, and turns them
into what the model reads:

* **Lines** are float32 arrays ``(T_i, 3)`` of absolute points ``(x, y, pen_up)`` in
  whiteboard units (y grows downwards); ``pen_up = 1`` on the last point of every stroke,
  the paper's "p_t = 1 indicates an end of a stroke".
* **Selection and split** (paper section 4.2): lines of at least 300 points are kept
  (11,628 of the 12,195 line files) and split 10,465 / 581 / 582 by one fixed permutation
  of the kept lines, sorted by line id, drawn with ``numpy.random.default_rng(SPLIT_SEED)``.
  The paper does not publish its split, so this one is ours; the seed travels with the
  normalisation statistics (:meth:`Normalizer.to_dict`).
* **Offsets.** The model reads offsets ``(dx, dy, pen)``: step ``s`` is the move from
  point ``s`` to point ``s + 1`` together with the pen bit of the point it arrives at, so a
  line of ``T_i`` points gives ``T_i - 1`` offset steps and the first point is dropped (its
  offset from any origin would be an absolute position, which is not a property of the
  handwriting). Offsets rather than positions are modelled because the model predicts the
  next step from the current one, and offsets are translation invariant: the same letter
  has the same offsets wherever it is written. This is also Graves's (2013) practice.
* **Normalisation.** ``dx`` and ``dy`` are standardised separately with the mean and
  (population) standard deviation of the offsets of the *training* lines; the pen bit is
  left as it is. What is normalised is the offsets, not the absolute coordinates.
* **Next-step pairs.** At step ``t`` the model reads offset ``t`` and predicts offset
  ``t + 1``: a sequence of ``T`` offsets gives ``T - 1`` inputs and targets
  (:func:`pad_batch`).

Shape legend: T time, N batch.
"""

from __future__ import annotations

import re
import tarfile
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from hmrnn.data.errors import DataError

SPLIT_SEED = 20170101
"""Seed of the permutation that splits the kept lines into train / valid / test."""

MIN_LENGTH = 300
"""The paper drops every line shorter than this many points."""

PAPER_SPLIT_SIZES = (10465, 581, 582)
"""Train, valid and test sizes of the paper (section 4.2)."""

NPZ_NAME = "iamondb_lines.npz"
TAR_NAME = "iamondb_lineStrokes_ascii.tar.xz"

_NPZ_KEYS = ("ids", "offsets", "points")
_LINE_ID = re.compile(r"([^/]+)\.xml$")

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, Tensor)


class HandwritingDataError(DataError):
    """A handwriting data file is missing, unreadable or not in the expected format
    (a :class:`hmrnn.data.errors.DataError`, hence a ``ValueError``)."""


# ----------------------------------------------------------------------------- reading


def read_npz(path: str | Path) -> tuple[list[str], list[np.ndarray]]:
    """Read every line of the packed ``iamondb_lines.npz``.

    The file holds ``ids`` ``(M,)``, ``offsets`` ``(M + 1,)`` and ``points``
    ``(sum T_i, 3)`` (int16 x, y, pen_up); line ``i`` is
    ``points[offsets[i]:offsets[i + 1]]`` (see ``make_iamondb_npz.py`` beside the data).

    Returns:
        ``(ids, lines)``: M line ids and M float32 arrays ``(T_i, 3)`` of absolute points.

    Raises:
        HandwritingDataError: if the file is missing, is not an npz archive, lacks one of
            the arrays above or they do not fit together.
    """
    path = Path(path)
    if not path.is_file():
        raise HandwritingDataError(f"The IAM-OnDB npz file {path} does not exist.")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise HandwritingDataError(
                f"The file {path} is a single .npy array, not an npz archive of named arrays."
            )
        with archive:
            arrays = {k: archive[k] for k in _NPZ_KEYS if k in archive.files}
    except (OSError, zipfile.BadZipFile) as error:
        raise HandwritingDataError(
            f"The file {path} could not be read as an npz archive: {error}"
        ) from error
    except ValueError as error:
        if isinstance(error, HandwritingDataError):
            raise
        raise HandwritingDataError(
            f"The file {path} could not be read as an npz archive: {error}"
        ) from error
    missing = [k for k in _NPZ_KEYS if k not in arrays]
    if missing:
        raise HandwritingDataError(
            f"The npz file {path} lacks the arrays {missing}; expected {list(_NPZ_KEYS)} "
            "as written by make_iamondb_npz.py."
        )
    ids, offsets, points = arrays["ids"], arrays["offsets"], arrays["points"]
    if points.ndim != 2 or points.shape[1] != 3:
        raise HandwritingDataError(
            f"The points array of {path} must have shape (P, 3), got {points.shape}."
        )
    if offsets.ndim != 1 or offsets.shape[0] != ids.shape[0] + 1:
        raise HandwritingDataError(
            f"The offsets array of {path} must hold one more entry than ids "
            f"({ids.shape[0] + 1}), got shape {offsets.shape}."
        )
    if offsets[0] != 0 or offsets[-1] != points.shape[0] or np.any(np.diff(offsets) < 1):
        raise HandwritingDataError(
            f"The offsets of {path} must rise strictly from 0 to the number of points "
            f"({points.shape[0]})."
        )
    data = points.astype(np.float32)
    lines = [data[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    return [str(i) for i in ids], lines


def parse_line_strokes(xml: bytes | str) -> np.ndarray:
    """Parse one IAM-OnDB ``lineStrokes`` XML file into absolute points.

    Every ``<Stroke>`` contributes its ``<Point x= y=>`` in order, the last one with
    ``pen_up = 1``; empty strokes are skipped, as ``make_iamondb_npz.py`` does.

    Returns:
        float32 ``(T, 3)``: x, y, pen_up.

    Raises:
        HandwritingDataError: if the XML does not parse or holds no point.
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as error:
        raise HandwritingDataError(f"A lineStrokes file is not valid XML: {error}") from error
    rows: list[tuple[float, float, float]] = []
    for stroke in root.iter("Stroke"):
        stroke_points = [
            (float(p.get("x", "nan")), float(p.get("y", "nan"))) for p in stroke.iter("Point")
        ]
        rows.extend(
            (x, y, float(k == len(stroke_points) - 1)) for k, (x, y) in enumerate(stroke_points)
        )
    if not rows:
        raise HandwritingDataError("A lineStrokes file holds no pen point.")
    points = np.asarray(rows, dtype=np.float32)
    if not np.isfinite(points).all():
        raise HandwritingDataError("A lineStrokes file has a point without x or y.")
    return points


def read_tar(path: str | Path) -> tuple[list[str], list[np.ndarray]]:
    """Read every ``lineStrokes/**/<id>.xml`` of a (compressed) tar of the raw XML files.

    The fallback when no npz exists; it gives the same lines as :func:`read_npz` on the
    shared archive but takes about 30 s (it inflates and parses some 445 MB of XML).

    Returns:
        ``(ids, lines)`` sorted by line id, lines as float32 ``(T_i, 3)`` absolute points.

    Raises:
        HandwritingDataError: if the file is missing, is not a tar archive, or holds no
            lineStrokes XML file.
    """
    path = Path(path)
    if not path.is_file():
        raise HandwritingDataError(f"The IAM-OnDB tar file {path} does not exist.")
    found: dict[str, np.ndarray] = {}
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for member in tar:
                match = _LINE_ID.search(member.name)
                if not member.isfile() or "lineStrokes/" not in member.name or match is None:
                    continue
                handle = tar.extractfile(member)
                if handle is None:
                    continue
                try:
                    found[match.group(1)] = parse_line_strokes(handle.read())
                except HandwritingDataError as error:
                    raise HandwritingDataError(f"{member.name} in {path}: {error}") from error
    except (tarfile.TarError, OSError, EOFError) as error:
        raise HandwritingDataError(
            f"The file {path} could not be read as a tar archive: {error}"
        ) from error
    if not found:
        raise HandwritingDataError(f"The tar file {path} holds no lineStrokes/**/*.xml file.")
    ids = sorted(found)
    return ids, [found[i] for i in ids]


def read_lines(path: str | Path) -> tuple[list[str], list[np.ndarray]]:
    """Read all IAM-OnDB lines from an npz, a tar archive, or a folder holding either.

    A folder is searched for ``iamondb_lines.npz`` first and then for
    ``iamondb_lineStrokes_ascii.tar.xz``.

    Returns:
        ``(ids, lines)``: line ids and float32 ``(T_i, 3)`` absolute points.
    """
    path = Path(path)
    if not path.exists():
        raise HandwritingDataError(f"The handwriting data {path} does not exist.")
    if path.is_dir():
        for name in (NPZ_NAME, TAR_NAME):
            if (path / name).is_file():
                return read_lines(path / name)
        raise HandwritingDataError(f"The folder {path} holds neither {NPZ_NAME} nor {TAR_NAME}.")
    if path.suffix == ".npz":
        return read_npz(path)
    if ".tar" in path.suffixes or path.suffix == ".tgz":
        return read_tar(path)
    raise HandwritingDataError(
        f"The handwriting file {path} is neither an .npz nor a .tar(.xz/.gz/.bz2) archive."
    )


# ----------------------------------------------------------------- offsets and splitting


def to_offsets(points: ArrayOrTensor) -> ArrayOrTensor:
    """Absolute points to offsets: step ``s`` is ``(p_{s+1} - p_s, pen_{s+1})``.

    Shape:
        points ``(T, 3)`` -> offsets ``(T - 1, 3)``. The first point's own pen bit is
        dropped with it.
    """
    if points.ndim != 2 or points.shape[-1] != 3 or points.shape[0] < 2:
        raise ValueError(
            f"to_offsets expects points of shape (T, 3) with T >= 2, got {tuple(points.shape)}"
        )
    offsets = points[1:] * 1  # a copy with the arrival points' pen bits
    offsets[:, :2] = points[1:, :2] - points[:-1, :2]
    return offsets


def to_points(offsets: ArrayOrTensor, start: Sequence[float] = (0.0, 0.0)) -> ArrayOrTensor:
    """Offsets back to absolute points, starting from ``start`` (the inverse of
    :func:`to_offsets` up to the first point's pen bit, which is set to 0).

    Shape:
        offsets ``(T, 3)`` -> points ``(T + 1, 3)``.
    """
    if offsets.ndim != 2 or offsets.shape[-1] != 3:
        raise ValueError(f"to_points expects offsets of shape (T, 3), got {tuple(offsets.shape)}")
    if isinstance(offsets, Tensor):
        first = offsets.new_tensor([[float(start[0]), float(start[1]), 0.0]])
        points = torch.cat([first, offsets])
        points[:, :2] = torch.cumsum(points[:, :2], dim=0)
        return points
    first = np.array([[start[0], start[1], 0.0]], dtype=offsets.dtype)
    points = np.concatenate([first, offsets])
    points[:, :2] = np.cumsum(points[:, :2], axis=0, dtype=np.float64).astype(offsets.dtype)
    return points


def split_indices(
    lengths: Sequence[int],
    sizes: Sequence[int] = PAPER_SPLIT_SIZES,
    *,
    min_length: int = MIN_LENGTH,
    seed: int = SPLIT_SEED,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the lines of at least ``min_length`` points and split them by a seeded permutation.

    The kept lines, in their given order, are permuted by
    ``numpy.random.default_rng(seed).permutation``; the first ``sizes[0]`` go to train, the
    next ``sizes[1]`` to valid and the last ``sizes[2]`` to test.

    Returns:
        Three int64 arrays of indices into ``lengths`` (train, valid, test), each sorted.

    Raises:
        ValueError: if ``sizes`` does not have three entries summing to the number of kept
            lines.
    """
    if len(sizes) != 3 or any(int(s) < 0 for s in sizes):
        raise ValueError(f"sizes must be three non-negative counts, got {list(sizes)}")
    kept = np.flatnonzero(np.asarray(lengths, dtype=np.int64) >= min_length)
    if sum(sizes) != kept.size:
        raise ValueError(
            f"{kept.size} lines have at least {min_length} points but the split sizes "
            f"{list(sizes)} sum to {sum(sizes)}."
        )
    order = kept[np.random.default_rng(seed).permutation(kept.size)]
    cut1, cut2 = int(sizes[0]), int(sizes[0]) + int(sizes[1])
    return np.sort(order[:cut1]), np.sort(order[cut1:cut2]), np.sort(order[cut2:])


# ------------------------------------------------------------------------ normalisation


def _float_copy(x: ArrayOrTensor) -> ArrayOrTensor:
    """A floating-point copy (float32 for integer input), so results are never truncated."""
    if isinstance(x, Tensor):
        return x.clone() if x.is_floating_point() else x.float()
    return x.astype(np.result_type(x.dtype, np.float32))


@dataclass(frozen=True)
class Normalizer:
    """Standardises the ``dx`` and ``dy`` columns of offsets; the pen column is untouched.

    ``normalize(d) = ((dx - mean_x) / std_x, (dy - mean_y) / std_y, pen)``.

    Attributes:
        mean_x, mean_y, std_x, std_y: statistics of the training offsets (whiteboard units).
        split_seed: the seed of the train / valid / test permutation these statistics came
            from (``None`` when not made from a split).
        min_length: the minimum line length of that split.
    """

    mean_x: float
    mean_y: float
    std_x: float
    std_y: float
    split_seed: int | None = None
    min_length: int | None = None

    def __post_init__(self) -> None:
        if not (self.std_x > 0 and self.std_y > 0):
            raise ValueError(
                f"Normalizer standard deviations must be positive, got std_x={self.std_x}, "
                f"std_y={self.std_y}"
            )

    @classmethod
    def fit(
        cls,
        offsets: Sequence[np.ndarray],
        *,
        split_seed: int | None = None,
        min_length: int | None = None,
    ) -> Normalizer:
        """Statistics of ``dx`` and ``dy`` pooled over every step of every ``(T_i, 3)`` array."""
        if not offsets:
            raise ValueError("Normalizer.fit needs at least one offset sequence.")
        steps = np.concatenate([np.asarray(o, dtype=np.float64)[:, :2] for o in offsets])
        mean = steps.mean(axis=0)
        std = steps.std(axis=0)
        return cls(
            float(mean[0]), float(mean[1]), float(std[0]), float(std[1]), split_seed, min_length
        )

    def normalize(self, offsets: ArrayOrTensor) -> ArrayOrTensor:
        """Shape: ``(..., 3)`` raw offsets -> ``(..., 3)`` normalised, a new array or tensor
        of the same kind (integer input gives float32)."""
        out = _float_copy(offsets)
        out[..., 0] = (out[..., 0] - self.mean_x) / self.std_x
        out[..., 1] = (out[..., 1] - self.mean_y) / self.std_y
        return out

    def denormalize(self, offsets: ArrayOrTensor) -> ArrayOrTensor:
        """Shape: ``(..., 3)`` normalised offsets -> ``(..., 3)`` raw, a new array or tensor
        of the same kind."""
        out = _float_copy(offsets)
        out[..., 0] = out[..., 0] * self.std_x + self.mean_x
        out[..., 1] = out[..., 1] * self.std_y + self.mean_y
        return out

    def log_jacobian(self) -> float:
        """``log(std_x * std_y)``: nats per step to subtract from a log-density over
        normalised offsets to get one over raw offsets (whiteboard units)."""
        return float(np.log(self.std_x) + np.log(self.std_y))

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a checkpoint (floats, ints and ``None`` only)."""
        return {
            "kind": "offsets",
            "mean_x": self.mean_x,
            "mean_y": self.mean_y,
            "std_x": self.std_x,
            "std_y": self.std_y,
            "split_seed": self.split_seed,
            "min_length": self.min_length,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalizer:
        """Rebuild from :meth:`to_dict`'s output."""
        if data.get("kind") != "offsets":
            raise ValueError(
                f"This normaliser dict is for {data.get('kind')!r} but only 'offsets' is known."
            )
        missing = [k for k in ("mean_x", "mean_y", "std_x", "std_y") if k not in data]
        if missing:
            raise ValueError(f"The normaliser dict lacks the keys {missing}.")
        return cls(
            float(data["mean_x"]),
            float(data["mean_y"]),
            float(data["std_x"]),
            float(data["std_y"]),
            data.get("split_seed"),
            data.get("min_length"),
        )


# -------------------------------------------------------------------------- data bundle


@dataclass
class HandwritingData:
    """The three splits as normalised offset sequences, ready for :func:`pad_batch`.

    Attributes:
        train, valid, test: float32 arrays ``(T_i - 1, 3)`` of normalised offsets.
        normalizer: the training-set statistics (saved with a checkpoint).
        train_ids, valid_ids, test_ids: the line id of every sequence, in the same order.
    """

    train: list[np.ndarray]
    valid: list[np.ndarray]
    test: list[np.ndarray]
    normalizer: Normalizer
    train_ids: list[str] = field(default_factory=list)
    valid_ids: list[str] = field(default_factory=list)
    test_ids: list[str] = field(default_factory=list)


def build_splits(
    ids: Sequence[str],
    lines: Sequence[np.ndarray],
    sizes: Sequence[int] = PAPER_SPLIT_SIZES,
    *,
    min_length: int = MIN_LENGTH,
    seed: int = SPLIT_SEED,
) -> HandwritingData:
    """Select, split, convert to offsets and normalise by the training offsets.

    Args:
        ids: one id per line.
        lines: absolute points, float ``(T_i, 3)``.
        sizes, min_length, seed: as :func:`split_indices`.
    """
    if len(ids) != len(lines):
        raise ValueError(f"Got {len(ids)} ids for {len(lines)} lines.")
    parts = split_indices([len(line) for line in lines], sizes, min_length=min_length, seed=seed)
    offsets = [[to_offsets(np.asarray(lines[i], dtype=np.float32)) for i in part] for part in parts]
    normalizer = Normalizer.fit(offsets[0], split_seed=seed, min_length=min_length)
    train, valid, test = ([normalizer.normalize(o) for o in part] for part in offsets)
    train_ids, valid_ids, test_ids = ([ids[i] for i in part] for part in parts)
    return HandwritingData(train, valid, test, normalizer, train_ids, valid_ids, test_ids)


# ------------------------------------------------------------------------------ batching


def pad_batch(seqs: Sequence[np.ndarray | Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Next-step pairs of a batch of variable-length offset sequences, zero padded.

    Sequence ``n`` of length ``T_n`` gives inputs ``seq[:-1]`` and targets ``seq[1:]``.

    Shape:
        seqs: N arrays ``(T_n, 3)`` with ``T_n >= 2``.
        inputs, targets: float32 ``(T, N, 3)`` with ``T = max_n T_n - 1``.
        mask: bool ``(T, N)``, True on the ``T_n - 1`` real steps of sequence n.
    """
    if len(seqs) == 0:
        raise ValueError("pad_batch needs at least one sequence.")
    tensors = [torch.as_tensor(np.asarray(s), dtype=torch.float32) for s in seqs]
    for n, s in enumerate(tensors):
        if s.dim() != 2 or s.shape[1] != 3 or s.shape[0] < 2:
            raise ValueError(
                f"Sequence {n} must have shape (T, 3) with T >= 2, got {tuple(s.shape)}."
            )
    steps = max(s.shape[0] for s in tensors) - 1
    inputs = torch.zeros(steps, len(tensors), 3)
    targets = torch.zeros(steps, len(tensors), 3)
    mask = torch.zeros(steps, len(tensors), dtype=torch.bool)
    for n, s in enumerate(tensors):
        t = s.shape[0] - 1
        inputs[:t, n] = s[:-1]
        targets[:t, n] = s[1:]
        mask[:t, n] = True
    return inputs, targets, mask
