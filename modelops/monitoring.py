"""The pretraining job's collapse monitor: `anysat.train.Monitor` built from a `PretrainConfig.monitor` section.

Rank 0 measures, every `monitor.eval_every` steps and before the first one, the effective rank and per-dimension
std of the student's and the EMA target's fused patch tokens on one fixed batch (the first, unshuffled batch of
the datasets), and, with `monitor.probe_store`, the linear probe of jobs/evaluate.py on that labelled store's
held-out spatial blocks (`HeldOutProbe`, through `modelops.evaluate.probe_split`: the same selection, split and
probe as the evaluate job). The job logs these as MLflow metrics of the step they were measured at and prints
them in the step line (`tracked_metrics`).

With `collapse_action: stop` the guard's `CollapseError` ends the run. On a multi-rank run only rank 0 measures,
so its verdict is broadcast at every measurement (`SharedVerdict`) and every rank stops at the same step instead
of waiting in a collective for a rank that has left; on Ray Train the workers then return normally (a collapse
is not a failure that restarting from the last checkpoint would cure) and leave `collapse.json` in the run
directory, which the driver turns back into a `CollapseError` (`COLLAPSE_FILE`).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from anysat.train import CollapseError, Monitor, MonitorConfig, Trainer
from pipeline.errors import PipelineError
from pipeline.load.loader import iter_batches

if TYPE_CHECKING:
    from modelops.pretrain_config import PretrainConfig

__all__ = ["COLLAPSE_FILE", "HeldOutProbe", "SharedVerdict", "build_monitor", "check_probe_store",
           "plant_collapse", "tracked_metrics"]

log = logging.getLogger("pretrain")
COLLAPSE_FILE = "collapse.json"  # the stop message of a run its guard stopped, under <storage>/<run name>/


def fixed_batch(cfg: PretrainConfig) -> dict[str, Any]:
    """The first `monitor.batch_size` chips of the datasets, unshuffled, at the first configured patch size."""
    data = dataclasses.replace(cfg.data, batch_size=cfg.monitor.batch_size, shuffle_buffer=0, drop_last=False,
                               patch_sizes_m=cfg.data.patch_sizes_m[:1])  # fmt: skip
    for batch in iter_batches(data, epoch=0):
        return dict(batch)
    raise PipelineError("the monitor's fixed batch is empty: the datasets hold no chip")


class HeldOutProbe:
    """`trainer -> {"probe_balanced_accuracy": …}`: the evaluate job's linear probe of the student's embeddings.

    Every call embeds every chip of the labelled store with a CPU copy of the student (the store's chips are
    read each time, nothing is cached between calls), selects and splits them with `probe_split` (the same
    deterministic spatial blocks every time) and scores the probe on the held-out blocks.
    """

    def __init__(self, store: str, *, patch_size: int = 0) -> None:
        from modelops.evaluate import EvalConfig
        from pipeline.store.labels import read_labels

        self.config = EvalConfig(model="student", store=store, patch_size=patch_size)
        self.labels = read_labels(store)

    def __call__(self, trainer: Trainer) -> dict[str, float]:
        from modelops.embeddings import embed_store
        from modelops.evaluate import probe_split

        encoder = copy.deepcopy(trainer.jepa.student).cpu().eval()
        emb = embed_store(self.config.store, {"model": encoder}, patch_size=self.config.patch_size,
                          batch_size=self.config.batch_size, progress=None)  # fmt: skip
        split = probe_split(self.config, emb, self.labels)
        result = split.linear(emb.tiles["model"][split.keep], self.config)
        return {"probe_balanced_accuracy": result.balanced_accuracy}


def check_probe_store(cfg: PretrainConfig) -> None:
    """Fail before training when `monitor.probe_store` has no labels or a group the model has no key for.

    Raises:
        PipelineError: The store cannot be read, has no labels, or its groups do not map onto the model.
    """
    if not cfg.monitor.probe_store or not cfg.monitor.eval_every:
        return
    from modelops.embeddings import store_mapping
    from pipeline.load.loader import read_stats
    from pipeline.store.labels import read_labels

    store = cfg.monitor.probe_store
    keys = [m.key for m in cfg.model.anysat().modalities]
    try:
        read_labels(store)
        store_mapping(sorted(read_stats(store)), keys)
    except PipelineError as err:
        raise PipelineError(f"monitor.probe_store {store}: {err}") from err


class SharedVerdict:
    """The monitor for one rank of a multi-rank run: rank 0 measures, every rank learns its collapse verdict.

    `due` follows rank 0's `Monitor.due` (every `eval_every` steps and at the first call of `fit`); `measure`
    broadcasts from rank 0 whether its guard asked to stop, and raises `CollapseError` on every rank if so.
    """

    def __init__(self, monitor: Monitor | None, config: MonitorConfig, device: torch.device, *,
                 started: bool) -> None:  # fmt: skip
        self.monitor, self.config, self.device, self.started = monitor, config, device, started

    @property
    def initial_rank(self) -> float | None:
        """Rank 0's reference rank (None on other ranks)."""
        return self.monitor.initial_rank if self.monitor is not None else None

    def due(self, step: int) -> bool:
        every = self.config.eval_every
        return every > 0 and (step % every == 0 or not self.started)

    def measure(self, trainer: Trainer) -> dict[str, float]:
        import torch.distributed as dist

        self.started = True
        out: dict[str, float] = {}
        message = ""
        if self.monitor is not None:
            try:
                out = self.monitor.measure(trainer)
            except CollapseError as err:
                message = str(err)
        flag = torch.tensor([1.0 if message else 0.0], device=self.device)
        dist.broadcast(flag, src=0)
        if flag.item():
            raise CollapseError(message or "rank 0's collapse guard stopped the run (its message is in its log)")
        return out


