"""`load_items` on the sample catalogs equals a direct rasterio read, for both backends."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import from_bounds

from pipeline.errors import ChipError
from pipeline.ingest.raster_load import item_epsg, load_items

BACKENDS = ("odc", "stackstac")


def _items(catalog_files: tuple[Path, ...], collection: str) -> list[pystac.Item]:
    path = next(p for p in catalog_files if p.parent.name == collection and p.suffix == ".ndjson")
    return [pystac.Item.from_dict(json.loads(line)) for line in path.read_text().splitlines()]


def _href(item: pystac.Item, key: str) -> str:
    return item.assets[key].href.removeprefix("file://")


def _origin(item: pystac.Item, key: str) -> tuple[float, float]:
    t = item.assets[key].extra_fields["proj:transform"]
    return t[2], t[5]


@pytest.mark.parametrize("backend", BACKENDS)
def test_native_grid_window_is_bit_identical(catalog_files, backend: str) -> None:
    item = _items(catalog_files, "sentinel-2-l2a")[2]
    x0, y0 = _origin(item, "B04")
    bounds = (x0 + 200, y0 - 800, x0 + 700, y0 - 300)  # a 50x50 window inside the patch
    arr = load_items([item], assets=["B04", "B08"], crs=item_epsg(item), bounds=bounds, resolution=10,
                     backend=backend)  # fmt: skip
    assert arr.dims == ("time", "band", "y", "x") and arr.shape == (1, 2, 50, 50)
    assert arr.attrs["crs"] == f"EPSG:{item_epsg(item)}" and arr.attrs["resolution"] == 10
    assert float(arr.x[0]) == x0 + 205 and float(arr.y[0]) == y0 - 305  # pixel centres
    for i, key in enumerate(("B04", "B08")):
        with rasterio.open(_href(item, key)) as ds:
            assert ds.crs.to_epsg() == item_epsg(item)
            ref = ds.read(1, window=from_bounds(*bounds, transform=ds.transform))
        assert arr.dtype == ref.dtype
        np.testing.assert_array_equal(arr.values[0, i], ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_20m_band_on_the_10m_grid_matches_rasterio_nearest(catalog_files, backend: str) -> None:
    item = _items(catalog_files, "sentinel-2-l2a")[0]
    x0, y0 = _origin(item, "B02")
    bounds = (x0, y0 - 600, x0 + 600, y0)
    arr = load_items([item], assets=["B11"], crs=item_epsg(item), bounds=bounds, resolution=10, backend=backend)
    with rasterio.open(_href(item, "B11")) as ds:
        assert ds.res == (20.0, 20.0)
        ref = ds.read(1, window=from_bounds(*bounds, transform=ds.transform), out_shape=(60, 60),
                      resampling=Resampling.nearest)  # fmt: skip
    np.testing.assert_array_equal(arr.values[0, 0], ref)


def test_aerial_multiband_image_at_01m(catalog_files) -> None:
    item = _items(catalog_files, "neon-aerial")[0]
    x0, y0 = _origin(item, "image")
    bounds = (x0 + 5, y0 - 25, x0 + 25, y0 - 5)
    arr = load_items([item], assets=["image.1", "image.2", "image.3"], crs=item_epsg(item), bounds=bounds,
                     resolution=0.1)  # fmt: skip
    with rasterio.open(_href(item, "image")) as ds:
        ref = ds.read(window=from_bounds(*bounds, transform=ds.transform))
    assert arr.shape == (1, 3, 200, 200)
    np.testing.assert_array_equal(arr.values[0], ref)
    with pytest.raises(ChipError, match="multi-band"):
        load_items([item], assets=["image.1"], crs=item_epsg(item), bounds=bounds, resolution=0.1,
                   backend="stackstac")  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
def test_landsat_time_series_keeps_order_and_per_asset_nodata(catalog_files, backend: str) -> None:
    items = _items(catalog_files, "landsat-c2-l2")[:6][::-1]  # newest first: the caller's order is kept
    x0, y0 = _origin(items[0], "red")
    bounds = (x0, y0 - 61 * 30, x0 + 61 * 30, y0)
    arr = load_items(items, assets=["red", "qa_pixel"], crs=32613, bounds=bounds, resolution=30, backend=backend)
    assert arr.shape == (6, 2, 61, 61)
    for t, item in enumerate(items):
        for b, key in enumerate(("red", "qa_pixel")):
            with rasterio.open(_href(item, key)) as ds:
                np.testing.assert_array_equal(arr.values[t, b], ds.read(1))


def test_sign_is_applied_to_hrefs_right_before_reading_and_not_kept(catalog_files) -> None:
    item = _items(catalog_files, "sentinel-2-l2a")[0].clone()
    real = item.assets["B02"].href
    unsigned = "https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/B02.tif"
    item.assets["B02"].href = unsigned  # unreadable unless the signer turns it into a readable href

    def sign(href: str) -> str:
        return real if href == unsigned else href

    x0, y0 = _origin(item, "B02")
    arr = load_items([item], assets=["B02"], crs=item_epsg(item), bounds=(x0, y0 - 100, x0 + 100, y0),
                     resolution=10, sign=sign)  # fmt: skip
    with rasterio.open(real.removeprefix("file://")) as ds:
        np.testing.assert_array_equal(arr.values[0, 0], ds.read(1, window=((0, 10), (0, 10))))
    assert item.assets["B02"].href == unsigned  # the caller's item keeps its unsigned href


def test_clear_errors(catalog_files) -> None:
    item = _items(catalog_files, "sentinel-2-l2a")[0]
    x0, y0 = _origin(item, "B02")
    good = (x0, y0 - 100, x0 + 100, y0)
    with pytest.raises(ChipError, match="has no asset"):
        load_items([item], assets=["B10"], crs=item_epsg(item), bounds=good, resolution=10)
    with pytest.raises(ChipError, match="max > min"):
        load_items([item], assets=["B02"], crs=item_epsg(item), bounds=(x0, y0, x0, y0), resolution=10)
    broken = item.clone()
    broken.assets["B02"].href = "file:///nonexistent/B02.tif"
    with pytest.raises(ChipError, match="failed"):
        load_items([broken], assets=["B02"], crs=item_epsg(item), bounds=good, resolution=10)
    no_crs = item.clone()
    no_crs.properties.pop("proj:code", None)
    no_crs.properties.pop("proj:epsg", None)
    with pytest.raises(ChipError, match="proj:code"):
        item_epsg(no_crs)
