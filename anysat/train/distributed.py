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


def wrap_ddp(jepa: Jepa, device: torch.device | str = "cpu", *, batch_keys: list[set[str]] | None = None,
             ) -> DistributedDataParallel:  # fmt: skip
    """`DistributedDataParallel` over `jepa`: rank 0's weights are broadcast, gradients all-reduced.

    Args:
        jepa: The module to wrap.
        device: Its device.
        batch_keys: The model keys each dataset's batches carry, if known. Unless every batch reaches every
            projector and the modality-mask token (all model modalities, at least two), DDP must look for
            unused parameters (`find_unused_parameters=True`, an extra graph traversal per step); None = assume so.

    The EMA target has no gradient; it stays identical across ranks because every rank applies the same update
    to identical students.
    """
    dev = torch.device(device)
    ids = [dev.index] if dev.type == "cuda" and dev.index is not None else None
    model_keys = {m.key for m in jepa.student.config.modalities}
    all_used = batch_keys is not None and len(model_keys) >= 2 and all(k == model_keys for k in batch_keys)
    return DistributedDataParallel(jepa, device_ids=ids, find_unused_parameters=not all_used)
