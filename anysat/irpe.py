"""Image relative position encoding (iRPE) on keys: Euclidean, contextual, shared over heads.

Relative distances between tokens of a 2D grid fall into a few buckets (ratio 1.9: distances 0, 1, 2, ≥3 plus
one bucket for prefix tokens such as CLS); each bucket has a learned vector of `head_dim`. The attention bias is
q · r(bucket(i, j)). We compute q · r for the few buckets ([B, H, Nq, buckets]) and gather it with a small
[Nq, Nk] index, instead of materialising [Nq, Nk, head_dim] tensors.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import nn

__all__ = ["RelativePositionKeys", "bucket_ids"]

_RATIO = 1.9
_ALPHA, _BETA, _GAMMA = 1 * _RATIO, 2 * _RATIO, 8 * _RATIO
NUM_DIST_BUCKETS = 2 * int(_BETA) + 1  # 7 (only the non-negative half is used by Euclidean distances)


def _piecewise(dist: torch.Tensor) -> torch.Tensor:
    """Bucket of a rounded Euclidean distance: exact up to alpha, logarithmic up to beta."""
    far = dist.abs() > _ALPHA
    out = dist.round()
    scaled = _ALPHA + torch.log(dist[far].abs() / _ALPHA) / math.log(_GAMMA / _ALPHA) * (_BETA - _ALPHA)
    out[far] = torch.sign(dist[far]) * scaled.round().clip(max=_BETA)
    return out.long()


@lru_cache(maxsize=64)
def _grid_buckets(grid: int) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    pos = torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1)  # [L, 2]
    diff = pos[:, None, :] - pos[None, :, :]
    dist = diff.square().sum(-1).float().sqrt().round()
    return _piecewise(dist) + int(_BETA)  # [L, L] in [3, 6]


def bucket_ids(grid: int, *, prefix: int = 1, device: torch.device | None = None) -> torch.Tensor:
    """Bucket index [prefix + grid², prefix + grid²] for a row-major grid behind `prefix` tokens."""
    inner = _grid_buckets(grid)
    n = prefix + inner.shape[0]
    out = torch.full((n, n), NUM_DIST_BUCKETS, dtype=torch.long)  # the prefix bucket
    out[prefix:, prefix:] = inner
    return out if device is None else out.to(device)


class RelativePositionKeys(nn.Module):
    """Contextual iRPE on keys; `lookup_table_weight` [1, head_dim, 8] is shared by all heads.

    Args:
        head_dim: Width of one head.
        first_head_only: Reproduce the official code, whose gather keeps the bias computed from the first
            head's queries and broadcasts it to every head. False gives each head the bias of its own queries.
    """

    def __init__(self, head_dim: int, *, first_head_only: bool = False) -> None:
        super().__init__()
        self.first_head_only = first_head_only
        self.lookup_table_weight = nn.Parameter(torch.zeros(1, head_dim, NUM_DIST_BUCKETS + 1))
        nn.init.trunc_normal_(self.lookup_table_weight, std=0.02)

    def forward(self, q: torch.Tensor, buckets: torch.Tensor) -> torch.Tensor:
        """Attention bias from queries.

        Args:
            q: [B, H, Nq, head_dim] queries (as the attention uses them).
            buckets: [Nq, Nk] or [B, Nq, Nk] bucket ids.

        Returns:
            [B, H, Nq, Nk] additive bias ([B, 1, Nq, Nk] with `first_head_only`).
        """
        if self.first_head_only:
            q = q[:, :1]
        table = q @ self.lookup_table_weight[0]  # [B, H, Nq, 8]
        b, h, nq, nb = table.shape
        idx = buckets if buckets.dim() == 3 else buckets.unsqueeze(0).expand(b, -1, -1)  # [B, Nq, Nk]
        idx = idx.unsqueeze(1).expand(b, h, nq, idx.shape[-1])
        return torch.gather(table, 3, idx)
