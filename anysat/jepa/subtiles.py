"""Sub-tile contrast: the quadrants of one tile are positives, the quadrants of the other tiles negatives.

Land cover is spatially autocorrelated: two neighbouring sub-tiles of one chip usually show the same kind of
surface, two chips of a batch usually do not. Contrasting the quadrants of each tile (as Tile2Vec contrasts
neighbouring tiles, but inside one chip, so the data loader needs no pairs) gives the encoder a reason to
encode what a place is rather than its pixel-level detail. Off by default (`JepaConfig.tile_nce_weight`): on
the Landsat 7 land-cover scene it lifted the probe by 3 points in a 300-step trial but not in two 27-minute
runs of `bench/learning.py` (docs/TRAINING.md, "Collapse").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from anysat.jepa.loss import multi_positive_nce

__all__ = ["ContrastHead", "quadrants", "subtile_nce"]

_PER_DATE = ("_dates", "_mask")


def quadrants(x: Mapping[str, torch.Tensor], keys: Sequence[str], grid: int) -> dict[str, torch.Tensor]:
    """Split every tile of the modalities `keys` into its 2x2 quadrants along the patch grid.

    Args:
        x: The encoder's input dict (tensors only).
        keys: The modalities to split (those with a patch grid; tile-token modalities are left out).
        grid: Patches per tile side; an odd grid drops its last patch row and column.

    Returns:
        The same contract with 4·B samples, quadrant-major (sample i of quadrant q at q·B + i): each
        modality's pixels and `_valid` cut to (grid // 2) patches per side, `_dates` and `_mask` repeated.

    Raises:
        ValueError: `grid` < 2 (no quadrant holds a whole patch).
    """
    if grid < 2:
        raise ValueError(f"the sub-tile contrast needs at least 2x2 patches per tile, got a {grid}x{grid} grid; "
                         "use a smaller patch_size or set jepa.tile_nce_weight to 0")  # fmt: skip
    out: dict[str, torch.Tensor] = {}
    for name, value in x.items():
        base = name.removesuffix("_valid")
        for suffix in _PER_DATE:
            base = base.removesuffix(suffix)
        if base not in keys:
            continue
        if name.endswith(_PER_DATE):
            out[name] = value.repeat(4, *([1] * (value.dim() - 1)))
            continue
        side = value.shape[-1]
        if side % grid:
            raise ValueError(f"{name}: {side} px per side is not a whole number of the {grid} patches per side")
        q = (grid // 2) * (side // grid)
        out[name] = torch.cat([value[..., r : r + q, c : c + q] for r in (0, q) for c in (0, q)], dim=0)
    return out


class ContrastHead(nn.Module):
    """Projection head of the sub-tile contrast (D → D → D/2), as in SimCLR; the probe uses the encoder below."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim // 2))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(z.float()), dim=-1)


def subtile_nce(z: torch.Tensor, batch: int, *, temperature: float = 0.1) -> torch.Tensor:
    """InfoNCE over [V·B, d] unit embeddings, quadrant-major: positives share the source tile (index mod B).

    loss_i = −log Σ_pos exp(s/τ) / Σ_{j≠i} exp(s/τ); a constant embedding scores log((V·B − 1)/(V − 1)).
    """
    n = z.shape[0]
    sim = z @ z.T / temperature
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    source = torch.arange(n, device=z.device) % batch
    positive = (source[:, None] == source[None, :]) & ~eye
    return multi_positive_nce(sim, ~eye, positive)
