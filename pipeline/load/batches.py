"""Samples and batches: one shard read whole into normalised per-chip samples, samples collated into a batch.

Shared by both loader paths (`pipeline.load.loader.iter_batches` in a plain process, `pipeline.load.ray_loader` in Ray
Data read tasks and train workers). A shard is read whole once per pass (`pipeline.store.shard_reader.read_arrays`:
two batched fetches for all its arrays, never chip by chip) and normalised in place in float32 with the
dataset's `stats.json` (`x = (x - mean) / std`); invalid pixel-dates, non-finite values and padded dates become
0. Samples are views into the shard's arrays; `collate` copies each once into the batch.

A sample is a flat `dict[str, np.ndarray | str]` (so Ray Data can carry it as columns): for each store group `g`
`g.data` [T, C, H, W] float32, `g.valid` [T, H, W] bool, `g.date_mask` [T] bool, `g.doy` [T] int16, plus
`chip_id`. `collate` turns samples into the contract's batch (docs/TRAINING.md, "Loader").
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import torch

from pipeline.errors import StoreError
from pipeline.store.packing import is_packed
from pipeline.store.shard_reader import array_metadata, read_arrays

__all__ = ["BandNorm", "Sample", "ShardArrays", "collate", "group_layouts", "read_norms", "read_shard_arrays", "read_shard_samples",
           "read_stats_json", "shard_extent_m"]

Sample = dict[str, Any]


@dataclass(frozen=True)
class BandNorm:
    """Per-band mean and std of one store group, in the group's band order."""

    bands: tuple[str, ...]
    mean: np.ndarray  # [C] float32
    std: np.ndarray  # [C] float32
    tile: tuple[int, int, int] = (0, 0, 0)  # dates, height, width of the stored arrays (for a shard without the group)


