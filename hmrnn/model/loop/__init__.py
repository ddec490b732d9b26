"""The HM-LSTM stack's fast time loop (private to :mod:`hmrnn.model`), one job a module:

- :mod:`.weights`: the cells' tensors gathered once per call, and the products with them;
- :mod:`.workspace`: the states of every step and every layer's scratch buffers;
- :mod:`.forward`: the forward loop driver (and the step pieces of the sparse paths);
- :mod:`.backward`: the backward loop driver (BPTT by hand) and the weight gradients;
- :mod:`.function`: the loop as two ``torch.library`` operators (forward, backward; the
  backend chosen once per call), the autograd formula, :func:`hmlstm_loop`;
- :mod:`.backends`: the step backends, one module each (ATen; the C step on the CPU).

The model contract is docs/model.md. The names below are what the rest of the package
uses.
"""

from hmrnn.model.loop.backends import BACKENDS, Backend, check_name, select
from hmrnn.model.loop.forward import pointwise, preactivation, scratch_slots
from hmrnn.model.loop.function import hmlstm_loop
from hmrnn.model.loop.weights import LayerWeights, inference_weights, packing_rows
from hmrnn.model.loop.workspace import Buffers, Slot

__all__ = [
    "BACKENDS", "Backend", "Buffers", "LayerWeights", "Slot", "check_name", "hmlstm_loop",
    "inference_weights", "packing_rows", "pointwise", "preactivation", "scratch_slots",
    "select",
]
