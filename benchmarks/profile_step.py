"""Where one training step's time goes: matrix products, fused kernels, other operations.

Profiles one step of truncated BPTT (forward, cross-entropy, backward, Adam) of the
character LMs that ``hmrnn bench`` times, with :mod:`torch.profiler`, and prints per model
the step's wall time without the profiler, the number of ATen operations it runs, and
the profiler's self CPU time split three ways: matrix products (``mm``, ``addmm``,
oneDNN's ``linear``; for nn.LSTM its fused oneDNN layer kernels), the other ATen
operations (element-wise, layer norm, copies, reductions), and what is left: the C step
of :mod:`hmrnn.model.loop.backends.cpu` (float32 on the CPU), Python, dispatch and the autograd
engine. On CUDA (``--device cuda``) it also counts the GPU
kernels a step launches and the time the GPU spends running them: a step whose wall time
is far above its GPU time is bound by launching kernels, not by the GPU.

Usage::

    python benchmarks/profile_step.py                 # 3 x 128, batch 32
    python benchmarks/profile_step.py --hidden 512 --batch 64
    python benchmarks/profile_step.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from hmrnn.cli.bench import bench_model, training_step

# matrix products; nn.LSTM's oneDNN layer kernels (products and gates fused) count here
MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "mkldnn::_linear_pointwise",
          "aten::mkldnn_rnn_layer")


def _shares(step: Callable[[], None], cuda: bool, top: int = 0
            ) -> tuple[dict[str, float], int, int, float]:
    """Self CPU seconds of one profiled step, by kind; its count of ATen calls; and on CUDA
    its count of GPU kernels and their total seconds. With ``top``, also print the ``top``
    GPU kernels by their total time in the step."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        step()
        if cuda:
            torch.cuda.synchronize()
    if cuda and top:
        print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=top))
    kinds = {"matmul": 0.0, "other ATen ops": 0.0, "rest": 0.0}
    calls = kernels = 0
    gpu_seconds = 0.0
    for event in prof.key_averages():
        if event.device_type == DeviceType.CUDA:
            kernels += event.count
            gpu_seconds += event.self_device_time_total / 1e6
            continue
        seconds = event.self_cpu_time_total / 1e6
        if event.key.startswith(("aten::", "mkldnn::")):
            calls += event.count
        if event.key.startswith(MATMUL):
            kinds["matmul"] += seconds
        elif event.key.startswith(("aten::", "mkldnn::")):
            kinds["other ATen ops"] += seconds
        else:
            kinds["rest"] += seconds
    return kinds, calls, kernels, gpu_seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True,
                        help="CUDA: TF32 in float32 matrix products, as `hmrnn train` runs")
    parser.add_argument("--top", type=int, default=0,
                        help="CUDA: also print the N operations with the most GPU time")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sizes = [args.hidden] * args.layers
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
    models = {
        "nn.LSTM": bench_model("lstm", 50, 128, sizes, args.hidden, False, device),
        "HM-LSTM": bench_model("hmlstm", 50, 128, sizes, args.hidden, False, device),
        "LN-HM-LSTM": bench_model("hmlstm", 50, 128, sizes, args.hidden, True, device),
    }
    x = torch.randint(50, (args.seq_len, args.batch)).to(device)
    y = torch.randint(50, (args.seq_len, args.batch)).to(device)
    lines = [f"| model ({args.layers}x{args.hidden}, batch {args.batch}, T={args.seq_len}) "
             "| step ms | ATen calls | matmul (LSTM kernel) | other ATen ops "
             "| C step, Python, dispatch, autograd |"
             + (" GPU kernels | GPU busy ms |" if cuda else ""),
             "| --- | ---: | ---: | ---: | ---: | ---: |" + (" ---: | ---: |" if cuda else "")]
    for name, model in models.items():
        step = training_step(model, torch.optim.Adam(model.parameters()), x, y)
        step()  # warm-up
        step()
        times = []
        for _ in range(args.repeats):
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            step()
            if cuda:
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
        kinds, calls, kernels, gpu_seconds = _shares(step, cuda, args.top)
        total = sum(kinds.values())
        cells = " | ".join(f"{100 * v / total:.0f}%" for v in kinds.values())
        gpu = f" {kernels:,} | {1e3 * gpu_seconds:.1f} |" if cuda else ""
        lines.append(f"| {name} | {1e3 * statistics.median(times):.0f} | {calls:,} | {cells} |"
                     + gpu)
    print("\n".join(lines))
    where = torch.cuda.get_device_name(device) if cuda else f"{args.threads} threads"
    print(f"\nmachine: torch {torch.__version__}, {where}; shares of the profiler's "
          "self CPU time of one step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
