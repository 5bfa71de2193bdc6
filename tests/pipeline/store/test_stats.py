"""Band statistics: valid pixels only, and merging parts equals computing over the whole."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipeline.store.records import Chip, ModalityArray
from pipeline.errors import PipelineError
from pipeline.store.stats import DB_RANGE, REFLECTANCE_RANGE, chip_stats, merge_stats, stats_from_json, stats_to_json

SAMPLES = Path(__file__).resolve().parents[3] / "data" / "samples"


def _landsat_chips() -> list[Chip]:
    chips = []
    scenes = sorted(glob.glob(str(SAMPLES / "landsat-timeseries-colorado" / "L*")))[:6]
    for k, s in enumerate(scenes):
        sr = np.stack([rasterio.open(glob.glob(f"{s}/*_{b}.tif")[0]).read(1)[:30, :30] for b in ("b3", "b4")])
        fmask = rasterio.open(glob.glob(f"{s}/*_fmask.tif")[0]).read(1)[:30, :30]
        data = (sr.astype(np.float32) * 1e-4)[None]
        data[0, 0, 0, 0] = np.nan  # a NaN marked valid: chip_stats itself must leave it out
        valid = ((sr[0] != -9999) & (fmask != 4))[None]
        valid[0, 0, 0] = True
        mod = ModalityArray(data, valid, np.array(["2010-01-01"], "datetime64[s]"), (Path(s).name,), ("red", "nir"), 30.0)
        chips.append(Chip(f"c{k}", 32613, (0.0, -900.0, 900.0, 0.0), 0.0, 0.0, {"landsat": mod}))
    return chips


RANGES = {"landsat": REFLECTANCE_RANGE}


def test_only_valid_finite_pixels_count_and_values_are_right() -> None:
    chips = _landsat_chips()
    stats = chip_stats(chips, RANGES)["landsat"]["red"]
    values = np.concatenate([c.modalities["landsat"].data[0, 0][c.modalities["landsat"].valid[0]] for c in chips])
    assert np.isnan(values).sum() == len(chips)  # the NaNs reach chip_stats ...
    values = values[np.isfinite(values)]  # ... and must not count
    assert stats.count == values.size < 6 * 900 and np.isfinite(stats.mean)
    assert np.isclose(stats.mean, values.astype(np.float64).mean()) and np.isclose(stats.std, values.std())
    assert stats.minimum == values.min() and stats.maximum == values.max()
    p = stats.percentiles()
    assert abs(p["p50"] - np.median(values)) < 2 * (2.5 + 0.5) / 4096 + 1e-6


def test_merge_equals_full_recompute_and_json_round_trip() -> None:
    chips = _landsat_chips()
    whole = chip_stats(chips, RANGES)
    merged = merge_stats([chip_stats(chips[:2], RANGES), chip_stats(chips[2:5], RANGES), chip_stats(chips[5:], RANGES)])
    for band in ("red", "nir"):
        a, b = whole["landsat"][band], merged["landsat"][band]
        assert a.count == b.count and a.minimum == b.minimum and a.maximum == b.maximum
        assert np.array_equal(a.hist, b.hist)
        assert np.isclose(a.mean, b.mean, rtol=1e-12) and np.isclose(a.std, b.std, rtol=1e-9)
    back = stats_from_json(stats_to_json(merged))
    assert back["landsat"]["red"].summary() == merged["landsat"]["red"].summary()


def test_one_bright_chip_never_changes_the_declared_range(tmp_path: Path) -> None:
    """dB backscatter of a bright chip is all above -2 dB; the range is the sensor's, never guessed per chip."""
    rng = np.random.default_rng(0)
    dates = np.array(["2017-06-13"], "datetime64[s]")

    def sar(chip_id: str, low: float, high: float) -> Chip:
        data = rng.uniform(low, high, (1, 2, 8, 8)).astype(np.float32)
        mod = ModalityArray(data, np.ones((1, 8, 8), bool), dates, ("s1",), ("VV", "VH"), 10.0)
        return Chip(chip_id, 32633, (0.0, -80.0, 80.0, 0.0), 0.0, 0.0, {"s1": mod})

    dark, bright = sar("dark", -25.0, -5.0), sar("bright", 0.5, 12.0)  # a city of corner reflectors
    both = chip_stats([dark, bright], {"s1": DB_RANGE})
    parts = merge_stats([chip_stats([dark], {"s1": DB_RANGE}), chip_stats([bright], {"s1": DB_RANGE})])
    assert (both["s1"]["VV"].lo, both["s1"]["VV"].hi) == DB_RANGE and both["s1"]["VV"].count == 128
    assert np.array_equal(both["s1"]["VV"].hist, parts["s1"]["VV"].hist)
    json.dumps(stats_to_json(both))
    with pytest.raises(PipelineError, match="stats_range"):  # raw floats with no declared range: a clear error
        chip_stats([dark])
