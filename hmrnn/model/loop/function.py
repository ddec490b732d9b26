"""The loop as one call: two ``torch.library`` operators and :func:`hmlstm_loop`.

:func:`hmlstm_loop` computes what :class:`hmrnn.model.hmlstm.HMLSTM` does over a sequence
(the equations of :class:`hmrnn.model.cell.HMLSTMCell`, docs/model.md), arranged for
speed: the bottom layer's input term ``W x_t`` (with its layer norm) is computed for all
steps at once, before the loop, by autograd; then the whole sequence is one call of the
operator ``hmrnn::hmlstm_loop`` (:func:`hmrnn.model.loop.forward.run_forward`, the step
backend chosen once inside it: :func:`hmrnn.model.loop.backends.select`), whose gradient
is one call of ``hmrnn::hmlstm_loop_backward``
(:func:`hmrnn.model.loop.backward.run_backward`).

Both are :func:`torch.library.custom_op` operators with shape functions
(``register_fake``) and the first with its autograd formula (``register_autograd``), so
that ``torch.compile`` (``fullgraph=True`` included) and ``torch.export`` take the loop
as two opaque nodes instead of breaking the graph at each of its C (``ctypes``) or Triton
calls. An operator's tensors are flat lists, and it may neither return an alias of its
inputs nor two aliases of one tensor; so the forward operator returns, beside the
outputs, what its backward pass reads (:meth:`hmrnn.model.loop.workspace.Buffers.kept`
and the fused weights), which are outputs the caller drops, and the backward operator
returns each weight's gradient as a tensor of its own. The non-tensor arguments are
plain values: the per-layer tensor names joined into one string, the slope as a 0-dim
tensor (on the host, or on the GPU the loop runs on: a compiled model then reads a new
slope without recompiling, and a CUDA graph replays with it), and
the random generator of ``"sample"`` boundaries as its state (:func:`_generator`). The
step backend the forward operator chose reaches the backward one as one of those kept
outputs (its index in ``BACKENDS``), so that the two cannot choose differently (as
``"auto"`` resolved again, on other tensors and at another time, could).

Shape legend: T time, N batch, L layers, D input size, H_l hidden size of layer l,
R_1 = 4 H_1 + 1 gate rows of the bottom layer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from hmrnn.model.cell import HMLSTMCell
from hmrnn.model.loop.backends import BACKENDS, resolve, select
from hmrnn.model.loop.backward import run_backward
from hmrnn.model.loop.forward import run_forward
from hmrnn.model.loop.weights import cell_tensors, layer_norm_eps, packing_rows, weights_of
from hmrnn.model.loop.workspace import Buffers


def _join(names: tuple[tuple[str, ...], ...]) -> str:
    """Per-layer tensor names as one string: ``"U,U_td,bias;U,W,bias"``."""
    return ";".join(",".join(layer) for layer in names)


def _split(names: str) -> tuple[tuple[str, ...], ...]:
    """:func:`_join`'s inverse."""
    return tuple(tuple(layer.split(",")) for layer in names.split(";"))


def _generator(rng: Tensor | None, device: torch.device) -> torch.Generator | None:
    """A generator in the state ``rng`` (a ``torch.Generator``'s ``get_state()``; None:
    torch's default generator): it draws what the generator whose state it is would."""
    if rng is None:
        return None
    generator = torch.Generator(device=device)
    generator.set_state(rng)
    return generator


def _slope(slope: Tensor) -> float | Tensor:
    """The slope as the step backends take it: a float read on the host, or a tensor on a
    GPU left there (read by the kernels when they run: no wait, and a CUDA graph of the
    loop replays with the slope of the moment)."""
    return float(slope) if slope.device.type == "cpu" else slope


