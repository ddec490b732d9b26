"""What the baselines share: argument checks, the batch-first convention, zero states."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from hmrnn.model.types import as_sizes, check_input


class StackBase(nn.Module):
    """What the three baselines share: argument checks and the batch-first convention."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int | Sequence[int],
        num_layers: int,
        batch_first: bool,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if not is_positive_int(num_layers):
            raise ValueError(f"{name} needs num_layers to be an int >= 1, got {num_layers!r}.")
        if not is_positive_int(input_size):
            raise ValueError(f"{name} needs input_size to be a positive int, got {input_size!r}.")
        self.input_size = input_size
        sizes = hidden_size if isinstance(hidden_size, int) else tuple(hidden_size)
        self.hidden_sizes: tuple[int, ...] = as_sizes(sizes, num_layers)
        self.num_layers = num_layers
        self.batch_first = batch_first

    def _time_major(self, input: Tensor) -> Tensor:
        x = input.transpose(0, 1) if self.batch_first and input.dim() == 3 else input
        check_input(x, self.input_size, type(self).__name__)
        if x.shape[0] == 0:
            raise ValueError(f"{type(self).__name__} needs a sequence of at least one step.")
        return x

    def _check_layers(self, field: str, tensors: Sequence[Tensor], batch_size: int) -> None:
        name = type(self).__name__
        if len(tensors) != self.num_layers:
            raise ValueError(
                f"{name} has {self.num_layers} layers but state.{field} holds "
                f"{len(tensors)} tensors."
            )
        for l, (t, size) in enumerate(zip(tensors, self.hidden_sizes, strict=True)):
            if tuple(t.shape) != (batch_size, size):
                raise ValueError(
                    f"{name} expects state.{field}[{l}] of shape {(batch_size, size)}, "
                    f"got {tuple(t.shape)}."
                )

    def _zeros(self, batch_size: int) -> tuple[Tensor, ...]:
        if not is_positive_int(batch_size):
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
        p = next(self.parameters())
        return tuple(p.new_zeros(batch_size, h) for h in self.hidden_sizes)


def is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def maybe_layer_norm(size: int, enabled: bool, kw: dict[str, Any]) -> nn.Module:
    return nn.LayerNorm(size, **kw) if enabled else nn.Identity()
