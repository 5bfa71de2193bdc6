"""A whole store as one lazy xarray DataTree, and one chip of it as a Dataset that GIS tools can place.

`open_store(url)` opens every committed shard (the shard index) of a store with xarray (dask-backed, nothing
read but metadata), concatenates the chips of each modality group along `chip` and drops the chips listed as
superseded (`state/superseded.parquet`). The tree has one node per modality group (`data`, `valid`, `date_mask`,
`doy`, `item_ids`, with coordinates `chip`, `band`, `dates` [chip, time] as datetime64, `x` [chip, x], `y`
[chip, y], `spatial_ref`, `shard`) and a `chips` node (EPSG code, bounds and centre of each chip).

`chip_dataset(tree, chip_id, modality)` takes one chip out: dims (time, band, y, x) with `time` the chip's real
dates (datetime64, padding dropped), 1-D `x`/`y` cell-centre coordinates and a `spatial_ref` coordinate holding
the CRS and the chip's GeoTransform, so that `ds.rio.crs` and `ds.rio.transform()` (rioxarray) are the chip's.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import xarray as xr

from pipeline.errors import StoreError
from pipeline.store.geo import geotransform
from pipeline.store.shards import StoreLayout, read_index
from pipeline.store.superseded import read_superseded

__all__ = ["chip_dataset", "open_store"]

_FILL = {"valid": False, "date_mask": False, "doy": 0, "item_ids": "", "dates": np.datetime64("NaT")}
_OPEN_THREADS = 8
_NOT_A_NODE = ".*not recognized as a component of a Zarr hierarchy"  # the commit marker and sidecars: expected


def _open_group(url: str, group: str, options: Mapping[str, Any] | None) -> xr.Dataset:
    return xr.open_zarr(url, group=group, zarr_format=3, consolidated=False, chunks={},
                        storage_options=dict(options or {}) or None)  # fmt: skip


def _concat(parts: list[xr.Dataset], group: str) -> xr.Dataset:
    """Chips of every shard along `chip`; one CRS for all of them (a store's grid has one)."""
    crs = {p["spatial_ref"].attrs.get("crs_wkt") for p in parts if "spatial_ref" in p.coords}
    if len(crs) > 1:
        raise StoreError(f"the shards of group {group!r} do not share one CRS ({len(crs)} found); open them one "
                         "by one with pipeline.store.shards.open_shard")  # fmt: skip
    if len(parts) == 1:
        return parts[0]
    fill = {k: v for k, v in _FILL.items() if any(k in p.variables for p in parts)}
    return xr.concat(parts, dim="chip", data_vars="minimal", coords="minimal", compat="override", join="outer",
                     fill_value=fill | {"data": np.nan}, combine_attrs="drop_conflicts")  # fmt: skip


def open_store(url: str, storage_options: Mapping[str, Any] | None = None) -> xr.DataTree:
    """Every committed shard of a store, lazily, as one DataTree (chips concatenated, superseded chips dropped).

    Args:
        url: The store root written by the ingestion (local path or `s3://…`).
        storage_options: fsspec options (endpoint, credentials); used for I/O only.

    Returns:
        A DataTree with one node per modality group and a `chips` node, each indexed by `chip`.

    Raises:
        StoreError: The store has no committed shard, or its shards disagree on the CRS.
    """
    layout = StoreLayout(url, storage_options=dict(storage_options or {}))
    fs, root_path = layout.fs()
    if not fs.exists(root_path):
        raise StoreError(f"{url} does not exist; give the store root written by the ingestion")
    index = read_index(layout)
    if index.empty:
        raise StoreError(f"{url} has no committed shard; run the ingestion first")
    index = index.sort_values("shard_id")
    superseded = set(read_superseded(url, storage_options=storage_options)["chip_id"].astype(str))
    urls, ids = [str(u) for u in index["url"]], [str(s) for s in index["shard_id"]]
    with ThreadPoolExecutor(_OPEN_THREADS) as pool, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NOT_A_NODE)
        shard_groups = list(pool.map(lambda u: _groups(u, storage_options), urls))
        wanted = [(i, g) for i, gs in enumerate(shard_groups) for g in gs]
        opened = list(pool.map(lambda ig: _open_group(urls[ig[0]], ig[1], storage_options), wanted))
    parts: dict[str, list[xr.Dataset]] = {}
    for (i, group), part in zip(wanted, opened, strict=True):
        keep = [str(c) not in superseded for c in part["chip"].values]
        part = part if all(keep) else part.isel(chip=np.flatnonzero(keep))
        shard = np.full(part.sizes["chip"], ids[i], dtype=object)
        parts.setdefault(group, []).append(part.assign_coords(shard=("chip", shard)))
    tree = {f"/{group}": _concat(group_parts, group) for group, group_parts in sorted(parts.items())}
    root = xr.Dataset(attrs={"store": url, "shards": len(urls), "superseded_chips_dropped": len(superseded)})
    return xr.DataTree.from_dict({"/": root, **tree})


def _groups(url: str, storage_options: Mapping[str, Any] | None) -> list[str]:
    """The groups of one shard (modalities and `chips`)."""
    import zarr

    from pipeline.store.shard_reader import zarr_store

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NOT_A_NODE)
        root = zarr.open_group(zarr_store(url, storage_options), mode="r", zarr_format=3)
        return sorted(name for name, _ in root.groups())


def chip_dataset(store: xr.DataTree | xr.Dataset, chip_id: str, modality: str | None = None) -> xr.Dataset:
    """One chip of one modality with real dates as `time` and its own grid mapping (rioxarray-ready).

    Args:
        store: `open_store`'s tree (then `modality` is required) or one modality group as a Dataset.
        chip_id: The chip.
        modality: The modality group (e.g. `s2`).

    Raises:
        StoreError: Unknown modality or chip.
    """
    if isinstance(store, xr.DataTree):
        groups = [k for k in store.children if k != "chips"]
        if modality not in groups:
            raise StoreError(f"modality {modality!r} is not in the store; it has {groups}")
        store = store[modality].to_dataset()
    chips = [str(c) for c in store["chip"].values]
    if chip_id not in chips:
        raise StoreError(f"chip {chip_id!r} is not in the store ({len(chips)} chips, e.g. {chips[:3]})")
    one = store.isel(chip=chips.index(chip_id))
    real = np.flatnonzero(one["date_mask"].values)
    one = one.isel(time=real)
    x, y = np.asarray(one["x"].values), np.asarray(one["y"].values)
    ref = xr.Variable((), 0, attrs=dict(store["spatial_ref"].attrs) | {"GeoTransform": geotransform(x, y)})
    coords = {"time": ("time", np.asarray(one["dates"].values).astype("datetime64[ns]")), "band": one["band"].values,
              "y": ("y", y, dict(store["y"].attrs)), "x": ("x", x, dict(store["x"].attrs)), "spatial_ref": ref}
    variables = {}
    for name in ("data", "valid", "doy", "item_ids"):
        var = one[name].variable
        attrs = dict(var.attrs) | ({"grid_mapping": "spatial_ref"} if {"y", "x"} <= set(var.dims) else {})
        variables[name] = xr.Variable(var.dims, var.data, attrs)
    return xr.Dataset(variables, coords=coords, attrs={"chip": chip_id, **dict(store.attrs)})
