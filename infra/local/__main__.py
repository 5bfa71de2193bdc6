"""CLI of the local stack: `python -m infra.local up|down|status|env|catalogs`.

`up` builds the sample catalogs (from `data/samples`, plus the Sentinel-2 L1C scene when `../shared/data` is
beside the checkout), starts the servers on free loopback ports and prints the env file's path; it is idempotent.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from infra.local.samples import PROJECT_ROOT, build_sample_catalogs
from infra.local.stack import ALL_SERVICES, LocalStack, StackConfig

DEFAULT_STATE = PROJECT_ROOT / ".stack"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.local", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "env", "catalogs"])
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE, help="where state, logs and env live")
    parser.add_argument("--services", default=",".join(ALL_SERVICES), help="comma-separated subset to run")
    parser.add_argument("--ray-num-cpus", type=int, default=4, help="logical CPUs of the Ray head")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    services = tuple(s for s in args.services.split(",") if s)
    hrefs: tuple[Path, ...] = ()
    if args.command in ("up", "catalogs") and ("stac" in services or args.command == "catalogs"):
        hrefs = build_sample_catalogs(args.state_dir / "catalogs")
        if args.command == "catalogs":
            print("\n".join(str(h) for h in hrefs))
            return 0
    stack = LocalStack(StackConfig(state_dir=args.state_dir, services=services, stac_hrefs=hrefs,
                                   ray_num_cpus=args.ray_num_cpus))  # fmt: skip
    if args.command == "up":
        env = stack.up()
        for key in ("STAC_API_URL", "S3_ENDPOINT_URL", "MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
            if key in env:
                print(f"{key}={env[key]}")
        print(f"# env file: {stack.env_file} (source it: `. {stack.env_file}`)")
    elif args.command == "down":
        stack.down()
    elif args.command == "status":
        print(json.dumps(stack.status(), indent=2))
    elif args.command == "env":
        print("".join(f"export {k}={v}\n" for k, v in sorted(stack.env().items())), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
