"""The only module that knows Zarr v3, shards and object storage: write, commit, index and read chip shards.

A shard is one Zarr v3 store `<root>/shards/<shard_id>.zarr` holding a group per modality, each an xarray
Dataset with dims (chip, time, band, y, x): `data`, `valid`, `date_mask`, `dates`, `doy`, `item_ids`, plus a
`chips` group with each chip's EPSG code, bounds and centre. Arrays use the sharding codec (one inner chunk =
one chip with its whole time series) and zstd, so `xarray.open_zarr(url, group="s2", zarr_format=3,
consolidated=False)` opens a modality with band names, dates and CRS attributes.

Commit protocol: a shard is written under `<root>/_tmp/`, moved (local: one rename) or copied (object stores)
to its final prefix, and only then gets its `_COMMITTED` marker; readers and the index consider committed
shards only, so a crash never exposes a partial shard and a re-run rewrites it. The shard index
(`<root>/shards.parquet`) is rebuilt from the markers, so a crash between commit and index loses nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import xarray as xr

from pipeline.errors import StoreError
from pipeline.records import Chip

__all__ = ["ShardInfo", "StoreLayout", "is_committed", "open_shard", "read_index", "rebuild_index", "write_shard"]

log = logging.getLogger(__name__)
MARKER = "_COMMITTED"


@dataclass(frozen=True)
class StoreLayout:
    """Where and how shards are written.

    Attributes:
        url: Dataset root, a local path or `s3://bucket/prefix`.
        max_dates: Time axis length per modality (series are padded to it; `date_mask` marks real dates).
        zstd_level: zstd compression level.
        storage_options: fsspec options (endpoint, credentials); used for I/O only, never written.
    """

    url: str
    max_dates: Mapping[str, int] = field(default_factory=dict)
    zstd_level: int = 3
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    def fs(self) -> tuple[fsspec.AbstractFileSystem, str]:
        fs, path = fsspec.core.url_to_fs(self.url, **dict(self.storage_options))
        return fs, path.rstrip("/")

    def shard_url(self, shard_id: str) -> str:
        return f"{self.url.rstrip('/')}/shards/{shard_id}.zarr"


@dataclass(frozen=True)
class ShardInfo:
    """A committed shard: id, URL, chip ids, bytes on storage and a content hash of its arrays."""

    shard_id: str
    url: str
    chip_ids: tuple[str, ...]
    n_chips: int
    bytes: int
    content_hash: str
    created_at: str


def _modality_dataset(chips: Sequence[Chip], key: str, t_max: int) -> xr.Dataset:
    present = [c.modalities[key] for c in chips if key in c.modalities]
    ref = present[0]
    _, n_bands, h, w = ref.data.shape
    n = len(chips)
    data = np.zeros((n, t_max, n_bands, h, w), dtype=ref.data.dtype)
    valid = np.zeros((n, t_max, h, w), dtype=bool)
    date_mask = np.zeros((n, t_max), dtype=bool)
    dates = np.full((n, t_max), np.datetime64("NaT"), dtype="datetime64[s]")
    doy = np.zeros((n, t_max), dtype=np.int16)
    item_ids = np.full((n, t_max), "", dtype=object)
    for i, chip in enumerate(chips):
        mod = chip.modalities.get(key)
        if mod is None:
            continue
        t = mod.data.shape[0]
        if t > t_max:
            raise StoreError(f"chip {chip.chip_id} has {t} {key} dates, more than max_dates={t_max}; "
                             "raise StoreLayout.max_dates or cap the plan")  # fmt: skip
        if mod.data.shape[1:] != (n_bands, h, w) or mod.bands != ref.bands:
            raise StoreError(f"chip {chip.chip_id}: {key} is {mod.data.shape[1:]} {mod.bands}, the shard's "
                             f"other chips are {(n_bands, h, w)} {ref.bands}")  # fmt: skip
        data[i, :t], valid[i, :t], date_mask[i, :t] = mod.data, mod.valid, True
        dates[i, :t] = mod.dates.astype("datetime64[s]")
        doy[i, :t] = [int(d.astype(datetime).timetuple().tm_yday) for d in mod.dates.astype("datetime64[s]")]
        item_ids[i, :t] = mod.item_ids
    chip_ids = [c.chip_id for c in chips]
    return xr.Dataset(
        {
            "data": (("chip", "time", "band", "y", "x"), data),
            "valid": (("chip", "time", "y", "x"), valid),
            "date_mask": (("chip", "time"), date_mask),
            "dates": (("chip", "time"), dates),
            "doy": (("chip", "time"), doy),
            "item_ids": (("chip", "time"), item_ids),
        },
        coords={"chip": np.array(chip_ids, dtype=object), "band": np.array(ref.bands, dtype=object),
                "time": np.arange(t_max)},
        attrs={"modality": key, "res_m": ref.res_m, "crs": f"EPSG:{chips[0].epsg}",
               "epsg": [c.epsg for c in chips], "x_origin": [c.bounds[0] for c in chips],
               "y_origin": [c.bounds[3] for c in chips]},  # fmt: skip
    )


def _encoding(ds: xr.Dataset, level: int) -> dict[str, dict[str, Any]]:
    from zarr.codecs import ZstdCodec

    enc: dict[str, dict[str, Any]] = {}
    for name, var in ds.data_vars.items():
        shape = var.shape
        enc[name] = {"chunks": (1, *shape[1:]), "shards": shape, "compressors": (ZstdCodec(level=level),)}
        if name == "dates":
            enc[name] |= {"units": "seconds since 1970-01-01", "dtype": "int64"}
    return enc


def _encode(datasets: Mapping[str, xr.Dataset], chip_table: xr.Dataset, level: int) -> dict[str, bytes]:
    """Every file of a shard (relative name → bytes), encoded in memory.

    Zarr's per-array overhead against a filesystem or object store (a few small writes and syncs per array)
    cost more than the pixels themselves; encoding into an in-memory store and writing the files in one batch
    gives the same files.
    """
    from zarr.storage import MemoryStore

    blobs: dict[str, Any] = {}
    store = MemoryStore(blobs)
    for key, ds in datasets.items():
        ds.to_zarr(store, group=key, mode="a", zarr_format=3, consolidated=False, encoding=_encoding(ds, level))
    chip_table.to_zarr(store, group="chips", mode="a", zarr_format=3, consolidated=False)
    return {name: blob.to_bytes() for name, blob in blobs.items()}


def _content_hash(datasets: Mapping[str, xr.Dataset]) -> str:
    digest = hashlib.sha256()
    for key in sorted(datasets):
        ds = datasets[key]
        for name in sorted(ds.variables):
            arr = np.asarray(ds[name].values)
            digest.update(f"{key}/{name}/{arr.dtype}/{arr.shape}".encode())
            digest.update(arr.astype(str).tobytes() if arr.dtype == object else np.ascontiguousarray(arr).tobytes())
    return digest.hexdigest()


def is_committed(layout: StoreLayout, shard_id: str) -> bool:
    """True when the shard's `_COMMITTED` marker exists."""
    fs, root = layout.fs()
    return bool(fs.exists(f"{root}/shards/{shard_id}.zarr/{MARKER}"))


