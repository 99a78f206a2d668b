"""The one wrapper around ``torch.distributed`` (``torchrun`` jobs): NCCL on GPUs, gloo on CPU.

Training (``engine/``), the sharded index build (``index/distributed.py``) and the commands
(``cli/build_index.py``) join, wait, broadcast and leave through these functions. torch is
imported inside them, so importing this module (and ``retrieval.index``) stays torch-free.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .errors import DistributedError

if TYPE_CHECKING:
    import torch


@dataclass
class DistInfo:
    """This process's place in the job: rank, world size and the GPU it drives (local rank)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def world_size_from_env() -> int:
    """WORLD_SIZE as torchrun sets it (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device_name: str, timeout: datetime.timedelta | None = None) -> DistInfo:
    """Join the process group torchrun describes in the environment (no-op for one process).

    ``timeout``: how long a collective (a barrier) may wait; torch's default (30 min for gloo)
    when None.
    """
    world = world_size_from_env()
    if world <= 1:
        return DistInfo()
    import torch
    import torch.distributed as dist

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
        import torch

        return torch.device("cuda", info.local_rank)
    return device


def _collective(op: Callable[[], Any], what: str | None, hint: str):
    """Run a collective; with ``what``, a peer that died becomes one DistributedError (what; hint) instead of gloo's."""
    if what is None:
        return op()
    try:
        return op()
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DistributedError(f"{what}: another rank failed or was killed (its own error is above)"
                               f"{'; ' + hint if hint else ''} ({first[:160]})") from None


def barrier(info: DistInfo, what: str | None = None, hint: str = "") -> None:
    """Wait for every rank; ``what`` (and ``hint``) name the wait in the DistributedError a dead peer becomes."""
    if info.enabled:
        import torch.distributed as dist

        _collective(dist.barrier, what, hint)


def from_rank0(value, info: DistInfo, what: str = "waiting for rank 0", hint: str = ""):
    """Rank 0's ``value`` (any picklable object) on every rank: one decision, even if a shared file system lags."""
    if not info.enabled:
        return value
    import torch.distributed as dist

    box = [value]
    _collective(lambda: dist.broadcast_object_list(box, src=0), what, hint)
    return box[0]


def broadcast_parameters(module: torch.nn.Module, info: DistInfo) -> None:
    """Start every rank from rank 0's values (e.g. randomly initialised proxies)."""
    if info.enabled:
        import torch.distributed as dist

        for p in module.parameters():
            dist.broadcast(p.data, src=0)


def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Give every rank rank 0's BatchNorm statistics.

    DDP broadcasts buffers at the start of each forward, so after the last step each rank
    holds the statistics of its own last batch; this makes the end-of-epoch state (what is
    evaluated and checkpointed) identical on all ranks.
    """
    if info.enabled:
        import torch.distributed as dist

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
    import torch.distributed as dist

    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(info.world_size ** 2)


def shutdown(info: DistInfo) -> None:
    """Leave the process group (no-op for one process)."""
    if not info.enabled:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
