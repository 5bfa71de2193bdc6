"""Zarr v3 shards on object storage: write, commit, index and read chip shards (their files: `shard_encode`).

A shard is one Zarr v3 store `<root>/shards/<shard_id>.zarr` holding a group per modality, each an xarray
Dataset with dims (chip, time, band, y, x): `data`, `valid`, `date_mask`, `dates`, `doy`, `item_ids`, plus a
`chips` group with each chip's EPSG code, bounds and centre. `data` and `valid` use the sharding codec (one
inner chunk = one chip with its whole time series) and zstd; the small per-chip arrays are one plain chunk each
(`pipeline.store.shard_writer`). `xarray.open_zarr(url, group="s2", zarr_format=3, consolidated=False)` opens a
modality with band names, dates and CRS attributes.

Commit protocol: a shard is written under `<root>/_tmp/`, moved (local: one rename) or copied (object stores)
to its final prefix, and only then gets its `_COMMITTED` marker; readers and the index consider committed
shards only, so a crash never exposes a partial shard and a re-run rewrites it. The shard index
(`<root>/shards.parquet`) is rebuilt from the markers, so a crash between commit and index loses nothing.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import fsspec
import pandas as pd
import xarray as xr

from pipeline.atomic import read_parquet, write_bytes, write_parquet
from pipeline.errors import StoreError
from pipeline.store.records import Chip
from pipeline.store.shard_writer import build_shard, encode_shard

__all__ = ["ShardInfo", "StoreLayout", "clean_tmp", "committed_shards", "is_committed", "manifest_versions", "open_shard",
           "read_index", "rebuild_index", "write_shard"]

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


def is_committed(layout: StoreLayout, shard_id: str) -> bool:
    """True when the shard's `_COMMITTED` marker exists."""
    fs, root = layout.fs()
    return bool(fs.exists(f"{root}/shards/{shard_id}.zarr/{MARKER}"))


def write_shard(chips: Sequence[Chip], *, layout: StoreLayout, shard_id: str,
                dataset_meta: Mapping[str, Any] | None = None,
                sidecar: Mapping[str, str] | None = None,
                extra_files: Mapping[str, bytes] | None = None) -> ShardInfo:  # fmt: skip
    """Write `chips` as one shard and commit it; a shard already committed is left as it is (idempotent).

    `sidecar` files (name → text, e.g. the shard's band statistics) are written inside the shard before its
    commit marker, so they exist exactly when the shard does. `extra_files` (relative name → bytes, e.g. the
    `labels` group of `pipeline.store.labels`) are written with the shard's own files and move with them.

    Raises:
        StoreError: Inconsistent chips, or storage failure (the shard then stays uncommitted).
    """
    if not chips:
        raise StoreError(f"shard {shard_id} has no chips")
    fs, root = layout.fs()
    final = f"{root}/shards/{shard_id}.zarr"
    if fs.exists(f"{final}/{MARKER}"):
        return _info_from_marker(fs, final, layout.shard_url(shard_id))
    content = build_shard(chips, layout.max_dates)
    tmp = f"{root}/_tmp/{shard_id}-{uuid.uuid4().hex[:8]}.zarr"
    try:
        files = encode_shard(content, layout.zstd_level)
        clash = sorted(set(files) & set(extra_files or {}))
        if clash:
            raise StoreError(f"shard {shard_id}: extra files {clash[:3]} would overwrite the shard's own files")
        files |= dict(extra_files or {})
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
                         content.content_hash(), datetime.now(timezone.utc).isoformat(timespec="seconds"))  # fmt: skip
        for name, text in (sidecar or {}).items():
            write_bytes(fs, f"{final}/{name}", text.encode())
        marker = json.dumps(asdict(info) | {"dataset": dict(dataset_meta or {})}, sort_keys=True, default=str)
        write_bytes(fs, f"{final}/{MARKER}", marker.encode())  # the commit point
    except OSError as err:
        raise StoreError(f"writing shard {shard_id} to {layout.url} failed: {err}") from err
    log.info("committed shard %s (%d chips)", shard_id, len(chips))
    return info


def clean_tmp(layout: StoreLayout) -> int:
    """Remove what crashed or killed runs left under `<root>/_tmp/` (partial shards); only the lease holder calls
    this, so no other run is writing there. Returns the number of entries removed."""
    fs, root = layout.fs()
    try:
        entries = fs.ls(f"{root}/_tmp", detail=False)
    except FileNotFoundError:
        return 0
    for entry in entries:
        fs.rm(entry, recursive=True)
    if entries:
        log.info("removed %d partial shard(s) left under %s/_tmp", len(entries), layout.url)
    return len(entries)


def _info_from_marker(fs: fsspec.AbstractFileSystem, path: str, url: str) -> ShardInfo:
    with fs.open(f"{path}/{MARKER}", "r") as f:
        raw = json.loads(f.read())
    raw.pop("dataset", None)
    raw["chip_ids"] = tuple(raw["chip_ids"])
    raw["url"] = url
    return ShardInfo(**raw)


def committed_shards(layout: StoreLayout) -> pd.DataFrame:
    """The index of the committed shards, listed from their markers (nothing written)."""
    fs, root = layout.fs()
    markers = sorted(fs.glob(f"{root}/shards/*.zarr/{MARKER}"))
    rows = []
    for marker in markers:
        shard_path = marker.rsplit("/", 1)[0]
        shard_id = shard_path.rsplit("/", 1)[-1].removesuffix(".zarr")
        rows.append(asdict(_info_from_marker(fs, shard_path, layout.shard_url(shard_id))))
    frame = pd.DataFrame(rows, columns=list(ShardInfo.__dataclass_fields__))
    frame["chip_ids"] = frame["chip_ids"].map(list)
    return frame


def rebuild_index(layout: StoreLayout) -> pd.DataFrame:
    """List committed shards from their markers and write `<root>/shards.parquet` (atomically)."""
    fs, root = layout.fs()
    frame = committed_shards(layout)
    write_parquet(fs, f"{root}/shards.parquet", frame)
    return frame


def read_index(layout: StoreLayout) -> pd.DataFrame:
    """The shard index; listed from the markers, in memory, if `shards.parquet` is missing.

    The read path never writes: training and other readers may hold read-only credentials.
    """
    fs, root = layout.fs()
    frame = read_parquet(fs, f"{root}/shards.parquet")
    return committed_shards(layout) if frame is None else frame


def open_shard(url: str, modality: str, *, storage_options: Mapping[str, Any] | None = None) -> xr.Dataset:
    """Open one modality of a committed shard with xarray (lazy)."""
    fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    if not fs.exists(f"{path}/{MARKER}"):
        raise StoreError(f"{url} is not a committed shard (no {MARKER} marker); it may be incomplete")
    return xr.open_zarr(url, group=modality, zarr_format=3, consolidated=False,
                        storage_options=dict(storage_options or {}) or None)  # fmt: skip


def manifest_versions(layout: StoreLayout) -> list[str]:
    """The manifest versions (dataset versions) the store's committed shards were written from, sorted."""
    fs, root = layout.fs()
    versions = set()
    for marker in fs.glob(f"{root}/shards/*.zarr/{MARKER}"):
        with fs.open(marker, "r") as f:
            versions.add(str(json.loads(f.read()).get("dataset", {}).get("manifest", "")))
    return sorted(v for v in versions if v)
