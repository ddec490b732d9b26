"""What a training run sets on a CUDA device, and undoes after (:func:`gpu_training`):
TF32 matrix products (``run.tf32``) and CUDA graphs of the recurrent stacks' calls, in
training and in the run's evaluations (``run.cuda_graph``, :mod:`hmrnn.model.graphed`).
Elsewhere it sets nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from hmrnn.training.config import RunConfig
from hmrnn.training.distributed import DistContext
from hmrnn.training.task import GraphedCalls


@dataclass
class GpuTraining:
    """What :func:`gpu_training` set: the graphed stacks, or why there are none."""

    graphs: Sequence[GraphedCalls] = field(default_factory=list)
    off: str | None = None  # why run.cuda_graph does not apply (None: it does, or no CUDA)

    def report(self) -> str | None:
        """One line on the graphs after a training step (None off CUDA)."""
        if self.off is not None:
            return f"CUDA graphs off: {self.off}"
        if not self.graphs:
            return None
        parts = []
        for g in self.graphs:
            name = type(g.stack).__name__
            if g.failure is not None:
                parts.append(f"{name} runs eagerly, its capture failed ({g.failure})")
            elif g.replays:
                parts.append(f"{name} replays CUDA graphs ({g.captured} captured)")
            else:
                parts.append(f"{name} runs eagerly (its calls cannot be replayed)")
        return "; ".join(parts)


@contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """While the block runs, float32 matrix products and cuDNN may use TF32 tensor cores
    (``enabled``) or may not; the flags are put back after."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


@contextmanager
def gpu_training(graph_stacks: Callable[[], Sequence[GraphedCalls]], run: RunConfig,
                 context: DistContext) -> Iterator[GpuTraining]:
    """On CUDA, while the block runs: TF32 in float32 matrix products and cuDNN as
    ``run.tf32`` says, and with ``run.cuda_graph`` the stacks ``graph_stacks()`` (the
    task's) makes replay CUDA graphs (one process and fp32 only: DDP's gradient hooks and
    autocast are not captured). Everything is undone after."""
    if context.device.type != "cuda":
        yield GpuTraining()
        return
    state = GpuTraining()
    if not run.cuda_graph:
        state.off = "run.cuda_graph=false"
    elif context.world_size > 1:
        state.off = "not with several processes (DDP)"
    elif run.precision != "fp32":
        state.off = f"not with run.precision={run.precision}"
    else:
        state.graphs = graph_stacks()
    # A capture warms up on a side stream (torch's recipe), which makes torch warn once
    # that the parameters' gradient accumulators ran on another stream before: expected.
    quiet = getattr(torch.autograd.graph, "set_warn_on_accumulate_grad_stream_mismatch", None)
    if quiet is not None and state.graphs:
        quiet(False)
    try:
        with tf32(run.tf32):
            yield state
    finally:
        for g in state.graphs:
            g.remove()
        if quiet is not None and state.graphs:
            quiet(True)
