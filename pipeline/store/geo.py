"""Georeferencing of stored chips: cell-centre coordinates and the CF / GeoZarr `spatial_ref` grid mapping.

Every modality group of a shard carries `x` [chip, x] and `y` [chip, y] (the centres of each chip's pixel
columns and rows in the chip's CRS, metres for UTM) and a scalar `spatial_ref` variable whose attributes are the
CF grid mapping of the shard's CRS (`crs_wkt`, `grid_mapping_name`, …, and GDAL's `spatial_ref`); `data` and
`valid` name it in their `grid_mapping` attribute. A shard's chips lie at different places, so one GeoTransform
cannot describe them all: it is derived per chip from its coordinates (`geotransform`) when a chip is taken out of
the store (`pipeline.store.open_store.chip_dataset`), which is what rioxarray reads.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

__all__ = ["axis_units", "cell_centres", "geotransform", "grid_mapping_attrs"]


@lru_cache(maxsize=64)
def _cf(epsg: int) -> tuple[tuple[str, Any], ...]:
    from pyproj import CRS

    crs = CRS.from_epsg(epsg)
    attrs = {k: v for k, v in crs.to_cf().items() if isinstance(v, str | int | float)}
    attrs["spatial_ref"] = attrs["crs_wkt"]  # GDAL's name of the same WKT (what rioxarray writes too)
    return tuple(sorted(attrs.items()))


def grid_mapping_attrs(epsg: int) -> dict[str, Any]:
    """CF grid-mapping attributes of an EPSG code (`crs_wkt`, `spatial_ref`, `grid_mapping_name`, parameters)."""
    return dict(_cf(int(epsg)))


def axis_units(epsg: int) -> str:
    """CF `units` of the CRS's easting/northing axes ("m" for metres)."""
    from pyproj import CRS

    unit = CRS.from_epsg(int(epsg)).axis_info[0].unit_name
    return "m" if unit in ("metre", "meter") else unit


def cell_centres(bounds: tuple[float, float, float, float], res: float, width: int, height: int
                 ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """x (west → east) and y (north → south) of the pixel centres of a north-up chip with these bounds."""
    x = bounds[0] + (np.arange(width, dtype=np.float64) + 0.5) * res
    y = bounds[3] - (np.arange(height, dtype=np.float64) + 0.5) * res
    return x, y


def geotransform(x: np.ndarray, y: np.ndarray) -> str:
    """GDAL GeoTransform ("x0 dx 0 y0 0 dy", space separated) of a regular grid given by its cell centres."""
    dx = float(x[1] - x[0]) if len(x) > 1 else 1.0
    dy = float(y[1] - y[0]) if len(y) > 1 else -dx
    return " ".join(repr(v) for v in (float(x[0]) - dx / 2, dx, 0.0, float(y[0]) - dy / 2, 0.0, dy))
