"""The plain PyTorch loader on real stores ingested from the sample catalogs (S2+S1 demo, Landsat series, S3)."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr

from pipeline.config import load_config
from pipeline.ingest.config import IngestConfig
from pipeline.errors import StoreError
from pipeline.ingest.run import run_ingest
from pipeline.load.loader import DatasetSource, LoaderConfig, iter_batches, read_stats
from pipeline.store.records import Chip, ModalityArray
from pipeline.store.stats import REFLECTANCE_RANGE, chip_stats, stats_to_json
from pipeline.store.shards import StoreLayout, read_index, write_shard

pytestmark = pytest.mark.stack
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def stores(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The demo (S2 + S1, 1 chip per shard) and Landsat stores on local disk, and the Landsat store on S3."""
    root = tmp_path_factory.mktemp("loader-stores")
    options = {"key": stack_env["AWS_ACCESS_KEY_ID"], "secret": stack_env["AWS_SECRET_ACCESS_KEY"],
               "endpoint_url": stack_env["AWS_ENDPOINT_URL"]}  # fmt: skip
    s3_url = f"{stack_env['ANYSAT_STORE_URL']}/tests/loader-{uuid.uuid4().hex[:8]}/landsat"
    for name, config, extra, opts in (("demo", "ingest-demo.yaml", ["chips_per_shard=1"], None),
                                      ("landsat", "ingest-landsat.yaml", [], None),
                                      (s3_url, "ingest-landsat.yaml", [], options)):  # fmt: skip
        store = name if "://" in name else str(root / name)
        cfg = load_config(IngestConfig, ROOT / "configs" / config, [f"store={store}", "quicklooks=0", *extra])
        run_ingest(cfg, stac_url=stack_env["STAC_API_URL"], storage_options=opts, use_ray=False)
    _write_uneven_copy(str(root / "landsat"), str(root / "uneven"))
    return {"demo": str(root / "demo"), "landsat": str(root / "landsat"), "uneven": str(root / "uneven"),
            "s3": s3_url, "options": options}  # fmt: skip


def _write_uneven_copy(src: str, dst: str) -> None:
    """The real Landsat chips with 2..8 of their dates (every sample chip has 8), to exercise padding."""
    chips = []
    for shard in read_index(StoreLayout(src))["url"]:
        ds = xr.open_zarr(shard, group="landsat", zarr_format=3, consolidated=False).load()
        for i, chip_id in enumerate(ds["chip"].values):
            k = 2 + len(chips) % 7
            minx, maxy = ds.attrs["x_origin"][i], ds.attrs["y_origin"][i]
            mod = ModalityArray(ds["data"].values[i, :k].astype(np.float32), ds["valid"].values[i, :k],
                                ds["dates"].values[i, :k].astype("datetime64[s]"),
                                tuple(str(v) for v in ds["item_ids"].values[i, :k]),
                                tuple(str(b) for b in ds["band"].values), float(ds.attrs["res_m"]))  # fmt: skip
            chips.append(Chip(str(chip_id), 32613, (minx, maxy - 300, minx + 300, maxy), 0.0, 0.0, {"landsat": mod}))
    layout = StoreLayout(dst, max_dates={"landsat": 8})
    for start in range(0, len(chips), 4):
        write_shard(chips[start : start + 4], layout=layout, shard_id=f"shard-{start:05d}")
    Path(dst, "stats.json").write_text(json.dumps(stats_to_json(chip_stats(chips, {"landsat": REFLECTANCE_RANGE}))))


def _chips(url: str) -> list[str]:
    return sorted(c for ids in read_index(StoreLayout(url))["chip_ids"] for c in ids)


def _by_hand(url: str, group: str) -> dict[str, dict[str, np.ndarray]]:
    """(x - mean) / std per chip from the shards and stats.json, computed here without the loader."""
    stats = json.loads((Path(url) / "stats.json").read_text())[group]
    out = {}
    for shard in read_index(StoreLayout(url))["url"]:
        ds = xr.open_zarr(shard, group=group, zarr_format=3, consolidated=False).load()
        mean = np.array([stats[b]["summary"]["mean"] for b in ds["band"].values])[:, None, None]
        std = np.array([stats[b]["summary"]["std"] for b in ds["band"].values])[:, None, None]
        for i, chip in enumerate(ds["chip"].values):
            real = ds["date_mask"].values[i]
            out[str(chip)] = {"x": (ds["data"].values[i][real] - mean) / std, "valid": ds["valid"].values[i][real],
                              "doy": ds["doy"].values[i][real]}  # fmt: skip
    return out


