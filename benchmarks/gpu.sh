#!/usr/bin/env bash
# Every GPU check in one command, for a machine with a CUDA GPU, PyTorch and triton
# (pip install -e ".[gpu]"), run from the repository root. About 8 minutes on an H200:
#
#   1. the CUDA tests and the Triton step's tests, compiled for the GPU (TRITON_INTERPRET
#      is unset here, so the kernels really compile);
#   2. `hmrnn bench` on the GPU (TF32 on, as `hmrnn train` runs): the training suite at
#      3 x 512 batch 64 and 3 x 1024 batch 128, eager (the Triton step, which "auto" takes
#      for float32 CUDA tensors), then every model's whole step in a CUDA graph; the
#      inference suite (evaluation, generation at batch 1), eager and with the stacks'
#      calls replaying CUDA graphs; then the profile of one eager
#      step at 3 x 512 (kernel count, GPU busy time, the busiest kernels);
#   3. $MINUTES (default 0.6) of `hmrnn train` each (its stacks replay CUDA graphs,
#      run.cuda_graph) for the PTB LN HM-LSTM (--config ptb), the
#      LN-LSTM (--config ptb-lnlstm) and the plain LSTM (--config ptb model.rnn=lstm
#      model.layer_norm=false) on the PTB files in $DATA (default ../shared/data), each
#      followed by its last chars/s;
#
# then a table of every section's exit code, time and result. A failing section does not
# stop the others; the script's exit code is the number of sections that failed.
#
# Logs go to $HMRNN_GPU_OUT (default gpu-out/; $OUT is still honoured). HMRNN_GPU_EXTRA=1
# also runs the older, longer checks (about 15 minutes more): the ATen step's benchmark,
# the whole test suite, the inference benchmark, the small profile, and the trainer in
# fp32/bf16/fp16 on the embedded corpus. With a trained checkpoint and a text as
# arguments, the inference rows also run on that model (as docs/benchmarks.md's CPU rows
# do).
#
#     bash benchmarks/gpu.sh [CHECKPOINT TEXT]
set -uo pipefail
out=${HMRNN_GPU_OUT:-${OUT:-gpu-out}}
data=${DATA:-../shared/data}
mkdir -p "$out"
unset TRITON_INTERPRET
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

names=() codes=() times=() results=()

# section NAME RESULT-COMMAND -- COMMAND...: run COMMAND (its output in $out/NAME.log, its
# tail shown), record its exit code and time, and RESULT-COMMAND's one line (run after it).
section() {
    local name=$1 result=$2
    shift 3
    echo "=== $name: $*"
    local start=$SECONDS
    set +e
    "$@" > "$out/$name.log" 2>&1
    local rc=$?
    tail -n 8 "$out/$name.log"
    names+=("$name") codes+=("$rc") times+=("$((SECONDS - start))")
    results+=("$(eval "$result" 2>/dev/null | tail -n 1)")
}

# the last "train" record's chars/s in a run folder (metrics.jsonl), else in its log
chars_per_s() {
    local metrics
    metrics=$(find "$1" -name metrics.jsonl 2>/dev/null | head -n 1)
    if [[ -n "$metrics" ]]; then
        python3 -c 'import json, sys
rows = [r for r in map(json.loads, open(sys.argv[1])) if r.get("kind") == "train"]
r = rows[-1] if rows else None
print("chars/s {:,.0f} (step {}, loss {:.3f})".format(r["chars/s"], r["step"], r["loss"])
      if r else "no train record")' "$metrics"
    else
        grep -o 'chars/s[=: ]*[0-9.,e+]*' "$2" | tail -n 1
    fi
}

# the bench table's HM-LSTM and LN-LSTM rows, compact: "model mode sizes batch: chars/s; ..."
bench_rows() {
    grep -E '^\| (LN-HM-LSTM|HM-LSTM|LN-LSTM) \|' "$out/$1.log" \
        | awk -F'|' '{printf "%s%s%s%s%s:%s", sep, $2, $3, $4, $5, $6; sep=";"}'
}

# the bench's target lines, on one line
targets_of() {
    grep '^- \[' "$out/$1.log" | tr '\n' ' '
}

{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c 'import torch, platform; print("torch", torch.__version__, "cuda",
torch.version.cuda, "Python", platform.python_version())'
    python3 -c 'import triton; print("triton", triton.__version__)'
} 2>&1 | tee "$out/machine.txt"

