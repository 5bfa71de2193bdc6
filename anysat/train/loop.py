"""The training step and loop over any iterable of batches, reporting through a callable (no Ray, no MLflow here).

`Trainer` owns the optimiser state of one `Jepa` module: `step(micro_batches)` runs the forward and backward
passes of `accumulate` micro-batches (bf16 autocast on CUDA), clips, steps AdamW and the schedule, and moves the
EMA target with `momentum_at`. `fit` draws batches epoch by epoch from `batches_for(epoch, skip)`, times how long
each step waits for data, keeps the data position (epoch, batches consumed) in `TrainState`, and calls
`report(StepReport)` after every step and `checkpoint(trainer)` every `checkpoint_every` steps and at the end.
Under torch DDP the caller passes the wrapped module as `forward`; everything else is the same.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from anysat.jepa import Jepa, momentum_at
from anysat.train.config import OptimConfig
from anysat.train.monitor import Monitor
from anysat.train.schedule import lr_at

__all__ = ["StepReport", "TrainState", "Trainer", "fit"]

log = logging.getLogger(__name__)
Batch = Mapping[str, Any]


@dataclass
class TrainState:
    """Where a run is: optimiser steps done, data position, samples seen and the loss history (small, JSON).

    Attributes:
        step: Optimiser steps done.
        epoch: Current epoch of the data.
        batches_in_epoch: Batches of `epoch` already consumed (the resume point within the epoch).
        samples: Samples seen by this process.
        history: One `[step, loss, loss_pred, loss_nce]` row per step (for the loss curve of the whole run).
    """

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    samples: int = 0
    history: list[list[float]] = field(default_factory=list)


@dataclass(frozen=True)
class StepReport:
    """What one optimiser step measured (loss terms averaged over its micro-batches)."""

    step: int
    epoch: int
    loss: float
    loss_pred: float
    loss_nce: float
    lr: float
    ema_momentum: float
    grad_norm: float
    samples: int
    step_time_s: float
    data_wait_s: float
    monitor: dict[str, float] = field(default_factory=dict)
    loss_tile: float = 0.0

    @property
    def samples_per_s(self) -> float:
        return self.samples / max(self.step_time_s + self.data_wait_s, 1e-9)

    @property
    def data_wait_share(self) -> float:
        """Share of the step's wall time spent waiting for batches."""
        return self.data_wait_s / max(self.step_time_s + self.data_wait_s, 1e-9)

    def metrics(self) -> dict[str, float]:
        """Flat metric names for trackers."""
        return {"loss": self.loss, "loss_pred": self.loss_pred, "loss_nce": self.loss_nce,
                "loss_tile": self.loss_tile, "lr": self.lr,
                "ema_momentum": self.ema_momentum, "grad_norm": self.grad_norm, "epoch": float(self.epoch),
                "samples_per_s": self.samples_per_s, "data_wait_share": self.data_wait_share,
                **self.monitor}  # fmt: skip

    def line(self) -> str:
        """The printed step line: loss terms, lr, EMA, throughput, and the collapse monitor when measured."""
        text = (f"step {self.step} loss {self.loss:.4f} (pred {self.loss_pred:.4f} nce {self.loss_nce:.4f} "
                f"tile {self.loss_tile:.4f}) "
                f"lr {self.lr:.2e} ema {self.ema_momentum:.5f} {self.samples_per_s:.1f} samples/s "
                f"wait {100 * self.data_wait_share:.0f}%")  # fmt: skip
        if self.monitor:
            text += " | " + " ".join(f"{k} {v:.4g}" for k, v in self.monitor.items())
        return text


def _param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only: biases, norms, tokens and other 1-D/scalar parameters get no weight decay."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.endswith(("token", ".bias")) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _to_device(batch: Batch, device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _batch_size(batch: Batch) -> int:
    ids = batch.get("chip_id")
    if isinstance(ids, Sequence) and not isinstance(ids, str):
        return len(ids)
    return next(int(v.shape[0]) for v in batch.values() if isinstance(v, torch.Tensor))


