"""torch.distributed set-up for ``torchrun``: NCCL on GPUs, gloo on CPU."""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str, timeout: datetime.timedelta | None = None) -> DistInfo:
    """Join the process group torchrun describes in the environment (no-op for one process).

    ``timeout``: how long a collective (a barrier) may wait; torch's default (30 min for gloo)
    when None.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        kwargs = {"timeout": timeout} if timeout is not None else {}
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", **kwargs)
    if use_cuda:
        torch.cuda.set_device(info.local_rank)
    return info


def device_for(info: DistInfo, device: torch.device) -> torch.device:
    """Each rank drives its own GPU."""
    if device.type == "cuda" and info.enabled:
        return torch.device("cuda", info.local_rank)
    return device


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_parameters(module: torch.nn.Module, info: DistInfo) -> None:
    """Start every rank from rank 0's values (e.g. randomly initialised proxies)."""
    if info.enabled:
        for p in module.parameters():
            dist.broadcast(p.data, src=0)


def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Give every rank rank 0's BatchNorm statistics.

    DDP broadcasts buffers at the start of each forward, so after the last step each rank
    holds the statistics of its own last batch; this makes the end-of-epoch state (what is
    evaluated and checkpointed) identical on all ranks.
    """
    if info.enabled:
        for b in module.buffers():
            dist.broadcast(b.data, src=0)


def sync_loss_gradients(module: torch.nn.Module, info: DistInfo) -> None:
    """Average the gradients of loss parameters (proxies) over ranks, undoing PML's world-size factor.

    PML's DistributedLossWrapper returns ``loss * world_size`` so that DDP's gradient averaging
    of the network gives the full-batch gradient. The proxies are not in DDP and see the same
    gathered batch on every rank, so their gradient is ``world_size`` times the full-batch one:
    sum over ranks and divide by world_size² to get the mean, identical on every rank.
    """
    if not info.enabled:
        return
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(info.world_size ** 2)


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
