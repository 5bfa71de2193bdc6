"""`evaluate`: probe an encoder's frozen embeddings on a labelled store against raw pixels and random init.

    evaluate --model models:/anysat-demo@candidate --store out/landcover-dataset

Prints `embed step k/N … ETA` while embedding (stderr), then the probe table and one JSON line (stdout). With an
MLflow server (MLFLOW_TRACKING_URI or --tracking-uri) the evaluation is a run linked to the model version and its
scores become `eval.*` tags of the version (what `promote` gates on). Exit 2: bad arguments; 1: failure.
"""

from __future__ import annotations

import json
import sys

from modelops.cli._args import Parser, command, server_uri
from pipeline.logs import install_redaction

__all__ = ["main"]


@command
def main(argv: list[str] | None = None) -> int:
    install_redaction()  # no signed URL, token or credential in any log line or warning
    parser = Parser(prog="evaluate", description=__doc__)
    parser.add_argument("--model", required=True, help="models:/<name>@<alias>, models:/<name>/<version> or a dir")
    parser.add_argument("--store", required=True, help="labelled dataset root (ingested with a labels section)")
    parser.add_argument("--patch-size", type=int, default=0, help="patch size in model metres (0: 4x4 per chip)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--min-purity", type=float, default=0.6, help="majority-class share a chip needs")
    parser.add_argument("--min-valid", type=float, default=0.95, help="valid-pixel share a chip needs")
    parser.add_argument("--min-label-coverage", type=float, default=0.95, help="labelled-pixel share a chip needs")
    parser.add_argument("--block-chips", type=int, default=4, help="spatial blocks of N x N chips")
    parser.add_argument("--test-fraction", type=float, default=0.3, help="share of the blocks held out")
    parser.add_argument("--seed", type=int, default=0, help="chooses the test blocks and the random-init weights")
    parser.add_argument("--cs", type=float, nargs="+", default=None,
                        help="inverse regularisation strengths tried by the linear probe (default: the probe's)")
    parser.add_argument("--cv-folds", type=int, default=3, help="grouped folds choosing C and k")
    parser.add_argument("--tracking-uri", default="", help="MLflow server (default: MLFLOW_TRACKING_URI)")
    parser.add_argument("--experiment", default="anysat-evaluate")
    args = parser.parse_args(argv)
    uri = server_uri(args.tracking_uri, parser, required=args.model.startswith(("models:/", "runs:/")))
    from modelops.evaluate import EvalConfig, evaluate, format_table  # heavy imports after argument checks

    try:
        config = EvalConfig(model=args.model, store=args.store, patch_size=args.patch_size,
                            batch_size=args.batch_size, min_label_coverage=args.min_label_coverage,
                            min_valid=args.min_valid, min_purity=args.min_purity, block_chips=args.block_chips,
                            test_fraction=args.test_fraction, seed=args.seed, cv_folds=args.cv_folds,
                            **({"cs": tuple(args.cs)} if args.cs else {}),
                            tracking_uri=uri, experiment=args.experiment)  # fmt: skip
    except ValueError as err:
        parser.error(str(err))
    try:
        report = evaluate(config)
    except Exception as err:  # noqa: BLE001 - one line, no traceback, for every failure (store, registry, data)
        print(f"evaluate failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(format_table(report))
    print(json.dumps({"model": report.model.uri, "version": report.model.version, "score": round(report.score, 6),
                      "random_init": round(report.probes["random"]["linear"].balanced_accuracy, 6),
                      "raw_pixels": round(report.probes["raw"]["linear"].balanced_accuracy, 6),
                      "effective_rank": round(report.ranks["model"], 3), "run_id": report.run_id,
                      "n_train": report.n_train, "n_test": report.n_test}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