def _ids(batches: list[dict[str, Any]]) -> list[str]:
    return [c for b in batches for c in b["chip_id"]]


def test_batches_follow_the_contract(stores: dict[str, Any]) -> None:
    config = LoaderConfig((DatasetSource(stores["demo"], name="austria"),), batch_size=2, images=("s1",))
    batches = list(iter_batches(config))
    assert len(batches) == len(_chips(stores["demo"])) // 2 >= 1
    for b in batches:
        assert set(b) == {"s2", "s2_dates", "s2_mask", "s2_valid", "s1", "patch_size", "dataset", "chip_id"}
        x, t = b["s2"], b["s2"].shape[1]
        assert x.dtype == torch.float32 and x.shape == (2, t, 10, 48, 48)
        assert b["s2_dates"].dtype == torch.int64 and b["s2_dates"].shape == (2, t)
        assert b["s2_mask"].dtype == torch.bool and b["s2_valid"].shape == (2, t, 48, 48)
        assert b["s2_valid"].dtype == torch.bool and b["s1"].dtype == torch.float32 and b["s1"].shape == (2, 2, 48, 48)
        assert torch.equal(b["s2_mask"], b["s2_dates"] > 0) and bool((b["s2_dates"] <= 366).all())
        assert not bool((b["s2_valid"] & ~b["s2_mask"][:, :, None, None]).any())
        assert b["patch_size"] == 40 and b["dataset"] == "austria" and len(b["chip_id"]) == 2
    assert read_stats(stores["demo"])["s2"]["B4"]["count"] > 0


def test_values_are_normalised_with_the_stored_statistics_and_padding_is_zero(stores: dict[str, Any]) -> None:
    url = stores["uneven"]
    expected = _by_hand(url, "landsat")
    config = LoaderConfig((DatasetSource(url),), batch_size=4, patch_sizes_m=(30,), drop_last=False)
    seen = invalid = padded = 0
    for b in iter_batches(config):
        for i, chip in enumerate(b["chip_id"]):
            e, n = expected[chip], len(expected[chip]["doy"])
            x, valid = b["landsat"][i].numpy(), b["landsat_valid"][i].numpy()
            assert b["landsat_mask"][i].sum() == n and list(b["landsat_dates"][i, :n]) == list(e["doy"])
            np.testing.assert_allclose(x[:n][np.broadcast_to(e["valid"][:, None], e["x"].shape)],
                                       e["x"][np.broadcast_to(e["valid"][:, None], e["x"].shape)], rtol=1e-5, atol=1e-5)  # fmt: skip
            assert np.array_equal(valid[:n], e["valid"]) and not valid[n:].any()
            assert not np.any(x[:n][~np.broadcast_to(e["valid"][:, None], e["x"].shape)])  # invalid pixels are 0
            assert not np.any(x[n:]) and not np.any(b["landsat_dates"][i, n:].numpy())  # padded dates are 0
            invalid += int((~e["valid"]).sum())
            padded += x.shape[0] - n
            seen += 1
    assert seen == len(expected) and invalid > 0 and padded > 0  # the sample has clouds and uneven series


def test_mixing_by_weight_one_dataset_and_patch_size_per_batch(stores: dict[str, Any]) -> None:
    chips = {"landsat": set(_chips(stores["landsat"])), "demo": set(_chips(stores["demo"]))}
    extent = {"landsat": 300, "demo": 480}
    config = LoaderConfig((DatasetSource(stores["landsat"], weight=3.0), DatasetSource(stores["demo"], weight=1.0)),
                          batch_size=2, patch_sizes_m=(30, 40, 60, 120), shuffle_buffer=4)  # fmt: skip
    counts: Counter[str] = Counter()
    sizes: Counter[int] = Counter()
    for epoch in range(4):
        for b in iter_batches(config, epoch=epoch):
            counts[b["dataset"]] += 1
            sizes[b["patch_size"]] += 1
            assert set(b["chip_id"]) <= chips[b["dataset"]]  # one dataset per batch
            assert extent[b["dataset"]] % b["patch_size"] == 0  # one patch size dividing its tiles
            assert ("landsat" in b) == (b["dataset"] == "landsat") and ("s2" in b) == (b["dataset"] == "demo")
    share = counts["landsat"] / sum(counts.values())
    assert abs(share - 0.75) < 0.05, counts
    assert len(sizes) == 4, sizes


