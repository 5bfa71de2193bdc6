"""Raster loading behind one small function: STAC items → a (time, band, y, x) array on a chosen grid.

`load_items` hides the library that reads the pixels. Two are supported: odc-stac (default: maintained, reads
`proj:code` and multi-band assets such as NAIP's `image`) and stackstac (unmaintained upstream; reads only
`proj:epsg`, so the grid is always passed explicitly). `docs/RASTER_LOADING.md` records the measured comparison.
Hrefs go through the caller's `sign` function right before reading (Planetary Computer signing plugs in there);
signed hrefs are never kept on the items.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import pystac
import xarray as xr

from pipeline.catalog.proj import item_epsg as read_epsg
from pipeline.errors import ChipError
from pipeline.ingest.retry import describe_error

__all__ = ["Backend", "Bounds", "item_epsg", "load_items"]

Backend = Literal["odc", "stackstac"]
Bounds = tuple[float, float, float, float]
_RESAMPLING = ("nearest", "bilinear", "cubic", "average", "mode")


def item_epsg(item: pystac.Item, asset: str | None = None) -> int:
    """EPSG code of an item (or one of its assets), read by `pipeline.catalog.proj.item_epsg`.

    Raises:
        ChipError: Neither `proj:code` nor `proj:epsg` names an EPSG code on the item or its assets.
    """
    epsg = read_epsg(item, asset)
    if epsg is None:
        raise ChipError(f"item {item.id} has no proj:code or proj:epsg; expected an EPSG CRS on the item or its assets")
    return epsg


def load_items(
    items: Sequence[pystac.Item],
    *,
    assets: Sequence[str],
    crs: int | str,
    bounds: Bounds,
    resolution: float,
    resampling: str = "nearest",
    dtype: str | None = None,
    nodata: float | None = None,
    sign: Callable[[str], str] | None = None,
    backend: Backend = "odc",
) -> xr.DataArray:
    """Read `assets` of `items` onto one grid.

    Args:
        items: STAC items, one time step each (in the given order).
        assets: Asset keys; for a multi-band asset (NAIP-like `image`) use `image.1`, `image.2`, … (odc only).
        crs: Output CRS, EPSG code or `"EPSG:xxxx"`.
        bounds: (minx, miny, maxx, maxy) in the output CRS; the grid starts exactly at (minx, maxy).
        resolution: Pixel size in CRS units (metres for UTM).
        resampling: `nearest`, `bilinear`, `cubic`, `average` or `mode`.
        dtype: Output dtype; None keeps the assets' dtype.
        nodata: Fill value where no item has data; None uses the assets' nodata (0 if none).
        sign: Called on every href right before it is read; None reads hrefs as they are.
        backend: `odc` (odc-stac) or `stackstac`.

    Returns:
        DataArray [time, band, y, x] with coords `time`, `band` (asset keys), `y`, `x` (pixel centres) and attrs `crs`
        (`"EPSG:xxxx"`), `transform` (6 affine coefficients) and `resolution`.

    Raises:
        ChipError: Bad arguments, an asset missing from an item, or a read failure.
    """
    if not items:
        raise ChipError("load_items needs at least one item")
    if resampling not in _RESAMPLING:
        raise ChipError(f"resampling must be one of {_RESAMPLING}, got {resampling!r}")
    minx, miny, maxx, maxy = bounds
    if not (maxx > minx and maxy > miny and resolution > 0):
        raise ChipError(f"expected bounds (minx, miny, maxx, maxy) with max > min and resolution > 0, got "
                        f"{bounds} at {resolution}")  # fmt: skip
    for item in items:
        missing = [a for a in assets if a.split(".")[0] not in item.assets]
        if missing:
            raise ChipError(f"item {item.id} has no asset {missing}; it has {sorted(item.assets)}")
    epsg = int(str(crs).split(":")[-1])
    if sign is not None:
        items = [_signed(item, sign) for item in items]
    try:
        if backend == "odc":
            arr = _load_odc(items, assets, epsg, bounds, resolution, resampling, dtype, nodata)
        elif backend == "stackstac":
            arr = _load_stackstac(items, assets, epsg, bounds, resolution, resampling, dtype, nodata)
        else:
            raise ChipError(f"backend must be 'odc' or 'stackstac', got {backend!r}")
    except ChipError:
        raise
    except Exception as err:  # rasterio/GDAL/odc raise many types; keep the cause, name the items
        raise ChipError(f"reading {list(assets)} of {[i.id for i in items]} failed: {describe_error(err)}") from err
    # One convention for both backends: x/y are pixel centres (stackstac labels top-left corners).
    arr = arr.assign_coords(x=minx + resolution * (np.arange(arr.sizes["x"]) + 0.5),
                            y=maxy - resolution * (np.arange(arr.sizes["y"]) + 0.5))  # fmt: skip
    arr.attrs = {"crs": f"EPSG:{epsg}", "transform": (resolution, 0.0, minx, 0.0, -resolution, maxy),
                 "resolution": resolution}  # fmt: skip
    return arr


def _signed(item: pystac.Item, sign: Callable[[str], str]) -> pystac.Item:
    """A copy of `item` whose asset hrefs are signed (the caller's item keeps its unsigned hrefs)."""
    out = copy.deepcopy(item)
    for asset in out.assets.values():
        asset.href = sign(asset.href)
    return out


def _load_odc(items: Sequence[pystac.Item], assets: Sequence[str], epsg: int, bounds: Bounds, resolution: float,
              resampling: str, dtype: str | None, nodata: float | None) -> xr.DataArray:  # fmt: skip
    import odc.stac
    from affine import Affine
    from odc.geo.geobox import GeoBox

    minx, miny, maxx, maxy = bounds  # the exact grid asked for, not one snapped to multiples of the resolution
    shape = (round((maxy - miny) / resolution), round((maxx - minx) / resolution))
    geobox = GeoBox(shape, Affine(resolution, 0.0, minx, 0.0, -resolution, maxy), f"EPSG:{epsg}")
    kwargs: dict[str, object] = {"bands": list(assets), "geobox": geobox, "resampling": resampling,
                                 "groupby": "id", "fail_on_error": True}  # fmt: skip
    if dtype is not None:
        kwargs["dtype"] = dtype
    if nodata is not None:
        kwargs["nodata"] = nodata
    ds = odc.stac.load(list(items), **kwargs)
    order = {item.id: i for i, item in enumerate(items)}
    arr = ds[list(assets)].to_array("band").transpose("time", "band", "y", "x")
    if arr.sizes["time"] != len(items):
        raise ChipError(f"expected {len(items)} time steps, odc-stac returned {arr.sizes['time']}")
    # odc-stac sorts by time; return the caller's order
    ids = [str(i) for i in ds.coords.get("id", xr.DataArray([item.id for item in items])).values]
    if ids and all(i in order for i in ids):
        arr = arr.isel(time=np.argsort([order[i] for i in ids]))
    return arr.drop_vars([c for c in arr.coords if c not in ("time", "band", "y", "x")])


def _load_stackstac(items: Sequence[pystac.Item], assets: Sequence[str], epsg: int, bounds: Bounds,
                    resolution: float, resampling: str, dtype: str | None, nodata: float | None) -> xr.DataArray:  # fmt: skip
    import stackstac
    from rasterio.enums import Resampling

    if any("." in a for a in assets):
        raise ChipError("stackstac cannot read multi-band assets (e.g. NAIP's `image`); use backend='odc'")
    # stackstac takes one fill value per call: read asset by asset so each keeps its own nodata.
    per_asset = []
    for key in assets:
        bands = items[0].assets[key].extra_fields.get("raster:bands") or [{}]
        out_dtype = np.dtype(dtype or bands[0].get("data_type") or "float64")
        fill = nodata if nodata is not None else bands[0].get("nodata", 0)
        if fill is None or (isinstance(fill, float) and np.isnan(fill)):
            fill = np.nan if out_dtype.kind == "f" else 0
        one = stackstac.stack(
            [item.to_dict() for item in items], assets=[key], epsg=epsg, bounds=bounds, resolution=resolution,
            resampling=getattr(Resampling, resampling), rescale=False, dtype=out_dtype,
            fill_value=out_dtype.type(fill), sortby_date=False, snap_bounds=False,
        )  # fmt: skip
        per_asset.append(one.transpose("time", "band", "y", "x").load())
    arr = xr.concat(per_asset, dim="band", coords="minimal", compat="override", join="override")
    arr = arr.drop_vars([c for c in arr.coords if c not in ("time", "band", "y", "x")])
    return arr.assign_coords(band=list(assets))