@torch.library.custom_op("hmrnn::hmlstm_loop", mutates_args=())
def _loop(
    bottom: Tensor, h0: list[Tensor], c0: list[Tensor], z0: list[Tensor],
    params: list[Tensor], names: str, eps: float, slope: Tensor, boundary: str,
    backend: str, keep: bool, rng: Tensor | None, boundary_grad: str,
) -> list[Tensor]:
    """The forward loop (:func:`run_forward`) as an operator.

    With ``"sample"`` boundaries and no ``rng``, the draws come from torch's default
    generator, whose state this operator reads and advances although it is declared pure
    (``mutates_args=()``; the generator is not a tensor argument it could name):
    ``torch.compile`` and ``torch.export`` do not see that, so a compiled graph may order
    the call differently against other draws from the default generator than eager does,
    or drop it where its outputs are unused. Draws that must follow eager's take an
    explicit generator (``rng``; ``torch.compile`` then breaks the graph before the call).

    Args:
        bottom: the bottom layer's ``W x`` without its bias, ``(T, N, R_1)``.
        h0, c0, z0: the initial state, ``L`` tensors ``(N, H_l)``, ``(N, H_l)``, ``(N, 1)``.
        params: the tensors :func:`cell_tensors` gathers, named by ``names`` (:func:`_join`).
        eps: the layer norms' ``eps``.
        slope: ``a``, a 0-dim tensor on the host, or on the GPU the loop runs on (read
            there, :func:`_slope`).
        boundary: ``"step"``, ``"sample"`` or ``"soft"``.
        backend: the step backend's name, resolved here (:func:`resolve`).
        keep: also return what the backward pass reads.
        rng: the state of the generator of ``"sample"`` boundaries (None: torch's default).
        boundary_grad: the HMLSTM's, for the backward pass (the forward pass does not
            read it).

    Returns:
        ``L`` tensors ``h (T+1, N, H_l)`` (index 0 the initial state), ``z (T+1, N, L)``,
        the last ``c`` of each layer ``(N, H_l)``; with ``keep``, then the backend chosen
        (its index in ``BACKENDS``, a 0-dim int64 tensor on the host), the fused weights
        and :meth:`Buffers.kept`; with ``rng``, last, the generator's new state.
    """
    chosen = resolve(backend, bottom, boundary)
    step = select(chosen, bottom, boundary)
    weights = weights_of(_split(names), tuple(params), eps,
                         packing_rows(bottom.shape[1], bottom.shape[0]))
    generator = _generator(rng, bottom.device)
    buf = run_forward(weights, bottom + weights[0].bias, tuple(h0), tuple(c0), tuple(z0),
                      _slope(slope), boundary, generator, keep=keep, backend=step)
    drawn = [generator.get_state()] if generator is not None else []
    out = [*buf.h, buf.z, *(c[-1].clone() for c in buf.c)]
    if keep:
        out += [torch.tensor(BACKENDS.index(chosen), device="cpu"),
                *(w.fused for w in weights if w.fused is not None), *buf.kept()]
    return out + drawn


@_loop.register_fake
def _loop_shapes(
    bottom: Tensor, h0: list[Tensor], c0: list[Tensor], z0: list[Tensor],
    params: list[Tensor], names: str, eps: float, slope: Tensor, boundary: str,
    backend: str, keep: bool, rng: Tensor | None, boundary_grad: str,
) -> list[Tensor]:
    """The outputs' shapes (and strides: contiguous, as :func:`_loop` makes them): the
    loop's own buffers, made but not run."""
    weights = weights_of(_split(names), tuple(params), eps, 0)
    buf = Buffers(weights, tuple(h0), tuple(c0), tuple(z0), bottom.shape[0], keep)
    out = [*buf.h, buf.z, *(c.new_empty(c.shape) for c in c0)]
    if keep:
        out += [torch.empty((), dtype=torch.int64, device="cpu"),
                *(w.fused for w in weights if w.fused is not None), *buf.kept()]
    return out + ([rng.new_empty(rng.shape)] if rng is not None else [])


def _save(ctx: Any, inputs: tuple[Any, ...], output: list[Tensor]) -> None:
    """``setup_context`` of :func:`_loop`: keep ``h``, ``z``, what :func:`_loop` kept (the
    backend it chose first), the parameters and the slope."""
    _, h0, _, _, params, names, eps, slope, boundary, _, keep, rng, boundary_grad = inputs
    L = len(h0)
    kept = output[2 * L + 1 : len(output) - (rng is not None)]
    ctx.mark_non_differentiable(*kept, *output[len(output) - (rng is not None) :])
    ctx.set_materialize_grads(False)
    # the slope copied: a new one set before this backward pass runs is for the next steps
    ctx.save_for_backward(*output[: L + 1], *kept, *params, slope.clone())
    ctx.layout = (L, len(kept), names, eps, boundary, boundary_grad)
    ctx.keep = keep


