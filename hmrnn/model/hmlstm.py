"""The HM-LSTM stack: L >= 2 HM-LSTM layers run over a sequence (Chung et al. 2017)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import torch
from torch import Tensor, nn

from hmrnn.model.cell import HMLSTMCell, LayerState
from hmrnn.model.functional import (
    BOUNDARY_GRADS,
    BOUNDARY_MODES,
    boundary_in_use,
    slope_schedule,
)
from hmrnn.model.loop import check_name, hmlstm_loop
from hmrnn.model.types import (
    RNNOutput,
    as_sizes,
    check_input,
    check_like,
    common_size,
    factory_kwargs,
)


class HMLSTMState(NamedTuple):
    """The carried state of an HM-LSTM stack, one entry per layer (bottom first).

    Attributes:
        h: ``L`` tensors ``(N, H_l)``.
        c: ``L`` tensors ``(N, H_l)``.
        z: ``L`` tensors ``(N, 1)``; the top layer's is always 0.

    Never batch-first. Detach it between segments with :func:`hmrnn.model.types.detach_state`.
    """

    h: tuple[Tensor, ...]
    c: tuple[Tensor, ...]
    z: tuple[Tensor, ...]


def check_state(
    rnn: HMLSTM, state: Any, batch: int | None, *, autocast: bool = False,
    name: str = "HMLSTM",
) -> HMLSTMState:
    """``state`` as an :class:`HMLSTMState` that fits ``rnn`` on a batch of ``batch`` rows,
    or ``ValueError``: the one check of every entry to the loop (:meth:`HMLSTM.forward`,
    :func:`hmrnn.model.sparse.sparse_forward`, :class:`hmrnn.model.streaming.StreamingHMLSTM`),
    which sizes its buffers from the input and the state alike (docs/model.md fixes the
    state: ``h``, ``c`` and ``z`` of every layer).

    Args:
        rnn: the stack the state is for.
        state: an :class:`HMLSTMState`, or a plain ``(h, c, z)`` of per-layer tuples (or
            lists), which is converted.
        batch: ``N``, the input's batch size; None: the state's own (``state.h[0]``'s rows),
            which every other tensor must then share.
        autocast: under autocast: any floating dtype (the fast loop casts to the
            parameters' dtype, the cell loop follows autocast); otherwise the parameters'.
        name: who checks, for the messages.

    Returns:
        The state as an :class:`HMLSTMState` of tuples: ``h``, ``c`` ``L x (N, H_l)``,
        ``z`` ``L x (N, 1)``, on the parameters' device.

    Raises:
        ValueError: naming the part and layer, the expected and the given shape (or dtype,
            or device), e.g. ``state.h[1] has shape (1, 32); expected (64, 32) for a batch
            of 64 and hidden size 32``.
    """
    L = rnn.num_layers
    if not isinstance(state, tuple | list) or len(state) != 3:
        got = (f"a {type(state).__name__} of {len(state)}" if isinstance(state, tuple | list)
               else f"a {type(state).__name__}")
        raise ValueError(f"{name}: the state must be an HMLSTMState (h, c, z), each one tensor "
                         f"per layer, got {got}")
    like = rnn.cells[0].W
    parts: list[tuple[Tensor, ...]] = []
    for part, tensors in zip("hcz", state, strict=True):
        if not isinstance(tensors, tuple | list):
            raise ValueError(f"{name}: state.{part} must be a tuple of {L} tensors, one per "
                             f"layer, got a {type(tensors).__name__}")
        if len(tensors) != L:
            raise ValueError(f"{name}: state.{part} holds {len(tensors)} tensors; expected {L}, "
                             f"one per layer of the model")
        for l, t in enumerate(tensors):
            what = f"state.{part}[{l}]"
            if not isinstance(t, Tensor):
                raise ValueError(f"{name}: {what} is a {type(t).__name__}, not a tensor")
            if batch is None:
                batch = int(t.shape[0]) if t.dim() == 2 else -1
            width = 1 if part == "z" else rnn.hidden_sizes[l]
            if tuple(t.shape) != (batch, width):
                size = ("(one boundary per row)" if part == "z" else
                        f"and hidden size {width}")
                expected = (f"({batch}, {width}) for a batch of {batch} {size}" if batch >= 0
                            else f"(N, {width})")
                raise ValueError(f"{name}: {what} has shape {tuple(t.shape)}; expected "
                                 f"{expected}")
            check_like(t, like, what, name, autocast=autocast)
        parts.append(tuple(tensors))
    return HMLSTMState(*parts)


class HMLSTM(nn.Module):
    r"""A stack of HM-LSTM layers (Chung, Ahn & Bengio, ICLR 2017), as docs/model.md fixes it.

    At each step every layer chooses among UPDATE, COPY and FLUSH from its own last
    boundary ``z^l_{t-1}`` and the boundary of the layer below ``z^{l-1}_t``:
    it reads the layer above only right after its own boundary (top-down) and the layer
    below only when that layer has just ended a segment (bottom-up); in COPY it keeps
    ``(h, c, z)`` unchanged. The top layer has no boundary detector (``z^L = 0``). See
    :class:`hmrnn.model.cell.HMLSTMCell` for the equations of one step.

    Args:
        input_size: features of the input ``x_t`` (the embedding size for characters).
        hidden_size: one int, or one size per layer (layer-wise capacity control).
        num_layers: ``L >= 2``; may be left out when ``hidden_size`` lists one size per
            layer (given as well, it must agree).
        boundary: ``"step"`` (default: hard threshold, straight-through gradient),
            ``"sample"`` (Bernoulli, straight-through), ``"soft"`` (no binarisation) or
            ``"gumbel"`` (Gumbel-sigmoid: ``1[a s_z + noise > 0]`` with logistic noise,
            straight-through, in training mode; ``"step"`` in eval mode, as dropout).
            May be changed after construction, e.g. to evaluate a sampled model with steps.
        boundary_grad: where the straight-through gradient of a boundary goes
            (docs/model.md decision 9; the forward pass is the same): ``"chain"`` (default,
            the paper's) everywhere, through ``z``'s COPY share (``z = COPY z_{t-1} + (1 -
            COPY) z_new``) and into everything ``s_z`` reads; ``"hold"``: that COPY
            share held constant, so COPY passes ``z``'s gradient on as it passes ``z``
            (through the share it can double at each COPY step); ``"local"``: held, and
            ``s_z``'s gradient reaches the detector's weights (and the bottom layer's
            input) only, as if the states it reads were constants. May be changed after
            construction.
        layer_norm: layer normalisation as docs/model.md decision 7.
        batch_first: input and output sequences are ``(N, T, *)``; the state never is.
        fast: run the fast loop of :mod:`hmrnn.model.loop` (one autograd node for the whole
            sequence, hand-written backward; differentiable once) rather than the
            cell-by-cell loop, which is the readable reference. Both compute the same,
            within float rounding; may be changed after construction. Under autocast the
            fast loop runs in the parameters' dtype (autocast is off inside it, and its
            outputs are in that dtype), while the cell loop follows autocast. For inference
            that skips COPY's work see :mod:`hmrnn.model.sparse`.
        backend: the fast loop's step backend (:mod:`hmrnn.model.loop.backends`), chosen
            once per call: ``"auto"`` (default, where ``boundary`` does not draw: the
            Triton step for float32 on a CUDA GPU where triton imports, ``HMRNN_TRITON=0``
            turning it off; the C step for float32 on the CPU where it compiled,
            ``HMRNN_KERNELS=0`` turning it off; else ATen), ``"aten"`` (ATen operations, any
            device and dtype), ``"cpu"`` (the C step) or ``"triton"`` (a call they cannot
            serve raises). Any other value raises ``ValueError``. The cell loop
            (``fast=False``) ignores it; may be changed after construction.
        boundary_ln_gain: with layer norm, the initial gain of row z in each term's norm
            (:class:`HMLSTMCell`); None: as every row.

    Inputs: ``input, state=None, *, generator=None, boundaries=None``
        - input: ``(T, N, input_size)`` (``(N, T, input_size)`` if ``batch_first``).
        - state: an :class:`HMLSTMState` (or a plain ``(h, c, z)`` of per-layer tuples),
          or ``None`` for zeros (docs/model.md decision 4). It must fit the input and the
          stack (:func:`check_state`): ``L`` tensors ``(N, H_l)``, ``(N, H_l)``, ``(N, 1)``
          on the parameters' device, of their dtype (any floating dtype under autocast);
          any other raises ``ValueError`` naming the part, the layer and both shapes.
          The input too must be on that device and, outside autocast, of that dtype.
        - generator: random generator for ``boundary="sample"`` (and ``"gumbel"`` in
          training).
        - boundaries: given boundaries, ``(T, N, L - 1)`` (``(N, T, L - 1)`` if
          ``batch_first``) of 0, 1 or NaN: ``z^l_t`` of layers 1 to ``L - 1`` taken from
          outside in place of their detectors' (COPY still copies ``z``), e.g. the true
          word and phrase ends, to train or score a stack on a segmentation of one's
          choice; where NaN, the detector decides (a layer given, the others learned).
          Where given, the detectors are not read and get no gradient. Such a call runs
          the cell loop, whatever ``fast`` says.

    Outputs: ``output, state``
        - output: :class:`hmrnn.model.types.RNNOutput` with ``hidden``, ``L`` tensors
          ``(T, N, H_l)``, and ``boundary`` ``(T, N, L)`` holding ``z^l_t`` (top column 0).
        - state: the :class:`HMLSTMState` after the last step.

    Shape legend: T time, N batch, L layers, H_l hidden size of layer l.

    State: ``slope`` (a buffer, saved in the state dict) is the hard sigmoid's slope ``a``;
    set it between steps with :meth:`set_slope` or :meth:`anneal_slope` (they also keep
    ``slope_value``, its value as a Python float, which the fast loop reads on the CPU
    without waiting for a GPU), or load it with ``load_state_dict``. On a GPU the fast loop's
    kernels read the buffer itself when they run, so a CUDA graph of the loop
    (:mod:`hmrnn.model.graphed`) replays with the slope of the moment.

    Attributes: ``input_size``, ``num_layers``; ``hidden_size``, as ``nn.LSTM``'s: one int
    when every layer has that size, else the tuple of sizes; ``hidden_sizes``, always the
    tuple (bottom first).

    Parameters: ``layers.{k}.W``, ``layers.{k}.U``, ``layers.{k}.U_td`` (not in the top
    layer), ``layers.{k}.bias``, rows ordered f, i, o, g, z (docs/model.md's layout; torch's
    LSTM orders i, f, g, o), k = 0 the bottom layer.

    ``torch.compile(rnn, fullgraph=True)`` compiles the fast loop, forward and backward
    (it is two ``torch.library`` operators: :mod:`hmrnn.model.loop.function`); a new slope
    needs no recompilation. Only an explicit ``generator`` breaks the graph.

    Example::

        >>> rnn = HMLSTM(input_size=16, hidden_size=[32, 32, 24])  # num_layers=3
        >>> rnn.num_layers, rnn.hidden_size
        (3, (32, 32, 24))
        >>> output, state = rnn(torch.randn(50, 4, 16))
        >>> output.hidden[2].shape, output.boundary.shape
        (torch.Size([50, 4, 24]), torch.Size([50, 4, 3]))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int | Sequence[int],
        num_layers: int | None = None,
        *,
        boundary: str = "step",
        boundary_grad: str = "chain",
        layer_norm: bool = False,
        batch_first: bool = False,
        fast: bool = True,
        backend: str = "auto",
        boundary_ln_gain: float | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if num_layers is not None and (not isinstance(num_layers, int) or num_layers < 2):
            raise ValueError(
                f"HMLSTM needs num_layers >= 2 (a hierarchy of at least two layers), "
                f"got {num_layers!r}"
            )
        if not isinstance(input_size, int) or input_size <= 0:
            raise ValueError(f"input_size must be a positive int, got {input_size!r}")
        sizes = as_sizes(hidden_size, num_layers, "HMLSTM")
        if len(sizes) < 2:
            raise ValueError(f"HMLSTM needs num_layers >= 2 (a hierarchy of at least two "
                             f"layers), got hidden_size {list(sizes)}, one layer")
        self.input_size = input_size
        self.hidden_sizes = sizes
        self.hidden_size = common_size(sizes)
        self.num_layers = len(sizes)
        self.layer_norm = layer_norm
        self.batch_first = batch_first
        self.boundary = boundary
        self.boundary_grad = boundary_grad
        self.fast = fast
        self.backend = backend
        kw = factory_kwargs(device, dtype)
        below = (input_size, *sizes[:-1])
        above: tuple[int | None, ...] = (*sizes[1:], None)
        self.layers = nn.ModuleList(
            HMLSTMCell(b, h, a, layer_norm=layer_norm, boundary_ln_gain=boundary_ln_gain, **kw)
            for b, h, a in zip(below, sizes, above, strict=True)
        )
        W = self.cells[0].W
        self.slope: Tensor
        self.register_buffer("slope", torch.tensor(1.0, dtype=W.dtype, device=W.device))
        # The buffer's value on the host (reading a GPU's waits for it), as a tensor that
        # set_slope fills in place: a compiled model reads a new slope without recompiling.
        # Not a buffer: .to(device) leaves it on the host.
        self._slope_host = torch.tensor(1.0, dtype=torch.float64)
        self.register_load_state_dict_post_hook(HMLSTM._slope_loaded)

    def extra_repr(self) -> str:
        """``input_size, hidden_size, num_layers=L`` and every setting off its default,
        as ``nn.LSTM``'s repr."""
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        for name, default in (("boundary", "step"), ("boundary_grad", "chain"),
                              ("layer_norm", False),
                              ("batch_first", False), ("fast", True), ("backend", "auto")):
            value = getattr(self, name)
            if value != default:
                s += f", {name}={value!r}"
        return s

    @property
    def slope_value(self) -> float:
        """The slope ``a`` as a Python float, read on the host (the buffer's value)."""
        return float(self._slope_host)

    @property
    def backend(self) -> str:
        """The fast loop's step backend: one of ``BACKENDS`` (see the class docstring)."""
        return self._backend

    @backend.setter
    def backend(self, name: str) -> None:
        self._backend = check_name(name)

    @property
    def cells(self) -> list[HMLSTMCell]:
        """The layers, bottom first, typed as cells."""
        return [cast(HMLSTMCell, cell) for cell in self.layers]

    @property
    def boundary(self) -> str:
        return self._boundary

    @boundary.setter
    def boundary(self, mode: str) -> None:
        if mode not in BOUNDARY_MODES:
            raise ValueError(f"boundary must be one of {BOUNDARY_MODES}, got {mode!r}")
        self._boundary = mode

    @property
    def boundary_grad(self) -> str:
        return self._boundary_grad

    @boundary_grad.setter
    def boundary_grad(self, mode: str) -> None:
        if mode not in BOUNDARY_GRADS:
            raise ValueError(f"boundary_grad must be one of {BOUNDARY_GRADS}, got {mode!r}")
        self._boundary_grad = mode

    def set_slope(self, slope: float) -> None:
        """Set the hard sigmoid's slope ``a`` (> 0) used from the next step on."""
        if not slope > 0:
            raise ValueError(f"slope must be positive, got {slope}")
        self.slope.fill_(float(slope))
        self._slope_host.fill_(float(torch.tensor(float(slope), dtype=self.slope.dtype)))

    @staticmethod
    def _slope_loaded(module: nn.Module, _incompatible: Any) -> None:
        if isinstance(module, HMLSTM):
            module._slope_host.fill_(float(module.slope))

    def anneal_slope(self, epoch: float, rate: float = 0.04, max_slope: float = 5.0) -> float:
        """Set the slope from the paper's schedule
        (:func:`hmrnn.model.functional.slope_schedule`)."""
        a = slope_schedule(epoch, rate, max_slope)
        self.set_slope(a)
        return a

    def initial_state(self, batch_size: int) -> HMLSTMState:
        """Zeros for every ``h``, ``c`` and ``z`` (docs/model.md decision 4)."""
        p = self.cells[0].W
        h = tuple(p.new_zeros(batch_size, s) for s in self.hidden_sizes)
        c = tuple(p.new_zeros(batch_size, s) for s in self.hidden_sizes)
        z = tuple(p.new_zeros(batch_size, 1) for _ in self.hidden_sizes)
        return HMLSTMState(h, c, z)

    @property
    def boundary_now(self) -> str:
        """The mode a call runs now: :attr:`boundary`, but ``"step"`` for ``"gumbel"``
        outside training."""
        return boundary_in_use(self._boundary, self.training)

    def forward(
        self,
        input: Tensor,
        state: HMLSTMState | None = None,
        *,
        generator: torch.Generator | None = None,
        boundaries: Tensor | None = None,
    ) -> tuple[RNNOutput, HMLSTMState]:
        if self.batch_first and isinstance(input, Tensor):
            input = input.transpose(0, 1)
            if isinstance(boundaries, Tensor):
                boundaries = boundaries.transpose(0, 1)
        like = self.cells[0].W
        autocast = torch.is_autocast_enabled(like.device.type)
        check_input(input, self.input_size, "HMLSTM", like=like, autocast=autocast)
        if state is None:
            state = self.initial_state(input.shape[1])
        else:
            state = check_state(self, state, input.shape[1], autocast=autocast)
        if boundaries is not None:
            self._check_boundaries(boundaries, input)
            hidden, boundary, state = self._step_by_step(input, state, generator, boundaries)
        elif self.fast:
            device = input.device.type
            if autocast:  # the recurrence stays in the parameters'
                dtype = self.slope.dtype           # dtype, whatever autocast made its input
                input = input.to(dtype)
                state = HMLSTMState(*(tuple(t.to(dtype) for t in part) for part in state))
            with torch.autocast(device, enabled=False):
                hidden, boundary, *last = hmlstm_loop(
                    self.cells, input, state.h, state.c, state.z,
                    self._slope_host if device == "cpu" else self.slope,
                    self.boundary_now, generator, self._backend,
                    boundary_grad=self._boundary_grad,
                )
            state = HMLSTMState(*last)
        else:
            hidden, boundary, state = self._step_by_step(input, state, generator)
        if self.batch_first:
            hidden = tuple(x.transpose(0, 1) for x in hidden)
            boundary = boundary.transpose(0, 1)
        return RNNOutput(hidden, boundary), state

    def _check_boundaries(self, boundaries: Tensor, input: Tensor) -> None:
        """Raise ``ValueError`` unless ``boundaries`` is ``(T, N, L - 1)`` of 0, 1 and NaN
        on the input's device."""
        expected = (*input.shape[:2], self.num_layers - 1)
        if not isinstance(boundaries, Tensor) or tuple(boundaries.shape) != expected:
            got = tuple(boundaries.shape) if isinstance(boundaries, Tensor) else boundaries
            order = "(T, N, L - 1)"
            if self.batch_first:  # as the caller wrote them
                expected, order = (expected[1], expected[0], expected[2]), "(N, T, L - 1)"
                got = (got[1], got[0], *got[2:]) if isinstance(got, tuple) else got
            raise ValueError(f"HMLSTM: boundaries must have shape {expected} {order}, "
                             f"got {got}")
        if boundaries.device != input.device:
            raise ValueError(f"HMLSTM: boundaries are on {boundaries.device}, the input on "
                             f"{input.device}")
        if not bool(((boundaries == 0) | (boundaries == 1) | boundaries.isnan()).all()):
            raise ValueError("HMLSTM: boundaries must be 0, 1 or NaN (the detector decides)")

    def _step_by_step(
        self, input: Tensor, state: HMLSTMState, generator: torch.Generator | None,
        boundaries: Tensor | None = None,
    ) -> tuple[tuple[Tensor, ...], Tensor, HMLSTMState]:
        """The reference loop: the cell, layer by layer and step by step (``fast=False``);
        ``boundaries (T, N, L - 1)``: given boundaries, as :meth:`forward` says."""
        T, N = input.shape[0], input.shape[1]
        h, c, z = list(state.h), list(state.c), list(state.z)
        L = self.num_layers
        cells = self.cells
        bottom_input = cells[0].bottom_up(input)  # (T, N, R_1): the input is known in advance
        ones = input.new_ones(N, 1)
        local, hold = self._boundary_grad == "local", self._boundary_grad != "chain"
        mode = self.boundary_now
        given = None if boundaries is None else boundaries.to(input.dtype)
        hidden_steps: list[list[Tensor]] = [[] for _ in range(L)]
        boundary_steps: list[Tensor] = []
        for t in range(T):
            z_below = ones  # z^0_t = 1 (docs/model.md decision 2)
            for l, cell in enumerate(cells):
                bottom_up = bottom_input[t] if l == 0 else cell.bottom_up(h[l - 1])
                h_above = h[l + 1] if l + 1 < L else None  # still h^{l+1}_{t-1}
                detector_input = (None if not local else bottom_up if l == 0
                                  else cell.bottom_up(h[l - 1].detach()))
                h[l], c[l], z[l] = cell(
                    bottom_up, z_below, h_above, LayerState(h[l], c[l], z[l]),
                    self.slope, mode, generator, detector_input, hold,
                    None if given is None or l == L - 1 else given[t, :, l : l + 1],
                )
                z_below = z[l]
                hidden_steps[l].append(h[l])
            boundary_steps.append(torch.cat(z, dim=1))
        hidden = tuple(torch.stack(steps) for steps in hidden_steps)  # L x (T, N, H_l)
        boundary = torch.stack(boundary_steps)  # (T, N, L)
        return hidden, boundary, HMLSTMState(tuple(h), tuple(c), tuple(z))
