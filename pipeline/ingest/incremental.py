"""Incremental ingestion: search only what is new or updated since the last run, write only the chips it changes.

One run, under the dataset's lease (`pipeline.ingest.lease`):

1. Search the config's area for items acquired at or after the acquisition watermark, or whose `updated` is at
   or after the updated watermark (`pipeline.ingest.state`). Items already held with identical content are dropped;
   the rest (new or updated items) are frozen as this run's manifest.
2. The snapshot manifest (every item the dataset is built from) is the previous snapshot with these items
   added or replaced; it is frozen too, and the chips are planned over it exactly as a full run would.
3. Chip ids are versioned by content: `<cell>_v<tag>`, where the tag hashes the (modality, item id, item JSON)
   of the items the chip is built from. A chip whose inputs did not change keeps its id and is not written
   again; a chip that gained a date or uses an updated item gets a new id, so it never collides with the
   version already stored. The older version stays in its shard and is listed in `state/superseded.parquet`.
4. Only chips not yet in the shard index are grouped into new shards (deterministic ids), written, appended to
   the index, and their statistics merged into `stats.json`. The new state (watermarks, manifests) is written
   last, then the run's row in `state/runs.parquet` is marked succeeded.

A run that died (its row still says `running`) is recovered by the next one: the index is rebuilt from the
commit markers and the statistics recomputed from every committed shard, so nothing it committed is lost or
written twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import pandas as pd

from pipeline.atomic import write_json
from pipeline.ingest.config import IngestConfig
from pipeline.errors import PipelineError
from pipeline.times import parse_interval, try_instant
from pipeline.ingest.grid import ChipPlan, Reject, plan_chips
from pipeline.ingest.delta import KEY, changed_rows, items_of, search_new, watermarks
from pipeline.ingest.run import merged_shard_stats, shard_plans, write_config, write_quicklooks, write_shards, write_table
from pipeline.ingest.lease import Lease, LeaseLost, default_owner
from pipeline.ingest.rejects import append_rejects
from pipeline.catalog.manifest import freeze_manifest, read_manifest
from pipeline.catalog.signing import redact
from pipeline.ingest.state import (DatasetState, RunRecord, append_unusable, new_run_id, read_runs, read_state, read_unusable,
                                   record_run, write_state)
from pipeline.store.superseded import append_superseded, read_superseded
from pipeline.store.stats import merge_stats, stats_from_json, stats_to_json
from pipeline.store.shards import StoreLayout, clean_tmp, read_index, rebuild_index

__all__ = ["IncrementalSummary", "cell_of", "default_owner", "run_incremental", "version_chips"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IncrementalSummary:
    """What an incremental run did."""

    run_id: str
    status: str
    items_new: int = 0
    items_updated: int = 0
    chips_planned: int = 0
    chips_written: int = 0
    chips_superseded: int = 0
    shards_written: int = 0
    manifest_version: str = ""
    snapshot_version: str = ""
    rejects: Mapping[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def cell_of(chip_id: str) -> str:
    """The grid cell of a versioned chip id (`<cell>_v<tag>` → `<cell>`)."""
    return chip_id.rsplit("_v", 1)[0]


def version_chips(plans: list[ChipPlan], rows: pd.DataFrame) -> list[ChipPlan]:
    """Give each planned chip the id `<cell>_v<tag>`, the tag hashing the content of the items it uses."""
    digest = {(m, i): hashlib.sha256(j.encode()).hexdigest() for m, i, j in
              zip(rows["modality"], rows["item_id"], rows["item_json"], strict=True)}  # fmt: skip
    out = []
    for plan in plans:
        h = hashlib.sha256()
        for modality in sorted(plan.items):
            for item_id in plan.items[modality]:
                h.update(f"{modality}|{item_id}|{digest[(modality, item_id)]}\n".encode())
        out.append(replace(plan, chip_id=f"{plan.chip_id}_v{h.hexdigest()[:12]}"))
    return out


def _now(clock: Callable[[], float]) -> str:
    return datetime.fromtimestamp(clock(), timezone.utc).isoformat(timespec="seconds")


def _append_index(layout: StoreLayout, index: pd.DataFrame, shard_ids: list[str]) -> pd.DataFrame:
    """The index plus the given committed shards (read from their commit markers)."""
    fs, root = layout.fs()
    rows = []
    for shard_id in shard_ids:
        with fs.open(f"{root}/shards/{shard_id}.zarr/_COMMITTED", "rb") as f:
            raw = json.loads(f.read())
        raw.pop("dataset", None)
        rows.append(raw | {"url": layout.shard_url(shard_id), "chip_ids": list(raw["chip_ids"])})
    new = pd.DataFrame(rows, columns=list(index.columns))
    frame = pd.concat([index, new], ignore_index=True) if len(index) else new
    frame = frame.drop_duplicates("shard_id", keep="first").reset_index(drop=True)
    write_table(layout, "shards.parquet", frame)
    return frame


def _update_stats(layout: StoreLayout, index: pd.DataFrame, new_shards: list[str], recompute: bool) -> None:
    """Merge the new shards' statistics into `stats.json` (or recompute over every committed shard)."""
    fs, root = layout.fs()
    if recompute or not fs.exists(f"{root}/stats.json"):
        merged = merged_shard_stats(layout, list(index["shard_id"]))
    else:
        with fs.open(f"{root}/stats.json", "r") as f:
            previous = stats_from_json(json.loads(f.read()))
        merged = merge_stats([previous, merged_shard_stats(layout, new_shards)])
    write_json(fs, f"{root}/stats.json", stats_to_json(merged))