def build_monitor(cfg: PretrainConfig, *, rank: int, world: int, device: torch.device,
                  initial_rank: float | None) -> Monitor | SharedVerdict | None:  # fmt: skip
    """The monitor `fit` gets on this rank (None: off, or a rank > 0 of a run that does not stop on collapse).

    `initial_rank` is the student's rank at step 0 recorded in the checkpoint a run resumes from, so that a
    resumed run compares with the same reference.
    """
    settings = cfg.monitor
    if not settings.eval_every:
        return None
    config = MonitorConfig(eval_every=settings.eval_every, collapse_fraction=settings.collapse_fraction,
                           collapse_action=settings.collapse_action)  # fmt: skip
    monitor = None
    if rank == 0:
        extra = HeldOutProbe(settings.probe_store, patch_size=settings.probe_patch_size) if settings.probe_store \
            else None  # fmt: skip
        monitor = Monitor(config, fixed_batch(cfg), extra=extra)
        monitor.initial_rank = initial_rank
    if world > 1 and settings.collapse_action == "stop":
        return SharedVerdict(monitor, config, device, started=initial_rank is not None)
    return monitor


def plant_collapse(module: torch.nn.Module) -> None:
    """Test-only: from now on `module` outputs the mean of its output over batch and tokens for every input."""
    module.register_forward_hook(lambda m, args, out: out.mean(dim=(0, 1), keepdim=True).expand_as(out).clone())
    log.warning("monitor.plant_collapse_at_step (test-only): the student now outputs one vector for every input")


def tracked_metrics(metrics: Mapping[str, float], step: int) -> dict[int, dict[str, float]]:
    """A step report's metrics by the step they belong to: the monitor's `<name>_start` values (measured before
    the first step, reported with it) go to step 0 under `<name>`, the rest to `step`."""
    out: dict[int, dict[str, float]] = {step: {}}
    for name, value in metrics.items():
        if name.endswith("_start"):
            out.setdefault(0, {})[name.removesuffix("_start")] = value
        else:
            out[step][name] = value
    return out
