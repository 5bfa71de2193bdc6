"""Per-shard raster reading: each asset opened once per shard, chip windows cut from the open datasets.

`ChipReader.read_item` gives one item's assets on a chip's grid, as `[C, H, W]`. Two paths, one result:

- **Fast path** (pure rasterio + numpy): when an asset is in the chip's CRS, north-up, its pixel size is the
  chip's resolution or an integer multiple of it (20/60 m Sentinel-2 bands on a 10 m chip), and the chip lies
  inside it, nearest resampling is an index lookup: every output pixel centre falls strictly inside one source
  pixel, so the reader reads the window once from the already open dataset and repeats rows and columns
  (`floor` of the centre's source coordinate). A centre exactly on a source pixel edge, a finer asset (a
  downsampling, where GDAL may pick overviews), another CRS or a chip reaching outside the asset fall back.
- **Fallback**: `pipeline.ingest.raster_load.load_items` (odc-stac: reprojection, other CRS, partial coverage).

Both paths give identical arrays (tested on the sample catalogs). Datasets stay open for the reader's life
(one shard), at most `max_open` at once; hrefs are signed with `sign` right before a dataset is opened, the
signed href lives only in the open dataset, never on the item. Transient failures (HTTP 5xx/429, timeouts,
dropped connections) are retried per `pipeline.ingest.retry.RetryPolicy`, reopening the dataset each time.
"""

from __future__ import annotations

import functools
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import numpy as np
import pystac

from pipeline.errors import ChipError
from pipeline.ingest.raster_checks import check_asset, check_media_type
from pipeline.ingest.raster_load import Bounds, load_items
from pipeline.ingest.retry import RetryPolicy, call_with_retries, describe_error

__all__ = ["ChipReader"]

_EDGE_TOL = 1e-6  # a centre closer than this (in source pixels) to a pixel edge is ambiguous: fall back
_POOL_MAX = 64  # local datasets kept open per process between readers (shards)
_POOL: OrderedDict[tuple[int, str], tuple[Any, int | None, tuple[int, int, int]]] = OrderedDict()


def _local_stamp(href: str) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of a local file href, or None for remote hrefs and files that cannot be stat'ed."""
    if "://" in href and not href.startswith("file://"):
        return None
    try:
        st = os.stat(href.removeprefix("file://"))
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _blocks_of(chips: Sequence[Bounds]) -> list[list[Bounds]]:
    """Group neighbouring chips into rectangles to read as blocks: all at once, per column or per row.

    The grouping with the smallest total bounding area wins (ties: fewer blocks), so a shard whose chips wrap
    from one grid column into the next reads two column blocks instead of a two-column-wide rectangle.
    """
    def area(group: Sequence[Bounds]) -> float:
        width = max(b[2] for b in group) - min(b[0] for b in group)
        return width * (max(b[3] for b in group) - min(b[1] for b in group))

    options = [[list(chips)]]
    for axis in (0, 1):  # per column (same minx), per row (same miny)
        by: dict[float, list[Bounds]] = {}
        for b in chips:
            by.setdefault(b[axis], []).append(b)
        options.append(list(by.values()))
    return min(options, key=lambda groups: (sum(area(g) for g in groups), len(groups)))


def _split(asset: str) -> tuple[str, int]:
    """`image.2` → (`image`, 2); `B04` → (`B04`, 1)."""
    key, _, band = asset.partition(".")
    return key, int(band) if band else 1


@functools.lru_cache(maxsize=4096)
def _index(start: float, step: float, n: int, origin: float, src_step: float) -> np.ndarray | None:
    """Source pixel index of each of `n` output pixel centres along one axis, or None when one sits on an edge.

    Cached: the bands of one resolution share their grids, and the result is never modified (read-only).
    """
    pos = (start + step * (np.arange(n) + 0.5) - origin) / src_step
    frac = pos - np.floor(pos)
    if np.any(np.minimum(frac, 1 - frac) < _EDGE_TOL):
        return None
    out = np.floor(pos).astype(np.int64)
    out.flags.writeable = False
    return out


