"""Bulk embeddings of a store: GeoParquet one row per chip with the chips' bounds, dense Zarr with CRS and x/y."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import xarray as xr
from pyproj import Transformer
from shapely.ops import transform as shp_transform

from anysat import AnySat, AnySatConfig
from modelops.cli.embed import main as embed_main
from pipeline.store.shards import StoreLayout, read_index


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(3)
    return AnySat(AnySatConfig.from_dict({"size": "tiny", "modalities": ["l7"]})).save(
        tmp_path_factory.mktemp("enc") / "encoder")


def _chips(store: Path) -> dict[str, tuple[int, np.ndarray]]:
    out = {}
    for url in read_index(StoreLayout(str(store)))["url"]:
        t = xr.open_zarr(url, group="chips", zarr_format=3, consolidated=False)
        out |= {str(c): (int(e), b) for c, e, b in zip(t["chip"].values, t["epsg"].values, t["bounds"].values,
                                                         strict=True)}  # fmt: skip
    return out


def test_geoparquet_has_one_row_per_chip_with_the_chip_bounds(landcover_store: Path, encoder: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    out = tmp_path / "emb.parquet"
    assert embed_main(["--model", str(encoder), "--store", str(landcover_store), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    chips = _chips(landcover_store)
    assert summary["rows"] == len(chips) and summary["mapping"] == {"l7": "l7"} and summary["patch_size"] == 60
    frame = gpd.read_parquet(out)
    assert frame.crs.to_string() == "OGC:CRS84" and sorted(frame["chip_id"]) == sorted(chips)  # WGS84 lon/lat
    to_native = Transformer.from_crs(4326, 32119, always_xy=True).transform
    for row in frame.itertuples():
        epsg, bounds = chips[row.chip_id]
        assert row.crs == f"EPSG:{epsg}"
        np.testing.assert_allclose(shp_transform(to_native, row.geometry).bounds, bounds, atol=1e-3)
    table = pq.read_table(out)
    kind = table.schema.field("embedding").type
    assert pa.types.is_fixed_size_list(kind) and kind.list_size == 256 and kind.value_type == pa.float32()
    assert json.loads(table.schema.metadata[b"geo"])["primary_column"] == "geometry"
    first = table.slice(0, 1).to_pylist()[0]
    assert first["item_ids"] == ["LE07_nc_2000_west"] and str(first["start_datetime"])[:4] == "2000"
    assert len(first["manifest_version"]) == 64 and np.isfinite(first["embedding"]).all()
    vectors = np.stack(table["embedding"].to_numpy(zero_copy_only=False))
    assert vectors.std(axis=0).mean() > 0  # chips differ


def test_dense_zarr_has_crs_and_xy_and_bad_arguments_exit_2(landcover_store: Path, encoder: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    out = tmp_path / "dense.zarr"
    assert embed_main(["--model", str(encoder), "--store", str(landcover_store), "--out", str(out)]) == 0
    ds = xr.open_zarr(out, group="EPSG_32119", zarr_format=3, consolidated=False)
    assert ds.attrs["crs"] == "EPSG:32119" and ds["embedding"].dims == ("y", "x", "dim")
    chips = _chips(landcover_store)
    minx = min(b[0] for _, b in chips.values())
    maxy = max(b[3] for _, b in chips.values())
    step = ds.attrs["patch_m"]
    assert step == pytest.approx(57.0)  # 60 m model patches = 2 pixels of 28.5 m
    assert float(ds["x"][0]) == pytest.approx(minx + step / 2) and float(ds["y"][0]) == pytest.approx(maxy - step / 2)
    filled = np.isfinite(ds["embedding"].values).all(axis=-1)
    assert filled.sum() == len(chips) * 16  # 4x4 patches per chip, no overlap
    capsys.readouterr()
    assert embed_main(["--model", str(encoder), "--store", str(landcover_store), "--out", "x.csv"]) == 2
    assert embed_main(["--model", str(encoder), "--store", str(landcover_store), "--map", "s1=s1-asc"]) == 1
    err = capsys.readouterr().err
    assert "--out must end in .parquet or .zarr" in err and "store groups are ['l7']" in err
    assert "Traceback" not in err


def test_store_groups_map_to_model_keys_for_any_subset_of_modalities() -> None:
    from modelops.embeddings import store_mapping
    from pipeline.errors import StoreError

    keys = ["s2", "s1-asc", "l7"]
    assert store_mapping(["s2"], keys) == {"s2": "s2"}  # an s2-only store (once forced to add s1)
    assert store_mapping(["s1", "s2"], keys) == {"s1": "s1-asc", "s2": "s2"}
    assert store_mapping(["s1"], keys, {"s1": "s1-asc"}) == {"s1": "s1-asc"}
    with pytest.raises(StoreError, match="no modality for store group 'aerial'"):
        store_mapping(["aerial"], keys)
    with pytest.raises(StoreError, match="--map"):
        store_mapping(["s2"], keys, {"s1": "s1-asc"})
