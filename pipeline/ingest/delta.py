"""What is new since the last incremental run: per-sensor watermarks, the searches they bound, the changed items.

Each sensor keeps its own watermarks (latest acquisition datetime and latest `updated` property among its items
in the snapshot): sensors publish at their own pace, so one maximum over all of them would skip the
late-published items of a lagging sensor (Sentinel-1 acquisitions published after later Sentinel-2 ones) in a
catalog without `updated`. A sensor without a watermark of its own (added to the config later, or a state
written before per-sensor watermarks) is searched from the state's single watermark, or from the start of the
config's window.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timezone

import pandas as pd
import pystac

from pipeline.catalog.manifest import Manifest, manifest_rows
from pipeline.catalog.search import StacQuery, search_items
from pipeline.errors import PipelineError
from pipeline.times import parse_interval, try_instant
from pipeline.ingest.config import IngestConfig
from pipeline.ingest.state import DatasetState

__all__ = ["KEY", "changed_rows", "items_of", "search_new", "watermarks"]

log = logging.getLogger(__name__)
KEY = ["modality", "collection", "item_id"]



def _iso(values: list[datetime]) -> str:
    return max(values).astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if values else ""


def watermarks(rows: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """Modality -> (latest acquisition datetime, latest `updated`) of the snapshot's items ("" when none)."""
    out: dict[str, tuple[str, str]] = {}
    for modality, group in rows.groupby("modality", sort=True):
        acquired = [d for d in (try_instant(t) for t in group["datetime"]) if d is not None]
        updated = [d for d in (try_instant(json.loads(j).get("properties", {}).get("updated"))
                               for j in group["item_json"]) if d is not None]  # fmt: skip
        out[str(modality)] = (_iso(acquired), _iso(updated))
    return out


def sensor_marks(state: DatasetState, modality: str) -> tuple[str, str]:
    """(acquisition, updated) watermarks of one sensor: its own, else the state's single ones (older states)."""
    own = state.sensors.get(modality)
    if own is not None:
        return str(own.get("acquired_until", "")), str(own.get("updated_until", ""))
    if state.sensors:  # per-sensor state without this sensor: a sensor new to the dataset
        return "", ""
    return state.acquired_until, state.updated_until


def search_new(config: IngestConfig, state: DatasetState, stac_url: str,
               invalid: list[tuple[str, str]] | None = None
               ) -> tuple[dict[str, list[pystac.Item]], dict[str, tuple[str, str]]]:  # fmt: skip
    """Per sensor, items acquired at or after its acquisition watermark or updated at or after its updated one.

    Returns:
        Modality -> candidate items, and modality -> (acquired_from, updated_after) the searches used.
    """
    begin, end = parse_interval(config.datetime).text().split("/")
    found: dict[str, list[pystac.Item]] = {}
    windows: dict[str, tuple[str, str]] = {}
    for sensor in config.sensors:
        url = sensor.stac_url or stac_url
        if not url:
            raise PipelineError(f"sensor {sensor.modality!r} has no stac_url and no default STAC API was given")
        acquired_until, updated_until = sensor_marks(state, sensor.modality)
        acquired_from = acquired_until or begin
        base = StacQuery(url=url, collections=(sensor.collection,), bbox=config.bbox, datetime=config.datetime,
                         max_cloud_cover=sensor.max_cloud_cover, page_size=config.page_size)  # fmt: skip
        items: dict[str, pystac.Item] = {}
        end_dt, from_dt = try_instant(end), try_instant(acquired_from)
        if end_dt is None or from_dt is None or from_dt <= end_dt:
            for item in search_items(replace(base, datetime=f"{acquired_from}/{end}"), invalid=invalid):
                items[item.id] = item
        if updated_until:
            for item in search_items(replace(base, updated_after=updated_until), invalid=invalid):
                items[item.id] = item
        found[sensor.modality] = list(items.values())
        windows[sensor.modality] = (acquired_from if acquired_until else "", updated_until)
        log.info("%s: %d new or updated candidates from %s (acquired since %s, updated since %s)", sensor.modality,
                 len(items), sensor.collection, acquired_from, updated_until or "-")  # fmt: skip
    return found, windows


def changed_rows(found: Mapping[str, list[pystac.Item]], previous: Manifest | None) -> tuple[pd.DataFrame, int, int]:
    """Rows of the found items that are new or differ from the snapshot; counts of new and updated."""
    rows = manifest_rows(found)
    if previous is None or rows.empty:
        return rows, len(rows), 0
    old = previous.rows.set_index(KEY)["item_json"]
    keys = list(zip(rows["modality"], rows["collection"], rows["item_id"], strict=True))
    known = [k in old.index for k in keys]
    same = [k in old.index and old[k] == j for k, j in zip(keys, rows["item_json"], strict=True)]
    changed = rows[[not s for s in same]].reset_index(drop=True)
    n_updated = sum(k and not s for k, s in zip(known, same, strict=True))
    return changed, len(changed) - n_updated, n_updated


def items_of(rows: pd.DataFrame) -> dict[str, list[pystac.Item]]:
    """Modality -> items of manifest rows."""
    out: dict[str, list[pystac.Item]] = {}
    for modality, item_json in zip(rows["modality"], rows["item_json"], strict=True):
        out.setdefault(str(modality), []).append(pystac.Item.from_dict(json.loads(item_json)))
    return out
