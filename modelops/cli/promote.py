"""`promote`: move a registered model's `@champion` only when the candidate's recorded evaluation is at least the
champion's.

    promote --name anysat-demo [--version N] [--force]

The score is the `eval.balanced_accuracy` tag that `evaluate` writes on each model version. Without `--version`
the `@candidate` version is considered. Prints one JSON line; exit 0 promoted (or already champion), 3 refused
by the gate (the reason on stderr), 2 bad arguments, 1 failure (no such model, alias or version).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

from modelops.cli._args import Parser, command, server_uri
from pipeline.logs import install_redaction

__all__ = ["main"]

REFUSED = 3


@command
def main(argv: list[str] | None = None) -> int:
    install_redaction()  # no signed URL, token or credential in any log line or warning
    parser = Parser(prog="promote", description=__doc__)
    parser.add_argument("--name", required=True, help="registered model name")
    parser.add_argument("--version", type=int, default=None, help="version to promote (default: the candidate)")
    parser.add_argument("--alias", default="champion", help="alias to move")
    parser.add_argument("--from-alias", default="candidate", help="alias whose version is promoted by default")
    parser.add_argument("--metric", default="eval.balanced_accuracy", help="model-version tag compared")
    parser.add_argument("--force", action="store_true", help="promote even when the gate refuses (recorded)")
    parser.add_argument("--tracking-uri", default="", help="MLflow server (default: MLFLOW_TRACKING_URI)")
    args = parser.parse_args(argv)
    uri = server_uri(args.tracking_uri, parser)
    from mlflow.exceptions import MlflowException

    from modelops.registry import PromotionRefused, promote

    try:
        result = promote(args.name, tracking_uri=uri, version=args.version, alias=args.alias,
                         source_alias=args.from_alias, metric=args.metric, force=args.force)  # fmt: skip
    except PromotionRefused as err:
        print(f"promotion refused: {err} (--force overrides)", file=sys.stderr)
        return REFUSED
    except MlflowException as err:
        print(f"promotion failed: {err.message if hasattr(err, 'message') else err}", file=sys.stderr)
        return 1
    if result.forced:
        print(f"promotion FORCED over the gate: {result.reason}", file=sys.stderr)
    print(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
