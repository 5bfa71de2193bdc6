"""Planetary-Computer-like STAC items built from the committed real samples, one function per collection.

Each builder reads the sample rasters, writes Cloud-Optimized GeoTIFFs and returns item dictionaries with the
asset keys and properties the real collections have (see the project's notes on Planetary Computer items), so
that one ingestion config runs against Planetary Computer and against the local stack. Conversions are exact
and documented in each collection's description:

- `sentinel-1-rtc`: the BigEarthNet samples are backscatter in dB; RTC assets are linear gamma0, so we write
  `10 ** (dB / 10)` as float32.
- `landsat-c2-l2`: the samples are surface reflectance x 10^4 (int16, nodata -9999); Collection 2 Level-2 assets
  are uint16 DN with scale 2.75e-05 and offset -0.2, nodata 0; `fmask` classes become `qa_pixel` bits.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.io import MemoryFile
from rasterio.shutil import copy as rio_copy
from rasterio.warp import transform_geom

__all__ = [
    "EXT",
    "S2_BANDS",
    "aerial_items",
    "landsat_items",
    "sentinel1_items",
    "sentinel2_l1c_items",
    "sentinel2_l2a_items",
    "s1_item_id",
    "s2_item_id",
]

EXT = {
    "eo": "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "proj": "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "raster": "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "sat": "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
    "sar": "https://stac-extensions.github.io/sar/v1.0.0/schema.json",
    "classification": "https://stac-extensions.github.io/classification/v2.0.0/schema.json",
    "label": "https://stac-extensions.github.io/label/v1.0.1/schema.json",
}
COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
# A fixed `updated` time keeps the catalogs byte-identical between builds.
CATALOG_UPDATED = "2025-01-01T00:00:00Z"

# Sentinel-2 MSI bands: asset key -> (common name, centre wavelength um, FWHM um, native GSD m).
S2_BANDS: dict[str, tuple[str, float, float, int]] = {
    "B01": ("coastal", 0.443, 0.027, 60), "B02": ("blue", 0.490, 0.098, 10), "B03": ("green", 0.560, 0.045, 10),
    "B04": ("red", 0.665, 0.038, 10), "B05": ("rededge", 0.705, 0.019, 20), "B06": ("rededge", 0.740, 0.018, 20),
    "B07": ("rededge", 0.783, 0.028, 20), "B08": ("nir", 0.842, 0.145, 10), "B8A": ("nir08", 0.865, 0.033, 20),
    "B09": ("nir09", 0.945, 0.026, 60), "B10": ("cirrus", 1.375, 0.075, 60), "B11": ("swir16", 1.610, 0.143, 20),
    "B12": ("swir22", 2.190, 0.242, 20),
}  # fmt: skip
L2A_ASSETS = tuple(k for k in S2_BANDS if k != "B10")  # L2A products have no cirrus band
LANDSAT_BANDS = {"red": ("b3", "red", 0.66), "nir08": ("b4", "nir08", 0.835), "swir16": ("b5", "swir16", 1.65)}
C2_SCALE, C2_OFFSET = 2.75e-05, -0.2
# fmask class -> Collection 2 QA_PIXEL bits (0 fill, 3 cloud, 4 cloud shadow, 5 snow, 6 clear, 7 water).
FMASK_TO_QA = {0: 1 << 6, 1: (1 << 6) | (1 << 7), 2: 1 << 4, 3: 1 << 5, 4: 1 << 3, 255: 1 << 0}


# -- writing --------------------------------------------------------------------------------------------------
def write_cog(path: Path, array: np.ndarray, *, crs: Any, transform: Any, nodata: float | None) -> None:
    """Write `array` [bands, H, W] as a deflate-compressed Cloud-Optimized GeoTIFF (skipped if it exists)."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {"driver": "GTiff", "count": array.shape[0], "height": array.shape[1], "width": array.shape[2],
               "dtype": array.dtype.name, "crs": crs, "transform": transform, "nodata": nodata}  # fmt: skip
    tmp = path.with_suffix(".tmp.tif")
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(array)
        rio_copy(mem.name, str(tmp), driver="COG", compress="DEFLATE", blocksize=256, overview_resampling="nearest")
    tmp.replace(path)


