"""`python jobs/promote.py …`: the `promote` command (its options: modelops/cli/promote.py or `--help`); runs under `ray job submit` too."""

from __future__ import annotations

import sys

from modelops.cli.promote import main

if __name__ == "__main__":
    sys.exit(main())
