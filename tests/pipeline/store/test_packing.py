"""Half the bytes: scaled integer sources stored as uint16 decode to exactly the float32 store's values.

The same real chips (Sentinel-2 L2A on both sides of processing baseline 04.00, a Landsat C2 L2 series with
cloud bits and a non-integer offset, Sentinel-1 in dB) are loaded twice, with `pack` on and off, and written as
two stores; the loader's reads of both are compared bit for bit, xarray's CF decoding to float32 rounding.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pystac
import xarray as xr

from pipeline.ingest.chips import CloudMask, SensorSpec, load_chip
from pipeline.ingest.grid import ChipPlan
from pipeline.load.batches import BandNorm, read_shard_arrays
from pipeline.store.records import Chip, ModalityArray
from pipeline.store.shard_reader import read_arrays
from pipeline.store.shard_writer import build_shard, encode_shard, encode_shard_zarr
from pipeline.store.shards import StoreLayout, write_shard

S2 = SensorSpec("s2", ("B02", "B05", "B11"), ("B2", "B5", "B11"), 10.0, scale=1e-4, harmonize_s2=True)
S1 = SensorSpec("s1", ("vv", "vh"), ("VV", "VH"), 10.0, to_db=True, nodata=None)
LANDSAT = SensorSpec("landsat", ("red", "nir08", "swir16"), ("red", "nir08", "swir16"), 30.0, scale=2.75e-5,
                     offset=0.2 / 2.75e-5, cloud=CloudMask("qa_pixel", bits=(0, 3, 4)))  # fmt: skip


def _items(catalog_files, collection: str) -> dict[str, pystac.Item]:
    path = next(p for p in catalog_files if p.parent.name == collection and p.suffix == ".ndjson")
    return {i.id: i for i in (pystac.Item.from_dict(json.loads(x)) for x in path.read_text().splitlines())}


def _chips(catalog_files, pack: bool) -> list[Chip]:
    specs = {k: dataclasses.replace(s, pack=pack) for k, s in (("s2", S2), ("s1", S1), ("landsat", LANDSAT))}
    s2, s1 = _items(catalog_files, "sentinel-2-l2a"), _items(catalog_files, "sentinel-1-rtc")
    s2_item = next(iter(s2.values()))
    new = s2_item.clone()  # the same pixels declared as a baseline-05.10 product: DN - 1000 before scaling
    new.id, new.datetime = new.id + "-b0510", new.datetime.replace(year=2023)
    new.properties["s2:processing_baseline"] = "05.10"
    s1_item = next(i for i in s1.values() if i.id.endswith("_87_48"))
    t = s2_item.assets["B02"].extra_fields["proj:transform"]
    chips = []
    for k in range(2):
        bounds = (t[2] + 480 * k, t[5] - 480, t[2] + 480 * (k + 1), t[5])
        plan = ChipPlan(f"s{k}", 32633, bounds, 0.0, 0.0, {"s2": (s2_item.id, new.id), "s1": (s1_item.id,)})
        chip, _ = load_chip(plan, s2 | s1 | {new.id: new}, specs)
        chips.append(chip)
    ls = _items(catalog_files, "landsat-c2-l2")
    some = sorted(ls.values(), key=lambda i: i.properties["eo:cloud_cover"])[:6]
    tl = some[0].assets["red"].extra_fields["proj:transform"]
    plan = ChipPlan("l0", 32613, (tl[2], tl[5] - 900, tl[2] + 900, tl[5]), 0.0, 0.0,
                    {"landsat": tuple(i.id for i in some)})  # fmt: skip
    landsat, _ = load_chip(plan, ls, specs)
    return [*chips, landsat]


def _write(chips: list[Chip], root: Path) -> dict[str, str]:
    s2s1 = write_shard(chips[:2], layout=StoreLayout(str(root), max_dates={"s2": 3, "s1": 2}), shard_id="a")
    landsat = write_shard(chips[2:], layout=StoreLayout(str(root), max_dates={"landsat": 8}), shard_id="b")
    return {"s2": s2s1.url, "s1": s2s1.url, "landsat": landsat.url}


def _bytes(root: Path, group: str) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and f"/{group}/data/c/" in str(p))


def test_uint16_store_decodes_to_the_float32_store(catalog_files, tmp_path: Path) -> None:
    packed_chips, float_chips = _chips(catalog_files, True), _chips(catalog_files, False)
    assert packed_chips[0].modalities["s2"].item_ids[1].endswith("-b0510")  # both baselines in one series
    content = build_shard(packed_chips[:2], {"s2": 3, "s1": 2})  # blosc (bit shuffle) inner chunks for uint16
    assert content.arrays["s2/data"].bitshuffle and not content.arrays["s1/data"].bitshuffle
    direct, reference = encode_shard(content, 3), encode_shard_zarr(content, 3)
    assert sorted(direct) == sorted(reference) and [n for n in reference if direct[n] != reference[n]] == []
    packed, plain = _write(packed_chips, tmp_path / "u16"), _write(float_chips, tmp_path / "f32")
    for group, dtype in (("s2", np.uint16), ("landsat", np.uint16), ("s1", np.float32)):
        raw_p = read_arrays(packed[group], [f"{group}/data"], decode=False)[f"{group}/data"]
        raw_f = read_arrays(plain[group], [f"{group}/data"], decode=False)[f"{group}/data"]
        assert raw_p.dtype == dtype and raw_f.dtype == np.float32
        got = read_arrays(packed[group], [f"{group}/data", f"{group}/valid"])
        want = read_arrays(plain[group], [f"{group}/data"])[f"{group}/data"]
        ok = np.broadcast_to(got[f"{group}/valid"][:, :, None], want.shape)
        assert ok.any() and (~ok).any()
        assert np.array_equal(got[f"{group}/data"][ok].view(np.uint32), want[ok].view(np.uint32))  # bit for bit
        if dtype == np.uint16:
            assert np.isnan(got[f"{group}/data"][~ok]).all()  # not valid: the fill value, NaN decoded
            ds = xr.open_zarr(packed[group], group=group, zarr_format=3, consolidated=False)
            assert ds["data"].encoding["dtype"] == np.uint16 and "scale_factor" in ds["data"].encoding
            np.testing.assert_allclose(ds["data"].values[ok], want[ok], rtol=2e-7, atol=1e-7)  # CF, float64
        norms = {group: BandNorm(tuple(float_chips[0 if group != "landsat" else 2].modalities[group].bands),
                                 np.full(raw_f.shape[2], 0.1, np.float32), np.full(raw_f.shape[2], 0.2, np.float32))}
        a, b = read_shard_arrays(packed[group], norms), read_shard_arrays(plain[group], norms)
        for x, y in zip(a.groups[group], b.groups[group], strict=True):  # what the loader delivers: identical
            assert x.dtype == y.dtype and np.array_equal(x, y)
    for group in ("s2", "landsat"):  # half the bytes before compression; after compression less, still fewer
        assert _bytes(tmp_path / "u16", group) < 0.85 * _bytes(tmp_path / "f32", group)
    assert _bytes(tmp_path / "u16", "s1") == _bytes(tmp_path / "f32", "s1")


def test_values_that_are_not_scaled_integers_stay_float32(catalog_files, tmp_path: Path) -> None:
    chip = _chips(catalog_files, True)[2]
    mod = chip.modalities["landsat"]
    data = mod.data.copy()
    t, c, y, x = np.argwhere(np.broadcast_to(mod.valid[:, None], data.shape))[0]
    data[t, c, y, x] += np.float32(1e-6)  # one valid value off the DN grid
    bad = Chip(chip.chip_id, chip.epsg, chip.bounds, 0.0, 0.0, {"landsat": ModalityArray(
        data, mod.valid, mod.dates, mod.item_ids, mod.bands, mod.res_m, mod.packing)})  # fmt: skip
    info = write_shard([bad], layout=StoreLayout(str(tmp_path / "ds")), shard_id="x")
    stored = read_arrays(info.url, ["landsat/data"], decode=False)["landsat/data"]
    assert stored.dtype == np.float32 and stored[0, t, c, y, x] == data[t, c, y, x]


def test_packing_needs_integers_in_range() -> None:
    from pipeline.store.packing import Packing, pack

    values = np.array([[[[-1.0, 2.0]]]], dtype=np.float32)  # DN -1 cannot be stored as uint16
    assert pack(values, np.ones((1, 1, 2), bool), Packing(1.0)) is None
    ok = pack(values, np.array([[[False, True]]]), Packing(1.0))  # the negative one is not valid: fill
    assert ok is not None and ok.tolist() == [[[[0, 2]]]]
