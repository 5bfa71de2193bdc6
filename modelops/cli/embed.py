"""`embed`: embed every chip of a store with an encoder into GeoParquet (tile embeddings) or Zarr (dense).

    embed --model models:/anysat-demo@champion --store out/landcover-dataset --out out/embeddings.parquet
    embed --model … --store … --out out/embeddings.zarr        # patch-level embeddings with CRS and x/y
    embed --model … --store …                                  # no --out: one JSON line for the first chip

Store groups are fed to the model keys of the same name (`s1` to `s1-asc`) unless `--map group=key` says
otherwise; a store with any subset of the model's modalities works. With an MLflow server the export is a run
with a PCA-RGB map of the dense embeddings. Prints `embed step k/N … ETA` on stderr and one JSON line on stdout.
Exit 2: bad arguments; 1: failure.
"""

from __future__ import annotations

import json
import os
import sys

from modelops.cli._args import Parser, command, pairs, server_uri
from pipeline.logs import install_redaction

__all__ = ["main"]


@command
def main(argv: list[str] | None = None) -> int:
    install_redaction()  # no signed URL, token or credential in any log line or warning
    parser = Parser(prog="embed", description=__doc__)
    parser.add_argument("--model", required=True, help="models:/<name>@<alias>, models:/<name>/<version> or a dir")
    parser.add_argument("--store", default="out/demo-dataset", help="dataset root written by the ingestion")
    parser.add_argument("--out", default="", help="x.parquet (GeoParquet) or x.zarr (dense); empty: first chip")
    parser.add_argument("--map", dest="mapping", action="append", help="store group=model key (repeatable)")
    parser.add_argument("--patch-size", type=int, default=0, help="patch size in model metres (0: 4x4 per chip)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--tracking-uri", default="", help="MLflow server for the PCA map run (default: env)")
    args = parser.parse_args(argv)
    mapping = pairs(args.mapping, parser, "--map")
    if args.out and not args.out.rstrip("/").endswith((".parquet", ".zarr")):
        parser.error(f"--out must end in .parquet or .zarr, got {args.out!r}")
    if args.patch_size < 0 or args.batch_size < 1:
        parser.error("--patch-size must be >= 0 and --batch-size >= 1")
    uri = server_uri(args.tracking_uri, parser, required=args.model.startswith(("models:/", "runs:/")))
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one JSON line on stdout, quiet stderr
    try:
        if args.out:
            from modelops.export import export_embeddings

            done = export_embeddings(args.model, args.store, args.out, patch_size=args.patch_size,
                                     batch_size=args.batch_size, mapping=mapping or None,
                                     tracking_uri=uri)  # fmt: skip
            print(json.dumps({"model": args.model, "out": done.out, "rows": done.rows, "patch_size": done.patch_size,
                              "mapping": dict(done.mapping), "run_id": done.run_id}))  # fmt: skip
            return 0
        from modelops.embeddings import embed_store, load_encoder

        model, _ = load_encoder(args.model, tracking_uri=uri or None)
        emb = embed_store(args.store, {"model": model}, patch_size=args.patch_size, batch_size=args.batch_size,
                          mapping=mapping or None)  # fmt: skip
    except Exception as err:  # noqa: BLE001 - one line, no traceback, for every failure (store, registry, data)
        print(f"embed failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    tile = emb.tiles["model"][0]
    print(json.dumps({"model": args.model, "chip_id": emb.chip_ids[0], "patch_size": emb.patch_size,
                      "dim": int(tile.shape[0]), "embedding": [round(float(v), 6) for v in tile]}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
