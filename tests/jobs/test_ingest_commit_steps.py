"""The commit steps of a run: under the lease, each checked; _tmp cleaned; rejects kept; unusable chips not re-read;
statistics recomputed after a failed run."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio

from infra.local.catalog_items import write_cog
from pipeline.config import load_config
from pipeline.ingest.config import IngestConfig
from pipeline.ingest.incremental import run_incremental
from pipeline.ingest.lease import Lease, LeaseHeld, LeaseLost
from pipeline.ingest.run import run_ingest
from pipeline.ingest.state import RunRecord, read_runs, record_run
from pipeline.store.shards import StoreLayout, read_index
from pipeline.store.stats import merge_stats, stats_from_json

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo(sample_items):
    """(collections, S2 item, S1 item) of the demo area, without `updated`."""
    s2_col, s2 = sample_items("sentinel-2-l2a")
    s1_col, s1 = sample_items("sentinel-1-rtc")
    pick = lambda rows: copy.deepcopy(next(i for i in rows if i["id"].endswith("_87_48")))  # noqa: E731
    return {"s2": s2_col, "s1": s1_col}, pick(s2), pick(s1)


def _config(store: Path) -> IngestConfig:
    return load_config(IngestConfig, ROOT / "configs" / "ingest-demo.yaml", [f"store={store}", "quicklooks=1"])


def _jump_when(path: Path):
    """A clock that runs 10^6 s ahead (every lease expired) once `path` exists: the lease is lost right then."""
    return lambda: time.time() + (1e6 if path.exists() else 0.0)


@pytest.mark.parametrize("incremental", [False, True])
def test_a_lease_lost_after_the_index_stops_every_later_write(demo, serve_stac, tmp_path: Path,
                                                              incremental: bool) -> None:  # fmt: skip
    cols, s2, s1 = demo
    store = tmp_path / "ds"
    run = run_incremental if incremental else run_ingest
    with serve_stac(tmp_path / "api", {"sentinel-2-l2a": (cols["s2"], [s2]), "sentinel-1-rtc": (cols["s1"], [s1])}) as url:
        with pytest.raises(LeaseLost):
            run(_config(store), stac_url=url, use_ray=False, clock=_jump_when(store / "shards.parquet"))
    assert (store / "shards.parquet").exists()  # the step before the loss happened ...
    for name in ("stats.json", "config.json", "rejects.parquet", "quicklooks", "state/state.json"):
        assert not (store / name).exists(), f"{name} was written after the lease was lost"  # ... no later one


def test_a_full_run_takes_the_lease_and_cleans_partial_shards(demo, serve_stac, tmp_path: Path) -> None:
    cols, s2, s1 = demo
    store = tmp_path / "ds"
    holder = Lease(str(store), owner="someone-else")
    holder.acquire()
    catalog = {"sentinel-2-l2a": (cols["s2"], [s2]), "sentinel-1-rtc": (cols["s1"], [s1])}
    with serve_stac(tmp_path / "api", catalog) as url:
        with pytest.raises(LeaseHeld):
            run_ingest(_config(store), stac_url=url, use_ray=False)
        assert sorted(p.name for p in store.iterdir()) == ["state"]  # nothing but the other run's lease
        holder.release()
        partial = store / "_tmp" / "shard-00000-dead.zarr"
        partial.mkdir(parents=True)
        (partial / "zarr.json").write_text("{")  # what a killed run leaves
        summary = run_ingest(_config(store), stac_url=url, use_ray=False)
    assert summary.chips_written > 0 and list((store / "_tmp").iterdir()) == []


def test_unusable_chips_are_not_reread_and_rejects_keep_their_history(demo, serve_stac, tmp_path: Path) -> None:
    cols, s2, s1 = demo
    s2 = copy.deepcopy(s2)  # the module's items stay as they are
    src = Path(s2["assets"]["B02"]["href"].removeprefix("file://"))
    with rasterio.open(src) as ds:
        band = ds.read()
        band[:, :56, :] = 0  # nodata north of y0 - 560 m: the northern chip has no valid pixel
        b02 = tmp_path / "B02.tif"
        write_cog(b02, band, crs=ds.crs, transform=ds.transform, nodata=0)
    s2["assets"]["B02"]["href"] = b02.as_uri()
    sliver = copy.deepcopy(s1)  # covers no chip: a new item that changes no chip's inputs
    sliver["id"] += "-sliver"
    w, s, _, _ = sliver["bbox"]
    sliver["geometry"] = {"type": "Polygon", "coordinates": [[[w, s], [w + 1e-4, s], [w + 1e-4, s + 1e-4],
                                                              [w, s + 1e-4], [w, s]]]}  # fmt: skip
    sliver["bbox"] = [w, s, w + 1e-4, s + 1e-4]
    store = tmp_path / "ds"
    with serve_stac(tmp_path / "api1", {"sentinel-2-l2a": (cols["s2"], [s2]), "sentinel-1-rtc": (cols["s1"], [s1])}) as url:
        first = run_incremental(_config(store), stac_url=url, use_ray=False)
    assert first.chips_written >= 1 and first.rejects.get("all_nodata", 0) >= 1, first
    b02.unlink()  # a run that reads the unusable chips again would now record href_not_found
    with serve_stac(tmp_path / "api2", {"sentinel-2-l2a": (cols["s2"], [s2]),
                                        "sentinel-1-rtc": (cols["s1"], [s1, sliver])}) as url:  # fmt: skip
        second = run_incremental(_config(store), stac_url=url, use_ray=False)
    assert second.status == "succeeded" and second.items_new == 1 and second.chips_written == 0
    rejects = pd.read_parquet(store / "rejects.parquet")
    kinds = set(zip(rejects["kind"], rejects["subject"], strict=True))
    assert ("all_nodata", s2["id"]) in kinds  # the first run's rejects are kept
    assert "href_not_found" not in set(rejects["kind"]), "unusable chips were read again"
    assert ("no_complete_chip", sliver["id"]) in kinds


def test_statistics_are_recomputed_after_a_run_that_failed_between_index_and_statistics(demo, serve_stac,
                                                                                         tmp_path: Path) -> None:  # fmt: skip
    cols, s2, s1 = demo
    later = copy.deepcopy(s2)
    later["id"] += "-later"
    later["properties"]["datetime"] = "2017-06-20T10:10:31Z"
    store = tmp_path / "ds"
    with serve_stac(tmp_path / "api1", {"sentinel-2-l2a": (cols["s2"], [s2]), "sentinel-1-rtc": (cols["s1"], [s1])}) as url:
        run_incremental(_config(store), stac_url=url, use_ray=False)
    short = (store / "stats.json").read_text()
    catalog = {"sentinel-2-l2a": (cols["s2"], [s2, later]), "sentinel-1-rtc": (cols["s1"], [s1])}
    with serve_stac(tmp_path / "api2", catalog) as url:
        second = run_incremental(_config(store), stac_url=url, use_ray=False)
        # the state a failure between the index append and the statistics update leaves behind:
        (store / "stats.json").write_text(short)
        row = read_runs(str(store)).iloc[-1].to_dict()
        record_run(str(store), RunRecord(**row | {"status": "failed", "extra": {}, "error": "OSError: disk full"}))
        third = run_incremental(_config(store), stac_url=url, use_ray=False)  # nothing new in the catalog
    assert second.chips_written > 0 and third.chips_written == 0
    layout = StoreLayout(str(store))
    parts = [stats_from_json(json.loads((store / "shards" / f"{s}.zarr" / "stats.json").read_text()))
             for s in read_index(layout)["shard_id"]]  # fmt: skip
    expected, got = merge_stats(parts), stats_from_json(json.loads((store / "stats.json").read_text()))
    for group, bands in expected.items():
        for band, st in bands.items():
            assert got[group][band].count == st.count and np.array_equal(got[group][band].hist, st.hist), (group, band)
