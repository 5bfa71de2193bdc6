"""What an item says about its rasters, checked against the files, and chip windows snapped to pixel grids.

Metadata that disagrees with the file is an error, never silently trusted: the manifest's lineage (CRS, grid)
would otherwise state what the data do not have. `check_asset` compares an asset's declared media type,
`proj:code`/`proj:epsg`, `proj:shape`, `proj:transform`, band count and `raster:bands` data types with the
opened dataset and raises `MetadataMismatch` naming the field, the declared and the actual value.

`snap_bounds` moves a chip window by less than half a pixel onto a raster's own pixel grid: Landsat grids sit
at 30 k + 15 m, so a chip whose corners fall on multiples of 30 m would put every output pixel centre exactly
on a source pixel edge (a nearest-neighbour tie, resolved up-left by GDAL: a half-pixel shift). Snapped, each
output pixel is one source pixel, read without resampling; the stored origin says where the window lies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pystac

from pipeline.errors import ChipError

__all__ = ["MetadataMismatch", "check_asset", "check_media_type", "snap_bounds"]

Bounds = tuple[float, float, float, float]
_RASTER_TYPES = ("tiff", "geotiff", "jp2", "jpeg2000", "x-hdf", "netcdf", "octet-stream")


class MetadataMismatch(ChipError):
    """An item's metadata disagree with its file (CRS, shape, transform, bands, data type or media type)."""


def check_media_type(item: pystac.Item, key: str) -> None:
    """An asset declared with a media type that is not a raster (e.g. `text/html`, `application/json`) is refused."""
    media = str(item.assets[key].media_type or "").lower()
    if media and not any(t in media for t in _RASTER_TYPES):
        raise MetadataMismatch(f"item {item.id}: asset {key!r} declares media type {media!r}, which is not a raster "
                               "format this loader reads (GeoTIFF/COG, JPEG 2000)")  # fmt: skip


def _declared(item: pystac.Item, key: str, name: str) -> Any:
    fields = item.assets[key].extra_fields
    return fields[name] if name in fields else item.properties.get(name)


def _declared_epsg(item: pystac.Item, key: str) -> int | None:
    for fields in (item.assets[key].extra_fields, item.properties):
        code = fields.get("proj:code")
        if isinstance(code, str) and code.upper().startswith("EPSG:"):
            return int(code.split(":", 1)[1])
        if fields.get("proj:epsg") is not None:
            return int(fields["proj:epsg"])
    return None


def check_asset(item: pystac.Item, key: str, bands: Sequence[int], ds: Any, ds_epsg: int | None) -> None:
    """Compare an asset's declared CRS, shape, transform, band count and data types with the opened dataset.

    Raises:
        MetadataMismatch: A declared value disagrees with the file (the message names both).
    """
    where = f"item {item.id}, asset {key!r}"
    epsg = _declared_epsg(item, key)
    if epsg is not None and ds_epsg is not None and epsg != ds_epsg:
        raise MetadataMismatch(f"{where}: declares CRS EPSG:{epsg} (proj:code/proj:epsg) but the raster is "
                               f"EPSG:{ds_epsg}")  # fmt: skip
    shape = _declared(item, key, "proj:shape")
    if isinstance(shape, list | tuple) and len(shape) == 2 and [int(v) for v in shape] != [ds.height, ds.width]:
        raise MetadataMismatch(f"{where}: declares proj:shape {list(shape)} but the raster is "
                               f"{[ds.height, ds.width]} (rows, columns)")  # fmt: skip
    transform = _declared(item, key, "proj:transform")
    if isinstance(transform, list | tuple) and len(transform) >= 6:
        actual = list(ds.transform)[:6]
        scale = max(abs(ds.transform.a), abs(ds.transform.e), 1e-9)
        if any(not math.isclose(float(d), a, rel_tol=1e-9, abs_tol=1e-6 * scale)
               for d, a in zip(transform[:6], actual, strict=True)):  # fmt: skip
            raise MetadataMismatch(f"{where}: declares proj:transform {list(transform[:6])} but the raster's is "
                                   f"{actual}")  # fmt: skip
    if bands and max(bands) > ds.count:
        raise MetadataMismatch(f"{where}: band {max(bands)} is asked for but the raster has {ds.count} band(s)")
    meta = item.assets[key].extra_fields.get("raster:bands") or []
    if meta and len(meta) != ds.count:
        raise MetadataMismatch(f"{where}: raster:bands lists {len(meta)} band(s) but the raster has {ds.count}")
    for b in bands:
        declared = meta[b - 1].get("data_type") if b - 1 < len(meta) else None
        if declared and str(declared) != ds.dtypes[b - 1]:
            raise MetadataMismatch(f"{where}: band {b} declares data_type {declared!r} but the raster's is "
                                   f"{ds.dtypes[b - 1]!r}")  # fmt: skip


def snap_bounds(bounds: Bounds, resolution: float, origin: tuple[float, float]) -> Bounds:
    """`bounds` moved (by less than half of `resolution`, ties east/north) onto the grid through `origin`."""
    def shift(edge: float, grid: float) -> float:
        d = (grid - edge) % resolution  # in [0, resolution)
        d = d - resolution if d > resolution / 2 + 1e-9 else d  # in (-res/2, res/2]
        return 0.0 if abs(d) < 1e-9 or abs(abs(d) - resolution) < 1e-9 else d

    dx, dy = shift(bounds[0], origin[0]), shift(bounds[3], origin[1])
    return (bounds[0] + dx, bounds[1] + dy, bounds[2] + dx, bounds[3] + dy)
