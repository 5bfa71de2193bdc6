"""Whole-array reads of a shard's Zarr v3 arrays for the loader: one metadata fetch and one chunk fetch per shard.

Reading a shard through `zarr.open_array(...)[...]` costs a round trip through zarr's event loop per array and one
worker-thread hop per inner chunk (one chip): on the 16-chip Sentinel-2 shards of bench/loader.py, the six arrays
the loader needs took 17 ms per shard that way and 4.4 ms here (docs/TRAINING.md, "Reading"). This module reads the same arrays
with two batched fetches per shard (every `zarr.json`, then every chunk file; concurrent on object stores through
fsspec's `cat`) and decodes the layout `pipeline.store.shards` writes -- one outer chunk per array, optionally the
`sharding_indexed` codec with its index at the end (crc32c checked), inner codecs `bytes` (little endian) or
`vlen-utf8`, then optionally `zstd` or `blosc` -- directly with numcodecs, in the calling thread (zstd releases the GIL, so
reads in a background thread overlap with the consumer's work).

Any other layout (several outer chunks, another codec, a transpose, big endian...) is read with
`zarr.open_array`, so the result is always what zarr returns, only the fast path is narrower.
"""

from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import fsspec
import google_crc32c
import numpy as np
import zarr
import zarr.storage
from numcodecs import Blosc, VLenUTF8, Zstd

from pipeline.errors import StoreError
from pipeline.store.packing import is_packed, unpack

__all__ = ["array_metadata", "read_arrays", "zarr_store"]

_EMPTY = 2**64 - 1  # offset and length of an absent inner chunk in a shard index
_ZSTD = Zstd()
_BLOSC = Blosc()  # decoding reads the codec, shuffle and type size from each blosc frame's header
_VLEN = VLenUTF8()


def zarr_store(url: str, storage_options: Mapping[str, Any] | None) -> zarr.storage.StoreLike:
    """A read-only zarr store over a local path or an fsspec URL."""
    if "://" in url and not url.startswith("file://"):
        return zarr.storage.FsspecStore.from_url(url, storage_options=dict(storage_options or {}), read_only=True)
    return zarr.storage.LocalStore(url.removeprefix("file://"), read_only=True)


def _missing(url: str, path: str) -> StoreError:
    return StoreError(f"shard {url} has no array {path!r}; the store group names are the ingestion's sensor "
                      "modalities (check DatasetSource.modalities)")  # fmt: skip


