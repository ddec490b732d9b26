#!/usr/bin/env bash
# PTB on a CPU: LN HM-LSTM (step + slope annealing) against an LN-LSTM of the same size,
# each trained for the same wall-clock budget, side by side (one thread each), then scored
# on the whole validation and test splits. The numbers in docs/results.md come from here.
#
#   scripts/ptb_cpu_budget.sh [DATA_DIR] [MINUTES] [CONFIG ...]
#   (defaults: ../shared/data 30 ptb ptb-lnlstm)
set -euo pipefail
data=${1:-../shared/data}
minutes=${2:-30}
shift $(( $# < 2 ? $# : 2 ))
configs=("$@")
[[ ${#configs[@]} -gt 0 ]] || configs=(ptb ptb-lnlstm)
size="model.hidden_size=256 model.output_size=256 train.batch_size=32"
common="data.data_dir=$data $size train.max_minutes=$minutes train.eval_every=300
        run.progress=false run.threads=1 run.tensorboard=false"
mkdir -p runs
for name in "${configs[@]}"; do
  # shellcheck disable=SC2086
  hmrnn train --config "$name" $common "run.out_dir=runs/cpu-$name" > "runs/cpu-$name.log" 2>&1 &
done
wait
for name in "${configs[@]}"; do
  for split in valid test; do
    hmrnn eval "runs/cpu-$name/best.pt" --split "$split" --data-dir "$data" --json \
      > "runs/cpu-$name.$split.json"
  done
done
for name in "${configs[@]}"; do grep -h "stopped after\|^test:" "runs/cpu-$name.log"; done
