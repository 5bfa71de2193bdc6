"""Learning-rate schedule: linear warm-up to the peak, then cosine decay to `min_lr` at `total_steps`."""

from __future__ import annotations

import math

from anysat.train.config import OptimConfig

__all__ = ["lr_at"]


def lr_at(step: int, config: OptimConfig) -> float:
    """Learning rate of optimiser step `step` (0-based): warm-up over `warmup_steps`, cosine to `min_lr` after.

    The first step uses lr / warmup_steps rather than 0, so no step is wasted.
    """
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(config.total_steps - config.warmup_steps, 1)
    progress = min((step - config.warmup_steps) / span, 1.0)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1.0 + math.cos(math.pi * progress))