def _superseded(index: pd.DataFrame, current: list[ChipPlan], run_id: str) -> list[dict[str, str]]:
    """Stored chips that are no longer the current version of their cell (whose replacement is stored)."""
    stored = {c: sid for sid, ids in zip(index["shard_id"], index["chip_ids"], strict=True) for c in ids}
    now = {cell_of(p.chip_id): p.chip_id for p in current}
    out = []
    for chip_id, shard_id in stored.items():
        cell = cell_of(chip_id)
        replacement = now.get(cell, "")
        if replacement == chip_id or (replacement and replacement not in stored):
            continue
        out.append({"chip_id": chip_id, "shard_id": shard_id, "cell": cell, "superseded_by": replacement,
                    "run_id": run_id})  # fmt: skip
    return out


def run_incremental(config: IngestConfig, *, stac_url: str = "", storage_options: Mapping[str, Any] | None = None,
                    use_ray: bool = True, pc_sas_url: str | None = None, owner: str | None = None,
                    lease_ttl_s: float = 600.0, clock: Callable[[], float] = time.time) -> IncrementalSummary:  # fmt: skip
    """Run one incremental ingestion (see the module docstring); the first run on an empty store is a full run.

    Args:
        config: The validated ingestion config (its `datetime` bounds every search).
        stac_url: Default STAC API for sensors whose `stac_url` is empty.
        storage_options: fsspec options of the store; never written.
        use_ray: Write shards as Ray Data tasks.
        pc_sas_url: Token service of Planetary Computer signing.
        owner: Lease owner id shown to concurrent runs (default: host, pid and a random suffix).
        lease_ttl_s: Lease lifetime; it is renewed every third of it while the run works.
        clock: Seconds since the epoch (for the lease and the runs table).

    Raises:
        LeaseHeld: Another run holds the lease (nothing was written).
        PipelineError: The run failed (its row in the runs table says why; the lease is released).
    """
    if config.labels is not None:
        raise PipelineError("incremental ingestion does not attach labels; run a full ingestion (jobs/ingest.py "
                            "without --incremental) for a config with `labels`")  # fmt: skip
    start = time.perf_counter()
    opts = dict(storage_options or {})
    layout = StoreLayout(config.store, max_dates={s.modality: s.max_dates for s in config.sensors},
                         storage_options=opts)  # fmt: skip
    lease = Lease(config.store, owner=owner or default_owner(), ttl_s=lease_ttl_s, storage_options=opts, clock=clock)
    lease.acquire()
    with lease.keep_alive() as check:
        started = _now(clock)
        record = RunRecord(new_run_id(started), lease.owner, "running", started)
        clean_tmp(layout)  # partial shards of killed runs (we hold the lease: nobody else writes there)
        runs = read_runs(config.store, storage_options=opts)
        abandoned = runs[runs["status"] == "running"]
        # a run that died or failed may have appended to the index without merging its statistics (or the
        # reverse): the next run rebuilds the index from the markers and recomputes the statistics
        recover = bool(len(runs)) and str(runs["status"].iloc[-1]) not in ("succeeded", "no_new_items")
        for row in abandoned.to_dict("records"):
            row["extra"] = json.loads(row["extra"]) if row["extra"] else {}
            record_run(config.store, RunRecord(**row | {"status": "failed", "ended_at": started,
                                                        "error": "abandoned: the run stopped before it finished"}),
                       storage_options=opts)  # fmt: skip
        record_run(config.store, record, storage_options=opts)
        try:
            summary, record = _run(config, layout, record, stac_url=stac_url, opts=opts, use_ray=use_ray,
                                   pc_sas_url=pc_sas_url, recover=recover, check=check)  # fmt: skip
        except LeaseLost:
            log.error("run %s lost the lease and stopped before writing more; the next run recovers", record.run_id)
            raise
        except BaseException as err:
            check()  # only the lease holder writes the runs table
            record_run(config.store, replace(record, status="failed", ended_at=_now(clock),
                                             error=redact(f"{type(err).__name__}: {err}")[:2000]),
                       storage_options=opts)  # fmt: skip
            raise
        check()
        record_run(config.store, replace(record, ended_at=_now(clock)), storage_options=opts)
    summary = replace(summary, seconds=round(time.perf_counter() - start, 2))
    log.info("incremental ingestion done: %s", summary)
    return summary


