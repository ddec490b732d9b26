"""Gradient norm at initialisation of the layer-normalised HM-LSTM, by LN initialisation.

docs/model.md decision 7 normalises each of the three terms of ``s`` (recurrent ``U h``,
top-down ``U_td h^above``, bottom-up ``W h^below``) over its whole row and ``c`` before the
output ``tanh``. With every LN gain at 1 (as before
hmrnn.model.cell.LN_GAINS) the loss's gradient norm at initialisation is
1e12-1e17 times that of the same model without LN. This script sets the LN gains (and,
for some rows, the LN epsilon) after construction and prints, per candidate, the ratio

    || grad of the loss, LN model ||  /  || grad of the loss, same seed without LN ||

over seeds x slopes (char LM 3 x 128, embedding 64, output 256, vocabulary 50, T = 100,
batch 8, the default fast loop), in float32 and float64. It also compares the LN-LSTM
baseline (Ba et al., gains 1) with a plain LSTM.

    nice -n 5 python scripts/ln_init_study.py                 # the full table
    nice -n 5 python scripts/ln_init_study.py --seeds 3 --no-double   # a quick look

A candidate is ``(recurrent, top_down, bottom_up, cell)`` gains (LN biases stay 0).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from hmrnn import CharLM, LayerNormLSTM
from hmrnn.tasks.charlm.build import build_charlm
from hmrnn.training.config import ModelConfig

VOCAB = 50
STEPS = 100
BATCH = 8
LN_KEYS = ("recurrent", "top_down", "bottom_up", "cell")


@dataclass(frozen=True)
class Candidate:
    label: str
    recurrent: float
    top_down: float
    bottom_up: float
    cell: float
    eps: float | None = None  # None: nn.LayerNorm's 1e-5
    layers: tuple[tuple[str, float], ...] = ()  # per-module exceptions: ("0.ln_bottom_up", g)

    def apply(self, model: nn.Module) -> None:
        """Set every HM-LSTM layer's LN gains (and eps) to this candidate's."""
        gains = {k: getattr(self, k) for k in LN_KEYS}
        with torch.no_grad():
            for name, p in model.named_parameters():
                for k, g in gains.items():
                    if f".ln_{k}.weight" in name:
                        p.fill_(g)
                for module, g in self.layers:
                    if name == f"rnn.layers.{module}.weight":
                        p.fill_(g)
        if self.eps is not None:
            for m in model.modules():
                if isinstance(m, nn.LayerNorm):
                    m.eps = self.eps


def _c(label: str, rec: float, td: float, bu: float, cell: float,
       eps: float | None = None, **layers: float) -> Candidate:
    """``layers``: exceptions by module, e.g. ``L0_ln_bottom_up=1.0``."""
    return Candidate(label, rec, td, bu, cell, eps,
                     tuple((k[1:].replace("_", ".", 1), v) for k, v in layers.items()))


# the natural scale of each term in the no-LN model at initialisation (std over the row,
# mean over steps, seeds 0-2): layer 0 rec 0.055, td 0.012, bu 0.40,
# c 0.19; layers 1-2 rec 0.013, td 0.013, bu 0.056 / 0.012, c 0.05
MATCHED = dict(L0_ln_recurrent=0.05, L0_ln_bottom_up=0.4, L0_ln_cell=0.2,
               L1_ln_bottom_up=0.05, L1_ln_cell=0.05, L2_ln_cell=0.05)


S3 = 1 / math.sqrt(3)
CANDIDATES = [
    _c("all 1 (before decision 7 changed)", 1, 1, 1, 1),
    _c("all 0.1", 0.1, 0.1, 0.1, 0.1),
    _c("terms 1/sqrt(3), cell 1", S3, S3, S3, 1),
    _c("terms 0.1, cell 1", 0.1, 0.1, 0.1, 1),
    _c("terms 0.05, cell 1", 0.05, 0.05, 0.05, 1),
    _c("terms 0.02, cell 1", 0.02, 0.02, 0.02, 1),
    _c("terms 0.01, cell 1", 0.01, 0.01, 0.01, 1),
    _c("terms 0.01, cell 0.1", 0.01, 0.01, 0.01, 0.1),
    _c("rec 0.1, td 0.1, bu 1, cell 1", 0.1, 0.1, 1, 1),
    _c("rec 0.05, td 0.05, bu 0.5, cell 1", 0.05, 0.05, 0.5, 1),
    _c("rec 0.01, td 0.01, bu 0.1, cell 1", 0.01, 0.01, 0.1, 1),
    _c("rec 0.01, td 0.01, bu 1, cell 1", 0.01, 0.01, 1, 1),
    _c("rec 0.1, td 0.01, bu 0.1, cell 1", 0.1, 0.01, 0.1, 1),
    _c("rec 0.01, td 0.1, bu 0.1, cell 1", 0.01, 0.1, 0.1, 1),
    _c("terms 0.02, cell 0.1", 0.02, 0.02, 0.02, 0.1),
    _c("terms 0.01, cell 0.3", 0.01, 0.01, 0.01, 0.3),
    _c("terms 0.02, cell 0.3", 0.02, 0.02, 0.02, 0.3),
    _c("terms 0.01, cell 0.5", 0.01, 0.01, 0.01, 0.5),
    _c("terms 0.05, cell 0.1", 0.05, 0.05, 0.05, 0.1),
    _c("terms 0.01, L0 bu 0.4, cell 0.1", 0.01, 0.01, 0.01, 0.1, L0_ln_bottom_up=0.4),
    _c("terms 0.01, L0 bu 1, cell 0.1", 0.01, 0.01, 0.01, 0.1, L0_ln_bottom_up=1.0),
    _c("terms 0.01, L0 bu 1, cell 1", 0.01, 0.01, 0.01, 1, L0_ln_bottom_up=1.0),
    _c("matched to no-LN scale", 0.01, 0.01, 0.01, 0.1, **MATCHED),
    _c("all 1, eps 1e-2", 1, 1, 1, 1, 1e-2),
    _c("terms 0.1, cell 1, eps 1e-2", 0.1, 0.1, 0.1, 1, 1e-2),
]


def loss_grad_norm(model: nn.Module, seed: int, dtype: torch.dtype) -> float:
    x = torch.randint(0, VOCAB, (STEPS, BATCH),
                      generator=torch.Generator().manual_seed(10_000 + seed))
    model.zero_grad(set_to_none=True)
    out = model(x)
    loss = nn.functional.cross_entropy(out.logits.flatten(0, 1).to(dtype), x.flatten())
    loss.backward()
    total = sum(p.grad.double().pow(2).sum() for p in model.parameters() if p.grad is not None)
    return float(torch.sqrt(total))


def hm_model(seed: int, layer_norm: bool, dtype: torch.dtype, slope: float,
             change: Callable[[nn.Module], None] | None = None) -> nn.Module:
    torch.manual_seed(seed)
    config = ModelConfig(hidden_size=(128,), layer_norm=layer_norm, boundary_grad="chain")
    model = build_charlm(config, VOCAB)  # the paper's straight-through estimator
    if change is not None:
        change(model)
    model = model.to(dtype)
    model.rnn.set_slope(slope)
    assert model.rnn.fast
    return model


def fmt(v: float) -> str:
    return f"{v:.3g}" if math.isfinite(v) else str(v)


def hm_table(candidates: list[Candidate], seeds: list[int], slopes: list[float],
             dtypes: list[torch.dtype]) -> None:
    base: dict[tuple[int, float, torch.dtype], float] = {}
    for dtype in dtypes:
        for seed in seeds:
            for a in slopes:
                base[seed, a, dtype] = loss_grad_norm(hm_model(seed, False, dtype, a), seed, dtype)
    for dtype in dtypes:
        d = str(dtype).removeprefix("torch.")
        print(f"\nHM-LSTM 3 x 128, T = {STEPS}, batch {BATCH}, fast loop, {d}; seeds "
              f"{seeds[0]}..{seeds[-1]} x slopes {slopes}: ratio = ||grad LN|| / ||grad no LN||")
        nolns = [base[s, a, dtype] for s in seeds for a in slopes]
        print(f"(no-LN grad norm: median {fmt(statistics.median(nolns))}, "
              f"min {fmt(min(nolns))}, max {fmt(max(nolns))})")
        print("| candidate | rec | td | bu | cell | eps | median | worst | smallest | "
              "worst slope 1 | worst slope 5 | n |")
        print("| --- |" + " ---: |" * 11)
        for cand in candidates:
            ratios: dict[float, list[float]] = {a: [] for a in slopes}
            for seed in seeds:
                for a in slopes:
                    g = loss_grad_norm(hm_model(seed, True, dtype, a, cand.apply), seed, dtype)
                    ratios[a].append(g / base[seed, a, dtype])
            every = [r for rs in ratios.values() for r in rs]
            by_slope = [fmt(max(ratios[a])) if a in ratios else "-" for a in (1.0, 5.0)]
            eps = f"{cand.eps:g}" if cand.eps is not None else "1e-05"
            label = cand.label + "".join(f"; {m} {g:g}" for m, g in cand.layers)
            print(f"| {label} | {cand.recurrent:.3g} | {cand.top_down:.3g} | "
                  f"{cand.bottom_up:.3g} | {cand.cell:.3g} | {eps} | "
                  f"{fmt(statistics.median(every))} | {fmt(max(every))} | {fmt(min(every))} | "
                  f"{by_slope[0]} | {by_slope[1]} | {len(every)} |", flush=True)


def lstm_table(seeds: list[int], dtypes: list[torch.dtype]) -> None:
    """LN-LSTM (Ba et al., gains 1) against a plain LSTM, same seed, same data."""
    print(f"\nLSTM baselines 3 x 128, T = {STEPS}, batch {BATCH}: ratio of grad norms")
    print("| dtype | seed | plain LSTM (LSTMStack) | LN-LSTM gains 1 | LayerNormLSTM(layer_norm="
          "False) | LN-LSTM / LSTMStack | LN-LSTM / same-layout no-LN |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for dtype in dtypes:
        d = str(dtype).removeprefix("torch.")
        for seed in seeds:
            norms = []
            for ln, kind in ((False, "stack"), (True, "ln"), (False, "layout")):
                torch.manual_seed(seed)
                if kind == "layout":
                    rnn = LayerNormLSTM(64, 128, 3, layer_norm=False)
                    model: nn.Module = CharLM(VOCAB, rnn, 256)
                else:
                    model = build_charlm(ModelConfig(rnn="lstm", hidden_size=(128,),
                                                     layer_norm=ln), VOCAB)
                    assert isinstance(model.rnn, LayerNormLSTM) == ln
                norms.append(loss_grad_norm(model.to(dtype), seed, dtype))
            print(f"| {d} | {seed} | {fmt(norms[0])} | {fmt(norms[1])} | {fmt(norms[2])} | "
                  f"{fmt(norms[1] / norms[0])} | {fmt(norms[1] / norms[2])} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--slopes", type=float, nargs="+", default=[1.0, 5.0])
    parser.add_argument("--only", type=str, nargs="*", default=None,
                        help="candidate labels (substrings) to run; default all")
    parser.add_argument("--double-only", type=str, nargs="*", default=None,
                        help="candidate labels (substrings) also run in float64; default all")
    parser.add_argument("--no-double", action="store_true")
    parser.add_argument("--no-lstm", action="store_true")
    parser.add_argument("--lstm-seeds", type=int, default=5)
    parser.add_argument("--extra", type=str, nargs="*", default=[],
                        help="more candidates as rec,td,bu,cell[,eps]")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    cands = list(CANDIDATES)
    for spec in args.extra:
        v = [float(s) for s in spec.split(",")]
        cands.append(_c(f"extra {spec}", *v))
    if args.only is not None:
        cands = [c for c in cands if any(o in c.label for o in args.only)]
    seeds = list(range(args.seeds))
    hm_table(cands, seeds, args.slopes, [torch.float32])
    if not args.no_double:
        dc = cands if args.double_only is None else [
            c for c in cands if any(o in c.label for o in args.double_only)]
        hm_table(dc, seeds, args.slopes, [torch.float64])
    if not args.no_lstm:
        lstm_table(list(range(args.lstm_seeds)), [torch.float32, torch.float64])
    print(f"\n({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
