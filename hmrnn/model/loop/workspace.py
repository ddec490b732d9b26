"""The buffers of one call of the loop: the states of every step, and every layer's scratch.

Every step writes into tensors made once per call, which the backends' step functions
(:mod:`hmrnn.model.loop.backends`) are bound to once per call. A field of a step function
is a tensor of one of three layouts: ``(S, M, D)``, whose index ``t`` is step ``t``'s
(index 0 for every step when ``S`` is 1); ``(M, D)``, the same for every step; ``(D,)``,
the same for every row. :func:`layer_tensors` gives a layer's states in the first layout.

Shape legend: T time, N batch, M rows (N, or a subset), L layers, H hidden size of the
layer, Ha / Hb of the layer above / below, R = 4H + 1 gate rows (4H in the top layer),
K = H + Ha + Hb, S steps of a workspace (T, or 1 reused).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from typing import NamedTuple

from torch import Tensor

from hmrnn.model.loop.weights import NORMS, TERMS, LayerWeights


class Slot(NamedTuple):
    """The scratch of one layer's step, ``M`` rows: step ``k``'s views of a :class:`Workspace`.

    ``act (M, R)``: ``s``, then the gates; ``tanh_c (M, H)``; ``u``, the hard sigmoid's
    argument, and ``zbin``, the binarised boundary ``(M, 1)`` (None in the top layer);
    without layer norm ``x``, the fused product's input ``(M, K)`` and ``xs``, its three
    column views (an absent term's None); with layer norm ``proj``: by term (``"U"``,
    ``"U_td"``, ``"W"``) the product before normalisation ``(M, R)``, and ``stats``: by
    normalisation (``"recurrent"``, ``"top_down"``, ``"bottom_up"``, ``"cell"``) its
    ``[mean | rstd]`` ``(M, 2)``. For the backward pass of a layer that can copy: ``diff =
    [o tanh(c) - h_{t-1} | i g - c_{t-1}]`` ``(M, 2H)`` and ``zdiff = z_bin - z_{t-1}``
    ``(M, 1)`` (else None).
    """

    act: Tensor
    tanh_c: Tensor
    u: Tensor | None
    zbin: Tensor | None
    x: Tensor | None
    xs: tuple[Tensor, Tensor | None, Tensor | None] | None
    proj: dict[str, Tensor]
    stats: dict[str, Tensor]
    diff: Tensor | None
    zdiff: Tensor | None


def _each(t: Tensor | None, steps: int) -> list[Tensor | None]:
    return list(t.unbind(0)) if t is not None else [None] * steps


class Workspace:
    """One layer's scratch for ``S`` steps of ``M`` rows, made at once: the ``(S, M, *)``
    buffers named as :class:`Slot`'s fields (``stats`` in one ``lnstats (S, M, 8)``, see
    :meth:`stats`), which the step functions are bound to and the weight gradients read;
    ``slots[k]`` views step ``k``.

    ``grads=True`` makes only what the backward pass writes (the gradients of ``act``,
    ``tanh_c`` and ``proj``); ``keep=True`` also what it reads beyond the states;
    ``fused=False`` no input for the fused product (the products are then made term by
    term, as the sparse paths do). ``tensors``: take the buffers, in :meth:`tensors`'
    order, from there instead of making them (the forward loop's, for its backward pass).
    """

    def __init__(self, w: LayerWeights, steps: int, rows: int, like: Tensor,
                 grads: bool = False, keep: bool = False, fused: bool = True,
                 tensors: Iterator[Tensor] | None = None) -> None:
        H, R = w.hidden_size, w.rows
        boundary = w.U_td is not None and not grads
        copies = w.W is not None and keep  # a layer above the bottom one can copy

        def new(width: int) -> Tensor:
            if tensors is None:
                return like.new_empty(steps, rows, width)
            t = next(tensors)
            if t.shape[-1] != width:
                raise ValueError(f"Workspace: a kept buffer has width {t.shape[-1]}; "
                                 f"expected {width}")
            return t

        def zeros(width: int) -> Tensor:
            return new(width).zero_() if tensors is None else new(width)

        self.steps = steps
        self.act, self.tanh_c = new(R), new(H)
        self.u = new(1) if boundary else None
        self.zbin = new(1) if boundary else None
        self.x = new(sum(w.widths())) if w.fused is not None and fused and not grads else None
        self.diff = new(2 * H) if copies else None
        self.zdiff = new(1) if copies and boundary else None
        self.proj = {name: new(R) for name in TERMS if w.ln and w.term(name) is not None}
        # zeros: the slots of a normalisation the layer has not (and, in the bottom layer,
        # of the input term's, normalised before the loop) are never written, yet returned
        self.lnstats = zeros(2 * len(NORMS)) if w.ln and not grads else None
        self.widths = w.widths()

    def tensors(self) -> list[Tensor]:
        """The buffers this workspace made, in the order ``tensors=`` takes them back."""
        made = (self.act, self.tanh_c, self.u, self.zbin, self.x, self.diff, self.zdiff,
                *self.proj.values(), self.lnstats)
        return [t for t in made if t is not None]

    @cached_property
    def slots(self) -> list[Slot]:
        """Step ``k``'s views, ``slots[k]``: made on first use (a shape function never
        asks for them)."""
        steps = self.steps
        H_, Ha, Hb = self.widths
        xs: list[tuple[Tensor, Tensor | None, Tensor | None] | None] = [None] * steps
        if self.x is not None:
            h = self.x[:, :, :H_].unbind(0)
            a = _each(self.x[:, :, H_ : H_ + Ha] if Ha else None, steps)
            b = _each(self.x[:, :, H_ + Ha :] if Hb else None, steps)
            xs = [(h[k], a[k], b[k]) for k in range(steps)]
        act, tanh_c = self.act.unbind(0), self.tanh_c.unbind(0)
        u, zbin, x, diff, zdiff = (_each(t, steps) for t in (self.u, self.zbin, self.x,
                                                             self.diff, self.zdiff))
        proj = {name: t.unbind(0) for name, t in self.proj.items()}
        stats = {key: s.unbind(0) for key in NORMS if (s := self.stats(key)) is not None}
        return [
            Slot(act[k], tanh_c[k], u[k], zbin[k], x[k], xs[k],
                 {n: v[k] for n, v in proj.items()}, {n: v[k] for n, v in stats.items()},
                 diff[k], zdiff[k])
            for k in range(steps)
        ]

    def stats(self, key: str) -> Tensor | None:
        """``[mean | rstd]`` ``(S, M, 2)`` of normalisation ``key`` (None without layer norm)."""
        if self.lnstats is None:
            return None
        j = NORMS.index(key)
        return self.lnstats[:, :, 2 * j : 2 * j + 2]


class Buffers:
    """The states of one call for all steps, and every layer's workspace.

    Per layer: ``h``, ``c`` ``(T+1, N, H)`` (index 0 is the initial state) and a
    :class:`Workspace` of ``T'`` steps; shared: ``z`` ``(T+1, N, L)``. ``T' = T`` when the
    backward pass will run (``keep``), else 1 (one slot, reused).
    """

    def __init__(
        self, weights: list[LayerWeights], h0: tuple[Tensor, ...], c0: tuple[Tensor, ...],
        z0: tuple[Tensor, ...], steps: int, keep: bool,
    ) -> None:
        N = h0[0].shape[0]
        like = h0[0]
        self.keep = keep
        self.h = [like.new_empty(steps + 1, N, w.hidden_size) for w in weights]
        self.c = [like.new_empty(steps + 1, N, w.hidden_size) for w in weights]
        self.z = like.new_zeros(steps + 1, N, len(weights))
        for l in range(len(weights)):
            self.h[l][0] = h0[l]
            self.c[l][0] = c0[l]
            self.z[0, :, l : l + 1] = z0[l]
        self.work = [Workspace(w, steps if keep else 1, N, like, keep=keep) for w in weights]

    @classmethod
    def restore(cls, weights: list[LayerWeights], h: list[Tensor], z: Tensor,
                tensors: Iterator[Tensor]) -> Buffers:
        """The buffers of a forward loop that kept its steps (``keep=True``), from its
        ``h`` and ``z`` and the tensors of its :meth:`kept`, in that order."""
        buf = cls.__new__(cls)
        buf.keep, buf.h, buf.z = True, list(h), z
        buf.c = [next(tensors) for _ in weights]
        steps, N = z.shape[0] - 1, z.shape[1]
        buf.work = [Workspace(w, steps, N, z, keep=True, tensors=tensors) for w in weights]
        return buf

    def kept(self) -> list[Tensor]:
        """What the backward pass reads besides ``h`` and ``z``: every layer's ``c``, then
        every workspace's :meth:`Workspace.tensors`."""
        return [*self.c, *(t for work in self.work for t in work.tensors())]

    def step_views(self) -> list[dict[str, list[Tensor]]]:
        """Per layer, per-step views of ``h``, ``c`` (``T+1``) and ``z`` (``T+1``, ``(N, 1)``)."""
        return [{"h": list(self.h[l].unbind(0)), "c": list(self.c[l].unbind(0)),
                 "z": list(self.z[:, :, l : l + 1].unbind(0))} for l in range(len(self.h))]


