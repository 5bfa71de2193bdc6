"""Per-band statistics over valid pixels, computed streaming and mergeable exactly.

Each (modality, band) keeps count, sum and sum of squares (float64), min, max and a fixed-range histogram, so
statistics of shards merge into those of the dataset without re-reading pixels: counts, extremes and histograms
merge exactly, means and standard deviations to floating-point rounding. Percentiles come from the histogram.
Only pixels whose date is real and whose `valid` mask is True count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.errors import StoreError
from pipeline.store.records import Chip, ModalityArray

__all__ = ["BandStats", "DB_RANGE", "PERCENTILES", "REFLECTANCE_RANGE", "chip_stats", "merge_stats", "stats_from_json", "stats_to_json"]

PERCENTILES = (1, 2, 5, 25, 50, 75, 95, 98, 99)
BINS = 4096


REFLECTANCE_RANGE = (-0.5, 2.5)
DB_RANGE = (-60.0, 40.0)


def value_range(data: np.ndarray, declared: tuple[float, float] | None = None, *, key: str = "") -> tuple[float, float]:
    """Histogram range of one modality: the declared one (the sensor's, from its config), else its dtype's.

    Never guessed from the values: one bright or dark chip must not change the range, or its histogram could
    not be merged with the others'. Integer data default to the dtype's range (8-bit imagery: 0-256).

    Raises:
        StoreError: Float values with no declared range.
    """
    if declared is not None:
        return (float(declared[0]), float(declared[1]))
    if data.dtype == np.uint8:
        return (0.0, 256.0)
    if data.dtype.kind in "iub":
        info = np.iinfo(data.dtype) if data.dtype.kind != "b" else np.iinfo(np.uint8)
        return (float(info.min), float(info.max) + 1)
    raise StoreError(f"{key or 'a modality'} holds {data.dtype} values but no histogram range was declared; set the "
                     "sensor's stats_range (reflectance and dB get one by default)")  # fmt: skip


@dataclass
class BandStats:
    """Running statistics of one band."""

    count: int
    total: float
    total_sq: float
    minimum: float
    maximum: float
    lo: float
    hi: float
    hist: np.ndarray  # [BINS] int64

    @classmethod
    def of(cls, values: np.ndarray, lo: float, hi: float) -> BandStats:
        v = values.astype(np.float64)
        hist = np.histogram(np.clip(v, lo, np.nextafter(hi, lo)), bins=BINS, range=(lo, hi))[0].astype(np.int64)
        return cls(int(v.size), float(v.sum()), float((v * v).sum()), float(v.min(initial=np.inf)),
                   float(v.max(initial=-np.inf)), lo, hi, hist)  # fmt: skip

    def merge(self, other: BandStats) -> BandStats:
        if (self.lo, self.hi) != (other.lo, other.hi):
            raise StoreError(f"cannot merge histograms over {(self.lo, self.hi)} and {(other.lo, other.hi)}")
        return BandStats(self.count + other.count, self.total + other.total, self.total_sq + other.total_sq,
                         min(self.minimum, other.minimum), max(self.maximum, other.maximum), self.lo, self.hi,
                         self.hist + other.hist)  # fmt: skip

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else float("nan")

    @property
    def std(self) -> float:
        if not self.count:
            return float("nan")
        return float(np.sqrt(max(self.total_sq / self.count - self.mean**2, 0.0)))

    def percentiles(self) -> dict[str, float]:
        """Percentiles from the histogram (linear inside a bin)."""
        if not self.count:
            return {f"p{p}": float("nan") for p in PERCENTILES}
        edges = np.linspace(self.lo, self.hi, BINS + 1)
        cdf = np.concatenate([[0], np.cumsum(self.hist)]) / self.count
        return {f"p{p}": float(np.interp(p / 100, cdf, edges)) for p in PERCENTILES}

    def summary(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "std": self.std, "min": self.minimum, "max": self.maximum,
                **self.percentiles()}  # fmt: skip


Stats = dict[str, dict[str, BandStats]]  # modality -> band -> stats


def chip_stats(chips: Sequence[Chip], ranges: Mapping[str, tuple[float, float] | None] | None = None) -> Stats:
    """Statistics of the valid pixels of some chips (e.g. one shard's).

    Computed once per modality and band over all the chips at once (their time series concatenated), not chip
    by chip: the same counts, extremes and histograms as merging per-chip statistics, sums to rounding.
    `ranges` gives each modality's histogram range (the sensor's declared one); values outside it count in the
    edge bins (and in the exact min/max).

    Raises:
        StoreError: A float modality without a declared range, or chips of one modality with different dtypes
            whose default ranges differ.
    """
    declared = dict(ranges or {})
    out: Stats = {}
    groups: dict[tuple[str, tuple[str, ...], tuple[int, ...], str], list[ModalityArray]] = {}
    found: dict[str, tuple[float, float]] = {}
    for chip in chips:
        for key, mod in chip.modalities.items():
            lo_hi = value_range(mod.data, declared.get(key), key=key)
            if found.setdefault(key, lo_hi) != lo_hi:
                raise StoreError(f"{key}: chip {chip.chip_id} has a {mod.data.dtype} histogram range {lo_hi}, other "
                                 f"chips {found[key]}; declare the sensor's stats_range")  # fmt: skip
            groups.setdefault((key, mod.bands, mod.data.shape[2:], mod.data.dtype.str), []).append(mod)
    for (key, bands, _, _), mods in groups.items():
        lo, hi = found[key]
        data = mods[0].data if len(mods) == 1 else np.concatenate([m.data for m in mods])  # [T, C, H, W]
        valid = mods[0].valid if len(mods) == 1 else np.concatenate([m.valid for m in mods])  # [T, H, W]
        for c, band in enumerate(bands):
            values = data[:, c][valid]
            values = values[np.isfinite(values)] if values.dtype.kind == "f" else values
            one = BandStats.of(values, lo, hi)
            bucket = out.setdefault(key, {})
            bucket[band] = bucket[band].merge(one) if band in bucket else one
    return out


def merge_stats(parts: Sequence[Stats]) -> Stats:
    """Merge statistics of disjoint sets of pixels."""
    out: Stats = {}
    for part in parts:
        for key, bands in part.items():
            for band, st in bands.items():
                bucket = out.setdefault(key, {})
                bucket[band] = bucket[band].merge(st) if band in bucket else st
    return out


def stats_to_json(stats: Stats) -> dict[str, object]:
    """JSON-ready form: the mergeable state and a readable summary per band."""
    return {key: {band: {"state": {"count": s.count, "total": s.total, "total_sq": s.total_sq, "min": s.minimum,
                                   "max": s.maximum, "lo": s.lo, "hi": s.hi,
                                   "hist": {str(i): int(s.hist[i]) for i in np.flatnonzero(s.hist)}},
                         "summary": s.summary()}
                  for band, s in bands.items()} for key, bands in stats.items()}  # fmt: skip


def stats_from_json(raw: Mapping[str, Mapping[str, Mapping[str, Mapping[str, object]]]]) -> Stats:
    """Inverse of `stats_to_json`."""
    out: Stats = {}
    for key, bands in raw.items():
        for band, entry in bands.items():
            st = entry["state"]
            hist = np.zeros(BINS, np.int64)
            for i, v in dict(st["hist"]).items():  # type: ignore[call-overload]
                hist[int(i)] = int(v)
            out.setdefault(key, {})[band] = BandStats(int(st["count"]), float(st["total"]), float(st["total_sq"]),  # type: ignore[arg-type]
                                                      float(st["min"]), float(st["max"]), float(st["lo"]),  # type: ignore[arg-type]
                                                      float(st["hi"]), hist)  # type: ignore[arg-type]  # fmt: skip
    return out