def _run(config: IngestConfig, layout: StoreLayout, record: RunRecord, *, stac_url: str, opts: dict[str, Any],
         use_ray: bool, pc_sas_url: str | None, recover: bool,
         check: Callable[[], None]) -> tuple[IncrementalSummary, RunRecord]:  # fmt: skip
    state = read_state(config.store, storage_options=opts)
    previous = read_manifest(state.snapshot_manifest, storage_options=opts) if state.snapshot_manifest else None
    invalid: list[tuple[str, str]] = []
    found, windows = search_new(config, state, stac_url, invalid)
    delta, n_new, n_updated = changed_rows(found, previous)
    froms = [w[0] for w in windows.values()]
    record = replace(record, acquired_after=min(froms) if all(froms) else "",
                     acquired_before=parse_interval(config.datetime).text().split("/")[1],
                     updated_after=min((w[1] for w in windows.values() if w[1]), default=""),
                     items_found=sum(len(v) for v in found.values()), items_new=n_new, items_updated=n_updated,
                     extra={"windows": {m: {"acquired_after": a, "updated_after": u} for m, (a, u) in windows.items()}})  # fmt: skip
    if delta.empty and not recover:
        log.info("nothing new or updated since %s (updated since %s)", state.acquired_until, state.updated_until)
        record = replace(record, status="no_new_items", snapshot_version=previous.version if previous else "")
        return IncrementalSummary(record.run_id, record.status, snapshot_version=record.snapshot_version), record
    if previous is None and delta.empty:
        raise PipelineError("the search found no items; widen the area, the dates or the cloud-cover limit")
    manifest = freeze_manifest(items_of(delta), root=config.store, storage_options=opts) if not delta.empty else None
    base = previous.rows if previous is not None else delta.iloc[0:0]
    keep = base[~base.set_index(KEY).index.isin(delta.set_index(KEY).index)] if not delta.empty else base
    snapshot = freeze_manifest(items_of(pd.concat([keep, delta], ignore_index=True)), root=config.store,
                               storage_options=opts)  # fmt: skip
    span = parse_interval(config.datetime)
    plans, rejects = plan_chips(snapshot, grid=config.grid, area=config.bbox,
                                required=tuple(s.modality for s in config.sensors if s.required),
                                max_dates={s.modality: s.max_dates for s in config.sensors},
                                time_range=(span.start, span.end))  # fmt: skip
    rejects += [Reject("invalid_item", item_id, reason) for item_id, reason in dict(invalid).items()]
    plans = version_chips(plans, snapshot.rows)
    check()
    index = rebuild_index(layout) if recover else read_index(layout)
    stored = {c for ids in index["chip_ids"] for c in ids}
    unusable = read_unusable(config.store, storage_options=opts)  # read before, nothing usable: not again
    todo = [p for p in plans if p.chip_id not in stored and p.chip_id not in unusable]
    shards = shard_plans(snapshot.version, todo, config.chips_per_shard)
    results = write_shards(config, layout, snapshot.url, {p.chip_id: p for p in todo}, shards, use_ray=use_ray,
                           pc_sas_url=pc_sas_url, check=check)  # fmt: skip
    written = [str(r["shard_id"]) for r in results if r["status"] in ("written", "skipped")]
    for result in results:
        rejects += [Reject(**r) for r in json.loads(result["rejects"])]
    check()  # before each step that makes the run's work visible: still the lease holder
    index = _append_index(layout, index, written)
    check()
    _update_stats(layout, index, written, recompute=recover)
    superseded = _superseded(index, plans, record.run_id)
    known = set(read_superseded(config.store, storage_options=opts)["chip_id"])
    fresh = [s for s in superseded if s["chip_id"] not in known]
    check()
    append_superseded(config.store, fresh, storage_options=opts)
    check()
    append_unusable(config.store, [c for r in results for c in json.loads(r.get("unusable") or "[]")], record.run_id,
                    storage_options=opts)  # fmt: skip
    check()
    append_rejects(layout, rejects, record.run_id)
    check()
    write_config(layout, config)
    if config.quicklooks and written:
        check()
        write_quicklooks(layout, index[index["shard_id"].isin(written)].reset_index(drop=True),
                         [s.modality for s in config.sensors], config.quicklooks)  # fmt: skip
    marks = watermarks(snapshot.rows)
    manifests = state.manifests + ((manifest.version,) if manifest else ())
    check()
    write_state(config.store, DatasetState(max((a for a, _ in marks.values()), default=""),
                                           max((u for _, u in marks.values()), default=""), snapshot.url, manifests,
                                           record.run_id,
                                           {m: {"acquired_until": a, "updated_until": u} for m, (a, u) in marks.items()}),
                storage_options=opts)  # fmt: skip
    counts: dict[str, int] = {}
    for r in rejects:
        counts[r.kind] = counts.get(r.kind, 0) + 1
    chips_written = sum(int(r["chips"]) for r in results)
    record = replace(record, status="succeeded", chips_planned=len(plans), chips_written=chips_written,
                     chips_superseded=len(fresh), shards_written=sum(r["status"] == "written" for r in results),
                     manifest_version=manifest.version if manifest else "", snapshot_version=snapshot.version,
                     extra=dict(record.extra) | {"rejects": counts})  # fmt: skip
    summary = IncrementalSummary(record.run_id, record.status, n_new, n_updated, len(plans), chips_written,
                                 len(fresh), record.shards_written, record.manifest_version, snapshot.version,
                                 counts)  # fmt: skip
    if index.empty:
        raise PipelineError(f"nothing usable was produced; rejects by reason: {counts}")
    return summary, record
