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

from modelops import pretrain as wiring
from modelops.pretrain_config import PretrainConfig
from modelops.tracking import Tracker, flatten
from pipeline.config import load_config, to_dict
from pipeline.errors import PipelineError
from pipeline.logs import install_redaction


def main(argv: list[str] | None = None) -> int:
    install_redaction()  # no signed URL, token or credential in any log line or warning
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
    out_dir = wiring.output_dir(cfg)  # nothing is left under the system's temp folder
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
