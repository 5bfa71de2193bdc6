"""Benchmark: the loader reading the same store from local disk and from S3 (the local S3 server), side by side.

The Sentinel-2 L1C scene ingested once in this run (64 px chips, `--chips-per-shard` 64, the recommended size),
uploaded to the stack's S3 server started on 127.0.0.1 (`infra.local`, the server `make stack` runs), then read
alternately from both places by `iter_batches` (batch 16, two epochs, best of `--repeats`). Also per shard, where
the time goes: the metadata round trip, the chunk fetch (bytes, MB/s), decoding, each alone, local and S3 (a
cold read: nothing kept), and the S3 server's GETs per shard and CPU per GET while the loader reads. The loader
keeps committed shards' metadata and per-chip arrays, so from its second epoch on a packed shard costs one GET.

    python bench/loader_s3.py [--repeats 3] [--chips-per-shard 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _l1c_store import SCENE, ingest_l1c, loader_rate  # noqa: E402

NAMES = ("band", "data", "valid", "date_mask", "doy")


def _upload(local: str, env: dict[str, str]) -> tuple[str, dict[str, Any]]:
    import s3fs

    options = {"key": env["AWS_ACCESS_KEY_ID"], "secret": env["AWS_SECRET_ACCESS_KEY"],
               "endpoint_url": env["AWS_ENDPOINT_URL"]}  # fmt: skip
    fs = s3fs.S3FileSystem(**options)
    url = f"{env['ANYSAT_STORE_URL']}/bench/l1c"
    start = time.perf_counter()
    fs.put(local.rstrip("/") + "/", url.removeprefix("s3://"), recursive=True)
    print(f"uploaded in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    from pipeline.store.shards import StoreLayout, rebuild_index

    rebuild_index(StoreLayout(url, storage_options=options))  # the index names the shards' S3 URLs
    return url, options


def breakdown(url: str, options: dict[str, Any] | None, shards: int = 8) -> dict[str, float]:
    """Median per shard: metadata fetch, chunk fetch (and MB/s), decode of the fetched bytes, whole read."""
    import fsspec

    from pipeline.store.shard_reader import read_arrays
    from pipeline.store.shards import StoreLayout, read_index

    urls = list(read_index(StoreLayout(url, storage_options=options or {}))["url"])[:shards]
    meta_s, fetch_s, mb, read_s = [], [], [], []
    for shard in urls:
        fs, root = fsspec.core.url_to_fs(shard, **(options or {}))
        paths = [f"s2/{n}" for n in NAMES]
        start = time.perf_counter()
        fs.cat([f"{root}/{p}/zarr.json" for p in paths])
        meta_s.append(time.perf_counter() - start)
        chunks = [f"{root}/s2/{n}/c/" + "/".join("0" * d) for n, d in zip(NAMES, (1, 5, 4, 2, 2), strict=True)]
        start = time.perf_counter()
        blobs = fs.cat(chunks)
        fetch_s.append(time.perf_counter() - start)
        mb.append(sum(len(b) for b in blobs.values()) / 1e6)
        start = time.perf_counter()
        read_arrays(shard, paths, storage_options=options)
        read_s.append(time.perf_counter() - start)
    med = statistics.median
    return {"meta_ms": round(med(meta_s) * 1e3, 1), "fetch_ms": round(med(fetch_s) * 1e3, 1),
            "fetch_mb": round(med(mb), 2), "fetch_mb_per_s": round(med(mb) / med(fetch_s), 1),
            "read_arrays_ms": round(med(read_s) * 1e3, 1),
            "decode_ms": round((med(read_s) - med(meta_s) - med(fetch_s)) * 1e3, 1)}  # fmt: skip


class _ServerMeter:
    """CPU seconds and GET requests of the S3 server process while the loader reads (from its request log)."""

    def __init__(self, stack: Any) -> None:
        import psutil

        state = json.loads(stack.state_file.read_text())["services"]["s3"]
        self.proc, self.log = psutil.Process(state["pid"]), Path(state["log_file"])

    def _now(self) -> tuple[float, int]:
        cpu = self.proc.cpu_times()
        return cpu.user + cpu.system, self.log.read_text(errors="replace").count('"GET ')

    def start(self) -> None:
        self.begin, self.wall = self._now(), time.perf_counter()

    def stop(self, samples: int) -> dict[str, float]:
        (cpu0, gets0), (cpu1, gets1) = self.begin, self._now()
        wall, gets = time.perf_counter() - self.wall, max(gets1 - gets0, 1)
        return {"server_gets": gets, "server_cpu_ms_per_get": round((cpu1 - cpu0) / gets * 1e3, 1),
                "server_cpu_share": round((cpu1 - cpu0) / wall, 2), "gets_per_shard": round(gets / (samples / 64), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chips-per-shard", type=int, default=64)
    args = parser.parse_args()
    if not SCENE.is_dir():
        print(f"the L1C scene is not present ({SCENE}); nothing to measure", file=sys.stderr)
        return
    from infra.local.stack import LocalStack, StackConfig

    work = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    stack = LocalStack(StackConfig(state_dir=work / "s3stack", services=("s3",)))
    rows: dict[str, dict[str, Any]] = {}
    try:
        local = ingest_l1c(work, {"store": {"chips_per_shard": args.chips_per_shard}})["store"]
        s3_url, options = _upload(local, stack.up())
        places = {"local disk": (local, None), "s3 (loopback)": (s3_url, options)}
        for name, (url, opts) in places.items():
            rows[name] = {"samples_per_s": 0.0} | breakdown(url, opts)
        server = _ServerMeter(stack)
        for _ in range(args.repeats):
            for name, (url, opts) in places.items():
                server.start()
                rate = loader_rate(url, storage_options=opts)
                if opts is not None:
                    rows[name] |= server.stop(rate["samples"])
                rows[name]["samples_per_s"] = max(rows[name]["samples_per_s"], rate["samples_per_s"])
                rows[name].setdefault("runs", []).append(rate["samples_per_s"])
                rows[name]["samples"] = rate["samples"]
    finally:
        stack.down()
        shutil.rmtree(work, ignore_errors=True)
    ratio = round(rows["s3 (loopback)"]["samples_per_s"] / rows["local disk"]["samples_per_s"], 2)
    pairs = [round(a / b, 2) for a, b in zip(rows["s3 (loopback)"]["runs"], rows["local disk"]["runs"], strict=True)]
    cold = pairs[0]
    cols = ("samples_per_s", "meta_ms", "fetch_ms", "fetch_mb", "fetch_mb_per_s", "decode_ms", "read_arrays_ms")
    print(f"{'store':<14} " + " ".join(f"{c:>15}" for c in cols))
    for name, r in rows.items():
        print(f"{name:<14} " + " ".join(f"{r[c]:>15}" for c in cols))
    s3 = rows["s3 (loopback)"]
    print(f"S3 server during the loader's last S3 run: {s3['server_gets']} GETs ({s3['gets_per_shard']} per shard), "
          f"{s3['server_cpu_ms_per_get']} ms CPU per GET, busy {s3['server_cpu_share']:.0%} of the run")
    print(f"s3 / local samples/s: {ratio} (best runs); {cold} in the first run (a fresh process: every shard's "
          "metadata and small arrays fetched in its first epoch); each repeat's pair: {pairs}")  # fmt: skip
    print(json.dumps({"bench": "loader_s3", "machine": platform.machine(), "cpus": os.cpu_count(),
                      "python": platform.python_version(), "chips_per_shard": args.chips_per_shard,
                      "rows": rows, "s3_over_local": ratio, "s3_over_local_first_run": cold,
                      "s3_over_local_pairs": pairs}))  # fmt: skip


if __name__ == "__main__":
    main()
