"""The ingestion run: search → frozen manifest → chip plan → one Ray task per shard → index and summary.

Shard ids are deterministic (hash of the manifest version and the shard's chip ids), committed shards are
skipped, so re-running the same config after a crash finishes the rest and writes nothing twice. Every item or
chip that cannot be used lands in `<store>/rejects.parquet` with its reason. Without Ray (`use_ray=False`) the
same shard function runs in a plain loop. With Ray, the shard tasks run on the job's pool of shard workers
(`pipeline.ingest.ray_shards`), started before the search so that their start-up overlaps it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import fsspec
import pandas as pd
import pystac

from pipeline.atomic import write_bytes, write_json, write_parquet
from pipeline.ingest.chips import load_chip
from pipeline.config import to_dict
from pipeline.ingest.config import IngestConfig
from pipeline.errors import PipelineError
from pipeline.progress import Progress
from pipeline.times import parse_interval
from pipeline.ingest.grid import ChipPlan, Reject, plan_chips
from pipeline.ingest.labels import LABELS, assign_labels, search_labels, sensor_manifest, shard_label_files
from pipeline.catalog.manifest import Manifest, freeze_manifest, read_manifest
from pipeline.ingest.quicklook import modality_panel, write_quicklook
from pipeline.ingest.lease import Lease, default_owner
from pipeline.ingest.raster_reader import ChipReader
from pipeline.ingest.ray_shards import run_shard_tasks, start_shard_workers
from pipeline.ingest.rejects import append_rejects
from pipeline.store.records import Chip
from pipeline.ingest.retry import RetryPolicy
from pipeline.logs import install_redaction
from pipeline.catalog.signing import PlanetaryComputerSigner, redact
from pipeline.catalog.search import StacQuery, search_items
from pipeline.store.stats import chip_stats, merge_stats, stats_from_json, stats_to_json
from pipeline.store.shards import StoreLayout, clean_tmp, is_committed, open_shard, rebuild_index, write_shard

__all__ = ["IngestSummary", "merged_shard_stats", "run_ingest", "shard_plans", "write_config", "write_quicklooks", "write_shards",
           "write_table"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestSummary:
    """What a run did: manifest version, chips written, shards written and skipped, rejects by reason, bytes, time."""

    manifest_version: str
    chips_planned: int
    chips_written: int
    shards_written: int
    shards_skipped: int
    rejects: Mapping[str, int] = field(default_factory=dict)
    bytes_written: int = 0
    seconds: float = 0.0


def shard_plans(manifest_version: str, chips: list[ChipPlan], chips_per_shard: int) -> list[tuple[str, list[str]]]:
    """Group chips (sorted by id) into shards with deterministic ids."""
    ids = sorted(c.chip_id for c in chips)
    out = []
    for start in range(0, len(ids), chips_per_shard):
        group = ids[start : start + chips_per_shard]
        digest = hashlib.sha1((manifest_version + "|" + "|".join(group)).encode()).hexdigest()[:16]
        out.append((f"shard-{start // chips_per_shard:05d}-{digest}", group))
    return out


_MANIFEST_CACHE: dict[str, tuple[str, dict[str, pystac.Item]]] = {}  # one manifest per worker process


def _manifest_items(manifest_url: str, storage_options: Mapping[str, Any]) -> tuple[str, dict[str, pystac.Item]]:
    """The manifest's version and items, read once per worker process (its URL names its content hash)."""
    if manifest_url not in _MANIFEST_CACHE:
        manifest = read_manifest(manifest_url, storage_options=storage_options)
        _MANIFEST_CACHE.clear()
        _MANIFEST_CACHE[manifest_url] = (manifest.version, {i.id: i for i in manifest.items()})
    return _MANIFEST_CACHE[manifest_url]


def _plans_json(plans: list[ChipPlan]) -> str:
    """The plans of one shard's chips as JSON (carried in the shard's row, not in the task's closure)."""
    return json.dumps([[p.chip_id, p.epsg, list(p.bounds), p.center_lon, p.center_lat,
                        {m: list(ids) for m, ids in p.items.items()}] for p in plans])  # fmt: skip


