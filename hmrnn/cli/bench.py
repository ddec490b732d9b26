"""``hmrnn bench``: the HM-LSTM's speed against PyTorch's fused LSTM, side by side.

Every model is a character LM (:class:`hmrnn.model.charlm.CharLM`: embedding, recurrent stack,
the paper's gated output module, softmax head) of the same sizes; the reference is the
stack of fused ``nn.LSTM`` layers (:class:`hmrnn.model.baselines.LSTMStack`). After warm-up, the
models take turns, repeat after repeat (so that a machine whose speed drifts slows them
alike), and each row reports the median. Ratios are medians of the per-repeat ratios.

Rows:

- ``train``: one step of truncated BPTT on a segment (forward, cross-entropy, backward,
  Adam), at each ``--train`` setting, for nn.LSTM, HM-LSTM and LN-HM-LSTM;
- ``forward``: the same models' forward pass without gradients (dense);
- ``eval``: batched evaluation of text at ``--eval-batch``: nn.LSTM, the dense HM-LSTM
  and :func:`hmrnn.model.sparse.sparse_forward` (only rows not in COPY are computed);
- ``generate``: sampling one character at a time at batch 1: nn.LSTM stepped (with
  PyTorch's oneDNN LSTM kernel off, as it repacks the weights at every call and is 20x
  slower for one step), the dense HM-LSTM stepped, and
  :class:`hmrnn.model.sparse.StreamingHMLSTM`.

The COPY column gives, per layer bottom first, the share of (step, row) pairs in COPY in
that run. With ``--checkpoint`` the inference rows use a trained model (its sizes, its
vocabulary, ``--text`` as input); otherwise random ones, whose COPY shares say little.

Usage::

    python -m hmrnn.cli.bench                        # the full table, a few minutes on 2 cores
    python -m hmrnn.cli.bench --checkpoint runs/ptb/best.pt --text ../shared/data/ptb/ptb.valid.txt
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor
from torch.nn import functional as F

from hmrnn.cli._common import Parser
from hmrnn.cli.bench_table import Row, format_table, rows_of, targets
from hmrnn.model.cell import HMLSTMCell
from hmrnn.model.charlm import CharLM
from hmrnn.model.graphed import graph_stacks
from hmrnn.model.hmlstm import HMLSTM
from hmrnn.model.registry import build_rnn
from hmrnn.model.sparse import StreamingHMLSTM, copy_share, sparse_forward
from hmrnn.model.types import RecurrentStack
from hmrnn.progress import progress_bar
from hmrnn.training.gpu import tf32


def interleaved(
    tasks: dict[str, Callable[[], Any]], repeats: int, warmup: int, device: torch.device,
    bar: Any,
) -> dict[str, list[float]]:
    """Seconds per call of each task: ``warmup`` untimed rounds, then ``repeats`` rounds in
    which every task runs once, in turn; ``bar`` (a progress bar) counts the rounds."""
    def timed(fn: Callable[[], Any]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    for _ in range(warmup):
        for fn in tasks.values():
            fn()
        bar.update(1)
    times: dict[str, list[float]] = {name: [] for name in tasks}
    for _ in range(repeats):
        for name, fn in tasks.items():
            times[name].append(timed(fn))
        bar.update(1)
    return times


def with_peak(make: Callable[[], Callable[[], None]], device: torch.device
              ) -> tuple[Callable[[], None], float | None]:
    """``make()``'s task, made and called once; on CUDA also the GPU memory the two took at
    their peak beyond what was allocated before (MiB; a CUDA graph's capture included),
    None elsewhere."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    fn = make()
    fn()
    if not cuda:
        return fn, None
    torch.cuda.synchronize(device)
    return fn, (torch.cuda.max_memory_allocated(device) - before) / 2**20


def bench_model(kind: str, vocab: int, embedding: int, sizes: Sequence[int], output: int,
                layer_norm: bool, device: torch.device) -> CharLM:
    """A character LM of the benchmark: ``kind`` (:func:`hmrnn.model.registry.build_rnn`) of
    ``sizes`` between an embedding and the gated output module."""
    rnn = build_rnn(kind, embedding, list(sizes), len(sizes), layer_norm=layer_norm)
    return CharLM(vocab, rnn, output).to(device)


def _hmlstm(model: CharLM) -> HMLSTM:
    """The HM-LSTM stack of a benchmark model built with kind ``"hmlstm"``."""
    if not isinstance(model.rnn, HMLSTM):
        raise TypeError(f"expected an HM-LSTM model, got {type(model.rnn).__name__}")
    return model.rnn


def training_step(model: CharLM, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor
                  ) -> Callable[[], None]:
    """One step of truncated BPTT on the segment ``x (T, N)`` with targets ``y (T, N)``:
    forward, cross-entropy, backward, ``optimizer`` step."""
    def step() -> None:
        out = model(x)
        loss = F.cross_entropy(out.logits.flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def cuda_graphed(fn: Callable[[], None], device: torch.device) -> Callable[[], None]:
    """``fn`` captured once into a CUDA graph; the result replays it: the same kernels on the
    same buffers, without Python and the dispatcher launching each one.

    ``fn`` runs three times first on a side stream (so that lazily made state, such as
    Adam's, exists before capture), then once under capture. It must not read a GPU value
    on the host, and an optimizer it steps needs ``capturable=True``.
    """
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def _sizes_label(sizes: Sequence[int]) -> str:
    return f"{len(sizes)}x{sizes[0]}" if len(set(sizes)) == 1 else "x".join(map(str, sizes))


def bench_train(
    hidden: int, batch: int, args: argparse.Namespace, device: torch.device, bar: Any
) -> list[Row]:
    """Training steps and dense forward passes of nn.LSTM, HM-LSTM, LN-HM-LSTM and the
    LN-LSTM baseline (:func:`interleaved` twice, its rounds counted by ``bar``); on CUDA
    each training step's peak memory, measured on its first call (:func:`with_peak`)."""
    sizes = [hidden] * args.layers
    models = {
        "nn.LSTM": bench_model("lstm", args.vocab, args.embedding, sizes, hidden, False, device),
        "HM-LSTM": bench_model("hmlstm", args.vocab, args.embedding, sizes, hidden, False, device),
        "LN-HM-LSTM": bench_model("hmlstm", args.vocab, args.embedding, sizes, hidden, True,
                              device),
        "LN-LSTM": bench_model("lstm", args.vocab, args.embedding, sizes, hidden, True, device),
    }
    if args.cell_loop:  # the readable reference loop, one cell call per layer and step
        models["HM-LSTM cell loop"] = bench_model("hmlstm", args.vocab, args.embedding, sizes,
                                              hidden, False, device)
        _hmlstm(models["HM-LSTM cell loop"]).fast = False
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(args.vocab, (args.seq_len, batch), generator=gen).to(device)
    y = torch.randint(args.vocab, (args.seq_len, batch), generator=gen).to(device)
    graphs = args.cuda_graph
    optimizers = {name: torch.optim.Adam(m.parameters(), capturable=graphs)
                  for name, m in models.items()}

    def train(name: str) -> Callable[[], None]:
        step = training_step(models[name], optimizers[name], x, y)
        return cuda_graphed(step, device) if graphs else step

    def forward(name: str) -> Callable[[], None]:
        model = models[name]

        @torch.no_grad()
        def run() -> None:
            model(x)
        return cuda_graphed(run, device) if graphs else run

    label, chars = _sizes_label(sizes), args.seq_len * batch
    group = f"train {label} b{batch}"
    bar.set_postfix_str(group)
    with torch.no_grad():
        copy = {name: copy_share(m(x).rnn.boundary).tolist()
                for name, m in models.items() if isinstance(m.rnn, HMLSTM)}
    steps, peaks = {}, {}
    for name in models:
        steps[name], peak = with_peak(functools.partial(train, name), device)
        if peak is not None:
            peaks[name] = peak
    rows = rows_of(interleaved(steps, args.repeats, args.warmup, device, bar), chars, "train",
                 label, batch, copy, group, peaks)
    rows += rows_of(interleaved({n: forward(n) for n in models}, args.repeats, args.warmup,
                              device, bar), chars, "forward", label, batch, copy, group)
    return rows


def _inference_models(
    args: argparse.Namespace, device: torch.device
) -> tuple[CharLM, CharLM, Tensor, str]:
    """The HM-LSTM to run (trained, from ``--checkpoint``, or random), an nn.LSTM model of
    the same sizes, the input ids ``(S,)`` and a description of where they come from."""
    if args.checkpoint:
        from hmrnn.tasks.charlm.task import load_charlm

        model, vocab, config, _ = load_charlm(args.checkpoint, device)
        if not isinstance(model.rnn, HMLSTM):
            raise ValueError(f"{args.checkpoint} holds no HM-LSTM ({config.model.rnn})")
        text = Path(args.text).read_text(encoding="utf-8") if args.text else ""
        if " " not in vocab and "_" in vocab:  # PTB's character files write spaces as _
            text = text.replace(" ", "_")
        known = "".join(ch for ch in text if ch in vocab)
        if len(known) < 2:
            raise ValueError("give --text with a file of the model's characters to evaluate on")
        ids = torch.as_tensor(vocab.encode(known), device=device)
        source = f"trained {args.checkpoint} on {len(known):,} chars of {args.text}"
    else:
        sizes = [args.eval_hidden] * args.layers
        torch.manual_seed(1)
        model = bench_model("hmlstm", args.vocab, args.embedding, sizes, args.eval_hidden,
                        args.layer_norm, device)
        with torch.no_grad():  # a what-if: fewer boundaries, more COPY, as training may give
            for cell in cast("list[HMLSTMCell]", list(_hmlstm(model).layers))[:-1]:
                cell.bias[-1] += args.boundary_bias
        ids = torch.randint(args.vocab, (args.eval_chars,),
                            generator=torch.Generator().manual_seed(1)).to(device)
        source = ("random weights, random ids (COPY shares of an untrained model say little)"
                  + (f", boundary detectors' bias shifted by {args.boundary_bias:g}"
                     if args.boundary_bias else ""))
    model.eval()
    rnn = cast(RecurrentStack, model.rnn)
    reference = bench_model("lstm", model.vocab_size, rnn.input_size, list(rnn.hidden_sizes),
                        model.output.output_size, False, device).eval()
    return model, reference, ids, source


def bench_inference(
    args: argparse.Namespace, device: torch.device, bar: Any
) -> tuple[list[Row], str]:
    """Batched evaluation and batch-1 generation, dense against COPY-skipping
    (:func:`interleaved` twice, its rounds counted by ``bar``); with ``--cuda-graph`` the
    dense models' stacks replay CUDA graphs of their calls (:mod:`hmrnn.model.graphed`;
    the sparse and streaming paths do not call them)."""
    model, reference, ids, source = _inference_models(args, device)
    graphs = graph_stacks(model) + graph_stacks(reference) if args.cuda_graph else []
    try:
        return _inference_rows(model, reference, ids, args, device, bar), source
    finally:
        for g in graphs:
            g.remove()


def _inference_rows(model: CharLM, reference: CharLM, ids: Tensor, args: argparse.Namespace,
                    device: torch.device, bar: Any) -> list[Row]:
    """:func:`bench_inference`'s rows."""
    rnn: HMLSTM = model.rnn  # type: ignore[assignment]
    label = ("LN " if rnn.layer_norm else "") + _sizes_label(rnn.hidden_sizes)
    batch, steps = args.eval_batch, args.seq_len
    usable = (ids.numel() // batch) * batch
    if usable < batch * 2:
        raise ValueError(f"the text is too short for --eval-batch {batch}")
    streams = ids[:usable].view(batch, -1).t()  # (S, N): N contiguous streams of the text
    windows = streams.split(steps)

    def evaluate(run: Callable[[Tensor, Any], tuple[Any, Any]]) -> Callable[[], None]:
        @torch.no_grad()
        def go() -> None:
            state = None
            for x in windows:
                state = run(x, state)[1]
        return go

    def dense(m: CharLM) -> Callable[[Tensor, Any], tuple[Any, Any]]:
        def run(x: Tensor, state: Any) -> tuple[Any, Any]:
            out = m(x, state)
            return out.logits, out.state
        return run

    def sparse(x: Tensor, state: Any) -> tuple[Any, Any]:
        out, state = sparse_forward(rnn, model.embedding(x), state)
        return model.head(model.output(out.hidden)), state

    with torch.no_grad():
        zs, state = [], None
        for x in windows:
            out = model(x, state)
            zs.append(out.rnn.boundary)
            state = out.state
        eval_copy = copy_share(torch.cat(zs)).tolist()
    chars = sum(x.numel() for x in windows)
    group = f"eval {label} b{batch}"
    bar.set_postfix_str(group)
    times = interleaved({"nn.LSTM": evaluate(dense(reference)), "HM-LSTM": evaluate(dense(model)),
                         "HM-LSTM sparse": evaluate(sparse)}, args.repeats, args.warmup, device,
                        bar)
    rows = rows_of(times, chars, "eval", label, batch,
                 {"HM-LSTM": eval_copy, "HM-LSTM sparse": eval_copy}, group)

    n = args.gen_chars
    start = int(ids[0])
    computed: list[list[int]] = []

    def generate(step: Callable[[Tensor], Tensor]) -> Callable[[], None]:
        @torch.no_grad()
        def go() -> None:
            gen = torch.Generator(device=device).manual_seed(0)
            x = torch.tensor([start], device=device)
            for _ in range(n):
                logits = step(x)  # (1, V)
                x = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)[0]
        return go

    def stepped(m: CharLM, onednn: bool = True) -> Callable[[], None]:
        state: list[Any] = [None]

        def step(x: Tensor) -> Tensor:
            out = m(x[None], state[0])  # (1, 1): one character
            state[0] = out.state
            return out.logits[0]
        run = generate(step)

        def go() -> None:
            state[0] = None
            mkldnn: Any = torch.backends.mkldnn  # its flags are descriptors, set on the module
            before = mkldnn.enabled
            mkldnn.enabled = onednn
            try:
                run()
            finally:
                mkldnn.enabled = before
        return go

    def streaming() -> None:
        stream = StreamingHMLSTM(rnn)

        def step(x: Tensor) -> Tensor:
            hidden, _ = stream.step(model.embedding(x))
            return model.head(model.output(hidden))
        generate(step)()
        computed.append(list(stream.computed))

    # nn.LSTM's oneDNN kernel repacks its weights at every call (8 ms a step at 3 x 512 on
    # 2 cores, against 0.35 ms without it): stepped, the reference runs without it.
    bar.set_postfix_str(f"generate {label} b1")
    times = interleaved({"nn.LSTM": stepped(reference, onednn=False), "HM-LSTM": stepped(model),
                         "HM-LSTM streaming": streaming}, args.repeats, args.warmup, device,
                        bar)
    gen_copy = [1.0 - c / n for c in computed[-1]]
    rows += rows_of(times, n, "generate", label, 1, {"HM-LSTM streaming": gen_copy},
                  f"generate {label} b1")
    return rows


def _setting(text: str) -> tuple[int, int]:
    try:
        hidden, batch = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected HIDDEN:BATCH (e.g. 512:64), got {text!r}"
        ) from None
    return hidden, batch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``hmrnn bench``."""
    parser.add_argument("--suite", choices=["all", "train", "inference"], default="all",
                        help="which rows to measure")
    parser.add_argument("--train", type=_setting, action="append", metavar="HIDDEN:BATCH",
                        help="a training setting (repeatable; default: 128:32 and 512:64)")
    parser.add_argument("--layers", type=int, default=3, help="layers")
    parser.add_argument("--embedding", type=int, default=128, help="embedding size")
    parser.add_argument("--vocab", type=int, default=50, help="vocabulary of random models")
    parser.add_argument("--seq-len", type=int, default=100, help="segment length T")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed rounds (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda")
    parser.add_argument("--checkpoint", help="a trained HM-LSTM charlm for the inference rows")
    parser.add_argument("--text", help="UTF-8 text the inference rows read (with --checkpoint)")
    parser.add_argument("--eval-batch", type=int, default=64, help="batched evaluation's N")
    parser.add_argument("--eval-hidden", type=int, default=512,
                        help="hidden size of the random inference model (no --checkpoint)")
    parser.add_argument("--eval-chars", type=int, default=32_000,
                        help="characters evaluated by the random inference model")
    parser.add_argument("--layer-norm", action="store_true",
                        help="the random inference model has layer norm")
    parser.add_argument("--boundary-bias", type=float, default=0.0,
                        help="add this to the random inference model's boundary biases "
                             "(negative: fewer boundaries, more COPY; e.g. -0.2)")
    parser.add_argument("--gen-chars", type=int, default=300, help="characters generated")
    parser.add_argument("--cell-loop", action="store_true",
                        help="also train the cell-by-cell reference loop (HMLSTM fast=False)")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="CUDA only: capture each model's training step and forward pass "
                             "in a CUDA graph and time its replays (every model alike); the "
                             "dense inference rows replay graphs of the stacks' calls")
    parser.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True,
                        help="CUDA only: float32 matrix products and cuDNN may use TF32 "
                             "tensor cores, as `hmrnn train` lets them (run.tf32) and as "
                             "PyTorch's cuDNN LSTM already does")


def run(args: argparse.Namespace) -> int:
    """Measure and print the table, the targets, and where it ran."""
    if args.text and not args.checkpoint:
        raise ValueError("--text is read by a trained model: give --checkpoint too")
    if args.checkpoint and args.boundary_bias:
        raise ValueError("--boundary-bias changes the random model only, not a checkpoint")
    for flag in ("repeats", "threads", "seq_len", "eval_batch", "gen_chars", "layers"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 1")
    args.train = args.train or [(128, 32), (512, 64)]
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available on this machine; "
                         "use --device cpu (or auto)")
    if args.cuda_graph and device.type != "cuda":
        raise ValueError(f"--cuda-graph needs a CUDA device; this run is on {device}")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    matmul = tf32(args.tf32) if device.type == "cuda" else nullcontext()  # as run.tf32
    # two interleaved measurements per training setting and two of inference
    measurements = (2 * len(args.train) if args.suite in ("all", "train") else 0) + (
        2 if args.suite in ("all", "inference") else 0)
    bar = progress_bar(total=measurements * (args.warmup + args.repeats), desc="bench",
                       unit="round", leave=False)
    try:
        with matmul:
            torch.manual_seed(0)
            rows: list[Row] = []
            source = ""
            if args.suite in ("all", "train"):
                for hidden, batch in args.train:
                    rows += bench_train(hidden, batch, args, device, bar)
            if args.suite in ("all", "inference"):
                inference, source = bench_inference(args, device, bar)
                rows += inference
            machine = describe_machine(device)
    finally:
        bar.close()
        torch.set_num_threads(threads)
    print(format_table(rows))
    if source:
        print(f"\ninference model: {source}")
    print("\ntargets:")
    print("\n".join(targets(rows, args, device.type == "cuda")))
    graphs = (", train and forward rows and dense inference rows replay CUDA graphs"
              if args.cuda_graph else "")
    if device.type == "cuda":
        graphs += ", TF32 " + ("on" if args.tf32 else "off")
    print(f"\nmachine: {machine}; T={args.seq_len}, median of "
          f"{args.repeats} interleaved repeats after {args.warmup} warm-up{graphs}")
    return 0


def describe_machine(device: torch.device) -> str:
    """One line: CPU or GPU, threads, torch version."""
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        cpu = _cpu_name() or platform.machine()
        where = f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return f"{where}, torch {torch.__version__}, Python {platform.python_version()}{load}"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hmrnn.cli.bench [flags]``; a bad flag or file ends in one line and exit 2."""
    parser = Parser(prog="hmrnn bench", description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, OSError) as e:
        parser.error(str(e))


if __name__ == "__main__":
    sys.exit(main())
