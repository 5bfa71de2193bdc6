"""Incremental ingestion with per-sensor watermarks: a lagging sensor's late-published items are still found."""

from __future__ import annotations

import copy
from pathlib import Path

from pipeline.catalog.manifest import read_manifest
from pipeline.config import load_config
from pipeline.ingest.config import IngestConfig
from pipeline.ingest.incremental import run_incremental
from pipeline.ingest.state import read_state

ROOT = Path(__file__).resolve().parents[2]


def _dated(item: dict, suffix: str, when: str) -> dict:
    out = copy.deepcopy(item)
    out["id"] = f"{item['id']}-{suffix}"
    out["properties"]["datetime"] = when
    out["properties"].pop("updated", None)  # a catalog without `updated`: only acquisition times tell what is new
    return out


def test_late_published_items_of_a_lagging_sensor_are_ingested(sample_items, serve_stac, tmp_path: Path) -> None:
    s2_col, s2 = sample_items("sentinel-2-l2a")
    s1_col, s1 = sample_items("sentinel-1-rtc")
    s2_item = next(i for i in s2 if i["id"].endswith("_87_48"))
    s1_item = next(i for i in s1 if i["id"].endswith("_87_48"))
    s2_rows = [_dated(s2_item, "a", "2017-06-13T10:10:31Z"), _dated(s2_item, "b", "2017-06-25T10:10:31Z")]
    s1_rows = [_dated(s1_item, "a", "2017-06-13T16:50:43Z")]
    late = _dated(s1_item, "late", "2017-06-19T16:50:43Z")  # acquired before S2's latest, published after it
    store = tmp_path / "ds"
    config = load_config(IngestConfig, ROOT / "configs" / "ingest-demo.yaml",
                         [f"store={store}", "quicklooks=0", "sensors.0.max_cloud_cover=null"])  # fmt: skip
    with serve_stac(tmp_path / "api1", {"sentinel-2-l2a": (s2_col, s2_rows), "sentinel-1-rtc": (s1_col, s1_rows)}) as url:
        first = run_incremental(config, stac_url=url, use_ray=False)
    assert first.status == "succeeded" and first.chips_written > 0
    with serve_stac(tmp_path / "api2", {"sentinel-2-l2a": (s2_col, s2_rows),
                                        "sentinel-1-rtc": (s1_col, [*s1_rows, late])}) as url:  # fmt: skip
        second = run_incremental(config, stac_url=url, use_ray=False)
    snapshot = read_manifest(read_state(str(store)).snapshot_manifest)
    assert late["id"] in set(snapshot.rows["item_id"]), "the late S1 item was skipped"
    assert second.items_new == 1 and second.chips_written == first.chips_written  # every chip gains the S1 date
    state = read_state(str(store))
    assert state.sensors["s1"]["acquired_until"] == "2017-06-19T16:50:43Z"
    assert state.sensors["s2"]["acquired_until"] == "2017-06-25T10:10:31Z"