def _plans_from_json(text: str) -> list[ChipPlan]:
    return [ChipPlan(chip_id, int(epsg), tuple(bounds), lon, lat, {m: tuple(ids) for m, ids in items.items()})
            for chip_id, epsg, bounds, lon, lat, items in json.loads(text)]  # fmt: skip


def _shard_task(config: IngestConfig, layout: StoreLayout, manifest_url: str,
                sign: Callable[[str], str] | None) -> Callable[[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    """A picklable function writing one shard (run inside Ray Data workers or a plain loop).

    A row is `{"shard_id", "plans"}` (the JSON of its chips' plans, see `_plans_json`): each task carries only
    its own chips, and the function's closure stays small (config, layout, manifest URL, signer). One
    `ChipReader` per shard: each asset is opened once for all the shard's chips (local files once per worker
    process), and transient read failures are retried (`config.max_retries`, `config.retry_backoff_s`) before
    they become rejects. Statistics are computed once over the shard's chips.
    """
    sensors = {s.modality: s.spec() for s in config.sensors}
    ranges = {s.modality: s.histogram_range() for s in config.sensors}
    retry = RetryPolicy(config.max_retries, config.retry_backoff_s, config.retry_backoff_max_s)

    def run(row: dict[str, Any]) -> dict[str, Any]:
        install_redaction()  # in Ray workers too: GDAL/rasterio messages may carry signed hrefs
        shard_id, plans = str(row["shard_id"]), _plans_from_json(str(row["plans"]))
        if is_committed(layout, shard_id):
            return {"shard_id": shard_id, "status": "skipped", "chips": 0, "bytes": 0, "rejects": "[]",
                    "unusable": "[]"}  # fmt: skip
        version, items = _manifest_items(manifest_url, layout.storage_options)
        chips: list[Chip] = []
        rejects: list[Reject] = []
        unusable: list[str] = []  # chips with nothing usable for permanent reasons (not worth reading again)
        with ChipReader(sign=sign, retry=retry, chips=[p.bounds for p in plans]) as reader:
            for plan in plans:
                chip, chip_rejects = load_chip(plan, items, sensors, reader=reader)
                rejects += chip_rejects
                if chip is not None:
                    chips.append(chip)
                elif not any(r.kind == "transient_io" for r in chip_rejects):
                    unusable.append(plan.chip_id)
            extra: dict[str, bytes] = {}
            if chips and config.labels is not None:
                extra, label_rejects = shard_label_files(plans, [c.chip_id for c in chips], items, config.labels,
                                                         reader)  # fmt: skip
                rejects += label_rejects
        info = None
        if chips:
            info = write_shard(chips, layout=layout, shard_id=shard_id, dataset_meta={"manifest": version},
                               sidecar={"stats.json": json.dumps(stats_to_json(chip_stats(chips, ranges)))},
                               extra_files=extra)  # fmt: skip
        return {"shard_id": shard_id, "status": "written" if info else "empty", "chips": len(chips),
                "bytes": info.bytes if info else 0, "rejects": json.dumps([asdict(r) for r in rejects]),
                "unusable": json.dumps(unusable)}  # fmt: skip

    return run


def write_table(layout: StoreLayout, name: str, frame: pd.DataFrame) -> None:
    """Write `frame` as Parquet at `<store>/<name>`, atomically."""
    fs, root = layout.fs()
    write_parquet(fs, f"{root}/{name}", frame)


def write_config(layout: StoreLayout, config: IngestConfig) -> None:
    """`<store>/config.json`: the run's config, redacted, atomically."""
    fs, root = layout.fs()
    write_bytes(fs, f"{root}/config.json", (redact(json.dumps(to_dict(config), indent=2, sort_keys=True)) + "\n").encode())


def write_quicklooks(layout: StoreLayout, index: pd.DataFrame, modalities: list[str], count: int) -> list[str]:
    """Render the first `count` chips (first date of each modality) as PNGs under `<store>/quicklooks/`.

    A modality that no chip of a shard has (a `required: false` sensor) is simply not drawn for that shard.
    """
    fs, root = layout.fs()
    written: list[str] = []
    for url in index["url"]:
        shard_fs, shard_root = fsspec.core.url_to_fs(url, **dict(layout.storage_options))
        present = [m for m in modalities if shard_fs.exists(f"{shard_root.rstrip('/')}/{m}/zarr.json")]
        datasets = {m: open_shard(url, m, storage_options=layout.storage_options) for m in present}
        chip_ids = [str(c) for c in open_shard(url, "chips", storage_options=layout.storage_options)["chip"].values]
        for i, chip_id in enumerate(chip_ids):
            if len(written) >= count:
                return written
            panels = []
            for m, ds in datasets.items():
                if not bool(ds["date_mask"].values[i, 0]):
                    continue
                image = modality_panel(ds["data"].values[i, 0], ds["valid"].values[i, 0], list(ds["band"].values))
                if image is not None:
                    panels.append((f"{m} {str(ds['dates'].values[i, 0])[:10]}", image))
            if panels:
                target = f"{root}/quicklooks/{chip_id}.png"
                buffer = io.BytesIO()
                write_quicklook(buffer, panels, title=str(chip_id))
                write_bytes(fs, target, buffer.getvalue())
                written.append(target)
    return written


def write_shards(config: IngestConfig, layout: StoreLayout, manifest_url: str, plans: Mapping[str, ChipPlan],
                 shards: list[tuple[str, list[str]]], *, use_ray: bool = True, pc_sas_url: str | None = None,
                 check: Callable[[], None] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Write the planned shards (one task each on the job's Ray shard workers, or a plain loop) and return one
    result row per shard.

    Shared by the full run (`run_ingest`) and the incremental run (`pipeline.ingest.incremental`). `check`
    (the lease's) is called before the shards are submitted and, without Ray, before each shard.
    """
    sign = None
    if any(s.sign == "planetary-computer" for s in config.sensors):
        sign = PlanetaryComputerSigner(sas_url=pc_sas_url) if pc_sas_url else PlanetaryComputerSigner()
    task = _shard_task(config, layout, manifest_url, sign)
    rows = [{"shard_id": sid, "plans": _plans_json([plans[c] for c in ids])} for sid, ids in shards]
    if not rows:
        return []
    progress = Progress("shard", len(rows), log=log, every=0.1, min_interval_s=5.0)
    results: list[dict[str, Any]] = []

    def done(result: dict[str, Any]) -> None:
        results.append(result)
        progress.update(detail=f"{result['status']} ({result['chips']} chips)")

    if use_ray:
        if check is not None:
            check()
        run_shard_tasks(task, rows, concurrency=config.concurrency, max_retries=config.max_retries,
                        driver_writes=config.driver_writes, on_done=done)  # fmt: skip
    else:
        for row in rows:
            if check is not None:
                check()
            done(task(row))
    return results


def merged_shard_stats(layout: StoreLayout, shard_ids: list[str]) -> Any:
    """The statistics of the given committed shards, merged (from their `stats.json` sidecars)."""
    fs, root = layout.fs()
    parts = []
    for shard_id in shard_ids:
        with fs.open(f"{root}/shards/{shard_id}.zarr/stats.json", "r") as f:
            parts.append(stats_from_json(json.loads(f.read())))
    return merge_stats(parts)


def run_ingest(config: IngestConfig, *, stac_url: str = "", storage_options: Mapping[str, Any] | None = None,
               use_ray: bool = True, pc_sas_url: str | None = None, owner: str | None = None,
               lease_ttl_s: float = 600.0, clock: Callable[[], float] = time.time) -> IngestSummary:  # fmt: skip
    """Run an ingestion end to end (see the module docstring), under the dataset's lease.

    Args:
        config: The validated ingestion config.
        stac_url: Default STAC API for sensors whose `stac_url` is empty.
        storage_options: fsspec options of the store (e.g. the S3 endpoint); never written.
        use_ray: Write shards as Ray Data tasks (connects to the current cluster or starts a local one).
        pc_sas_url: Token service of Planetary Computer signing (default: the public one).
        owner: Lease owner id shown to concurrent runs (default: host, pid and a random suffix).
        lease_ttl_s: Lease lifetime; renewed every third of it while the run works.
        clock: Seconds since the epoch (for the lease).

    Raises:
        LeaseHeld: Another run holds the dataset's lease (nothing was written).
        LeaseLost: The lease was lost; the run stopped before its next write.
        PipelineError: Nothing usable was found or produced.
    """
    if use_ray:  # worker start-up overlaps the search and the planning below
        start_shard_workers(config.concurrency, max_retries=config.max_retries)
    opts = dict(storage_options or {})
    lease = Lease(config.store, owner=owner or default_owner(), ttl_s=lease_ttl_s, storage_options=opts, clock=clock)
    lease.acquire()
    with lease.keep_alive() as check:
        return _run_full(config, stac_url=stac_url, opts=opts, use_ray=use_ray, pc_sas_url=pc_sas_url, check=check)


def _run_full(config: IngestConfig, *, stac_url: str, opts: dict[str, Any], use_ray: bool, pc_sas_url: str | None,
              check: Callable[[], None]) -> IngestSummary:  # fmt: skip
    start = time.perf_counter()
    run_id = f"full-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    layout = StoreLayout(config.store, max_dates={s.modality: s.max_dates for s in config.sensors},
                         storage_options=opts)  # fmt: skip
    clean_tmp(layout)  # partial shards of killed runs (we hold the lease: nobody else writes there)
    found = {}
    invalid: list[tuple[str, str]] = []
    for sensor in config.sensors:
        url = sensor.stac_url or stac_url
        if not url:
            raise PipelineError(f"sensor {sensor.modality!r} has no stac_url and no default STAC API was given")
        found[sensor.modality] = search_items(StacQuery(url=url, collections=(sensor.collection,), bbox=config.bbox,
                                                        datetime=config.datetime,
                                                        max_cloud_cover=sensor.max_cloud_cover,
                                                        page_size=config.page_size), invalid=invalid)  # fmt: skip
        log.info("%s: %d items from %s", sensor.modality, len(found[sensor.modality]), sensor.collection)
    if config.labels is not None:
        found[LABELS] = search_labels(config.labels, bbox=config.bbox, stac_url=stac_url, page_size=config.page_size)
        log.info("labels: %d items from %s", len(found[LABELS]), config.labels.collection)
    check()
    manifest: Manifest = freeze_manifest(found, root=config.store, storage_options=opts)
    span = parse_interval(config.datetime)
    plans, rejects = plan_chips(sensor_manifest(manifest), grid=config.grid, area=config.bbox,
                                required=tuple(s.modality for s in config.sensors if s.required),
                                max_dates={s.modality: s.max_dates for s in config.sensors},
                                time_range=(span.start, span.end))  # fmt: skip
    rejects += [Reject("invalid_item", item_id, reason) for item_id, reason in invalid]
    if not plans:
        check()
        append_rejects(layout, rejects, run_id)
        raise PipelineError(f"no chip could be planned from {len(manifest.rows)} items "
                            f"({len(rejects)} rejects in {config.store}/rejects.parquet)")  # fmt: skip
    if config.labels is not None:
        plans = assign_labels(plans, manifest, config.labels)
    by_id = {p.chip_id: p for p in plans}
    shards = shard_plans(manifest.version, plans, config.chips_per_shard)
    results = write_shards(config, layout, manifest.url, by_id, shards, use_ray=use_ray, pc_sas_url=pc_sas_url,
                           check=check)  # fmt: skip
    for result in results:
        rejects += [Reject(**r) for r in json.loads(result["rejects"])]
    check()  # before each step that makes the run's work visible: still the lease holder
    index = rebuild_index(layout)
    check()
    append_rejects(layout, rejects, run_id)
    fs, root = layout.fs()
    check()
    write_json(fs, f"{root}/stats.json", stats_to_json(merged_shard_stats(layout, list(index["shard_id"]))))
    check()
    write_config(layout, config)
    if config.quicklooks and not index.empty:
        check()
        write_quicklooks(layout, index, [s.modality for s in config.sensors], config.quicklooks)
    counts: dict[str, int] = {}
    for r in rejects:
        counts[r.kind] = counts.get(r.kind, 0) + 1
    summary = IngestSummary(
        manifest.version, len(plans), sum(int(r["chips"]) for r in results),
        sum(r["status"] == "written" for r in results), sum(r["status"] == "skipped" for r in results),
        counts, sum(int(r["bytes"]) for r in results), round(time.perf_counter() - start, 2),
    )  # fmt: skip
    log.info("ingestion done: %s", summary)
    if index.empty:
        raise PipelineError(f"nothing usable was produced; rejects by reason: {counts}")
    return summary
