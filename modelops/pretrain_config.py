"""`PretrainConfig`: one typed pretraining job — the model, the JEPA recipe, the data, the optimisation, the run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from anysat import AnySatConfig
from anysat.jepa import JepaConfig
from anysat.train import OptimConfig
from pipeline.config import to_dict
from pipeline.load.loader import LoaderConfig

__all__ = ["ModelSpec", "PretrainConfig", "RunSettings"]


@dataclass(frozen=True)
class ModelSpec:
    """The encoder in a job config: official modality keys (see anysat.modalities) and efficiency switches."""

    size: Literal["tiny", "small", "base"] = "tiny"
    modalities: tuple[str, ...] = ("s2", "s1-asc")
    grad_checkpointing: bool = False
    ltae_chunk_pixels: int = 512

    def anysat(self) -> AnySatConfig:
        """The `AnySatConfig` this spec describes (validated)."""
        return AnySatConfig.from_dict({**to_dict(self), "modalities": list(self.modalities)})


@dataclass(frozen=True)
class RunSettings:
    """Where and how the run happens. `fail_at_step` is test-only: the last rank exits abruptly after that step
    in a run that did not start from a checkpoint (proves the restart from the last checkpoint); 0 = off."""

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
            raise ValueError("run: workers, cpus_per_worker, keep_checkpoints and log_every must be positive")


@dataclass(frozen=True)
class PretrainConfig:
    """A pretraining job: the model (`model.anysat()` is its AnySatConfig), the JEPA recipe, the data, the
    optimisation and the run. Validated on construction: the data's model keys must be modalities of the model."""

    data: LoaderConfig
    model: ModelSpec = field(default_factory=ModelSpec)
    jepa: JepaConfig = field(default_factory=JepaConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunSettings = field(default_factory=RunSettings)

    def __post_init__(self) -> None:
        known = {m.key for m in self.model.anysat().modalities}
        for src in self.data.datasets:
            unknown = sorted(set(src.modalities.values()) - known)
            if unknown:
                raise ValueError(f"dataset {src.name}: model keys {unknown} are not among model.modalities "
                                 f"{sorted(known)}; add them to model.modalities or map other store groups")
