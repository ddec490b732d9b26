"""Handwriting generation on IAM-OnDB as a task of the generic trainer (paper section 4.2).

:class:`HandwritingTask` plugs the handwriting model into :class:`hmrnn.training.trainer.Trainer`
as :class:`hmrnn.tasks.charlm.task.CharLMTask` plugs in the character model:

* **Batches.** Epoch ``e`` visits the training lines in the order of
  ``numpy.random.default_rng([train.seed, e]).permutation``, ``train.batch_size`` lines a
  step; the last incomplete batch is dropped (``steps_per_epoch = n_train // batch_size``,
  and a different remainder is left out every epoch). The batch of global step ``k`` is a
  function of ``k`` alone, which is what makes a resumed run equal an uninterrupted one.
* **No carried state.** Every line is one sequence read from the zero state; lines of
  different lengths are zero padded and masked (:func:`~hmrnn.tasks.handwriting.data.pad_batch`).
* **Windows.** ``train.seq_len = 0`` trains on whole lines, as the paper does.
  ``train.seq_len = S > 0`` cuts every training line to ``S + 1`` offsets (``S``
  predicted steps) starting at a position drawn by the same epoch generator: a budget
  measure for small machines. Evaluation always scores whole lines.
* **Loss.** The mean negative log-likelihood per predicted (unmasked) step, in nats, of
  the normalised offsets, pen-up Bernoulli included.
* **Evaluation.** ``loss`` (nats per step), the paper's Table 3 measure
  ``loglik_per_sequence`` (convention in :mod:`hmrnn.tasks.handwriting.model`), and for an
  HM-LSTM of three or more layers the boundary rates ``z`` and the precision, recall and
  F1 of layer 2's boundaries against the pen-ups
  (:func:`hmrnn.tasks.handwriting.model.evaluate`). ``train.eval_chars`` > 0 caps each
  validation at the first lines that predict at most that many points (for smoke runs).
* **Data-parallel.** Each of W processes reads a contiguous 1/W of every batch
  (``batch_size`` must be a multiple of W), and its summed loss is divided by the number
  of steps of the whole batch times 1/W, so that DDP's gradient average is the gradient
  of the whole batch's per-step mean. Evaluation splits the lines among the processes
  and all-reduces the sums (:class:`~hmrnn.tasks.handwriting.model.EvalTotals`).
* **symbols_per_step** (the trainer's throughput figure, shown as ``chars/s``):
  ``batch_size`` times the mean number of predicted steps of a training line after the
  window cut, i.e. points per step without the padding.

Shape legend: T time, N batch, L layers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hmrnn.data import SPLIT_FRACTIONS, DataError, split_sizes
from hmrnn.model.graphed import GraphedStack, graph_stacks
from hmrnn.tasks.handwriting import mdn
from hmrnn.tasks.handwriting.data import (
    MIN_LENGTH,
    PAPER_SPLIT_SIZES,
    SPLIT_SEED,
    HandwritingData,
    HandwritingDataError,
    Normalizer,
    build_splits,
    pad_batch,
    read_lines,
)
from hmrnn.tasks.handwriting.model import (
    EvalTotals,
    HandwritingModel,
    build_handwriting_model,
    evaluation_totals,
)
from hmrnn.tasks.hooks import BoundaryTraining, anneal_slope
from hmrnn.training.checkpoint import CheckpointError, load_model
from hmrnn.training.config import Config, ConfigError
from hmrnn.training.distributed import DistContext

SPLITS = ("train", "valid", "test")
KIND = "handwriting"
PENUP_TOLERANCE = 1
"""Steps within which a layer-2 boundary still hits a pen-up (one-to-one matching)."""


# ------------------------------------------------------------------------------ the data


def _ids_digest(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()


def load_handwriting_data(
    path: str | Path,
    fractions: Sequence[float] = SPLIT_FRACTIONS,
    *,
    split: Mapping[str, Any] | None = None,
) -> tuple[HandwritingData, dict[str, Any]]:
    """Read IAM-OnDB, keep the lines of at least 300 points, split them and normalise.

    A file holding all 11,628 long lines of IAM-OnDB gets the paper's 10,465 / 581 / 582
    split; any other set of lines (a subset, a test's own small stroke set) is split by
    ``fractions`` (train, valid, test), with the same seeded permutation
    (:func:`hmrnn.tasks.handwriting.data.split_indices`).

    Args:
        path: ``iamondb_lines.npz``, the raw tar, or a folder holding either.
        fractions: the split of a set of lines that is not the whole of IAM-OnDB.
        split: a split record from a checkpoint: its sizes, seed and minimum length are
            used, and the line ids of every split must hash to the recorded digests.

    Returns:
        ``(data, record)``; the record ``{"seed", "min_length", "sizes", "sha256"}``
        (``sha256`` maps each split to the digest of its newline-joined line ids) goes into
        checkpoints.

    Raises:
        HandwritingDataError: the file is missing or malformed, too few lines to split, or
            not the lines the ``split`` record was made from.
    """
    ids, lines = read_lines(path)
    if split is None:
        kept = sum(len(line) >= MIN_LENGTH for line in lines)
        if kept == sum(PAPER_SPLIT_SIZES):
            sizes: tuple[int, ...] = PAPER_SPLIT_SIZES
        else:
            try:
                sizes = split_sizes(kept, fractions)
            except DataError as error:
                raise HandwritingDataError(
                    f"{path}: {kept} lines have at least {MIN_LENGTH} points, which cannot be "
                    f"split by data.fractions={list(fractions)} ({error})"
                ) from None
        seed, min_length = SPLIT_SEED, MIN_LENGTH
    else:
        try:
            sizes = tuple(int(s) for s in split["sizes"])
            seed, min_length = int(split["seed"]), int(split["min_length"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError("the checkpoint's split record is incomplete") from None
    try:
        data = build_splits(ids, lines, sizes, min_length=min_length, seed=seed)
    except ValueError as error:
        raise HandwritingDataError(f"{path}: {error}") from None
    record = {
        "seed": seed,
        "min_length": min_length,
        "sizes": list(sizes),
        "sha256": {name: _ids_digest(getattr(data, f"{name}_ids")) for name in SPLITS},
    }
    if split is not None and record["sha256"] != split.get("sha256"):
        raise HandwritingDataError(
            f"{path} does not hold the lines this model was trained on: the line ids of its "
            "train / valid / test splits differ from those recorded in the checkpoint"
        )
    return data, record


def pick_line(data: HandwritingData, split: str, line: str) -> tuple[str, np.ndarray]:
    """One line of the data: ``line`` is an index into ``split`` (``"7"``) or a line id
    (``"a01-000u-01"``, looked up in every split).

    Returns:
        ``(line_id, offsets)``, offsets normalised, float32 ``(T, 3)``.

    Raises:
        HandwritingDataError: no such index or id.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if line.isdigit():
        seqs, ids = getattr(data, split), getattr(data, f"{split}_ids")
        index = int(line)
        if index >= len(seqs):
            raise HandwritingDataError(
                f"line {index} does not exist: the {split} split has {len(seqs)} lines "
                f"(0 to {len(seqs) - 1})"
            )
        return ids[index], seqs[index]
    for name in SPLITS:
        ids = getattr(data, f"{name}_ids")
        if line in ids:
            return line, getattr(data, name)[ids.index(line)]
    raise HandwritingDataError(
        f"no line has the id {line!r} among the lines of at least {MIN_LENGTH} points; "
        "give an id such as a01-000u-01 or an index into the split"
    )


# ----------------------------------------------------------------------------- the task


class HandwritingTask:
    """The handwriting task for :class:`hmrnn.training.trainer.Trainer` (see the module docstring).

    Args:
        model: the :class:`HandwritingModel` to train.
        data: the splits, normalised (:func:`load_handwriting_data`).
        config: the run configuration; ``train.batch_size``, ``train.seq_len``,
            ``train.seed`` and ``train.eval_batch_size`` are read.
        context: this process's place in a data-parallel run.
        split: the split record of :func:`load_handwriting_data`, kept in checkpoints.

    Raises:
        HandwritingDataError: a split holds too few lines for one batch or one process.
        ValueError: a batch size that is not positive or does not divide among processes.
    """

    kind = KIND

    def __init__(
        self,
        model: HandwritingModel,
        data: HandwritingData,
        config: Config,
        context: DistContext | None = None,
        split: Mapping[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.data = data
        self.config = config
        self.context = context or DistContext()
        self.split = dict(split or {})
        cfg = config.train
        world = self.context.world_size
        if cfg.batch_size < 1 or cfg.batch_size % world:
            raise ValueError(
                f"train.batch_size={cfg.batch_size} must be a positive multiple of the "
                f"{world} process(es)"
            )
        if cfg.seq_len < 0:
            raise ValueError(f"train.seq_len must be >= 0 (0: whole lines), got {cfg.seq_len}")
        if cfg.separator_warmup:
            raise ConfigError("train.separator_warmup gives layer 1 the characters after "
                              "words: it needs text (hmrnn train), not pen strokes")
        if len(data.train) < cfg.batch_size:
            raise HandwritingDataError(
                f"the training split has {len(data.train)} lines, fewer than "
                f"train.batch_size={cfg.batch_size}"
            )
        for name in ("valid", "test"):
            if len(getattr(data, name)) < world:
                raise HandwritingDataError(
                    f"the {name} split has fewer lines than the {world} processes"
                )
        self.seq_len = cfg.seq_len
        self.local_batch = cfg.batch_size // world
        self.steps_per_epoch = len(data.train) // cfg.batch_size
        steps = np.array([len(s) - 1 for s in data.train])
        if self.seq_len:
            steps = np.minimum(steps, self.seq_len)
        self.symbols_per_step = round(cfg.batch_size * float(steps.mean()))
        self._plan: tuple[int, np.ndarray, np.ndarray] | None = None  # epoch, order, starts
        self.boundaries = BoundaryTraining(model.rnn, cfg, self.context)

    # -- batches ---------------------------------------------------------------------

    def _epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The order of the training lines in ``epoch`` and each line's window start."""
        if self._plan is None or self._plan[0] != epoch:
            rng = np.random.default_rng([self.config.train.seed, epoch])
            order = rng.permutation(len(self.data.train))
            lengths = np.array([len(s) for s in self.data.train])
            room = (np.maximum(lengths - self.seq_len - 1, 0) if self.seq_len
                    else np.zeros_like(lengths))  # the latest start of a window
            starts = np.floor(rng.random(len(lengths)) * (room + 1)).astype(np.int64)
            self._plan = (epoch, order, starts)
        return self._plan[1], self._plan[2]

    def batch(self, step: int) -> tuple[Tensor, Tensor, Tensor]:
        """This process's share of the training batch of global step ``step``.

        Shape:
            inputs, targets ``(T, N / W, 3)`` normalised offsets, mask ``(T, N / W)``
            (on the CPU), with N = ``train.batch_size`` and W processes.
        """
        epoch, k = divmod(step, self.steps_per_epoch)
        order, starts = self._epoch_plan(epoch)
        first = k * self.config.train.batch_size + self.context.rank * self.local_batch
        lines = order[first : first + self.local_batch]
        window = self.seq_len + 1 if self.seq_len else None  # offsets kept of each line
        return pad_batch([self.data.train[i][starts[i] :][:window] for i in lines])

    # -- the Task protocol -------------------------------------------------------------

    def on_step(self, epoch: float) -> dict[str, float]:
        """Anneal an HM-LSTM's slope for ``epoch``; ``{"slope": a}`` to show (else ``{}``)."""
        return anneal_slope(self.model.rnn, epoch, self.config.train)

    def warnings(self, metrics: dict[str, Any]) -> list[str]:
        """Layers whose boundary rate has collapsed toward 0 or 1."""
        return self.boundaries.warnings(metrics)

    def train_loss(self, model: nn.Module, step: int) -> tuple[Tensor, dict[str, Any]]:
        dtype = next(self.model.parameters()).dtype
        inputs, targets, mask = self.batch(step)
        inputs, targets = (t.to(self.context.device, dtype) for t in (inputs, targets))
        mask = mask.to(self.context.device)
        params, output, _ = model(inputs)
        params = mdn.MixtureParams(*(p.float() for p in params))  # fp32 under autocast
        total = mdn.loss(params, targets, mask, reduction="sum")
        count = self.context.all_reduce_sum(mask.sum().to(total.dtype))
        loss = total * (self.context.world_size / count)
        stats: dict[str, Any] = {}
        surprisal = (-mdn.log_density(params, targets).detach()
                     if self.boundaries.uses_surprisal else None)
        rate_loss = self.boundaries.loss(output.boundary, surprisal, mask)
        if rate_loss is not None:
            loss = loss + rate_loss
        if output.boundary is not None:
            z = output.boundary[..., :-1].float() * mask.unsqueeze(-1)  # (T, N, L - 1)
            stats["z"] = (z.sum(dim=(0, 1)) / mask.sum()).tolist()
        self.boundaries.observe(step, stats, lambda: inputs, None, output)
        return loss, stats

    def end_step(self, accepted: bool) -> None:
        """The boundary options and instruments; nothing is carried to the next batch."""
        self.boundaries.end_step(accepted)

    def summarize(self, split: str, max_points: int = 0) -> dict[str, Any]:
        """Every figure of :func:`hmrnn.tasks.handwriting.model.evaluate` on the whole lines of
        ``split`` (``"train"``, ``"valid"`` or ``"test"``), summed over all processes;
        ``max_points`` > 0 reads only the first lines that predict at most that many points
        (at least one line per process)."""
        context = self.context
        lines = getattr(self.data, split)
        if max_points:
            steps = np.cumsum([len(line) - 1 for line in lines])
            lines = lines[: max(int(np.searchsorted(steps, max_points, side="right")),
                                context.world_size)]
        totals = evaluation_totals(
            self.model, lines[context.rank :: context.world_size],
            self.config.train.eval_batch_size, tolerance=PENUP_TOLERANCE,
            progress=self.config.run.progress and context.is_main,
        )
        if context.distributed:
            summed = context.all_reduce_sum(torch.from_numpy(totals.to_array()).to(context.device))
            totals = EvalTotals.from_array(summed.cpu().numpy())
        return totals.summary(self.data.normalizer)

    def evaluate(self, split: str) -> dict[str, Any]:
        """:func:`trainer_metrics` of :meth:`summarize`, of the first ``train.eval_chars``
        points when that is not 0."""
        return trainer_metrics(self.summarize(split, self.config.train.eval_chars))

    def state_dict(self) -> dict[str, Any]:
        """Empty: the data position is a function of the step and no state is carried."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore (see :meth:`state_dict`)."""

    def graph_stacks(self) -> list[GraphedStack]:
        return graph_stacks(self.model)

    def checkpoint_extras(self) -> dict[str, Any]:
        """The normaliser (training-offset statistics) and the split record."""
        return {"normalizer": self.data.normalizer.to_dict(), "split": self.split}


def trainer_metrics(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The trainer's view (and the ``metrics.jsonl`` record) of
    :meth:`HandwritingTask.summarize`: ``loss`` (nats per predicted step, normalised
    offsets), ``loglik_per_sequence`` (Table 3), ``loglik_per_sequence_raw`` (Jacobian
    included), ``num_sequences``; with boundaries ``z`` (rate per layer below the top) and,
    with a boundary on layer 2, ``penup_precision``, ``penup_recall``, ``penup_f1``
    (tolerance :data:`PENUP_TOLERANCE`)."""
    out: dict[str, Any] = {
        "loss": summary["nats_per_step"],
        "loglik_per_sequence": summary["loglik_per_sequence"],
        "loglik_per_sequence_raw": summary["loglik_per_sequence_raw"],
        "num_sequences": int(summary["num_sequences"]),
    }
    if "boundary_rates" in summary:
        out["z"] = summary["boundary_rates"]
    for key in ("penup_precision", "penup_recall", "penup_f1"):
        if key in summary:
            out[key] = summary[key]
    return out


# ------------------------------------------------------------------------- checkpoints


def load_handwriting_checkpoint(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[HandwritingModel, Normalizer, Config, dict[str, Any]]:
    """Rebuild a trained handwriting model from a checkpoint (file or run folder).

    Returns:
        ``(model, normalizer, config, checkpoint)``, the model in evaluation mode on
        ``device``; ``checkpoint["split"]`` is the split record for
        :func:`load_handwriting_data`.

    Raises:
        CheckpointError: not a readable hmrnn checkpoint, not a handwriting model, or
            written by an incompatible version.
    """
    model, config, checkpoint = load_model(
        path, KIND, lambda config, _ckpt: build_handwriting_model(config.model), device
    )
    try:
        normalizer = Normalizer.from_dict(checkpoint["normalizer"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} has no usable normaliser ({e})") from None
    return model, normalizer, config, checkpoint
