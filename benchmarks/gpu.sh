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

timeout 300 python3 -m pytest -q -rs -p no:cacheprovider 2>&1 | tee "$out/pytest.log" | tail -25

timeout 240 python3 -m hmrnn.bench --device cuda --repeats 5 2>&1 | tee "$out/bench-cuda.txt"
timeout 180 python3 -m hmrnn.bench --device cuda --suite train --cuda-graph --repeats 5 2>&1 \
    | tee "$out/bench-cuda-graph.txt"
if [[ $# -eq 2 ]]; then
    timeout 120 python3 -m hmrnn.bench --device cuda --suite inference --checkpoint "$1" \
        --text "$2" --repeats 5 2>&1 | tee "$out/bench-cuda-trained.txt"
fi
