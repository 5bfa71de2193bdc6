"""The sample catalogs: PC-like assets and properties, offline schema validation, exact conversions, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio

from infra.local.catalog_items import fmask_to_qa_pixel, sr_to_c2_dn
from infra.local.catalogs import build_catalogs, validate_offline
from infra.local.samples import SAMPLES_DIR

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    out = tmp_path_factory.mktemp("cat")
    cols = build_catalogs(out, samples_dir=SAMPLES_DIR, l1c_dir=None)
    return {c.collection_id: [json.loads(x) for x in c.items_ndjson.read_text().splitlines()] for c in cols}


def _path(asset: dict) -> str:
    assert asset["href"].startswith("file://")
    return asset["href"][len("file://"):]


def test_collections_and_counts(built: dict[str, list[dict]]) -> None:
    assert {k: len(v) for k, v in built.items()} == {
        "sentinel-2-l2a": 6, "sentinel-1-rtc": 6, "neon-aerial": 1, "landsat-c2-l2": 105, "landsat-7-nc": 1,
        "landsat-7-nc-landcover": 1, "bigearthnet-labels": 6}


def test_every_item_validates_offline_against_its_extensions(built: dict[str, list[dict]]) -> None:
    for items in built.values():
        for raw in items:
            item = pystac.Item.from_dict(raw)
            assert item.stac_extensions
            validate_offline(item)


def test_validation_catches_a_bad_field(built: dict[str, list[dict]]) -> None:
    raw = json.loads(json.dumps(built["sentinel-2-l2a"][0]))
    raw["properties"]["eo:cloud_cover"] = 140
    with pytest.raises(pystac.errors.STACValidationError):
        validate_offline(pystac.Item.from_dict(raw))
    raw = json.loads(json.dumps(built["sentinel-1-rtc"][0]))
    raw["properties"]["sar:frequency_band"] = "Q"
    with pytest.raises(pystac.errors.STACValidationError):
        validate_offline(pystac.Item.from_dict(raw))


def test_sentinel2_l2a_looks_like_planetary_computer(built: dict[str, list[dict]]) -> None:
    expected = {"B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"}
    for item in built["sentinel-2-l2a"]:
        assert set(item["assets"]) == expected
        props = item["properties"]
        assert props["proj:epsg"] == int(props["proj:code"].split(":")[1])
        assert props["s2:processing_baseline"] in ("02.05", "02.06")
        assert 0 <= props["eo:cloud_cover"] <= 100 and len(props["s2:mgrs_tile"]) == 5
        b05 = item["assets"]["B05"]
        assert b05["gsd"] == 20 and b05["proj:shape"] == [60, 60] and len(b05["proj:transform"]) == 6
        assert b05["raster:bands"][0]["nodata"] == 0 and b05["raster:bands"][0]["scale"] == 1e-4
        assert b05["eo:bands"][0]["common_name"] == "rededge"
        with rasterio.open(_path(b05)) as ds:
            assert ds.res == (20.0, 20.0) and ds.profile["compress"] == "deflate"
            assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    covers = [i["properties"]["eo:cloud_cover"] for i in built["sentinel-2-l2a"]]
    assert min(covers) < 1 < 50 < max(covers), "needs clear and cloudy/snowy items for cloud-cover searches"


def test_sentinel1_rtc_is_linear_gamma0_of_the_db_samples(built: dict[str, list[dict]]) -> None:
    for item in built["sentinel-1-rtc"]:
        assert set(item["assets"]) == {"vv", "vh"}
        suffix = "_".join(item["id"].split("_")[-2:])
        src = next((SAMPLES_DIR / "bigearthnet" / "BigEarthNet-S1-Example").glob(f"*_{suffix}"))
        for key in ("vv", "vh"):
            with rasterio.open(next(src.glob(f"*_{key.upper()}.tif"))) as ds:
                db = ds.read(1)
            with rasterio.open(_path(item["assets"][key])) as ds:
                linear = ds.read(1)
                assert ds.dtypes[0] == "float32"
            np.testing.assert_allclose(linear, np.power(10.0, db.astype(np.float64) / 10.0), rtol=1e-6)
        assert item["properties"]["sar:polarizations"] == ["VV", "VH"]


def test_landsat_dn_round_trips_to_reflectance_and_qa_bits_match_fmask(built: dict[str, list[dict]]) -> None:
    items = built["landsat-c2-l2"]
    assert all(set(i["assets"]) == {"red", "nir08", "swir16", "qa_pixel"} for i in items)
    item = next(i for i in items if 10 < i["properties"]["eo:cloud_cover"] < 90)
    scene = next(p for p in (SAMPLES_DIR / "landsat-timeseries-colorado").iterdir()
                 if p.is_dir() and item["id"].split("_")[2] == p.name[3:9]
                 and item["properties"]["datetime"][:4] == p.name[9:13]
                 and int(p.name[13:16]) == _doy(item["properties"]["datetime"]))
    with rasterio.open(scene / f"{scene.name}_b4.tif") as ds:
        sr = ds.read(1)
    with rasterio.open(_path(item["assets"]["nir08"])) as ds:
        dn = ds.read(1)
        assert ds.nodata == 0
    raster = item["assets"]["nir08"]["raster:bands"][0]
    valid = sr != -9999
    assert np.array_equal(dn == 0, ~valid)
    back = (dn[valid] * raster["scale"] + raster["offset"]) * 1e4
    assert np.abs(back - sr[valid]).max() <= 0.5  # within half a reflectance unit (x 10^4)
    with rasterio.open(scene / f"{scene.name}_fmask.tif") as ds:
        fmask = ds.read(1)
    with rasterio.open(_path(item["assets"]["qa_pixel"])) as ds:
        qa = ds.read(1)
    assert np.array_equal((qa >> 3) & 1 == 1, fmask == 4)  # cloud
    assert np.array_equal((qa >> 4) & 1 == 1, fmask == 2)  # shadow
    assert np.array_equal((qa >> 0) & 1 == 1, fmask == 255)  # fill
    cloud = 100 * np.count_nonzero(fmask == 4) / np.count_nonzero(fmask != 255)
    assert item["properties"]["eo:cloud_cover"] == pytest.approx(cloud, abs=0.01)


def _doy(ts: str) -> int:
    from datetime import datetime

    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timetuple().tm_yday


def test_conversion_helpers_on_edge_values() -> None:
    sr = np.array([-9999, -2000, 0, 16000], np.int16)
    assert sr_to_c2_dn(sr).tolist() == [0, 1, 7273, 65455]
    assert fmask_to_qa_pixel(np.array([0, 1, 2, 3, 4, 255], np.uint8)).tolist() == [64, 192, 16, 32, 8, 1]


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` by relative path; the folder's own path in the items made relative."""
    return {str(p.relative_to(root)): p.read_bytes().replace(str(root).encode(), b"<root>")
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


def test_build_is_deterministic(tmp_path: Path, built: dict[str, list[dict]]) -> None:
    a = build_catalogs(tmp_path / "a", samples_dir=SAMPLES_DIR)
    first = {c.collection_id: c.items_ndjson.read_bytes() for c in a}
    build_catalogs(tmp_path / "b", samples_dir=SAMPLES_DIR)  # again into a NEW folder: every COG made again
    tree_a, tree_b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert sorted(tree_a) == sorted(tree_b)
    differ = [name for name in tree_a if tree_a[name] != tree_b[name]]
    assert differ == [], f"not byte-identical when rebuilt: {differ[:5]}"
    aerial = json.loads(first["neon-aerial"])
    assert aerial["assets"]["image"]["gsd"] == 0.1 and len(aerial["assets"]["image"]["eo:bands"]) == 3
