"""Benchmark: our shard loader vs TorchGeo's RasterDataset + RandomGeoSampler vs direct rasterio reads.

The same Sentinel-2 L1C scene (`../shared/data/sentinel2-l1c-virginia`), the 10 AnySat bands at 10 m (20 m bands
resampled, nearest), 64x64 px chips, batch 16, a torch DataLoader with 0 and 2 workers:

- ours: `pipeline.load.loader.iter_batches` over a store ingested from the scene once in this run's setup (local STAC
  API, `run_ingest` without Ray); with workers, each DataLoader worker is one loader rank;
- TorchGeo 0.8.1: `RasterDataset` (one file per band) + `RandomGeoSampler` + `stack_samples`, with 0 workers
  measured twice, with torch's default intra-op threads and with one (torch's idle threads spin and cost it up to
  a third more CPU on this 2-core machine); the ratio is taken against TorchGeo's better figure. TorchGeo imports
  torchvision, whose PyPI wheel does not import beside the project's CPU torch 2.13.0, so it runs in its own
  interpreter (`--torchgeo-python`, a venv with torch 2.14.1, torchvision 0.29.1, torchgeo 0.8.1) as a
  subprocess of this run;
- limit: the windows of our chips read directly with rasterio (datasets opened once), stacked into batches;
- decode: our read path's own ceiling, fetching and zstd-decoding the `s2/data` array of every shard in one
  thread (no normalisation, masks, shuffle or collation).

Throughput is samples/s after the first batch (worker start-up excluded), best of `--repeats`. Prints a table
and one JSON line.

    python bench/loader.py --torchgeo-python ../venv-bench/bin/python [--samples 640] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
ROOT = Path(__file__).resolve().parents[1]


def _rate(batches: Iterable[Any], size_of: Any) -> tuple[float, int]:
    """Samples/s over every batch after the first, and the number of samples timed."""
    it = iter(batches)
    next(it)
    start, n = time.perf_counter(), 0
    for batch in it:
        n += size_of(batch)
    return n / (time.perf_counter() - start), n


def run_torchgeo(scene: Path, *, chip_px: int, batch: int, workers: int, samples: int, repeats: int) -> dict[str, Any]:
    """TorchGeo's RasterDataset + RandomGeoSampler (run inside the TorchGeo interpreter)."""
    import torch
    import torchgeo
    from torch.utils.data import DataLoader
    from torchgeo.datasets import RasterDataset, stack_samples
    from torchgeo.samplers import RandomGeoSampler

    class L1CScene(RasterDataset):  # type: ignore[misc]
        filename_glob = "s2_B02.tif"
        filename_regex = r"^s2_(?P<band>B[0-9][0-9A])\.tif$"
        separate_files = True
        is_image = True
        all_bands = BANDS

    dataset = L1CScene(paths=str(scene), bands=BANDS, res=10)
    best, timed = 0.0, 0
    for r in range(repeats):
        sampler = RandomGeoSampler(dataset, size=chip_px, length=samples + batch)
        loader = DataLoader(dataset, sampler=sampler, batch_size=batch, num_workers=workers, collate_fn=stack_samples,
                            generator=torch.Generator().manual_seed(r))  # fmt: skip
        rate, timed = _rate(loader, lambda b: int(b["image"].shape[0]))
        best = max(best, rate)
    first = next(iter(DataLoader(dataset, sampler=RandomGeoSampler(dataset, size=chip_px, length=batch),
                                 batch_size=batch, collate_fn=stack_samples)))["image"]  # fmt: skip
    return {"samples_per_s": round(best, 1), "samples": timed, "shape": list(first.shape),
            "versions": {"torch": torch.__version__, "torchgeo": torchgeo.__version__}}


