"""The labelled sample collections: exact pixels and classes, label-extension fields, source links, validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio

from infra.local.catalog_labels import LANDCOVER_CLASSES
from infra.local.catalogs import build_catalogs, validate_offline
from infra.local.samples import SAMPLES_DIR

L7 = SAMPLES_DIR / "landsat7-nc-landcover"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    out = tmp_path_factory.mktemp("cat")
    cols = build_catalogs(out, samples_dir=SAMPLES_DIR, l1c_dir=None)
    return {c.collection_id: [json.loads(x) for x in c.items_ndjson.read_text().splitlines()] for c in cols}


def _read(asset: dict) -> tuple[np.ndarray, rasterio.crs.CRS, float | None]:
    with rasterio.open(asset["href"].removeprefix("file://")) as ds:
        return ds.read(1), ds.crs, ds.nodata


def test_landsat7_bands_are_the_samples_dn_on_epsg_32119(built: dict[str, list[dict]]) -> None:
    (item,) = built["landsat-7-nc"]
    assert item["properties"]["proj:code"] == "EPSG:32119" and item["properties"]["datetime"] is None
    assert item["properties"]["start_datetime"].startswith("2000-01-01")
    assert set(item["assets"]) == {"blue", "green", "red", "nir08", "swir16", "swir22"}
    for key, suffix, nodata in (("blue", "10", -99999), ("swir22", "70", -32768)):
        dn, crs, nd = _read(item["assets"][key])
        with rasterio.open(L7 / f"lsat7_2000_{suffix}.tif") as ds:
            src = ds.read(1)
            assert ds.nodata == nodata
        assert crs.to_epsg() == 32119 and nd == 0 and dn.dtype == np.uint8
        assert np.array_equal(dn == 0, src == nodata)
        assert np.array_equal(dn[src != nodata].astype(np.float64), src[src != nodata].astype(np.float64))
        assert item["assets"][key]["raster:bands"][0] == {"data_type": "uint8", "nodata": 0, "spatial_resolution": 28.5}


def test_landcover_is_a_raster_label_item_with_named_classes(built: dict[str, list[dict]]) -> None:
    (item,) = built["landsat-7-nc-landcover"]
    props = item["properties"]
    assert props["label:type"] == "raster" and props["label:properties"] is None
    assert props["label:classes"] == [{"name": None, "classes": [1, 2, 3, 4, 5, 6, 7]}]
    assert "classification" in props["label:tasks"]
    named = {c["value"]: c["name"] for c in item["assets"]["labels"]["classification:classes"]}
    assert named == LANDCOVER_CLASSES
    (source,) = [link for link in item["links"] if link["rel"] == "source"]
    assert source["href"] == f"/collections/landsat-7-nc/items/{built['landsat-7-nc'][0]['id']}"
    labels, crs, nodata = _read(item["assets"]["labels"])
    with rasterio.open(L7 / "strata.tif") as ds:
        src = ds.read(1)
    assert crs.to_epsg() == 3358 and nodata == 0
    assert np.array_equal(labels, np.where(src == -99999, 0, src).astype(np.uint8))
    counts = {c["name"]: c["count"] for c in props["label:overviews"][0]["counts"]}
    assert counts["forest"] == int((src == 5).sum()) and sum(counts.values()) == int((src > 0).sum())


def test_bigearthnet_labels_are_the_pairs_corine_classes(built: dict[str, list[dict]]) -> None:
    s2 = {i["id"]: i for i in built["sentinel-2-l2a"]}
    s1 = {i["id"] for i in built["sentinel-1-rtc"]}
    assert len(built["bigearthnet-labels"]) == 6
    for item in built["bigearthnet-labels"]:
        links = {link["href"].rsplit("/", 1)[-1] for link in item["links"] if link["rel"] == "source"}
        (s2_id,) = links & set(s2)
        assert len(links & s1) == 1
        feature = json.loads(Path(item["assets"]["labels"]["href"].removeprefix("file://")).read_text())["features"][0]
        assert feature["properties"]["labels"] == sorted(s2[s2_id]["properties"]["bigearthnet:labels"])
        assert set(feature["properties"]["labels"]) <= set(item["properties"]["label:classes"][0]["classes"])
        assert item["bbox"] == s2[s2_id]["bbox"] and item["properties"]["label:type"] == "vector"


def test_label_items_validate_and_a_broken_one_does_not(built: dict[str, list[dict]]) -> None:
    for key in ("landsat-7-nc", "landsat-7-nc-landcover", "bigearthnet-labels"):
        for raw in built[key]:
            validate_offline(pystac.Item.from_dict(raw))
    raw = json.loads(json.dumps(built["landsat-7-nc-landcover"][0]))
    raw["links"] = [link for link in raw["links"] if link["rel"] != "source"]
    with pytest.raises(pystac.errors.STACValidationError):
        validate_offline(pystac.Item.from_dict(raw))
    raw = json.loads(json.dumps(built["bigearthnet-labels"][0]))
    raw["properties"]["label:type"] = "tiles"
    with pytest.raises(pystac.errors.STACValidationError):
        validate_offline(pystac.Item.from_dict(raw))
