"""JEPA pretraining of AnySat from Zarr shards: `anysat-stac pretrain --config configs/pretrain-demo.yaml`.

Also `python jobs/pretrain.py …` and `ray job submit --working-dir . -- python jobs/pretrain.py --config …` on
any Ray cluster (Ray Train TorchTrainer, DDP: gloo on CPU, nccl on GPU); `--no-ray` trains in this process.
Every result lives under `run.storage/run.name/` (local or s3://, endpoint from AWS_ENDPOINT_URL): checkpoints,
`summary.json`, `loss_curve.png`, `config.json`, the datasets' statistics. `--resume` continues from the latest
checkpoint, and a failed worker restarts from it by itself (`run.max_failures`). MLflow (MLFLOW_TRACKING_URI)
gets the config, the datasets' manifest and statistics, metrics and the loss curve, and the encoder is
registered as `run.registered_model@candidate`; without a tracking URI tracking is off (no local mlflow.db),
and an unreachable server is reported in seconds while training goes on. Prints `step k/N … ETA` lines; every
`monitor.eval_every` steps they (and MLflow) also get the collapse monitor's effective ranks and stds (and the
probe on `monitor.probe_store`), and a rank below `monitor.collapse_fraction` of its step-0 value is a loud
`REPRESENTATION COLLAPSE` warning, or with `monitor.collapse_action: stop` the end of the run.
Exits 2 on an invalid config, dataset, probe store or storage, 1 when training fails, 3 when the collapse guard
stops the run (the MLflow run is then FAILED, with tag `stopped_by: collapse_guard`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from anysat.train import CollapseError
from modelops.cli.common import (EXIT_CONFIG, EXIT_FAILED, add_config_args, config_epilog, connect_ray, fail,
                                 is_status, load_or_exit, quiet, quiet_ray_data)  # fmt: skip
from modelops.cli.preflight import check_store
from modelops.pretrain_config import PretrainConfig
from pipeline.config import to_dict
from pipeline.errors import PipelineError
from pipeline.logs import install_redaction

log = logging.getLogger("pretrain")
EXIT_COLLAPSE = 3  # the collapse guard stopped the run (monitor.collapse_action: stop)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="anysat-stac pretrain", description=__doc__,
                                epilog=config_epilog(PretrainConfig),
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_config_args(p, "configs/pretrain-demo.yaml")
    p.add_argument("--no-ray", action="store_true", help="train in this process, without Ray")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    return p


def main(argv: list[str] | None = None) -> int:
    install_redaction()  # no signed URL, token or credential in any log line or warning
    args = parser().parse_args(argv)
    quiet()
    cfg = load_or_exit(PretrainConfig, args)
    if is_status(cfg):
        return cfg  # type: ignore[return-value]
    assert isinstance(cfg, PretrainConfig)
    from modelops import pretrain as wiring
    from modelops import run_storage
    from modelops.monitoring import check_probe_store
    from modelops.tracking import Tracker, flatten

    try:
        if args.no_ray and cfg.run.storage.startswith("s3://"):
            raise PipelineError("--no-ray writes checkpoints to a local run.storage; use Ray for s3:// storage")
        problems = check_store(cfg.run.storage)
        if problems:
            raise PipelineError(problems[0])
        dataset_params, stats = wiring.dataset_facts(cfg.data)
        check_probe_store(cfg)
        latest = run_storage.existing_checkpoint(cfg)
        if latest and not args.resume:
            raise PipelineError(f"run {cfg.run.name!r} already has checkpoints ({latest}); pass --resume or change "
                                "run.name")  # fmt: skip
    except (OSError, PipelineError) as err:
        return fail("invalid config", err, EXIT_CONFIG)
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        print("tracking off: no MLFLOW_TRACKING_URI given (nothing is written to a local mlflow.db)", file=sys.stderr)
    tracker = Tracker(uri, experiment=cfg.run.experiment)
    tracker.start(run_name=cfg.run.name, tags={"job": "pretrain", "resumed": str(bool(latest))})
    tracker.log_params(flatten(to_dict(cfg)) | dataset_params)
    wiring.log_dataset_stats(cfg, stats, tracker)
    if not args.no_ray:
        quiet_ray_data()
        connect_ray()
    run = wiring.run_plain if args.no_ray else wiring.run_ray
    try:
        final = run(cfg, restore=latest, tracking=(tracker.uri, tracker.run_id))
    except CollapseError as err:  # before RuntimeError, which it is
        tracker.set_tags({"stopped_by": "collapse_guard"})
        tracker.end("FAILED")
        return fail("training stopped by the collapse guard", err, EXIT_COLLAPSE)
    except (RuntimeError, PipelineError) as err:
        tracker.end("FAILED")
        return fail("training failed", err, EXIT_FAILED)
    except KeyboardInterrupt:
        tracker.end("KILLED")
        return fail("training stopped", "interrupted; continue with --resume", 130)
    checkpoint = f"s3://{final}" if cfg.run.storage.startswith("s3://") else str(final)
    with run_storage.local_checkpoint(cfg, final) as local:
        summary = wiring.finish(cfg, local, tracker, checkpoint=checkpoint)
    tracker.end("FINISHED")
    if uri and not tracker.active:
        print(f"MLflow was unreachable ({tracker.disabled_reason}); training completed without tracking",
              file=sys.stderr)  # fmt: skip
    elif summary.get("tracking_gap"):
        gap = summary["tracking_gap"]
        print(f"MLflow lacks the metrics of {len(gap)} step(s) ({gap[0]}-{gap[-1]}) logged during an outage",
              file=sys.stderr)  # fmt: skip
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
