"""CUDA graphs of a recurrent stack's calls (:func:`graph_stacks`).

A stack's forward pass over a segment launches thousands of small kernels (the HM-LSTM's
loop a few per layer and step, forward and backward); on a GPU the launches, not the
kernels, then set the pace. :class:`GraphedStack` captures a call the first time it sees
its signature and replays it at every later call with that signature: the same kernels on
the same buffers, launched by the GPU, not by Python. With autograd on (training) it
captures the forward and the backward pass (``torch.cuda.make_graphed_callables``);
without (evaluation) the forward pass alone (:func:`capture_forward`).

A call is replayed only where a graph computes what the eager call would:

- on a CUDA device, without autocast, without keyword arguments (no ``generator``) and
  not for the boundaries that draw (``"sample"``, ``"gumbel"`` in training: their draws
  would come from a captured generator);
- with the same autograd mode, training mode, input shape, dtype and ``requires_grad``,
  the state's (``None`` stands for :meth:`initial_state`'s zeros, as in the stacks
  themselves), the parameters' ``requires_grad`` and the stack's settings (boundary mode,
  boundary gradient, step backend, fast loop, batch-first) as a captured graph.

Every other call runs eagerly, and so does every call of the clockwork RNN (which modules
tick depends on its step count, read on the host). What a graph reads between calls stays
live: parameters are updated in place by the optimiser, and the HM-LSTM's slope is a
buffer its kernels read on the GPU when they run (:class:`hmrnn.model.hmlstm.HMLSTM`).
A replay writes into the same output buffers every time, so what a caller may keep is
copied out: in training the state (carried into the next segment); in evaluation every
output (boundaries are collected over windows). In training the hidden sequences and
boundaries are the graph's own buffers, valid until the next training call.

Capturing takes a few eager calls (warm-ups, then the capture itself) and keeps the
graphs' memory (in training, the activations of one call) for as long as they are
installed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import Tensor, nn

from hmrnn.model.baselines._common import StackBase
from hmrnn.model.baselines.clockwork import ClockworkRNN
from hmrnn.model.functional import DRAWN_MODES
from hmrnn.model.hmlstm import HMLSTM
from hmrnn.model.types import RNNOutput, map_state

STACK_TYPES: tuple[type[nn.Module], ...] = (HMLSTM, StackBase)
# the clockwork RNN's schedule depends on its step count, read on the host at each call
EAGER_TYPES: tuple[type[nn.Module], ...] = (ClockworkRNN,)
SETTINGS = ("boundary", "boundary_grad", "backend", "fast", "batch_first")
Forward = Callable[..., tuple[RNNOutput, Any]]


class _Flat(nn.Module):
    """``stack``'s eager forward on flat tensors, as ``make_graphed_callables`` takes it:
    ``(input, *state tensors) -> output tensors``, the leaves of ``(RNNOutput, state)``
    without its Nones (:meth:`unflatten` puts them back); its parameters are the stack's."""

    def __init__(self, stack: nn.Module, eager: Forward, spec: pytree.TreeSpec) -> None:
        super().__init__()
        self.stack = stack
        self._eager = eager
        self._spec = spec
        self._out: tuple[pytree.TreeSpec, list[bool]] | None = None

    def forward(self, input: Tensor, *leaves: Tensor) -> tuple[Tensor, ...]:
        out, spec = pytree.tree_flatten(self._eager(input, pytree.tree_unflatten(
            list(leaves), self._spec)))
        self._out = spec, [t is None for t in out]
        return tuple(t for t in out if t is not None)

    def unflatten(self, tensors: tuple[Tensor, ...]) -> tuple[RNNOutput, Any]:
        """The ``(RNNOutput, state)`` whose tensors :meth:`forward` returned."""
        if self._out is None:
            raise RuntimeError("unflatten before the stack ran")
        spec, none = self._out
        it = iter(tensors)
        return pytree.tree_unflatten([None if n else next(it) for n in none], spec)


