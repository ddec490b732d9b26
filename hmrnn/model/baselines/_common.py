"""What the baselines share: the constructor's arguments, the input and state checks, the
batch-first convention, zero states, and the part of the docstring that is the same."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from hmrnn.model.types import as_sizes, check_input, check_like, common_size

State = TypeVar("State", bound=tuple[Any, ...])


class StackBase(nn.Module):
    r"""What the three baselines share, as ``nn.LSTM`` users expect it.

    Args (every baseline):
        input_size: the number of features ``H_in`` of the input.
        hidden_size: one int, or one size per layer (bottom first, or fastest first for
            the clockwork RNN's modules).
        num_layers: ``L >= 1``; left out, as many as ``hidden_size`` lists, or 1 (as in
            ``nn.LSTM``) for one int. Given with a list, it must agree.
        layer_norm: see each class.
        batch_first: if ``True``, input and hidden sequences are ``(N, T, *)``; the state
            never is.
        device, dtype: where and in which precision the parameters are made.

    Inputs: ``input, state=None``
        - input: ``(T, N, H_in)``, or ``(N, T, H_in)`` when ``batch_first``; on the
          parameters' device and, outside autocast, of their dtype.
        - state: the class's state NamedTuple (or a plain tuple of its fields, converted),
          holding ``(N, H_l)`` tensors per layer; ``None`` for zeros.

    Outputs: ``output, state``
        - output: ``RNNOutput(hidden, boundary=None)``, ``hidden[l]`` ``(T, N, H_l)``
          (``(N, T, H_l)`` when ``batch_first``).
        - state: the class's state after the last step, which continues the sequence
          when fed back in.

    Shape legend: T time, N batch, L layers, H_in input size, H_l size of layer l.

    Attributes: ``input_size``, ``num_layers``, ``batch_first``; ``hidden_size`` as
    ``nn.LSTM``'s: one int when every layer has that size, else the tuple of sizes;
    ``hidden_sizes``, always the tuple.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int | Sequence[int],
        num_layers: int | None,
        batch_first: bool,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if num_layers is None and isinstance(hidden_size, int):
            num_layers = 1  # nn.LSTM's default
        if num_layers is not None and not is_positive_int(num_layers):
            raise ValueError(f"{name} needs num_layers to be an int >= 1, got {num_layers!r}.")
        if not is_positive_int(input_size):
            raise ValueError(f"{name} needs input_size to be a positive int, got {input_size!r}.")
        self.input_size = input_size
        self.hidden_sizes: tuple[int, ...] = as_sizes(hidden_size, num_layers, name)
        self.hidden_size = common_size(self.hidden_sizes)
        self.num_layers = len(self.hidden_sizes)
        self.batch_first = batch_first

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        layer_norm = getattr(self, "layer_norm", None)
        s += f", layer_norm={layer_norm}" if layer_norm is not None else ""
        return s + (", batch_first=True" if self.batch_first else "")

    def _like(self) -> tuple[Tensor, bool]:
        """A parameter (the device and dtype every input must have) and whether autocast
        is on for its device (then any floating dtype will do)."""
        p = next(self.parameters())
        return p, torch.is_autocast_enabled(p.device.type)

    def _time_major(self, input: Tensor) -> Tensor:
        x = input.transpose(0, 1) if self.batch_first and input.dim() == 3 else input
        like, autocast = self._like()
        check_input(x, self.input_size, type(self).__name__, like=like, autocast=autocast)
        if x.shape[0] == 0:
            raise ValueError(f"{type(self).__name__} needs a sequence of at least one step.")
        return x

    def _state(self, state: Any, kind: type[State], batch_size: int,
               layers: tuple[str, ...]) -> State:
        """``state`` as a ``kind`` (a plain tuple or list of its fields is converted; None:
        :meth:`initial_state`), its per-layer fields ``layers`` checked; or ``ValueError``."""
        name = type(self).__name__
        if state is None:
            return self.initial_state(batch_size)
        fields: tuple[str, ...] = getattr(kind, "_fields")  # noqa: B009 (a NamedTuple's)
        if not isinstance(state, tuple | list) or len(state) != len(fields):
            raise ValueError(f"{name} takes a {kind.__name__} ({', '.join(fields)}) as its "
                             f"state, got a {type(state).__name__}"
                             + (f" of {len(state)}" if isinstance(state, tuple | list) else ""))
        state = state if isinstance(state, kind) else kind(*state)
        for field in layers:
            self._check_layers(field, getattr(state, field), batch_size)
        return state

    def _check_layers(self, field: str, tensors: Sequence[Tensor], batch_size: int) -> None:
        name = type(self).__name__
        if not isinstance(tensors, tuple | list):
            raise ValueError(f"{name} expects state.{field} to be a tuple of {self.num_layers} "
                             f"tensors, one per layer, got a {type(tensors).__name__}.")
        if len(tensors) != self.num_layers:
            raise ValueError(
                f"{name} has {self.num_layers} layers but state.{field} holds "
                f"{len(tensors)} tensors."
            )
        like, autocast = self._like()
        for l, (t, size) in enumerate(zip(tensors, self.hidden_sizes, strict=True)):
            if not isinstance(t, Tensor):
                raise ValueError(f"{name}: state.{field}[{l}] is a {type(t).__name__}, "
                                 f"not a tensor.")
            if tuple(t.shape) != (batch_size, size):
                raise ValueError(
                    f"{name} expects state.{field}[{l}] of shape {(batch_size, size)}, "
                    f"got {tuple(t.shape)}."
                )
            check_like(t, like, f"state.{field}[{l}]", name, autocast=autocast)

    def initial_state(self, batch_size: int) -> Any:
        raise NotImplementedError

    def _zeros(self, batch_size: int) -> tuple[Tensor, ...]:
        if not is_positive_int(batch_size):
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
        p = next(self.parameters())
        return tuple(p.new_zeros(batch_size, h) for h in self.hidden_sizes)


def is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def maybe_layer_norm(size: int, enabled: bool, kw: dict[str, Any]) -> nn.Module:
    return nn.LayerNorm(size, **kw) if enabled else nn.Identity()
