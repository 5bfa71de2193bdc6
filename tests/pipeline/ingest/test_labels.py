"""Labels attached at ingestion: the stored label rasters, majorities and fractions equal the label file read directly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.windows
import xarray as xr

from pipeline.config import load_config
from pipeline.errors import StoreError
from pipeline.ingest.config import IngestConfig
from pipeline.store.labels import label_files, read_labels, summarise
from pipeline.store.shards import StoreLayout, read_index

ROOT = Path(__file__).resolve().parents[3]
STRATA = ROOT / "data" / "samples" / "landsat7-nc-landcover" / "strata.tif"


def test_stored_labels_equal_the_label_raster_read_directly(landcover_store: Path) -> None:
    labels = read_labels(str(landcover_store))
    index = read_index(StoreLayout(str(landcover_store)))
    assert labels.sizes["chip"] == sum(len(c) for c in index["chip_ids"]) >= 150
    assert list(labels["class_name"].values) == ["developed", "agriculture", "herbaceous", "shrubland", "forest",
                                                 "water", "sediment"]  # fmt: skip
    with rasterio.open(STRATA) as ds:
        strata, transform = ds.read(1), ds.transform
    chips = {}
    for url in index["url"]:
        table = xr.open_zarr(url, group="chips", zarr_format=3, consolidated=False)
        chips |= {str(c): b for c, b in zip(table["chip"].values, table["bounds"].values, strict=True)}
    seen = set()
    for chip_id in labels["chip"].values:
        minx, miny, maxx, maxy = chips[str(chip_id)]
        window = rasterio.windows.from_bounds(minx, miny, maxx, maxy, transform).round_offsets().round_lengths()
        direct = strata[window.toslices()]
        direct = np.where(direct == -99999, 0, direct).astype(np.uint8)
        stored = labels["label"].sel(chip=chip_id).values
        assert stored.shape == direct.shape == (8, 8)
        np.testing.assert_array_equal(stored, direct, err_msg=str(chip_id))
        values, counts = np.unique(direct[direct > 0], return_counts=True)
        assert int(labels["majority"].sel(chip=chip_id)) == values[np.argmax(counts)]
        fractions = dict(zip(labels["class"].values.tolist(), labels["fractions"].sel(chip=chip_id).values))
        for v, n in zip(values, counts, strict=True):
            assert fractions[int(v)] == pytest.approx(n / counts.sum())
        seen.update(values.tolist())
    assert {1, 3, 5} <= seen  # developed, herbaceous and forest chips in the northern third


def test_labels_group_opens_with_xarray_and_is_keyed_by_chip_id(landcover_store: Path) -> None:
    url = read_index(StoreLayout(str(landcover_store)))["url"][0]
    group = xr.open_zarr(url, group="labels", zarr_format=3, consolidated=False)
    pixels = xr.open_zarr(url, group="l7", zarr_format=3, consolidated=False)
    assert list(group["chip"].values) == list(pixels["chip"].values)
    assert group["label"].shape[1:] == pixels["data"].shape[-2:] and group.attrs["crs"] == "EPSG:32119"


def test_label_writer_refuses_values_that_are_not_classes() -> None:
    good = np.array([[1, 2], [2, 0]], np.uint8)
    assert summarise(good, [1, 2])[0] == 2 and summarise(good, [1, 2])[2] == 0.75
    files = label_files(["a"], [good], ["item"], {1: "x", 2: "y"}, attrs={})
    assert "labels/label/zarr.json" in files
    with pytest.raises(StoreError, match="chip b: label values \\[9\\]"):
        label_files(["a", "b"], [good, np.full((2, 2), 9, np.uint8)], ["i", "i"], {1: "x", 2: "y"}, attrs={})


def test_a_store_without_labels_says_so(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no committed shard"):
        read_labels(str(tmp_path))
    with pytest.raises(ValueError, match="'labels' cannot be a sensor modality"):
        load_config(IngestConfig, ROOT / "configs" / "ingest-landcover.yaml", ["sensors.0.modality=labels"])
