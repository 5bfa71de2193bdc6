"""Zarr v3 shards: bit-identical round trips of real pixels, locally and on the S3 server; commit protocol."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
import zarr

from pipeline.errors import StoreError
from pipeline.store.records import Chip, ModalityArray
from pipeline.store.shards import StoreLayout, is_committed, open_shard, read_index, rebuild_index, write_shard

SAMPLES = Path(__file__).resolve().parents[3] / "data" / "samples"


def _chips() -> list[Chip]:
    scenes = sorted(glob.glob(str(SAMPLES / "landsat-timeseries-colorado" / "L*")))[:5]
    data = np.stack([np.stack([rasterio.open(glob.glob(f"{s}/*_{b}.tif")[0]).read(1)[:30, :30]
                               for b in ("b3", "b4", "b5")]) for s in scenes]).astype(np.float32)  # fmt: skip
    fmask = np.stack([rasterio.open(glob.glob(f"{s}/*_fmask.tif")[0]).read(1)[:30, :30] for s in scenes])
    valid = (data[:, 0] != -9999) & (fmask != 4)
    ids = tuple(Path(s).name for s in scenes)
    dates = np.array([f"{n[9:13]}-01-01" for n in ids], dtype="datetime64[D]") + np.array(
        [int(n[13:16]) - 1 for n in ids])  # fmt: skip
    dates = dates.astype("datetime64[s]")
    aerial = rasterio.open(SAMPLES / "neon-aerial" / "OSBS_029.tif").read()[:, :300, :300]  # 30 m at 0.1 m, uint8
    x0, y0 = 336375.0, 4462425.0
    return [
        Chip("a", 32613, (x0, y0 - 900, x0 + 900, y0), -104.9, 40.3,
             {"landsat": ModalityArray(data, valid, dates, ids, ("red", "nir08", "swir16"), 30.0)}),
        Chip("b", 32613, (x0, y0 - 30, x0 + 30, y0), -104.9, 40.3,
             {"aerial": ModalityArray(aerial[None], np.ones((1, 300, 300), bool), dates[:1], ids[:1],
                                      ("red", "green", "blue"), 0.1),
              "landsat": ModalityArray(data[:2, :, :1, :1], valid[:2, :1, :1], dates[:2], ids[:2],
                                       ("red", "nir08", "swir16"), 30.0)}),
    ]  # fmt: skip


def _check_round_trip(layout: StoreLayout, options: dict | None = None) -> None:
    chips = _chips()[:1]
    info = write_shard(chips, layout=layout, shard_id="s-0001", dataset_meta={"manifest": "abc"})
    assert is_committed(layout, "s-0001")
    ds = open_shard(info.url, "landsat", storage_options=options)
    mod = chips[0].modalities["landsat"]
    assert ds["data"].dims == ("chip", "time", "band", "y", "x") and ds.sizes["time"] == 6
    np.testing.assert_array_equal(ds["data"].values[0, :5], mod.data)
    np.testing.assert_array_equal(ds["valid"].values[0, :5], mod.valid)
    assert ds["date_mask"].values[0].tolist() == [True] * 5 + [False]
    assert list(ds["dates"].values[0, :5].astype("datetime64[s]")) == list(mod.dates)
    assert list(ds["item_ids"].values[0, :5]) == list(mod.item_ids)
    assert list(ds["band"].values) == ["red", "nir08", "swir16"] and ds.attrs["crs"] == "EPSG:32613"
    assert ds["data"].encoding["shards"] == (1, 6, 3, 30, 30) and ds["data"].encoding["chunks"] == (1, 6, 3, 30, 30)
    index = read_index(layout)
    assert index["shard_id"].tolist() == ["s-0001"] and index["n_chips"].tolist() == [1]


def test_round_trip_on_a_local_path(tmp_path: Path) -> None:
    _check_round_trip(StoreLayout(str(tmp_path / "ds"), max_dates={"landsat": 6}))


@pytest.mark.stack
def test_round_trip_on_the_s3_server(stack_env: dict[str, str]) -> None:
    options = {"key": stack_env["AWS_ACCESS_KEY_ID"], "secret": stack_env["AWS_SECRET_ACCESS_KEY"],
               "endpoint_url": stack_env["AWS_ENDPOINT_URL"]}  # fmt: skip
    url = f"{stack_env['ANYSAT_STORE_URL']}/tests/store-{np.random.default_rng().integers(1e9)}"
    _check_round_trip(StoreLayout(url, max_dates={"landsat": 6}, storage_options=options), options)


def test_mixed_modalities_uint8_and_padding(tmp_path: Path) -> None:
    layout = StoreLayout(str(tmp_path / "ds"), max_dates={"landsat": 5, "aerial": 1})
    chips = _chips()
    with pytest.raises(StoreError, match="the shard's other chips"):  # landsat chips of different sizes
        write_shard(chips, layout=layout, shard_id="bad")
    assert not is_committed(layout, "bad")
    info = write_shard(chips[1:], layout=layout, shard_id="ok")
    aerial = xr.open_zarr(info.url, group="aerial", zarr_format=3, consolidated=False)
    assert aerial["data"].dtype == np.uint8
    np.testing.assert_array_equal(aerial["data"].values[0, 0], chips[1].modalities["aerial"].data[0])
    meta = zarr.open_group(info.url, path="chips", mode="r", zarr_format=3)
    assert meta["bounds"][:].tolist() == [list(chips[1].bounds)]


def test_commit_protocol_hash_and_index_rebuild(tmp_path: Path) -> None:
    layout = StoreLayout(str(tmp_path / "ds"), max_dates={"landsat": 6})
    chips = _chips()[:1]
    first = write_shard(chips, layout=layout, shard_id="s1")
    again = write_shard(chips, layout=layout, shard_id="s1")  # committed: no rewrite
    assert again.content_hash == first.content_hash and again.created_at == first.created_at
    other = StoreLayout(str(tmp_path / "ds2"), max_dates={"landsat": 6})
    assert write_shard(chips, layout=other, shard_id="s1").content_hash == first.content_hash  # deterministic
    changed = chips[0].modalities["landsat"]
    data = changed.data.copy()
    data[0, 0, 0, 0] += 1
    moved = Chip("a", 32613, chips[0].bounds, 0.0, 0.0, {"landsat": ModalityArray(
        data, changed.valid, changed.dates, changed.item_ids, changed.bands, 30.0)})  # fmt: skip
    assert write_shard([moved], layout=other, shard_id="s2").content_hash != first.content_hash
    # a crashed write: files without the marker are invisible and the shard counts as absent
    (tmp_path / "ds" / "shards" / "s3.zarr").mkdir(parents=True)
    (tmp_path / "ds" / "shards" / "s3.zarr" / "zarr.json").write_text("{}")
    assert not is_committed(layout, "s3")
    with pytest.raises(StoreError, match="not a committed shard"):
        open_shard(str(tmp_path / "ds" / "shards" / "s3.zarr"), "landsat")
    (tmp_path / "ds" / "shards.parquet").unlink(missing_ok=True)
    index = rebuild_index(layout)
    assert index["shard_id"].tolist() == ["s1"]
    marker = json.loads((tmp_path / "ds" / "shards" / "s1.zarr" / "_COMMITTED").read_text())
    assert marker["content_hash"] == first.content_hash and "key" not in json.dumps(marker)
    write_shard(chips, layout=layout, shard_id="s3")  # the re-run replaces the partial shard
    assert sorted(rebuild_index(layout)["shard_id"]) == ["s1", "s3"]
