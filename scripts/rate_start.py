"""The boundary rates of a run's first steps: what the rate controller does at the start.

Trains ``--steps`` steps of ``hmrnn train`` (one thread, a record every ``--every``
steps, no evaluation) once per seed, with the given config and overrides, and prints
one line per run: each logged step's layer-1 / layer-2 rates, then the logged steps at
which layer 1 left the hierarchy issue's PTB band (0.1-0.4).

    python scripts/rate_start.py --config ptb-control --data-dir ../shared/data \\
        --seeds 0 1 -- train.rate_calibrate=true train.rate_gain=0.001
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

BAND = (0.1, 0.4)
PTB_SIZE = ["model.hidden_size=256", "model.output_size=256", "train.batch_size=32"]


def run(config: str, data_dir: str, seed: int, steps: int, every: int,
        overrides: list[str], out: Path) -> list[dict]:
    """The run's training records (those with rates)."""
    run_dir = out / f"s{seed}"
    command = [sys.executable, "-m", "hmrnn", "train", "--no-report", "--config", config,
               f"data.data_dir={data_dir}", *(PTB_SIZE if config.startswith("ptb") else []),
               f"train.max_steps={steps}", "train.max_minutes=0",
               f"train.eval_every={steps + 1}", f"train.log_every={every}",
               f"train.seed={seed}", "run.threads=1", "run.progress=false",
               "run.tensorboard=false", f"run.out_dir={run_dir}", *overrides]
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, check=True)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "train" and "z" in r]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="ptb-control")
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("overrides", nargs="*", help="section.field=value, after --")
    args = parser.parse_args()
    print(f"{args.config} {' '.join(args.overrides) or '(no overrides)'}")
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            records = run(args.config, args.data_dir, seed, args.steps, args.every,
                          args.overrides, Path(tmp))
            rates = " ".join(f"{r['step']}:" + "/".join(f"{z:.2f}" for z in r["z"])
                             for r in records)
            outside = [r["step"] for r in records if not BAND[0] <= r["z"][0] <= BAND[1]]
            print(f"  seed {seed}: {rates}")
            print(f"  seed {seed}: layer 1 outside {BAND[0]}-{BAND[1]} at steps "
                  f"{outside or 'none'}")


if __name__ == "__main__":
    main()
