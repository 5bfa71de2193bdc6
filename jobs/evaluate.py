"""`python jobs/evaluate.py …`: the `evaluate` command (its options: modelops/cli/evaluate.py or `--help`); runs under `ray job submit` too."""

from __future__ import annotations

import sys

from modelops.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