def read_stats_json(url: str, *, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The raw `<store>/stats.json` written by the ingestion run (see `pipeline.store.stats`)."""
    fs, root = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    path = f"{root.rstrip('/')}/stats.json"
    if not fs.exists(path):
        raise StoreError(f"{url} has no stats.json; is it a dataset written by jobs/ingest.py? Re-run the "
                         "ingestion to write it")  # fmt: skip
    with fs.open(path, "r") as f:
        return dict(json.loads(f.read()))


def _read(url: str, paths: Sequence[str], storage_options: Mapping[str, Any] | None) -> dict[str, np.ndarray]:
    """The loader reads committed shards only (from the index): metadata and small arrays are kept for reuse."""
    return read_arrays(url, paths, storage_options=storage_options, keep=True)


def read_norms(stats: Mapping[str, Any], bands: Mapping[str, Sequence[str]]) -> dict[str, BandNorm]:
    """Mean/std per band of each group from a stats.json dict; a band with no valid pixel or std 0 is an error."""
    out: dict[str, BandNorm] = {}
    for group, names in bands.items():
        if group not in stats:
            raise StoreError(f"stats.json has no statistics for group {group!r} (has {sorted(stats)})")
        mean, std = [], []
        for band in names:
            summary = stats[group].get(band, {}).get("summary")
            if summary is None or not summary.get("count"):
                raise StoreError(f"stats.json has no valid pixel statistics for {group}/{band}; cannot normalise")
            if not np.isfinite(summary["std"]) or summary["std"] <= 0:
                raise StoreError(f"{group}/{band} has std {summary['std']} in stats.json; cannot normalise by it")
            mean.append(summary["mean"])
            std.append(summary["std"])
        out[group] = BandNorm(tuple(names), np.asarray(mean, np.float32), np.asarray(std, np.float32))
    return out


def shard_extent_m(url: str | Sequence[str], groups: Sequence[str], *,
                   storage_options: Mapping[str, Any] | None = None
                   ) -> tuple[float, dict[str, tuple[str, ...]]]:  # fmt: skip
    """Tile extent in metres (width x res_m of the first group) and the band names of each group.

    `url` is one shard or several: a group absent from the first (a `required: false` sensor that no chip of
    that shard has) is looked up in the next ones.
    """
    extent, bands, _ = group_layouts([url] if isinstance(url, str) else url, groups, storage_options=storage_options)
    return extent, bands


def group_layouts(urls: Sequence[str], groups: Sequence[str], *, storage_options: Mapping[str, Any] | None = None
                  ) -> tuple[float, dict[str, tuple[str, ...]], dict[str, tuple[int, int, int]]]:  # fmt: skip
    """Tile extent in metres, band names and (dates, height, width) of each group, from the first shard having it.

    Raises:
        StoreError: A group is in none of the shards.
    """
    bands: dict[str, tuple[str, ...]] = {}
    tiles: dict[str, tuple[int, int, int]] = {}
    extents: dict[str, float] = {}
    for url in urls:
        todo = [g for g in groups if g not in bands]
        if not todo:
            break
        fs, root = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
        root = root.rstrip("/")
        metas = fs.cat([f"{root}/{g}/{n}" for g in todo for n in ("zarr.json", "data/zarr.json")], on_error="return")
        present = [g for g in todo if isinstance(metas.get(f"{root}/{g}/data/zarr.json"), bytes)
                   and isinstance(metas.get(f"{root}/{g}/zarr.json"), bytes)]  # fmt: skip
        if not present:
            continue
        arrays = _read(url, [f"{g}/band" for g in present], storage_options)
        for g in present:
            shape = json.loads(metas[f"{root}/{g}/data/zarr.json"])["shape"]
            attrs = json.loads(metas[f"{root}/{g}/zarr.json"])["attributes"]
            bands[g] = tuple(str(b) for b in arrays[f"{g}/band"])
            tiles[g] = (int(shape[1]), int(shape[-2]), int(shape[-1]))
            extents[g] = shape[-1] * float(attrs["res_m"])
    missing = [g for g in groups if g not in bands]
    if missing:
        raise StoreError(f"no shard of {urls[0].rsplit('/shards/', 1)[0]} has group(s) {missing}; the store group "
                         "names are the ingestion's sensor modalities (check DatasetSource.modalities)")  # fmt: skip
    return (extents[groups[0]] if groups else 0.0), bands, tiles


@dataclass(frozen=True)
class ShardArrays:
    """One shard read whole and normalised: chip ids, and per store group the arrays over all its chips.

    Attributes:
        chip_ids: Chip id of each row.
        groups: Group -> (`data` [N, T, C, H, W] float32 normalised, 0 where not `valid`; `valid` [N, T, H, W]
            bool, usable pixel-date; `date_mask` [N, T] bool; `doy` [N, T] int).
    """

    chip_ids: tuple[str, ...]
    groups: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]

    def samples(self, rows: Sequence[int] | None = None) -> dict[int, Sample]:
        """Per-row samples (views into the shard's arrays, no copy), keyed by row."""
        wanted = range(len(self.chip_ids)) if rows is None else rows
        out: dict[int, Sample] = {}
        for r in wanted:
            s: Sample = {"chip_id": self.chip_ids[r]}
            for group, (x, ok, date_mask, doy) in self.groups.items():
                s[f"{group}.data"], s[f"{group}.valid"] = x[r], ok[r]
                s[f"{group}.date_mask"], s[f"{group}.doy"] = date_mask[r], doy[r]
            out[r] = s
        return out


def read_shard_arrays(url: str, norms: Mapping[str, BandNorm], *,
                      storage_options: Mapping[str, Any] | None = None) -> ShardArrays:  # fmt: skip
    """Read a whole shard once (one batched fetch of its arrays) and normalise it in place, in float32.

    A group whose `data` is packed uint16 (`pipeline.store.packing`) needs no `valid` array: its pixels that
    are not valid are exactly those stored as the fill value (NaN once unpacked), so one large object per group
    is fetched instead of two.

    Raises:
        StoreError: A group or array is missing, or its bands differ from the statistics' bands.
    """
    present = list(norms)

    def packed_groups(groups: Sequence[str]) -> set[str]:
        return {g for g in groups if is_packed(array_metadata(url, f"{g}/data", storage_options=storage_options,
                                                              keep=True).get("attributes", {}))}  # fmt: skip

    try:
        packed = packed_groups(present)
    except StoreError:  # a group that no chip of this shard has (an optional sensor): read the others
        fs, root = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
        present = [g for g in norms if fs.exists(f"{root.rstrip('/')}/{g}/zarr.json")]
        packed = packed_groups(present)
    names = {g: ("band", "data", "date_mask", "doy") + (() if g in packed else ("valid",)) for g in present}
    arrays = _read(url, ["chips/chip"] + [f"{g}/{n}" for g in present for n in names[g]], storage_options)
    n_chips = len(arrays["chips/chip"])
    groups: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
    for group, norm in norms.items():
        if group not in present:  # no chip of this shard has it: padded dates only, nothing valid
            if 0 in norm.tile:
                raise StoreError(f"shard {url} has no group {group!r} and its tile size is unknown")
            t, h, w = norm.tile
            groups[group] = (np.zeros((n_chips, t, len(norm.bands), h, w), np.float32),
                             np.zeros((n_chips, t, h, w), bool), np.zeros((n_chips, t), bool),
                             np.zeros((n_chips, t), np.int16))  # fmt: skip
            continue
        bands = tuple(str(b) for b in arrays[f"{group}/band"])
        if bands != norm.bands:
            raise StoreError(f"shard {url} has {group} bands {list(bands)}, the dataset's first shard has "
                             f"{list(norm.bands)}; a dataset must have one band list per group")  # fmt: skip
        x = arrays[f"{group}/data"]  # [N, T, C, H, W]
        x = x if x.dtype == np.float32 and x.flags.writeable else x.astype(np.float32)
        date_mask = arrays[f"{group}/date_mask"].astype(bool, copy=False)  # [N, T]
        np.subtract(x, norm.mean[:, None, None], out=x)
        np.divide(x, norm.std[:, None, None], out=x)
        ok = np.isfinite(x).all(axis=2)  # [N, T, H, W]; packed data: False exactly where not valid (the fill)
        ok &= date_mask[:, :, None, None]
        if group not in packed:  # float32 data: `valid` is stored beside it
            ok &= arrays[f"{group}/valid"].astype(bool, copy=False)
        np.copyto(x, np.float32(0), where=~ok[:, :, None])
        groups[group] = (x, ok, date_mask, arrays[f"{group}/doy"])
    return ShardArrays(tuple(str(c) for c in arrays["chips/chip"]), groups)


def read_shard_samples(url: str, norms: Mapping[str, BandNorm], *, rows: Sequence[int] | None = None,
                       storage_options: Mapping[str, Any] | None = None) -> dict[int, Sample]:  # fmt: skip
    """Read a whole shard once and return normalised samples of `rows` (default: every chip), keyed by row.

    Raises:
        StoreError: A group or array is missing, or its bands differ from the statistics' bands.
    """
    return read_shard_arrays(url, norms, storage_options=storage_options).samples(rows)


def _date_choice(mask: np.ndarray, cap: int | None, rng: np.random.Generator) -> np.ndarray:
    """Indices of the real dates to keep: all, or a sorted random subset of `cap` of them."""
    real = np.flatnonzero(mask)
    if cap is not None and len(real) > cap:
        real = np.sort(rng.choice(real, size=cap, replace=False))
    return real


def collate(samples: Sequence[Sample], *, keys: Mapping[str, str], images: Sequence[str] = (),
            max_dates: Mapping[str, int] | None = None, rng: np.random.Generator | None = None,
            patch_size: int, dataset: str) -> dict[str, Any]:  # fmt: skip
    """Collate samples of one dataset into the contract's batch.

    Args:
        samples: Samples from `read_shard_samples` (or Ray rows of the same columns).
        keys: Store group -> model key.
        images: Model keys delivered as [B, C, H, W] (first real date, zeros when none).
        max_dates: Model key -> cap on T; when a sample has more real dates, a random sorted subset is kept.
        rng: Generator of the date subsets (seeded by the caller for determinism).
        patch_size: Patch size in metres for the whole batch.
        dataset: Name of the dataset the samples come from.

    Returns:
        `{key: [B, T, C, H, W] float32, key_dates: [B, T] int64, key_mask: [B, T] bool, key_valid: [B, T, H, W]
        bool, ..., patch_size, dataset, chip_id}`; T is the largest number of kept dates in the batch (>= 1).
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    caps = dict(max_dates or {})
    b = len(samples)
    batch: dict[str, Any] = {}
    for group, key in keys.items():
        data = [np.asarray(s[f"{group}.data"]) for s in samples]
        masks = [np.asarray(s[f"{group}.date_mask"], dtype=bool) for s in samples]
        _, c, h, w = data[0].shape
        if key in images:
            out = np.zeros((b, c, h, w), np.float32)
            for i, (x, m) in enumerate(zip(data, masks, strict=True)):
                real = np.flatnonzero(m)
                if len(real):
                    out[i] = x[real[0]]
            batch[key] = torch.from_numpy(out)  # [B, C, H, W]
            continue
        kept = [_date_choice(m, caps.get(key), rng) for m in masks]
        t = max(1, max(len(k) for k in kept))
        x_out = np.zeros((b, t, c, h, w), np.float32)
        valid_out = np.zeros((b, t, h, w), bool)
        mask_out = np.zeros((b, t), bool)
        doy_out = np.zeros((b, t), np.int64)
        for i, (s, k) in enumerate(zip(samples, kept, strict=True)):
            n = len(k)
            np.take(data[i], k, axis=0, out=x_out[i, :n])  # no intermediate copy
            np.take(np.asarray(s[f"{group}.valid"]), k, axis=0, out=valid_out[i, :n])
            mask_out[i, :n] = True
            doy_out[i, :n] = np.asarray(s[f"{group}.doy"])[k]
        batch[key] = torch.from_numpy(x_out)  # [B, T, C, H, W]
        batch[f"{key}_dates"] = torch.from_numpy(doy_out)  # [B, T] day of year, 0 = padding
        batch[f"{key}_mask"] = torch.from_numpy(mask_out)  # [B, T]
        batch[f"{key}_valid"] = torch.from_numpy(valid_out)  # [B, T, H, W]
    batch["patch_size"] = int(patch_size)
    batch["dataset"] = dataset
    batch["chip_id"] = [str(s["chip_id"]) for s in samples]
    return batch
