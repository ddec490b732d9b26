#!/usr/bin/env bash
# PTB on a CPU: LN HM-LSTM (step + slope annealing) against an LN-LSTM of the same size,
# each trained for the same wall-clock budget, side by side (one thread each), then scored
# on the whole validation and test splits. The numbers in docs/results.md come from here.
#
#   scripts/ptb_cpu_budget.sh [DATA_DIR] [MINUTES] [CONFIG[@OVERRIDE,...] ...]
#   (defaults: ../shared/data 30 ptb ptb-lnlstm)
#
# A config may carry overrides after an @, comma-separated, e.g.
# ptb-control@model.boundary_ln_gain=0.3; its run folder is then named after them too
# (runs/cpu-ptb-control-model.boundary_ln_gain-0.3).
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
tag() { local t=${1//[@=,]/-}; echo "cpu-$t"; }
for item in "${configs[@]}"; do
  name=${item%%@*}
  extra=""
  if [[ $item == *@* ]]; then extra=${item#*@}; extra=${extra//,/ }; fi
  run=$(tag "$item")
  # shellcheck disable=SC2086
  hmrnn train --config "$name" $common $extra "run.out_dir=runs/$run" > "runs/$run.log" 2>&1 &
done
wait
for item in "${configs[@]}"; do
  run=$(tag "$item")
  for split in valid test; do
    hmrnn eval "runs/$run/best.pt" --split "$split" --data-dir "$data" --json \
      > "runs/$run.$split.json"
  done
done
for item in "${configs[@]}"; do grep -h "stopped after\|^test:" "runs/$(tag "$item").log"; done
