"""In-memory records that flow from the chip loader to the store: one chip with its modalities' time series."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from pipeline.store.packing import Packing

__all__ = ["Chip", "ModalityArray"]


@dataclass(frozen=True)
class ModalityArray:
    """One modality of one chip.

    Attributes:
        data: [T, C, H, W] pixel values (float32 reflectance/dB, uint8 aerial, …).
        valid: [T, H, W] bool, False where nodata or cloud.
        dates: [T] datetime64[s], sorted.
        item_ids: T source item ids.
        bands: C band names.
        res_m: Pixel size in metres.
        packing: How float32 `data` was made from integer DN (the store then keeps it as uint16 when that is
            lossless); None for values that are not scaled integers (dB, raw floats, uint8 imagery).
        origin: (west, north) edge of this modality's window when it is not the chip's own corner: the window
            snapped by less than half a pixel onto the sensor's pixel grid (Landsat's sits at 30 k + 15 m).
    """

    data: np.ndarray
    valid: np.ndarray
    dates: np.ndarray
    item_ids: tuple[str, ...]
    bands: tuple[str, ...]
    res_m: float
    packing: Packing | None = None
    origin: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.data.ndim != 4:
            raise ValueError(f"data must be [T, C, H, W], got shape {self.data.shape}")
        t, c, h, w = self.data.shape
        if self.valid.shape != (t, h, w) or self.valid.dtype != np.bool_:
            raise ValueError(f"valid must be bool [T, H, W] = {(t, h, w)}, got {self.valid.dtype} {self.valid.shape}")
        if self.dates.shape != (t,) or len(self.item_ids) != t:
            raise ValueError(f"expected {t} dates and item ids, got {self.dates.shape[0]} and {len(self.item_ids)}")
        if len(self.bands) != c:
            raise ValueError(f"expected {c} band names, got {list(self.bands)}")
        if t > 1 and np.any(self.dates[1:] < self.dates[:-1]):
            raise ValueError("dates must be sorted")


@dataclass(frozen=True)
class Chip:
    """One chip: a grid cell (EPSG code, bounds in metres, centre in degrees) and its modalities."""

    chip_id: str
    epsg: int
    bounds: tuple[float, float, float, float]
    center_lon: float
    center_lat: float
    modalities: Mapping[str, ModalityArray]

    def __post_init__(self) -> None:
        if not self.modalities:
            raise ValueError(f"chip {self.chip_id} has no modality")
        extents = {k: m.data.shape[-1] * m.res_m for k, m in self.modalities.items()}
        size = self.bounds[2] - self.bounds[0]
        bad = {k: e for k, e in extents.items() if abs(e - size) > 1e-6}
        if bad:
            raise ValueError(f"chip {self.chip_id} is {size} m wide but modalities cover {bad} m")
