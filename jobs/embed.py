"""Embed one chip with a registered encoder: `python jobs/embed.py --model models:/anysat-demo@candidate`.

Loads the encoder from the MLflow registry (MLFLOW_TRACKING_URI) with `modelops.from_registry` — safetensors
weights and a JSON config, nothing pickled — reads the first batch of one chip from a store with the training
loader (same normalisation) and prints one JSON line: the chip id, the patch size and its tile embedding.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import torch

import modelops
from pipeline.load.loader import DatasetSource, LoaderConfig, iter_batches
from pipeline.logs import install_redaction


def main(argv: list[str] | None = None) -> int:
    install_redaction()  # no signed URL, token or credential in any log line or warning
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="registry URI, e.g. models:/anysat-demo@champion")
    parser.add_argument("--store", default="out/demo-dataset", help="dataset root written by jobs/ingest.py")
    parser.add_argument("--map", dest="mapping", action="append", default=["s2=s2", "s1=s1-asc"],
                        help="store group=model key (default: s2=s2, s1=s1-asc)")  # fmt: skip
    parser.add_argument("--patch-size", type=int, default=40, help="patch size in metres")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one JSON line on stdout, quiet stderr
    model = modelops.from_registry(args.model).eval()
    source = DatasetSource(args.store, modalities=dict(m.split("=", 1) for m in args.mapping))
    batch = next(iter_batches(LoaderConfig((source,), batch_size=1, patch_sizes_m=(args.patch_size,),
                                           shuffle_buffer=0)))  # fmt: skip
    x = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    with torch.no_grad():
        tile = model(x, patch_size=batch["patch_size"], output="tile")[0]  # [D]
    print(json.dumps({"model": args.model, "chip_id": batch["chip_id"][0], "patch_size": batch["patch_size"],
                      "dim": int(tile.shape[0]), "embedding": [round(float(v), 6) for v in tile]}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
