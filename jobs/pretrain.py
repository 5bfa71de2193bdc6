"""JEPA pretraining of AnySat from Zarr shards: `python jobs/pretrain.py --config configs/pretrain-demo.yaml`.

Also `ray job submit --working-dir . -- python jobs/pretrain.py --config …` on any Ray cluster (Ray Train
TorchTrainer, DDP: gloo on CPU, nccl on GPU); `--no-ray` trains in this process. Checkpoints go to
`run.storage/run.name` (local or s3://, endpoint from AWS_ENDPOINT_URL); `--resume` continues from the latest,
and a failed worker restarts from it by itself (`run.max_failures`). MLflow (MLFLOW_TRACKING_URI) gets the
config, the datasets' manifest and statistics, metrics and the loss curve, and the encoder is registered as
`run.registered_model@candidate`; an unreachable server is reported and training goes on.
Exits 2 on an invalid config, 1 when training fails.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from anysat import AnySatConfig
from anysat.jepa import JepaConfig
from anysat.tracking import Tracker, flatten
from anysat.train import OptimConfig
from pipeline.config import load_config, to_dict
from pipeline.errors import PipelineError
from pipeline.loader import LoaderConfig

import pretrain_run as wiring  # beside this file (sys.path[0] when run as a script)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML file (see configs/pretrain-demo.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key.sub=value override")
    parser.add_argument("--no-ray", action="store_true", help="train in this process, without Ray")
    parser.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(PretrainConfig, args.config, args.overrides)
        if args.no_ray and cfg.run.storage.startswith("s3://"):
            raise ValueError("--no-ray writes checkpoints to a local run.storage; use Ray for s3:// storage")
        dataset_params, stats = wiring.dataset_facts(cfg.data)
        latest = wiring.existing_checkpoint(cfg)
        if latest and not args.resume:
            raise ValueError(f"run {cfg.run.name!r} already has checkpoints ({latest}); pass --resume or change run.name")
    except (ValueError, OSError, PipelineError) as err:
        print(f"invalid config: {err}", file=sys.stderr)
        return 2
    tracker = Tracker(os.environ.get("MLFLOW_TRACKING_URI"), experiment=cfg.run.experiment)
    tracker.start(run_name=cfg.run.name, tags={"job": "pretrain", "resumed": str(bool(latest))})
    tracker.log_params(flatten(to_dict(cfg)) | dataset_params)
    out_dir = Path(tempfile.mkdtemp(prefix="anysat-pretrain-"))
    for name, table in stats.items():
        (out_dir / f"stats-{name}.json").write_text(json.dumps(table, sort_keys=True))
        tracker.log_artifact(out_dir / f"stats-{name}.json", artifact_path="datasets")
    run = wiring.run_plain if args.no_ray else wiring.run_ray
    try:
        final = run(cfg, restore=latest, tracking=(tracker.uri, tracker.run_id))
    except (RuntimeError, PipelineError) as err:
        tracker.end("FAILED")
        print(f"training failed: {err}", file=sys.stderr)
        return 1
    summary = wiring.finish(cfg, final, tracker, out_dir=out_dir)
    tracker.end("FINISHED")
    if not tracker.active:
        print(f"MLflow was unreachable ({tracker.disabled_reason}); training completed without tracking",
              file=sys.stderr)  # fmt: skip
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
