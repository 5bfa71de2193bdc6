"""Move a registered model's `champion` alias: `python jobs/promote.py --name anysat-demo [--version N]`.

Without `--version` the version the `candidate` alias points at is promoted. Talks to MLFLOW_TRACKING_URI.
Exits 1 when the model, alias or version does not exist.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from mlflow.exceptions import MlflowException

from modelops.registry import promote
from pipeline.logs import install_redaction


def main(argv: list[str] | None = None) -> int:
    install_redaction()  # no signed URL, token or credential in any log line or warning
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="registered model name")
    parser.add_argument("--version", type=int, default=None, help="version to promote (default: the candidate)")
    parser.add_argument("--alias", default="champion", help="alias to move")
    parser.add_argument("--from-alias", default="candidate", help="alias whose version is promoted by default")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", ""), help="MLflow server")
    args = parser.parse_args(argv)
    if not args.tracking_uri:
        parser.error("no MLflow server: set MLFLOW_TRACKING_URI or pass --tracking-uri")
    try:
        version = promote(args.name, tracking_uri=args.tracking_uri, version=args.version, alias=args.alias,
                          source_alias=args.from_alias)  # fmt: skip
    except MlflowException as err:
        print(f"promotion failed: {err}", file=sys.stderr)
        return 1
    print(json.dumps({"name": args.name, "alias": args.alias, "version": version}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
