"""Benchmark: the ingestion pipeline against the raw limit, on the Sentinel-2 L1C scene.

Ingests the 41 MB L1C scene (`../shared/data/sentinel2-l1c-virginia`, served by a local STAC API) as 64x64 px
chips of the 10 AnySat bands at 10 m, and measures in the same run the limit: the same windows read directly
with rasterio (20 m bands resampled to 10 m, nearest) plus the same arrays encoded into sharded Zarr.
Reports chips/s, MB/s and limit time / pipeline time for a plain process, 1 and 2 Ray shard workers (the
pipeline's pool of Ray actors) and, for comparison, 2 workers through a Ray Data `map` (the previous path,
`raydata-2`), for each shard size given (the limit encodes with the same shard size). Every mode runs twice, each
run followed by its limit: run 1 is end to end from a cold start of that mode (for Ray: a fresh local cluster,
so worker start-up and imports are inside the time; for the plain process: the first ingestion in this
process), run 2 is the same ingestion again in the same job (steady state). Both are reported, with where the
time goes: `ray.init` (outside the time), the driver's search + manifest + plan before the shard tasks, the
shard tasks (and how many shards the driver wrote while the shard workers started), and the
index/statistics/commit after them.

    python bench/ingest.py [--chip-px 64] [--chips-per-shard 16 64]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import from_bounds

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray stays on loopback
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from infra.local.samples import SHARED_L1C_DIR, build_sample_catalogs  # noqa: E402
from infra.local.stack import LocalStack, StackConfig  # noqa: E402
from pipeline.ingest.config import IngestConfig, SensorSource  # noqa: E402
from pipeline.ingest.grid import ChipGrid, plan_chips  # noqa: E402
from pipeline.ingest import run as ingest_run  # noqa: E402
from pipeline.ingest.ray_shards import LAST_RUN, release_shard_workers  # noqa: E402
from pipeline.ingest.run import run_ingest  # noqa: E402
from pipeline.catalog.manifest import read_manifest  # noqa: E402

BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")


def _limit(manifest_url: str, config: IngestConfig, out: Path) -> tuple[float, int, int]:
    """Direct rasterio window reads + sharded Zarr encode of the same chips; returns (seconds, chips, bytes)."""
    import zarr
    from zarr.codecs import ZstdCodec

    manifest = read_manifest(manifest_url)
    plans, _ = plan_chips(manifest, grid=config.grid, area=config.bbox, required=("s2",))
    item = manifest.items()[0]
    start = time.perf_counter()
    srcs = {b: rasterio.open(item.assets[b].href.removeprefix("file://")) for b in BANDS}
    px = round(config.grid.chip_size_m / 10)
    chips = []
    for plan in plans:
        chips.append(np.stack([srcs[b].read(1, window=from_bounds(*plan.bounds, transform=srcs[b].transform),
                                            out_shape=(px, px), resampling=Resampling.nearest) for b in BANDS]))
    arr = np.stack(chips)[:, None].astype(np.float32) * np.float32(1e-4)  # [N, T=1, C, H, W] reflectance
    per = config.chips_per_shard
    for s in range(0, len(arr), per):
        part = arr[s : s + per]
        z = zarr.create_array(str(out / f"shard-{s}.zarr"), shape=part.shape, dtype="float32",
                              chunks=(1, *part.shape[1:]), shards=part.shape, compressors=ZstdCodec(level=3),
                              zarr_format=3)  # fmt: skip
        z[:] = part
    seconds = time.perf_counter() - start
    return seconds, len(plans), int(arr.nbytes)


def _ray_data_map(task, rows, *, concurrency: int, max_retries: int, **_pool_options):  # noqa: ANN001, ANN202, ANN003
    """The previous path, for comparison: one Ray Data task per shard."""
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
    return list(dataset.map(task, compute=ray.data.TaskPoolStrategy(size=concurrency), max_retries=max_retries,
                            num_cpus=0.5).take_all())  # fmt: skip


def _plain_writer(phases: _Phases):  # noqa: ANN202
    """`write_shards` for the plain process, its loop timed by `phases`."""
    real = ingest_run.write_shards

    def write(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        phases.called = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            phases.returned = time.perf_counter()

    return write


class _Phases:
    """Times the driver's work before the shard tasks and the shard tasks themselves (wraps the executor)."""

    def __init__(self, inner) -> None:  # noqa: ANN001
        self.inner, self.called, self.returned = inner, 0.0, 0.0

    def __call__(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN204
        self.called = time.perf_counter()
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.returned = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chip-px", type=int, default=64)
    parser.add_argument("--chips-per-shard", type=int, nargs="+", default=[16, 64])
    args = parser.parse_args()
    if not SHARED_L1C_DIR.is_dir():
        print(f"the L1C scene is not present ({SHARED_L1C_DIR}); nothing to measure", file=sys.stderr)
        return
    load = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    files = build_sample_catalogs(work / "catalogs")
    l1c = [p for p in files if p.parent.name == "sentinel-2-l1c"]
    stack = LocalStack(StackConfig(state_dir=work / "stack", services=("stac",), stac_hrefs=tuple(l1c)))
    env = stack.up()
    try:
        item = json.loads(l1c[1].read_text().splitlines()[0])
        size = args.chip_px * 10.0
        sensor = SensorSource("s2", "sentinel-2-l1c", {b: b for b in BANDS}, 10.0, max_dates=1, scale=1e-4, nodata=0)
        rows = []
        for per in args.chips_per_shard:
            modes = (("process", False, 1), ("ray-1", True, 1), ("ray-2", True, 2), ("raydata-2", True, 2))
            for label, use_ray, workers in modes:
                ray_init_s = None
                if use_ray:
                    import ray

                    release_shard_workers()
                    if ray.is_initialized():
                        ray.shutdown()
                    begin = time.perf_counter()
                    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
                    ray_init_s = round(time.perf_counter() - begin, 2)
                real_run, real_start = ingest_run.run_shard_tasks, ingest_run.start_shard_workers
                if label.startswith("raydata"):
                    ingest_run.start_shard_workers = lambda *a, **k: None
                    ingest_run.run_shard_tasks = _ray_data_map
                phases = _Phases(ingest_run.run_shard_tasks if use_ray else (lambda task, rows: [task(r) for r in rows]))
                for run in (1, 2):
                    store = work / f"store-{per}-{label}-{run}"
                    config = IngestConfig(bbox=tuple(item["bbox"]),
                                          datetime="2015-01-01T00:00:00Z/2024-12-31T23:59:59Z", sensors=(sensor,),
                                          grid=ChipGrid(size, align_m=10.0), store=str(store), chips_per_shard=per,
                                          concurrency=workers, quicklooks=0)  # fmt: skip
                    start = time.perf_counter()
                    if use_ray:
                        ingest_run.run_shard_tasks = phases
                        summary = run_ingest(config, stac_url=env["STAC_API_URL"], use_ray=True)
                    else:  # the plain loop, timed the same way
                        ingest_run.write_shards, real_write = _plain_writer(phases), ingest_run.write_shards
                        try:
                            summary = run_ingest(config, stac_url=env["STAC_API_URL"], use_ray=False)
                        finally:
                            ingest_run.write_shards = real_write
                    seconds = time.perf_counter() - start
                    manifest = f"{store}/manifests/{summary.manifest_version}.parquet"
                    limit_s, n_chips, raw_bytes = _limit(manifest, config, work / f"limit-{per}-{label}-{run}")
                    rows.append({"run": f"{label} #{run}", "chips_per_shard": per, "chips": summary.chips_written,
                                 "seconds": round(seconds, 2), "chips_per_s": round(summary.chips_written / seconds, 1),
                                 "mb_per_s": round(raw_bytes / 2**20 / seconds, 1), "limit_seconds": round(limit_s, 2),
                                 "limit_over_pipeline": round(limit_s / seconds, 2), "ray_init_s": ray_init_s,
                                 "before_tasks_s": round(phases.called - start, 2),
                                 "tasks_s": round(phases.returned - phases.called, 2),
                                 "after_tasks_s": round(start + seconds - phases.returned, 2),
                                 "shards_by_driver": LAST_RUN.get("by_driver") if label.startswith("ray-") else None})  # fmt: skip
                    print(json.dumps(rows[-1]), file=sys.stderr)
                ingest_run.run_shard_tasks, ingest_run.start_shard_workers = real_run, real_start
    finally:
        release_shard_workers()
        if "ray" in sys.modules and sys.modules["ray"].is_initialized():
            sys.modules["ray"].shutdown()
        stack.down()
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'run':<13} {'per shard':>9} {'chips':>6} {'s':>7} {'chips/s':>8} {'MB/s':>6} {'limit s':>8} "
          f"{'limit/pipeline':>15} {'ray.init':>8} {'before':>6} {'tasks':>6} {'after':>6} {'by driver':>9}")
    for r in rows:
        print(f"{r['run']:<13} {r['chips_per_shard']:>9} {r['chips']:>6} {r['seconds']:>7} {r['chips_per_s']:>8} "
              f"{r['mb_per_s']:>6} {r['limit_seconds']:>8} {r['limit_over_pipeline']:>15} {str(r['ray_init_s']):>8} "
              f"{r['before_tasks_s']:>6} {r['tasks_s']:>6} {r['after_tasks_s']:>6} {str(r['shards_by_driver']):>9}")
    print(json.dumps({"bench": "ingest", "machine": platform.machine(), "cpus": os.cpu_count(),
                      "chip_px": args.chip_px, "load_avg_before": load, "load_avg_after": os.getloadavg(),
                      "rows": rows}))  # fmt: skip


if __name__ == "__main__":
    main()