def _ingest(scene_dir: Path, work: Path, chip_px: int) -> str:
    sys.path.insert(0, str(ROOT))
    from infra.local.samples import build_sample_catalogs
    from infra.local.stack import LocalStack, StackConfig
    from pipeline.ingest.config import IngestConfig, SensorSource
    from pipeline.ingest.grid import ChipGrid
    from pipeline.ingest.run import run_ingest

    files = build_sample_catalogs(work / "catalogs")
    l1c = [p for p in files if p.parent.name == "sentinel-2-l1c"]
    stack = LocalStack(StackConfig(state_dir=work / "stack", services=("stac",), stac_hrefs=tuple(l1c)))
    env = stack.up()
    try:
        item = json.loads(l1c[1].read_text().splitlines()[0])
        sensor = SensorSource("s2", "sentinel-2-l1c", {b: b for b in BANDS}, 10.0, max_dates=1, scale=1e-4, nodata=0)
        config = IngestConfig(bbox=tuple(item["bbox"]), datetime="2015-01-01T00:00:00Z/2024-12-31T23:59:59Z",
                              sensors=(sensor,), grid=ChipGrid(chip_px * 10.0, align_m=10.0),
                              store=str(work / "store"), chips_per_shard=16, quicklooks=0)  # fmt: skip
        run_ingest(config, stac_url=env["STAC_API_URL"], use_ray=False)
    finally:
        stack.down()
    return str(work / "store")


def run_ours(store: str, *, batch: int, workers: int, repeats: int) -> dict[str, Any]:
    """`iter_batches` through a DataLoader; each worker is one rank of the loader."""
    import torch
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info

    from pipeline.load.loader import DatasetSource, LoaderConfig, iter_batches

    config = LoaderConfig((DatasetSource(store),), batch_size=batch, patch_sizes_m=(40,), shuffle_buffer=64)

    class Batches(IterableDataset):  # type: ignore[type-arg]
        def __init__(self, epoch: int) -> None:
            self.epoch = epoch

        def __iter__(self) -> Iterator[dict[str, Any]]:
            info = get_worker_info()
            rank, world = (info.id, info.num_workers) if info else (0, 1)
            for epoch in (self.epoch, self.epoch + 1):  # two epochs: 1664 samples
                yield from iter_batches(config, rank=rank, world_size=world, epoch=epoch)

    best, timed = 0.0, 0
    for r in range(repeats):
        loader = DataLoader(Batches(2 * r), batch_size=None, num_workers=workers)
        rate, timed = _rate(loader, lambda b: int(b["s2"].shape[0]))
        best = max(best, rate)
    return {"samples_per_s": round(best, 1), "samples": timed, "torch": torch.__version__}


def run_rasterio(store: str, scene: Path, *, chip_px: int, batch: int, repeats: int) -> dict[str, Any]:
    """The windows of the store's chips read directly with rasterio (datasets opened once), batched."""
    import numpy as np
    import rasterio
    import xarray as xr
    from rasterio.enums import Resampling
    from rasterio.windows import from_bounds

    from pipeline.store.shards import StoreLayout, read_index

    bounds = np.concatenate([xr.open_zarr(u, group="chips", zarr_format=3, consolidated=False)["bounds"].values
                             for u in read_index(StoreLayout(store))["url"]])  # fmt: skip
    srcs = [rasterio.open(scene / f"s2_{b}.tif") for b in BANDS]

    def batches() -> Iterator[np.ndarray]:
        for s in range(0, len(bounds) - batch + 1, batch):
            yield np.stack([np.stack([src.read(1, window=from_bounds(*bb, transform=src.transform),
                                               out_shape=(chip_px, chip_px), resampling=Resampling.nearest)
                                      for src in srcs]) for bb in bounds[s : s + batch]]).astype(np.float32)  # fmt: skip

    best, timed = 0.0, 0
    for _ in range(repeats):
        rate, timed = _rate(batches(), len)
        best = max(best, rate)
    return {"samples_per_s": round(best, 1), "samples": timed}


