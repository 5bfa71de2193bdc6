"""Metre-based 2D sine-cosine position encoding: the only way resolution and scale enter the model.

Positions are grid indices times a step in metres (sub-patches inside a patch) or in 10 m units (patches in a
tile), encoded as in MAE (base 10000): the first half of the channels encodes the column, the second the row.
"""

from __future__ import annotations

import torch

__all__ = ["sincos_1d", "sincos_2d"]


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """[M] positions → [M, dim] (sin of all frequencies, then cos)."""
    if dim % 2:
        raise ValueError(f"sin-cos encoding needs an even width, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float32, device=pos.device) / (dim / 2.0)
    omega = 1.0 / 10000**omega  # [dim/2]
    out = pos.reshape(-1).float()[:, None] * omega[None, :]  # [M, dim/2]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(dim: int, grid: int, step: float, *, prefix_tokens: int = 0,
              device: torch.device | None = None) -> torch.Tensor:  # fmt: skip
    """Encoding of a `grid` x `grid` raster (row-major) with spacing `step`, after `prefix_tokens` zero rows.

    Returns:
        [prefix_tokens + grid * grid, dim].
    """
    idx = torch.arange(grid, dtype=torch.float32, device=device)
    rows, cols = torch.meshgrid(idx, idx, indexing="ij")  # [grid, grid] each
    emb = torch.cat([sincos_1d(dim // 2, cols * step), sincos_1d(dim // 2, rows * step)], dim=1)
    if prefix_tokens:
        emb = torch.cat([torch.zeros(prefix_tokens, dim, device=device), emb], dim=0)
    return emb
