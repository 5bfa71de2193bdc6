"""Labelled sample collections: a Landsat 7 ETM+ scene, its land-cover map and BigEarthNet's CORINE multi-labels.

Three builders in the style of `infra.local.catalog_items` (COGs + item dictionaries):

- `landsat7_nc_items` (`landsat-7-nc`): the west half of a Landsat 7 ETM+ scene over Raleigh, North Carolina
  (EPSG:32119, 28.5 m; see `data/samples/landsat7-nc-landcover/README.md`) with Planetary Computer's Landsat
  asset keys (`blue`, `green`, `red`, `nir08`, `swir16`, `swir22` for ETM+ bands 1-5 and 7). The samples are
  8-bit DN stored as float32 (nodata -99999) and, for band 7, int16 (nodata -32768); every valid value is an
  integer in 1..255, so they are written as uint8 DN with nodata 0 (exact; checked while building). The
  acquisition date is not recorded: the item carries the interval of the year 2000.
- `landcover_label_items` (`landsat-7-nc-landcover`): the land-cover map `strata.tif` as a STAC label-extension
  item (`label:type` raster, 7 named classes, `label:tasks` classification) with a `source` link to the image
  item. Its values are class numbers 1..7 stored as float32 (nodata -99999), written as uint8 with nodata 0
  (exact). The file's CRS is EPSG:3358 (NAD83(HARN) / North Carolina) on the image's transform; it is kept, so
  readers reproject it onto the image grid (PROJ moves it by under a metre, well inside a 28.5 m pixel). The map
  is a 1996 classification: the item carries the interval of 1996. The sparse hand-digitised training pixels
  (`landsat96_labelled_pixels.tif`) come as a second asset with the same classes.
- `bigearthnet_label_items` (`bigearthnet-labels`): one vector label item per BigEarthNet Sentinel-2/Sentinel-1
  pair: a GeoJSON asset holding the patch polygon with its CORINE Land Cover multi-labels (`labels`, a list of
  class names; the tile-level multi-label classification task of BigEarthNet), `source` links to both items.
  The S2 and S1 metadata of a pair must list the same labels (an error otherwise).

`source` links are API-root-relative hrefs (`/collections/<id>/items/<item id>`), resolvable on any STAC API that
serves these collections.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from infra.local.catalog_items import _asset, _footprint, _item, _proj_fields, s1_item_id, s2_item_id, write_cog

__all__ = ["LANDCOVER_CLASSES", "bigearthnet_label_items", "landcover_label_items", "landsat7_nc_items"]

L7_DIR = "landsat7-nc-landcover"
L7_ITEM = "LE07_nc_2000_west"
L7_BANDS = {  # asset key -> (sample file suffix, ETM+ band, common name, centre wavelength um)
    "blue": ("10", "B1", "blue", 0.485), "green": ("20", "B2", "green", 0.56), "red": ("30", "B3", "red", 0.66),
    "nir08": ("40", "B4", "nir08", 0.835), "swir16": ("50", "B5", "swir16", 1.65),
    "swir22": ("70", "B7", "swir22", 2.22),
}  # fmt: skip
LANDCOVER_CLASSES = {1: "developed", 2: "agriculture", 3: "herbaceous", 4: "shrubland", 5: "forest", 6: "water",
                     7: "sediment"}  # fmt: skip
YEAR_2000 = {"datetime": None, "start_datetime": "2000-01-01T00:00:00Z", "end_datetime": "2000-12-31T23:59:59Z"}
YEAR_1996 = {"datetime": None, "start_datetime": "1996-01-01T00:00:00Z", "end_datetime": "1996-12-31T23:59:59Z"}
GEOJSON = "application/geo+json"


def _source_link(collection: str, item_id: str) -> dict[str, str]:
    return {"rel": "source", "href": f"/collections/{collection}/items/{item_id}", "type": "application/geo+json",
            "title": item_id}  # fmt: skip


def _as_uint8(values: np.ndarray, nodata: float, what: Path) -> np.ndarray:
    """Integer values 1..255 with a nodata marker -> uint8 with nodata 0; anything else is an error."""
    valid = values != nodata
    v = values[valid]
    if v.size and (v.min() < 1 or v.max() > 255 or not np.array_equal(v, np.round(v))):
        raise ValueError(f"{what}: expected integer values in 1..255 besides nodata {nodata}, got {v.min()}..{v.max()}")
    return np.where(valid, values, 0).astype(np.uint8)


def landsat7_nc_items(samples: Path, out: Path) -> list[dict[str, Any]]:
    """The Landsat 7 ETM+ scene as one `landsat-7-nc` item (uint8 DN, nodata 0, 28.5 m, EPSG:32119)."""
    assets: dict[str, Any] = {}
    epsg, bounds = 0, (0.0, 0.0, 0.0, 0.0)
    for key, (suffix, band, common, wavelength) in L7_BANDS.items():
        src = samples / L7_DIR / f"lsat7_2000_{suffix}.tif"
        with rasterio.open(src) as ds:
            dn = _as_uint8(ds.read(), ds.nodata, src)
            cog = out / L7_ITEM / f"{key}.tif"
            write_cog(cog, dn, crs=ds.crs, transform=ds.transform, nodata=0)
            eo = {"name": band, "common_name": common, "center_wavelength": wavelength}
            raster = {"data_type": "uint8", "nodata": 0, "spatial_resolution": 28.5}
            assets[key] = _asset(cog, f"ETM+ {band} ({common}), 8-bit DN", gsd=28.5,
                                 **{"eo:bands": [eo], "raster:bands": [raster]}, **_proj_fields(ds))  # fmt: skip
            if epsg and (int(ds.crs.to_epsg()), tuple(ds.bounds)) != (epsg, bounds):
                raise ValueError(f"{src} is not on the grid of the scene's other bands")
            epsg, bounds = int(ds.crs.to_epsg()), tuple(ds.bounds)
    props = {**YEAR_2000, "platform": "landsat-7", "instruments": ["etm+"], "gsd": 28.5,
             "description": "West half of a Landsat 7 ETM+ scene, Raleigh NC (GRASS GIS North Carolina sample "
                            "dataset, OSGeo, CC BY-SA 3.0)"}  # fmt: skip
    return [_item(L7_ITEM, "landsat-7-nc", epsg=epsg, bounds=bounds, properties=props, assets=assets,
                  extensions=("eo", "proj", "raster"))]  # fmt: skip


def _class_counts(labels: np.ndarray) -> list[dict[str, Any]]:
    return [{"name": name, "count": int(np.count_nonzero(labels == value))} for value, name in LANDCOVER_CLASSES.items()]


def landcover_label_items(samples: Path, out: Path) -> list[dict[str, Any]]:
    """The land-cover map of the Landsat 7 scene as one raster label item (`landsat-7-nc-landcover`)."""
    item_id = f"{L7_ITEM}_landcover"
    classes = [{"value": v, "name": n, "description": f"land cover: {n}"} for v, n in LANDCOVER_CLASSES.items()]
    assets: dict[str, Any] = {}
    counts: list[dict[str, Any]] = []
    epsg, bounds = 0, (0.0, 0.0, 0.0, 0.0)
    for key, name, title in (("labels", "strata.tif", "Land-cover class of every pixel (1996)"),
                             ("training", "landsat96_labelled_pixels.tif", "Hand-digitised training pixels")):  # fmt: skip
        src = samples / L7_DIR / name
        with rasterio.open(src) as ds:
            values = _as_uint8(ds.read(), ds.nodata, src)
            if values.max() > max(LANDCOVER_CLASSES):
                raise ValueError(f"{src} holds class {values.max()}, not one of {sorted(LANDCOVER_CLASSES)}")
            cog = out / item_id / f"{key}.tif"
            write_cog(cog, values, crs=ds.crs, transform=ds.transform, nodata=0)
            assets[key] = _asset(cog, title, gsd=28.5, **{"classification:classes": classes,
                                 "raster:bands": [{"data_type": "uint8", "nodata": 0, "spatial_resolution": 28.5}]},
                                 **_proj_fields(ds))  # fmt: skip
            assets[key]["roles"] = ["labels", "labels-raster"] if key == "labels" else ["labels"]
            if key == "labels":
                epsg, bounds, counts = int(ds.crs.to_epsg()), tuple(ds.bounds), _class_counts(values)
    props = {
        **YEAR_1996, "gsd": 28.5,
        "label:description": "Land-cover class of every pixel of the Landsat 7 scene LE07_nc_2000_west, from a 1996 "
                             "classification (some labels lag the 2000 image); 0 = no label",
        "label:type": "raster", "label:properties": None,
        "label:classes": [{"name": None, "classes": sorted(LANDCOVER_CLASSES)}],
        "label:tasks": ["classification", "segmentation"],
        "label:overviews": [{"property_key": "class", "counts": counts}],
    }  # fmt: skip
    item = _item(item_id, "landsat-7-nc-landcover", epsg=epsg, bounds=bounds, properties=props, assets=assets,
                 extensions=("label", "proj", "raster", "classification"))  # fmt: skip
    item["links"].append(_source_link("landsat-7-nc", L7_ITEM))
    return [item]


def _write_text(path: Path, text: str) -> None:
    """Write `text` unless the file already holds it (keeps builds byte-identical and mtimes stable)."""
    if path.exists() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def bigearthnet_label_items(samples: Path, out: Path) -> list[dict[str, Any]]:
    """One vector label item per BigEarthNet S2/S1 pair: the patch polygon with its CORINE multi-labels."""
    root = samples / "bigearthnet"
    metas = []
    for patch in sorted((root / "BigEarthNet-S2-Example").iterdir()):
        suffix = "_".join(patch.name.split("_")[-2:])
        s2 = json.loads(next(patch.glob("*_labels_metadata.json")).read_text())
        s1_dir = next((root / "BigEarthNet-S1-Example").glob(f"*_{suffix}"))
        s1 = json.loads(next(s1_dir.glob("*_labels_metadata.json")).read_text())
        if sorted(s1["labels"]) != sorted(s2["labels"]):
            raise ValueError(f"BigEarthNet pair {suffix}: S2 labels {s2['labels']} differ from S1 labels {s1['labels']}")
        metas.append((patch, suffix, s2, s2_item_id(patch, s2), s1_item_id(s1_dir, s1)))
    all_classes = sorted({c for _, _, m, _, _ in metas for c in m["labels"]})
    items = []
    for patch, _, meta, s2_id, s1_id in metas:
        with rasterio.open(patch / f"{patch.name}_B02.tif") as ds:
            epsg, bounds = int(ds.crs.to_epsg()), tuple(ds.bounds)
        c = meta["coordinates"]
        if (c["ulx"], c["lry"], c["lrx"], c["uly"]) != bounds:
            raise ValueError(f"{patch}: labels metadata coordinates {c} differ from the raster bounds {bounds}")
        item_id = f"{s2_id}_labels"
        geometry, _ = _footprint(f"EPSG:{epsg}", bounds)
        feature = {"type": "FeatureCollection", "features": [
            {"type": "Feature", "geometry": geometry, "properties": {"labels": sorted(meta["labels"])}}]}
        geojson = out / item_id / "labels.geojson"
        _write_text(geojson, json.dumps(feature, sort_keys=True) + "\n")
        asset = {"href": geojson.resolve().as_uri(), "type": GEOJSON, "title": "CORINE Land Cover multi-labels",
                 "roles": ["labels", "labels-vector"]}  # fmt: skip
        acquired = meta["acquisition_date"].replace(" ", "T") + "Z"
        props = {
            "datetime": acquired,
            "label:description": "CORINE Land Cover level-3 classes present in the 1200 m BigEarthNet patch "
                                 "(tile-level multi-label classification)",
            "label:type": "vector", "label:properties": ["labels"],
            "label:classes": [{"name": "labels", "classes": all_classes}],
            "label:tasks": ["classification"], "label:methods": ["automated"],
        }  # fmt: skip
        item = _item(item_id, "bigearthnet-labels", epsg=epsg, bounds=bounds, properties=props,
                     assets={"labels": asset}, extensions=("label", "proj"))  # fmt: skip
        item["links"] += [_source_link("sentinel-2-l2a", s2_id), _source_link("sentinel-1-rtc", s1_id)]
        items.append(item)
    return items

