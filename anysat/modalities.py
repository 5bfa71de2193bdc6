"""The one table of modalities: keys, bands, ground sampling distance, temporal or not, sub-patch size.

The 11 keys of the official AnySat model are built in; users add sensors by configuration
(`Modality.from_dict`, e.g. from YAML) without code changes: a 0.6 m 3-band VHR camera, the 3-band 0.1 m NEON
tile, Landsat with 3 bands at 30 m. `check_inputs` validates a batch against the table with messages that say
what was expected, what was found and what to do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

__all__ = ["OFFICIAL_MODALITIES", "Modality", "check_inputs", "reject_unknown_fields", "resolve_modalities"]


def reject_unknown_fields(cls: type, raw: Mapping[str, Any], what: str) -> None:
    """Raise ValueError naming the fields of `raw` that dataclass `cls` does not have, and the valid ones."""
    fields = set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
    unknown = set(raw) - fields
    if unknown:
        raise ValueError(f"unknown {what} fields {sorted(unknown)}; valid fields are {sorted(fields)}")


@dataclass(frozen=True)
class Modality:
    """One sensor as the model sees it.

    Attributes:
        key: Input dict key (`s2`, `aerial`, …); time series also read `<key>_dates` [B, T] (day of year).
        bands: Band names, in channel order.
        res_m: Pixel size in metres of the tensor given to the model.
        temporal: True for time series [B, T, C, H, W] (L-TAE projector), False for images [B, C, H, W].
        subpatch_px: VHR only: conv kernel = stride in pixels; one sub-patch token per kernel window.
        reduce_scale: Official time-series field (l7/alos 3, modis 12); kept for checkpoint fidelity.
        doy_period: Period T of the day-of-year encoding (367; 366 for l8).
        in_norm: Time series only: GroupNorm over (channels, dates) after the input MLP (s2 in the official model).
        tile_token: The modality gives one token for the whole tile (modis).
    """

    key: str
    bands: tuple[str, ...]
    res_m: float
    temporal: bool
    subpatch_px: int = 1
    reduce_scale: int = 1
    doy_period: int = 367
    in_norm: bool = False
    tile_token: bool = False

    def __post_init__(self) -> None:
        if not self.key or "." in self.key or "_" in self.key:
            raise ValueError(f"modality key must be non-empty without '.' or '_', got {self.key!r}")
        if not self.bands:
            raise ValueError(f"modality {self.key!r} needs at least one band")
        if self.res_m <= 0:
            raise ValueError(f"modality {self.key!r}: res_m must be > 0, got {self.res_m}")
        if self.temporal and self.subpatch_px != 1:
            raise ValueError(f"time series {self.key!r} has one sub-patch per pixel; subpatch_px must be 1")
        if self.subpatch_px < 1:
            raise ValueError(f"modality {self.key!r}: subpatch_px must be >= 1, got {self.subpatch_px}")

    @property
    def channels(self) -> int:
        """Number of input channels."""
        return len(self.bands)

    @property
    def subpatch_m(self) -> float:
        """Ground size of one sub-patch token in metres (its position-encoding step)."""
        return self.res_m * self.subpatch_px

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (for configs and checkpoints)."""
        out = asdict(self)
        out["bands"] = list(self.bands)
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Modality:
        """Build from a mapping (YAML/JSON); unknown fields are rejected with the valid ones listed."""
        reject_unknown_fields(cls, raw, "modality")
        return cls(**{**raw, "bands": tuple(raw["bands"])})


