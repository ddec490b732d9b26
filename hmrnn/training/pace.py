"""How far a training run is and how fast it goes: its planned end (for the progress bar's
total and ETA), its speed in symbols per second, and the one-line progress report printed
where no bar is drawn."""

from __future__ import annotations

import math
from typing import Any

from hmrnn.progress import duration
from hmrnn.training.config import TrainConfig


def planned_steps(train: TrainConfig, step: int, elapsed: float,
                  steps_per_epoch: int) -> int | None:
    """The step at which the first of ``train``'s budgets runs out (None: no budget); the
    time budget counts as the steps that fit in what is left of it at the mean time per
    step so far (``step`` steps in ``elapsed`` seconds of training)."""
    ends = []
    if train.max_steps:
        ends.append(train.max_steps)
    if train.max_epochs:
        ends.append(math.ceil(train.max_epochs * steps_per_epoch))
    if train.max_minutes and step and elapsed > 0:
        left = max(train.max_minutes * 60 - elapsed, 0.0)
        ends.append(step + math.ceil(left * step / elapsed))
    return min(ends) if ends else None


class SymbolRate:
    """Symbols per second over the recent steps (an exponential moving average)."""

    def __init__(self) -> None:
        self.symbols = 0.0
        self.seconds = 0.0

    def add(self, symbols: int, seconds: float) -> None:
        self.symbols = 0.9 * self.symbols + symbols
        self.seconds = 0.9 * self.seconds + seconds

    @property
    def value(self) -> float:
        return self.symbols / self.seconds if self.seconds > 0 else 0.0


def format_metrics(values: dict[str, Any]) -> str:
    """``key=value`` pairs: lists as ``a/b``, large floats without decimals, 4 digits
    otherwise; values of other types are left out."""
    parts = []
    for k, v in values.items():
        if isinstance(v, list | tuple):
            parts.append(f"{k}=" + "/".join(f"{x:.2f}" for x in v))
        elif isinstance(v, float):
            parts.append(f"{k}={v:.0f}" if abs(v) >= 1000 else f"{k}={v:.4g}")
        elif isinstance(v, int | str):
            parts.append(f"{k}={v}")
    return " ".join(parts)


def plain_line(shown: dict[str, Any], *, step: int, total: int | None,
               since: tuple[int, float], elapsed: float, wall: float) -> str:
    """The progress of training in one line, for when no bar is drawn: the step (of
    ``total``), the numbers the bar shows, the speed since ``since`` (a step and the
    training seconds ``elapsed`` then), the run's ``wall`` time and, with a planned end,
    the training time left."""
    steps, seconds = step - since[0], elapsed - since[1]
    speed = steps / seconds if seconds > 0 else 0.0
    where = f"step {step}" + (f"/{total}" if total else "")
    left = f", {duration((total - step) / speed)} left" if total and speed > 0 else ""
    return (f"{where} train: {format_metrics(shown)} ({speed:.3g} steps/s, "
            f"{duration(wall)} elapsed{left})")
