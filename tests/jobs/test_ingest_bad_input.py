"""Bad input through a real run: every unusable item is skipped with its reason, good data is still written.

Twenty-odd kinds of bad STAC input in one catalog served by `rustac serve` (and a loopback server answering 403 for
an expired token); each must land in `rejects.parquet` with its reason while the good chips are written.
"""

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

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]
ROOT = Path(__file__).resolve().parents[2]
RANGE_SERVER = ROOT / "tests" / "pipeline" / "ingest" / "range_server.py"


def _src(catalog_files, collection: str, suffix: str) -> dict:
    path = next(p for p in catalog_files if p.parent.name == collection and p.suffix == ".ndjson")
    return next(json.loads(x) for x in path.read_text().splitlines() if json.loads(x)["id"].endswith(suffix))


def _cog_like(src: str, dst: Path, values: np.ndarray | None = None, dtype: str | None = None) -> str:
    """A COG on the grid of `src` (same CRS, transform, shape), with other values or dtype; its file URI."""
    with rasterio.open(src.removeprefix("file://")) as ds:
        data = ds.read() if values is None else values
        write_cog(dst, data.astype(dtype or data.dtype), crs=ds.crs, transform=ds.transform, nodata=ds.nodata)
    return dst.as_uri()


def _bad_catalog(catalog_files, tmp: Path, denied_url: str) -> tuple[list[Path], dict[str, str]]:
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
    # metadata disagreeing with the files
    v = variant("shape"); v["assets"]["B02"]["proj:shape"] = [100, 120]; items.append(v)  # noqa: E702
    expected[v["id"]] = "metadata_mismatch"
    v = variant("transform"); v["assets"]["B02"]["proj:transform"][2] += 10.0; items.append(v)  # noqa: E702
    expected[v["id"]] = "metadata_mismatch"
    v = variant("crs"); v["assets"]["B02"]["proj:code"] = "EPSG:32632"; items.append(v)  # noqa: E702
    expected[v["id"]] = "metadata_mismatch"
    v = variant("media-type"); v["assets"]["B02"]["type"] = "text/html"; items.append(v)  # noqa: E702
    expected[v["id"]] = "metadata_mismatch"
    v = variant("band-count"); v["assets"]["B02"]["raster:bands"] *= 2; items.append(v)  # noqa: E702
    expected[v["id"]] = "metadata_mismatch"
    v = variant("dtype"); v["assets"]["B02"]["raster:bands"][0]["data_type"] = "float32"; items.append(v)  # noqa: E702
    expected[v["id"]] = "metadata_mismatch"
    # pixels that cannot be used
    v = variant("nan")
    for key, asset in v["assets"].items():
        if key != "SCL":
            with rasterio.open(asset["href"].removeprefix("file://")) as ds:
                shape = (1, ds.height, ds.width)
            asset["href"] = _cog_like(asset["href"], tmp / f"nan_{key}.tif", np.full(shape, np.nan, np.float32))
            asset["raster:bands"] = [{"data_type": "float32", "nodata": "nan"}]
    items.append(v); expected[v["id"]] = "all_nodata"  # noqa: E702
    src = Path(v["assets"]["B02"]["href"].removeprefix("file://"))
    v = variant("truncated")
    whole = Path(v["assets"]["B02"]["href"].removeprefix("file://")).read_bytes()
    (tmp / "truncated.tif").write_bytes(whole[: len(whole) * 2 // 3])
    v["assets"]["B02"]["href"] = (tmp / "truncated.tif").as_uri(); items.append(v)  # noqa: E702
    expected[v["id"]] = "corrupt_raster"
    v = variant("expired-token"); v["assets"]["B02"]["href"] = f"{denied_url}/B02.tif?v=1&se=2020-01-01&sig=EXPIRED"  # noqa: E702
    items.append(v); expected[v["id"]] = "access_denied"  # noqa: E702
    # dates and footprints
    v = variant("no-datetime"); v["properties"]["datetime"] = None; items.append(v)  # noqa: E702
    expected[v["id"]] = "invalid_item"  # datetime null and no start/end: not a STAC item
    v = variant("antimeridian")
    v["bbox"] = [179.5, 48.0, -179.5, 48.5]  # a bbox crossing the antimeridian, a footprint not split there
    v["geometry"] = {"type": "Polygon", "coordinates": [[[179.5, 48.0], [-179.5, 48.0], [-179.5, 48.5], [179.5, 48.5],
                                                         [179.5, 48.0]]]}  # fmt: skip
    items.append(v); expected[v["id"]] = "invalid_geometry"  # noqa: E702
    v = variant("bbox-elsewhere"); v["bbox"] = [v["bbox"][0] - 1, v["bbox"][1] - 1, v["bbox"][0] - 0.5, v["bbox"][1] - 0.5]  # noqa: E702
    v["bbox"][2:] = [max(v["bbox"][2], 13.71), max(v["bbox"][3], 48.22)]  # the API still finds it in the area
    items.append(v); expected[v["id"]] = "bbox_mismatch"  # noqa: E702
    twin = variant("twin"); twin["properties"]["eo:cloud_cover"] = 1.0  # noqa: E702
    twin2 = json.loads(json.dumps(twin)); twin2["properties"]["eo:cloud_cover"] = 2.0  # noqa: E702
    items += [twin, twin2]; expected[twin["id"]] = "duplicate_item"  # noqa: E702 (the same id, other content)
    # Sentinel-1 delivered in dB where linear power is declared (to_db: true)
    s1_db = json.loads(json.dumps(s1))
    s1_db["id"] = f"{s1['id']}-db"
    for key, asset in s1_db["assets"].items():
        with rasterio.open(asset["href"].removeprefix("file://")) as ds:
            db = 10 * np.log10(np.clip(ds.read().astype(np.float32), 1e-6, None))
        asset["href"] = _cog_like(asset["href"], tmp / f"db_{key}.tif", db.astype(np.float32))
    expected[s1_db["id"]] = "wrong_units"
    sliver = json.loads(json.dumps(s1))
    sliver["id"] = f"{s1['id']}-sliver"
    (w, s, e, n) = sliver["bbox"]
    sliver["geometry"] = {"type": "Polygon", "coordinates": [[[w, s], [w + 1e-4, s], [w + 1e-4, s + 1e-4], [w, s + 1e-4], [w, s]]]}
    sliver["bbox"] = [w, s, w + 1e-4, s + 1e-4]
    expected[sliver["id"]] = "no_complete_chip"
    files = []
    for collection, rows in (("sentinel-2-l2a", items), ("sentinel-1-rtc", [s1, sliver, s1_db])):
        folder = tmp / collection
        folder.mkdir()
        col = next(p for p in catalog_files if p.parent.name == collection and p.name == "collection.json")
        (folder / "collection.json").write_text(col.read_text())
        for row in rows:
            row["links"] = []
        (folder / "items.ndjson").write_text("".join(json.dumps(r) + "\n" for r in rows))
        files += [folder / "collection.json", folder / "items.ndjson"]
    return files, expected


def test_twenty_kinds_of_bad_input_are_recorded_and_good_data_is_kept(catalog_files, tmp_path: Path) -> None:
    denied = subprocess.Popen([sys.executable, str(RANGE_SERVER), str(tmp_path), "--status=403"],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip (an expired token: every read is 403)
    assert denied.stdout is not None
    denied_url = f"http://127.0.0.1:{int(denied.stdout.readline())}"
    files, expected = _bad_catalog(catalog_files, tmp_path, denied_url)
    assert len(expected) >= 20 and len(set(expected.values())) >= 15
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "rustac"), "serve", "--addr", f"127.0.0.1:{port}",
                               *map(str, files)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(1.0)
        config = load_config(IngestConfig, ROOT / "configs" / "ingest-demo.yaml", [
            f"store={tmp_path / 'ds'}", "sensors.0.max_dates=20", "sensors.0.max_cloud_cover=null",
            "sensors.0.cloud_asset=SCL", "sensors.0.cloud_classes=[0, 1, 3, 8, 9, 10]", "quicklooks=0",
            "sensors.1.max_dates=4", "page_size=3", "max_retries=0"])  # fmt: skip (pages: the twins come apart)
        summary = run_ingest(config, stac_url=f"http://127.0.0.1:{port}", use_ray=False)
    finally:
        server.kill()
        server.wait()
        denied.kill()
        denied.wait()
    assert summary.chips_written >= 2  # the good S2 item and the S1 pair still make every chip
    rejects = pd.read_parquet(tmp_path / "ds" / "rejects.parquet")
    found = {(r.subject, r.kind) for r in rejects.itertuples()}
    missing = {(item, kind) for item, kind in expected.items() if (item, kind) not in found}
    assert not missing, f"not recorded with the right reason: {missing}; got {sorted(found)}"
    for path in (tmp_path / "ds").rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert b"sig=EXPIRED" not in blob and b"local-stack-secret" not in blob, path