def write_shard(chips: Sequence[Chip], *, layout: StoreLayout, shard_id: str,
                dataset_meta: Mapping[str, Any] | None = None,
                sidecar: Mapping[str, str] | None = None) -> ShardInfo:  # fmt: skip
    """Write `chips` as one shard and commit it; a shard already committed is left as it is (idempotent).

    `sidecar` files (name → text, e.g. the shard's band statistics) are written inside the shard before its
    commit marker, so they exist exactly when the shard does.

    Raises:
        StoreError: Inconsistent chips, or storage failure (the shard then stays uncommitted).
    """
    if not chips:
        raise StoreError(f"shard {shard_id} has no chips")
    fs, root = layout.fs()
    final = f"{root}/shards/{shard_id}.zarr"
    if fs.exists(f"{final}/{MARKER}"):
        return _info_from_marker(fs, final, layout.shard_url(shard_id))
    keys = sorted({k for c in chips for k in c.modalities})
    datasets = {k: _modality_dataset(chips, k, layout.max_dates.get(k, max(
        c.modalities[k].data.shape[0] for c in chips if k in c.modalities))) for k in keys}  # fmt: skip
    chip_table = xr.Dataset(
        {"epsg": ("chip", np.array([c.epsg for c in chips], np.int32)),
         "bounds": (("chip", "corner"), np.array([c.bounds for c in chips], np.float64)),
         "center_lon": ("chip", np.array([c.center_lon for c in chips])),
         "center_lat": ("chip", np.array([c.center_lat for c in chips]))},
        coords={"chip": np.array([c.chip_id for c in chips], dtype=object),
                "corner": np.array(["minx", "miny", "maxx", "maxy"], dtype=object)},
    )  # fmt: skip
    tmp = f"{root}/_tmp/{shard_id}-{uuid.uuid4().hex[:8]}.zarr"
    try:
        files = _encode(datasets, chip_table, layout.zstd_level)
        folders = sorted({f"{tmp}/{name}".rsplit("/", 1)[0] for name in files})
        for folder in [f for i, f in enumerate(folders) if not any(g.startswith(f + "/") for g in folders[i + 1 :])]:
            fs.makedirs(folder, exist_ok=True)  # leaf folders only (their parents come with them)
        fs.pipe({f"{tmp}/{name}": blob for name, blob in files.items()})  # one batched call (concurrent on S3)
        if fs.exists(final):  # an earlier uncommitted attempt
            fs.rm(final, recursive=True)
        protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
        if "file" in protocols:  # one rename on a local filesystem
            fs.mv(tmp, final, recursive=True)
        else:
            fs.copy(tmp, final, recursive=True)
            fs.rm(tmp, recursive=True)
        info = ShardInfo(shard_id, layout.shard_url(shard_id), tuple(c.chip_id for c in chips), len(chips),
                         sum(len(blob) for blob in files.values()),
                         _content_hash(datasets), datetime.now(timezone.utc).isoformat(timespec="seconds"))  # fmt: skip
        for name, text in (sidecar or {}).items():
            with fs.open(f"{final}/{name}", "w") as f:
                f.write(text)
        with fs.open(f"{final}/{MARKER}", "w") as f:  # the commit point
            f.write(json.dumps(asdict(info) | {"dataset": dict(dataset_meta or {})}, sort_keys=True, default=str))
    except OSError as err:
        raise StoreError(f"writing shard {shard_id} to {layout.url} failed: {err}") from err
    log.info("committed shard %s (%d chips)", shard_id, len(chips))
    return info


