"""One line per training run: steps, characters seen, epochs, training time, throughput.

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
    valid = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in valid if r["kind"] == "valid"]
    last = valid[-1] if valid else {}
    return (
        f"{run}: {state['step']} steps, {chars:,} characters, "
        f"{state['elapsed'] / 60:.1f} min of training steps, "
        f"{chars / state['elapsed']:,.0f} chars/s, best valid {state['best_saved']:.4f} nats "
        f"({state['best_saved'] / 0.6931471805599453:.3f} BPC), last valid BPC "
        f"{last.get('bpc', float('nan')):.3f} at step {last.get('step', '-')}"
    )


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(summary(Path(arg)))
