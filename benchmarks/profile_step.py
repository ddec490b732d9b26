"""Where one training step's time goes: matrix products, fused kernels, other operations.

Profiles one step of truncated BPTT (forward, cross-entropy, backward, Adam) of the
character LMs that ``hmrnn bench`` times, with :mod:`torch.profiler`, and prints per model
the step's wall time without the profiler, the number of ATen operations it runs, and
the profiler's self CPU time split three ways: matrix products (``mm``, ``addmm``,
oneDNN's ``linear``; for nn.LSTM its fused oneDNN layer kernels), the other ATen
operations (element-wise, layer norm, copies, reductions), and what is left: Python,
dispatch and the autograd engine.

Usage::

    python benchmarks/profile_step.py                 # 3 x 128, batch 32
    python benchmarks/profile_step.py --hidden 512 --batch 64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch.profiler import profile

from hmrnn.bench import bench_model, training_step

# matrix products; nn.LSTM's oneDNN layer kernels (products and gates fused) count here
MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "mkldnn::_linear_pointwise",
          "aten::mkldnn_rnn_layer")


def _shares(step: Callable[[], None]) -> tuple[dict[str, float], int]:
    """Self CPU seconds of one profiled step, by kind, and its count of ATen calls."""
    with profile() as prof:
        step()
    kinds = {"matmul": 0.0, "other ATen ops": 0.0, "rest": 0.0}
    calls = 0
    for event in prof.key_averages():
        seconds = event.self_cpu_time_total / 1e6
        if event.key.startswith(("aten::", "mkldnn::")):
            calls += event.count
        if event.key.startswith(MATMUL):
            kinds["matmul"] += seconds
        elif event.key.startswith(("aten::", "mkldnn::")):
            kinds["other ATen ops"] += seconds
        else:
            kinds["rest"] += seconds
    return kinds, calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sizes = [args.hidden] * args.layers
    cpu = torch.device("cpu")
    models = {
        "nn.LSTM": bench_model("lstm", 50, 128, sizes, args.hidden, False, cpu),
        "HM-LSTM": bench_model("hmlstm", 50, 128, sizes, args.hidden, False, cpu),
        "LN-HM-LSTM": bench_model("hmlstm", 50, 128, sizes, args.hidden, True, cpu),
    }
    x = torch.randint(50, (args.seq_len, args.batch))
    y = torch.randint(50, (args.seq_len, args.batch))
    lines = [f"| model ({args.layers}x{args.hidden}, batch {args.batch}, T={args.seq_len}) "
             "| step ms | ATen calls | matmul (LSTM kernel) | other ATen ops "
             "| Python, dispatch, autograd |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, model in models.items():
        step = training_step(model, torch.optim.Adam(model.parameters()), x, y)
        step()  # warm-up
        step()
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        kinds, calls = _shares(step)
        total = sum(kinds.values())
        cells = " | ".join(f"{100 * v / total:.0f}%" for v in kinds.values())
        lines.append(f"| {name} | {1e3 * statistics.median(times):.0f} | {calls:,} | {cells} |")
    print("\n".join(lines))
    print(f"\nmachine: {torch.__version__}, {args.threads} threads; shares of the profiler's "
          "self CPU time of one step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
