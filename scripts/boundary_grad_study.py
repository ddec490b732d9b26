"""Where the straight-through gradient explodes: a trained character model's gradient
norm on random training windows under each ``model.boundary_grad`` (docs/model.md
decision 9; docs/hierarchy.md, "The exploding hop").

The forward pass is the same under every setting; only the path of the boundaries'
straight-through gradient differs, so a norm far above the others' on the same window
is that path's. Windows start from the zero state; the loss is the mean cross-entropy.

    hmrnn train --no-report run.out_dir=runs/seq100-110 run.threads=1 train.seq_len=100 \\
        train.max_steps=110 train.max_minutes=0 train.eval_every=110
    python scripts/boundary_grad_study.py runs/seq100-110/last.pt
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from hmrnn.model.functional import BOUNDARY_GRADS
from hmrnn.model.hmlstm import HMLSTM
from hmrnn.tasks.charlm.build import corpus_from_config
from hmrnn.tasks.charlm.task import load_charlm


def gradient_norms(checkpoint: Path, windows: int, seq_len: int, batch: int, seed: int,
                   dtype: torch.dtype, slope: float | None = None) -> dict[str, list[float]]:
    """Per ``boundary_grad``, the gradient norm over every parameter on each window, at
    the checkpoint's slope or at ``slope``."""
    model, _, config, _ = load_charlm(checkpoint)
    model = model.to(dtype)
    rnn = model.rnn
    if not isinstance(rnn, HMLSTM):
        raise SystemExit(f"{checkpoint} holds a {type(rnn).__name__}, not an HM-LSTM")
    if slope is not None:
        rnn.set_slope(slope)
    train = torch.as_tensor(corpus_from_config(config.data).splits["train"]).long()
    starts = np.random.default_rng(seed).integers(0, len(train) - seq_len - 1, (windows, batch))
    norms: dict[str, list[float]] = {}
    for mode in BOUNDARY_GRADS:
        rnn.boundary_grad = mode
        norms[mode] = []
        for row in starts:
            x = torch.stack([train[s : s + seq_len] for s in row], 1)  # (T, N)
            y = torch.stack([train[s + 1 : s + seq_len + 1] for s in row], 1)
            model.zero_grad()
            logits = model(x).logits
            F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).backward()
            total = sum(float(p.grad.double().square().sum()) for p in model.parameters()
                        if p.grad is not None)
            norms[mode].append(total**0.5)
    return norms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--windows", type=int, default=30)
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--double", action="store_true", help="float64 instead of float32")
    parser.add_argument("--slope", type=float, help="the hard sigmoid's slope (default: the "
                        "checkpoint's)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    norms = gradient_norms(args.checkpoint, args.windows, args.seq_len, args.batch, args.seed,
                           torch.float64 if args.double else torch.float32, args.slope)
    print(f"gradient norm over {args.windows} windows of {args.seq_len} x {args.batch} "
          f"({'float64' if args.double else 'float32'}"
          f"{'' if args.slope is None else f', slope {args.slope:g}'}), {args.checkpoint}")
    print("| boundary_grad | median | worst | windows above 1e3 |")
    print("| --- | ---: | ---: | ---: |")
    for mode, values in norms.items():
        print(f"| {mode} | {statistics.median(values):.3g} | {max(values):.3g} | "
              f"{sum(v > 1e3 for v in values)} |")


if __name__ == "__main__":
    main()