def run_decode(store: str, *, repeats: int) -> dict[str, Any]:
    """Ceiling of our read path: fetch and zstd-decode only the `s2/data` array of every shard, one thread."""
    from pipeline.store.shard_reader import read_arrays
    from pipeline.store.shards import StoreLayout, read_index

    urls = list(read_index(StoreLayout(store))["url"])
    best, n = 0.0, 0
    for _ in range(repeats):
        start, n = time.perf_counter(), 0
        for url in urls:
            n += len(read_arrays(url, ["s2/data"])["s2/data"])
        best = max(best, n / (time.perf_counter() - start))
    return {"samples_per_s": round(best, 1), "samples": n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--torchgeo-python", default=sys.executable, help="interpreter with torchgeo 0.8.1")
    parser.add_argument("--chip-px", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--samples", type=int, default=640, help="samples timed per TorchGeo run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--torchgeo-only", type=int, metavar="WORKERS", help=argparse.SUPPRESS)
    parser.add_argument("--torch-threads", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    scene = ROOT.parent / "shared" / "data" / "sentinel2-l1c-virginia"
    if args.torchgeo_only is not None:  # the subprocess side
        if args.torch_threads:
            import torch

            torch.set_num_threads(args.torch_threads)
        print(json.dumps(run_torchgeo(scene, chip_px=args.chip_px, batch=args.batch, workers=args.torchgeo_only,
                                      samples=args.samples, repeats=args.repeats)))  # fmt: skip
        return
    if not scene.is_dir():
        print(f"the L1C scene is not present ({scene}); nothing to measure", file=sys.stderr)
        return
    work = Path(tempfile.mkdtemp(prefix="bench-loader-"))
    rows: dict[str, dict[str, Any]] = {}
    try:
        start = time.perf_counter()
        store = _ingest(scene, work, args.chip_px)
        print(f"ingested the scene in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        rows["rasterio (limit)"] = run_rasterio(store, scene, chip_px=args.chip_px, batch=args.batch,
                                                repeats=args.repeats)  # fmt: skip
        rows["decode s2/data only (ours, 1 thread)"] = run_decode(store, repeats=args.repeats)
        for workers in (0, 2):
            for threads in ((0, 1) if workers == 0 else (0,)):
                out = subprocess.run([args.torchgeo_python, __file__, "--torchgeo-only", str(workers), "--chip-px",
                                      str(args.chip_px), "--batch", str(args.batch), "--samples", str(args.samples),
                                      "--repeats", str(args.repeats), "--torch-threads", str(threads)],
                                     capture_output=True, text=True, check=False)  # fmt: skip
                if out.returncode != 0:
                    raise SystemExit(f"the TorchGeo run failed:\n{out.stderr[-3000:]}")
                name = f"torchgeo, {workers} workers" + (", 1 torch thread" if threads else "")
                rows[name] = json.loads(out.stdout.strip().splitlines()[-1])
            rows[f"ours, {workers} workers"] = run_ours(store, batch=args.batch, workers=workers,
                                                        repeats=args.repeats)  # fmt: skip
            print(json.dumps(rows), file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best_torchgeo = {w: max(r["samples_per_s"] for k, r in rows.items() if k.startswith(f"torchgeo, {w} workers"))
                     for w in (0, 2)}  # TorchGeo's best configuration is the reference  # fmt: skip
    ratios = {f"ours/torchgeo {w} workers": round(rows[f"ours, {w} workers"]["samples_per_s"] / best_torchgeo[w], 1)
              for w in (0, 2)}  # fmt: skip
    limit = rows["rasterio (limit)"]["samples_per_s"]
    print(f"{'loader':<38} {'samples/s':>10} {'samples':>8} {'/ limit':>8}")
    for name, r in rows.items():
        print(f"{name:<38} {r['samples_per_s']:>10} {r['samples']:>8} {r['samples_per_s'] / limit:>8.2f}")
    print("  ".join(f"{k}: {v}x" for k, v in ratios.items()))
    print(json.dumps({"bench": "loader", "machine": platform.machine(), "cpus": os.cpu_count(),
                      "python": platform.python_version(), "chip_px": args.chip_px, "batch": args.batch,
                      "bands": list(BANDS), "rows": rows, "ratios": ratios}))  # fmt: skip


if __name__ == "__main__":
    main()
