"""ChipReader: the rasterio fast path and the odc-stac path give identical arrays on the sample catalogs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pystac
import pytest
from pyproj import Transformer

from pipeline.errors import ChipError
from pipeline.ingest.raster_load import item_epsg, load_items
from pipeline.ingest.raster_reader import ChipReader


def _items(catalog_files: tuple[Path, ...], collection: str) -> list[pystac.Item]:
    path = next(p for p in catalog_files if p.parent.name == collection and p.suffix == ".ndjson")
    return [pystac.Item.from_dict(json.loads(line)) for line in path.read_text().splitlines()]


def _origin(item: pystac.Item, key: str) -> tuple[float, float]:
    t = item.assets[key].extra_fields["proj:transform"]
    return t[2], t[5]


def _both(item: pystac.Item, assets: list[str], **grid: object) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    with ChipReader() as fast, ChipReader(fast_path=False) as odc:
        a = fast.read_item(item, assets, **grid)  # type: ignore[arg-type]
        b = odc.read_item(item, assets, **grid)  # type: ignore[arg-type]
        assert (odc.reads["fast"], odc.reads["fallback"]) == (0, len({x.split(".")[0] for x in assets}))
        return a, b, fast.reads


@pytest.mark.parametrize("dx", [0, 10, 130])  # 20/60 m pixel edges on, beside and between the 10 m chip edges
def test_sentinel2_10_20_60_m_bands_fast_path_equals_odc(catalog_files, dx: int) -> None:
    item = _items(catalog_files, "sentinel-2-l2a")[1]
    x0, y0 = _origin(item, "B02")
    bounds = (x0 + dx, y0 - 480 - dx, x0 + 480 + dx, y0 - dx)
    fast, odc, reads = _both(item, ["B02", "B05", "B11", "B01", "B08"], epsg=item_epsg(item), bounds=bounds,
                             resolution=10.0)  # fmt: skip
    assert (reads["fast"], reads["fallback"]) == (5, 0)
    assert fast.shape == (5, 48, 48) and fast.dtype == odc.dtype
    np.testing.assert_array_equal(fast, odc)


def test_landsat_qa_and_aerial_multiband_fast_path_equals_odc(catalog_files) -> None:
    ls = _items(catalog_files, "landsat-c2-l2")[3]
    x0, y0 = _origin(ls, "red")
    fast, odc, reads = _both(ls, ["red", "qa_pixel"], epsg=item_epsg(ls), bounds=(x0 + 30, y0 - 930, x0 + 930, y0 - 30),
                             resolution=30.0)  # fmt: skip
    assert reads["fast"] == 2 and fast.dtype == odc.dtype == np.uint16
    np.testing.assert_array_equal(fast, odc)
    aerial = _items(catalog_files, "neon-aerial")[0]
    x0, y0 = _origin(aerial, "image")
    fast, odc, reads = _both(aerial, ["image.3", "image.1"], epsg=item_epsg(aerial),
                             bounds=(x0 + 3.2, y0 - 23.2, x0 + 23.2, y0 - 3.2), resolution=0.1)  # fmt: skip
    assert reads["fast"] == 1 and fast.dtype == np.uint8 and fast.shape == (2, 200, 200)
    np.testing.assert_array_equal(fast, odc)


def test_unaligned_reprojected_partial_and_finer_grids_fall_back_to_odc(catalog_files) -> None:
    item = _items(catalog_files, "sentinel-2-l2a")[0]
    x0, y0 = _origin(item, "B02")
    epsg = item_epsg(item)
    to_next_zone = Transformer.from_crs(epsg, epsg + 1, always_xy=True).transform
    cx, cy = to_next_zone(x0 + 600, y0 - 600)
    cx, cy = round(cx / 10) * 10, round(cy / 10) * 10
    cases = {
        "half-pixel shift": (epsg, (x0 + 5, y0 - 485, x0 + 485, y0 - 5), 10.0),
        "other UTM zone": (epsg + 1, (cx - 200, cy - 200, cx + 200, cy + 200), 10.0),
        "reaches outside the item": (epsg, (x0 - 100, y0 - 380, x0 + 380, y0 + 100), 10.0),
        "finer asset, coarser grid": (epsg, (x0, y0 - 600, x0 + 600, y0), 30.0),
    }
    for name, (crs, bounds, res) in cases.items():
        with ChipReader() as reader:
            got = reader.read_item(item, ["B04", "B11"], epsg=crs, bounds=bounds, resolution=res)
            assert (reader.reads["fast"], reader.reads["fallback"]) == (0, 2), name
        ref = load_items([item], assets=["B04", "B11"], crs=crs, bounds=bounds, resolution=res).values[0]
        assert got.dtype == ref.dtype, name
        np.testing.assert_array_equal(got, ref, err_msg=name)
        assert got.any(), name


def test_datasets_are_opened_once_per_reader_and_signing_is_not_kept(catalog_files) -> None:
    item = _items(catalog_files, "sentinel-2-l2a")[0].clone()
    real = item.assets["B02"].href
    unsigned = "https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/B02.tif"
    item.assets["B02"].href = unsigned
    signed: list[str] = []

    def sign(href: str) -> str:
        signed.append(href)
        return real if href == unsigned else href

    x0, y0 = _origin(item, "B02")
    with ChipReader(sign=sign) as reader:
        for dy in (0, 100, 200):
            reader.read_item(item, ["B02", "B03"], epsg=item_epsg(item), bounds=(x0, y0 - dy - 100, x0 + 100, y0 - dy),
                             resolution=10.0)  # fmt: skip
    assert sorted(signed) == sorted([unsigned, item.assets["B03"].href])  # one open per asset for three chips
    assert item.assets["B02"].href == unsigned
    with ChipReader() as reader, pytest.raises(ChipError, match="has no asset"):
        reader.read_item(item, ["B10"], epsg=item_epsg(item), bounds=(x0, y0 - 100, x0 + 100, y0), resolution=10.0)


def test_shard_block_reads_equal_per_chip_reads(catalog_files) -> None:
    item = _items(catalog_files, "sentinel-2-l2a")[4]
    x0, y0 = _origin(item, "B02")
    chips = [(x0 + i * 240 + 10, y0 - (j + 1) * 240 - 10, x0 + (i + 1) * 240 + 10, y0 - j * 240 - 10)
             for i in range(4) for j in range(4)]  # a 4x4 block of neighbouring chips, off the 20 m pixel edges
    grid = {"epsg": item_epsg(item), "resolution": 10.0}
    with ChipReader(chips=chips) as shard, ChipReader() as alone:
        for bounds in chips:
            got = shard.read_item(item, ["B03", "B8A", "B09"], bounds=bounds, **grid)  # type: ignore[arg-type]
            ref = alone.read_item(item, ["B03", "B8A", "B09"], bounds=bounds, **grid)  # type: ignore[arg-type]
            np.testing.assert_array_equal(got, ref)
        assert shard.reads["blocks"] == 3 and alone.reads["blocks"] == 0  # one block read per asset


def test_chips_wrapping_into_the_next_column_read_one_block_per_column(catalog_files) -> None:
    item = _items(catalog_files, "sentinel-2-l2a")[4]
    x0, y0 = _origin(item, "B02")
    cells = [(0, j) for j in range(1, 4)] + [(1, 0)]  # sorted ids wrap: the foot of one column, the head of the next
    chips = [(x0 + i * 240 + 10, y0 - (j + 1) * 240 - 10, x0 + (i + 1) * 240 + 10, y0 - j * 240 - 10) for i, j in cells]
    grid = {"epsg": item_epsg(item), "resolution": 10.0}
    with ChipReader(chips=chips) as shard, ChipReader() as alone:
        for bounds in chips:
            got = shard.read_item(item, ["B03", "B8A"], bounds=bounds, **grid)  # type: ignore[arg-type]
            ref = alone.read_item(item, ["B03", "B8A"], bounds=bounds, **grid)  # type: ignore[arg-type]
            np.testing.assert_array_equal(got, ref)
        assert shard.reads["blocks"] == 2  # per asset the column of three (the lone chip is read alone)
        blocks = [b for found in shard._blocks.values() for _, _, b in found]
        assert [b.shape[1:] for b in blocks] == [(72, 24), (37, 13)]  # one chip wide (24 px at 10 m, 13 at 20 m)


def test_local_datasets_stay_open_between_readers_and_reopen_when_the_file_changes(catalog_files, tmp_path) -> None:
    import rasterio

    item = _items(catalog_files, "sentinel-2-l2a")[0].clone()
    src = Path(item.assets["B02"].href.removeprefix("file://"))
    copy = tmp_path / "B02.tif"
    copy.write_bytes(src.read_bytes())
    item.assets["B02"].href = str(copy)
    x0, y0 = _origin(item, "B02")
    grid = {"epsg": item_epsg(item), "bounds": (x0, y0 - 100, x0 + 100, y0), "resolution": 10.0}
    with ChipReader() as first:
        before = first.read_item(item, ["B02"], **grid)  # type: ignore[arg-type]
        ds = first._open[str(copy)][0]
    with ChipReader() as second:
        np.testing.assert_array_equal(second.read_item(item, ["B02"], **grid), before)  # type: ignore[arg-type]
        assert second._open[str(copy)][0] is ds and not ds.closed  # the same open dataset, not reopened
    with rasterio.open(src) as s:
        profile, pixels = s.profile, s.read()
    replaced = tmp_path / "new.tif"
    with rasterio.open(replaced, "w", **profile) as dst:
        dst.write(pixels + 1)
    replaced.replace(copy)  # a new file at the same path
    with ChipReader() as third:
        np.testing.assert_array_equal(third.read_item(item, ["B02"], **grid), before + 1)  # type: ignore[arg-type]
    assert ds.closed
