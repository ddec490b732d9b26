#!/usr/bin/env bash
# Every GPU check in one command, for a machine with a CUDA GPU and PyTorch installed:
# the whole test suite (its CUDA cases run there), then `hmrnn bench` on the GPU, eager and
# with CUDA graphs. Logs go to
# $OUT (default ./runs/gpu). With a trained checkpoint and a text as arguments, the
# inference rows also run on that model (as docs/benchmarks.md's CPU rows do).
#
#     bash benchmarks/gpu.sh [CHECKPOINT TEXT]
set -uo pipefail
out=${OUT:-runs/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/machine.txt"
python3 -c 'import torch, platform; print("torch", torch.__version__, "cuda", torch.version.cuda,
"Python", platform.python_version())' | tee -a "$out/machine.txt"

timeout 300 python3 -m pytest -rs -p no:cacheprovider 2>&1 | tee "$out/pytest.log" | tail -25

timeout 240 python3 -m hmrnn.bench --device cuda --repeats 5 2>&1 | tee "$out/bench-cuda.txt"
timeout 180 python3 -m hmrnn.bench --device cuda --suite train --cuda-graph --repeats 5 2>&1 \
    | tee "$out/bench-cuda-graph.txt"
timeout 120 python3 benchmarks/profile_step.py --device cuda 2>&1 | tee "$out/profile-cuda.txt"
timeout 120 python3 benchmarks/profile_step.py --device cuda --hidden 512 --batch 64 2>&1 \
    | tee -a "$out/profile-cuda.txt"

# The trainer at the PTB setting (LN HM-LSTM 3 x 512, batch 64, T=100) on the embedded corpus:
# chars/s and loss of 60 steps in each precision (bf16 and fp16 run the cell loop).
for p in fp32 bf16 fp16; do
    run=$(mktemp -d)
    timeout 150 python3 -m hmrnn train --config ptb data.corpus=synthetic train.max_steps=60 \
        train.log_every=20 train.eval_every=100000 run.precision=$p run.progress=false \
        run.tensorboard=false --no-report "run.out_dir=$run" > "$run/log" 2>&1
    echo "$p: $(grep '"train"' "$run/metrics.jsonl" | tail -1 || tail -1 "$run/log")" \
        | tee -a "$out/precision.txt"
    rm -rf "$run"
done

if [[ $# -eq 2 ]]; then
    timeout 120 python3 -m hmrnn.bench --device cuda --suite inference --checkpoint "$1" \
        --text "$2" --repeats 5 2>&1 | tee "$out/bench-cuda-trained.txt"
fi
