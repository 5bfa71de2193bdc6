"""Load and prepare one planned chip: every sensor read onto the chip grid and turned into model-ready values.

Per sensor (`SensorSpec`): assets read at the sensor's resolution on the chip's UTM grid through a
`pipeline.ingest.raster_reader.ChipReader` (one per shard, so each asset is opened once per shard; 20/60 m Sentinel-2 bands
resampled to 10 m, nearest; odc-stac for grids that need reprojection); Sentinel-2 DN harmonised
across processing baselines (from 04.00 on, DN carries a +1000 offset) and scaled to reflectance; Landsat
Collection 2 DN scaled to reflectance; Sentinel-1 linear gamma0 converted to dB; nodata and per-pixel cloud
masks (Sentinel-2 SCL classes, Landsat `qa_pixel` bits) kept as a `valid` array; dates kept in full (the store
derives day of year). A chip that cannot be used comes back as a `Reject` with its reason. No writes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pystac

from pipeline.times import try_instant
from pipeline.errors import ChipError
from pipeline.ingest.grid import ChipPlan, Reject
from pipeline.ingest.raster_checks import MetadataMismatch, snap_bounds
from pipeline.ingest.raster_reader import ChipReader
from pipeline.store.packing import Packing
from pipeline.store.records import Chip, ModalityArray
from pipeline.ingest.retry import TransientReadError
from pipeline.catalog.signing import redact

__all__ = ["CloudMask", "SensorSpec", "load_chip"]

SCL_INVALID = (0, 1, 3, 8, 9, 10)  # no data, saturated/defective, cloud shadow, cloud medium/high, cirrus


@dataclass(frozen=True)
class CloudMask:
    """A per-pixel quality asset: `classes` (SCL-like values that are invalid) or `bits` (set bits = invalid)."""

    asset: str
    classes: tuple[int, ...] = ()
    bits: tuple[int, ...] = ()


@dataclass(frozen=True)
class SensorSpec:
    """How one modality is read and prepared.

    Attributes:
        modality: Model key (`s2`, `s1`, `aerial`, `landsat`, …).
        assets: STAC asset keys, in channel order (`image.1` … for multi-band assets).
        bands: Band names stored with the data (same length as `assets`).
        res_m: Output pixel size in metres (native GSD by default in configs).
        scale: `reflectance`-style scaling: value = (DN − offset) · scale; None keeps raw values.
        offset: See `scale`.
        harmonize_s2: Subtract 1000 from DN for Sentinel-2 processing baselines ≥ 04.00 before scaling.
        to_db: Convert linear backscatter to dB (10·log10); non-positive values become invalid.
        nodata: Raw value meaning "no data" (None: NaN only).
        cloud: Optional per-pixel quality mask.
        pack: Let the store keep scaled integer DN as uint16 (CF scale_factor/add_offset) instead of float32
            when that is lossless; False keeps float32.
        required: A chip is unusable without this modality; an optional one (False) that has no usable item
            is left out of the chip (with a `no_usable_item` reject), the chip is kept.
    """

    modality: str
    assets: tuple[str, ...]
    bands: tuple[str, ...]
    res_m: float
    scale: float | None = None
    offset: float = 0.0
    harmonize_s2: bool = False
    to_db: bool = False
    nodata: float | None = 0
    cloud: CloudMask | None = None
    pack: bool = True
    required: bool = True

    def packing(self, raw_dtype: np.dtype) -> Packing | None:
        """How the prepared float32 values relate to integer DN, when the store may pack them (else None).

        The reference offset includes the Sentinel-2 +1000 when harmonising, so items of either side of
        baseline 04.00 share one packing (the stored integer absorbs each item's own offset).
        """
        if not self.pack or self.to_db or (self.scale is None and raw_dtype.kind not in "iu"):
            return None
        return Packing(1.0 if self.scale is None else self.scale, self.offset + (1000.0 if self.harmonize_s2 else 0.0))

    def __post_init__(self) -> None:
        if len(self.assets) != len(self.bands) or not self.assets:
            raise ValueError(f"{self.modality}: assets {self.assets} and bands {self.bands} must have the same length")


def _when(item: pystac.Item) -> datetime:
    """The item's datetime, or the start of its interval when the exact time is unknown (`datetime: null`)."""
    props = item.properties
    when = try_instant(props.get("datetime")) or try_instant(props.get("start_datetime"))
    if when is None:
        raise ChipError(f"item {item.id} has neither datetime nor start_datetime")
    return when


def _baseline_offset(item: pystac.Item) -> float:
    """+1000 DN offset of Sentinel-2 products from processing baseline 04.00 (25 January 2022) on."""
    baseline = item.properties.get("s2:processing_baseline")
    if baseline is None:
        when = item.datetime or datetime.fromisoformat("2000-01-01T00:00:00+00:00")
        return 1000.0 if when.date() >= datetime(2022, 1, 25).date() else 0.0
    try:
        return 1000.0 if float(baseline) >= 4.0 else 0.0
    except (TypeError, ValueError):
        raise ChipError(f"item {item.id} has an unreadable s2:processing_baseline {baseline!r}") from None


def _window(spec: SensorSpec, items: Sequence[pystac.Item], plan: ChipPlan, reader: ChipReader) -> tuple[float, ...]:
    """The chip's window for one sensor: its cell snapped onto the pixel grid of the sensor's first asset.

    Output pixels then coincide with source pixels (Landsat grids sit at 30 k + 15 m, chip corners on multiples
    of 30 m), so nothing is resampled and nothing is shifted; a raster in another CRS keeps the cell (and is
    resampled, nearest, by the reprojecting path).
    """
    key = spec.assets[0].split(".")[0]
    for item in items:  # the first item whose raster opens gives the grid of the whole series
        origin = reader.pixel_origin(item, key, plan.epsg) if key in item.assets else None
        if origin is not None:
            return snap_bounds(plan.bounds, spec.res_m, origin)
    return plan.bounds


def _prepare(spec: SensorSpec, items: Sequence[pystac.Item], plan: ChipPlan, reader: ChipReader,
             window: tuple[float, ...] | None = None) -> tuple[ModalityArray, bool]:  # fmt: skip
    """The prepared modality and whether any pixel had data before the cloud mask."""
    assets = list(spec.assets) + ([spec.cloud.asset] if spec.cloud else [])
    bounds = tuple(window or plan.bounds)
    values = np.stack([reader.read_item(item, assets, epsg=plan.epsg, bounds=bounds, resolution=spec.res_m)  # type: ignore[arg-type]
                       for item in items])  # [T, C(+1), H, W]  # fmt: skip
    raw = values[:, : len(spec.assets)]  # [T, C, H, W]
    valid = np.ones((raw.shape[0], raw.shape[2], raw.shape[3]), dtype=bool)
    if spec.nodata is not None:
        valid &= np.all(raw != spec.nodata, axis=1)
    data = raw.astype(np.float32)
    valid &= np.all(np.isfinite(data), axis=1)
    if spec.scale is not None:
        offsets = np.array([spec.offset + (_baseline_offset(i) if spec.harmonize_s2 else 0.0) for i in items],
                           dtype=np.float32)[:, None, None, None]  # fmt: skip
        data = (data - offsets) * np.float32(spec.scale)
    if spec.to_db:
        finite = data[np.isfinite(data) & valid[:, None]]
        if finite.size and float((finite <= 0).mean()) > 0.5:  # linear power is > 0; dB of backscatter mostly < 0
            raise ChipError(f"item {items[0].id}: {float((finite <= 0).mean()):.0%} of the {spec.modality} values are "
                            "<= 0, as in dB, but the sensor declares linear power (to_db); set to_db: false for "
                            "a dB collection")  # fmt: skip
        positive = np.all(data > 0, axis=1)
        valid &= positive
        with np.errstate(divide="ignore", invalid="ignore"):
            data = np.where(data > 0, 10.0 * np.log10(data), np.float32(0)).astype(np.float32)
    has_data = bool(valid.any())
    if spec.cloud is not None:
        qa = values[:, -1].astype(np.int64)  # [T, H, W]
        if spec.cloud.classes:
            valid &= ~np.isin(qa, spec.cloud.classes)
        for bit in spec.cloud.bits:
            valid &= (qa >> bit) & 1 == 0
    data = np.where(valid[:, None], data, np.float32(0)).astype(np.float32) if data.dtype.kind == "f" else data
    if spec.scale is None and not spec.to_db and raw.dtype == np.uint8:
        data = raw  # keep 8-bit imagery as it is
    dates = np.array([np.datetime64(_when(i).replace(tzinfo=None), "s") for i in items], dtype="datetime64[s]")
    packing = spec.packing(raw.dtype) if data.dtype == np.float32 else None
    origin = None if bounds == tuple(plan.bounds) else (bounds[0], bounds[3])
    return ModalityArray(data, valid, dates, tuple(i.id for i in items), spec.bands, spec.res_m, packing, origin), has_data


def _read_error_kind(err: ChipError) -> str:
    """Name the reason of a read failure from its type or GDAL's / the loader's message."""
    if isinstance(err, TransientReadError):
        return "transient_io"
    if isinstance(err, MetadataMismatch):
        return "metadata_mismatch"
    text = str(err).lower()
    if "has no asset" in text:
        return "missing_asset"
    if "processing_baseline" in text:
        return "bad_metadata"
    if "but the sensor declares linear power" in text:
        return "wrong_units"
    if re.search(r"\b(401|403)\b|access denied|forbidden|authenticationfailed|signature", text):
        return "access_denied"  # an expired or missing token, or no permission: not a deleted file
    if "no such file" in text or "404" in text or "does not exist" in text or "not found" in text:
        return "href_not_found"
    if "not recognized as" in text or "not a supported file format" in text or "tiff" in text and "error" in text \
            or "ireadblock failed" in text or "tiffread" in text:  # fmt: skip (a truncated or damaged tile)
        return "corrupt_raster"
    return "read_error"


def _concat(mods: Sequence[ModalityArray]) -> ModalityArray:
    if len(mods) == 1:
        return mods[0]
    return ModalityArray(np.concatenate([m.data for m in mods]), np.concatenate([m.valid for m in mods]),
                         np.concatenate([m.dates for m in mods]), tuple(i for m in mods for i in m.item_ids),
                         mods[0].bands, mods[0].res_m, mods[0].packing, mods[0].origin)  # fmt: skip


def load_chip(plan: ChipPlan, items: Mapping[str, pystac.Item], sensors: Mapping[str, SensorSpec], *,
              sign: Callable[[str], str] | None = None,
              reader: ChipReader | None = None) -> tuple[Chip | None, list[Reject]]:  # fmt: skip
    """Read every modality of a planned chip, item by item, so that one bad item never sinks the others.

    Args:
        plan: The chip's grid cell and item ids per modality.
        items: Item id → item (from the manifest).
        sensors: Modality → how to read and prepare it.
        sign: Href signer applied right before each read (e.g. Planetary Computer); used when `reader` is None.
        reader: The shard's reader (keeps datasets open across chips, carries its own signer and retries);
            None reads through a reader of this chip alone.

    Returns:
        The chip (None when unusable) and the rejects, each with its reason: per item `missing_item`,
        `missing_asset`, `href_not_found`, `corrupt_raster`, `bad_metadata`, `metadata_mismatch` (CRS, shape,
        transform, bands, data type or media type disagreeing with the file), `read_error`, `transient_io`
        (transient failures outlasted the retries), `all_nodata`, `fully_cloudy`; per chip `no_usable_item`
        (a modality kept none of its items) or `no_modality`.
    """
    if reader is None:
        with ChipReader(sign=sign) as own:
            return load_chip(plan, items, sensors, reader=own)
    modalities: dict[str, ModalityArray] = {}
    rejects: list[Reject] = []
    for modality, ids in plan.items.items():
        spec = sensors.get(modality)
        if spec is None:
            continue
        rejects += [Reject("missing_item", i, f"{modality} item of chip {plan.chip_id} is not in the manifest")
                    for i in ids if i not in items]  # fmt: skip
        chosen = sorted((items[i] for i in ids if i in items), key=lambda it: (_when(it), it.id))
        good = []
        window = _window(spec, chosen, plan, reader)  # one grid for the whole series
        for item in chosen:
            try:
                mod, has_data = _prepare(spec, [item], plan, reader, window)
            except ChipError as err:
                rejects.append(Reject(_read_error_kind(err), item.id, f"{modality}: {redact(str(err))}"))
                continue
            if not mod.valid.any():
                kind = "fully_cloudy" if has_data else "all_nodata"
                rejects.append(Reject(kind, item.id, f"{modality} has no valid pixel in chip {plan.chip_id}"))
                continue
            good.append(mod)
        if not good:
            if not spec.required:  # an optional modality: the chip is kept without it
                rejects.append(Reject("no_usable_item", plan.chip_id, f"none of its {len(ids)} {modality} items is "
                                      f"usable; {modality} is optional, the chip is kept without it"))  # fmt: skip
                continue
            rejects.append(Reject("no_usable_item", plan.chip_id, f"none of its {len(ids)} {modality} items is usable"))
            return None, rejects
        modalities[modality] = _concat(good)
    if not modalities:
        return None, rejects + [Reject("no_modality", plan.chip_id, "none of the chip's modalities is configured")]
    return Chip(plan.chip_id, plan.epsg, plan.bounds, plan.center_lon, plan.center_lat, modalities), rejects
