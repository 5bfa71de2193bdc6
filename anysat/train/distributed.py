"""torch DDP around a JEPA module (the process group is set up by the caller: torchrun, Ray Train, a test)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from anysat.jepa import Jepa

__all__ = ["rank_and_world", "wrap_ddp"]


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def wrap_ddp(jepa: Jepa, device: torch.device | str = "cpu") -> DistributedDataParallel:
    """`DistributedDataParallel` over `jepa`: rank 0's weights are broadcast, gradients all-reduced.

    `find_unused_parameters=True` because a batch only reaches the projectors of its own modalities (one
    dataset per batch) and the modality-mask token only with two or more modalities. The EMA target has no
    gradient; it stays identical across ranks because every rank applies the same update to identical students.
    """
    dev = torch.device(device)
    ids = [dev.index] if dev.type == "cuda" and dev.index is not None else None
    return DistributedDataParallel(jepa, device_ids=ids, find_unused_parameters=True)
