"""`OptimConfig`: the optimisation recipe of JEPA pretraining (AdamW, schedule, accumulation, clipping, EMA, bf16)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["OptimConfig"]


@dataclass(frozen=True)
class OptimConfig:
    """How the student is optimised and the EMA target follows it.

    Attributes:
        total_steps: Optimiser steps of the whole run (the cosine decay and the EMA schedule end there).
        lr: Peak learning rate, reached at the end of the warm-up.
        min_lr: Learning rate at the end of the cosine decay.
        warmup_steps: Steps of linear warm-up from 0 to `lr`.
        weight_decay: AdamW decoupled weight decay (not applied to biases, norms, tokens and 1-D parameters).
        betas: AdamW betas.
        accumulate: Micro-batches whose gradients are summed (averaged) into one optimiser step.
        clip_norm: Global gradient-norm clip; 0 disables clipping (the norm is still reported).
        ema_start: EMA momentum of the target at step 0 (rises linearly to `ema_end` at `total_steps`).
        ema_end: EMA momentum at the last step.
        bf16: bf16 autocast of the forward pass on CUDA devices (ignored on CPU, where it is slower).
    """

    total_steps: int = 100
    lr: float = 5e-4
    min_lr: float = 1e-6
    warmup_steps: int = 10
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    accumulate: int = 1
    clip_norm: float = 1.0
    ema_start: float = 0.996
    ema_end: float = 1.0
    bf16: bool = True

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps={self.total_steps}], got {self.warmup_steps}")
        if self.lr <= 0 or not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"need lr > 0 and 0 <= min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")
        if self.accumulate < 1:
            raise ValueError(f"accumulate must be >= 1 micro-batch, got {self.accumulate}")
        if self.clip_norm < 0 or self.weight_decay < 0:
            raise ValueError("clip_norm and weight_decay must be >= 0")
        if not 0 <= self.ema_start <= self.ema_end <= 1:
            raise ValueError(f"need 0 <= ema_start <= ema_end <= 1, got {self.ema_start}, {self.ema_end}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (saved in checkpoints)."""
        return {"total_steps": self.total_steps, "lr": self.lr, "min_lr": self.min_lr,
                "warmup_steps": self.warmup_steps, "weight_decay": self.weight_decay, "betas": list(self.betas),
                "accumulate": self.accumulate, "clip_norm": self.clip_norm, "ema_start": self.ema_start,
                "ema_end": self.ema_end, "bf16": self.bf16}  # fmt: skip
