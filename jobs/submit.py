"""`python jobs/submit.py -- python jobs/ingest.py …`: the `submit` command, a Ray job with short output (its options: modelops/cli/submit.py or `--help`)."""

from __future__ import annotations

import sys

from modelops.cli.submit import main

if __name__ == "__main__":
    sys.exit(main())
