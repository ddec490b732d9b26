"""What the loop reads of the cells' parameters, gathered once per call, and the products
with them.

Per layer (:class:`LayerWeights`): ``U (R, H)``, ``U_td (R, Ha)``, ``W (R, Hb)``, ``bias
(R,)``, and with layer norm the ``(weight, bias)`` of each normalisation. Without layer
norm the three weights are column views of the *fused* weight ``[U | U_td | W] (R, K)``,
whose one product with ``[h_{t-1} | z_{t-1} h^{above}_{t-1} | z^{below}_t h^{below}_t]``
makes all three terms of ``s`` (docs/model.md, Eq. 5-7). The products themselves are
:class:`Linear`: ``torch.addmm``, or for a large weight in float32 on the CPU oneDNN with
the weight packed once per call.

Shape legend: M rows, H hidden size of the layer, Ha / Hb of the layer above / below,
R = 4H + 1 gate rows (4H in the top layer), K = H + Ha + Hb.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from hmrnn.model.cell import HMLSTMCell

try:  # oneDNN's matrix product with a prepacked weight (what inductor's CPU freezing uses)
    _reorder: Any = torch.ops.mkldnn._reorder_linear_weight.default
    _onednn_linear = torch.ops.mkldnn._linear_pointwise.default
    _onednn_linear_add = torch.ops.mkldnn._linear_pointwise.binary
except (AttributeError, RuntimeError):  # a build without oneDNN
    _reorder = None

# Per layer, the cell's tensors the loop reads, in the order it passes them on.
PARAMETER_NAMES = (
    "U", "U_td", "W", "bias",
    "ln_recurrent.weight", "ln_recurrent.bias", "ln_top_down.weight", "ln_top_down.bias",
    "ln_bottom_up.weight", "ln_bottom_up.bias", "ln_cell.weight", "ln_cell.bias",
)
TERMS = ("U", "U_td", "W")  # recurrent, top-down, bottom-up
LN_OF = {"U": "recurrent", "U_td": "top_down", "W": "bottom_up"}  # a term's normalisation
NORMS = ("recurrent", "top_down", "bottom_up", "cell")

# From this many elements (3 x 512: yes; 3 x 128: no) a layer's weights are packed for
# oneDNN (below, copying its output out costs what it saves) and, on the CPU, the gated
# terms' products are made only on the rows their boundaries let in.
LARGE_WEIGHT = 1 << 19
PACK_MIN_STEPS = 8  # packing a weight costs about one product with it


class Linear:
    """``x @ weight.T`` (plus a bias or an ``(M, O)`` tensor) for many ``x`` of about
    ``rows`` rows: on CPU in float32 a large weight ``(O, I)`` is packed once for oneDNN,
    whose products of few rows are faster than ``torch.addmm``'s (1.4x at 3 x 512, batch
    64; they round apart, in the last bits); elsewhere, or with ``rows=0`` (too few uses
    to pay for the packing), it is ``torch.addmm``.
    """

    def __init__(self, weight: Tensor, rows: int) -> None:
        self.weight_t = weight.t()
        use = (rows > 0 and _reorder is not None and weight.device.type == "cpu"
               and weight.dtype == torch.float32 and weight.numel() >= LARGE_WEIGHT
               and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)
        self.packed = _reorder(weight.contiguous(), rows) if use else None

    def __call__(self, x: Tensor, add: Tensor | None = None, out: Tensor | None = None) -> Tensor:
        """``x (M, I) -> (M, O)``, written into ``out`` if given."""
        if self.packed is None:
            if add is None:
                return torch.mm(x, self.weight_t, out=out)
            return torch.addmm(add, x, self.weight_t, out=out)
        if add is None or add.dim() == 1:
            y = _onednn_linear(x, self.packed, add, "none", [], "")
        else:
            y = _onednn_linear_add(x, add, self.packed, None, "add")
        return y if out is None else out.copy_(y)


@dataclass(frozen=True)
class LayerWeights:
    """What one layer's step reads, gathered once per call.

    ``U (R, H)``, ``U_td (R, Ha)`` (None in the top layer), ``W (R, Hb)`` (None in the
    bottom layer, whose input term comes precomputed), ``bias (R,)``. Without layer norm
    ``fused (R, K)`` is ``[U | U_td | W]`` and the three are column views of it; with layer
    norm ``ln`` maps ``"recurrent"``, ``"top_down"``, ``"bottom_up"``, ``"cell"`` to the
    ``(weight, bias)`` of each normalisation. :meth:`product` gives each product as a
    :class:`Linear` for about ``rows_hint`` rows, made on first use. ``skip_gated``: the
    weights are large enough (on the CPU) that in training the products of a gated term
    are worth making only on the rows its boundary lets in (the others add 0), in the
    forward pass without layer norm and in the weight gradients.
    """

    hidden_size: int
    U: Tensor
    U_td: Tensor | None
    W: Tensor | None
    bias: Tensor
    fused: Tensor | None
    ln: dict[str, tuple[Tensor, Tensor]] | None
    eps: float
    rows_hint: int
    linear: dict[str, Linear]
    skip_gated: bool

    @property
    def rows(self) -> int:
        """``R``, the gate rows."""
        return self.U.shape[0]

    def term(self, name: str) -> Tensor | None:
        """``"U"``, ``"U_td"`` or ``"W"`` (None where the layer has no such term)."""
        return {"U": self.U, "U_td": self.U_td, "W": self.W}[name]

    def norm(self, key: str) -> tuple[Tensor, Tensor]:
        """The ``(weight, bias)`` of normalisation ``key`` (layer norm only)."""
        if self.ln is None:
            raise ValueError("this layer has no layer norm")
        return self.ln[key]

    def product(self, name: str) -> Linear:
        """``x @ M.T`` for ``M`` = ``"fused"``, ``"U"``, ``"U_td"`` or ``"W"``; a trailing
        ``"^T"`` (e.g. ``"fused^T"``) gives ``g @ M``, the backward pass's product."""
        if name not in self.linear:
            base = name.removesuffix("^T")
            m = self.fused if base == "fused" else self.term(base)
            if m is None:
                raise ValueError(f"this layer has no weight {base!r}")
            self.linear[name] = Linear(m.t() if name.endswith("^T") else m, self.rows_hint)
        return self.linear[name]

    def widths(self) -> tuple[int, int, int]:
        """Columns of ``U``, ``U_td``, ``W`` (0 for an absent one)."""
        H, Ha, Hb = (w.shape[1] if w is not None else 0 for w in (self.U, self.U_td, self.W))
        return H, Ha, Hb


