"""Ingest a STAC catalog into Zarr v3 shards: `python jobs/ingest.py --config configs/ingest-demo.yaml`.

The same as `anysat-stac ingest` (see `modelops.cli.ingest` or `--help`); also runs as
`ray job submit --working-dir . -- python jobs/ingest.py --config …` on any Ray cluster.
"""

import sys

from modelops.cli.ingest import main

if __name__ == "__main__":
    sys.exit(main())
