"""Shared by bench/store_dtype.py and bench/loader_s3.py: the Sentinel-2 L1C scene ingested into a local store.

The scene (`../shared/data/sentinel2-l1c-virginia`), the 10 AnySat bands at 10 m, `chip_px` px chips, through
the real ingestion (`run_ingest` without Ray) from the stack's STAC API on loopback; and the loader's rate.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT.parent / "shared" / "data" / "sentinel2-l1c-virginia"
BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
sys.path.insert(0, str(ROOT))


def ingest_l1c(work: Path, stores: dict[str, dict[str, Any]], *, chip_px: int = 64) -> dict[str, str]:
    """Ingest the scene once per entry of `stores` (name -> IngestConfig/SensorSource overrides); name -> url."""
    from infra.local.samples import build_sample_catalogs
    from infra.local.stack import LocalStack, StackConfig
    from pipeline.ingest.config import IngestConfig, SensorSource
    from pipeline.ingest.grid import ChipGrid
    from pipeline.ingest.run import run_ingest

    files = build_sample_catalogs(work / "catalogs")
    l1c = [p for p in files if p.parent.name == "sentinel-2-l1c"]
    stack = LocalStack(StackConfig(state_dir=work / "stac", services=("stac",), stac_hrefs=tuple(l1c)))
    env = stack.up()
    out = {}
    try:
        item = json.loads(l1c[1].read_text().splitlines()[0])
        for name, opts in stores.items():
            sensor = SensorSource("s2", "sentinel-2-l1c", {b: b for b in BANDS}, 10.0, max_dates=1, scale=1e-4,
                                  nodata=0, pack=opts.get("pack", True))  # fmt: skip
            config = IngestConfig(bbox=tuple(item["bbox"]), datetime="2015-01-01T00:00:00Z/2024-12-31T23:59:59Z",
                                  sensors=(sensor,), grid=ChipGrid(chip_px * 10.0, align_m=10.0),
                                  store=str(work / name), chips_per_shard=opts.get("chips_per_shard", 64),
                                  quicklooks=0)  # fmt: skip
            start = time.perf_counter()
            run_ingest(config, stac_url=env["STAC_API_URL"], use_ray=False)
            print(f"ingested {name} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
            out[name] = str(work / name)
    finally:
        stack.down()
    return out


def loader_rate(url: str, *, storage_options: dict[str, Any] | None = None, batch: int = 16,
                epochs: int = 2) -> dict[str, float]:  # fmt: skip
    """`iter_batches` samples/s over `epochs` epochs (after the first batch), and the share of time spent waiting."""
    from pipeline.load.loader import DatasetSource, LoaderConfig, iter_batches

    config = LoaderConfig((DatasetSource(url, name="l1c"),), batch_size=batch, patch_sizes_m=(40,), shuffle_buffer=64)
    n, start = 0, None
    for epoch in range(epochs):
        for b in iter_batches(config, storage_options=storage_options, epoch=epoch):
            if start is None:
                start = time.perf_counter()
                continue
            n += int(b["s2"].shape[0])
    assert start is not None
    return {"samples_per_s": round(n / (time.perf_counter() - start), 1), "samples": n}


def du(url: str, part: str = "") -> int:
    """Bytes of a local store's files whose path contains `part`."""
    return sum(p.stat().st_size for p in Path(url).rglob("*") if p.is_file() and part in str(p))
