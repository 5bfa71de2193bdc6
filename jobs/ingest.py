"""Ingest a STAC catalog into Zarr v3 shards: `python jobs/ingest.py --config configs/ingest-demo.yaml`.

Also runs as `ray job submit --working-dir . -- python jobs/ingest.py --config …` on any Ray cluster. The STAC
API of sensors without their own `stac_url` comes from `--stac-url` or `STAC_API_URL`; an `s3://` store uses
the usual AWS variables and `FSSPEC_S3_ENDPOINT_URL` for its endpoint. Exits 2 on an invalid config, 1 when
nothing usable was produced.

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

from pipeline.config import load_config
from pipeline.ingest.config import IngestConfig
from pipeline.errors import PipelineError
from pipeline.ingest.incremental import run_incremental
from pipeline.ingest.run import run_ingest
from pipeline.ingest.lease import LeaseHeld
from pipeline.logs import install_redaction


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    install_redaction()  # no signed URL, token or credential in any log line or warning
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML file (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key.sub=value override")
    parser.add_argument("--stac-url", default=os.environ.get("STAC_API_URL", ""), help="default STAC API")
    parser.add_argument("--no-ray", action="store_true", help="write shards in this process, without Ray")
    parser.add_argument("--incremental", action="store_true", help="only what is new or updated since the last run")
    parser.add_argument("--lease-ttl", type=float, default=600.0, help="seconds the dataset lease lasts unrenewed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("botocore", "aiobotocore", "s3fs", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        config = load_config(IngestConfig, args.config, args.overrides)
    except (ValueError, OSError) as err:
        print(f"invalid config: {err}", file=sys.stderr)
        return 2
    if not args.no_ray and os.environ.get("RAY_ADDRESS", "").startswith("http"):
        # a dashboard URL (for `ray job submit`) is not a cluster address for ray.init()
        os.environ["RAY_ADDRESS"] = os.environ.get("RAY_GCS_ADDRESS", "")
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
        print(json.dumps({"status": "lease_held", "holder": held.info.owner, "until": held.info.expires_at}, indent=2))
        return 0
    except PipelineError as err:
        print(f"ingestion failed: {err}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(summary), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
