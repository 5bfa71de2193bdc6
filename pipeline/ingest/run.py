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
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import fsspec
import pandas as pd
import pystac

from pipeline.ingest.chips import load_chip
from pipeline.config import to_dict
from pipeline.ingest.config import IngestConfig
from pipeline.errors import PipelineError
from pipeline.ingest.grid import ChipPlan, Reject, plan_chips
from pipeline.catalog.manifest import Manifest, freeze_manifest, read_manifest
from pipeline.ingest.quicklook import modality_panel, write_quicklook
from pipeline.ingest.raster_reader import ChipReader
from pipeline.ingest.ray_shards import run_shard_tasks, start_shard_workers
from pipeline.store.records import Chip
from pipeline.ingest.retry import RetryPolicy
from pipeline.catalog.signing import PlanetaryComputerSigner, redact
from pipeline.catalog.search import StacQuery, search_items
from pipeline.store.stats import chip_stats, merge_stats, stats_from_json, stats_to_json
from pipeline.store.shards import StoreLayout, is_committed, open_shard, rebuild_index, write_shard

__all__ = ["IngestSummary", "run_ingest", "shard_plans", "write_quicklooks", "write_shards", "write_table"]

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
    retry = RetryPolicy(config.max_retries, config.retry_backoff_s, config.retry_backoff_max_s)

    def run(row: dict[str, Any]) -> dict[str, Any]:
        shard_id, plans = str(row["shard_id"]), _plans_from_json(str(row["plans"]))
        if is_committed(layout, shard_id):
            return {"shard_id": shard_id, "status": "skipped", "chips": 0, "bytes": 0, "rejects": "[]"}
        version, items = _manifest_items(manifest_url, layout.storage_options)
        chips: list[Chip] = []
        rejects: list[Reject] = []
        with ChipReader(sign=sign, retry=retry, chips=[p.bounds for p in plans]) as reader:
            for plan in plans:
                chip, chip_rejects = load_chip(plan, items, sensors, reader=reader)
                rejects += chip_rejects
                if chip is not None:
                    chips.append(chip)
        info = None
        if chips:
            info = write_shard(chips, layout=layout, shard_id=shard_id, dataset_meta={"manifest": version},
                               sidecar={"stats.json": json.dumps(stats_to_json(chip_stats(chips)))})  # fmt: skip
        return {"shard_id": shard_id, "status": "written" if info else "empty", "chips": len(chips),
                "bytes": info.bytes if info else 0, "rejects": json.dumps([asdict(r) for r in rejects])}  # fmt: skip

    return run


def write_table(layout: StoreLayout, name: str, frame: pd.DataFrame) -> None:
    """Write `frame` as Parquet at `<store>/<name>`."""
    fs, root = layout.fs()
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    with fs.open(f"{root}/{name}", "wb") as f:
        f.write(buffer.getvalue())


def write_quicklooks(layout: StoreLayout, index: pd.DataFrame, modalities: list[str], count: int) -> list[str]:
    """Render the first `count` chips (first date of each modality) as PNGs under `<store>/quicklooks/`."""
    fs, root = layout.fs()
    fs.makedirs(f"{root}/quicklooks", exist_ok=True)
    written: list[str] = []
    for url in index["url"]:
        datasets = {m: open_shard(url, m, storage_options=layout.storage_options) for m in modalities}
        for i, chip_id in enumerate(next(iter(datasets.values()))["chip"].values):
            if len(written) >= count:
                return written
            panels = []
            for m, ds in datasets.items():
                if chip_id not in ds["chip"].values or not bool(ds["date_mask"].values[i, 0]):
                    continue
                image = modality_panel(ds["data"].values[i, 0], ds["valid"].values[i, 0], list(ds["band"].values))
                if image is not None:
                    panels.append((f"{m} {str(ds['dates'].values[i, 0])[:10]}", image))
            if panels:
                target = f"{root}/quicklooks/{chip_id}.png"
                with fs.open(target, "wb") as f:
                    write_quicklook(f, panels, title=str(chip_id))
                written.append(target)
    return written


