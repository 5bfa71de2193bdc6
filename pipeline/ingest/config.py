"""Typed configuration of an ingestion: sensors, area, time, chip grid and store (`IngestConfig`).

Loaded by `pipeline.config.load_config(IngestConfig, path, overrides)`, which validates types and keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pipeline.ingest.chips import CloudMask, SensorSpec
from pipeline.ingest.grid import ChipGrid

__all__ = ["IngestConfig", "SensorSource"]


@dataclass(frozen=True)
class SensorSource:
    """One sensor: where its items come from and how its pixels are prepared.

    Attributes:
        modality: Model key of the sensor (`s2`, `s1`, `aerial`, `landsat`, …).
        collection: STAC collection id (`sentinel-2-l2a`, …).
        assets: STAC asset key → band name, in channel order.
        res_m: Output pixel size in metres (the sensor's native GSD).
        stac_url: STAC API root; empty = the job's default (e.g. the local stack's).
        max_cloud_cover: Search filter on `eo:cloud_cover` (percent); None = no filter.
        max_dates: Dates kept per chip (lowest cloud cover first).
        required: Chips must have this sensor.
        scale: Value = (DN − offset) · scale; None keeps raw values.
        offset: See `scale`.
        harmonize_s2: Remove the +1000 DN offset of Sentinel-2 baselines ≥ 04.00.
        to_db: Convert linear backscatter to dB.
        nodata: Raw nodata value (None: NaN only).
        cloud_asset: Per-pixel quality asset (`SCL`, `qa_pixel`), or empty.
        cloud_classes: Quality values that are invalid (SCL-like).
        cloud_bits: Quality bits that, when set, are invalid (QA_PIXEL-like).
        sign: `planetary-computer` to sign Azure hrefs right before reading, or empty.
    """

    modality: str
    collection: str
    assets: Mapping[str, str]
    res_m: float
    stac_url: str = ""
    max_cloud_cover: float | None = None
    max_dates: int = 1
    required: bool = True
    scale: float | None = None
    offset: float = 0.0
    harmonize_s2: bool = False
    to_db: bool = False
    nodata: float | None = 0
    cloud_asset: str = ""
    cloud_classes: tuple[int, ...] = ()
    cloud_bits: tuple[int, ...] = ()
    sign: str = ""

    def __post_init__(self) -> None:
        if not self.assets:
            raise ValueError(f"sensor {self.modality!r} needs at least one asset (asset key -> band name)")
        if self.res_m <= 0 or self.max_dates < 1:
            raise ValueError(f"sensor {self.modality!r}: res_m must be > 0 and max_dates >= 1")
        if self.sign not in ("", "planetary-computer"):
            raise ValueError(f"sensor {self.modality!r}: sign must be '' or 'planetary-computer', got {self.sign!r}")

    def spec(self) -> SensorSpec:
        """The chip loader's view of this sensor."""
        cloud = CloudMask(self.cloud_asset, tuple(self.cloud_classes), tuple(self.cloud_bits)) if self.cloud_asset \
            else None  # fmt: skip
        return SensorSpec(self.modality, tuple(self.assets), tuple(self.assets.values()), self.res_m,
                          scale=self.scale, offset=self.offset, harmonize_s2=self.harmonize_s2, to_db=self.to_db,
                          nodata=self.nodata, cloud=cloud)  # fmt: skip


@dataclass(frozen=True)
class IngestConfig:
    """An ingestion: area, time, sensors, chip grid and store.

    Attributes:
        bbox: (west, south, east, north) in WGS84 degrees.
        datetime: RFC 3339 interval `start/end`.
        sensors: The sensors to ingest.
        grid: Chip size, CRS (default: the area's UTM zone), alignment, required coverage.
        store: Dataset root: a local path or `s3://bucket/prefix`.
        chips_per_shard: Chips per Zarr shard (one Ray task per shard); 64 by default, the size that fits object
            stores for single-date 64 px chips (docs/INGESTION.md, "Shard size").
        concurrency: Shards written at once (the number of Ray shard workers).
        driver_writes: With Ray, the driver also writes shards until the first shard worker is up (hides the
            workers' start-up on short jobs); False leaves every shard to the workers.
        max_retries: Retries of a transient read failure (HTTP 5xx/429, timeout, dropped connection) inside a
            shard task, and retries of a failed shard task by Ray.
        retry_backoff_s: Wait before the first retry of a read, doubled at each further retry.
        retry_backoff_max_s: Upper bound of one wait between read retries.
        quicklooks: Chips rendered as PNG beside the store.
        page_size: STAC search page size.
    """

    bbox: tuple[float, float, float, float]
    datetime: str
    sensors: tuple[SensorSource, ...]
    grid: ChipGrid
    store: str = "out/dataset"
    chips_per_shard: int = 64
    concurrency: int = 2
    driver_writes: bool = True
    max_retries: int = 3
    retry_backoff_s: float = 0.5
    retry_backoff_max_s: float = 8.0
    quicklooks: int = 4
    page_size: int = 100

    def __post_init__(self) -> None:
        if not self.sensors:
            raise ValueError("an ingestion needs at least one sensor")
        keys = [s.modality for s in self.sensors]
        if len(set(keys)) != len(keys):
            raise ValueError(f"sensor modalities must be unique, got {keys}")
        if "/" not in self.datetime:
            raise ValueError(f"datetime must be an interval 'start/end', got {self.datetime!r}")
        if self.chips_per_shard < 1 or self.concurrency < 1:
            raise ValueError("chips_per_shard and concurrency must be >= 1")
        if self.max_retries < 0 or not 0 <= self.retry_backoff_s <= self.retry_backoff_max_s:
            raise ValueError(f"expected max_retries >= 0 and 0 <= retry_backoff_s <= retry_backoff_max_s, got "
                             f"{self.max_retries}, {self.retry_backoff_s}, {self.retry_backoff_max_s}")
        coarsest = max(s.res_m for s in self.sensors)
        if self.grid.align_m < coarsest:
            raise ValueError(f"grid.align_m ({self.grid.align_m}) must be at least the coarsest GSD ({coarsest} m)")