def _backward(ctx: Any, grads: list[Tensor | None]) -> tuple[Any, ...]:
    """The autograd formula of :func:`_loop`: one call of :func:`_loop_backward`."""
    if torch.is_grad_enabled():  # create_graph=True: the hand-written backward has no graph
        raise RuntimeError(
            "the fast HM-LSTM loop is differentiable once only; for higher-order "
            "gradients set the HMLSTM's fast = False"
        )
    if not ctx.keep:
        raise RuntimeError("hmrnn::hmlstm_loop ran with keep=False, so it kept nothing for "
                           "its gradient: call it with keep=True where autograd is on")
    L, K, names, eps, boundary, boundary_grad = ctx.layout
    saved = ctx.saved_tensors
    h, z, backend, kept, params, slope = (saved[:L], saved[L], saved[L + 1],
                                          saved[L + 2 : L + 1 + K], saved[L + 1 + K : -1],
                                          saved[-1])
    g = torch.ops.hmrnn.hmlstm_loop_backward(
        list(grads[:L]), grads[L], list(grads[L + 1 : 2 * L + 1]), list(h), z, list(kept),
        list(params), names, eps, slope, boundary, backend, boundary_grad,
    )
    return (g[0], g[1 : L + 1], g[L + 1 : 2 * L + 1], g[2 * L + 1 : 3 * L + 1], g[3 * L + 1 :],
            None, None, None, None, None, None, None, None)


_loop.register_autograd(_backward, setup_context=_save)


@torch.library.custom_op("hmrnn::hmlstm_loop_backward", mutates_args=())
def _loop_backward(
    grad_h: list[Tensor | None], grad_z: Tensor | None, grad_c: list[Tensor | None],
    h: list[Tensor], z: Tensor, kept: list[Tensor], params: list[Tensor], names: str,
    eps: float, slope: Tensor, boundary: str, backend: Tensor, boundary_grad: str,
) -> list[Tensor]:
    """BPTT through ``hmrnn::hmlstm_loop`` (:func:`run_backward`) as an operator.

    Args:
        grad_h: per layer, the gradient of ``h`` ``(T+1, N, H_l)`` (None: zero).
        grad_z: the gradient of ``z`` ``(T+1, N, L)`` (None: zero).
        grad_c: per layer, the gradient of the last ``c`` ``(N, H_l)`` (None: zero).
        h, z: the forward loop's outputs.
        kept: what it kept (the fused weights and :meth:`Buffers.kept`).
        params, names, eps, slope, boundary, boundary_grad: its arguments.
        backend: the step backend it chose, its index in ``BACKENDS`` (a 0-dim int64
            tensor on the host): the same one runs here.

    Returns:
        The gradients of ``bottom (T, N, R_1)``, of ``h0``, ``c0``, ``z0`` (``L`` tensors
        each) and of every tensor of ``params``, each a tensor of its own.
    """
    step = select(BACKENDS[int(backend)], z, boundary)
    T, N = z.shape[0] - 1, z.shape[1]
    tensors = iter(kept)
    weights = weights_of(_split(names), tuple(params), eps, packing_rows(N, T), tensors)
    buf = Buffers.restore(weights, [t.detach() for t in h], z.detach(), tensors)
    with torch.autocast(z.device.type, enabled=False):  # as the forward loop ran
        g_bottom, g_h0, g_c0, g_z0, g_weights = run_backward(
            weights, buf, _slope(slope), grad_h, grad_z, grad_c, step,
            boundary_grad=boundary_grad)
    # a fused weight's gradients are column views of one product: autograd would copy
    # each into the parameter's layout anyway, so this costs nothing more
    g_params = [g[name].contiguous() for layer, g in zip(_split(names), g_weights, strict=True)
                for name in layer]
    return [g_bottom, *g_h0, *g_c0, *g_z0, *g_params]