class _Plan:
    """How to decode one array from its single chunk file; `_NotFast` when the layout is not one decoded here."""

    def __init__(self, meta: Mapping[str, Any]) -> None:
        self.attrs = dict(meta.get("attributes") or {})
        self.shape = tuple(int(n) for n in meta["shape"])
        self.string = meta["data_type"] == "string"
        self.dtype = np.dtype(object) if self.string else np.dtype(str(meta["data_type"]))
        self.fill = meta.get("fill_value")
        separator = meta["chunk_key_encoding"]["configuration"].get("separator", "/")
        encoding = meta["chunk_key_encoding"]["name"]
        if not self.shape:
            raise _NotFast
        zeros = ["0"] * len(self.shape)
        self.key = ("c" + separator + separator.join(zeros)) if encoding == "default" else ".".join(zeros)
        codecs = list(meta["codecs"])
        self.inner_shape: tuple[int, ...] | None = None
        if len(codecs) == 1 and codecs[0]["name"] == "sharding_indexed":
            conf = codecs[0]["configuration"]
            index_codecs = [c["name"] for c in conf.get("index_codecs", [])]
            if conf.get("index_location", "end") != "end" or index_codecs != ["bytes", "crc32c"]:
                raise _NotFast
            if any(c.get("configuration", {}).get("endian", "little") != "little" for c in conf["index_codecs"]):
                raise _NotFast
            self.inner_shape = tuple(int(n) for n in conf["chunk_shape"])
            codecs = list(conf["codecs"])
        self.compressor = {"zstd": _ZSTD, "blosc": _BLOSC}.get(codecs[-1]["name"]) if codecs else None
        first = codecs[: len(codecs) - (self.compressor is not None)]
        if len(first) != 1:
            raise _NotFast
        name, conf = first[0]["name"], first[0].get("configuration", {})
        little = conf.get("endian", "little") == "little" or self.dtype.itemsize == 1
        if not ((name == "bytes" and not self.string and little) or (name == "vlen-utf8" and self.string)):
            raise _NotFast
        outer = tuple(int(n) for n in meta["chunk_grid"]["configuration"]["chunk_shape"])
        self.outer = outer
        if meta["chunk_grid"]["name"] != "regular" or meta.get("storage_transformers") or any(
                c < s for c, s in zip(outer, self.shape, strict=True)):  # fmt: skip
            raise _NotFast
        if self.inner_shape is not None and (
                any(o % i for o, i in zip(outer, self.inner_shape, strict=True)) or self.string):  # fmt: skip
            raise _NotFast
        self.filled((1,) * len(self.shape))  # a fill value numpy cannot take (ValueError) leaves it to zarr

    def filled(self, shape: tuple[int, ...]) -> np.ndarray:
        if self.string:
            return np.full(shape, "" if self.fill is None else str(self.fill), dtype=object)
        special = {"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}
        fill = special.get(self.fill, self.fill) if isinstance(self.fill, str) else self.fill
        return np.full(shape, 0 if fill is None else fill, dtype=self.dtype)

    def _decode_one(self, raw: bytes | memoryview, shape: tuple[int, ...], *, url: str = "", path: str = ""
                    ) -> np.ndarray:  # fmt: skip
        data = self.compressor.decode(raw) if self.compressor is not None else raw
        if self.string:
            return np.asarray(_VLEN.decode(data), dtype=object).reshape(shape)
        if len(data) != math.prod(shape) * self.dtype.itemsize:
            raise StoreError(f"shard {url}: a chunk of {path!r} decodes to {len(data)} bytes, expected "
                             f"{math.prod(shape) * self.dtype.itemsize} for {shape} {self.dtype}; the shard is "
                             "corrupt, re-run the ingestion of this shard")  # fmt: skip
        return np.frombuffer(data, dtype=self.dtype.newbyteorder("<")).reshape(shape).astype(self.dtype, copy=False)

    def decode(self, raw: bytes | None, url: str, path: str) -> np.ndarray:
        if raw is None:  # no chunk written: all fill value
            return self.filled(self.shape)
        if self.inner_shape is None:
            outer = self._decode_one(raw, self.outer, url=url, path=path)
            return outer[tuple(slice(0, s) for s in self.shape)].copy()
        return self._decode_shard(raw, url, path)

    def _decode_shard(self, raw: bytes, url: str, path: str) -> np.ndarray:
        assert self.inner_shape is not None
        grid = tuple(o // i for o, i in zip(self.outer, self.inner_shape, strict=True))  # the shard's inner chunks
        n = math.prod(grid)
        index_bytes = memoryview(raw)[len(raw) - (16 * n + 4) :]
        if len(raw) < 16 * n + 4 or google_crc32c.value(bytes(index_bytes[:-4])) != int.from_bytes(
                index_bytes[-4:], "little"):  # fmt: skip
            raise StoreError(f"shard {url}: the chunk index of {path!r} is corrupt (checksum mismatch); re-run the "
                             "ingestion of this shard")  # fmt: skip
        index = np.frombuffer(index_bytes[:-4], dtype="<u8").reshape(n, 2).tolist()
        full = tuple(g * i for g, i in zip(grid, self.inner_shape, strict=True))
        out = np.empty(full, dtype=self.dtype)
        view = memoryview(raw)
        for flat, (offset, length) in enumerate(index):
            pos = np.unravel_index(flat, grid)
            region = tuple(slice(p * i, (p + 1) * i) for p, i in zip(pos, self.inner_shape, strict=True))
            dest = out[region]
            if offset == _EMPTY:
                dest[...] = self.filled(self.inner_shape)
            else:  # decoded then copied: a frame of the wrong size raises instead of leaving stale values
                dest[...] = self._decode_one(view[offset : offset + length], self.inner_shape, url=url, path=path)
        return out if full == self.shape else out[tuple(slice(0, s) for s in self.shape)].copy()


class _Kept:
    """A bounded, thread-safe LRU of immutable shards' metadata (bytes) and small arrays (read-only)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.bytes, self.lock = max_bytes, 0, threading.Lock()
        self.items: OrderedDict[str, Any] = OrderedDict()

    def get(self, key: str) -> Any:
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        return None

    def put(self, key: str, value: bytes | np.ndarray) -> None:
        if isinstance(value, np.ndarray):
            value = value.copy() if value.flags.writeable else value
            value.flags.writeable = False
        size = len(value) if isinstance(value, bytes) else value.nbytes
        with self.lock:
            if key in self.items:
                return
            self.items[key], self.bytes = value, self.bytes + size
            while self.bytes > self.max_bytes and self.items:
                _, old = self.items.popitem(last=False)
                self.bytes -= len(old) if isinstance(old, bytes) else old.nbytes


_SMALL = 64 * 1024  # arrays kept for later reads: per-chip ones (at most 2-D), never pixels of a shard
_KEPT = _Kept(64 * 2**20)


class _NotFast(Exception):
    """The array's layout is not one the fast path decodes; read it with zarr."""


def array_metadata(url: str, path: str, *, storage_options: Mapping[str, Any] | None = None,
                   keep: bool = False) -> dict[str, Any]:  # fmt: skip
    """An array's `zarr.json` as a dict (kept and reused for a committed shard when `keep`, as in `read_arrays`)."""
    fs, root = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    key = f"{fs.protocol}:{root.rstrip('/')}/{path}#meta"
    meta = _KEPT.get(key) if keep else None
    if meta is None:
        try:
            meta = fs.cat_file(f"{root.rstrip('/')}/{path}/zarr.json")
        except FileNotFoundError as err:
            raise _missing(url, path) from err
        if keep:
            _KEPT.put(key, meta)
    return dict(json.loads(meta))


def read_arrays(url: str, paths: Sequence[str], *, storage_options: Mapping[str, Any] | None = None,
                decode: bool = True, keep: bool = False) -> dict[str, np.ndarray]:  # fmt: skip
    """Read whole arrays of one Zarr v3 store (a shard), e.g. `["s2/data", "s2/valid"]`, as numpy arrays.

    Args:
        url: The shard's URL (local path, `file://` or an fsspec URL such as `s3://…`).
        paths: Array paths inside the store.
        storage_options: fsspec options (e.g. the S3 endpoint).
        decode: Unpack arrays stored as integers with CF `scale_factor`/`add_offset` into float32
            (`pipeline.store.packing.unpack`: bit-identical to the values before packing, NaN at the fill value).
        keep: The shard is committed, hence immutable (its id is a hash of its inputs, and a committed shard is
            never rewritten): keep its metadata and small arrays (≤ 2-D, ≤ 64 KiB: chip ids, bands, dates) in this
            process and reuse them, so that later reads of it (the next epochs) fetch only the large chunks.
            Kept arrays are read-only.

    Returns:
        Path -> the whole array (strings as an object array), equal to `zarr.open_array(...)[...]` (then unpacked).

    Raises:
        StoreError: An array is missing or its chunk index is corrupt.
    """
    fs, root = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    root = root.rstrip("/")
    where = f"{fs.protocol}:{root}"
    kept = {p: v for p in paths if keep and (v := _KEPT.get(f"{where}/{p}#array")) is not None}
    wanted = [p for p in paths if p not in kept]
    known = {p: m for p in wanted if keep and (m := _KEPT.get(f"{where}/{p}#meta")) is not None}
    missing = [f"{root}/{p}/zarr.json" for p in wanted if p not in known]
    fetched = fs.cat(missing, on_error="return") if missing else {}
    plans: dict[str, _Plan | None] = {}
    for p in wanted:
        meta = known.get(p, fetched.get(f"{root}/{p}/zarr.json"))
        if not isinstance(meta, bytes):
            raise _missing(url, p)
        if keep:
            _KEPT.put(f"{where}/{p}#meta", meta)
        try:
            plans[p] = _Plan(json.loads(meta))
        except (_NotFast, KeyError, TypeError, ValueError):
            plans[p] = None
    fast = {p: f"{root}/{p}/{plan.key}" for p, plan in plans.items() if plan is not None}
    chunks = fs.cat(list(fast.values()), on_error="return") if fast else {}
    out: dict[str, np.ndarray] = {}
    store = None
    for p, plan in plans.items():
        if plan is not None:
            raw = chunks.get(fast[p])
            if isinstance(raw, FileNotFoundError) or raw is None:
                raw = None
            elif not isinstance(raw, bytes):
                raise StoreError(f"reading {fast[p]} failed: {raw}") from raw
            try:
                values = plan.decode(raw, url, p)
            except (RuntimeError, ValueError) as err:  # zstd or a size mismatch: a damaged chunk
                raise StoreError(f"shard {url}: array {p!r} cannot be decoded ({err}); re-run the ingestion of this "
                                 "shard") from err  # fmt: skip
            out[p] = unpack(values, plan.attrs) if decode and is_packed(plan.attrs) else values
            if keep and out[p].ndim <= 2 and out[p].nbytes <= _SMALL:
                _KEPT.put(f"{where}/{p}#array", out[p])
            continue
        store = store or zarr_store(url, storage_options)
        try:
            array = zarr.open_array(store, path=p, mode="r", zarr_format=3)
            values, attrs = np.asarray(array[...]), dict(array.attrs)
        except (FileNotFoundError, KeyError, zarr.errors.NodeNotFoundError) as err:
            raise _missing(url, p) from err
        out[p] = unpack(values, attrs) if decode and is_packed(attrs) else values
    return out | kept
