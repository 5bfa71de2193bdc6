"""Benchmark: odc-stac vs stackstac behind `pipeline.ingest.raster_load.load_items`, against direct rasterio reads.

Same items, same windows, same grid, side by side in one run; checks that both backends return the same pixels
as rasterio before timing them. Prints a table and one JSON line.

    python bench/raster_loading.py [--repeats 3] [--catalogs DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pystac
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import from_bounds

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from infra.local.samples import build_sample_catalogs  # noqa: E402
from pipeline.ingest.raster_load import item_epsg, load_items  # noqa: E402

S2_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")


def _items(files: tuple[Path, ...], collection: str) -> list[pystac.Item]:
    path = next((p for p in files if p.parent.name == collection and p.suffix == ".ndjson"), None)
    return [] if path is None else [pystac.Item.from_dict(json.loads(x)) for x in path.read_text().splitlines()]


def _origin(item: pystac.Item, key: str) -> tuple[float, float]:
    t = item.assets[key].extra_fields["proj:transform"]
    return t[2], t[5]


def _rasterio(items: list[pystac.Item], assets: tuple[str, ...], bounds, res: float) -> np.ndarray:  # noqa: ANN001
    """The limit: read each asset window directly, nearest-resampled onto the output grid."""
    h = round((bounds[3] - bounds[1]) / res)
    w = round((bounds[2] - bounds[0]) / res)
    out = np.empty((len(items), len(assets), h, w), dtype=np.uint16)
    for t, item in enumerate(items):
        for b, key in enumerate(assets):
            with rasterio.open(item.assets[key].href.removeprefix("file://")) as ds:
                win = from_bounds(*bounds, transform=ds.transform)
                out[t, b] = ds.read(1, window=win, out_shape=(h, w), resampling=Resampling.nearest)
    return out


def _cases(files: tuple[Path, ...]) -> list[tuple[str, list[tuple[list[pystac.Item], tuple[str, ...], tuple, float]]]]:
    cases = []
    s2 = _items(files, "sentinel-2-l2a")
    jobs = []
    for item in s2:  # four 600 m chips per 1200 m patch, 10 bands at 10 m (20 m bands resampled)
        x0, y0 = _origin(item, "B02")
        for dx in (0, 600):
            for dy in (0, 600):
                jobs.append(([item], S2_BANDS, (x0 + dx, y0 - dy - 600, x0 + dx + 600, y0 - dy), 10.0))
    cases.append(("s2-l2a 24 chips x 10 bands, 60x60", jobs))
    ls = _items(files, "landsat-c2-l2")
    x0, y0 = _origin(ls[0], "red")
    cases.append(("landsat 105 dates x 4 bands, 61x61",
                  [(ls, ("red", "nir08", "swir16", "qa_pixel"), (x0, y0 - 1830, x0 + 1830, y0), 30.0)]))
    l1c = _items(files, "sentinel-2-l1c")
    if l1c:
        x0, y0 = _origin(l1c[0], "B02")
        rng = np.random.default_rng(0)
        jobs = []
        for _ in range(32):  # random 64x64 chips
            cx, cy = rng.integers(0, 1933 - 64, size=2)
            b = (x0 + 10 * cx, y0 - 10 * (cy + 64), x0 + 10 * (cx + 64), y0 - 10 * cy)
            jobs.append((l1c, S2_BANDS, b, 10.0))
        cases.append(("s2-l1c 32 random chips x 10 bands, 64x64", jobs))
    else:
        print("sentinel-2-l1c scene absent (../shared/data): case skipped", file=sys.stderr)
    return cases


def _time(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--catalogs", type=Path, default=None, help="built catalogs folder (default: build a temp one)")
    args = parser.parse_args()
    out_dir = args.catalogs or Path(tempfile.mkdtemp(prefix="bench-catalogs-"))
    files = build_sample_catalogs(out_dir)
    results = []
    print(f"{'case':<44} {'rasterio s':>10} {'odc s':>8} {'stackstac s':>11} {'odc/limit':>9} {'stackstac/odc':>13}")
    for name, jobs in _cases(files):
        for items, assets, bounds, res in jobs[:2]:  # correctness first
            ref = _rasterio(items, assets, bounds, res)
            for backend in ("odc", "stackstac"):
                got = load_items(items, assets=assets, crs=item_epsg(items[0]), bounds=bounds, resolution=res,
                                 backend=backend).values  # fmt: skip
                if not np.array_equal(got, ref):
                    raise SystemExit(f"{backend} differs from rasterio on {name}")
        times = {"rasterio": _time(lambda: [_rasterio(*j) for j in jobs], args.repeats)}
        for backend in ("odc", "stackstac"):
            times[backend] = _time(lambda b=backend: [
                load_items(i, assets=a, crs=item_epsg(i[0]), bounds=bd, resolution=r, backend=b)
                for i, a, bd, r in jobs], args.repeats)  # fmt: skip
        row = {"case": name, **{f"{k}_s": round(v, 4) for k, v in times.items()},
               "odc_over_limit": round(times["odc"] / times["rasterio"], 2),
               "stackstac_over_odc": round(times["stackstac"] / times["odc"], 2)}  # fmt: skip
        results.append(row)
        print(f"{name:<44} {times['rasterio']:>10.3f} {times['odc']:>8.3f} {times['stackstac']:>11.3f} "
              f"{row['odc_over_limit']:>9.2f} {row['stackstac_over_odc']:>13.2f}")
    import odc.stac
    import stackstac

    print(json.dumps({"bench": "raster_loading", "repeats": args.repeats, "machine": platform.machine(),
                      "cpus": __import__("os").cpu_count(), "python": platform.python_version(),
                      "odc_stac": odc.stac.__version__, "stackstac": stackstac.__version__,
                      "rasterio": rasterio.__version__, "results": results}))  # fmt: skip


if __name__ == "__main__":
    main()