class LayerTensors(NamedTuple):
    """Layer ``l``'s states as ``(T, N, *)`` tensors whose index ``t`` is step ``t``'s:
    ``h_prev``, ``c_prev``, ``z_prev`` (``t-1``); ``h``, ``c``, ``z`` (``t``; ``z`` None in
    the top layer); ``h_above`` (``t-1``, None in the top layer), ``h_below`` and
    ``z_below`` (``t``, None in the bottom layer)."""

    h_prev: Tensor
    c_prev: Tensor
    z_prev: Tensor
    h: Tensor
    c: Tensor
    z: Tensor | None
    h_above: Tensor | None
    h_below: Tensor | None
    z_below: Tensor | None


def layer_tensors(buf: Buffers, l: int) -> LayerTensors:
    """Layer ``l``'s :class:`LayerTensors`: views of ``buf``."""
    L = len(buf.h)
    z = buf.z[:, :, l : l + 1]
    top, bottom = l == L - 1, l == 0
    return LayerTensors(
        buf.h[l][:-1], buf.c[l][:-1], z[:-1], buf.h[l][1:], buf.c[l][1:],
        None if top else z[1:],
        None if top else buf.h[l + 1][:-1],
        None if bottom else buf.h[l - 1][1:],
        None if bottom else buf.z[1:, :, l - 1 : l],
    )
