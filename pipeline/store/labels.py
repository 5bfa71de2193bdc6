"""Chip labels in the store: a `labels` group inside each shard, keyed by chip id, and its reader.

Written by the ingestion when its config names a label collection (`pipeline.ingest.labels`); the group is part
of the shard's files before its commit marker, so a shard has its labels exactly when it exists. Layout
(`xarray.open_zarr(shard_url, group="labels", zarr_format=3, consolidated=False)` opens it):

- `label` [chip, y, x] uint8: the label raster on the chip's grid (0 = no label), one zstd inner chunk per chip;
- `majority` [chip] int16: the most frequent class among the labelled pixels (0 when none; ties: smallest value);
- `fractions` [chip, class] float32: share of the labelled pixels in each class (sums to 1, or all 0);
- `coverage` [chip] float32: share of the chip's pixels that carry a label;
- `label_item` [chip] str: the label item read ("" when no label item covers the chip);
- coordinates `chip`, `class` (class values) and `class_name` [class]; group attributes `res_m`, `crs`,
  `collection`, `asset`.

`read_labels` concatenates the groups of every committed shard for the store's current chips (superseded chips
are dropped, as every loader does) into one `xarray.Dataset` over `chip`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import fsspec
import numpy as np
import xarray as xr

from pipeline.errors import StoreError
from pipeline.store.shard_reader import read_arrays
from pipeline.store.shard_writer import ShardArray, ShardContent, encode_shard
from pipeline.store.shards import StoreLayout, read_index
from pipeline.store.superseded import read_superseded

__all__ = ["GROUP", "label_files", "read_labels", "summarise"]

GROUP = "labels"
_NAN = {"_FillValue": "AAAAAAAA+H8="}  # xarray's `_FillValue` attribute for NaN, as the shard writer sets it
_ARRAYS = ("chip", "label", "majority", "fractions", "coverage", "label_item", "class", "class_name")


def summarise(raster: np.ndarray, classes: Sequence[int]) -> tuple[int, np.ndarray, float]:
    """Majority class, class fractions (over labelled pixels) and coverage (labelled share) of one label raster."""
    labelled = raster[raster != 0]
    counts = np.array([np.count_nonzero(labelled == c) for c in classes], dtype=np.float64)
    if not labelled.size:
        return 0, np.zeros(len(classes), np.float32), 0.0
    majority = int(classes[int(np.argmax(counts))])
    return majority, (counts / labelled.size).astype(np.float32), float(labelled.size / raster.size)


def label_files(chip_ids: Sequence[str], rasters: Sequence[np.ndarray], items: Sequence[str],
                classes: Mapping[int, str], *, attrs: Mapping[str, Any], level: int = 3) -> dict[str, bytes]:  # fmt: skip
    """The files of a shard's `labels` group (relative name -> bytes), to be written with the shard.

    Args:
        chip_ids: The shard's chip ids, in its row order.
        rasters: One [H, W] label raster per chip (0 = no label; all chips of a shard share H, W).
        items: The label item of each chip ("" for none).
        classes: Class value -> name (the label item's classes).
        attrs: Group attributes (`res_m`, `crs`, `collection`, `asset`).

    Raises:
        StoreError: Lengths differ, rasters differ in shape, or a raster holds a value that is not a class.
    """
    if not (len(chip_ids) == len(rasters) == len(items)) or not chip_ids:
        raise StoreError(f"labels need one raster and item per chip, got {len(chip_ids)}, {len(rasters)}, {len(items)}")
    shapes = {r.shape for r in rasters}
    if len(shapes) != 1:
        raise StoreError(f"label rasters of one shard differ in shape: {sorted(shapes)}")
    values = sorted(classes)
    label = np.stack([np.asarray(r, dtype=np.uint8) for r in rasters])
    unknown = sorted(set(np.unique(label).tolist()) - set(values) - {0})
    if unknown:
        bad = next(c for c, r in zip(chip_ids, rasters, strict=True) if set(np.unique(r).tolist()) & set(unknown))
        raise StoreError(f"chip {bad}: label values {unknown} are not among the classes {values}")
    summaries = [summarise(r, values) for r in label]
    arrays = {
        "label": ShardArray(label, ("chip", "y", "x"), True),
        "majority": ShardArray(np.array([s[0] for s in summaries], np.int16), ("chip",)),
        "fractions": ShardArray(np.stack([s[1] for s in summaries]), ("chip", "class"), attrs=_NAN),
        "coverage": ShardArray(np.array([s[2] for s in summaries], np.float32), ("chip",), attrs=_NAN),
        "label_item": ShardArray(np.array(list(items), dtype=object), ("chip",)),
        "chip": ShardArray(np.array(list(chip_ids), dtype=object), ("chip",)),
        "class": ShardArray(np.array(values, np.int16), ("class",)),
        "class_name": ShardArray(np.array([classes[v] for v in values], dtype=object), ("class",)),
    }
    content = ShardContent({GROUP: dict(attrs)}, {f"{GROUP}/{k}": v for k, v in arrays.items()}, ())
    return encode_shard(content, level)


def read_labels(url: str, *, storage_options: Mapping[str, Any] | None = None) -> xr.Dataset:
    """The labels of every current chip of a store, as one Dataset over `chip` (see the module docstring).

    Raises:
        StoreError: The store has no committed shard, a shard has no `labels` group (ingested without labels),
            or shards disagree on the classes.
    """
    index = read_index(StoreLayout(url, storage_options=dict(storage_options or {})))
    if index.empty:
        raise StoreError(f"{url} has no committed shard; run jobs/ingest.py first")
    superseded = set(read_superseded(url, storage_options=storage_options)["chip_id"].astype(str))
    parts, classes, attrs = [], None, {}
    for shard_url in sorted(str(u) for u in index["url"]):
        try:
            arrays = read_arrays(shard_url, [f"{GROUP}/{a}" for a in _ARRAYS], storage_options=storage_options)
        except StoreError as err:
            raise StoreError(f"{url} has no labels in shard {shard_url}; ingest it with a `labels` section in the "
                             "config (see configs/ingest-landcover.yaml)") from err  # fmt: skip
        a = {k.split("/", 1)[1]: v for k, v in arrays.items()}
        these = (tuple(int(v) for v in a["class"]), tuple(str(n) for n in a["class_name"]))
        if classes is not None and these != classes:
            raise StoreError(f"shard {shard_url} has label classes {these}, other shards {classes}")
        classes = these
        if not attrs:
            fs, root = fsspec.core.url_to_fs(shard_url, **dict(storage_options or {}))
            attrs = json.loads(fs.cat_file(f"{root.rstrip('/')}/{GROUP}/zarr.json"))["attributes"]
        keep = np.array([str(c) not in superseded for c in a["chip"]], dtype=bool)
        parts.append(xr.Dataset(
            {"label": (("chip", "y", "x"), a["label"][keep]), "majority": (("chip",), a["majority"][keep]),
             "fractions": (("chip", "class"), a["fractions"][keep]), "coverage": (("chip",), a["coverage"][keep]),
             "label_item": (("chip",), a["label_item"][keep].astype(str))},
            coords={"chip": a["chip"][keep].astype(str), "class": list(these[0]),
                    "class_name": (("class",), list(these[1]))}))  # fmt: skip
    out = xr.concat(parts, dim="chip") if len(parts) > 1 else parts[0]
    out.attrs.update(attrs)
    return out
