"""The start of training by ``model.boundary_ln_gain`` (docs/model.md decision 9).

For each initial gain of row z in the terms' layer norms (``-``: decision 7's 0.01, as
every row), each ``model.boundary_grad`` and each slope, over seeds: the gradient norm of
the loss at initialisation over the same seed's model without layer norm (decision 7's
measure: char LM at the main job's sizes, T = 100, batch 8), and the boundary rates of
layers 1 and 2 at initialisation.

    python scripts/boundary_gain_start.py                       # the table in docs/model.md
    python scripts/boundary_gain_start.py --gains 0.3 --grads hold --seeds 3
"""

from __future__ import annotations

import argparse

import torch

from hmrnn.tasks.charlm.build import build_charlm
from hmrnn.training.config import ModelConfig

VOCAB, STEPS, BATCH = 26, 100, 8


def start(config: ModelConfig, seed: int, slope: float) -> tuple[float, list[float]]:
    """The gradient norm at initialisation and the boundary layers' rates."""
    torch.manual_seed(seed)
    model = build_charlm(config, VOCAB)
    model.rnn.set_slope(slope)
    x = torch.randint(0, VOCAB, (STEPS + 1, BATCH), generator=torch.Generator().manual_seed(seed))
    out = model(x[:-1])
    torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), x[1:].flatten()).backward()
    norm = torch.sqrt(sum(p.grad.double().pow(2).sum() for p in model.parameters()
                          if p.grad is not None))
    rates = [] if out.rnn.boundary is None else (
        out.rnn.boundary[..., :-1].float().mean(dim=(0, 1)).tolist())
    return float(norm), rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gains", nargs="*", type=float, default=[0.0, 0.1, 0.3, 1.0],
                        help="row z's initial gains (0: as every row)")
    parser.add_argument("--grads", nargs="*", default=["chain", "hold", "local"])
    parser.add_argument("--slopes", nargs="*", type=float, default=[1.0, 5.0])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| boundary_ln_gain | boundary_grad | slope | gradient / no-LN's: worst, best "
          "| layer-1 / layer-2 rates at the start, by seed |")
    print("| ---: | --- | ---: | --- | --- |")
    for gain in args.gains:
        for grad in args.grads:
            for slope in args.slopes:
                config = ModelConfig(layer_norm=True, boundary_grad=grad, boundary_ln_gain=gain)
                ratios, rates = [], []
                for seed in range(args.seeds):
                    norm, r = start(config, seed, slope)
                    ratios.append(norm / start(ModelConfig(layer_norm=False, boundary_grad="chain"),
                                               seed, slope)[0])
                    rates.append("/".join(f"{v:.2f}" for v in r))
                print(f"| {gain or '-'} | {grad} | {slope:g} | {max(ratios):.3g}, "
                      f"{min(ratios):.3g} | {', '.join(rates)} |")


if __name__ == "__main__":
    main()
