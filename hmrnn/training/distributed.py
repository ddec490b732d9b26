"""Data-parallel training on PyTorch's own engine (torchrun + DistributedDataParallel).

``torchrun --nproc_per_node=N -m hmrnn train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`setup` then joins the process group (NCCL on CUDA, gloo on CPU, or
the backend asked for) and every part of the training loop asks the returned
:class:`DistContext` who it is. A single process gets a context with world size 1 and
no process group, and every collective below is then a no-op.

The collectives move their tensors to the context's device first, so they work with
NCCL (CUDA tensors only) as well as with gloo. See ``docs/distributed.md`` for what a
W-process run computes and how it relates to one process with the whole batch.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class DistContext:
    """Who this process is in a data-parallel run, and on which device it computes.

    Attributes:
        rank: this process's global rank, in ``[0, world_size)``.
        world_size: W, the number of processes.
        device: where this process's model and batches live (``cuda:LOCAL_RANK`` on GPUs).
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Only the main process logs, shows progress and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether there are several processes (and so a process group)."""
        return self.world_size > 1

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` inside DistributedDataParallel when there are several processes.

        DDP averages the gradients over the processes during ``backward``, so whatever
        the caller does with them afterwards (clipping, the optimiser step) sees the same
        averaged gradient on every process.
        """
        if not self.distributed:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def all_reduce_sum(self, values: Tensor) -> Tensor:
        """Sum ``values`` over all processes (a no-op for one process)."""
        if not self.distributed:
            return values
        summed = values.to(self.device, copy=True)
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
        return summed.to(values.device)

    def all_gather_cat(self, value: Tensor, dim: int) -> Tensor:
        """Concatenate every process's ``value`` (same shape on all) along ``dim``, in
        rank order."""
        if not self.distributed:
            return value
        local = value.to(self.device).contiguous()
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local)
        return torch.cat(parts, dim=dim).to(value.device)

    def all_gather_rows(self, value: Tensor) -> Tensor:
        """Concatenate every process's ``value`` along dim 0, in rank order, when the
        processes hold different numbers of rows (the other dims must agree)."""
        if not self.distributed:
            return value
        rows = value.shape[0]
        sizes = self.all_gather_cat(torch.tensor([rows], device=self.device), 0).tolist()
        padded = value.new_zeros((max(sizes), *value.shape[1:]))
        padded[:rows] = value
        parts = self.all_gather_cat(padded[None], 0)  # (W, max rows, ...)
        return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])

    def broadcast_flag(self, flag: bool) -> bool:
        """The main process's ``flag`` on every process (e.g. a stop request)."""
        if not self.distributed:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        dist.broadcast(t, src=0)
        return bool(t.item())

    def broadcast_module(self, module: nn.Module) -> None:
        """Copy the main process's parameters and buffers into ``module`` everywhere
        (e.g. after only the main process could read a checkpoint)."""
        if not self.distributed:
            return
        for tensor in module.state_dict().values():
            local = tensor.to(self.device)
            dist.broadcast(local, src=0)
            tensor.copy_(local)

    def decorrelate_rng(self) -> None:
        """Give every process but the main one a torch random stream of its own.

        All processes start from the same seed (so they build the same model); the
        streams that sample boundaries (``model.boundary=sample``) must then differ, or
        every process would draw the same noise for its own streams. The main process
        keeps its stream, so a one-process run is unchanged.
        """
        if self.rank == 0:
            return
        shared = int(torch.randint(0, 2**62, (1,)).item())  # the same draw on every process
        torch.manual_seed(shared + self.rank)

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.distributed:
            dist.barrier()


def resolve_device(name: str, what: str = "run.device") -> torch.device:
    """``"auto"`` is CUDA when available, else the CPU; ``what`` names the setting in the
    message of the ``ValueError`` raised for a CUDA device where CUDA is not available."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{what}={name} was asked for, but CUDA is not available here")
    return device


def setup(device: str = "auto", backend: str = "") -> DistContext:
    """Join the torchrun process group if there is one; return this process's context.

    Args:
        device: ``run.device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``. Under torchrun
            a CUDA device becomes ``cuda:LOCAL_RANK``, one GPU per process.
        backend: ``run.backend``; empty for NCCL on CUDA and gloo on the CPU.

    Raises:
        ValueError: if the device is not available, or NCCL is asked for on the CPU.
    """
    base = resolve_device(device)
    if backend == "nccl" and base.type != "cuda":
        raise ValueError(
            f"run.backend=nccl needs CUDA devices but this run is on {base}; "
            "use run.backend=gloo (or leave it empty) on the CPU"
        )
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext(0, 1, base)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if base.type == "cuda":
        base = torch.device("cuda", local_rank)
        torch.cuda.set_device(base)
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if base.type == "cuda" else "gloo"))
        # A safety net for a process that leaves without teardown(): the group must go
        # while the interpreter is still whole, not in its finalisation (see teardown).
        atexit.register(_destroy_group)
    return DistContext(rank, world_size, base)


def teardown(context: DistContext, *, failed: bool | None = None) -> None:
    """Leave the process group :func:`setup` joined (nothing for one process).

    Call it on every way out of a run (``finally``). On a normal end every process first
    waits at a barrier for the others: no process leaves, closing its connections and
    taking its threads down, while a peer is still inside a collective or about to enter
    one (e.g. rank 0 still writing its report). On the way out of an exception
    (``failed``; by default, whether an exception is propagating) there is no barrier:
    the peers may be waiting in another collective, which then fails at once on the
    closed connection, instead of pairing with the barrier or hanging. Either way the
    group is destroyed here, before the interpreter shuts down.

    Why it matters: the gloo backend runs C++ threads (its work loop, the TCP loop, and
    the TCPStore server on rank 0). Once DistributedDataParallel has wrapped a model,
    something keeps the group alive past ``destroy_process_group`` (torch 2.13: the gloo
    threads still run after it, even once the DDP module is gone), so those threads are
    only torn down while the process exits, which is the setting of ``terminate called
    without an active exception``. The barrier makes the processes leave together, with
    no collective in flight; the collection frees what can be freed while the
    interpreter is whole.
    """
    if not context.distributed:
        return
    if failed is None:
        failed = sys.exc_info()[0] is not None
    try:
        if not failed and dist.is_initialized():
            dist.barrier()
    finally:
        _destroy_group()


def _destroy_group() -> None:
    """Destroy the default process group if there is one (idempotent)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()
