"""Run incremental ingestion on an interval, each run a `ray job submit` (as a cluster schedule would).

    python jobs/ingest_every.py --config configs/ingest-demo.yaml --interval 3600 [--set store=…] [--max-runs N]
        [--run-timeout S] [--address URL]

What it does, how Ctrl-C stops it and how no run waits for ever: `modelops.cli.ingest_every` (or `--help`).
"""

import sys

from modelops.cli.ingest_every import main

if __name__ == "__main__":
    sys.exit(main())