def test_same_seed_same_batches_other_seed_or_epoch_other_order(stores: dict[str, Any]) -> None:
    config = LoaderConfig((DatasetSource(stores["landsat"]),), batch_size=3, patch_sizes_m=(30, 60), seed=5)
    first, again = list(iter_batches(config)), list(iter_batches(config))
    assert _ids(first) == _ids(again)
    assert all(torch.equal(a["landsat"], b["landsat"]) and a["patch_size"] == b["patch_size"]
               for a, b in zip(first, again, strict=True))  # fmt: skip
    other_seed = list(iter_batches(LoaderConfig(config.datasets, batch_size=3, patch_sizes_m=(30, 60), seed=6)))
    other_epoch = list(iter_batches(config, epoch=1))
    assert _ids(other_seed) != _ids(first) and _ids(other_epoch) != _ids(first)
    assert sorted(_ids(other_seed)) != _ids(other_seed)  # shuffled, not index order


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_cover_every_chip_exactly_once(stores: dict[str, Any], world_size: int) -> None:
    url = stores["landsat"]
    config = LoaderConfig((DatasetSource(url),), batch_size=4, patch_sizes_m=(30,), drop_last=False)
    per_rank = [_ids(list(iter_batches(config, rank=r, world_size=world_size, epoch=2))) for r in range(world_size)]
    everything = [c for ids in per_rank for c in ids]
    assert sorted(everything) == _chips(url)  # no duplicate, none missing
    equal = LoaderConfig((DatasetSource(url),), batch_size=4, patch_sizes_m=(30,), drop_last=True)
    runs = [list(iter_batches(equal, rank=r, world_size=world_size)) for r in range(world_size)]
    assert len({len(r) for r in runs}) == 1  # every rank takes the same number of steps (DDP)
    ids = [c for r in runs for c in _ids(r)]
    assert len(ids) == len(set(ids)) > len(_chips(url)) - world_size * 4


def test_skip_batches_resumes_where_an_uninterrupted_run_would_be(stores: dict[str, Any]) -> None:
    config = LoaderConfig((DatasetSource(stores["landsat"], weight=2.0), DatasetSource(stores["demo"])),
                          batch_size=2, patch_sizes_m=(30, 60), shuffle_buffer=5, seed=3,
                          max_dates={"landsat": 2})  # fmt: skip
    full = list(iter_batches(config, epoch=1, rank=1, world_size=2))
    for skip in (1, len(full) // 2, len(full) - 1):
        resumed = list(iter_batches(config, epoch=1, rank=1, world_size=2, skip_batches=skip))
        assert len(resumed) == len(full) - skip
        for a, b in zip(full[skip:], resumed, strict=True):
            assert a["chip_id"] == b["chip_id"] and a["patch_size"] == b["patch_size"]
            assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))


def test_s3_store_gives_the_same_batches_as_the_local_copy(stores: dict[str, Any]) -> None:
    local = LoaderConfig((DatasetSource(stores["landsat"]),), batch_size=4, patch_sizes_m=(30,), seed=2)
    remote = LoaderConfig((DatasetSource(stores["s3"]),), batch_size=4, patch_sizes_m=(30,), seed=2)
    a, b = list(iter_batches(local)), list(iter_batches(remote, storage_options=stores["options"]))
    assert _ids(a) == _ids(b) and len(a) >= 2
    assert all(torch.equal(x["landsat"], y["landsat"]) for x, y in zip(a, b, strict=True))
    assert read_stats(stores["s3"], storage_options=stores["options"]) == read_stats(stores["landsat"])


