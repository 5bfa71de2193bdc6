"""Incremental ingestion through real STAC API servers and stores: new items, an updated item, statistics equal to
a full recompute, two concurrent runs, an expired lease."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import s3fs
import xarray as xr

from infra.local.services import free_port
from pipeline.config import load_config
from pipeline.ingest.config import IngestConfig
from pipeline.ingest.incremental import cell_of, run_incremental
from pipeline.ingest.lease import Lease, LeaseHeld
from pipeline.catalog.manifest import freeze_manifest, read_manifest
from pipeline.catalog.search import StacQuery, search_items
from pipeline.ingest.state import read_runs, read_state
from pipeline.store.superseded import read_superseded
from pipeline.store.stats import merge_stats, stats_from_json
from pipeline.store.shards import StoreLayout, read_index

pytestmark = pytest.mark.stack
ROOT = Path(__file__).resolve().parents[2]
LANDSAT = ROOT / "configs" / "ingest-landsat.yaml"
DEMO = ROOT / "configs" / "ingest-demo.yaml"


@contextmanager
def _serve(folder: Path, rows: Sequence[dict], collection_json: Path) -> Iterator[str]:
    """`rustac serve` on 127.0.0.1 over one collection with the given items."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "collection.json").write_text(collection_json.read_text())
    (folder / "items.ndjson").write_text("".join(json.dumps(r) + "\n" for r in rows))
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "rustac"), "serve", "--addr", f"127.0.0.1:{port}",
                               str(folder / "collection.json"), str(folder / "items.ndjson")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("rustac serve did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.kill()
        server.wait()


def _landsat(catalog_files: Sequence[Path]) -> tuple[Path, list[dict]]:
    items = next(p for p in catalog_files if p.parent.name == "landsat-c2-l2" and p.suffix == ".ndjson")
    return items.parent / "collection.json", [json.loads(x) for x in items.read_text().splitlines()]


def _stored_chips(index: pd.DataFrame) -> list[str]:
    return [c for ids in index["chip_ids"] for c in ids]


def _markers(store: Path) -> dict[str, str]:
    return {p.parent.name: p.read_text() for p in (store / "shards").glob("*.zarr/_COMMITTED")}


def test_new_then_updated_items_are_ingested_exactly_once(catalog_files, tmp_path: Path) -> None:
    collection, rows = _landsat(catalog_files)
    early = [r for r in rows if r["properties"]["datetime"] < "2010-08-01"]
    store = tmp_path / "ds"
    config = load_config(IngestConfig, LANDSAT, [f"store={store}", "quicklooks=0", "chips_per_shard=8"])
    layout = StoreLayout(config.store)
    with _serve(tmp_path / "v1", early, collection) as url:  # the catalog before new acquisitions appear
        first = run_incremental(config, stac_url=url, use_ray=False)
    assert first.status == "succeeded" and first.chips_written == first.chips_planned > 0
    before, markers = read_index(layout), _markers(store)
    state = read_state(config.store)
    assert state.manifests == (first.manifest_version,) and state.acquired_until.startswith("2010-07")

    with _serve(tmp_path / "v2", rows, collection) as url:  # new acquisitions appeared
        second = run_incremental(config, stac_url=url, use_ray=False)
        expected_new = {i.id for i in search_items(StacQuery(url=url, collections=("landsat-c2-l2",), bbox=config.bbox,
                        datetime=config.datetime, max_cloud_cover=80))} - {r["id"] for r in early}  # fmt: skip
        full = freeze_manifest({"landsat": search_items(StacQuery(url=url, collections=("landsat-c2-l2",),
                               bbox=config.bbox, datetime=config.datetime, max_cloud_cover=80))},
                               root=str(tmp_path / "full"))  # fmt: skip
    delta = read_manifest(f"{store}/manifests/{second.manifest_version}.parquet")
    assert expected_new and set(delta.rows["item_id"]) == expected_new  # exactly the new items
    assert second.items_new == len(expected_new) and second.items_updated == 0
    assert second.snapshot_version == full.version  # the dataset is built from the same items as a full run
    after = read_index(layout)
    new_shards = set(after["shard_id"]) - set(before["shard_id"])
    assert len(new_shards) == second.shards_written > 0
    assert {k: v for k, v in _markers(store).items() if k in markers} == markers  # old shards untouched
    chips = _stored_chips(after)
    assert len(chips) == len(set(chips))  # no chip written twice
    new_chips = {c for ids in after[after["shard_id"].isin(new_shards)]["chip_ids"] for c in ids}
    for url_, ids in zip(after["url"], after["chip_ids"], strict=True):
        if set(ids) & new_chips:
            used = {str(i) for i in xr.open_zarr(url_, group="landsat", zarr_format=3, consolidated=False)
                    ["item_ids"].values.ravel() if i}  # fmt: skip
            assert used & expected_new  # every rewritten chip uses a new acquisition
    superseded = read_superseded(config.store)
    assert set(superseded["superseded_by"]) <= new_chips
    assert {cell_of(c) for c in superseded["chip_id"]} == {cell_of(c) for c in new_chips}

    # merged statistics equal a full recompute over every committed shard (sidecars and pixels)
    stats = stats_from_json(json.loads((store / "stats.json").read_text()))
    recomputed = merge_stats([stats_from_json(json.loads((Path(u) / "stats.json").read_text())) for u in after["url"]])
    for band, st in recomputed["landsat"].items():
        got = stats["landsat"][band]
        assert (got.count, got.minimum, got.maximum) == (st.count, st.minimum, st.maximum)
        assert np.array_equal(got.hist, st.hist) and got.mean == pytest.approx(st.mean, rel=1e-9)
    valid = sum(int(xr.open_zarr(u, group="landsat", zarr_format=3, consolidated=False)["valid"].values.sum())
                for u in after["url"])  # fmt: skip
    assert stats["landsat"]["red"].count == valid

    # an item whose `updated` changed (reprocessed: new cloud cover) is picked up and re-versions its chips
    used_items = {str(i) for u in after["url"] for i in xr.open_zarr(u, group="landsat", zarr_format=3,
                  consolidated=False)["item_ids"].values.ravel() if i}  # fmt: skip
    target = next(r for r in rows if r["id"] in used_items and r["id"] in expected_new)
    changed = json.loads(json.dumps(target))
    changed["properties"]["updated"] = "2026-01-15T00:00:00Z"
    changed["properties"]["eo:cloud_cover"] = 1.5
    with _serve(tmp_path / "v3", [changed if r["id"] == target["id"] else r for r in rows], collection) as url:
        third = run_incremental(config, stac_url=url, use_ray=False)
    assert third.items_updated == 1 and third.items_new == 0 and third.chips_written > 0
    assert list(read_manifest(f"{store}/manifests/{third.manifest_version}.parquet").rows["item_id"]) == [target["id"]]
    final = read_index(layout)
    chips = _stored_chips(final)
    assert len(chips) == len(set(chips))
    assert read_state(config.store).updated_until == "2026-01-15T00:00:00Z"
    runs = read_runs(config.store)
    assert list(runs["status"]) == ["succeeded"] * 3
    assert list(runs["manifest_version"]) == [first.manifest_version, second.manifest_version, third.manifest_version]
    assert (runs["ended_at"] >= runs["started_at"]).all() and runs["updated_after"].iloc[2] == "2025-01-01T00:00:00Z"


def test_a_held_lease_blocks_without_writing_and_an_expired_one_is_taken_over(stack_env, tmp_path: Path) -> None:
    store = tmp_path / "ds"
    config = load_config(IngestConfig, DEMO, [f"store={store}", "quicklooks=0"])
    crashed = Lease(str(store), owner="crashed-run", ttl_s=600)
    info = crashed.acquire()
    with pytest.raises(LeaseHeld) as held:
        run_incremental(config, stac_url=stack_env["STAC_API_URL"], use_ray=False)
    assert held.value.info.owner == "crashed-run" and held.value.info.expires_at == info.expires_at
    assert sorted(p.name for p in store.rglob("*") if p.is_file()) == ["lease-000000000001.json"]  # nothing written
    later = time.time() + 601  # the crashed holder never renews: after its TTL the next run takes over
    summary = run_incremental(config, stac_url=stack_env["STAC_API_URL"], use_ray=False, clock=lambda: later)
    assert summary.status == "succeeded" and summary.chips_written >= 1
    current = Lease(str(store), owner="reader").current()
    assert current is not None and current.generation == 2 and current.released


def test_two_runs_racing_for_the_lease_write_once_and_the_loser_reports_it(stack_env, tmp_path: Path) -> None:
    """Two real runs on one S3 store, held at the lease until both have seen it free, then let go together: both
    try to create lease generation 1, the store's conditional PUT lets exactly one through. The winner commits
    every planned chip once; the loser reports `lease_held` naming the winner and writes nothing."""
    store = f"{stack_env['ANYSAT_STORE_URL']}/tests/incr-{uuid.uuid4().hex[:8]}"
    cmd = [sys.executable, str(ROOT / "tests" / "jobs" / "race_ingest.py"), "--config", str(LANDSAT), "--no-ray",
           "--incremental", "--set", f"store={store}", "--set", "quicklooks=0",
           "--set", "chips_per_shard=4"]  # fmt: skip
    env = {**os.environ, **stack_env, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    try:
        ready = [p.stdout.readline().strip() for p in procs if p.stdout is not None]
        assert ready == ["ready", "ready"], [p.communicate(timeout=60)[1][-2000:] for p in procs]
        for p in procs:  # both have read the lease (none yet): let them go at once
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    summaries = [json.loads(o[0]) for o in outs]
    statuses = sorted(s["status"] for s in summaries)
    assert statuses == ["lease_held", "succeeded"], summaries
    won = next(s for s in summaries if s["status"] == "succeeded")
    blocked = next(s for s in summaries if s["status"] == "lease_held")
    assert blocked["holder"] and blocked["until"]
    opts = {"key": stack_env["AWS_ACCESS_KEY_ID"], "secret": stack_env["AWS_SECRET_ACCESS_KEY"],
            "endpoint_url": stack_env["AWS_ENDPOINT_URL"]}  # fmt: skip
    runs = read_runs(store, storage_options=opts)
    assert list(runs["status"]) == ["succeeded"] and runs["owner"].iloc[0] == blocked["holder"]  # the loser: no row
    fs = s3fs.S3FileSystem(**opts)
    leases = [p.rsplit("/", 1)[1] for p in fs.ls(f"{store.removeprefix('s3://')}/state/lease", detail=False)]
    assert leases == ["lease-000000000001.json"], leases  # one generation: the loser's create did not land
    final = Lease(store, owner="reader", storage_options=opts).current()
    assert final is not None and final.owner == blocked["holder"] and final.released
    index = read_index(StoreLayout(store, storage_options=opts))
    committed = fs.glob(f"{store.removeprefix('s3://')}/shards/*.zarr/_COMMITTED")
    chips = _stored_chips(index)
    assert len(committed) == len(index) and len(chips) == len(set(chips))  # nothing duplicated
    assert len(chips) == won["chips_written"] == won["chips_planned"] > 0  # nothing lost
