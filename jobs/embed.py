"""`python jobs/embed.py …`: the `embed` command (its options: modelops/cli/embed.py or `--help`); runs under `ray job submit` too."""

from __future__ import annotations

import sys

from modelops.cli.embed import main

if __name__ == "__main__":
    sys.exit(main())