def _arrays(url: str) -> list[str]:
    """Paths of every array of a shard (every group's variables and the chips table)."""
    return sorted(str(p.parent.relative_to(url)) for p in Path(url).glob("*/*/zarr.json"))


def test_direct_shard_reads_equal_zarr_on_every_array_and_fall_back_to_zarr(stores: dict[str, Any],
                                                                             tmp_path: Path) -> None:  # fmt: skip
    """`pipeline.store.shard_reader.read_arrays` against `zarr.open_array(...)[...]`: every array of every test store
    (local and S3), and synthetic layouts (several chunks and a transpose: read by zarr; no compression; sharded)."""
    import zarr
    from zarr.codecs import BytesCodec, TransposeCodec, ZstdCodec

    from pipeline.store.shard_reader import read_arrays

    def check(url: str, paths: list[str], options: dict[str, Any] | None = None) -> None:
        got = read_arrays(url, paths, storage_options=options, decode=False)  # the stored values, as zarr reads them
        store = zarr.storage.FsspecStore.from_url(url, storage_options=options, read_only=True) if options else url
        for p in paths:
            want = np.asarray(zarr.open_array(store, path=p, mode="r", zarr_format=3)[...])
            assert got[p].shape == want.shape and got[p].flags.writeable, p
            if want.dtype.kind in "OTU":
                assert [str(v) for v in got[p].ravel()] == [str(v) for v in want.ravel()], p
            else:
                assert got[p].dtype == want.dtype and np.array_equal(got[p], want, equal_nan=want.dtype.kind == "f"), p

    for name in ("demo", "landsat", "uneven"):
        for url in read_index(StoreLayout(stores[name]))["url"]:
            check(url, _arrays(url))
    local = read_index(StoreLayout(stores["landsat"]))["url"].iloc[0]
    remote = read_index(StoreLayout(stores["s3"], storage_options=stores["options"]))["url"].iloc[0]
    check(remote, _arrays(local), stores["options"])
    values = np.random.default_rng(0).normal(size=(5, 3, 7)).astype(np.float32)
    for i, kw in enumerate([{"chunks": (2, 3, 7)}, {"chunks": (5, 3, 7), "serializer": BytesCodec(),
                                                    "filters": [TransposeCodec(order=(2, 1, 0))]},
                            {"chunks": (5, 3, 7), "compressors": None},
                            {"chunks": (2, 3, 7), "shards": (6, 3, 7), "compressors": ZstdCodec()}]):  # fmt: skip
        zarr.create_array(str(tmp_path / "odd"), name=f"a{i}", shape=values.shape, dtype="float32", **kw)[...] = values
        assert np.array_equal(read_arrays(str(tmp_path / "odd"), [f"a{i}"])[f"a{i}"], values)
    part = zarr.create_array(str(tmp_path / "odd"), name="part", shape=values.shape, dtype="float32", chunks=(1, 3, 7),
                             shards=(5, 3, 7), fill_value=np.nan)  # inner chunks never written read as the fill value
    part[1:3] = values[1:3]
    got = read_arrays(str(tmp_path / "odd"), ["part"])["part"]
    assert np.array_equal(got, part[...], equal_nan=True) and np.isnan(got[0]).all()
    with pytest.raises(StoreError, match="has no array 'nothing'"):
        read_arrays(str(tmp_path / "odd"), ["nothing"])
    from numcodecs import Zstd

    zarr.create_array(str(tmp_path / "odd"), name="short", shape=values.shape, dtype="float32", chunks=values.shape,
                      compressors=ZstdCodec())[...] = values  # fmt: skip
    chunk = next(p for p in (tmp_path / "odd" / "short").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(Zstd().encode(values[:4].tobytes()))  # a valid frame with too few values: never silently read
    with pytest.raises(StoreError, match="decodes to 336 bytes, expected 420"):
        read_arrays(str(tmp_path / "odd"), ["short"])


def test_no_patch_size_dividing_the_tiles_is_an_error(stores: dict[str, Any]) -> None:
    config = LoaderConfig((DatasetSource(stores["landsat"]),), patch_sizes_m=(40, 70))
    with pytest.raises(StoreError, match="divides the 300 m tiles"):
        next(iter_batches(config))
