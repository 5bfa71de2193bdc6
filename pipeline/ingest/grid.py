"""Chip planning: square cells of a UTM grid over the area, and for each cell the items each sensor uses.

A cell becomes a chip when every required modality has items whose footprints cover at least `min_coverage`
of it. Per modality the items are chosen by cloud cover (lowest first, up to `max_dates`) and then sorted by
date. Items that cannot be used are returned as `Reject` records with a reason, never silently dropped.
Pure functions over a frozen manifest: no pixels, no network.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import pandas as pd
from pyproj import Transformer
from shapely.geometry import box, shape
from shapely.ops import transform as shp_transform

from pipeline.catalog.manifest import Manifest
from pipeline.errors import ConfigError
from pipeline.times import Interval, try_instant

__all__ = ["ChipGrid", "ChipPlan", "Reject", "plan_chips", "utm_epsg"]


@dataclass(frozen=True)
class ChipGrid:
    """The chip grid.

    Attributes:
        chip_size_m: Chip side in metres (a multiple of `align_m`).
        epsg: Grid CRS; None = the UTM zone of the area's centre.
        align_m: Chip corners fall on multiples of this (the coarsest GSD of the sensors).
        min_coverage: Fraction of a chip an item footprint must cover for the item to be used.
    """

    chip_size_m: float
    epsg: int | None = None
    align_m: float = 10.0
    min_coverage: float = 1.0

    def __post_init__(self) -> None:
        if self.chip_size_m <= 0 or self.align_m <= 0:
            raise ConfigError(f"chip_size_m and align_m must be > 0, got {self.chip_size_m}, {self.align_m}")
        ratio = self.chip_size_m / self.align_m
        if abs(ratio - round(ratio)) > 1e-9:
            raise ConfigError(f"chip_size_m {self.chip_size_m} must be a multiple of align_m {self.align_m} "
                             "(the coarsest sensor GSD) so every sensor's pixels tile the chip")  # fmt: skip
        if not 0 < self.min_coverage <= 1:
            raise ConfigError(f"min_coverage must be in (0, 1], got {self.min_coverage}")


@dataclass(frozen=True)
class ChipPlan:
    """One chip to build: its grid cell and, per modality, the item ids to read (sorted by date)."""

    chip_id: str
    epsg: int
    bounds: tuple[float, float, float, float]
    center_lon: float
    center_lat: float
    items: Mapping[str, tuple[str, ...]]


@dataclass(frozen=True)
class Reject:
    """Something the plan could not use: `kind` (a short reason code), the item or chip id, a sentence."""

    kind: str
    subject: str
    reason: str


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the WGS84 UTM zone containing (lon, lat)."""
    zone = min(60, max(1, int(math.floor((lon + 180) / 6)) + 1))
    return (32600 if lat >= 0 else 32700) + zone


def _bbox(row: object) -> list[float] | None:
    """The item's 2D bbox [w, s, e, n] (a 3D one reduced), or None when it has none."""
    try:
        raw = json.loads(getattr(row, "bbox", "null") or "null")
    except (TypeError, ValueError):
        return None
    if not isinstance(raw, list) or len(raw) not in (4, 6):
        return None
    return [float(v) for v in (raw if len(raw) == 4 else [raw[0], raw[1], raw[3], raw[4]])]


def _contains(bbox: list[float], bounds: tuple[float, ...], tol: float = 1e-6) -> bool:
    """True when `bbox` holds `bounds` (a bbox crossing the antimeridian, west > east, holds nothing here)."""
    w, s, e, n = bbox
    return w - tol <= bounds[0] and s - tol <= bounds[1] and bounds[2] <= e + tol and bounds[3] <= n + tol


