"""Quicklooks render real chips into [0, 1] images and a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipeline.ingest.quicklook import optical_rgb, sar_composite, write_quicklook

SAMPLES = Path(__file__).resolve().parents[3] / "data" / "samples" / "bigearthnet"


def test_optical_and_sar_quicklooks_of_a_real_pair(tmp_path: Path) -> None:
    s2 = next((SAMPLES / "BigEarthNet-S2-Example").glob("*_87_48"))
    s1 = next((SAMPLES / "BigEarthNet-S1-Example").glob("*_87_48"))
    bands = ("B02", "B03", "B04")
    data = np.stack([rasterio.open(next(s2.glob(f"*_{b}.tif"))).read(1) for b in bands])
    data[:, :5, :5] = 0  # nodata corner
    rgb = optical_rgb(data, bands=bands)
    assert rgb.shape == (120, 120, 3) and rgb.dtype == np.float32
    assert rgb.min() == 0.0 and rgb.max() == 1.0 and 0.2 < rgb.mean() < 0.8
    vv, vh = (rasterio.open(next(s1.glob(f"*_{p}.tif"))).read(1) for p in ("VV", "VH"))
    sar = sar_composite(vv, vh)
    assert sar.shape == (120, 120, 3) and np.isfinite(sar).all()
    png = write_quicklook(tmp_path / "q" / "chip.png", [("s2", rgb), ("s1", sar)], title="pair")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    with pytest.raises(ValueError, match="B04"):
        optical_rgb(data[:2], bands=("B02", "B03"))