class Trainer:
    """Optimiser, schedule and EMA of one JEPA module, one `step` at a time.

    Args:
        jepa: The JEPA module (student, EMA target, predictor); already on `device`.
        config: Optimisation recipe.
        forward: What to call on a batch; the `DistributedDataParallel` wrapper of `jepa` under DDP
            (default: `jepa` itself).
        device: Where batches are moved before the forward pass.
    """

    def __init__(self, jepa: Jepa, config: OptimConfig, *, forward: nn.Module | None = None,
                 device: torch.device | str = "cpu") -> None:  # fmt: skip
        self.jepa = jepa
        self.config = config
        self.forward = forward if forward is not None else jepa
        self.device = torch.device(device)
        self.optimizer = torch.optim.AdamW(_param_groups(jepa, config.weight_decay), lr=config.lr,
                                           betas=config.betas)  # fmt: skip
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.state = TrainState()
        self.params = [p for p in jepa.parameters() if p.requires_grad]

    def _lr_factor(self, step: int) -> float:
        return lr_at(step, self.config) / self.config.lr

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.config.bf16 and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step(self, micro_batches: Sequence[Batch], *, data_wait_s: float = 0.0) -> StepReport:
        """One optimiser step over `micro_batches` (their gradients are averaged); returns what it measured."""
        if not micro_batches:
            raise ValueError("a step needs at least one micro-batch, got none")
        t0 = time.perf_counter()
        self.jepa.train()
        self.optimizer.zero_grad(set_to_none=True)
        n = len(micro_batches)
        sums = torch.zeros(4)
        samples = 0
        for i, raw in enumerate(micro_batches):
            batch = _to_device(raw, self.device)
            samples += _batch_size(raw)
            last = i == n - 1
            no_sync = getattr(self.forward, "no_sync", None)
            sync_ctx = no_sync() if (no_sync is not None and not last) else contextlib.nullcontext()
            with sync_ctx:
                with self._autocast():
                    out = self.forward(batch)
                (out.loss / n).backward()
            sums += torch.stack([out.loss.detach(), out.loss_pred, out.loss_nce, out.loss_tile]).float().cpu()
        max_norm = self.config.clip_norm if self.config.clip_norm > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        lr = float(self.optimizer.param_groups[0]["lr"])
        self.optimizer.step()
        self.scheduler.step()
        momentum = momentum_at(self.state.step, self.config.total_steps, start=self.config.ema_start,
                               end=self.config.ema_end)  # fmt: skip
        self.jepa.update_target(momentum)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        loss, loss_pred, loss_nce, loss_tile = (sums / n).tolist()
        self.state.step += 1
        self.state.samples += samples
        self.state.history.append([float(self.state.step), loss, loss_pred, loss_nce])
        return StepReport(self.state.step, self.state.epoch, loss, loss_pred, loss_nce, lr, momentum, grad_norm,
                          samples, time.perf_counter() - t0, data_wait_s, loss_tile=loss_tile)  # fmt: skip


def _next_micro_batches(it: Iterator[Batch], k: int) -> tuple[list[Batch], float, bool]:
    """Up to k batches from `it`, the seconds spent waiting for them, and whether `it` ran out."""
    t0 = time.perf_counter()
    out: list[Batch] = []
    for _ in range(k):
        try:
            out.append(next(it))
        except StopIteration:
            return out, time.perf_counter() - t0, True
    return out, time.perf_counter() - t0, False


def fit(trainer: Trainer, batches_for: Callable[[int, int], Iterable[Batch]], *,
        report: Callable[[StepReport], None] = lambda r: None,
        checkpoint: Callable[[Trainer], None] | None = None, checkpoint_every: int = 0,
        monitor: Monitor | None = None) -> TrainState:  # fmt: skip
    """Train until `trainer.config.total_steps`, resuming from `trainer.state`.

    Args:
        trainer: The trainer (its `state` says where to start: step, epoch, batches already consumed).
        batches_for: `(epoch, skip) -> batches` of that epoch, the first `skip` left out (the data position).
        report: Called after every step with its `StepReport`.
        checkpoint: Called with the trainer every `checkpoint_every` steps and after the last step.
        checkpoint_every: Steps between checkpoints; 0 = only at the end.
        monitor: Collapse monitor (rank 0 only): measured before the first step and every `eval_every` steps;
            its metrics go into that step's `StepReport.monitor` (the first one into the first step's).

    Returns:
        The final state.

    Raises:
        ValueError: An epoch yields no batch at all (nothing to train on).
        CollapseError: The monitor's guard asked to stop.
    """
    state, total, k = trainer.state, trainer.config.total_steps, trainer.config.accumulate
    pending: dict[str, float] = {}
    if monitor is not None and monitor.due(state.step):
        pending = {f"{name}_start" if state.step == 0 else name: v for name, v in monitor.measure(trainer).items()}
    while state.step < total:
        it = iter(batches_for(state.epoch, state.batches_in_epoch))
        drew_any = state.batches_in_epoch > 0
        exhausted = False
        while state.step < total and not exhausted:
            micro, waited, exhausted = _next_micro_batches(it, k)
            if not micro:
                break
            drew_any = True
            result = trainer.step(micro, data_wait_s=waited)
            state.batches_in_epoch += len(micro)
            if monitor is not None and monitor.due(state.step):
                pending.update(monitor.measure(trainer))
            if pending:
                result = dataclasses.replace(result, monitor={**result.monitor, **pending})
                pending = {}
            report(result)
            due = checkpoint_every > 0 and state.step % checkpoint_every == 0
            if checkpoint is not None and (due or state.step == total):
                checkpoint(trainer)
        if not drew_any:
            raise ValueError(f"epoch {state.epoch} yielded no batch; check the datasets and the batch size "
                             "(with drop_last, a dataset smaller than one batch yields nothing)")  # fmt: skip
        if exhausted:
            log.info("epoch %d done after %d batches", state.epoch, state.batches_in_epoch)
            state.epoch += 1
            state.batches_in_epoch = 0
    return state