class ChipReader:
    """Reads items onto chip grids for one shard, keeping datasets open between chips.

    Args:
        sign: Called on an href right before its dataset is opened (e.g. Planetary Computer); None = as is.
        retry: Retries of transient failures.
        fast_path: False forces the odc-stac path everywhere (for comparisons).
        max_open: Datasets kept open at once (least recently used closed first).
        chips: Bounds of the chips this reader will read (the shard's). When given, the fast path reads each
            asset once over the chips it covers (if they are dense enough) and cuts every chip from that block.
        max_block_mb: Upper bound of the blocks kept in memory.

    Local files read without a signer are kept open per process (and thread) between readers, up to 64, and
    reopened when their inode, size or modification time changed: a worker opens each file once per run instead
    of once per shard. Remote or signed hrefs are opened once per reader (a signed href must not outlive its
    token).
    """

    def __init__(self, *, sign: Callable[[str], str] | None = None, retry: RetryPolicy | None = None,
                 fast_path: bool = True, max_open: int = 256, chips: Sequence[Bounds] = (),
                 max_block_mb: float = 256.0) -> None:  # fmt: skip
        self.sign = sign
        self.retry = retry or RetryPolicy()
        self.fast_path = fast_path
        self.max_open = max_open
        self.chips = tuple(chips)
        self.max_block_bytes = int(max_block_mb * 2**20)
        self.reads = {"fast": 0, "fallback": 0, "blocks": 0}  # reads per path (for tests and benchmarks)
        self._open: OrderedDict[str, Any] = OrderedDict()  # unsigned href -> (dataset, epsg)
        self._pooled: set[str] = set()  # hrefs of self._open that belong to the process pool
        self._blocks: dict[tuple[str, tuple[int, ...], float], list[tuple[int, int, np.ndarray]]] = {}
        self._block_bytes = 0

    def __enter__(self) -> ChipReader:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close every open dataset."""
        while self._open:
            href, entry = self._open.popitem()
            if href not in self._pooled:
                entry[0].close()
        self._pooled.clear()
        self._blocks.clear()
        self._block_bytes = 0

    def read_item(self, item: pystac.Item, assets: Sequence[str], *, epsg: int, bounds: Bounds,
                  resolution: float) -> np.ndarray:  # fmt: skip
        """One item's `assets` on the grid (`epsg`, `bounds`, `resolution`), as `[C, H, W]` in `assets` order.

        Raises:
            ChipError: A missing asset, a read failure (message naming the item), or
                `pipeline.ingest.retry.TransientReadError` when transient failures outlasted the retries.
        """
        missing = [a for a in assets if _split(a)[0] not in item.assets]
        if missing:
            raise ChipError(f"item {item.id} has no asset {missing}; it has {sorted(item.assets)}")
        minx, miny, maxx, maxy = bounds
        shape = (round((maxy - miny) / resolution), round((maxx - minx) / resolution))
        groups: dict[str, list[tuple[int, int]]] = {}  # asset key -> [(output channel, band index)]
        for c, asset in enumerate(assets):
            key, band = _split(asset)
            groups.setdefault(key, []).append((c, band))
        parts: dict[int, np.ndarray] = {}
        slow: list[int] = []
        for key, members in groups.items():
            href = item.assets[key].href
            self.verify(item, key, [b for _, b in members])
            got = None
            if self.fast_path:
                bands = [b for _, b in members]
                read = functools.partial(self._read_fast, item, key, bands, epsg, bounds, resolution, shape)
                got = self._guarded(read, item, [assets[c] for c, _ in members], [href])
            if got is None:
                slow += [c for c, _ in members]
                continue
            self.reads["fast"] += 1
            for j, (c, _) in enumerate(members):
                parts[c] = got[j]
        if slow:
            names = [assets[c] for c in slow]
            arr = self._guarded(lambda: load_items([item], assets=names, crs=epsg, bounds=bounds,
                                                   resolution=resolution, sign=self.sign).values[0], item, names,
                                [item.assets[_split(a)[0]].href for a in names])  # fmt: skip
            self.reads["fallback"] += len({_split(a)[0] for a in names})
            for j, c in enumerate(slow):
                parts[c] = arr[j]
        dtype = np.result_type(*(p.dtype for p in parts.values()))
        out = np.empty((len(assets), *shape), dtype=dtype)  # [C, H, W]
        for c, part in parts.items():
            out[c] = part
        return out

    def verify(self, item: pystac.Item, key: str, bands: Sequence[int]) -> None:
        """Check the asset's declared media type, CRS, shape, transform, bands and data types against its file.

        Raises:
            MetadataMismatch: They disagree (`pipeline.ingest.raster_checks`); ChipError: the file cannot be opened.
        """
        check_media_type(item, key)
        ds, ds_epsg = self._guarded(lambda: self._dataset(item.assets[key].href), item, [key], [item.assets[key].href])
        check_asset(item, key, bands, ds, ds_epsg)

    def pixel_origin(self, item: pystac.Item, key: str, epsg: int) -> tuple[float, float] | None:
        """A corner of the asset's pixel grid when the asset is north-up in `epsg`, else None (or unreadable)."""
        try:
            ds, ds_epsg = self._dataset(item.assets[key].href)
        except Exception:  # noqa: BLE001 - the read itself retries and reports why
            return None
        t = ds.transform
        if ds_epsg != epsg or t.b != 0 or t.d != 0:
            return None
        return (float(t.c), float(t.f))

    def _guarded(self, fn: Callable[[], Any], item: pystac.Item, names: Sequence[str], hrefs: Sequence[str]) -> Any:
        """Run a read with retries; name the item in non-transient failures as `load_items` does."""
        try:
            return call_with_retries(fn, policy=self.retry, hrefs=hrefs, what=f"reading {list(names)} of {item.id}")
        except ChipError:
            raise
        except Exception as err:  # rasterio/GDAL raise many types; keep the cause, name the item
            raise ChipError(f"reading {list(names)} of {[item.id]} failed: {describe_error(err)}") from err

    def _dataset(self, href: str) -> tuple[Any, int | None]:
        import rasterio

        if href in self._open:
            self._open.move_to_end(href)
            return self._open[href]  # type: ignore[no-any-return]
        stamp = None if self.sign else _local_stamp(href)
        key = (threading.get_ident(), href)
        pooled = _POOL.get(key) if stamp is not None else None
        if pooled is not None and pooled[2] == stamp:
            _POOL.move_to_end(key)
            entry = pooled[:2]
        else:
            if pooled is not None:  # the file changed since it was opened
                _POOL.pop(key)[0].close()
            target = self.sign(href) if self.sign else href
            with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
                ds = rasterio.open(target)
            entry = (ds, ds.crs.to_epsg() if ds.crs else None)
            if stamp is not None:
                _POOL[key] = (*entry, stamp)
                if len(_POOL) > _POOL_MAX:
                    old_key, old = _POOL.popitem(last=False)
                    if old_key[1] not in self._open:
                        old[0].close()
        if stamp is not None:
            self._pooled.add(href)
        self._open[href] = entry
        if len(self._open) > self.max_open:
            old_href, old_entry = self._open.popitem(last=False)
            if old_href not in self._pooled:
                old_entry[0].close()
            self._pooled.discard(old_href)
        return entry

    def _drop(self, href: str) -> None:
        entry = self._open.pop(href, None)
        pooled = _POOL.pop((threading.get_ident(), href), None)
        self._pooled.discard(href)
        for ds in {id(e[0]): e[0] for e in (entry, pooled) if e is not None}.values():
            ds.close()

    def _read_fast(self, item: pystac.Item, key: str, bands: list[int], epsg: int, bounds: Bounds,
                   resolution: float, shape: tuple[int, int]) -> np.ndarray | None:  # fmt: skip
        """`[len(bands), H, W]` by index lookup, or None when the asset is not aligned with the grid."""
        from rasterio.windows import Window

        href = item.assets[key].href
        try:
            ds, ds_epsg = self._dataset(href)
            t = ds.transform
            if ds_epsg != epsg or t.b != 0 or t.d != 0 or t.a <= 0 or t.e >= 0 or max(bands) > ds.count:
                return None
            ratio = t.a / resolution
            if ratio < 1 - 1e-9 or abs(ratio - round(ratio)) > 1e-9 or abs(t.a + t.e) > 1e-9 * t.a:
                return None  # only the same or an integer-multiple pixel size (no downsampling), square pixels
            minx, _, _, maxy = bounds
            cols = _index(minx, resolution, shape[1], t.c, t.a)
            rows = _index(-maxy, resolution, shape[0], -t.f, -t.e)
            if cols is None or rows is None or cols[0] < 0 or rows[0] < 0 or cols[-1] >= ds.width \
                    or rows[-1] >= ds.height:  # fmt: skip
                return None
            for r0, c0, block in self._block(ds, href, bands, resolution, t):
                if r0 <= rows[0] and rows[-1] < r0 + block.shape[1] \
                        and c0 <= cols[0] and cols[-1] < c0 + block.shape[2]:  # fmt: skip
                    break
            else:
                r0, c0 = int(rows[0]), int(cols[0])
                block = ds.read(bands, window=Window(c0, r0, int(cols[-1]) - c0 + 1, int(rows[-1]) - r0 + 1))
        except Exception:
            self._drop(href)  # a retry reopens it
            raise
        if block.shape[1:] != shape or r0 != rows[0] or c0 != cols[0]:
            block = block[:, (rows - r0)[:, None], (cols - c0)[None, :]]
        dtype = self._stac_dtype(item, key, bands)
        return block.astype(dtype, copy=False) if dtype is not None else block

    def _block(self, ds: Any, href: str, bands: list[int], resolution: float,
               t: Any) -> list[tuple[int, int, np.ndarray]]:  # fmt: skip
        """The source blocks covering the reader's chips inside this asset, each read once (may be none).

        The chips inside the asset are grouped into rectangles (`_blocks_of`); a rectangle is read as one block
        when it holds more than one chip, its chips fill at least a quarter of it (a shard's chips are
        neighbours on the grid) and it fits the memory bound.
        """
        key = (href, tuple(bands), resolution)
        if key in self._blocks:
            return self._blocks[key]
        from rasterio.windows import Window

        x0, y0 = t.c, t.f
        x1, y1 = x0 + t.a * ds.width, y0 + t.e * ds.height
        inside = [b for b in self.chips if b[0] >= x0 and b[2] <= x1 and b[1] >= y1 and b[3] <= y0]
        result = []
        for group in _blocks_of(inside) if inside else []:
            if len(group) < 2:
                continue
            minx, miny = min(b[0] for b in group), min(b[1] for b in group)
            maxx, maxy = max(b[2] for b in group), max(b[3] for b in group)
            c0, c1 = int(np.floor((minx - x0) / t.a)), int(np.ceil((maxx - x0) / t.a))
            r0, r1 = int(np.floor((y0 - maxy) / -t.e)), int(np.ceil((y0 - miny) / -t.e))
            c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(c1, ds.width), min(r1, ds.height)
            covered = sum((b[2] - b[0]) * (b[3] - b[1]) for b in group)
            size = (c1 - c0) * (r1 - r0) * len(bands) * np.dtype(ds.dtypes[bands[0] - 1]).itemsize
            if covered * 4 >= (maxx - minx) * (maxy - miny) and self._block_bytes + size <= self.max_block_bytes:
                result.append((r0, c0, ds.read(bands, window=Window(c0, r0, c1 - c0, r1 - r0))))
                self._block_bytes += size
                self.reads["blocks"] += 1
        self._blocks[key] = result
        return result

    @staticmethod
    def _stac_dtype(item: pystac.Item, key: str, bands: list[int]) -> np.dtype[Any] | None:
        """The dtype the STAC metadata declares for these bands (odc-stac loads into it), if it declares one."""
        meta = item.assets[key].extra_fields.get("raster:bands") or []
        types = {meta[b - 1].get("data_type") for b in bands if b - 1 < len(meta)}
        if len(types) != 1 or None in types:
            return None
        try:
            return np.dtype(str(types.pop()))
        except TypeError:
            return None
