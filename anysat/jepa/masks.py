"""Multi-block JEPA masks on the n x n patch grid: one context block minus several target blocks.

As in I-JEPA, block sizes are drawn once per batch and positions per sample, from an explicit
`torch.Generator`; the context never overlaps a target, and every sample keeps the same number of context and
target indices (the batch minimum), so masks stack into tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["BlockMasks", "MaskConfig", "sample_masks"]


@dataclass(frozen=True)
class MaskConfig:
    """Block sampling ranges (fractions of the grid area and height/width aspect ratios).

    Attributes:
        n_targets: Target blocks per sample.
        target_scale: Range of a target block's area fraction.
        target_aspect: Range of a target block's height/width ratio.
        context_scale: Range of the context block's area fraction (aspect 1).
        min_context: Fewest context patches accepted; sampling is retried, then targets shrink.
        max_tries: Retries before targets are shrunk.
    """

    n_targets: int = 4
    target_scale: tuple[float, float] = (0.15, 0.2)
    target_aspect: tuple[float, float] = (0.75, 1.5)
    context_scale: tuple[float, float] = (0.85, 1.0)
    min_context: int = 2
    max_tries: int = 20

    def __post_init__(self) -> None:
        for name in ("target_scale", "context_scale", "target_aspect"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be an increasing positive range, got {(lo, hi)}")
        if self.context_scale[1] > 1 or self.target_scale[1] > 1:
            raise ValueError("area fractions cannot exceed 1")
        if self.n_targets < 1 or self.min_context < 1:
            raise ValueError("n_targets and min_context must be >= 1")


@dataclass(frozen=True)
class BlockMasks:
    """Sampled masks: `context` [B, Kc] and `targets` [B, n_targets, Kt] patch indices (row-major)."""

    context: torch.Tensor
    targets: torch.Tensor


def _block_size(grid: int, scale: tuple[float, float], aspect: tuple[float, float],
                gen: torch.Generator) -> tuple[int, int]:  # fmt: skip
    u = torch.rand(2, generator=gen)
    area = grid * grid * (scale[0] + float(u[0]) * (scale[1] - scale[0]))
    log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])
    ratio = math.exp(log_lo + float(u[1]) * (log_hi - log_lo))
    h = max(1, min(grid, round(math.sqrt(area * ratio))))
    w = max(1, min(grid, round(math.sqrt(area / ratio))))
    return h, w


def _place(grid: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """A [grid, grid] bool mask with one h x w block at a random position."""
    top = int(torch.randint(0, grid - h + 1, (1,), generator=gen))
    left = int(torch.randint(0, grid - w + 1, (1,), generator=gen))
    mask = torch.zeros(grid, grid, dtype=torch.bool)
    mask[top : top + h, left : left + w] = True
    return mask


def sample_masks(grid: int, batch: int, config: MaskConfig, *, generator: torch.Generator) -> BlockMasks:
    """Sample context and target indices for `batch` samples on a `grid` x `grid` patch grid.

    Raises:
        ValueError: The grid is too small to hold `min_context` context patches besides one target patch.
    """
    if grid * grid < config.min_context + 1:
        raise ValueError(f"a {grid}x{grid} grid cannot hold {config.min_context} context patches and a target; "
                         "use a smaller patch size or a larger tile")  # fmt: skip
    target_scale = config.target_scale
    for attempt in range(4 * config.max_tries):
        if attempt and attempt % config.max_tries == 0:  # shrink targets after repeated failures
            target_scale = (target_scale[0] / 2, target_scale[1] / 2)
        t_size = _block_size(grid, target_scale, config.target_aspect, generator)
        c_size = _block_size(grid, config.context_scale, (1.0, 1.0), generator)
        contexts, targets, ok = [], [], True
        for _ in range(batch):
            blocks = [_place(grid, *t_size, generator) for _ in range(config.n_targets)]
            union = torch.stack(blocks).any(0)
            context = _place(grid, *c_size, generator) & ~union
            if int(context.sum()) < config.min_context:
                ok = False
                break
            contexts.append(context.flatten().nonzero().squeeze(1))
            targets.append([b.flatten().nonzero().squeeze(1) for b in blocks])
        if ok:
            kc = min(len(c) for c in contexts)
            kt = min(len(t) for ts in targets for t in ts)
            return BlockMasks(torch.stack([c[:kc] for c in contexts]),
                              torch.stack([torch.stack([t[:kt] for t in ts]) for ts in targets]))  # fmt: skip
    raise ValueError(f"could not sample masks with >= {config.min_context} context patches on a {grid}x{grid} grid")