def _footprint(crs: Any, bounds: Sequence[float]) -> tuple[dict[str, Any], list[float]]:
    """WGS84 polygon and bbox of a projected bounding box (corners rounded to 1e-7 degrees)."""
    minx, miny, maxx, maxy = bounds
    ring = [[minx, miny], [maxx, miny], [maxx, maxy], [minx, maxy], [minx, miny]]
    geom = transform_geom(crs, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})
    coords = [[round(x, 7), round(y, 7)] for x, y in geom["coordinates"][0]]
    xs, ys = [c[0] for c in coords], [c[1] for c in coords]
    return {"type": "Polygon", "coordinates": [coords]}, [min(xs), min(ys), max(xs), max(ys)]


def _proj_fields(ds: rasterio.io.DatasetReader) -> dict[str, Any]:
    t = ds.transform
    return {"proj:shape": [ds.height, ds.width], "proj:transform": [t.a, t.b, t.c, t.d, t.e, t.f],
            "proj:bbox": list(ds.bounds)}  # fmt: skip


def _asset(href: Path, title: str, **fields: Any) -> dict[str, Any]:
    return {"href": href.resolve().as_uri(), "type": COG_TYPE, "title": title, "roles": ["data"], **fields}


def _item(item_id: str, collection: str, *, epsg: int, bounds: Sequence[float], properties: Mapping[str, Any],
          assets: Mapping[str, Any], extensions: Sequence[str]) -> dict[str, Any]:  # fmt: skip
    geometry, bbox = _footprint(f"EPSG:{epsg}", bounds)
    props = {**properties, "proj:epsg": epsg, "proj:code": f"EPSG:{epsg}", "updated": CATALOG_UPDATED}
    return {
        "type": "Feature", "stac_version": "1.1.0", "stac_extensions": [EXT[e] for e in extensions],
        "id": item_id, "collection": collection, "geometry": geometry, "bbox": bbox,
        "properties": dict(sorted(props.items())), "assets": dict(assets),
        "links": [{"rel": "collection", "type": "application/json", "href": collection}],
    }  # fmt: skip


def _s2_band_fields(key: str, ds: rasterio.io.DatasetReader, *, scale: float, offset: float) -> dict[str, Any]:
    common, wavelength, fwhm, gsd = S2_BANDS[key]
    eo_band = {"name": key, "common_name": common, "center_wavelength": wavelength, "full_width_half_max": fwhm}
    raster_band = {"nodata": 0, "data_type": "uint16", "scale": scale, "offset": offset, "spatial_resolution": gsd}
    return {"gsd": gsd, "eo:bands": [eo_band], "raster:bands": [raster_band], **_proj_fields(ds)}


# -- sentinel-2-l2a -------------------------------------------------------------------------------------------
def _cloud_cover_brightness(blue_dn: np.ndarray) -> float:
    """Percent of valid pixels with blue reflectance > 0.2: a brightness test flagging cloud (and snow).

    BigEarthNet patches carry no cloud mask, so `eo:cloud_cover` is derived from the pixels themselves.
    """
    valid = blue_dn > 0
    if not valid.any():
        return 100.0
    return round(float(100.0 * np.count_nonzero(blue_dn[valid] > 2000) / np.count_nonzero(valid)), 2)


def _s2_tile_source(patch: Path, meta: Mapping[str, Any]) -> tuple[str, ...]:
    # tile_source: S2A_MSIL1C_20170613T101031_N0205_R022_T33UUP_20170613T101608.SAFE
    m = re.match(r"(S2[AB])_MSIL1C_(\w+?)_N(\d\d)(\d\d)_R(\d{3})_T(\w{5})_(\w+)\.SAFE", meta["tile_source"])
    if m is None:
        raise ValueError(f"unexpected tile_source {meta['tile_source']!r} in {patch}")
    return m.groups()


def s2_item_id(patch: Path, meta: Mapping[str, Any]) -> str:
    """The `sentinel-2-l2a` item id of a BigEarthNet S2 patch folder and its labels metadata."""
    sat, start, _, _, orbit, tile, _ = _s2_tile_source(patch, meta)
    return f"{sat}_MSIL2A_{start}_R{orbit}_T{tile}_{'_'.join(patch.name.split('_')[-2:])}"


def s1_item_id(patch: Path, meta: Mapping[str, Any]) -> str:
    """The `sentinel-1-rtc` item id of a BigEarthNet S1 patch folder and its labels metadata."""
    return f"{meta['scene_source']}_rtc_{'_'.join(patch.name.split('_')[-2:])}"


