"""Exponential moving average of the student into the target encoder, and its momentum schedule."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ema_update", "momentum_at"]


def momentum_at(step: int, total: int, *, start: float = 0.996, end: float = 1.0) -> float:
    """Momentum rising linearly from `start` at step 0 to `end` at step `total`."""
    if total <= 0:
        return end
    return start + (end - start) * min(max(step, 0), total) / total


@torch.no_grad()
def ema_update(target: nn.Module, student: nn.Module, momentum: float) -> None:
    """target ← momentum · target + (1 − momentum) · student, parameter by parameter (buffers copied)."""
    for t, s in zip(target.parameters(), student.parameters(), strict=True):
        t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)
    for tb, sb in zip(target.buffers(), student.buffers(), strict=True):
        tb.copy_(sb)