def plan_chips(manifest: Manifest, *, grid: ChipGrid, area: tuple[float, float, float, float],
               required: Sequence[str], max_dates: Mapping[str, int] | None = None,
               time_range: tuple[datetime | None, datetime | None] | None = None) -> tuple[list[ChipPlan], list[Reject]]:  # fmt: skip
    """Plan the chips of an area.

    Args:
        manifest: The frozen search result.
        grid: Chip size, CRS, alignment and required coverage.
        area: (west, south, east, north) in WGS84 degrees.
        required: Modalities a chip must have (others are added when available).
        max_dates: Cap of dates per chip and modality (default: no cap).
        time_range: Items outside it are rejected (`dates_out_of_range`); a None end is open.

    Returns:
        Chips sorted by id, and the rejects (`no_datetime`, `no_crs`, `dates_out_of_range`,
        `invalid_geometry` — also a footprint crossing the antimeridian unsplit —, `bbox_mismatch`,
        `outside_area`, `no_complete_chip`, and `duplicate_item` for ids the search returned twice with
        different content).
    """
    west, south, east, north = area
    epsg = grid.epsg or utm_epsg((west + east) / 2, (south + north) / 2)
    to_grid = Transformer.from_crs(4326, epsg, always_xy=True).transform
    to_wgs = Transformer.from_crs(epsg, 4326, always_xy=True).transform
    area_poly = shp_transform(to_grid, box(west, south, east, north))
    rejects: list[Reject] = [Reject("duplicate_item", i, "the search returned this item id twice with different "
                                    "content (updated between pages?); neither copy is used")
                             for i in manifest.conflicts]  # fmt: skip
    footprints: dict[str, list[tuple[str, object, datetime, float]]] = {}
    for row in manifest.rows.itertuples(index=False):
        when = try_instant(row.datetime)
        if when is None:
            rejects.append(Reject("no_datetime", row.item_id, "the item has no usable datetime"))
            continue
        if row.epsg is None or (isinstance(row.epsg, float) and math.isnan(row.epsg)) or str(row.epsg) == "<NA>":
            rejects.append(Reject("no_crs", row.item_id, "the item declares no proj:code or proj:epsg"))
            continue
        if time_range is not None and when not in Interval(*time_range):
            rejects.append(Reject("dates_out_of_range", row.item_id,
                                  f"{row.datetime} is outside {Interval(*time_range).text()}"))
            continue
        try:
            geom = shape(json.loads(row.geometry))
            if geom.is_empty or not geom.is_valid:
                raise ValueError("empty or invalid geometry")
            gw, gs, ge, gn = geom.bounds
            if gw < -180 or ge > 180 or gs < -90 or gn > 90 or ge - gw > 180:
                raise ValueError(f"its bounds {[round(v, 6) for v in geom.bounds]} are not a footprint in WGS84 "
                                 "degrees (or it crosses the antimeridian without being split there)")  # fmt: skip
            footprint = shp_transform(to_grid, geom)
            if not footprint.is_valid or not all(math.isfinite(v) for v in footprint.bounds):
                raise ValueError(f"it does not project onto the EPSG:{epsg} grid")
        except Exception as err:  # noqa: BLE001 - shapely/pyproj raise many types on malformed GeoJSON
            rejects.append(Reject("invalid_geometry", row.item_id, f"its footprint cannot be used: {err}"))
            continue
        bbox = _bbox(row)
        if bbox is not None and not _contains(bbox, geom.bounds):
            rejects.append(Reject("bbox_mismatch", row.item_id, f"its bbox {bbox} does not contain its geometry "
                                  f"{[round(v, 6) for v in geom.bounds]}; the metadata disagree"))  # fmt: skip
            continue
        if not footprint.intersects(area_poly):
            rejects.append(Reject("outside_area", row.item_id, "its footprint does not intersect the area"))
            continue
        try:
            cover = 0.0 if row.cloud_cover is None or pd.isna(row.cloud_cover) else float(row.cloud_cover)
        except (TypeError, ValueError):
            rejects.append(Reject("bad_metadata", row.item_id, f"eo:cloud_cover {row.cloud_cover!r} is not a number"))
            continue
        footprints.setdefault(row.modality, []).append((row.item_id, footprint, when, cover))
    size, step = grid.chip_size_m, grid.align_m
    minx, miny, maxx, maxy = area_poly.bounds
    x0, y0 = math.floor(minx / step) * step, math.floor(miny / step) * step
    chips = []
    for i in range(int(math.ceil((maxx - x0) / size))):
        for j in range(int(math.ceil((maxy - y0) / size))):
            cell = box(x0 + i * size, y0 + j * size, x0 + (i + 1) * size, y0 + (j + 1) * size)
            if not cell.intersects(area_poly):
                continue
            chosen: dict[str, tuple[str, ...]] = {}
            for modality, entries in footprints.items():
                usable = [e for e in entries if e[1].intersection(cell).area >= grid.min_coverage * cell.area - 1e-6]
                cap = (max_dates or {}).get(modality)
                picked = sorted(usable, key=lambda e: (e[3], e[2], e[0]))[: cap or None]
                if picked:
                    chosen[modality] = tuple(e[0] for e in sorted(picked, key=lambda e: (e[2], e[0])))
            if not all(m in chosen for m in required):
                continue
            cx, cy = cell.centroid.x, cell.centroid.y
            lon, lat = to_wgs(cx, cy)
            cb = tuple(float(v) for v in cell.bounds)
            chips.append(ChipPlan(f"{epsg}_{int(cb[0])}_{int(cb[1])}_{int(size)}", epsg, cb,  # type: ignore[arg-type]
                                  round(lon, 7), round(lat, 7), chosen))  # fmt: skip
    used = {i for c in chips for ids in c.items.values() for i in ids}
    for modality, entries in footprints.items():
        for item_id, *_ in entries:
            if item_id not in used:
                rejects.append(Reject("no_complete_chip", item_id, f"no chip is covered by this {modality} item "
                                      f"together with every required modality {list(required)}"))  # fmt: skip
    return sorted(chips, key=lambda c: c.chip_id), rejects
