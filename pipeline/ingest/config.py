"""Typed configuration of an ingestion: sensors, area, time, chip grid and store (`IngestConfig`).

Loaded by `pipeline.config.load_config(IngestConfig, path, overrides)`, which validates types and keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pipeline.errors import ConfigError
from pipeline.ingest.chips import CloudMask, SensorSpec
from pipeline.ingest.grid import ChipGrid
from pipeline.times import parse_interval
from pipeline.ingest.labels import LABELS, LabelSource
from pipeline.store.stats import DB_RANGE, REFLECTANCE_RANGE

__all__ = ["IngestConfig", "LabelSource", "SensorSource"]


def _check_bbox(bbox: tuple[float, ...]) -> None:
    if len(bbox) != 4:
        raise ConfigError(f"bbox: expected 4 numbers [west, south, east, north] in degrees, got {list(bbox)}")
    west, south, east, north = bbox
    if not (-180 <= west <= 180 and -180 <= east <= 180 and -90 <= south <= 90 and -90 <= north <= 90):
        raise ConfigError(f"bbox: {list(bbox)} is outside [-180, 180] x [-90, 90] degrees (west, south, east, north)")
    if not (west < east and south < north):
        raise ConfigError(f"bbox: {list(bbox)} must have west < east and south < north (an area crossing the "
                          "antimeridian is two ingestions)")


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
        pack: Store scaled integer DN (reflectance) as uint16 with CF scale_factor/add_offset when lossless;
            False stores float32.
        stats_range: Histogram range (low, high) of the stored values in the statistics; None = reflectance
            (−0.5, 2.5) when `scale` is set, dB (−60, 40) when `to_db`, else the dtype's (8-bit: 0–256). Declared,
            never guessed from the pixels, so every shard's histograms merge.
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
    pack: bool = True
    stats_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.stats_range is not None and not self.stats_range[0] < self.stats_range[1]:
            raise ConfigError(f"sensor {self.modality!r}: stats_range must be (low, high) with low < high, got "
                             f"{self.stats_range}")  # fmt: skip
        if not self.assets:
            raise ConfigError(f"sensor {self.modality!r} needs at least one asset (asset key -> band name)")
        if self.res_m <= 0 or self.max_dates < 1:
            raise ConfigError(f"sensor {self.modality!r}: res_m must be > 0 and max_dates >= 1")
        if self.max_cloud_cover is not None and not 0 <= self.max_cloud_cover <= 100:
            raise ConfigError(f"sensor {self.modality!r}: max_cloud_cover is a percentage in [0, 100], got "
                              f"{self.max_cloud_cover}")
        if self.sign not in ("", "planetary-computer"):
            raise ConfigError(f"sensor {self.modality!r}: sign must be '' or 'planetary-computer', got {self.sign!r}")

    def histogram_range(self) -> tuple[float, float] | None:
        """The statistics' histogram range of this sensor's stored values (see `stats_range`)."""
        if self.stats_range is not None:
            return (float(self.stats_range[0]), float(self.stats_range[1]))
        if self.to_db:
            return DB_RANGE
        return REFLECTANCE_RANGE if self.scale is not None else None

    def spec(self) -> SensorSpec:
        """The chip loader's view of this sensor."""
        cloud = CloudMask(self.cloud_asset, tuple(self.cloud_classes), tuple(self.cloud_bits)) if self.cloud_asset \
            else None  # fmt: skip
        return SensorSpec(self.modality, tuple(self.assets), tuple(self.assets.values()), self.res_m,
                          scale=self.scale, offset=self.offset, harmonize_s2=self.harmonize_s2, to_db=self.to_db,
                          nodata=self.nodata, cloud=cloud, pack=self.pack, required=self.required)  # fmt: skip


@dataclass(frozen=True)
class IngestConfig:
    """An ingestion: area, time, sensors, chip grid and store.

    Attributes:
        bbox: (west, south, east, north) in WGS84 degrees: four numbers, west < east, south < north.
        datetime: RFC 3339 instant or interval `start/end`; an open end is `..` (`2017-06-01T00:00:00Z/..`).
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
        labels: Raster label items to attach to every chip (`pipeline.ingest.labels`); None = no labels.
    """

    bbox: tuple[float, ...]
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
    labels: LabelSource | None = None

    def __post_init__(self) -> None:
        if not self.sensors:
            raise ConfigError("an ingestion needs at least one sensor")
        keys = [s.modality for s in self.sensors]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"sensor modalities must be unique, got {keys}")
        if LABELS in keys:
            raise ConfigError(f"{LABELS!r} cannot be a sensor modality (it names the chips' label items)")
        _check_bbox(self.bbox)
        try:
            parse_interval(self.datetime)
        except ValueError as err:
            raise ConfigError(f"datetime: {err}") from None
        if self.chips_per_shard < 1 or self.concurrency < 1:
            raise ConfigError("chips_per_shard and concurrency must be >= 1")
        if self.max_retries < 0 or not 0 <= self.retry_backoff_s <= self.retry_backoff_max_s:
            raise ConfigError(f"expected max_retries >= 0 and 0 <= retry_backoff_s <= retry_backoff_max_s, got "
                             f"{self.max_retries}, {self.retry_backoff_s}, {self.retry_backoff_max_s}")
        coarsest = max(s.res_m for s in self.sensors)
        if self.grid.align_m < coarsest:
            raise ConfigError(f"grid.align_m ({self.grid.align_m}) must be at least the coarsest GSD ({coarsest} m)")
