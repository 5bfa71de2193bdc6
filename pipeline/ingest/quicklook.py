"""Quicklook pictures of chips: true-colour RGB for optical sensors, a VV/VH composite for SAR.

A person checks a chip faster by looking at it than by reading its statistics; these PNGs are written beside
stores and by the demo. Rendering only: no I/O besides the PNG written.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import fsspec
import numpy as np

from pipeline.atomic import write_bytes

__all__ = ["modality_panel", "optical_rgb", "sar_composite", "write_quicklook"]

_RGB_NAMES = (("B4", "B3", "B2"), ("B04", "B03", "B02"), ("red", "green", "blue"), ("R", "G", "B"))


def _stretch(x: np.ndarray, valid: np.ndarray | None = None, low: float = 2, high: float = 98) -> np.ndarray:
    """Scale to [0, 1] between the low/high percentiles of the valid finite values."""
    mask = np.isfinite(x) if valid is None else (valid & np.isfinite(x))
    if not mask.any():
        return np.zeros_like(x, dtype=np.float32)
    lo, hi = np.percentile(x[mask], [low, high])
    out = (x - lo) / max(float(hi - lo), 1e-12)
    return np.clip(np.nan_to_num(out), 0, 1).astype(np.float32)


def optical_rgb(data: np.ndarray, *, bands: Sequence[str], rgb: Sequence[str] = ("B04", "B03", "B02"),
                nodata: float | None = 0) -> np.ndarray:  # fmt: skip
    """True-colour image [H, W, 3] in [0, 1] from `data` [C, H, W] with band names `bands`.

    Each channel is stretched between its 2nd and 98th percentile of valid pixels.
    """
    missing = [b for b in rgb if b not in bands]
    if missing:
        raise ValueError(f"optical_rgb needs bands {list(rgb)}; {missing} not in {list(bands)}")
    chans = [data[list(bands).index(b)].astype(np.float64) for b in rgb]
    valid = np.ones(chans[0].shape, bool) if nodata is None else np.all([c != nodata for c in chans], axis=0)
    return np.stack([_stretch(c, valid) for c in chans], axis=-1)


def sar_composite(vv_db: np.ndarray, vh_db: np.ndarray) -> np.ndarray:
    """A SAR false-colour image [H, W, 3]: red = VV dB, green = VH dB, blue = VV − VH (dB ratio)."""
    return np.stack([_stretch(vv_db), _stretch(vh_db), _stretch(vv_db - vh_db)], axis=-1)


def modality_panel(data: np.ndarray, valid: np.ndarray, bands: Sequence[str]) -> np.ndarray | None:
    """A picture of one date of one modality: true colour when red/green/blue exist, VV/VH for SAR.

    Args:
        data: [C, H, W] values; valid: [H, W] bool; bands: C names.

    Returns:
        [H, W, 3] in [0, 1], or None when the bands allow neither picture.
    """
    names = list(bands)
    for rgb in _RGB_NAMES:
        if all(b in names for b in rgb):
            chans = [np.where(valid, data[names.index(b)].astype(np.float64), np.nan) for b in rgb]
            return np.stack([_stretch(c) for c in chans], axis=-1)
    if "VV" in names and "VH" in names:
        vv = np.where(valid, data[names.index("VV")].astype(np.float64), np.nan)
        vh = np.where(valid, data[names.index("VH")].astype(np.float64), np.nan)
        return sar_composite(vv, vh)
    return None


def write_quicklook(path: Path | BinaryIO, panels: Sequence[tuple[str, np.ndarray]], *,
                    title: str = "") -> Path | BinaryIO:  # fmt: skip
    """Write panels (title, image [H, W, 3] or [H, W]) side by side into one PNG (a path or a binary file)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
    for ax, (name, image) in zip(axes[0], panels, strict=True):
        ax.imshow(image, interpolation="nearest", cmap=None if image.ndim == 3 else "gray")
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=110, format="png")
    plt.close(fig)
    if isinstance(path, Path):
        write_bytes(fsspec.filesystem("file"), str(path.resolve()), buffer.getvalue())
    else:
        path.write(buffer.getvalue())
    return path
