"""`PretrainConfig`: one typed pretraining job — the model, the JEPA recipe, the data, the optimisation, the run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from anysat import AnySatConfig, Modality
from anysat.jepa import JepaConfig
from anysat.train import OptimConfig
from pipeline.config import to_dict
from pipeline.errors import ConfigError
from pipeline.load.loader import LoaderConfig

__all__ = ["ModelSpec", "MonitorSettings", "PretrainConfig", "RunSettings"]


@dataclass(frozen=True)
class ModelSpec:
    """The encoder in a job config: its size, its sensors and efficiency switches.

    Attributes:
        size: `tiny`, `small` or `base` (width, depth and heads, see anysat.config.SIZES).
        modalities: Official keys (`s2`, `s1-asc`, `l7`, … see anysat.modalities) or new sensors described
            in place: `{key, bands, res_m, temporal, subpatch_px, …}` (the fields of `anysat.Modality`).
        grad_checkpointing: Recompute L-TAE chunks and transformer blocks in the backward pass (less memory).
        ltae_chunk_pixels: Pixel time series per L-TAE chunk (bounds peak memory).
    """

    size: Literal["tiny", "small", "base"] = "tiny"
    modalities: tuple[str | Modality, ...] = ("s2", "s1-asc")
    grad_checkpointing: bool = False
    ltae_chunk_pixels: int = 512

    def anysat(self) -> AnySatConfig:
        """The `AnySatConfig` this spec describes (validated)."""
        return AnySatConfig.from_dict({**to_dict(self), "modalities": list(self.modalities)})


@dataclass(frozen=True)
class RunSettings:
    """Where and how the run happens.

    Attributes:
        name: Run name: checkpoints and results go to `storage/name/` (never reused without `--resume`).
        storage: Root of the runs: a local path or `s3://bucket/prefix`.
        workers: Ray Train workers (DDP ranks).
        use_gpu: One GPU per worker (nccl); CPU workers use gloo.
        cpus_per_worker: CPUs reserved per worker.
        placement: Ray placement of the workers: `PACK` on few nodes or `SPREAD` over many.
        max_failures: Restarts of a failed worker group from the last checkpoint.
        checkpoint_every: Optimiser steps between checkpoints.
        keep_checkpoints: Checkpoints kept (older ones are deleted).
        log_every: Steps between printed step lines and logged metrics.
        seed: Seed of the initial weights.
        experiment: MLflow experiment name.
        registered_model: Registry name the encoder is registered under (`@candidate`); empty = not registered.
        fail_at_step: Test-only: the last rank exits abruptly after this step in a run that did not start from
            a checkpoint (proves the restart from the last checkpoint); 0 = off.
    """

    name: str = "pretrain"
    storage: str = "out/runs"
    workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 0.5
    placement: Literal["PACK", "SPREAD"] = "PACK"
    max_failures: int = 2
    checkpoint_every: int = 10
    keep_checkpoints: int = 2
    log_every: int = 1
    seed: int = 0
    experiment: str = "anysat-pretrain"
    registered_model: str = "anysat-pretrain"
    fail_at_step: int = 0

    def __post_init__(self) -> None:
        if self.workers < 1 or self.cpus_per_worker <= 0 or self.keep_checkpoints < 1 or self.log_every < 1:
            raise ConfigError("run: workers, cpus_per_worker, keep_checkpoints and log_every must be positive")


@dataclass(frozen=True)
class MonitorSettings:
    """The in-loop collapse monitor (rank 0; see docs/TRAINING.md, "Watching for collapse in a run").

    Attributes:
        eval_every: Steps between measurements of the effective rank (RankMe) and per-dimension std of the
            student's and the EMA target's fused patch tokens on one fixed batch (also measured before the first
            step); logged to MLflow and shown in the step line. 0 = off.
        batch_size: Chips of the fixed batch: the first batch of the datasets in order, unshuffled, at the first
            of `data.patch_sizes_m`.
        collapse_fraction: Collapse = the student's effective rank below this fraction of its value at step 0.
        collapse_action: `warn` (a `REPRESENTATION COLLAPSE` warning, training goes on) or `stop` (the job ends
            with that message, exit status 3, and the MLflow run is marked FAILED).
        probe_store: A labelled store (e.g. written with configs/ingest-landcover.yaml) whose held-out spatial
            blocks score a linear probe of the student's embeddings at every measurement (`probe_balanced_accuracy`,
            the probe of jobs/evaluate.py); empty = no probe. The model must have the store's modalities.
        probe_patch_size: Patch size (model metres) of the probe's embeddings; 0 = 4x4 patches per chip.
        plant_collapse_at_step: Test-only: from this step on the student's encoder outputs one vector for every
            input (a planted collapse that proves the guard fires); 0 = off.
    """

    eval_every: int = 50
    batch_size: int = 16
    collapse_fraction: float = 0.5
    collapse_action: Literal["warn", "stop"] = "warn"
    probe_store: str = ""
    probe_patch_size: int = 0
    plant_collapse_at_step: int = 0

    def __post_init__(self) -> None:
        if self.eval_every < 0 or self.batch_size < 1 or self.probe_patch_size < 0 or self.plant_collapse_at_step < 0:
            raise ConfigError("monitor: eval_every, probe_patch_size and plant_collapse_at_step must be >= 0, "
                              "batch_size >= 1")  # fmt: skip
        if not 0 < self.collapse_fraction < 1:
            raise ConfigError(f"monitor.collapse_fraction must be in (0, 1), got {self.collapse_fraction}")


@dataclass(frozen=True)
class PretrainConfig:
    """A pretraining job. Validated on construction: the data's model keys must be modalities of the model.

    Attributes:
        data: The datasets (stores written by the ingest job) and how batches are drawn from them.
        model: The encoder (`model.anysat()` is its AnySatConfig).
        jepa: The JEPA recipe (masks, predictor, MIL-NCE).
        optim: The optimisation (AdamW, schedule, EMA).
        run: Where and how the run happens.
        monitor: The in-loop collapse monitor and its guard (on by default: every run reports its rank).
    """

    data: LoaderConfig
    model: ModelSpec = field(default_factory=ModelSpec)
    jepa: JepaConfig = field(default_factory=JepaConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunSettings = field(default_factory=RunSettings)
    monitor: MonitorSettings = field(default_factory=MonitorSettings)

    def __post_init__(self) -> None:
        known = {m.key for m in self.model.anysat().modalities}
        for src in self.data.datasets:
            unknown = sorted(set(src.modalities.values()) - known)
            if unknown:
                raise ConfigError(f"dataset {src.name}: model keys {unknown} are not among model.modalities "
                                 f"{sorted(known)}; add them to model.modalities or map other store groups")
