"""Gradient norm of the character model's loss at initialisation, against sequence length.

Prints the table of docs/design-notes.md ("layer norm on each term of s"):
    python scripts/grad_norm_at_init.py
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

import hmrnn.model.cell
from hmrnn.model.charlm import CharLM
from hmrnn.tasks.charlm.build import build_charlm
from hmrnn.training.config import ModelConfig

LENGTHS = (10, 25, 50, 100)


def grad_norm(config: ModelConfig, steps: int, change: Callable[[CharLM], None]) -> float:
    torch.manual_seed(0)
    model = build_charlm(config, 50)
    change(model)
    x = torch.randint(0, 50, (steps, 8), generator=torch.Generator().manual_seed(1))
    out = model(x)
    torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), x.flatten()).backward()
    return float(torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters()
                                if p.grad is not None)))


def keep(_model: CharLM) -> None:
    """No change."""


def only_cell_norm(model: CharLM) -> None:
    for cell in model.rnn.layers:
        cell.ln_recurrent = cell.ln_bottom_up = nn.Identity()
        if cell.has_boundary:
            cell.ln_top_down = nn.Identity()


def reference_loop(model: CharLM) -> None:
    model.rnn.fast = False  # the cell loop, so that the straight-through path can be cut


def soft(model: CharLM) -> None:
    model.rnn.boundary = "soft"


def main() -> None:
    torch.set_num_threads(1)
    hm = ModelConfig(hidden_size=(128,), boundary_grad="chain")  # the paper's estimator
    rows = [
        ("HM-LSTM, LN (decision 7)", ModelConfig(hidden_size=(128,), layer_norm=True,
                                                 boundary_grad="chain"), keep),
        ("HM-LSTM, no LN", ModelConfig(hidden_size=(128,), layer_norm=False,
                                       boundary_grad="chain"), keep),
        ("HM-LSTM, LN, soft boundaries", hm, soft),
        ("LayerNorm LSTM", ModelConfig(rnn="lstm", hidden_size=(128,)), keep),
    ]
    cut = [
        ("HM-LSTM, LN on c only, no straight-through", hm,
         lambda m: (reference_loop(m), only_cell_norm(m))),
        ("HM-LSTM, LN, straight-through cut", hm, reference_loop),
    ]
    print("| model | " + " | ".join(f"T = {t}" for t in LENGTHS) + " |")
    print("| --- |" + " ---: |" * len(LENGTHS))
    for label, config, change in rows:
        print(f"| {label} | " + " | ".join(
            f"{grad_norm(config, t, change):.2g}" for t in LENGTHS) + " |")
    binarize = hmrnn.model.cell.binarize
    hmrnn.model.cell.binarize = lambda z, mode, gen=None: binarize(z, mode, gen).detach()
    try:
        for label, config, change in cut:
            print(f"| {label} | " + " | ".join(
                f"{grad_norm(config, t, change):.2g}" for t in LENGTHS) + " |")
    finally:
        hmrnn.model.cell.binarize = binarize


if __name__ == "__main__":
    main()