class GraphedStack:
    """Installed as ``stack.forward`` by :func:`graph_stacks`: replays CUDA graphs of the
    stack's calls where it can (the module docstring says where), else calls the
    stack's own forward.

    Args:
        stack: an HM-LSTM or a baseline stack.
        limit: at most this many signatures are captured with autograd, and as many
            without (each keeps its graphs' memory); calls of any other signature run
            eagerly.

    Attributes: ``captured``, the number of signatures captured; ``replays``, the calls
    replayed; ``failure``, why a capture failed (then every later call runs eagerly), or
    None; ``device_type``, the device whose calls are captured (``"cuda"``).
    """

    def __init__(self, stack: nn.Module, limit: int = 2) -> None:
        self.stack = stack
        self.eager: Forward = stack.forward
        self.limit = limit
        self._graphs: dict[tuple[Any, ...], tuple[Callable[..., Any], _Flat]] = {}
        self.replays = 0
        self.failure: str | None = None
        self.device_type = "cuda"

    @property
    def captured(self) -> int:
        return len(self._graphs)

    def remove(self) -> None:
        """Give the stack its own forward back and drop the graphs (and their memory)."""
        if self.stack.__dict__.get("forward") is self:
            del self.stack.forward
        self._graphs.clear()

    def _key(self, input: Any, leaves: list[Any], kwargs: dict[str, Any]) -> tuple[Any, ...] | None:
        """The signature of a call that a graph can replay (first: whether autograd is on);
        None where it cannot."""
        stack = self.stack
        if (kwargs or not isinstance(input, Tensor) or input.device.type != self.device_type
                or torch.is_autocast_enabled("cuda") or self.failure is not None
                or getattr(stack, "boundary_now", None) in DRAWN_MODES
                or not all(isinstance(t, Tensor) for t in leaves)):
            return None

        def sig(t: Tensor) -> tuple[Any, ...]:
            return tuple(t.shape), t.dtype, t.device, t.requires_grad

        return (torch.is_grad_enabled(), stack.training, sig(input),
                tuple(sig(t) for t in leaves), tuple(p.requires_grad for p in stack.parameters()),
                tuple(getattr(stack, name, None) for name in SETTINGS))

    def __call__(self, input: Tensor, state: Any = None, **kwargs: Any) -> tuple[RNNOutput, Any]:
        if state is None and isinstance(input, Tensor) and input.dim() == 3:
            batch = input.shape[0 if getattr(self.stack, "batch_first", False) else 1]
            state = self.stack.initial_state(batch)  # type: ignore[operator]
        leaves, spec = pytree.tree_flatten(state)
        key = self._key(input, leaves, kwargs)
        graph = self._graphs.get(key) if key is not None else None
        if key is not None and graph is None and sum(
                k[0] == key[0] for k in self._graphs) < self.limit:
            graph = self._capture(key, input, leaves, spec)
        if graph is None or key is None:
            return self.eager(input, state, **kwargs)
        self.replays += 1
        graphed, flat = graph
        tensors = graphed(input, *leaves)
        if not key[0]:  # no autograd: every output copied (a caller may keep them all)
            return flat.unflatten(tuple(t.clone() for t in tensors))
        out, new_state = flat.unflatten(tensors)
        return out, map_state(lambda t: t.clone(), new_state)

    def _capture(self, key: tuple[Any, ...], input: Tensor, leaves: list[Tensor],
                 spec: pytree.TreeSpec) -> tuple[Callable[..., Any], _Flat] | None:
        """Capture the graphs of signature ``key`` on copies of the call's tensors (they
        become the graphs' static inputs); None, and eager calls from then on, where the
        capture fails."""
        samples = tuple(t.detach().clone().requires_grad_(t.requires_grad)
                        for t in (input, *leaves))
        flat = _Flat(self.stack, self.eager, spec).train(self.stack.training)
        try:
            graphed = (torch.cuda.make_graphed_callables(flat, samples, allow_unused_input=True)
                       if key[0] else capture_forward(flat, samples))
        except Exception as error:  # a stack that launches host-synchronising work
            self.failure = f"{type(error).__name__}: {error}".splitlines()[0]
            return None
        self._graphs[key] = graphed, flat
        return graphed, flat


def capture_forward(fn: Callable[..., tuple[Tensor, ...]], samples: tuple[Tensor, ...]
                    ) -> Callable[..., tuple[Tensor, ...]]:
    """``fn(*samples)`` (without autograd) captured in a CUDA graph, after two warm-up
    calls on a side stream; returns the replay: it copies a call's tensors into
    ``samples`` (the graph's inputs), replays, and returns the graph's own outputs."""
    stream, current = torch.cuda.Stream(), torch.cuda.current_stream()
    stream.wait_stream(current)
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn(*samples)
    current.wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = fn(*samples)

    def replay(*tensors: Tensor) -> tuple[Tensor, ...]:
        for static, t in zip(samples, tensors, strict=True):
            if static.data_ptr() != t.data_ptr():
                static.copy_(t)
        graph.replay()
        return outputs

    return replay


def graph_stacks(model: nn.Module, limit: int = 2) -> list[GraphedStack]:
    """Install a :class:`GraphedStack` on every recurrent stack in ``model`` (not on one
    inside another); returns them (``remove()`` each to undo)."""
    found: list[GraphedStack] = []
    for module in model.modules():
        if (isinstance(module, STACK_TYPES) and not isinstance(module, EAGER_TYPES)
                and not isinstance(module.__dict__.get("forward"), GraphedStack)
                and not any(_contains(g.stack, module) for g in found)):
            graphed = GraphedStack(module, limit)
            module.forward = graphed
            found.append(graphed)
    return found


def _contains(outer: nn.Module, inner: nn.Module) -> bool:
    return any(m is inner for m in outer.modules())
