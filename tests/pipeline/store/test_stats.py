"""Band statistics: valid pixels only, and merging parts equals computing over the whole."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import rasterio

from pipeline.store.records import Chip, ModalityArray
from pipeline.store.stats import chip_stats, merge_stats, stats_from_json, stats_to_json

SAMPLES = Path(__file__).resolve().parents[3] / "data" / "samples"


def _landsat_chips() -> list[Chip]:
    chips = []
    scenes = sorted(glob.glob(str(SAMPLES / "landsat-timeseries-colorado" / "L*")))[:6]
    for k, s in enumerate(scenes):
        sr = np.stack([rasterio.open(glob.glob(f"{s}/*_{b}.tif")[0]).read(1)[:30, :30] for b in ("b3", "b4")])
        fmask = rasterio.open(glob.glob(f"{s}/*_fmask.tif")[0]).read(1)[:30, :30]
        data = (sr.astype(np.float32) * 1e-4)[None]
        data[0, 0, 0, 0] = np.nan  # a NaN that must not count
        valid = ((sr[0] != -9999) & (fmask != 4) & np.isfinite(data[0, 0]))[None]
        mod = ModalityArray(data, valid, np.array(["2010-01-01"], "datetime64[s]"), (Path(s).name,), ("red", "nir"), 30.0)
        chips.append(Chip(f"c{k}", 32613, (0.0, -900.0, 900.0, 0.0), 0.0, 0.0, {"landsat": mod}))
    return chips


def test_only_valid_pixels_count_and_values_are_right() -> None:
    chips = _landsat_chips()
    stats = chip_stats(chips)["landsat"]["red"]
    values = np.concatenate([c.modalities["landsat"].data[0, 0][c.modalities["landsat"].valid[0]] for c in chips])
    assert stats.count == values.size < 6 * 900
    assert np.isclose(stats.mean, values.astype(np.float64).mean()) and np.isclose(stats.std, values.std())
    assert stats.minimum == values.min() and stats.maximum == values.max()
    p = stats.percentiles()
    assert abs(p["p50"] - np.median(values)) < 2 * (2.5 + 0.5) / 4096 + 1e-6


def test_merge_equals_full_recompute_and_json_round_trip() -> None:
    chips = _landsat_chips()
    whole = chip_stats(chips)
    merged = merge_stats([chip_stats(chips[:2]), chip_stats(chips[2:5]), chip_stats(chips[5:])])
    for band in ("red", "nir"):
        a, b = whole["landsat"][band], merged["landsat"][band]
        assert a.count == b.count and a.minimum == b.minimum and a.maximum == b.maximum
        assert np.array_equal(a.hist, b.hist)
        assert np.isclose(a.mean, b.mean, rtol=1e-12) and np.isclose(a.std, b.std, rtol=1e-9)
    back = stats_from_json(stats_to_json(merged))
    assert back["landsat"]["red"].summary() == merged["landsat"]["red"].summary()
