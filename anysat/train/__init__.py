"""Torch-only JEPA training runtime: step and loop over any iterable of batches, schedule, checkpoints.

No Ray, MLflow or storage client here: jobs adapt these to Ray Train (`report`, checkpoints) and trackers.
"""

from anysat.train.checkpoint import load_checkpoint, read_state, save_checkpoint
from anysat.train.config import OptimConfig
from anysat.train.distributed import rank_and_world, wrap_ddp
from anysat.train.loop import StepReport, Trainer, TrainState, fit
from anysat.train.monitor import CollapseError, Monitor, MonitorConfig
from anysat.train.schedule import lr_at

__all__ = [
    "CollapseError",
    "Monitor",
    "MonitorConfig",
    "OptimConfig",
    "StepReport",
    "TrainState",
    "Trainer",
    "fit",
    "load_checkpoint",
    "lr_at",
    "rank_and_world",
    "read_state",
    "save_checkpoint",
    "wrap_ddp",
]
