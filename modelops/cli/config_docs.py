"""docs/CONFIG.md from the schema: `python -m modelops.cli.config_docs [--check]`.

Every key of `IngestConfig` and `PretrainConfig` with its type, default and description, read from the config
dataclasses and their docstrings (`pipeline.config_reference`). `--check` exits 1 when the file is not current.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from modelops.pretrain_config import PretrainConfig
from pipeline.config_reference import reference
from pipeline.ingest.config import IngestConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "CONFIG.md"
HEADER = """# Configuration reference

Generated from the config dataclasses by `python -m modelops.cli.config_docs`; do not edit by hand (a test
checks that this file is current). A job reads one YAML file (`--config`, see `configs/`) plus `--set
key.sub=value` overrides (values are YAML: `--set sensors.0.max_dates=2`, `--set bbox=[13.7,48.2,13.8,48.3]`);
`--print-config` prints the resolved config with every default. Validation is strict and happens before any
request: integers must be integers (`yes` is a boolean, not 1), numbers must be numbers (an integer is a valid
number), unknown keys are refused, and every message names the key path (`IngestConfig.chips_per_shard:
expected an integer, got True`); the job then exits with status 2. Keys under a list are written `key[].sub`.
Dates are RFC 3339 (`2017-06-01T00:00:00Z`); an interval is `start/end` and either end may be open (`..`).
"""


def render() -> str:
    """The whole reference document."""
    parts = [HEADER,
             reference(IngestConfig, title="Ingestion (`anysat-stac ingest`, `jobs/ingest.py`): IngestConfig"),
             reference(PretrainConfig, title="Pretraining (`anysat-stac pretrain`, `jobs/pretrain.py`): PretrainConfig")]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only check that docs/CONFIG.md is current")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = DOC.read_text() if DOC.exists() else ""
        if current != text:
            print(f"{DOC} is out of date; run python -m modelops.cli.config_docs", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
