"""Findings about docs/model.md that the code follows but users should know (see
docs/design-notes.md).

Decision 7 normalises each of the three terms of ``s`` separately. At initialisation this
makes the HM-LSTM's gradient grow exponentially with the sequence length, while the same
stack without layer norm, or with only ``LN(c)``, and a LayerNorm LSTM stay bounded.
Training still works with gradient clipping (the paper clips at 1), but the clipped
direction is dominated by this growth. If a change to decision 7 removes it, this test
fails and the note must be updated.
"""

from __future__ import annotations

import torch

from hmrnn.tasks.charlm.build import build_charlm
from hmrnn.training.config import ModelConfig


def _grad_norm(config: ModelConfig, steps: int) -> float:
    torch.manual_seed(0)
    model = build_charlm(config, 20)
    x = torch.randint(0, 20, (steps, 4), generator=torch.Generator().manual_seed(1))
    out = model(x)
    torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), x.flatten()).backward()
    return float(torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters()
                                if p.grad is not None)))


def test_layer_norm_on_each_term_makes_initial_gradients_explode() -> None:
    small = {"hidden_size": (32,), "embedding_size": 16, "output_size": 32}
    ln_hm = [_grad_norm(ModelConfig(layer_norm=True, **small), t) for t in (10, 60)]
    plain_hm = [_grad_norm(ModelConfig(layer_norm=False, **small), t) for t in (10, 60)]
    ln_lstm = [_grad_norm(ModelConfig(rnn="lstm", layer_norm=True, **small), t) for t in (10, 60)]
    assert ln_hm[1] > 1e3 * ln_hm[0]  # exponential growth with T
    assert plain_hm[1] < 10 * plain_hm[0] and ln_lstm[1] < 10 * ln_lstm[0]