# 1. tests: the CUDA cases and the Triton step, compiled
section tests "tail -n 1 $out/tests.log" -- \
    timeout 150 python3 -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py \
    tests/test_triton.py tests/test_graphed.py tests/test_bench.py

# 2. the training benchmark on the GPU at the paper's PTB and text8 sizes: the Triton step
# eager, then every model's step in a CUDA graph; the kernel profile of one eager step
settings=(--train 512:64 --train 1024:128)
section bench-triton "bench_rows bench-triton" -- \
    timeout 100 python3 -m hmrnn bench --device cuda --suite train "${settings[@]}" --repeats 3
section bench-graph "bench_rows bench-graph" -- \
    timeout 100 python3 -m hmrnn bench --device cuda --suite train --cuda-graph \
    "${settings[@]}" --repeats 3
section bench-inference "targets_of bench-inference" -- \
    timeout 90 python3 -m hmrnn bench --device cuda --suite inference --repeats 3
section bench-inference-graph "targets_of bench-inference-graph" -- \
    timeout 90 python3 -m hmrnn bench --device cuda --suite inference --cuda-graph --repeats 3
section profile-512 "tail -n 1 $out/profile-512.log" -- \
    timeout 60 python3 benchmarks/profile_step.py --device cuda --hidden 512 --batch 64 \
    --repeats 3 --top 8

# 3. $MINUTES (default 0.6) of training each, on PTB
minutes=${MINUTES:-0.6}
train() {
    local name=$1
    shift
    rm -rf "$out/run-$name"
    section "train-$name" "chars_per_s $out/run-$name $out/train-$name.log" -- \
        timeout 200 python3 -m hmrnn train "$@" train.max_minutes="$minutes" \
        "data.data_dir=$data" run.progress=false run.tensorboard=false --no-report \
        "run.out_dir=$out/run-$name"
    echo "train-$name: ${results[-1]}"
}
train ptb --config ptb
train ptb-lnlstm --config ptb-lnlstm
train ptb-lstm --config ptb model.rnn=lstm model.layer_norm=false

# the older, longer checks
if [[ ${HMRNN_GPU_EXTRA:-0} == 1 ]]; then
    section pytest-all "tail -n 1 $out/pytest-all.log" -- \
        timeout 300 python3 -m pytest -rs -p no:cacheprovider
    section bench-aten "bench_rows bench-aten" -- \
        env HMRNN_TRITON=0 timeout 200 python3 -m hmrnn bench --device cuda --suite train \
        --repeats 3
    section bench-cuda "bench_rows bench-cuda" -- \
        timeout 240 python3 -m hmrnn bench --device cuda --repeats 5
    section profile "tail -n 1 $out/profile.log" -- \
        timeout 120 python3 benchmarks/profile_step.py --device cuda
    # The trainer at the PTB setting (LN HM-LSTM 3 x 512, batch 64, T=100) on the embedded
    # corpus: chars/s and loss of 60 steps in each precision (bf16 and fp16 run the cell loop).
    for p in fp32 bf16 fp16; do
        rm -rf "$out/run-$p"
        section "precision-$p" "chars_per_s $out/run-$p $out/precision-$p.log" -- \
            timeout 150 python3 -m hmrnn train --config ptb data.corpus=synthetic \
            train.max_steps=60 train.log_every=20 train.eval_every=100000 run.precision=$p \
            run.progress=false run.tensorboard=false --no-report "run.out_dir=$out/run-$p"
    done
fi

if [[ $# -eq 2 ]]; then
    section bench-trained "bench_rows bench-trained" -- \
        timeout 120 python3 -m hmrnn bench --device cuda --suite inference --checkpoint "$1" \
        --text "$2" --repeats 5
fi

failed=0
for c in "${codes[@]}"; do [[ $c == 0 ]] || failed=$((failed + 1)); done
{
    echo
    printf '%-18s %4s %6s  %s\n' section exit secs result
    for i in "${!names[@]}"; do
        printf '%-18s %4s %6s  %s\n' "${names[$i]}" "${codes[$i]}" "${times[$i]}" \
            "${results[$i]}"
    done
    echo "$failed of ${#names[@]} sections failed; logs in $out/"
} | tee "$out/summary.txt"
exit "$failed"