def _info_from_marker(fs: fsspec.AbstractFileSystem, path: str, url: str) -> ShardInfo:
    with fs.open(f"{path}/{MARKER}", "r") as f:
        raw = json.loads(f.read())
    raw.pop("dataset", None)
    raw["chip_ids"] = tuple(raw["chip_ids"])
    raw["url"] = url
    return ShardInfo(**raw)


def rebuild_index(layout: StoreLayout) -> pd.DataFrame:
    """List committed shards from their markers and write `<root>/shards.parquet`."""
    fs, root = layout.fs()
    markers = sorted(fs.glob(f"{root}/shards/*.zarr/{MARKER}"))
    rows = []
    for marker in markers:
        shard_path = marker.rsplit("/", 1)[0]
        shard_id = shard_path.rsplit("/", 1)[-1].removesuffix(".zarr")
        rows.append(asdict(_info_from_marker(fs, shard_path, layout.shard_url(shard_id))))
    frame = pd.DataFrame(rows, columns=list(ShardInfo.__dataclass_fields__))
    frame["chip_ids"] = frame["chip_ids"].map(list)
    with fs.open(f"{root}/shards.parquet", "wb") as f:
        frame.to_parquet(f, index=False)
    return frame


def read_index(layout: StoreLayout) -> pd.DataFrame:
    """The shard index (rebuilt from the markers if missing)."""
    fs, root = layout.fs()
    if not fs.exists(f"{root}/shards.parquet"):
        return rebuild_index(layout)
    with fs.open(f"{root}/shards.parquet", "rb") as f:
        return pd.read_parquet(f)


def open_shard(url: str, modality: str, *, storage_options: Mapping[str, Any] | None = None) -> xr.Dataset:
    """Open one modality of a committed shard with xarray (lazy)."""
    fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    if not fs.exists(f"{path}/{MARKER}"):
        raise StoreError(f"{url} is not a committed shard (no {MARKER} marker); it may be incomplete")
    return xr.open_zarr(url, group=modality, zarr_format=3, consolidated=False,
                        storage_options=dict(storage_options or {}) or None)  # fmt: skip
