"""In-loop collapse monitoring: effective rank and per-dimension std of student and target embeddings.

A JEPA loss can fall to ~0 while the encoder stops depending on its input (representation collapse), so the
loss alone cannot tell collapse from learning. `Monitor` embeds one fixed batch with the student and with the EMA
target every `eval_every` steps (and once before the first step), measures `anysat.metrics.effective_rank`
(RankMe, uncentred) and `embedding_std` of the fused patch tokens of the full input (the tokens the JEPA targets
are made of, B·N rows), and can call an injected `extra(trainer) -> {name: value}` (e.g. a linear probe on a
held-out labelled set, which the caller builds; nothing here knows about labels or trackers).

Collapse guard: when the student's effective rank falls below `collapse_fraction` × its value at the first
measurement, it logs a warning saying so, and with `collapse_action="stop"` raises `CollapseError`.
Only rank 0 of a DDP run should be given a monitor (the measurement is the same on every rank).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from anysat.metrics import effective_rank, embedding_std

if TYPE_CHECKING:
    from anysat.train.loop import Trainer

__all__ = ["CollapseError", "Monitor", "MonitorConfig"]

log = logging.getLogger(__name__)


class CollapseError(RuntimeError):
    """Training stopped because the representation collapsed (the effective rank fell below its threshold)."""


@dataclass(frozen=True)
class MonitorConfig:
    """How often to measure, and what to do on collapse.

    Attributes:
        eval_every: Steps between measurements (also measured before the first step); 0 = off.
        collapse_fraction: Collapse = the student's effective rank below this fraction of its first value.
        collapse_action: `warn` (log a warning and go on) or `stop` (raise `CollapseError`).
    """

    eval_every: int = 0
    collapse_fraction: float = 0.5
    collapse_action: Literal["warn", "stop"] = "warn"

    def __post_init__(self) -> None:
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0, got {self.eval_every}")
        if not 0 < self.collapse_fraction < 1:
            raise ValueError(f"collapse_fraction must be in (0, 1), got {self.collapse_fraction}")
        if self.collapse_action not in ("warn", "stop"):
            raise ValueError(f"collapse_action must be 'warn' or 'stop', got {self.collapse_action!r}")


@torch.no_grad()
def _patch_tokens(model: torch.nn.Module, batch: Mapping[str, Any], device: torch.device) -> torch.Tensor:
    """Fused patch tokens of the full input, flattened to [B·N, D]."""
    x = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    was_training = model.training
    model.eval()
    try:
        out = model(x, patch_size=int(batch["patch_size"]), output="all")  # [B, 1+N, D]
    finally:
        model.train(was_training)
    return out[:, 1:].reshape(-1, out.shape[-1]).float()


class Monitor:
    """Measures collapse on one fixed batch; `fit` calls `measure(trainer)` when `due(step)`.

    Args:
        config: Cadence and collapse guard.
        batch: A fixed batch in the `Jepa` batch contract (its tensors and `patch_size`).
        extra: Optional `trainer -> {name: value}` whose metrics are added to the measurement.
    """

    def __init__(self, config: MonitorConfig, batch: Mapping[str, Any],
                 extra: Callable[[Trainer], Mapping[str, float]] | None = None) -> None:  # fmt: skip
        self.config = config
        self.batch = batch
        self.extra = extra
        self.initial_rank: float | None = None
        self.history: list[dict[str, float]] = []

    def due(self, step: int) -> bool:
        """Whether to measure after `step` optimiser steps (step 0 = before training)."""
        every = self.config.eval_every
        return every > 0 and (step % every == 0 or self.initial_rank is None)

    def measure(self, trainer: Trainer) -> dict[str, float]:
        """Rank and std of student and target embeddings (+ extra metrics); applies the collapse guard.

        Raises:
            CollapseError: `collapse_action="stop"` and the student's rank fell below its threshold.
        """
        student = _patch_tokens(trainer.jepa.student, self.batch, trainer.device)
        target = _patch_tokens(trainer.jepa.target, self.batch, trainer.device)
        out = {"rank_student": effective_rank(student), "rank_target": effective_rank(target),
               "std_student": embedding_std(student), "std_target": embedding_std(target)}  # fmt: skip
        if self.extra is not None:
            out.update({k: float(v) for k, v in self.extra(trainer).items()})
        step = trainer.state.step
        if self.initial_rank is None:
            self.initial_rank = out["rank_student"]
        out["rank_ratio"] = out["rank_student"] / max(self.initial_rank, 1e-12)
        self.history.append({"step": float(step), **out})
        if out["rank_ratio"] < self.config.collapse_fraction:
            msg = (f"REPRESENTATION COLLAPSE at step {step}: the student's effective rank is "
                   f"{out['rank_student']:.2f}, {out['rank_ratio']:.0%} of its first value {self.initial_rank:.2f} "
                   f"(threshold {self.config.collapse_fraction:.0%}); embedding std {out['std_student']:.4f}. "
                   "The loss can still be falling: the encoder is learning an input-independent output. "
                   "See docs/TRAINING.md, 'Collapse'.")  # fmt: skip
            log.warning(msg)
            if self.config.collapse_action == "stop":
                raise CollapseError(msg)
        return out
