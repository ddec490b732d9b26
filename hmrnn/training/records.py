"""A training run's clock and its records: ``metrics.jsonl`` (and TensorBoard) on the main
process, and the one-line messages that go with the events.

The clock is the run's wall time, evaluations included, summed over resumed sessions
(``TrainerState.wall`` carries it through checkpoints).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hmrnn.training.metrics_log import MetricsWriter


class RunRecords:
    """The run's clock and where its records go.

    Args:
        out_dir: the run folder (``metrics.jsonl`` and ``tensorboard/`` are written there).
        tensorboard: also write TensorBoard scalars, where TensorBoard is installed.
        is_main: whether this process writes (only the main process of a data-parallel
            run does; the others' records and events are dropped).
        echo: where the events' messages are said.
    """

    def __init__(self, out_dir: Path, *, tensorboard: bool, is_main: bool,
                 echo: Callable[[str], None]) -> None:
        self.out_dir = out_dir
        self.tensorboard = tensorboard
        self.is_main = is_main
        self.echo = echo
        self._writer: MetricsWriter | None = None
        self._started = time.monotonic()

    def start_clock(self, wall: float) -> None:
        """Go on from ``wall`` seconds (a resumed run's), counting from now."""
        self._started = time.monotonic() - wall

    def wall(self) -> float:
        """Seconds since the run started, evaluations included, over resumed sessions."""
        return time.monotonic() - self._started

    def open(self, keep_until: int) -> bool:
        """Open the run's log for :meth:`record` and :meth:`event` (the main process only),
        dropping its records after step ``keep_until`` (a resumed run writes them again);
        returns whether TensorBoard scalars are written (False also where not asked for)."""
        if not self.is_main:
            return False
        self._writer = self._open(keep_until)
        return self._writer.tensorboard

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _open(self, keep_until: int | None) -> MetricsWriter:
        return MetricsWriter(self.out_dir, tensorboard=self.tensorboard, keep_until=keep_until)

    def record(self, kind: str, step: int, metrics: dict[str, Any]) -> None:
        """Append ``metrics`` of ``kind`` at ``step`` to the run's ``metrics.jsonl`` (and
        TensorBoard), on the main process; with the log closed (after training, e.g. the
        report's ``test`` record) it is opened for this one record."""
        if self._writer is not None:
            self._writer.write(kind, step, metrics, wall=self.wall())
        elif self.is_main:
            with self._open(keep_until=None) as writer:
                writer.write(kind, step, metrics, wall=self.wall())

    def event(self, name: str, step: int, message: str, *, echo: bool = True,
              **values: Any) -> None:
        """Say ``message`` (unless not ``echo``) and, while the log is open, record it as
        event ``name`` at ``step``, with numbers ``values``."""
        if echo:
            self.echo(message)
        if self._writer is not None:
            self._writer.event(name, step, message, wall=self.wall(), **values)