@_loop_backward.register_fake
def _loop_backward_shapes(
    grad_h: list[Tensor | None], grad_z: Tensor | None, grad_c: list[Tensor | None],
    h: list[Tensor], z: Tensor, kept: list[Tensor], params: list[Tensor], names: str,
    eps: float, slope: Tensor, boundary: str, backend: Tensor, boundary_grad: str,
) -> list[Tensor]:
    """The gradients' shapes (and strides: contiguous, as :func:`_loop_backward` makes
    them): those of the tensors they are the gradients of."""
    T, N = z.shape[0] - 1, z.shape[1]
    bottom = z.new_empty(T, N, params[0].shape[0])  # params[0]: the bottom layer's U
    states = [x.new_empty(N, x.shape[2]) for x in h]
    return [bottom, *states, *(s.new_empty(s.shape) for s in states),
            *(z.new_empty(N, 1) for _ in h), *(p.new_empty(p.shape) for p in params)]


def hmlstm_loop(
    cells: list[HMLSTMCell],
    input: Tensor,
    h0: tuple[Tensor, ...],
    c0: tuple[Tensor, ...],
    z0: tuple[Tensor, ...],
    slope: float | Tensor,
    boundary: str,
    generator: torch.Generator | None = None,
    backend: str = "auto",
    *,
    boundary_grad: str = "chain",
) -> tuple[tuple[Tensor, ...], Tensor, tuple[Tensor, ...], tuple[Tensor, ...], tuple[Tensor, ...]]:
    """Run the stack over a sequence: what :meth:`hmrnn.model.hmlstm.HMLSTM.forward` computes.

    Args:
        cells: the stack's layers, bottom first.
        input: ``(T, N, D)``.
        h0, c0, z0: the initial state, ``L`` tensors ``(N, H_l)``, ``(N, H_l)``, ``(N, 1)``.
        slope: the hard sigmoid's slope ``a``: a float, or a 0-dim tensor which a compiled
            or graph-captured caller may change in place: on the host, or on the GPU the
            loop runs on (read by the kernels there, when they run).
        boundary: ``"step"``, ``"sample"`` or ``"soft"``.
        generator: random generator for ``boundary="sample"`` (its state is passed to the
            operator and read back: ``torch.compile`` breaks the graph there; without one
            the draws come from torch's default generator).
        backend: the step backend, ``"auto"``, ``"aten"``, ``"cpu"`` or ``"triton"``
            (:func:`hmrnn.model.loop.backends.select`), chosen once for the whole call.
        boundary_grad: where the straight-through gradient of a boundary goes
            (:class:`hmrnn.model.hmlstm.HMLSTM`, :func:`hmrnn.model.loop.backward.run_backward`).

    Returns:
        ``hidden`` (``L`` tensors ``(T, N, H_l)``), ``boundary (T, N, L)``, and the last
        ``h``, ``c``, ``z`` of every layer. Differentiable in the input, the initial state
        and every parameter when autograd is on, once: a backward pass with
        ``create_graph=True`` raises ``RuntimeError``.

    The operator keeps what its backward pass reads only where autograd is on and a
    tensor requires a gradient, as this call finds them: ``torch.export`` of an inference
    program should run under ``torch.no_grad()``, else the program it records keeps (and
    allocates) every buffer of that backward pass.
    """
    names, params = cell_tensors(cells)
    bottom = cells[0].bottom_up(input)  # (T, N, R_1): the input is known in advance
    L = len(cells)
    keep = torch.is_grad_enabled() and any(
        t.requires_grad for t in (bottom, *h0, *c0, *z0, *params))
    rng = generator.get_state() if generator is not None else None
    if not isinstance(slope, Tensor):
        slope = torch.tensor(float(slope), dtype=torch.float64)
    out = torch.ops.hmrnn.hmlstm_loop(
        bottom, list(h0), list(c0), list(z0), list(params), _join(names),
        layer_norm_eps(cells), slope, boundary, backend, keep, rng, boundary_grad,
    )
    if generator is not None:
        generator.set_state(out[-1])
    h_all, z_all, c_last = out[:L], out[L], out[L + 1 : 2 * L + 1]
    hidden = tuple(h[1:] for h in h_all)
    h_last = tuple(h[-1].clone() for h in h_all)
    z_last = tuple(z_all[-1, :, l : l + 1].clone() for l in range(L))
    return hidden, z_all[1:], h_last, tuple(c_last), z_last