def write_shards(config: IngestConfig, layout: StoreLayout, manifest_url: str, plans: Mapping[str, ChipPlan],
                 shards: list[tuple[str, list[str]]], *, use_ray: bool = True,
                 pc_sas_url: str | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Write the planned shards (one task each on the job's Ray shard workers, or a plain loop) and return one
    result row per shard.

    Shared by the full run (`run_ingest`) and the incremental run (`pipeline.ingest.incremental`).
    """
    sign = None
    if any(s.sign == "planetary-computer" for s in config.sensors):
        sign = PlanetaryComputerSigner(sas_url=pc_sas_url) if pc_sas_url else PlanetaryComputerSigner()
    task = _shard_task(config, layout, manifest_url, sign)
    rows = [{"shard_id": sid, "plans": _plans_json([plans[c] for c in ids])} for sid, ids in shards]
    if not rows:
        return []
    if use_ray:
        return run_shard_tasks(task, rows, concurrency=config.concurrency, max_retries=config.max_retries,
                               driver_writes=config.driver_writes, preload=(__name__,))  # fmt: skip
    return [task(r) for r in rows]


def run_ingest(config: IngestConfig, *, stac_url: str = "", storage_options: Mapping[str, Any] | None = None,
               use_ray: bool = True, pc_sas_url: str | None = None) -> IngestSummary:  # fmt: skip
    """Run an ingestion end to end (see the module docstring).

    Args:
        config: The validated ingestion config.
        stac_url: Default STAC API for sensors whose `stac_url` is empty.
        storage_options: fsspec options of the store (e.g. the S3 endpoint); never written.
        use_ray: Write shards as Ray Data tasks (connects to the current cluster or starts a local one).
        pc_sas_url: Token service of Planetary Computer signing (default: the public one).

    Raises:
        PipelineError: Nothing usable was found or produced.
    """
    start = time.perf_counter()
    if use_ray:  # worker start-up overlaps the search and the planning below
        start_shard_workers(config.concurrency, max_retries=config.max_retries, preload=(__name__,))
    opts = dict(storage_options or {})
    layout = StoreLayout(config.store, max_dates={s.modality: s.max_dates for s in config.sensors},
                         storage_options=opts)  # fmt: skip
    found = {}
    for sensor in config.sensors:
        url = sensor.stac_url or stac_url
        if not url:
            raise PipelineError(f"sensor {sensor.modality!r} has no stac_url and no default STAC API was given")
        found[sensor.modality] = search_items(StacQuery(url=url, collections=(sensor.collection,), bbox=config.bbox,
                                                        datetime=config.datetime,
                                                        max_cloud_cover=sensor.max_cloud_cover,
                                                        page_size=config.page_size))  # fmt: skip
        log.info("%s: %d items from %s", sensor.modality, len(found[sensor.modality]), sensor.collection)
    manifest: Manifest = freeze_manifest(found, root=config.store, storage_options=opts)
    begin, end = (datetime.fromisoformat(p.replace("Z", "+00:00")) for p in config.datetime.split("/"))
    plans, rejects = plan_chips(manifest, grid=config.grid, area=config.bbox,
                                required=tuple(s.modality for s in config.sensors if s.required),
                                max_dates={s.modality: s.max_dates for s in config.sensors},
                                time_range=(begin, end) if begin.tzinfo else None)  # fmt: skip
    if not plans:
        write_table(layout, "rejects.parquet", pd.DataFrame([asdict(r) for r in rejects]))
        raise PipelineError(f"no chip could be planned from {len(manifest.rows)} items "
                            f"({len(rejects)} rejects in {config.store}/rejects.parquet)")  # fmt: skip
    by_id = {p.chip_id: p for p in plans}
    shards = shard_plans(manifest.version, plans, config.chips_per_shard)
    results = write_shards(config, layout, manifest.url, by_id, shards, use_ray=use_ray, pc_sas_url=pc_sas_url)
    for result in results:
        rejects += [Reject(**r) for r in json.loads(result["rejects"])]
    index = rebuild_index(layout)
    write_table(layout, "rejects.parquet", pd.DataFrame([asdict(r) for r in rejects],
                                                          columns=["kind", "subject", "reason"]))  # fmt: skip
    fs, root = layout.fs()
    parts = []
    for shard_id in index["shard_id"]:
        with fs.open(f"{root}/shards/{shard_id}.zarr/stats.json", "r") as f:
            parts.append(stats_from_json(json.loads(f.read())))
    with fs.open(f"{root}/stats.json", "w") as f:  # merged over every committed shard (equal to a full pass)
        f.write(json.dumps(stats_to_json(merge_stats(parts)), sort_keys=True))
    with fs.open(f"{root}/config.json", "w") as f:
        f.write(redact(json.dumps(to_dict(config), indent=2, sort_keys=True)))
    if config.quicklooks and not index.empty:
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
