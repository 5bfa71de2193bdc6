"""Ingest a STAC catalog into Zarr v3 shards: `anysat-stac ingest --config configs/ingest-demo.yaml`.

Also `python jobs/ingest.py …` and `ray job submit --working-dir . -- python jobs/ingest.py --config …` on any
Ray cluster. The STAC API of sensors without their own `stac_url` comes from `--stac-url` or `STAC_API_URL`; an
`s3://` store uses the usual AWS variables and `FSSPEC_S3_ENDPOINT_URL` for its endpoint. Before any search it
checks that each STAC URL is a STAC API with the configured collections and that the store takes a write.
Prints `shard k/N … ETA` lines and the summary as one JSON line (the last line of stdout). Exits 2 on an invalid
config or endpoint, 1 when nothing usable was produced.

`--incremental` ingests only what is new or updated since the last run (state under `<store>/state/`, see
docs/INGESTION.md); if another run holds the dataset's lease it prints who and until when and exits 0 without
writing. SIGTERM (e.g. `ray job stop`) ends the run like Ctrl-C, so the lease is released.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from dataclasses import asdict

from modelops.cli.common import (EXIT_CONFIG, EXIT_FAILED, add_config_args, config_epilog, connect_ray, fail,
                                 is_status, load_or_exit, quiet, quiet_ray_data)  # fmt: skip
from modelops.cli.preflight import check_collections, check_stac_api, check_store
from pipeline.errors import PipelineError
from pipeline.ingest.config import IngestConfig
from pipeline.logs import install_redaction

log = logging.getLogger("ingest")


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def preflight(config: IngestConfig, stac_url: str) -> list[str]:
    """Every problem the STAC APIs and the store show before any work, one line each."""
    by_url: dict[str, list[str]] = {}
    problems = []
    for sensor in config.sensors:
        url = sensor.stac_url or stac_url
        if not url:
            problems.append(f"sensor {sensor.modality!r} has no stac_url and no default STAC API was given "
                            "(--stac-url or STAC_API_URL)")  # fmt: skip
        else:
            by_url.setdefault(url, []).append(sensor.collection)
    for url, collections in by_url.items():
        api = check_stac_api(url)
        problems += api or check_collections(url, collections)
    return problems + check_store(config.store)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="anysat-stac ingest", description=__doc__, epilog=config_epilog(IngestConfig),
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_config_args(p, "configs/ingest-demo.yaml")
    p.add_argument("--stac-url", default=os.environ.get("STAC_API_URL", ""), help="default STAC API")
    p.add_argument("--no-ray", action="store_true", help="write shards in this process, without Ray")
    p.add_argument("--incremental", action="store_true", help="only what is new or updated since the last run")
    p.add_argument("--lease-ttl", type=float, default=600.0, help="seconds the dataset lease lasts unrenewed")
    p.add_argument("--no-preflight", action="store_true", help="skip the STAC API and store checks")
    return p


def main(argv: list[str] | None = None) -> int:
    install_redaction()  # no signed URL, token or credential in any log line or warning
    args = parser().parse_args(argv)
    quiet()
    config = load_or_exit(IngestConfig, args)
    if is_status(config):
        return config  # type: ignore[return-value]
    assert isinstance(config, IngestConfig)
    problems = [] if args.no_preflight else preflight(config, args.stac_url)
    for line in problems:
        print(f"preflight: {line}", file=sys.stderr)
    if problems:
        return EXIT_CONFIG
    from pipeline.ingest.incremental import run_incremental
    from pipeline.ingest.lease import LeaseHeld
    from pipeline.ingest.run import run_ingest

    if not args.no_ray:
        quiet_ray_data()
        connect_ray()
    signal.signal(signal.SIGTERM, _stop)
    sas = os.environ.get("PC_SAS_URL") or None  # Planetary Computer's token service (default: the public one)
    try:
        if args.incremental:
            summary = run_incremental(config, stac_url=args.stac_url, use_ray=not args.no_ray,
                                      lease_ttl_s=args.lease_ttl, pc_sas_url=sas)  # fmt: skip
        else:
            summary = run_ingest(config, stac_url=args.stac_url, use_ray=not args.no_ray, lease_ttl_s=args.lease_ttl,
                                 pc_sas_url=sas)  # fmt: skip
    except LeaseHeld as held:
        print(f"lease held: {held}", file=sys.stderr)
        print(json.dumps({"status": "lease_held", "holder": held.info.owner, "until": held.info.expires_at}))
        return 0
    except PipelineError as err:
        return fail("ingestion failed", err, EXIT_FAILED)
    except KeyboardInterrupt as stop:
        return fail("ingestion stopped", stop or "interrupted", 130)
    print(json.dumps(asdict(summary)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
