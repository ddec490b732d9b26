"""What the trainer needs of a task (:class:`Task`): the contract between
:class:`hmrnn.training.trainer.Trainer` and a task such as the character LM or handwriting,
which supplies the losses, evaluations and the state a checkpoint carries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from torch import Tensor, nn


class GraphedCalls(Protocol):
    """What the trainer reads of a stack whose training calls replay CUDA graphs
    (:class:`hmrnn.model.graphed.GraphedStack`)."""

    stack: nn.Module
    replays: int
    failure: str | None

    @property
    def captured(self) -> int: ...

    def remove(self) -> None:
        """Run the stack eagerly again, and free the graphs."""
        ...


class Task(Protocol):
    """What the trainer needs of a task (character LM, handwriting, ...)."""

    @property
    def model(self) -> nn.Module:
        """The model trained (unwrapped); its parameters are optimised and checkpointed."""
        ...

    @property
    def kind(self) -> str:
        """Stored in checkpoints, e.g. ``"charlm"``."""
        ...

    @property
    def steps_per_epoch(self) -> int: ...

    @property
    def symbols_per_step(self) -> int:
        """Characters (or points) per step over all processes, for the throughput figure."""
        ...

    def on_step(self, epoch: float) -> dict[str, float]:
        """Called before every training step, ``epoch`` = steps done / steps per epoch:
        adjust the model for it (e.g. anneal a slope) and return numbers to show."""
        ...

    def warnings(self, metrics: dict[str, Any]) -> list[str]:
        """Warnings (one line each) that the metrics of an evaluation deserve."""
        ...

    def train_loss(self, model: nn.Module, step: int) -> tuple[Tensor, dict[str, Any]]:
        """Mean training loss of global step ``step`` through ``model`` (maybe DDP-wrapped),
        and numbers to show (floats, or lists of floats such as per-layer boundary rates)."""
        ...

    def end_step(self, accepted: bool) -> None:
        """Keep (or, for a skipped non-finite step, drop) what the step carried forward."""
        ...

    def evaluate(self, split: str) -> dict[str, Any]:
        """Metrics over the split (``train.eval_chars`` may cap it); ``"loss"`` is the one
        to minimise."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def graph_stacks(self) -> Sequence[GraphedCalls]:
        """Make the model's recurrent stacks replay CUDA graphs of their training calls
        where they can (``run.cuda_graph``, on CUDA); the trainer removes them after."""
        ...

    def checkpoint_extras(self) -> dict[str, Any]:
        """What a checkpoint needs besides the weights to rebuild the task (vocabulary, ...)."""
        ...
