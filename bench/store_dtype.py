"""Benchmark: the same scene stored as uint16 (packed DN, CF scale/offset) and as float32, side by side.

The Sentinel-2 L1C scene ingested twice in this run (`SensorSource.pack` on and off, 64 px chips, 64 chips per
shard, the recommended size): store size (the `s2/data` arrays, and everything), the loader's samples/s
(`iter_batches`, batch 16, two epochs, best of `--repeats`, the two stores alternated), and the read path alone
(fetch + zstd decode + unpack of `s2/data` for every shard, one thread). The first batches of both stores are
checked identical before timing.

    python bench/store_dtype.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _l1c_store import SCENE, du, ingest_l1c, loader_rate  # noqa: E402


def decode_rate(url: str) -> float:
    """Samples/s of fetching and decoding `s2/data` of every shard (unpacked to float32), one thread."""
    from pipeline.store.shard_reader import read_arrays
    from pipeline.store.shards import StoreLayout, read_index

    start, n = time.perf_counter(), 0
    for shard in read_index(StoreLayout(url))["url"]:
        n += len(read_arrays(shard, ["s2/data"])["s2/data"])
    return n / (time.perf_counter() - start)


def same_first_batch(a: str, b: str) -> bool:
    from pipeline.load.loader import DatasetSource, LoaderConfig, iter_batches

    batches = [next(iter(iter_batches(LoaderConfig((DatasetSource(u, name="l1c"),), batch_size=16))))
               for u in (a, b)]  # fmt: skip
    return bool(batches[0]["chip_id"] == batches[1]["chip_id"] and (batches[0]["s2"] == batches[1]["s2"]).all())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chips-per-shard", type=int, default=64)
    args = parser.parse_args()
    if not SCENE.is_dir():
        print(f"the L1C scene is not present ({SCENE}); nothing to measure", file=sys.stderr)
        return
    work = Path(tempfile.mkdtemp(prefix="bench-dtype-"))
    rows: dict[str, dict[str, Any]] = {}
    try:
        stores = ingest_l1c(work, {"uint16": {"pack": True, "chips_per_shard": args.chips_per_shard},
                                   "float32": {"pack": False, "chips_per_shard": args.chips_per_shard}})  # fmt: skip
        assert same_first_batch(stores["uint16"], stores["float32"]), "the two stores deliver different batches"
        for name, url in stores.items():
            rows[name] = {"data_mb": du(url, "/s2/data/c/") / 1e6, "store_mb": du(url) / 1e6,
                          "samples_per_s": 0.0, "decode_samples_per_s": 0.0}  # fmt: skip
        for _ in range(args.repeats):
            for name, url in stores.items():
                rate = loader_rate(url)
                rows[name]["samples_per_s"] = max(rows[name]["samples_per_s"], rate["samples_per_s"])
                rows[name]["samples"] = rate["samples"]
                rows[name]["decode_samples_per_s"] = max(rows[name]["decode_samples_per_s"], decode_rate(url))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratios = {k: round(rows["uint16"][k] / rows["float32"][k], 2)
              for k in ("data_mb", "store_mb", "samples_per_s", "decode_samples_per_s")}  # fmt: skip
    print(f"{'store':<10} {'s2/data MB':>11} {'store MB':>9} {'loader samples/s':>17} {'decode samples/s':>17}")
    for name, r in rows.items():
        print(f"{name:<10} {r['data_mb']:>11.2f} {r['store_mb']:>9.2f} {r['samples_per_s']:>17.1f} "
              f"{r['decode_samples_per_s']:>17.1f}")  # fmt: skip
    print(f"{'uint16/f32':<10} {ratios['data_mb']:>11} {ratios['store_mb']:>9} {ratios['samples_per_s']:>17} "
          f"{ratios['decode_samples_per_s']:>17}")  # fmt: skip
    print(json.dumps({"bench": "store_dtype", "machine": platform.machine(), "cpus": os.cpu_count(),
                      "python": platform.python_version(), "chips_per_shard": args.chips_per_shard,
                      "rows": rows, "ratios": ratios}))  # fmt: skip


if __name__ == "__main__":
    main()
