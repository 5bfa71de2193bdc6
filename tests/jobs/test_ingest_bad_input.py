"""Bad input through a real run: every unusable item is skipped with its reason, good data is still written."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio

from infra.local.catalog_items import write_cog
from infra.local.services import free_port
from pipeline.config import load_config
from pipeline.ingest.config import IngestConfig
from pipeline.ingest.run import run_ingest

pytestmark = pytest.mark.stack
ROOT = Path(__file__).resolve().parents[2]


def _src(catalog_files, collection: str, suffix: str) -> dict:
    path = next(p for p in catalog_files if p.parent.name == collection and p.suffix == ".ndjson")
    return next(json.loads(x) for x in path.read_text().splitlines() if json.loads(x)["id"].endswith(suffix))


def _bad_catalog(catalog_files, tmp: Path) -> tuple[list[Path], dict[str, str]]:
    s2, s1 = _src(catalog_files, "sentinel-2-l2a", "_87_48"), _src(catalog_files, "sentinel-1-rtc", "_87_48")
    b02 = rasterio.open(s2["assets"]["B02"]["href"].removeprefix("file://"))
    scl_good, scl_cloud = tmp / "scl_veg.tif", tmp / "scl_cloud.tif"
    write_cog(scl_good, np.full((1, 60, 60), 4, np.uint8), crs=b02.crs, transform=b02.transform * b02.transform.scale(2),
              nodata=0)  # fmt: skip
    write_cog(scl_cloud, np.full((1, 60, 60), 9, np.uint8), crs=b02.crs, transform=b02.transform * b02.transform.scale(2),
              nodata=0)  # fmt: skip
    garbage = tmp / "garbage.tif"
    garbage.write_bytes(b"this is not a GeoTIFF at all" * 100)

    def variant(name: str) -> dict:
        item = json.loads(json.dumps(s2))
        item["id"] = f"{s2['id']}-{name}"
        scl = json.loads(json.dumps(s2["assets"]["B05"]))  # a 20 m asset's grid and metadata, as PC's SCL has
        scl.update(href=scl_good.as_uri(), title="Scene classification map")
        scl["raster:bands"] = [{"nodata": 0, "data_type": "uint8", "spatial_resolution": 20}]
        scl.pop("eo:bands", None)
        item["assets"]["SCL"] = scl
        return item

    items, expected = [variant("good")], {}
    v = variant("missing-asset"); del v["assets"]["B05"]; items.append(v); expected[v["id"]] = "missing_asset"  # noqa: E702
    v = variant("404"); v["assets"]["B02"]["href"] = "file:///nonexistent/B02.tif"; items.append(v)  # noqa: E702
    expected[v["id"]] = "href_not_found"
    v = variant("corrupt"); v["assets"]["B03"]["href"] = garbage.as_uri(); items.append(v)  # noqa: E702
    expected[v["id"]] = "corrupt_raster"
    v = variant("nodata")
    for key, asset in v["assets"].items():
        if key != "SCL":
            with rasterio.open(asset["href"].removeprefix("file://")) as ds:
                zeros = tmp / f"zeros_{key}.tif"
                write_cog(zeros, np.zeros((1, ds.height, ds.width), np.uint16), crs=ds.crs, transform=ds.transform,
                          nodata=0)  # fmt: skip
            asset["href"] = zeros.as_uri()
    items.append(v); expected[v["id"]] = "all_nodata"  # noqa: E702
    v = variant("cloudy"); v["assets"]["SCL"]["href"] = scl_cloud.as_uri(); items.append(v)  # noqa: E702
    expected[v["id"]] = "fully_cloudy"
    v = variant("old"); v["properties"]["datetime"] = None  # noqa: E702
    v["properties"]["start_datetime"], v["properties"]["end_datetime"] = "2017-05-01T00:00:00Z", "2017-06-20T00:00:00Z"
    items.append(v); expected[v["id"]] = "dates_out_of_range"  # noqa: E702
    v = variant("no-crs"); v["properties"].pop("proj:epsg"); v["properties"].pop("proj:code")  # noqa: E702
    for asset in v["assets"].values():
        asset.pop("proj:code", None)
    items.append(v); expected[v["id"]] = "no_crs"  # noqa: E702
    v = variant("bad-baseline"); v["properties"]["s2:processing_baseline"] = "N/A"; items.append(v)  # noqa: E702
    expected[v["id"]] = "bad_metadata"
    v = variant("bowtie")
    (w, s, e, n) = v["bbox"]
    v["geometry"] = {"type": "Polygon", "coordinates": [[[w, s], [e, n], [e, s], [w, n], [w, s]]]}
    items.append(v); expected[v["id"]] = "invalid_geometry"  # noqa: E702
    sliver = json.loads(json.dumps(s1))
    sliver["id"] = f"{s1['id']}-sliver"
    (w, s, e, n) = sliver["bbox"]
    sliver["geometry"] = {"type": "Polygon", "coordinates": [[[w, s], [w + 1e-4, s], [w + 1e-4, s + 1e-4], [w, s + 1e-4], [w, s]]]}
    sliver["bbox"] = [w, s, w + 1e-4, s + 1e-4]
    expected[sliver["id"]] = "no_complete_chip"
    files = []
    for collection, rows in (("sentinel-2-l2a", items), ("sentinel-1-rtc", [s1, sliver])):
        folder = tmp / collection
        folder.mkdir()
        col = next(p for p in catalog_files if p.parent.name == collection and p.name == "collection.json")
        (folder / "collection.json").write_text(col.read_text())
        for row in rows:
            row["links"] = []
        (folder / "items.ndjson").write_text("".join(json.dumps(r) + "\n" for r in rows))
        files += [folder / "collection.json", folder / "items.ndjson"]
    return files, expected


def test_ten_kinds_of_bad_input_are_recorded_and_good_data_is_kept(catalog_files, tmp_path: Path) -> None:
    files, expected = _bad_catalog(catalog_files, tmp_path)
    assert len(set(expected.values())) >= 10
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "rustac"), "serve", "--addr", f"127.0.0.1:{port}",
                               *map(str, files)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(1.0)
        config = load_config(IngestConfig, ROOT / "configs" / "ingest-demo.yaml", [
            f"store={tmp_path / 'ds'}", "sensors.0.max_dates=20", "sensors.0.max_cloud_cover=null",
            "sensors.0.cloud_asset=SCL", "sensors.0.cloud_classes=[0, 1, 3, 8, 9, 10]", "quicklooks=0"])  # fmt: skip
        summary = run_ingest(config, stac_url=f"http://127.0.0.1:{port}", use_ray=False)
    finally:
        server.kill()
        server.wait()
    assert summary.chips_written >= 2  # the good S2 item and the S1 pair still make every chip
    rejects = pd.read_parquet(tmp_path / "ds" / "rejects.parquet")
    found = {(r.subject, r.kind) for r in rejects.itertuples()}
    missing = {(item, kind) for item, kind in expected.items() if (item, kind) not in found}
    assert not missing, f"not recorded with the right reason: {missing}; got {sorted(found)}"
    for path in (tmp_path / "ds").rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert b"sig=" not in blob and b"local-stack-secret" not in blob, path
