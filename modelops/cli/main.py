"""`anysat-stac <command> …`: one installed command over the jobs (`[project.scripts]` in pyproject.toml).

Each command is `modelops.cli.<command>:main`, imported only when called (so `--help` is fast and a command
whose module is not in this version says so in one line).
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "ingest": "STAC → frozen manifest → chips → Zarr v3 shards (docs/INGESTION.md)",
    "pretrain": "JEPA pretraining from the shards, checkpoints, MLflow, the encoder registered (docs/TRAINING.md)",
    "evaluate": "probe a registered encoder on a labelled store",
    "embed": "embed chips with a registered encoder",
    "promote": "move a registered model's @champion alias",
    "inspect": "what a store holds: shards, chips, sensors, dates, rejects, statistics, manifests",
    "stack": "the local stack of real servers: up | down | status | env | catalogs",
    "submit": "run a command as a Ray job (as `ray job submit --working-dir .`), with short output",
}


def usage() -> str:
    rows = "\n".join(f"  {name:<9} {text}" for name, text in COMMANDS.items())
    return (f"usage: anysat-stac <command> [options]\n\ncommands:\n{rows}\n\n`anysat-stac <command> --help` lists "
            "its options; config keys: docs/CONFIG.md or `--print-config`.")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"anysat-stac: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name = f"modelops.cli.{command}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        print(f"anysat-stac {command}: not available in this version ({module_name} does not exist); from a "
              f"checkout, `python jobs/{command}.py --help` may have it", file=sys.stderr)  # fmt: skip
        return 2
    sys.argv[0] = f"anysat-stac {command}"
    return int(module.main(rest))


if __name__ == "__main__":
    sys.exit(main())
