"""Projectors: turn one modality into sub-patch tokens grouped by patch, [B·P, S, D].

VHR images: Conv2d(kernel = stride = `subpatch_px`, no bias) then an MLP (Linear, LayerNorm, ReLU) x 2.
Time series: the per-pixel L-TAE; one sub-patch = one pixel. P = patches in the tile, S = sub-patches per patch.
"""

from __future__ import annotations

import torch
from torch import nn

from anysat.ltae import LTAE
from anysat.modalities import Modality

__all__ = ["TemporalProjector", "VHRProjector", "group_by_patch"]


def group_by_patch(x: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, D, H, W] → [B·P, patch², D], patches and their cells both in raster order."""
    b, d, h, w = x.shape
    x = x.view(b, d, h // patch, patch, w // patch, patch).permute(0, 2, 4, 3, 5, 1)  # [B, nh, nw, p, p, D]
    return x.reshape(b * (h // patch) * (w // patch), patch * patch, d)


def _group_cell_major(x: torch.Tensor, patch: int, cell: int) -> torch.Tensor:
    """The official aerial order: sub-patches grouped by 10 m cell first, (cell_r, cell_c, g_r, g_c)."""
    b, d, h, w = x.shape
    cells = patch // cell
    x = x.view(b, d, h // patch, cells, cell, w // patch, cells, cell)
    x = x.permute(0, 2, 5, 3, 6, 4, 7, 1)  # [B, nh, nw, cell_r, cell_c, g_r, g_c, D]
    return x.reshape(b * (h // patch) * (w // patch), patch * patch, d)


class VHRProjector(nn.Module):
    """Image projector: conv sub-patches + MLP (official names `patch_embed`, `mlp.0/1/3/4`)."""

    def __init__(self, modality: Modality, embed_dim: int, *, official_order: bool = False) -> None:
        super().__init__()
        d = embed_dim
        self.modality = modality
        self.official_order = official_order
        self.patch_embed = nn.Conv2d(modality.channels, d, kernel_size=modality.subpatch_px,
                                     stride=modality.subpatch_px, bias=False)  # fmt: skip
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.LayerNorm(2 * d), nn.ReLU(),
                                 nn.Linear(2 * d, d), nn.LayerNorm(d), nn.ReLU())  # fmt: skip

    def forward(self, x: torch.Tensor, *, patch_size: int) -> torch.Tensor:
        """x [B, C, H, W] → [B·P, S, D] with S = (patch_size / subpatch_m)²."""
        feats = self.patch_embed(x)  # [B, D, H/k, W/k]
        per_patch = round(patch_size / self.modality.subpatch_m)
        cell = round(10 / self.modality.subpatch_m)  # sub-patches per 10 m cell side (official grouping)
        if self.official_order and cell > 1 and per_patch > cell and per_patch % cell == 0:
            tokens = _group_cell_major(feats, per_patch, cell)
        else:
            tokens = group_by_patch(feats, per_patch)
        return self.mlp(tokens)


class TemporalProjector(nn.Module):
    """Time-series projector: per-pixel L-TAE (`patch_embed`) then grouping by patch."""

    def __init__(self, modality: Modality, embed_dim: int, *, chunk_pixels: int = 512,
                 skip_masked: bool = True) -> None:  # fmt: skip
        super().__init__()
        self.modality = modality
        self.patch_embed = LTAE(modality.channels, embed_dim, period=modality.doy_period, in_norm=modality.in_norm,
                                chunk_pixels=chunk_pixels, skip_masked=skip_masked)  # fmt: skip
        # Kept for checkpoint compatibility: the official code fills masked inputs with it (fine-tuning only).
        self.pad_parameter = nn.Parameter(torch.tensor(0.0), requires_grad=False)

    def forward(self, x: torch.Tensor, doy: torch.Tensor, *, patch_size: int, valid: torch.Tensor | None = None,
                checkpoint: bool = False) -> torch.Tensor:  # fmt: skip
        """x [B, T, C, H, W], doy [B, T], valid [B, T, H, W] → [B·P, S, D] (or [B, H·W, D] for a tile token)."""
        feats = self.patch_embed(x, doy, valid, checkpoint=checkpoint)  # [B, D, H, W]
        if self.modality.tile_token:
            b, d, h, w = feats.shape
            return feats.permute(0, 2, 3, 1).reshape(b, h * w, d)
        return group_by_patch(feats, round(patch_size / self.modality.res_m))
