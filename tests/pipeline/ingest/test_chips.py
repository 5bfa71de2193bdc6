"""Chip loading on the sample catalogs: pixels equal direct rasterio reads after the documented conversions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import from_bounds

from pipeline.ingest.chips import CloudMask, SensorSpec, load_chip
from pipeline.ingest.grid import ChipPlan, Reject
from pipeline.store.records import Chip

S2 = SensorSpec("s2", ("B02", "B05", "B11"), ("B2", "B5", "B11"), 10.0, scale=1e-4, harmonize_s2=True)
S1 = SensorSpec("s1", ("vv", "vh"), ("VV", "VH"), 10.0, to_db=True, nodata=None)
AERIAL = SensorSpec("aerial", ("image.1", "image.2", "image.3"), ("R", "G", "B"), 0.1, nodata=None)
LANDSAT = SensorSpec("landsat", ("red", "nir08", "swir16"), ("red", "nir08", "swir16"), 30.0, scale=2.75e-5,
                     offset=0.2 / 2.75e-5, cloud=CloudMask("qa_pixel", bits=(0, 3, 4)))  # fmt: skip
SAMPLES = Path(__file__).resolve().parents[3] / "data" / "samples"


def _items(catalog_files, collection: str) -> dict[str, pystac.Item]:
    path = next(p for p in catalog_files if p.parent.name == collection and p.suffix == ".ndjson")
    return {i.id: i for i in (pystac.Item.from_dict(json.loads(x)) for x in path.read_text().splitlines())}


def _read(item: pystac.Item, key: str, bounds, res: float) -> np.ndarray:
    with rasterio.open(item.assets[key].href.removeprefix("file://")) as ds:
        h = round((bounds[3] - bounds[1]) / res)
        return ds.read(window=from_bounds(*bounds, transform=ds.transform), out_shape=(ds.count, h, h),
                       resampling=Resampling.nearest)  # fmt: skip


def test_s2_and_s1_chip_equals_rasterio_reads(catalog_files) -> None:
    s2, s1 = _items(catalog_files, "sentinel-2-l2a"), _items(catalog_files, "sentinel-1-rtc")
    s2_item = next(iter(s2.values()))
    s1_item = next(i for i in s1.values() if i.id.endswith("_87_48"))
    t = s2_item.assets["B02"].extra_fields["proj:transform"]
    bounds = (t[2] + 120, t[5] - 600, t[2] + 600, t[5] - 120)  # 480 m, offset from the patch corner
    plan = ChipPlan("c", 32633, bounds, 0.0, 0.0, {"s2": (s2_item.id,), "s1": (s1_item.id,)})
    chip, rejects = load_chip(plan, s2 | s1, {"s2": S2, "s1": S1})
    assert isinstance(chip, Chip) and rejects == []
    got = chip.modalities["s2"]
    assert got.data.shape == (1, 3, 48, 48) and got.bands == ("B2", "B5", "B11")
    for c, key in enumerate(("B02", "B05", "B11")):  # B05 and B11 are 20 m bands on the 10 m grid
        np.testing.assert_array_equal(got.data[0, c], _read(s2_item, key, bounds, 10.0)[0] * np.float32(1e-4))
    assert got.valid.all() and str(got.dates[0]) == "2017-06-13T10:10:31"
    s1_src = next((SAMPLES / "bigearthnet" / "BigEarthNet-S1-Example").glob("*_87_48"))
    with rasterio.open(next(s1_src.glob("*_VV.tif"))) as ds:
        vv_db = ds.read(1, window=from_bounds(*bounds, transform=ds.transform))
    np.testing.assert_allclose(chip.modalities["s1"].data[0, 0], vv_db, atol=1e-4)  # dB -> linear -> dB


def test_baseline_04_offset_is_removed(catalog_files) -> None:
    s2 = _items(catalog_files, "sentinel-2-l2a")
    item = next(iter(s2.values())).clone()
    item.properties["s2:processing_baseline"] = "05.10"  # same pixels, declared as a post-2022 product
    t = item.assets["B02"].extra_fields["proj:transform"]
    bounds = (t[2], t[5] - 100, t[2] + 100, t[5])
    plan = ChipPlan("c", 32633, bounds, 0.0, 0.0, {"s2": (item.id,)})
    chip, _ = load_chip(plan, {item.id: item}, {"s2": S2})
    assert isinstance(chip, Chip)
    np.testing.assert_allclose(chip.modalities["s2"].data[0, 0],
                               (_read(item, "B02", bounds, 10.0)[0].astype(np.float32) - 1000) * np.float32(1e-4))


def test_aerial_tile_at_01_m(catalog_files) -> None:
    item = _items(catalog_files, "neon-aerial")["OSBS_029"]
    t = item.assets["image"].extra_fields["proj:transform"]
    bounds = (t[2] + 10, t[5] - 30, t[2] + 30, t[5] - 10)
    plan = ChipPlan("c", 32617, bounds, 0.0, 0.0, {"aerial": ("OSBS_029",)})
    chip, _ = load_chip(plan, {"OSBS_029": item}, {"aerial": AERIAL})
    assert isinstance(chip, Chip)
    assert chip.modalities["aerial"].data.dtype == np.uint8
    np.testing.assert_array_equal(chip.modalities["aerial"].data[0], _read(item, "image", bounds, 0.1))


def test_landsat_cloud_bits_become_invalid_and_cloudy_chips_are_rejected(catalog_files) -> None:
    ls = _items(catalog_files, "landsat-c2-l2")
    cloudy = max(ls.values(), key=lambda i: i.properties["eo:cloud_cover"])
    clear = min(ls.values(), key=lambda i: i.properties["eo:cloud_cover"])
    t = clear.assets["red"].extra_fields["proj:transform"]
    bounds = (t[2], t[5] - 1800, t[2] + 1800, t[5])
    plan = ChipPlan("c", 32613, bounds, 0.0, 0.0, {"landsat": (clear.id, cloudy.id)})
    chip, rejects = load_chip(plan, ls, {"landsat": LANDSAT})
    assert isinstance(chip, Chip)
    assert [(r.kind, r.subject) for r in rejects] == [("fully_cloudy", cloudy.id)]  # dropped, the clear date kept
    mod = chip.modalities["landsat"]
    assert mod.item_ids == (clear.id,)
    qa = _read(clear, "qa_pixel", bounds, 30.0)[0][None]
    expected_valid = ((qa & 0b11001) == 0)
    np.testing.assert_array_equal(mod.valid, expected_valid)
    red = _read(clear, "red", bounds, 30.0)[0].astype(np.float32)
    idx = 0
    np.testing.assert_allclose(mod.data[idx, 0][mod.valid[idx]], (red * np.float32(2.75e-5) - np.float32(0.2))[mod.valid[idx]],
                               atol=1e-6)  # fmt: skip
    only_cloudy, rejects = load_chip(ChipPlan("d", 32613, bounds, 0.0, 0.0, {"landsat": (cloudy.id,)}), ls,
                                     {"landsat": LANDSAT})  # fmt: skip
    assert cloudy.properties["eo:cloud_cover"] == 100.0  # the sample series has a fully cloudy date
    assert only_cloudy is None and [r.kind for r in rejects] == ["fully_cloudy", "no_usable_item"]


def test_unreadable_and_missing_inputs_become_rejects(catalog_files) -> None:
    s2 = _items(catalog_files, "sentinel-2-l2a")
    item = next(iter(s2.values())).clone()
    item.assets["B02"].href = "https://sentinel2l2a01.blob.core.windows.net/x/B02.tif?sig=SECRET"
    t = item.assets["B05"].extra_fields["proj:transform"]
    plan = ChipPlan("c", 32633, (t[2], t[5] - 100, t[2] + 100, t[5]), 0.0, 0.0, {"s2": (item.id,)})
    chip, rejects = load_chip(plan, {item.id: item}, {"s2": S2},
                              sign=lambda h: h.replace("https://", "file:///nonexistent/"))  # fmt: skip
    assert chip is None and rejects[0].kind == "href_not_found" and rejects[0].subject == item.id
    assert all("SECRET" not in r.reason for r in rejects)
    chip, rejects = load_chip(plan, {}, {"s2": S2})
    assert chip is None and [r.kind for r in rejects] == ["missing_item", "no_usable_item"]
    with pytest.raises(ValueError, match="same length"):
        SensorSpec("s2", ("B02",), ("B2", "B3"), 10.0)


def test_landsat_chip_snaps_to_the_landsat_pixel_grid_and_reads_the_same_pixels_unshifted(catalog_files) -> None:
    from rasterio.windows import Window

    from pipeline.ingest.raster_reader import ChipReader
    from pipeline.store.shard_writer import build_shard

    ls = _items(catalog_files, "landsat-c2-l2")
    item = min(ls.values(), key=lambda i: i.properties["eo:cloud_cover"])
    t = item.assets["red"].extra_fields["proj:transform"]
    assert t[2] % 30 == 15 and t[5] % 30 == 15  # Landsat grids sit at 30 k + 15 m
    x0, y1 = 30 * math.ceil(t[2] / 30) + 300, 30 * math.floor(t[5] / 30) - 300  # chip corners on multiples of 30 m
    bounds = (x0, y1 - 300, x0 + 300, y1)
    with ChipReader() as reader:
        chip, rejects = load_chip(ChipPlan("c", 32613, bounds, 0.0, 0.0, {"landsat": (item.id,)}), ls,
                                  {"landsat": LANDSAT}, reader=reader)  # fmt: skip
        assert reader.reads["fallback"] == 0 and reader.reads["fast"] == 4  # red, nir08, swir16, qa_pixel: no resampling
    assert isinstance(chip, Chip) and rejects == []
    mod = chip.modalities["landsat"]
    assert mod.origin == (x0 + 15, y1 + 15)  # moved half a pixel onto the Landsat grid, and said so
    col, row = round((x0 + 15 - t[2]) / 30), round((t[5] - y1 - 15) / 30)
    with rasterio.open(item.assets["red"].href.removeprefix("file://")) as ds:
        red = ds.read(1, window=Window(col, row, 10, 10)).astype(np.float32)  # the same pixels, no resampling
    expected = red * np.float32(2.75e-5) - np.float32(0.2)
    np.testing.assert_allclose(mod.data[0, 0][mod.valid[0]], expected[mod.valid[0]], atol=1e-6)
    attrs = build_shard([chip], {"landsat": 1}).groups["landsat"]
    assert (attrs["x_origin"], attrs["y_origin"]) == ([x0 + 15], [y1 + 15])


@pytest.mark.parametrize("field, value, words", [
    ("proj:code", "EPSG:32632", ["EPSG:32632", "EPSG:32633"]),
    ("proj:shape", [100, 120], ["proj:shape", "[100, 120]", "[120, 120]"]),
    ("proj:transform", [10.0, 0.0, 404410.0, 0.0, -10.0, 5342400.0], ["proj:transform", "404410.0", "404400.0"]),
])  # fmt: skip
def test_metadata_disagreeing_with_the_file_is_a_recorded_reject(catalog_files, field, value, words) -> None:
    s2 = _items(catalog_files, "sentinel-2-l2a")
    item = next(i for i in s2.values() if i.id.endswith("_87_48")).clone()
    item.assets["B02"].extra_fields[field] = value  # the B02 file is EPSG:32633, 120 x 120 px at (404400, 5342400)
    t = item.assets["B05"].extra_fields["proj:transform"]
    plan = ChipPlan("c", 32633, (t[2], t[5] - 100, t[2] + 100, t[5]), 0.0, 0.0, {"s2": (item.id,)})
    chip, rejects = load_chip(plan, {item.id: item}, {"s2": S2})
    assert chip is None and [r.kind for r in rejects] == ["metadata_mismatch", "no_usable_item"]
    assert all(w in rejects[0].reason for w in words), rejects[0].reason