_TS = dict(temporal=True)
OFFICIAL_MODALITIES: dict[str, Modality] = {
    m.key: m
    for m in (
        Modality("aerial", ("R", "G", "B", "NIR"), 0.2, False, subpatch_px=10),
        Modality("aerial-flair", ("R", "G", "B", "NIR", "elevation"), 0.2, False, subpatch_px=10),
        Modality("spot", ("R", "G", "B"), 1.0, False, subpatch_px=10),
        Modality("naip", ("R", "G", "B", "NIR"), 1.25, False, subpatch_px=8),
        Modality("s2", ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"), 10.0, in_norm=True, **_TS),
        Modality("s1-asc", ("VV", "VH"), 10.0, **_TS),
        Modality("s1", ("VV", "VH", "VV/VH"), 10.0, **_TS),
        Modality("alos", ("HH", "HV", "HH/HV"), 30.0, reduce_scale=3, **_TS),
        Modality("l7", ("B1", "B2", "B3", "B4", "B5", "B7"), 30.0, reduce_scale=3, **_TS),
        Modality("l8", ("B8", "B1", "B2", "B3", "B4", "B5", "B6", "B7", "B9", "B10", "B11"), 10.0,
                 doy_period=366, **_TS),  # fmt: skip
        Modality("modis", ("B1", "B2", "B3", "B4", "B5", "B6", "B7"), 250.0, reduce_scale=12, tile_token=True, **_TS),
    )
}


def resolve_modalities(spec: Sequence[str | Modality | Mapping[str, Any]]) -> tuple[Modality, ...]:
    """Official keys, `Modality` objects or dicts → a tuple of unique `Modality`.

    Raises:
        ValueError: An unknown key (the official keys are listed) or a duplicate.
    """
    out: list[Modality] = []
    for entry in spec:
        if isinstance(entry, Modality):
            mod = entry
        elif isinstance(entry, str):
            if entry not in OFFICIAL_MODALITIES:
                raise ValueError(f"unknown modality {entry!r}; official keys are {sorted(OFFICIAL_MODALITIES)}, "
                                 "or describe a new sensor with Modality(key, bands, res_m, temporal, …)")  # fmt: skip
            mod = OFFICIAL_MODALITIES[entry]
        else:
            mod = Modality.from_dict(entry)
        if any(m.key == mod.key for m in out):
            raise ValueError(f"modality {mod.key!r} is listed twice")
        out.append(mod)
    return tuple(out)


def check_inputs(x: Mapping[str, torch.Tensor], table: Mapping[str, Modality], *, patch_size: int) -> list[str]:
    """Validate a batch; return the modality keys present, in input order.

    Checks: known keys, tensor rank and channel count, square tiles, dates for time series, equal ground extent
    across modalities, and a patch size (metres, multiple of 10) that tiles the extent and the sub-patch grid.

    Raises:
        ValueError: With what was expected, what was found and what to do.
    """
    suffixes = ("_dates", "_mask", "_valid")
    keys = [k for k in x if not k.endswith(suffixes)]
    if not keys:
        raise ValueError("the input dict has no modality tensor; expected keys such as 's2' or 'aerial'")
    if patch_size <= 0 or patch_size % 10:
        raise ValueError(f"patch_size is in metres and must be a positive multiple of 10, got {patch_size}")
    extents: dict[str, float] = {}
    for key in keys:
        if key not in table:
            raise ValueError(f"unknown modality {key!r}; this model knows {sorted(table)}")
        mod, t = table[key], x[key]
        shape_txt = "[B, T, C, H, W]" if mod.temporal else "[B, C, H, W]"
        if t.dim() != (5 if mod.temporal else 4) or t.shape[-3] != mod.channels:
            raise ValueError(f"{key} expects {shape_txt} with C={mod.channels} ({', '.join(mod.bands)}), got "
                             f"{list(t.shape)}; check the {key} bands in the model's modalities")  # fmt: skip
        if t.shape[-1] != t.shape[-2]:
            raise ValueError(f"{key} tiles must be square, got H={t.shape[-2]} W={t.shape[-1]}; crop or pad them")
        if mod.temporal:
            dates = x.get(f"{key}_dates")
            if dates is None or tuple(dates.shape) != tuple(t.shape[:2]):
                found = None if dates is None else list(dates.shape)
                raise ValueError(f"{key} needs '{key}_dates' [B, T] = {list(t.shape[:2])} (day of year), got {found}")
        if mod.tile_token:
            continue
        extent = t.shape[-1] * mod.res_m
        extents[key] = extent
        patch_px = patch_size / mod.res_m
        sub = patch_size / mod.subpatch_m
        if abs(patch_px - round(patch_px)) > 1e-6 or abs(sub - round(sub)) > 1e-6 or round(sub) < 1:
            raise ValueError(f"patch_size {patch_size} m does not fit {key}'s sub-patch grid ({mod.subpatch_m:g} m "
                             f"sub-patches of {mod.res_m:g} m pixels); use a multiple of {mod.subpatch_m:g} m")  # fmt: skip
        n = extent / patch_size
        if abs(n - round(n)) > 1e-6:
            raise ValueError(f"patch_size {patch_size} m does not divide {key}'s tile of {extent:g} m "
                             f"({t.shape[-1]} px x {mod.res_m:g} m); choose a divisor of the tile size")  # fmt: skip
    if len(set(round(e, 6) for e in extents.values())) > 1:
        raise ValueError(f"modalities must cover the same ground extent, got {extents} (metres); "
                         "crop them to one footprint")  # fmt: skip
    return keys
