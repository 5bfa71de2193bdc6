"""The arrays of one shard, built from chips and encoded in memory as the Zarr v3 files zarr would write.

Layout (what `xarray.open_zarr(url, group=<modality>, zarr_format=3, consolidated=False)` reads, and what the
loader's direct shard reader decodes):

- `<modality>/` group with attributes `modality`, `res_m`, `crs`, `epsg`, `x_origin`, `y_origin`;
  `data` [chip, time, band, y, x] and `valid` [chip, time, y, x] with the sharding codec (one inner chunk =
  one chip with its whole time series, zstd); the small per-chip arrays `date_mask`, `dates` (int64 seconds
  since 1970-01-01, NaT as the int64 minimum, with CF `units`/`calendar` attributes), `doy`, `item_ids` and the
  coordinates `chip`, `band`, `time` as one plain chunk without compression (a few hundred bytes each: zstd and
  a shard index cost more than they save).
- georeferencing (`pipeline.store.geo`): `x` [chip, x] and `y` [chip, y] cell-centre coordinates in the shard's
  CRS, a scalar `spatial_ref` with the CF grid-mapping attributes; `data` and `valid` carry `grid_mapping` and
  `coordinates` ("dates spatial_ref"), so xarray shows `dates` (datetime64) and `spatial_ref` as coordinates.
- `data` of scaled integer sources (`ModalityArray.packing`) as uint16 with CF `scale_factor`/`add_offset`/
  `_FillValue` when that is lossless (`pipeline.store.packing`), else float32.
- `chips/` group: `epsg`, `bounds` [chip, corner], `center_lon`, `center_lat`, coordinates `chip`, `corner`,
  plain chunks as above.

Every array carries `dimension_names` (xarray's dimensions), float arrays the `_FillValue` attribute xarray
writes for NaN. `encode_shard` makes these files directly: metadata from zarr (once per array layout), chunk
bytes with zarr's own codecs; `encode_shard_zarr` writes the same content through zarr (all arrays in one
event-loop call) and is the byte-for-byte reference of the tests. Both replace `xarray.Dataset.to_zarr`, whose
per-array and per-attribute event-loop round trips cost several times the compression on small chips.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numcodecs import VLenUTF8

from pipeline.errors import StoreError
from pipeline.store.geo import axis_units, cell_centres, grid_mapping_attrs
from pipeline.store.packing import pack
from pipeline.store.records import Chip

log = logging.getLogger(__name__)
_VLEN = VLenUTF8()  # zarr's vlen-utf8 codec is numcodecs'

__all__ = ["ShardArray", "ShardContent", "build_shard", "encode_shard", "encode_shard_zarr"]

_NAN_FILL = "AAAAAAAA+H8="  # xarray's `_FillValue` attribute for NaN (base64 of a float64 NaN)
_EMPTY = 2**64 - 1  # offset and length of an absent inner chunk in a shard index
_DATE_ATTRS = {"units": "seconds since 1970-01-01", "calendar": "proleptic_gregorian"}
_DERIVED = ("x", "y", "spatial_ref")  # georeferencing derived from the chip ids' cells: not in the content hash


@dataclass(frozen=True)
class ShardArray:
    """One array of a shard.

    Attributes:
        values: The whole array (strings as an object array).
        dims: Dimension names (xarray's).
        chunked: One inner chunk per chip with the sharding codec and zstd; False = one plain chunk, no compression.
        attrs: Array attributes.
        bitshuffle: Compress the inner chunks with blosc (zstd after a bit shuffle) instead of zstd alone: packed
            uint16 DN compress to ~0.8 of their zstd size and decode faster (`docs/BENCHMARKS.md`).
    """

    values: np.ndarray
    dims: tuple[str, ...]
    chunked: bool = False
    attrs: Mapping[str, Any] = field(default_factory=dict)
    bitshuffle: bool = False


@dataclass(frozen=True)
class ShardContent:
    """Groups (path -> attributes), arrays (path -> array) and modality group names of one shard."""

    groups: Mapping[str, Mapping[str, Any]]
    arrays: Mapping[str, ShardArray]
    modalities: tuple[str, ...]

    def content_hash(self) -> str:
        """SHA-256 over the modality groups' arrays (name, dtype, shape, bytes), in sorted order.

        The chip table and the coordinates `x`, `y`, `spatial_ref` are not hashed (they are derived from the chip
        ids, which are). Same definition as before the direct writer and the coordinates, so hashes of
        float32 shards written by earlier versions still compare equal.
        """
        digest = hashlib.sha256()
        for key in sorted(self.modalities):
            prefix = f"{key}/"
            names = (p for p in self.arrays if p.startswith(prefix) and "/" not in p[len(prefix) :])
            for path in sorted(p for p in names if p[len(prefix) :] not in _DERIVED):
                arr = self.arrays[path].values
                if path.endswith("/dates"):
                    arr = arr.view("datetime64[s]")
                digest.update(f"{path}/{arr.dtype}/{arr.shape}".encode())
                digest.update(arr.astype(str).tobytes() if arr.dtype == object else np.ascontiguousarray(arr).tobytes())
        return digest.hexdigest()


def _day_of_year(dates: np.ndarray) -> np.ndarray:
    """Day of year (1-366) of datetime64 values."""
    days = dates.astype("datetime64[D]")
    return (days - days.astype("datetime64[Y]")).astype(np.int64) + 1


def _packed(chips: Sequence[Chip], key: str, data: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """`data` as uint16 with its CF attributes when every chip's values are lossless scaled integers, else float32."""
    packings = {c.modalities[key].packing for c in chips if key in c.modalities}
    if data.dtype != np.float32 or len(packings) != 1 or (packing := packings.pop()) is None:
        return data, ({"_FillValue": _NAN_FILL} if data.dtype.kind == "f" else {})
    stored = pack(data, valid, packing)
    if stored is None:
        log.warning("%s values of chips %s… are not exact scaled integers; stored as float32",
                    key, [c.chip_id for c in chips[:2]])  # fmt: skip
        return data, {"_FillValue": _NAN_FILL}
    return stored, packing.attrs()
def _origin(chip: Chip, key: str) -> tuple[float, float]:
    """West and north edges of a chip's window of one modality (snapped to the sensor's grid, or the chip's)."""
    mod = chip.modalities.get(key)
    return mod.origin if mod is not None and mod.origin is not None else (chip.bounds[0], chip.bounds[3])


def _modality(chips: Sequence[Chip], key: str, t_max: int) -> tuple[dict[str, Any], dict[str, ShardArray]]:
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
    xs, ys = np.zeros((n, w)), np.zeros((n, h))
    for i, chip in enumerate(chips):
        ox, oy = _origin(chip, key)  # the window snapped onto the sensor's own pixel grid, when it was
        xs[i], ys[i] = cell_centres((ox, oy - h * ref.res_m, ox + w * ref.res_m, oy), ref.res_m, w, h)
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
        doy[i, :t] = _day_of_year(dates[i, :t])
        item_ids[i, :t] = mod.item_ids
    data, data_attrs = _packed(chips, key, data, valid)
    geo = {"grid_mapping": "spatial_ref", "coordinates": "dates spatial_ref"}
    units = axis_units(chips[0].epsg)
    arrays = {
        "data": ShardArray(data, ("chip", "time", "band", "y", "x"), True, data_attrs | geo,
                           bitshuffle=data.dtype == np.uint16),
        "valid": ShardArray(valid, ("chip", "time", "y", "x"), True, geo),
        "date_mask": ShardArray(date_mask, ("chip", "time")),
        "dates": ShardArray(dates.view(np.int64), ("chip", "time"), attrs=_DATE_ATTRS),
        "doy": ShardArray(doy, ("chip", "time")),
        "item_ids": ShardArray(item_ids, ("chip", "time")),
        "chip": ShardArray(np.array([c.chip_id for c in chips], dtype=object), ("chip",)),
        "band": ShardArray(np.array(ref.bands, dtype=object), ("band",)),
        "time": ShardArray(np.arange(t_max), ("time",)),
        "x": ShardArray(xs, ("chip", "x"), attrs={"standard_name": "projection_x_coordinate", "units": units,
                                                   "long_name": "easting of the pixel centre"}),
        "y": ShardArray(ys, ("chip", "y"), attrs={"standard_name": "projection_y_coordinate", "units": units,
                                                   "long_name": "northing of the pixel centre"}),
        "spatial_ref": ShardArray(np.zeros((), np.int64), (), attrs=grid_mapping_attrs(chips[0].epsg)),
    }
    attrs = {"modality": key, "res_m": ref.res_m, "crs": f"EPSG:{chips[0].epsg}", "epsg": [c.epsg for c in chips],
             "x_origin": [_origin(c, key)[0] for c in chips], "y_origin": [_origin(c, key)[1] for c in chips]}  # fmt: skip
    return attrs, arrays


def build_shard(chips: Sequence[Chip], max_dates: Mapping[str, int]) -> ShardContent:
    """The groups and arrays of a shard of `chips` (each modality padded to `max_dates` or its longest series).

    Raises:
        StoreError: Chips of one modality differ in shape or bands, or have more dates than `max_dates`.
    """
    keys = sorted({k for c in chips for k in c.modalities})
    if len({c.epsg for c in chips}) > 1:
        raise StoreError(f"chips of one shard must share a CRS, got EPSG codes {sorted({c.epsg for c in chips})}; "
                         "a shard's grid mapping (spatial_ref) describes all its chips")  # fmt: skip
    if "chips" in keys:
        raise StoreError("a modality cannot be named 'chips' (the shard's chip table group)")
    groups: dict[str, Mapping[str, Any]] = {"": {}}
    arrays: dict[str, ShardArray] = {}
    for key in keys:
        t_max = max_dates.get(key, max(c.modalities[key].data.shape[0] for c in chips if key in c.modalities))
        groups[key], group_arrays = _modality(chips, key, t_max)
        arrays |= {f"{key}/{name}": arr for name, arr in group_arrays.items()}
    groups["chips"] = {}
    nan = {"_FillValue": _NAN_FILL}
    arrays |= {
        "chips/epsg": ShardArray(np.array([c.epsg for c in chips], np.int32), ("chip",)),
        "chips/bounds": ShardArray(np.array([c.bounds for c in chips], np.float64), ("chip", "corner"), attrs=nan),
        "chips/center_lon": ShardArray(np.array([c.center_lon for c in chips], np.float64), ("chip",), attrs=nan),
        "chips/center_lat": ShardArray(np.array([c.center_lat for c in chips], np.float64), ("chip",), attrs=nan),
        "chips/chip": ShardArray(np.array([c.chip_id for c in chips], dtype=object), ("chip",)),
        "chips/corner": ShardArray(np.array(["minx", "miny", "maxx", "maxy"], dtype=object), ("corner",)),
    }
    return ShardContent(groups, arrays, tuple(keys))


async def _write(store: Any, content: ShardContent, level: int) -> None:
    from zarr.api.asynchronous import group
    from zarr.codecs import BloscCodec, ZstdCodec
    from zarr.core.array import create_array

    async def one(path: str, arr: ShardArray) -> None:
        values = arr.values
        kind = values.dtype.kind
        options: dict[str, Any] = {"chunks": values.shape, "compressors": None}
        if arr.chunked:
            options = {"chunks": (1, *values.shape[1:]), "shards": values.shape,
                       "compressors": ZstdCodec(level=level)}  # fmt: skip
            if arr.bitshuffle:
                options["compressors"] = BloscCodec(cname="zstd", clevel=level, shuffle="bitshuffle",
                                                    typesize=values.dtype.itemsize)  # fmt: skip
        fill = np.nan if kind == "f" else ("" if kind == "O" else None)
        dtype = "string" if kind == "O" else values.dtype
        created = await create_array(store, name=path, shape=values.shape, dtype=dtype, fill_value=fill,
                                     attributes=dict(arr.attrs), dimension_names=arr.dims, zarr_format=3,
                                     **options)  # fmt: skip
        await created.setitem(slice(None) if values.ndim else (), values)

    groups = content.groups.items()
    await asyncio.gather(*(group(store=store, path=p, zarr_format=3, attributes=dict(a)) for p, a in groups))
    await asyncio.gather(*(one(p, a) for p, a in content.arrays.items()))


def encode_shard_zarr(content: ShardContent, level: int) -> dict[str, bytes]:
    """Every file of the shard (relative name -> bytes), written by zarr itself into an in-memory store.

    The reference that `encode_shard` reproduces byte for byte (tested); also where array metadata comes from.
    """
    from zarr.core.sync import sync
    from zarr.storage import MemoryStore

    blobs: dict[str, Any] = {}
    sync(_write(MemoryStore(blobs), content, level))
    return {name: blob.to_bytes() for name, blob in blobs.items()}


_META: dict[tuple[Any, ...], bytes] = {}  # array layout -> zarr.json bytes (the same for every full shard of a run)


def _array_meta(arr: ShardArray, level: int) -> bytes:
    """The array's `zarr.json`, made by zarr once per layout (shape, dtype, dims, attributes, codecs)."""
    key = (arr.values.shape, arr.values.dtype.str, arr.dims, json.dumps(dict(arr.attrs), sort_keys=True),
           arr.chunked, level, arr.bitshuffle)  # fmt: skip
    if key not in _META:
        kind = arr.values.dtype.kind
        blank = np.full(arr.values.shape, np.nan if kind == "f" else ("" if kind == "O" else 0), arr.values.dtype)
        files = encode_shard_zarr(ShardContent({}, {"a": ShardArray(blank, arr.dims, arr.chunked, arr.attrs,
                                                                    arr.bitshuffle)}, ()),
                                  level)  # fmt: skip (all fill value: zarr writes the metadata only)
        _META[key] = files["a/zarr.json"]
        if len(_META) > 256:
            _META.pop(next(iter(_META)))
    return _META[key]


def _all_fill(values: np.ndarray) -> bool:
    """True when every value equals the array's fill value (zarr then writes no chunk)."""
    kind = values.dtype.kind
    if kind == "f":
        return bool(np.isnan(values).all())
    if kind == "O":
        return bool((values == "").all())
    return not values.any()


def _raw(values: np.ndarray) -> bytes:
    """The chunk's bytes before compression: little-endian C order, or vlen-utf8 for strings."""
    if values.dtype.kind == "O":
        return bytes(_VLEN.encode(np.ascontiguousarray(values).reshape(-1)))
    return np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes()


def _blosc(level: int, typesize: int) -> Any:
    """numcodecs' Blosc configured as zarr's `BloscCodec(cname="zstd", shuffle="bitshuffle")` configures it."""
    from numcodecs import Blosc

    return Blosc.from_config({"cname": "zstd", "clevel": level, "shuffle": Blosc.BITSHUFFLE, "blocksize": 0,
                              "typesize": typesize})  # fmt: skip


def _sharded(values: np.ndarray, zstd: Any) -> bytes | None:
    """One shard file: an inner chunk per chip (compressed), then the index (offset, length per chip), crc32c."""
    import google_crc32c

    index = np.full((values.shape[0], 2), _EMPTY, dtype="<u8")
    parts: list[bytes] = []
    offset = 0
    for i in range(values.shape[0]):  # a one-dimensional grid of inner chunks: morton order is chip order
        if _all_fill(values[i]):
            continue
        blob = bytes(zstd.encode(_raw(values[i])))
        index[i] = (offset, len(blob))
        parts.append(blob)
        offset += len(blob)
    if not parts:
        return None
    table = index.tobytes()
    return b"".join([*parts, table, google_crc32c.value(table).to_bytes(4, "little")])


def encode_shard(content: ShardContent, level: int) -> dict[str, bytes]:
    """Every file of the shard (relative name -> bytes): the files zarr writes for it, made directly.

    Group and array metadata come from zarr (`_array_meta`, cached per layout); chunk bytes are encoded here
    with zarr's own codecs (numcodecs zstd, vlen-utf8, crc32c of the shard index), skipping chunks that are all
    fill value as zarr does. Byte-identical to `encode_shard_zarr` (tested), without zarr's per-array event-loop
    round trips and per-chunk task overhead, which cost more than the compression on small chips.
    """
    from numcodecs import Zstd

    zstd = Zstd(level=level)
    files: dict[str, bytes] = {}
    for path, attrs in content.groups.items():
        meta = {"attributes": dict(attrs), "zarr_format": 3, "node_type": "group"}
        files[f"{path}/zarr.json" if path else "zarr.json"] = json.dumps(meta, indent=2).encode()
    for path, arr in content.arrays.items():
        files[f"{path}/zarr.json"] = _array_meta(arr, level)
        chunk = f"{path}/c/" + "/".join("0" * arr.values.ndim) if arr.values.ndim else f"{path}/c"
        codec = _blosc(level, arr.values.dtype.itemsize) if arr.bitshuffle else zstd
        blob = _sharded(arr.values, codec) if arr.chunked else (None if _all_fill(arr.values) else _raw(arr.values))
        if blob is not None:
            files[chunk] = blob
    return files