def sentinel2_l2a_items(samples: Path, out: Path) -> list[dict[str, Any]]:
    """One `sentinel-2-l2a` item per BigEarthNet Sentinel-2 patch (assets B01..B12 without B10, and B8A)."""
    items = []
    for patch in sorted((samples / "bigearthnet" / "BigEarthNet-S2-Example").iterdir()):
        meta = json.loads(next(patch.glob("*_labels_metadata.json")).read_text())
        sat, start, base_major, base_minor, orbit, tile, _ = _s2_tile_source(patch, meta)
        item_id = s2_item_id(patch, meta)
        assets, epsg, bounds, blue = {}, 0, (0.0, 0.0, 0.0, 0.0), None
        for key in L2A_ASSETS:
            src = patch / f"{patch.name}_{key}.tif"
            with rasterio.open(src) as ds:
                data = ds.read()
                cog = out / item_id / f"{key}.tif"
                write_cog(cog, data, crs=ds.crs, transform=ds.transform, nodata=0)
                assets[key] = _asset(cog, f"Band {key}", **_s2_band_fields(key, ds, scale=1e-4, offset=0.0))
                if key == "B02":
                    epsg, bounds, blue = int(ds.crs.to_epsg()), tuple(ds.bounds), data[0]
        acquired = datetime.strptime(meta["acquisition_date"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
        props = {
            "datetime": acquired.strftime("%Y-%m-%dT%H:%M:%SZ"), "platform": f"Sentinel-2{sat[-1]}",
            "constellation": "Sentinel 2", "instruments": ["msi"], "eo:cloud_cover": _cloud_cover_brightness(blue),
            "s2:processing_baseline": f"{base_major}.{base_minor}", "s2:mgrs_tile": tile,
            "s2:product_type": "S2MSI2A", "sat:relative_orbit": int(orbit), "bigearthnet:labels": meta["labels"],
        }  # fmt: skip
        items.append(_item(item_id, "sentinel-2-l2a", epsg=epsg, bounds=bounds, properties=props, assets=assets,
                           extensions=("eo", "proj", "raster", "sat")))  # fmt: skip
    return items


# -- sentinel-1-rtc -------------------------------------------------------------------------------------------
def _orbit_state(acquired: datetime, lon: float) -> str:
    """Sentinel-1 flies a dawn-dusk orbit: morning local solar time is descending, evening ascending."""
    solar_hour = (acquired.hour + acquired.minute / 60 + lon / 15) % 24
    return "descending" if solar_hour < 12 else "ascending"


def sentinel1_items(samples: Path, out: Path) -> list[dict[str, Any]]:
    """One `sentinel-1-rtc` item per BigEarthNet Sentinel-1 patch; dB samples written as linear gamma0."""
    items = []
    for patch in sorted((samples / "bigearthnet" / "BigEarthNet-S1-Example").iterdir()):
        meta = json.loads(next(patch.glob("*_labels_metadata.json")).read_text())
        item_id = s1_item_id(patch, meta)
        assets, epsg, bounds = {}, 0, (0.0, 0.0, 0.0, 0.0)
        for key in ("vv", "vh"):
            with rasterio.open(patch / f"{patch.name}_{key.upper()}.tif") as ds:
                linear = np.power(np.float32(10.0), ds.read().astype(np.float32) / np.float32(10.0))
                cog = out / item_id / f"{key}.tif"
                write_cog(cog, linear.astype(np.float32), crs=ds.crs, transform=ds.transform, nodata=None)
                band = {"data_type": "float32", "spatial_resolution": 10}
                assets[key] = _asset(cog, f"{key.upper()}: linear gamma0 (terrain-corrected)",
                                     **_proj_fields(ds), **{"raster:bands": [band]})  # fmt: skip
                epsg, bounds = int(ds.crs.to_epsg()), tuple(ds.bounds)
        acquired = datetime.fromisoformat(meta["acquisition_time"]).replace(tzinfo=timezone.utc)
        _, bbox = _footprint(f"EPSG:{epsg}", bounds)
        absolute_orbit = int(meta["scene_source"].split("_")[6])
        props = {
            "datetime": acquired.strftime("%Y-%m-%dT%H:%M:%SZ"), "platform": "SENTINEL-1A",
            "constellation": "Sentinel-1", "sar:instrument_mode": "IW", "sar:frequency_band": "C",
            "sar:center_frequency": 5.405, "sar:polarizations": ["VV", "VH"], "sar:product_type": "GRD",
            "sat:orbit_state": _orbit_state(acquired, (bbox[0] + bbox[2]) / 2), "sat:absolute_orbit": absolute_orbit,
            "s1:processing_level": "RTC", "bigearthnet:labels": meta["labels"],
        }  # fmt: skip
        items.append(_item(item_id, "sentinel-1-rtc", epsg=epsg, bounds=bounds, properties=props, assets=assets,
                           extensions=("sar", "sat", "proj", "raster")))  # fmt: skip
    return items


# -- neon-aerial ----------------------------------------------------------------------------------------------
def aerial_items(samples: Path, out: Path) -> list[dict[str, Any]]:
    """The NEON 0.1 m RGB tile as a NAIP-shaped item with one 3-band `image` asset."""
    src = samples / "neon-aerial" / "OSBS_029.tif"
    with rasterio.open(src) as ds:
        cog = out / "OSBS_029" / "image.tif"
        write_cog(cog, ds.read(), crs=ds.crs, transform=ds.transform, nodata=ds.nodata)
        bands = [{"name": n, "common_name": n} for n in ("red", "green", "blue")]
        raster = [{"data_type": "uint8", "nodata": ds.nodata, "spatial_resolution": 0.1}] * 3
        asset = _asset(cog, "RGB image, 0.1 m", gsd=0.1, **{"eo:bands": bands, "raster:bands": raster},
                       **_proj_fields(ds))  # fmt: skip
        asset["roles"] = ["data"]
        epsg, bounds = int(ds.crs.to_epsg()), tuple(ds.bounds)
    props = {
        # The flight date of the sample is not recorded; the interval spans NEON AOP flights at OSBS.
        "datetime": None, "start_datetime": "2014-01-01T00:00:00Z", "end_datetime": "2020-12-31T23:59:59Z",
        "gsd": 0.1, "platform": "NEON AOP", "neon:site": "OSBS",
    }  # fmt: skip
    return [_item("OSBS_029", "neon-aerial", epsg=epsg, bounds=bounds, properties=props, assets={"image": asset},
                  extensions=("eo", "proj", "raster"))]  # fmt: skip


# -- landsat-c2-l2 --------------------------------------------------------------------------------------------
def sr_to_c2_dn(sr: np.ndarray) -> np.ndarray:
    """Surface reflectance x 10^4 (int16, nodata -9999) -> Collection 2 DN (uint16, nodata 0)."""
    reflectance = sr.astype(np.float64) * 1e-4
    dn = np.clip(np.rint((reflectance - C2_OFFSET) / C2_SCALE), 1, 65535).astype(np.uint16)
    return np.where(sr == -9999, np.uint16(0), dn)


def fmask_to_qa_pixel(fmask: np.ndarray) -> np.ndarray:
    """fmask classes (0 clear, 1 water, 2 shadow, 3 snow, 4 cloud, 255 fill) -> QA_PIXEL-style bits."""
    qa = np.zeros(fmask.shape, np.uint16)
    for cls, bits in FMASK_TO_QA.items():
        qa[fmask == cls] = bits
    return qa


QA_BITFIELDS = [
    {"name": "fill", "offset": 0, "length": 1, "classes": [{"name": "not_fill", "value": 0}, {"name": "fill", "value": 1}]},
    {"name": "cloud", "offset": 3, "length": 1, "classes": [{"name": "not_cloud", "value": 0}, {"name": "cloud", "value": 1}]},
    {"name": "cloud_shadow", "offset": 4, "length": 1,
     "classes": [{"name": "not_shadow", "value": 0}, {"name": "shadow", "value": 1}]},
    {"name": "snow", "offset": 5, "length": 1, "classes": [{"name": "not_snow", "value": 0}, {"name": "snow", "value": 1}]},
    {"name": "clear", "offset": 6, "length": 1, "classes": [{"name": "not_clear", "value": 0}, {"name": "clear", "value": 1}]},
    {"name": "water", "offset": 7, "length": 1, "classes": [{"name": "not_water", "value": 0}, {"name": "water", "value": 1}]},
]  # fmt: skip


def landsat_items(samples: Path, out: Path) -> list[dict[str, Any]]:
    """One `landsat-c2-l2`-shaped item per scene: `red`, `nir08`, `swir16` as C2 DN and `qa_pixel`."""
    items = []
    for scene in sorted(p for p in (samples / "landsat-timeseries-colorado").iterdir() if p.is_dir()):
        m = re.match(r"L([ET])(\d)(\d{3})(\d{3})(\d{4})(\d{3})", scene.name)
        if m is None:
            raise ValueError(f"unexpected Landsat scene id {scene.name!r}")
        kind, number, path, row, year, doy = m.groups()
        day = datetime(int(year), 1, 1, 17, 15, tzinfo=timezone.utc) + timedelta(days=int(doy) - 1)
        item_id = f"L{kind}0{number}_L2SP_{path}{row}_{day:%Y%m%d}_02_T1"
        assets = {}
        for key, (suffix, common, wavelength) in LANDSAT_BANDS.items():
            with rasterio.open(scene / f"{scene.name}_{suffix}.tif") as ds:
                cog = out / item_id / f"{key}.tif"
                write_cog(cog, sr_to_c2_dn(ds.read()), crs=ds.crs, transform=ds.transform, nodata=0)
                band = {"name": key, "common_name": common, "center_wavelength": wavelength}
                raster = {"data_type": "uint16", "nodata": 0, "scale": C2_SCALE, "offset": C2_OFFSET,
                          "spatial_resolution": 30}  # fmt: skip
                assets[key] = _asset(cog, f"{common} surface reflectance", gsd=30,
                                     **{"eo:bands": [band], "raster:bands": [raster]}, **_proj_fields(ds))  # fmt: skip
        with rasterio.open(scene / f"{scene.name}_fmask.tif") as ds:
            fmask = ds.read(1)
            cog = out / item_id / "qa_pixel.tif"
            write_cog(cog, fmask_to_qa_pixel(fmask)[None], crs=ds.crs, transform=ds.transform, nodata=1)
            assets["qa_pixel"] = _asset(cog, "Pixel quality assessment band (bitfield)", gsd=30,
                                        **{"classification:bitfields": QA_BITFIELDS,
                                           "raster:bands": [{"data_type": "uint16", "nodata": 1}]},
                                        **_proj_fields(ds))  # fmt: skip
            assets["qa_pixel"]["roles"] = ["cloud", "data-mask"]
            epsg, bounds = int(ds.crs.to_epsg()), tuple(ds.bounds)
        valid = fmask != 255
        cloud = round(float(100.0 * np.count_nonzero(fmask == 4) / max(1, np.count_nonzero(valid))), 2)
        props = {
            "datetime": day.strftime("%Y-%m-%dT%H:%M:%SZ"), "platform": f"landsat-{number}",
            "instruments": ["etm+"] if kind == "E" else ["tm"], "eo:cloud_cover": cloud,
            "landsat:wrs_path": path, "landsat:wrs_row": row, "landsat:collection_category": "T1",
        }  # fmt: skip
        items.append(_item(item_id, "landsat-c2-l2", epsg=epsg, bounds=bounds, properties=props, assets=assets,
                           extensions=("eo", "proj", "raster", "classification")))  # fmt: skip
    return items


# -- sentinel-2-l1c -------------------------------------------------------------------------------------------
def sentinel2_l1c_items(l1c_dir: Path, out: Path) -> list[dict[str, Any]]:
    """The 13-band Sentinel-2 L1C scene crop as one item (acquisition date unknown: an interval instead)."""
    assets, epsg, bounds = {}, 0, (0.0, 0.0, 0.0, 0.0)
    for key in S2_BANDS:
        with rasterio.open(l1c_dir / f"s2_{key}.tif") as ds:
            cog = out / "S2_MSIL1C_virginia" / f"{key}.tif"
            write_cog(cog, ds.read(), crs=ds.crs, transform=ds.transform, nodata=0)
            assets[key] = _asset(cog, f"Band {key}", **_s2_band_fields(key, ds, scale=1e-4, offset=0.0))
            if key == "B02":
                epsg, bounds = int(ds.crs.to_epsg()), tuple(ds.bounds)
    props = {
        "datetime": None, "start_datetime": "2015-06-23T00:00:00Z", "end_datetime": "2023-12-31T23:59:59Z",
        "platform": "Sentinel-2", "constellation": "Sentinel 2", "instruments": ["msi"], "eo:cloud_cover": 0.0,
        "s2:product_type": "S2MSI1C",
    }  # fmt: skip
    return [_item("S2_MSIL1C_virginia", "sentinel-2-l1c", epsg=epsg, bounds=bounds, properties=props,
                  assets=assets, extensions=("eo", "proj", "raster"))]  # fmt: skip
