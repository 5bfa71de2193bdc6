"""The demo on embedded defaults: search the local STAC API and load one co-located Sentinel-2 + Sentinel-1 chip.

Run by `make demo` after `python -m infra.local up` (which exports STAC_API_URL and the other stack variables):
searches `sentinel-2-l2a` by bbox + datetime + cloud cover with pystac-client, finds the `sentinel-1-rtc` item over
the same place, loads both onto the Sentinel-2 item's 10 m grid as one chip, and prints its shape, CRS,
resolution and the stack's URLs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.ingest.quicklook import optical_rgb, sar_composite, write_quicklook
from pipeline.ingest.raster_load import item_epsg, load_items
from pipeline.catalog.search import StacQuery, search_items
from pipeline.logs import install_redaction

log = logging.getLogger("demo")

S2_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")  # AnySat's s2 bands
S1_BANDS = ("vv", "vh")


@dataclass(frozen=True)
class DemoConfig:
    """Embedded defaults of the demo: a search over the Sentinel-2 samples and a chip size."""

    bbox: tuple[float, float, float, float] = (-12.0, 35.0, 30.0, 65.0)  # Europe, where the samples lie
    datetime: str = "2017-06-01/2018-03-01"
    max_cloud_cover: float = 20.0
    chip_size_m: float = 600.0


def main(argv: list[str] | None = None) -> int:
    install_redaction()  # no signed URL, token or credential in any log line or warning
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stac-url", default=os.environ.get("STAC_API_URL"), help="STAC API root URL")
    parser.add_argument("--out", type=Path, default=Path(".stack") / "demo", help="folder for the quicklook PNG")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pipeline").setLevel(logging.INFO)
    if not args.stac_url:
        parser.error("no STAC API: run `python -m infra.local up` and source .stack/env, or pass --stac-url")
    cfg = DemoConfig()

    s2_items = search_items(StacQuery(url=args.stac_url, collections=("sentinel-2-l2a",), bbox=cfg.bbox,
                                      datetime=cfg.datetime, max_cloud_cover=cfg.max_cloud_cover, page_size=2))
    print(f"sentinel-2-l2a: {len(s2_items)} items with eo:cloud_cover <= {cfg.max_cloud_cover} in {cfg.datetime}")
    pair = None
    for s2 in s2_items:
        s1 = search_items(StacQuery(url=args.stac_url, collections=("sentinel-1-rtc",), bbox=tuple(s2.bbox)))
        if s1:
            pair = (s2, s1[0])
            break
    if pair is None:
        print("no Sentinel-1 item overlaps the Sentinel-2 results", file=sys.stderr)
        return 1
    s2, s1 = pair
    epsg = item_epsg(s2)
    transform = s2.assets["B02"].extra_fields["proj:transform"]
    x0, y0 = transform[2], transform[5]
    bounds = (x0, y0 - cfg.chip_size_m, x0 + cfg.chip_size_m, y0)  # the item's top-left chip
    chip = {
        "s2": load_items([s2], assets=S2_BANDS, crs=epsg, bounds=bounds, resolution=10.0),
        "s1": load_items([s1], assets=S1_BANDS, crs=epsg, bounds=bounds, resolution=10.0),
    }
    print(f"chip {bounds} ({cfg.chip_size_m:g} m) over {s2.id} + {s1.id}")
    for name, arr in chip.items():
        res = abs(float(arr.x[1] - arr.x[0]))
        print(f"  {name}: shape {tuple(arr.shape)} {arr.dims} dtype {arr.dtype} crs {arr.attrs['crs']} "
              f"resolution {res:g} m bands {list(arr.band.values)}")
    s2_arr, s1_arr = chip["s2"].values[0], chip["s1"].values[0].astype(np.float64)
    png = write_quicklook(args.out / "demo-chip.png", [
        ("Sentinel-2 L2A true colour", optical_rgb(s2_arr, bands=S2_BANDS)),
        ("Sentinel-1 RTC VV/VH (dB)", sar_composite(10 * np.log10(s1_arr[0]), 10 * np.log10(s1_arr[1]))),
    ], title=f"{s2.id}\nEPSG:{epsg} {cfg.chip_size_m:g} m at 10 m")  # fmt: skip
    print(f"quicklook: {png}")
    print("stack:")
    for label, key in (("STAC API", "STAC_API_URL"), ("Ray dashboard", "RAY_ADDRESS"), ("MLflow UI", "MLFLOW_TRACKING_URI"),
                       ("object store", "ANYSAT_STORE_URL"), ("S3 endpoint", "S3_ENDPOINT_URL")):  # fmt: skip
        print(f"  {label:<14} {os.environ.get(key, '(not running)')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
