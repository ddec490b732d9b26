"""Types shared by every recurrent stack in hmrnn.

Shape legend used throughout the package: T time, N batch, L layers, H hidden size
(H_l of layer l), V vocabulary, K mixture components, E output-embedding size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor


class RNNOutput(NamedTuple):
    """What a recurrent stack returns for a whole sequence.

    Attributes:
        hidden: one tensor per layer, bottom first, ``(T, N, H_l)`` (``(N, T, H_l)`` when
            the stack is ``batch_first``).
        boundary: the boundary state ``z`` of every layer at every step, ``(T, N, L)``
            (``(N, T, L)`` when ``batch_first``); the top layer's column is always 0.
            ``None`` for stacks that have no boundary detectors (the baselines).
    """

    hidden: tuple[Tensor, ...]
    boundary: Tensor | None


class RecurrentStack(Protocol):
    """What every recurrent stack of hmrnn (the HM-LSTM, the baselines) offers besides
    being an ``nn.Module``: its sizes, its zero state, and ``output, state = rnn(x, state)``.

    ``hidden_size`` is ``nn.LSTM``'s: one int when every layer has that size, else the
    tuple ``hidden_sizes`` (:func:`common_size`); ``hidden_sizes`` is always the tuple."""

    input_size: int
    hidden_size: int | tuple[int, ...]
    hidden_sizes: tuple[int, ...]
    num_layers: int

    def __call__(self, input: Tensor, state: Any = None) -> tuple[RNNOutput, Any]: ...

    def initial_state(self, batch_size: int) -> Any: ...


def detach_state(state: Any) -> Any:
    """Return ``state`` with every tensor in it detached (truncated BPTT, docs/model.md decision 8).

    Works on tensors and on (nested) tuples / NamedTuples of tensors; other leaves
    (ints, None) are returned as they are.
    """
    if isinstance(state, Tensor):
        return state.detach()
    if isinstance(state, tuple):
        items = [detach_state(s) for s in state]
        return type(state)(*items) if hasattr(state, "_fields") else tuple(items)
    return state


def map_state(fn: Any, state: Any) -> Any:
    """Apply ``fn`` to every tensor of a (nested) state tuple, keeping its structure."""
    if isinstance(state, Tensor):
        return fn(state)
    if isinstance(state, tuple):
        items = [map_state(fn, s) for s in state]
        return type(state)(*items) if hasattr(state, "_fields") else tuple(items)
    return state


def check_input(input: Tensor, input_size: int, name: str, *, like: Tensor | None = None,
                autocast: bool = False) -> None:
    """Raise a full-sentence ``ValueError`` unless ``input`` is ``(T, N, input_size)``.

    With ``like`` (a parameter of the model), also unless ``input`` is on its device and,
    unless ``autocast`` (the caller casts, or autocast does), of its dtype: the message
    names both dtypes (a product of two dtypes would otherwise fail deep inside torch).
    """
    if not isinstance(input, Tensor):
        raise ValueError(f"{name} expects a tensor input, got {type(input).__name__}")
    if input.dim() != 3:
        raise ValueError(
            f"{name} expects a 3-D input (time, batch, features), got shape {tuple(input.shape)}"
        )
    if input.shape[-1] != input_size:
        raise ValueError(
            f"{name} was built for input_size={input_size} but got input of width "
            f"{input.shape[-1]}"
        )
    if like is not None:
        check_like(input, like, "the input", name, autocast=autocast)


def check_like(t: Tensor, like: Tensor, what: str, name: str, *, autocast: bool = False) -> None:
    """Raise ``ValueError`` unless ``t`` (``what``, as a message names it) is on the device
    of ``like`` (a parameter of module ``name``) and, unless ``autocast``, of its dtype;
    under autocast only a floating dtype."""
    if t.device != like.device:
        raise ValueError(f"{name}: {what} is on {t.device}; expected {like.device}, where "
                         f"its parameters are")
    if autocast:
        if not t.is_floating_point():
            raise ValueError(f"{name}: {what} has dtype {t.dtype}; expected a floating dtype")
    elif t.dtype != like.dtype:
        raise ValueError(f"{name}: {what} has dtype {t.dtype}; expected {like.dtype}, its "
                         f"parameters' dtype (convert one to the other, or run under autocast)")


def as_sizes(
    hidden_size: int | Sequence[int], num_layers: int | None, name: str = "the stack"
) -> tuple[int, ...]:
    """Expand ``hidden_size`` (one int, or one per layer) to a tuple of ``num_layers`` ints;
    ``num_layers=None``: as many as ``hidden_size`` lists (``ValueError`` for one int, which
    needs ``num_layers``; ``name`` names the module in that message)."""
    if num_layers is None:
        if isinstance(hidden_size, int):
            raise ValueError(f"{name} needs num_layers when hidden_size is one int "
                             f"({hidden_size}); or give hidden_size as one size per layer")
        num_layers = len(hidden_size)
    sizes = (hidden_size,) * num_layers if isinstance(hidden_size, int) else tuple(hidden_size)
    if len(sizes) != num_layers:
        raise ValueError(
            f"hidden_size lists {len(sizes)} sizes but num_layers is {num_layers}; give one int "
            "or one size per layer (or leave num_layers out)"
        )
    for s in sizes:
        if not isinstance(s, int) or isinstance(s, bool) or s <= 0:
            raise ValueError(f"every hidden size must be a positive int, got {s!r}")
    return sizes


def common_size(sizes: tuple[int, ...]) -> int | tuple[int, ...]:
    """A stack's ``hidden_size`` attribute: the one size when every layer has it (as
    ``nn.LSTM``'s), else the sizes per layer, bottom first."""
    return sizes[0] if len(set(sizes)) == 1 else sizes


def factory_kwargs(device: Any, dtype: Any) -> dict[str, Any]:
    return {"device": torch.device(device) if device is not None else None, "dtype": dtype}


def state_to_plain(state: Any) -> Any:
    """A state with every NamedTuple turned into a plain tuple (for ``weights_only`` loads)."""
    if isinstance(state, tuple):
        return tuple(state_to_plain(s) for s in state)
    return state


def state_from_plain(template: Any, plain: Any) -> Any:
    """Rebuild the NamedTuples of ``template`` (e.g. ``rnn.initial_state(1)``) around ``plain``."""
    if isinstance(template, tuple) and isinstance(plain, tuple | list):
        if len(template) != len(plain):
            raise ValueError(
                f"saved state has {len(plain)} entries where the model's has {len(template)}"
            )
        items = [state_from_plain(t, p) for t, p in zip(template, plain, strict=True)]
        return type(template)(*items) if hasattr(template, "_fields") else tuple(items)
    return plain
