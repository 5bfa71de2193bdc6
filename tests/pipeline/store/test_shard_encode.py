"""The direct shard encoder writes exactly the files zarr writes, and xarray reads them back."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import rasterio
import xarray as xr

from pipeline.store.records import Chip, ModalityArray
from pipeline.store.shard_writer import build_shard, encode_shard, encode_shard_zarr

SAMPLES = Path(__file__).resolve().parents[3] / "data" / "samples"


def _landsat(t: int, nan_chip: bool) -> list[Chip]:
    scenes = sorted(glob.glob(str(SAMPLES / "landsat-timeseries-colorado" / "L*")))[:t]
    data = np.stack([np.stack([rasterio.open(glob.glob(f"{s}/*_{b}.tif")[0]).read(1)[:20, :20] for b in ("b3", "b4")])
                     for s in scenes]).astype(np.float32) * np.float32(1e-4)  # fmt: skip
    valid = data[:, 0] > -0.5
    ids = tuple(Path(s).name for s in scenes)
    dates = np.array(["2010-01-01"], "datetime64[s]") + np.arange(t).astype("timedelta64[D]")
    chips = []
    for k in range(3):
        d = np.full_like(data, np.nan) if nan_chip and k == 1 else data + k  # an all-NaN chip: no inner chunk
        v = np.zeros_like(valid) if nan_chip and k == 1 else valid
        mod = ModalityArray(d[: t - k % 2], v[: t - k % 2], dates[: t - k % 2], ids[: t - k % 2], ("red", "nir"), 30.0)
        chips.append(Chip(f"32613_{k}_é", 32613, (k * 600.0, 0.0, (k + 1) * 600.0, 600.0), -105.0, 40.0,
                          {"landsat": mod}))  # fmt: skip
    return chips


def test_direct_encoder_is_byte_identical_to_zarr_and_reads_back_with_xarray(tmp_path: Path) -> None:
    aerial = rasterio.open(SAMPLES / "neon-aerial" / "OSBS_029.tif").read()[:, :100, :100]  # uint8
    mixed = _landsat(4, nan_chip=False)
    mixed[0] = Chip(mixed[0].chip_id, 32613, (0.0, 590.0, 10.0, 600.0), -105.0, 40.0,
                    {"aerial": ModalityArray(aerial[None], np.ones((1, 100, 100), bool), np.array(["2020-05-01"],
                     "datetime64[s]"), ("OSBS_029",), ("r", "g", "b"), 0.1)})  # fmt: skip
    for chips, max_dates in ((_landsat(4, nan_chip=True), {"landsat": 6}), (mixed, {})):
        content = build_shard(chips, max_dates)
        direct, reference = encode_shard(content, 3), encode_shard_zarr(content, 3)
        assert sorted(direct) == sorted(reference)
        assert [n for n in reference if direct[n] != reference[n]] == []
    for name, blob in direct.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(blob)
    ds = xr.open_zarr(tmp_path, group="landsat", zarr_format=3, consolidated=False)
    np.testing.assert_array_equal(ds["data"].values[2, :4], mixed[2].modalities["landsat"].data)
    assert list(ds["chip"].values) == [c.chip_id for c in mixed] and list(ds["band"].values) == ["red", "nir"]
    assert ds["date_mask"].values[:, :4].tolist() == [[False] * 4, [True, True, True, False], [True] * 4]
    assert str(ds["dates"].values[2, 3])[:10] == "2010-01-04" and np.isnat(ds["dates"].values[1, 3])
    aerial_ds = xr.open_zarr(tmp_path, group="aerial", zarr_format=3, consolidated=False)
    np.testing.assert_array_equal(aerial_ds["data"].values[0, 0], aerial)
