"""Integer packing of scaled values: reflectance stored as its uint16 DN with CF `scale_factor`/`add_offset`.

Sentinel-2 and Landsat reflectance is computed at ingestion as `(DN − offset) · scale` in float32 from integer
DN. Storing the DN (shifted by a reference offset) as uint16 halves the bytes, and nothing is lost: `pack`
inverts the float32 values to integers, decodes them again with `unpack` (the loader's decode) and keeps the
packing only when every valid value comes back bit for bit; otherwise the group stays float32. Pixels that are
not valid (nodata, cloud, padding) are stored as the fill value 0, which decodes to NaN.

Attributes written (CF): `scale_factor` = the float32 scale, `add_offset` = −offset · scale_factor (both exact in
float64), `_FillValue` = 0. xarray decodes them as `stored · scale_factor + add_offset` in float64, equal to the
float32 values to float32 rounding; `unpack` computes `(stored − offset) · scale` in float32, the ingestion's own
arithmetic, hence bit-identical.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["FILL", "Packing", "is_packed", "pack", "unpack"]

FILL = 0  # stored value of pixels that are not valid
_MAX = np.iinfo(np.uint16).max


@dataclass(frozen=True)
class Packing:
    """How a modality's float32 values were made from integer DN: value = (DN − offset) · scale.

    Attributes:
        scale: The scale applied at ingestion (1.0 for raw DN).
        offset: The reference offset in DN units (per-date offsets may differ from it by whole DN, as the +1000
            of Sentinel-2 baselines ≥ 04.00 does: the stored integer absorbs the difference).
    """

    scale: float
    offset: float = 0.0

    def attrs(self) -> dict[str, Any]:
        """The CF attributes of the packed array."""
        scale = float(np.float32(self.scale))
        offset = float(np.float32(self.offset))
        return {"scale_factor": scale, "add_offset": -offset * scale if offset else 0.0, "_FillValue": FILL}


def is_packed(attrs: Mapping[str, Any]) -> bool:
    """True when an array's attributes carry a CF scale/offset (its stored integers are to be unpacked)."""
    return "scale_factor" in attrs or "add_offset" in attrs


def unpack(stored: np.ndarray, attrs: Mapping[str, Any]) -> np.ndarray:
    """Float32 values of a packed array: `(stored − offset) · scale`, NaN where `stored` is the fill value."""
    scale = float(attrs.get("scale_factor", 1.0))
    offset = -float(attrs.get("add_offset", 0.0)) / scale  # exact: add_offset is −offset · scale in float64
    out = stored.astype(np.float32)
    if offset:
        np.subtract(out, np.float32(offset), out=out)
    if scale != 1.0:
        np.multiply(out, np.float32(scale), out=out)
    fill = attrs.get("_FillValue")
    if fill is not None:
        out[stored == fill] = np.nan
    return out


def pack(values: np.ndarray, valid: np.ndarray, packing: Packing) -> np.ndarray | None:
    """uint16 integers that `unpack` turns back into `values` wherever `valid`; None when that is impossible.

    Args:
        values: float32 [..., C, H, W] values (chip, time, band, y, x in a shard).
        valid: bool [..., H, W] (broadcast over the band axis); elsewhere the fill value is stored.
        packing: How the values were made.

    Returns:
        The packed array, or None when a valid value is not an exact image of an integer in 1…65535.
    """
    mask = np.broadcast_to(valid[..., None, :, :], values.shape)
    scale = np.float32(packing.scale)
    with np.errstate(invalid="ignore", over="ignore"):
        dn = np.rint(values.astype(np.float64) / float(scale) + float(np.float32(packing.offset)))
    dn = np.where(mask, dn, FILL)
    if not np.isfinite(dn).all() or (dn[mask] < 1).any() or (dn > _MAX).any():
        return None
    stored = dn.astype(np.uint16)
    back = unpack(stored, packing.attrs())
    if not np.array_equal(back[mask].view(np.uint32), values[mask].astype(np.float32).view(np.uint32)):
        return None
    return stored
