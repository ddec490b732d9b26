"""One line per training run: steps, characters seen, epochs, training time, throughput;
and, from its logged training records, the largest pre-clip gradient norm, the logged steps
at which layer 1's boundary rate left 0.1-0.4 (the hierarchy issue's PTB band) and each
boundary layer's range of logged rates from step 100 on; and each validation's boundary
rates and word / phrase F1 (within one step), where it logged them.

    python scripts/run_summary.py runs/cpu-ptb runs/cpu-ptb-lnlstm

Read from each run's last.pt (the trainer's own counters; training time counts optimiser
steps only, not evaluations) and its metrics.jsonl (the last validation record).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hmrnn.training.checkpoint import load_checkpoint
from hmrnn.training.config import Config


def summary(run: Path) -> str:
    checkpoint = load_checkpoint(run / "last.pt")
    config = Config.from_dict(checkpoint["config"])
    state = checkpoint["trainer"]
    chars = state["step"] * config.train.batch_size * config.train.seq_len
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in records if r["kind"] == "valid"]
    last = valid[-1] if valid else {}
    train = [r for r in records if r["kind"] == "train"]
    largest = max(train, key=lambda r: r["grad_norm"]) if train else None
    rates = [r for r in train if "z" in r]
    outside = ", ".join(f"{r['step']} ({r['z'][0]:.2f})" for r in rates
                        if not 0.1 <= r["z"][0] <= 0.4) or "none"
    later = [r["z"] for r in rates if r["step"] >= 100]
    ranges = ", ".join(f"layer {layer + 1} {min(z[layer] for z in later):.3f}-"
                       f"{max(z[layer] for z in later):.3f}"
                       for layer in range(len(later[0]) if later else 0))
    curve = "; ".join(
        f"{r['step']}: z {'/'.join(f'{z:.3f}' for z in r['z'])}, F1 {r['f1_word']:.2f}"
        + (f"/{r['f1_phrase']:.2f}" if "f1_phrase" in r else "")
        for r in valid if "z" in r and "f1_word" in r)
    return (
        f"{run}: {state['step']} steps, {chars:,} characters, "
        f"{state['elapsed'] / 60:.1f} min of training steps, "
        f"{chars / state['elapsed']:,.0f} chars/s, best valid {state['best_saved']:.4f} nats "
        f"({state['best_saved'] / 0.6931471805599453:.3f} BPC), last valid BPC "
        f"{last.get('bpc', float('nan')):.3f} at step {last.get('step', '-')}"
        + (f"; largest logged gradient norm {largest['grad_norm']:.3g} (step {largest['step']})"
           if largest else "")
        + (f"; logged steps with layer 1's rate outside 0.1-0.4: {outside}; logged rates "
           f"from step 100 on: {ranges}" if rates else "")
        + (f"; validations (step: rates, word / phrase F1): {curve}" if curve else "")
    )


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(summary(Path(arg)))