def parameter_names(cell: HMLSTMCell, bottom: bool) -> tuple[str, ...]:
    """The names of the cell's tensors the loop reads (the bottom layer's ``W`` and
    ``ln_bottom_up`` are used before the loop, by :meth:`HMLSTMCell.bottom_up`)."""
    present = {name for name, _ in cell.named_parameters()}
    return tuple(
        n for n in PARAMETER_NAMES
        if n in present and not (bottom and n.startswith(("W", "ln_bottom_up")))
    )


def has_fused(names: tuple[str, ...]) -> bool:
    """Whether a layer reading the tensors ``names`` has a fused weight (no layer norm)."""
    return "ln_recurrent.weight" not in names


def layer_weights(
    names: tuple[str, ...], tensors: tuple[Tensor, ...], eps: float, rows: int,
    fused: Tensor | None = None,
) -> LayerWeights:
    """Assemble :class:`LayerWeights` from tensors named as :func:`parameter_names` says,
    for products of about ``rows`` rows; ``fused``: the fused weight, if it is made
    already (the forward pass's, in the backward pass)."""
    p = dict(zip(names, tensors, strict=True))
    U, U_td, W = p["U"], p.get("U_td"), p.get("W")
    ln = None
    if not has_fused(names):
        ln = {k: (p[f"ln_{k}.weight"], p[f"ln_{k}.bias"]) for k in NORMS if f"ln_{k}.weight" in p}
    else:
        fused = (torch.cat([w for w in (U, U_td, W) if w is not None], dim=1)  # (R, K)
                 if fused is None else fused)
        H, Ha = U.shape[1], U_td.shape[1] if U_td is not None else 0
        U = fused[:, :H]
        U_td = fused[:, H : H + Ha] if U_td is not None else None
        W = fused[:, H + Ha :] if W is not None else None
    present = [t for t in (U, U_td, W) if t is not None]
    skip = (U.device.type == "cpu"  # (a row count on CUDA would wait for the GPU)
            and sum(t.numel() for t in present) >= LARGE_WEIGHT)
    return LayerWeights(U.shape[1], U, U_td, W, p["bias"], fused, ln, eps, rows, {}, skip)


def packing_rows(rows: int, steps: int) -> int:
    """``rows`` for :class:`Linear` where a weight serves enough products (``steps``) to pay
    for packing it, else 0."""
    return rows if steps >= PACK_MIN_STEPS else 0


def weights_of(
    names: tuple[tuple[str, ...], ...], params: tuple[Tensor, ...], eps: float, rows: int,
    fused: Iterator[Tensor] | None = None,
) -> list[LayerWeights]:
    """Every layer's :class:`LayerWeights` from :func:`cell_tensors`'s names and tensors,
    for products of about ``rows`` rows (0: unpacked, see :class:`Linear`); ``fused``:
    the fused weights made already, one for each layer that has one (:func:`has_fused`)."""
    out, start = [], 0
    for layer in names:
        made = next(fused) if fused is not None and has_fused(layer) else None
        out.append(layer_weights(layer, params[start : start + len(layer)], eps, rows, made))
        start += len(layer)
    return out


def cell_tensors(cells: list[HMLSTMCell]) -> tuple[tuple[tuple[str, ...], ...], tuple[Tensor, ...]]:
    """The names (per layer) and the tensors, flat, that the loop reads from the cells."""
    names = tuple(parameter_names(c, l == 0) for l, c in enumerate(cells))
    tensors = tuple(  # (getattr, not get_parameter: a test may put plain tensors there)
        _tensor(c.get_submodule(module) if module else c, attr)
        for c, layer in zip(cells, names, strict=True)
        for module, _, attr in (n.rpartition(".") for n in layer)
    )
    return names, tensors


def _tensor(module: torch.nn.Module, name: str) -> Tensor:
    t = getattr(module, name)
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} is not a tensor: {type(t).__name__}")
    return t


def layer_norm_eps(cells: list[HMLSTMCell]) -> float:
    """The layer norms' ``eps`` (one for the whole stack)."""
    return cells[0].ln_cell.eps if cells[0].layer_norm else 1e-5


def inference_weights(cells: list[HMLSTMCell], rows: int) -> list[LayerWeights]:
    """:func:`weights_of` the cells' parameters, detached: for loops without autograd."""
    names, params = cell_tensors(cells)
    return weights_of(names, tuple(p.detach() for p in params), layer_norm_eps(cells), rows)
